"""The sections every config is built from, each field with its meaning and unit, and `parse_arg`.

A config file (`get_config(arg)`) calls these builders with the values it sets and nothing else, so it reads top
to bottom: no field is inherited and then deleted. The defaults here are the code's defaults (the dataclasses
in `bimix_jax/train/state.py`, `bimix_jax/data/spec.py`, `bimix_jax/online/`).
"""

from __future__ import annotations

import ml_collections

from bimix_jax.data.spec import DataSpec


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
    """Parses a config argument like `'runlocal,steps=200'` into typed values.

    `--config=configs/x.py:runlocal,steps=200` passes `'runlocal,steps=200'` to `get_config`. Every key
    must be in `defaults`, whose types decide how a value is parsed; a bare key sets a bool to True.
    """
    out = ml_collections.ConfigDict(defaults)
    if not arg:
        return out
    for item in arg.split(","):
        item = item.strip()
        if not item:
            continue
        key, _, value = item.partition("=")
        if key not in defaults:
            raise ValueError(f"config argument {key!r} is unknown; known: {', '.join(sorted(defaults))}")
        default = defaults[key]
        if isinstance(default, bool):
            out[key] = value.lower() in ("", "1", "true", "yes")
        elif value == "":
            raise ValueError(f"config argument {key!r} needs a value, like {key}={default}")
        else:
            out[key] = type(default)(value)
    return out


def data_config(**overrides) -> ml_collections.ConfigDict:
    """`config.data`: exactly the `DataSpec` fields (meaning and unit of each: `bimix_jax/data/spec.py`).

    Starts from the `DataSpec` defaults; `overrides` must name existing fields.
    """
    fields = DataSpec().to_dict()
    unknown = sorted(set(overrides) - set(fields))
    if unknown:
        raise ValueError(f"data field {unknown[0]!r} is unknown; known: {', '.join(fields)}")
    return ml_collections.ConfigDict({**fields, **overrides})


def add_mixture_fields(c: ml_collections.ConfigDict, mixture: str) -> None:
    """The fields of a single run's mixture and name (`experiments.train`, `train_many`)."""
    # Training mixture: 'uniform' ('stratified' is read as it), 'natural' (token shares of the corpus) or
    # 'code=0.3,prose=0.7,...' (domains not named get weight 0); see bimix_jax/mixture/proportions.py.
    c.mixture = mixture
    # Rescale mixture weights that do not sum to 1 instead of refusing them.
    c.normalize_mixture = False
    # The run's id in the loss table ('' = the workdir's folder name).
    c.run_name = ""


def model_config(*, D: int, H: int, L: int, F: int, dtype: str = "float32", remat: bool = False,
                 attention: str = "auto") -> ml_collections.ConfigDict:
    m = ml_collections.ConfigDict()
    m.D = D  # model width (embedding size), units
    m.H = H  # attention heads; D / H is the head width (even, for rotary embeddings)
    m.L = L  # transformer blocks
    m.F = F  # MLP hidden width, units
    m.dtype = dtype  # compute dtype: float32 (CPU) or bfloat16 (GPU/TPU); parameters stay float32
    m.remat = remat  # recompute block activations in the backward pass (memory for ~1/3 more compute)
    m.attention = attention  # auto (cuDNN on GPU where it can, XLA on TPU, einsum on CPU) | einsum | xla | cudnn
    return m


def optim_config(*, lr: float, schedule: str, warmup_steps: int, final_lr_fraction: float = 0.1, b1: float = 0.9,
                 b2: float = 0.99, eps: float = 1e-8, weight_decay: float = 0.01,
                 grad_clip: float = 1.0) -> ml_collections.ConfigDict:
    o = ml_collections.ConfigDict()
    o.lr = lr  # peak learning rate (AdamW)
    o.schedule = schedule  # decay after warmup: cosine | exponential (BiMix: 10x over training) | constant
    o.warmup_steps = warmup_steps  # linear warmup from 0, steps
    o.final_lr_fraction = final_lr_fraction  # learning rate at the last step / peak (cosine, exponential)
    o.b1 = b1  # AdamW first-moment decay
    o.b2 = b2  # AdamW second-moment decay
    o.eps = eps  # AdamW epsilon
    o.weight_decay = weight_decay  # decoupled weight decay on matrices (not norms, biases)
    o.grad_clip = grad_clip  # clip gradients to this global norm; 0 = off
    return o


