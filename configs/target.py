"""The BiMix paper's scaled-up model (16 x 2048, 32 heads, ~0.8B non-embedding parameters), for GPU/TPU.

Trained on an optimised mixture with the proxy's recipe (configs/proxy.py): seq 1024, global batch 512,
AdamW b2 0.99, lr 1e-3 decayed exponentially by 10x, bf16. The paper does not state the MLP width;
4 x D is used here.

    python -m experiments.train --config=configs/target.py --workdir=workdirs/target \
        --config.data.path='/data/pile/train/*.jsonl.zst' --config.mixture=pile_cc=0.4,github=0.1,...   # 1 GPU
    (8 GPUs: add --config.train.microbatches=1; launch commands for TPU pods: README, "Real scale")
"""

from __future__ import annotations

import ml_collections

from configs import proxy
from configs.common import parse_arg


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    parsed = parse_arg(arg, runlocal=False, steps=200_000)
    c = proxy.get_config(arg)  # Same data, optimizer and loop; only the model differs.
    if parsed.runlocal:
        return c
    c.model.D = 2048  # model width, units
    c.model.H = 32  # attention heads (head width 64)
    c.model.L = 16  # transformer blocks
    c.model.F = 8192  # MLP hidden width (4 x D; not stated in the paper), units
    c.model.remat = True  # recompute block activations: ~42 GiB estimated on one 80 GB GPU (60 GiB without)
    # Gradient accumulation slices: 8 on one 80 GB GPU (64 sequences at a time); 1 on 8 GPUs.
    c.train.microbatches = 8
    return c
