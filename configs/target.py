r"""The BiMix paper's scaled-up model (16 x 2048, 32 heads, ~0.8B non-embedding parameters), for GPU/TPU.

Trained on an optimised mixture with the proxy's recipe (configs/proxy.py): seq 1024, global batch 512,
AdamW b2 0.99, lr 1e-3 decayed exponentially by 10x, bf16. The paper does not state the MLP width;
4 x D is used here.

    python -m experiments.train --config=configs/target.py --config.data.path=/data/pile_store \
        --config.mixture=workdirs/pipeline/mixture.json --workdir=workdirs/target
    python -m experiments.train --config=configs/target.py:runlocal --workdir=/tmp/target   # CPU smoke test

Everything but the model is the proxy's (configs/proxy.py). Launching on 8 GPUs or a TPU pod: docs/real_scale.md.
"""

from __future__ import annotations

import ml_collections

from configs import proxy
from configs.common import model_config, parse_arg


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    parsed = parse_arg(arg, runlocal=False, steps=200_000)
    c = proxy.get_config(arg)
    if parsed.runlocal:
        return c
    # Head width 64; F = 4 x D (not stated in the paper). Estimated (bimix_jax/train/memory.py, cuDNN attention):
    # 42 GiB on one 80 GB GPU with remat and 8 slices (102 without remat), 28 GiB per GPU on 8 with 1 slice; on a
    # TPU v4-32 slice (16 chips, XLA attention) 23 GiB per chip with 1 slice reading a token store, 21 GiB with 2
    # slices and the largest in-memory corpus.
    c.model = model_config(D=2048, H=32, L=16, F=8192, dtype="bfloat16", remat=True)
    return c
