"""The BiMix paper's proxy model (12 x 768, 12 heads, ~85M non-embedding parameters), for GPU/TPU.

Recipe of Ge et al. (arXiv 2405.14908, section 4): sequences of 1024 tokens, global batch 512, AdamW
(b1 0.9, b2 0.99, eps 1e-8, weight decay 0.01), peak lr 1e-3 decayed exponentially by 10x over
training, bf16, data parallel; up to 200k steps (~105B tokens). Warmup is not stated in the paper.

    python -m experiments.train --config=configs/proxy.py --workdir=workdirs/proxy \
        --config.data.path='/data/pile/train/*.jsonl.zst' --config.mixture=natural             # 1 GPU
    python -m experiments.train --config=configs/proxy.py --workdir=workdirs/proxy \
        --config.data.path='/data/pile/train/*.jsonl.zst' --config.train.microbatches=1        # 8 GPUs
    python -m experiments.train --config=configs/proxy.py:runlocal --workdir=/tmp/proxy   # CPU smoke test
"""

from __future__ import annotations

import ml_collections

from configs.common import data_config, parse_arg


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    arg = parse_arg(arg, runlocal=False, steps=200_000)
    c = ml_collections.ConfigDict()
    # Corpus (fields of bimix_jax/data/spec.py): Pile-style jsonl records, domain from meta.pile_set_name;
    # data.path must be set on the command line.
    c.data = data_config(source="jsonl", domain_field="meta.pile_set_name", vocab_size=32768,
                         tokenizer_sample_chars=5_000_000)
    # Training mixture: 'uniform', 'natural' (token shares of the corpus) or 'domain=weight,...'.
    c.mixture = "natural"
    # Rescale mixture weights that do not sum to 1 instead of refusing them.
    c.normalize_mixture = False
    # The run's id in the loss table ('' = the workdir's folder name).
    c.run_name = ""

    c.model = ml_collections.ConfigDict()
    c.model.D = 768  # model width, units
    c.model.H = 12  # attention heads (head width 64)
    c.model.L = 12  # transformer blocks
    c.model.F = 3072  # MLP hidden width (4 x D), units
    c.model.dtype = "bfloat16"  # compute dtype; parameters and optimizer state stay float32
    c.model.remat = False  # recompute block activations in the backward pass (memory for ~1/3 more compute)
    c.model.attention = "auto"  # auto: jax.nn.dot_product_attention (cuDNN flash) on GPU/TPU, einsum on CPU

    c.optim = ml_collections.ConfigDict()
    c.optim.lr = 1e-3  # peak learning rate
    c.optim.schedule = "exponential"  # lr decays exponentially ...
    c.optim.final_lr_fraction = 0.1  # ... to 10x lower at the last step
    c.optim.warmup_steps = 2000  # linear warmup, steps (not stated in the paper)
    c.optim.b1 = 0.9  # AdamW first-moment decay
    c.optim.b2 = 0.99  # AdamW second-moment decay
    c.optim.eps = 1e-8  # AdamW epsilon
    c.optim.weight_decay = 0.01  # decoupled weight decay on matrices
    c.optim.grad_clip = 1.0  # global-norm gradient clipping; 0 = off

    c.train = ml_collections.ConfigDict()
    c.train.steps = arg.steps  # optimizer steps (paper: up to 200k)
    c.train.batch_size = 512  # global batch, sequences (524,288 tokens per step)
    # Gradient accumulation slices per step: 8 on one 80 GB GPU (64 sequences at a time, ~37 GiB estimated by
    # bimix_jax/train/memory.py); 1 on 8 GPUs (64 per GPU). A config that cannot fit is refused before training.
    c.train.microbatches = 8
    c.train.seq_len = 1024  # tokens per sequence
    c.train.seed = 0  # model initialisation and data stream
    c.train.eval_every = 5000  # steps between per-domain validation losses (~2.6B tokens)
    c.train.eval_tokens = 1_048_576  # validation tokens per domain
    c.train.eval_batch_size = 64  # validation sequences per forward pass
    c.train.checkpoint_every = 2500  # steps between checkpoints
    c.train.keep_checkpoints = 2  # most recent checkpoints kept
    c.train.log_every = 100  # steps between metrics records and progress lines

    if arg.runlocal:  # Same code path on a CPU with the embedded corpus and a small model.
        c.data = data_config(source="embedded", embedded_chars_per_domain=100_000, vocab_size=512,
                             tokenizer_sample_chars=50_000)
        c.mixture = "uniform"
        c.model.D, c.model.H, c.model.L, c.model.F, c.model.dtype = 64, 4, 2, 256, "float32"
        c.optim.warmup_steps = 5
        c.train.steps, c.train.batch_size, c.train.microbatches, c.train.seq_len = 40, 16, 2, 64
        c.train.eval_every, c.train.checkpoint_every, c.train.log_every = 20, 20, 10
        c.train.eval_tokens, c.train.eval_batch_size = 2048, 16
    return c
