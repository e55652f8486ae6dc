"""The BiMix paper's scaled-up model (16 x 2048, 32 heads, ~0.8B non-embedding parameters), for GPU/TPU.

Trained on an optimised mixture with the proxy's recipe (configs/proxy.py): seq 1024, global batch 512,
AdamW b2 0.99, lr 1e-3 decayed exponentially by 10x, bf16. The paper does not state the MLP width;
4 x D is used here.

    python -m experiments.train --config=configs/target.py --workdir=workdirs/target \
        --config.data.path='/data/pile/train/*.jsonl.zst' --config.mixture=pile_cc=0.4,github=0.1,...
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
    c.train.microbatches = 16  # gradient accumulation slices (32 sequences at a time)
    return c
