r"""The BiMix paper's proxy model (12 x 768, 12 heads, ~85M non-embedding parameters), for GPU/TPU.

Recipe of Ge et al. (arXiv 2405.14908, section 4): sequences of 1024 tokens, global batch 512, AdamW
(b1 0.9, b2 0.99, eps 1e-8, weight decay 0.01), peak lr 1e-3 decayed exponentially by 10x over
training, bf16, data parallel; up to 200k steps (~105B tokens). Warmup is not stated in the paper.

    python -m experiments.prepare_store --mixed='/data/pile/train/*.jsonl.zst' --out=/data/pile_store --workers=16
    python -m experiments.train --config=configs/proxy.py --config.data.path=/data/pile_store --workdir=workdirs/proxy
    python -m experiments.train --config=configs/proxy.py:runlocal --workdir=/tmp/proxy   # CPU smoke test

The corpus is a token store (data.source=store): batches are read on the host, whatever the corpus's size.

Meaning and unit of every field: configs/common.py. Launching on 8 GPUs or a TPU pod: docs/real_scale.md.
"""

from __future__ import annotations

import ml_collections

from configs.common import (add_mixture_fields, data_config, model_config, online_config, optim_config,
                            parse_arg, train_config)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    arg = parse_arg(arg, runlocal=False, steps=200_000)
    c = ml_collections.ConfigDict()
    # A token store made by experiments.prepare_store (e.g. from the Pile, domains from meta.pile_set_name);
    # data.path must be set on the command line. data.domains chooses and orders its domains ('' = all). A store
    # brings its own tokenizer; 32768 is prepare_store's default vocabulary (the memory estimates assume it).
    c.data = data_config(source="store", vocab_size=32768)
    add_mixture_fields(c, mixture="natural")
    c.model = model_config(D=768, H=12, L=12, F=3072, dtype="bfloat16")  # head width 64, F = 4 x D
    c.optim = optim_config(lr=1e-3, schedule="exponential", warmup_steps=2000)  # warmup: not stated in the paper
    # Global batch 512 x 1024 = 524,288 tokens per step. Gradient accumulation: 8 slices on one 80 GB GPU (64
    # sequences at a time); set 1 on 8 GPUs (64 per GPU). Estimated by bimix_jax/train/memory.py under cuDNN flash
    # attention (what model.attention=auto takes on such a GPU): 37 / 36 GiB per GPU, 45 / 44 GiB with the largest
    # in-memory corpus, within 90% of JAX's default 75% pool of 80 GB (50 GiB). XLA attention (TPU, or a GPU where
    # cuDNN cannot run) keeps the S x S scores: ~4x the slices. A config that cannot fit is refused before training.
    c.train = train_config(steps=arg.steps, batch_size=512, microbatches=8, seq_len=1024, eval_every=5000,
                           eval_tokens=1_048_576, eval_batch_size=64, checkpoint_every=2500, log_every=100)
    # Online methods at this scale: Aioli's full-SlimPajama setting (K = 200 steps per round, S = 10 steps per
    # probe), a feedback set of 64k tokens per domain.
    c.online = online_config(feedback_tokens=65_536, round_steps=200, probe_steps=10)

    if arg.runlocal:  # The same code path on a CPU with the embedded corpus and a small model.
        c.data = data_config(source="embedded", embedded_chars_per_domain=100_000, vocab_size=512,
                             tokenizer_sample_chars=50_000)
        c.mixture = "uniform"
        c.model.D, c.model.H, c.model.L, c.model.F, c.model.dtype = 64, 4, 2, 256, "float32"
        c.optim.warmup_steps = 5
        c.train.steps, c.train.batch_size, c.train.microbatches, c.train.seq_len = 40, 16, 2, 64
        c.train.eval_every, c.train.checkpoint_every, c.train.log_every = 20, 20, 10
        c.train.eval_tokens, c.train.eval_batch_size = 2048, 16
        c.online.feedback_tokens, c.online.aioli.round_steps, c.online.aioli.probe_steps = 256, 20, 1
        c.online.aioli.sweeps = 1
    return c
