"""Every mixing method on one budget, on the embedded corpus with tiny models (CPU, 2 cores).

    python -m experiments.compare_methods --config=configs/compare_tiny.py --workdir=workdirs/compare_tiny
    python -m experiments.compare_methods --config=configs/compare_tiny.py:runlocal --workdir=/tmp/c  # a smoke test

The data, model, optim and train sections are those of `configs/pipeline_tiny.py` (tiny.py with the BiMix
paper's exponential schedule and an evaluation every 20 steps; see tiny.py for each field). Every run, static or
online, carves the same feedback slice off its training tokens. Rerun the same command to resume.
"""

from __future__ import annotations

import ml_collections

from configs import tiny
from configs.common import parse_arg


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    arg = parse_arg(arg, runlocal=False)
    c = tiny.get_config("runlocal" if arg.runlocal else None)
    del c.mixture, c.normalize_mixture, c.run_name, c.online  # every run's mixture comes from its method
    c.optim.schedule = "exponential"
    c.train.eval_every = 20

    c.online = o = ml_collections.ConfigDict()
    # Training tokens per domain carved off every run as the online methods' feedback set (never trained on,
    # disjoint from the reported validation split).
    o.feedback_tokens = 1024
    o.aioli = a = ml_collections.ConfigDict()
    # Aioli, scaled from the paper's scripts (full SlimPajama: K=200 of 40k steps, R=2, S=10, f=0.75, eta=1, no
    # EMA): 3 rounds of K=100 steps; each round probes R x m x S = 2 x 5 x 4 = 40 steps (the paper's 70% of a
    # round is 140/200) and trains the other 60 on p.
    a.round_steps = 100  # K, steps per round, probes included
    a.sweeps = 2  # R, LearnParams sweeps over the domains per round
    a.probe_steps = 4  # S, steps per probe (the README of the reference code recommends 4)
    a.one_hot_factor = 0.75  # f, weight of the probed domain in its probe mixture (< 1: deconvolved)
    a.eta = 1.0  # EG step size (full SlimPajama: 1)
    a.ema = -1.0  # EMA gamma of A; < 0 = off (the reference README: start without EMA)
    a.diagonal = False  # keep only A's diagonal
    a.eg_start = "uniform"  # restricted runs: EG restarts from 'uniform' after the prior (code) or from 'prior'
    o.doremi = d = ml_collections.ConfigDict()
    d.eta = 1.0  # EG step size (paper: 1)
    d.smoothing = 1e-3  # weight of uniform mixed into the weights (paper: 1e-3)
    d.update_every = 10  # steps between weight updates (the feedback losses are measured then)

    c.compare = p = ml_collections.ConfigDict()
    p.methods = "uniform,natural,se,ce,je,vne,bimix,dml,doremi,aioli,aioli_restricted"
    p.seeds = "0,1,2"  # every method is trained with each seed (model init and data order)
    p.fit_min_step = 60  # the laws fit checkpoints from this step on (as the pipeline)
    p.fit_n_starts = 4  # solver starts per eval domain
    p.min_floor = 0.01  # smallest proportion a law-optimised mixture may give a domain
    p.restricted_fraction = 0.25  # restricted Aioli: prior learned by DoReMi on runs this long (fraction of the
    # budget), then trained for that many steps before Aioli takes over
    p.entropy_temperature = 1.0  # softmax temperature of the entropy mixtures (the paper: 1)
    p.vne_max_docs = 1000  # documents per domain embedded for the von Neumann entropy

    if arg.runlocal:  # Seconds: 20 steps, 1 seed for most, smaller probes.
        c.train.steps, c.train.eval_every, c.train.checkpoint_every = 40, 10, 40
        o.feedback_tokens = 256
        a.round_steps, a.sweeps, a.probe_steps = 20, 1, 2
        d.update_every = 5
        p.seeds = "0,1"
        p.fit_min_step = 10
        p.restricted_fraction = 0.25
    return c
