"""Every mixing method on one budget, on the embedded corpus with tiny models (CPU, 2 cores).

    python -m experiments.compare_methods --config=configs/compare_tiny.py --workdir=workdirs/compare_tiny
    python -m experiments.compare_methods --config=configs/compare_tiny.py:runlocal --workdir=/tmp/c  # a smoke test

Built from the pipeline's config (configs/pipeline_tiny.py): its data, model, optim and train sections, and its
`pipeline` section, whose fit and entropy settings the law-based and entropy methods use (the candidate,
bootstrap and noise-seed fields are not used here). Every run, static or online, carves the same feedback slice
off its training tokens. Rerun the same command to resume.
"""

from __future__ import annotations

import ml_collections

from configs import pipeline_tiny
from configs.common import online_config, parse_arg


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    arg = parse_arg(arg, runlocal=False)
    c = pipeline_tiny.recipe(arg.runlocal)
    c.pipeline = pipeline_tiny.pipeline_section(arg.runlocal)
    # Aioli, scaled from the paper's scripts (full SlimPajama: K=200 of 40k steps, R=2, S=10, f=0.75, eta=1): 3
    # rounds of K=100 steps; each round probes R x m x S = 2 x 5 x 4 = 40 steps and trains the other 60 on p.
    # DoReMi: eta 1 and smoothing 1e-3 (the paper), weights updated every 10 steps.
    c.online = online_config(feedback_tokens=1024, round_steps=100, sweeps=2, probe_steps=4)

    c.compare = p = ml_collections.ConfigDict()
    # Methods (bimix_jax/pipeline/compare.py); 'uniform' (stratified sampling) is every comparison's reference.
    p.methods = "uniform,natural,se,ce,je,vne,bimix,dml,doremi,aioli,aioli_restricted"
    p.seeds = "0,1,2"  # every method is trained with each seed (model init and data order)
    # Restricted Aioli: a prior learned by DoReMi on runs this long (fraction of the budget), then trained for that
    # many steps before Aioli takes over.
    p.restricted_fraction = 0.25

    if arg.runlocal:  # Seconds: 40 steps, 2 seeds, smaller probes.
        c.train.steps, c.train.eval_every, c.train.checkpoint_every = 40, 10, 40
        c.pipeline.fit_min_step = 10
        c.online.feedback_tokens = 256
        c.online.aioli.round_steps, c.online.aioli.sweeps, c.online.aioli.probe_steps = 20, 1, 2
        c.online.doremi.update_every = 5
        p.seeds = "0,1"
    return c
