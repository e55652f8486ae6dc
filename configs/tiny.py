"""Tiny CPU run on the embedded corpus: about 20 s on a quiet 2-core CPU, data preparation included.

    python -m experiments.train --config=configs/tiny.py --workdir=workdirs/tiny
    python -m experiments.train --config=configs/tiny.py:runlocal --workdir=/tmp/tiny   # seconds: smoke test
    python -m experiments.train --config=configs/tiny.py --config.mixture=code=0.5,prose=0.5 --workdir=workdirs/mix
    python -m experiments.train --config=configs/tiny.py --config.online.method=aioli --workdir=workdirs/aioli

Meaning and unit of every field: configs/common.py.
"""

from __future__ import annotations

import ml_collections

from configs.common import (add_mixture_fields, data_config, model_config, online_config, optim_config,
                            parse_arg, train_config)


def recipe(runlocal: bool) -> ml_collections.ConfigDict:
    """The data, model, optim and train sections of a tiny run (shared by the pipeline and comparison configs)."""
    c = ml_collections.ConfigDict()
    # The built-in offline corpus, 5 domains x ~200k characters, a 1024-piece tokenizer trained in the workdir.
    c.data = data_config(source="embedded", embedded_chars_per_domain=200_000, vocab_size=1024,
                         tokenizer_sample_chars=100_000)
    c.model = model_config(D=64, H=4, L=2, F=256)
    c.optim = optim_config(lr=3e-3, schedule="cosine", warmup_steps=20)
    c.train = train_config(steps=300, batch_size=16, seq_len=128, eval_every=50, eval_tokens=8192,
                           eval_batch_size=16, checkpoint_every=100, log_every=25)
    if runlocal:  # A smoke test: seconds, not a meaningful loss.
        c.data.embedded_chars_per_domain, c.data.vocab_size, c.data.tokenizer_sample_chars = 60_000, 512, 30_000
        c.model.D, c.model.F = 32, 64
        c.optim.warmup_steps = 2
        c.train.steps, c.train.batch_size, c.train.seq_len = 20, 8, 32
        c.train.eval_every, c.train.checkpoint_every, c.train.log_every = 10, 10, 5
        c.train.eval_tokens = 512
    return c


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    arg = parse_arg(arg, runlocal=False)
    c = recipe(arg.runlocal)
    add_mixture_fields(c, mixture="uniform")
    c.online = online_config(feedback_tokens=1024)
    return c