def train_config(*, steps: int, batch_size: int, seq_len: int, eval_every: int, eval_tokens: int,
                 eval_batch_size: int, checkpoint_every: int, log_every: int, microbatches: int = 1, seed: int = 0,
                 keep_checkpoints: int = 2) -> ml_collections.ConfigDict:
    t = ml_collections.ConfigDict()
    t.steps = steps  # optimizer steps
    t.batch_size = batch_size  # global batch, sequences (divisible by microbatches x device count)
    t.microbatches = microbatches  # gradient accumulation slices per step (1 = none)
    t.seq_len = seq_len  # tokens per training sequence
    t.seed = seed  # model initialisation and data stream
    t.eval_every = eval_every  # steps between per-domain validation losses (and at the last step)
    t.eval_tokens = eval_tokens  # validation tokens per domain (the first ones of its validation split)
    t.eval_batch_size = eval_batch_size  # validation sequences per forward pass (divisible by the device count)
    t.checkpoint_every = checkpoint_every  # steps between checkpoints (and at the last step)
    t.keep_checkpoints = keep_checkpoints  # most recent checkpoints kept
    t.log_every = log_every  # steps between metrics.jsonl records and progress lines
    return t


def online_config(*, feedback_tokens: int, round_steps: int = 100, sweeps: int = 2, probe_steps: int = 4,
                  one_hot_factor: float = 0.75, eta: float = 1.0, ema: float = -1.0, doremi_eta: float = 1.0,
                  doremi_smoothing: float = 1e-3, doremi_update_every: int = 10, bimix_round_steps: int = 50,
                  bimix_explore_steps: int = 4, bimix_tilt: float = 0.5, bimix_min_step: int = 40,
                  bimix_rate: float = 1.0, bimix_floor: float = 0.02) -> ml_collections.ConfigDict:
    """`config.online` (bimix_jax/online/spec.py): how the mixture evolves during a run."""
    o = ml_collections.ConfigDict()
    # 'static' trains `mixture` throughout; 'aioli' starts from uniform and learns the mixture online (Chen et al.);
    # 'online_bimix' fits BiMix's law to the run's own feedback and steers toward its optimum; 'doremi' needs a
    # reference run, which experiments/compare_methods.py trains first.
    o.method = "static"
    # Tokens per domain of the online methods' feedback set: from the selection split when the corpus has one
    # (data.select_fraction / min_select_docs), else carved off the end of each domain's training tokens.
    o.feedback_tokens = feedback_tokens
    o.aioli = a = ml_collections.ConfigDict()
    a.round_steps = round_steps  # K, steps per round, probes included
    a.sweeps = sweeps  # R, LearnParams sweeps over the domains per round
    a.probe_steps = probe_steps  # S, steps per probe
    a.one_hot_factor = one_hot_factor  # f, weight of the probed domain in its probe mixture (< 1: deconvolved)
    a.eta = eta  # exponentiated-gradient step size
    a.ema = ema  # EMA gamma of A; < 0 = off
    a.diagonal = False  # keep only A's diagonal
    a.eg_start = "uniform"  # after a prior (restricted Aioli): EG restarts from 'uniform' (code) or from 'prior'
    a.exploit = "learned"  # exploit segments on the 'learned' p, or on 'uniform' (the control: the cost of probing)
    o.doremi = d = ml_collections.ConfigDict()
    d.eta = doremi_eta  # EG step size per training step (official reweight_eta: 1)
    d.smoothing = doremi_smoothing  # weight of uniform mixed in per step (paper: 1e-3; official reweight_eps: 1e-4)
    d.update_every = doremi_update_every  # steps between measurements of the excess (one EG step replayed per step)
    o.online_bimix = b = ml_collections.ConfigDict()
    b.round_steps = bimix_round_steps  # K, steps between refits of the law, exploration included
    b.explore_steps = bimix_explore_steps  # steps of each exploration segment (one per domain per round)
    b.tilt = bimix_tilt  # exploration segment j trains (1 - tilt) p + tilt on domain j
    b.min_step = bimix_min_step  # feedback before this step is not fitted (warmup)
    b.rate = bimix_rate  # p moves this fraction of the way to the law's optimum after each refit
    b.floor = bimix_floor  # lowest proportion of any domain in the law's optimum
    return o
