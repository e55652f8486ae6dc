"""Every mixing method on one budget, on the embedded corpus with tiny models (CPU, 2 cores).

    python -m experiments.compare_methods --config=configs/compare_tiny.py --workdir=workdirs/compare_tiny
    python -m experiments.compare_methods --config=configs/compare_tiny.py:runlocal --workdir=/tmp/c  # a smoke test

Built from the pipeline's config (configs/pipeline_tiny.py): its model, optim and train sections, and its `pipeline`
section, whose fit and entropy settings the law-based and entropy methods use (the candidate, bootstrap and
noise-seed fields are not used here). The data differ: a larger corpus with three splits per domain (train;
selection, all that a method or a setting may look at; validation, the reported split), evaluated on equal token
counts spread over the whole split. Rerun the same command to resume. How the comparison works:
docs/compare_methods.md.
"""

from __future__ import annotations

import ml_collections

from configs import pipeline_tiny
from configs.common import online_config, parse_arg

# The tuning grids (bimix_jax/pipeline/compare_tuning.py), one factor at a time around a centre point. Aioli's centre
# is K=150, R=1, S=4, f=0.75, eta=1, no EMA: R x m x S / K = 13% of the steps probe, the share of the official
# 2-group script (peers.md: "The probe share R·m·S/K is 13% (2 groups), 29% (3 groups), 70% (7 groups)"). The points
# vary the sweeps (R=2: 27%), the probe steps (S=2: 7%), the round (K=100: 20%), eta (0.2 from the README's
# "η 0.1/0.2/0.5"; 5, beyond the published range, because A is normalised to sum 1 and its column sums are small)
# and the EMA (0.1, the official scripts' value). DoReMi: eta per step 0.1 (the maintainer's advice, doremi#5) or 1
# (official reweight_eta), with the excess measured every 10 or 30 steps. Online BiMix (no published setting): the
# exploration's tilt and the round length.
AIOLI_GRID = ";".join([
    "round_steps=150,sweeps=1,probe_steps=4,eta=1,ema=-1",  # the centre: 13% of the steps probe
    "round_steps=150,sweeps=2,probe_steps=4,eta=1,ema=-1",  # R=2: 27%
    "round_steps=150,sweeps=1,probe_steps=2,eta=1,ema=-1",  # S=2: 7%
    "round_steps=100,sweeps=1,probe_steps=4,eta=1,ema=-1",  # K=100: 20%, 3 rounds
    "round_steps=150,sweeps=1,probe_steps=4,eta=0.2,ema=-1",
    "round_steps=150,sweeps=1,probe_steps=4,eta=5,ema=-1",
    "round_steps=150,sweeps=1,probe_steps=4,eta=1,ema=0.1",
])
DOREMI_GRID = "eta=0.1,update_every=10;eta=1,update_every=10;eta=0.1,update_every=30;eta=1,update_every=30"
ONLINE_BIMIX_GRID = ("round_steps=50,explore_steps=4,tilt=0.5;round_steps=50,explore_steps=4,tilt=0.8;"
                     "round_steps=100,explore_steps=4,tilt=0.5")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    arg = parse_arg(arg, runlocal=False)
    c = pipeline_tiny.recipe(arg.runlocal)
    c.pipeline = pipeline_tiny.pipeline_section(arg.runlocal)
    # Three splits per domain: documents go to validation (8%, at least 40) and selection (8% of the rest, at least
    # 40), the rest trains; 800k characters per domain leave every domain at least 40 validation documents and 28k
    # validation tokens (docs/results.md has the counts), and every domain is scored on the same 16,384 tokens.
    c.data.embedded_chars_per_domain = 800_000
    c.data.val_fraction, c.data.min_val_docs = 0.08, 40
    c.data.select_fraction, c.data.min_select_docs = 0.08, 40
    c.train.eval_tokens = 16_384
    # The online methods' settings when not tuned (the grids below override them). The feedback set: 4,096 tokens
    # per domain in 32 windows spread over the selection split (30 to 50 documents per domain).
    c.online = online_config(feedback_tokens=4096, round_steps=150, sweeps=1, probe_steps=4)

    c.compare = p = ml_collections.ConfigDict()
    # Methods (bimix_jax/pipeline/compare.py); 'uniform' (stratified sampling) is every comparison's reference;
    # aioli_static and aioli_uniform_exploit are controls.
    p.methods = ("uniform,natural,se,ce,je,vne,bimix,dml,doremi,aioli,aioli_restricted,online_bimix,aioli_static,"
                 "aioli_uniform_exploit")
    p.seeds = "0,1,2,3,4"  # reported seeds: every method's final run is trained with each (model init, data order)
    p.tuning_seed = 100  # every auxiliary run (law proxies, DoReMi reference and proxies, prior, grids): not reported
    # Restricted Aioli: a prior learned by DoReMi on runs this long (fraction of the budget), then trained for that
    # many steps before Aioli takes over.
    p.restricted_fraction = 0.25
    p.final_eval_every = 100  # validation evaluations of the final runs (the law proxies keep train.eval_every)
    p.equal_compute = 2.0  # uniform also trained for 2 budgets per reported seed (the equal-compute view)
    p.aioli_grid, p.doremi_grid, p.online_bimix_grid = AIOLI_GRID, DOREMI_GRID, ONLINE_BIMIX_GRID

    if arg.runlocal:  # Seconds: 40 steps, 2 seeds, two-point grids, small evaluation sets.
        c.data.embedded_chars_per_domain = 100_000
        c.data.val_fraction, c.data.min_val_docs, c.data.select_fraction, c.data.min_select_docs = 0.05, 4, 0.05, 4
        c.train.steps, c.train.eval_every, c.train.checkpoint_every = 40, 10, 40
        c.train.eval_tokens = 256
        c.pipeline.fit_min_step = 10
        c.online.feedback_tokens = 128
        c.online.aioli.round_steps, c.online.aioli.sweeps, c.online.aioli.probe_steps = 20, 1, 2
        c.online.doremi.update_every = 5
        c.online.online_bimix.round_steps, c.online.online_bimix.explore_steps = 20, 2
        c.online.online_bimix.min_step = 6
        p.seeds = "0,1"
        p.final_eval_every = 20
        p.aioli_grid = "eta=1;eta=5"
        p.doremi_grid = "eta=0.1;eta=1"
        p.online_bimix_grid = ""
    return c
