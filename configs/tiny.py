"""Tiny CPU run on the embedded corpus: about 20 s on a quiet 2-core CPU (a minute on a busy one), data
preparation included.

    python -m experiments.train --config=configs/tiny.py --workdir=workdirs/tiny
    python -m experiments.train --config=configs/tiny.py:runlocal --workdir=/tmp/tiny   # seconds: smoke test
    python -m experiments.train --config=configs/tiny.py --config.mixture=code=0.5,prose=0.5 --workdir=...
"""

from __future__ import annotations

import ml_collections

from configs.common import data_config, parse_arg


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    arg = parse_arg(arg, runlocal=False)
    c = ml_collections.ConfigDict()
    # Corpus, split and tokenizer (fields of bimix_jax/data/spec.py): the built-in offline corpus,
    # 5 domains x ~200k characters, 1024-piece SentencePiece vocabulary trained in the workdir.
    c.data = data_config(source="embedded", embedded_chars_per_domain=200_000, vocab_size=1024,
                         tokenizer_sample_chars=100_000)
    # Training mixture: 'uniform', 'natural' (token shares of the corpus) or 'code=0.3,prose=0.7,...'
    # (domains not named get weight 0).
    c.mixture = "uniform"
    # Rescale mixture weights that do not sum to 1 instead of refusing them.
    c.normalize_mixture = False
    # The run's id in the loss table ('' = the workdir's folder name).
    c.run_name = ""

    c.model = ml_collections.ConfigDict()
    c.model.D = 64  # model width (embedding size), units
    c.model.H = 4  # attention heads; D / H is the head width (even, for rotary embeddings)
    c.model.L = 2  # transformer blocks
    c.model.F = 256  # MLP hidden width, units
    c.model.dtype = "float32"  # compute dtype: float32 (CPU) or bfloat16 (GPU/TPU); parameters stay float32

    c.optim = ml_collections.ConfigDict()
    c.optim.lr = 3e-3  # peak learning rate (AdamW)
    c.optim.schedule = "cosine"  # decay after warmup: cosine | exponential | constant
    c.optim.warmup_steps = 20  # linear warmup from 0, steps
    c.optim.final_lr_fraction = 0.1  # learning rate at the last step / peak (cosine, exponential)
    c.optim.b1 = 0.9  # AdamW first-moment decay
    c.optim.b2 = 0.99  # AdamW second-moment decay
    c.optim.eps = 1e-8  # AdamW epsilon
    c.optim.weight_decay = 0.01  # decoupled weight decay on matrices (not norms, biases)
    c.optim.grad_clip = 1.0  # clip gradients to this global norm; 0 = off

    c.train = ml_collections.ConfigDict()
    c.train.steps = 300  # optimizer steps
    c.train.batch_size = 16  # global batch, sequences (divisible by microbatches x device count)
    c.train.microbatches = 1  # gradient accumulation slices per step (1 = none)
    c.train.seq_len = 128  # tokens per training sequence
    c.train.seed = 0  # model initialisation and data stream
    c.train.eval_every = 50  # steps between per-domain validation losses (and at the last step)
    c.train.eval_tokens = 8192  # validation tokens per domain (the first ones of its validation split)
    c.train.eval_batch_size = 16  # validation sequences per forward pass (divisible by the device count)
    c.train.checkpoint_every = 100  # steps between checkpoints (and at the last step)
    c.train.keep_checkpoints = 2  # most recent checkpoints kept
    c.train.log_every = 25  # steps between metrics.jsonl records and progress lines

    # How the mixture evolves during training (bimix_jax/online/spec.py): 'static' trains `mixture` throughout;
    # 'aioli' starts from uniform and learns the mixture online (Chen et al.; settings below). DoReMi needs a
    # reference run: see experiments/compare_methods.py.
    c.online = ml_collections.ConfigDict()
    c.online.method = "static"
    c.online.feedback_tokens = 1024  # training tokens per domain held out as the online method's feedback set
    c.online.aioli = ml_collections.ConfigDict()
    c.online.aioli.round_steps = 100  # K, steps per round (probes included)
    c.online.aioli.sweeps = 2  # R, LearnParams sweeps over the domains per round
    c.online.aioli.probe_steps = 4  # S, steps per probe
    c.online.aioli.one_hot_factor = 0.75  # f, the probed domain's weight in its probe mixture
    c.online.aioli.eta = 1.0  # exponentiated-gradient step size
    c.online.aioli.ema = -1.0  # EMA gamma of A; < 0 = off

    if arg.runlocal:  # A smoke test: seconds, not a meaningful loss.
        c.data.embedded_chars_per_domain = 60_000
        c.data.vocab_size = 512
        c.data.tokenizer_sample_chars = 30_000
        c.model.D, c.model.F = 32, 64
        c.train.steps, c.train.batch_size, c.train.seq_len = 20, 8, 32
        c.train.eval_every, c.train.checkpoint_every, c.train.log_every = 10, 10, 5
        c.train.eval_tokens = 512
        c.optim.warmup_steps = 2
    return c
