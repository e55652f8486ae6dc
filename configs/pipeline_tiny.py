"""The whole BiMix job on the embedded corpus with tiny models, on CPU: about 7 minutes on 2 cores.

    python -m experiments.run_pipeline --config=configs/pipeline_tiny.py --workdir=workdirs/pipeline_tiny
    python -m experiments.run_pipeline --config=configs/pipeline_tiny.py:runlocal --workdir=/tmp/p   # seconds
    python -m experiments.run_pipeline --config=configs/pipeline_tiny.py --config.pipeline.bootstrap=200 \
        --workdir=workdirs/pipeline_boot

Corpus and tokenizer -> candidate mixtures (uniform, natural token shares, the entropy mixtures SE, CE, JE,
VNE) -> one proxy run per distinct candidate -> BiMix fitted on all of them -> the best mixture under the law ->
a confirmation run on that mixture -> predicted vs observed -> `report.md`, `report.json` and PNG plots in the
workdir. Rerun the same command after an interruption to resume. Meaning of the run fields: configs/common.py.
"""

from __future__ import annotations

import ml_collections

from configs import tiny
from configs.common import parse_arg


def recipe(runlocal: bool) -> ml_collections.ConfigDict:
    """tiny.py's data, model, optim and train sections with the BiMix paper's schedule (exponential decay to
    1/10) and an evaluation every 20 steps, so each proxy gives 15 checkpoints to fit."""
    c = tiny.recipe(runlocal)
    c.optim.schedule = "exponential"
    c.train.eval_every = 20
    if runlocal:
        c.train.steps, c.train.eval_every, c.train.checkpoint_every, c.train.log_every = 24, 4, 12, 4
    return c


def pipeline_section(runlocal: bool) -> ml_collections.ConfigDict:
    """`config.pipeline` (bimix_jax/pipeline/spec.py); the comparison's law methods fit with these settings too."""
    p = ml_collections.ConfigDict()
    # Candidate mixtures, trained as proxies, in this order: 'uniform', 'natural' (token shares of the corpus) and
    # the entropy mixtures of BiMix Eq. 12-13 'se', 'ce', 'je', 'vne'. Candidates with identical mixtures (to 1e-6)
    # are trained once; the report says which. 'uniform' comes first: the Aioli paper found it hard to beat, and the
    # first candidate is also trained with the noise seeds, so the recommended mixture is compared with it seed by
    # seed.
    p.candidates = "uniform,natural,se,ce,je,vne"
    # More candidates, 'name:domain=weight,...;name2:...' (unnamed domains get 0); '' = none.
    p.extra_candidates = ""
    # Softmax temperature T of the entropy mixtures, r = softmax(H / T) (the paper: 1; entropies in nats).
    p.entropy_temperature = 1.0
    # Count token pairs only within consecutive blocks of this many tokens (the paper: 1024); 0 = whole stream.
    p.entropy_sequence_length = 0
    # Documents per domain embedded for the von Neumann entropy (a seeded subsample).
    p.vne_max_docs = 200 if runlocal else 1000
    # Train the first candidate and the recommended mixture again with this many other seeds (train.seed + 1,
    # ...): the seed-to-seed spread of the average validation loss (the yardstick of the comparison) and paired
    # per-seed differences between the two; 0 = not measured.
    p.noise_seeds = 1 if runlocal else 2
    # Train the candidates in one vmapped program (bimix_jax.train.many): pays off on an accelerator that one tiny
    # model leaves idle; on a CPU it gives no speed-up (docs/benchmarks.md), so it is off here.
    p.vmap = False
    # First step whose checkpoints are used to fit and evaluate the law. The warmup's checkpoints (and the steps
    # right after it) lie far above the power law in the step; docs/main_job.md has the measurement behind 60.
    p.fit_min_step = 8 if runlocal else 60
    # Law fit: solver starts per eval domain, objective on log loss ('l2': the paper's least squares, or 'huber')
    # and the Huber threshold (log-loss units).
    p.fit_n_starts = 4
    p.fit_loss = "l2"
    p.fit_huber_delta = 0.05
    # Mixing law: bimix, dml (the Data Mixing Law at the target step), or auto (chosen by leave-one-mixture-out
    # cross-validation on the checkpoints before the last one, among bimix and dml).
    p.law = "bimix"
    # Score the law on every candidate held out in turn (fit on the others, predict its whole curve).
    p.leave_one_out = True
    # Step the mixture is optimized for; 0 = train.steps (the proxies' length, where the law was fitted).
    p.target_step = 0
    # Objective weights over the eval domains, 'domain=weight,...' (unnamed domains get 0; normalised);
    # '' = equal weights, i.e. the average validation loss (the paper's objective).
    p.objective_weights = ""
    # Lower bound of every proportion: BiMix's loss diverges at 0, and far below the smallest proportion the
    # proxies trained on the law extrapolates (here: about 1% of the training rows per domain).
    p.min_floor = 0.01
    # Per-domain floors and caps, 'domain=proportion,...'; '' = none.
    p.floors = ""
    p.caps = ""
    # Repetition cap: a domain may be repeated at most this many epochs over a run of the target step's tokens
    # (its training tokens from the corpus); 0 = no cap.
    p.max_epochs = 0.0
    # Bootstrap replicates over the candidate runs for the interval of the recommended mixture; 0 = none.
    p.bootstrap = 8 if runlocal else 64
    # Seed of the bootstrap resampling.
    p.bootstrap_seed = 0
    return p


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    arg = parse_arg(arg, runlocal=False)
    c = recipe(arg.runlocal)
    c.pipeline = pipeline_section(arg.runlocal)
    return c
