"""Typed run spec, optimizer, train state and the jitted pure train step.

The config (a ConfigDict) becomes frozen dataclasses at one boundary, `RunSpec.from_config`; nothing
below reads the config. `make_train_step` returns a pure function

    train_step(state, data, key, step, proportions_D) -> (state, metrics)

that samples its batch inside jit (`bimix_jax.data.sampler`) from the device-resident token buffers `data`, so a
new mixture never recompiles. With `batch_input=True`, `data` is instead the step's batch itself,
`{"x": [B, seq_len + 1] int32, "domain": [B] int32}`, read on the host from a token store
(`bimix_jax.train.inputs`); the key is then unused and the proportions only size the row ledger.
`make_group_train_step` is the same step vmapped over K runs (stacked states, keys, steps, mixtures, and
stacked batches with `batch_input`).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from bimix_jax.data import sampler
from bimix_jax.errors import InputError
from bimix_jax.checks import in_range
from bimix_jax.model import DecoderConfig, init_params, token_losses

SCHEDULES = ("cosine", "exponential", "constant")
# (field, low, high, low open, high open): AdamW's decays must stay below 1 (b1 = 1 never updates the
# first moment and turns the step into 0/0), eps must be positive.
OPTIM_RANGES = (("lr", 0, None, True, False), ("b1", 0, 1, False, True), ("b2", 0, 1, False, True),
                ("eps", 0, 1, True, False), ("weight_decay", 0, None, False, False),
                ("grad_clip", 0, None, False, False))


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    D: int = 64
    H: int = 4
    L: int = 2
    F: int = 256
    dtype: str = "float32"
    remat: bool = False  # recompute block activations in the backward pass
    attention: str = "auto"  # auto | einsum | xla | cudnn (see bimix_jax.model)

    def decoder(self, vocab_size: int, max_len: int) -> DecoderConfig:
        return DecoderConfig(D=self.D, H=self.H, L=self.L, F=self.F, V=vocab_size, max_len=max_len,
                             dtype=self.dtype, remat=self.remat, attention=self.attention)


@dataclasses.dataclass(frozen=True)
class OptimSpec:
    lr: float = 1e-3  # peak learning rate
    schedule: str = "cosine"  # after warmup: cosine | exponential | constant
    warmup_steps: int = 0
    final_lr_fraction: float = 0.1  # lr at the last step / peak lr (cosine and exponential)
    b1: float = 0.9
    b2: float = 0.99
    eps: float = 1e-8
    weight_decay: float = 0.01  # decoupled (AdamW), on matrices only
    grad_clip: float = 1.0  # global-norm clipping; 0 disables


@dataclasses.dataclass(frozen=True)
class TrainSpec:
    steps: int = 100
    batch_size: int = 8  # global batch, sequences; divisible by microbatches x device count
    microbatches: int = 1  # gradient accumulation: the batch is processed in this many slices per step
    seq_len: int = 32  # tokens per sequence (inputs)
    seed: int = 0  # model init and data stream
    eval_every: int = 50  # steps between per-domain evaluations (and at the last step)
    eval_tokens: int = 4096  # validation tokens per domain (first tokens of the val buffer)
    eval_batch_size: int = 16  # sequences per evaluation chunk; divisible by the device count
    checkpoint_every: int = 50  # steps between checkpoints (and at the last step)
    keep_checkpoints: int = 2  # most recent checkpoints kept
    log_every: int = 10  # steps between metrics records / progress lines


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """Everything that decides a run's numbers, except the data itself (identified by fingerprint)."""

    model: ModelSpec
    optim: OptimSpec
    train: TrainSpec

    def __post_init__(self):
        t, o = self.train, self.optim
        for name in ("steps", "batch_size", "microbatches", "seq_len", "eval_every", "eval_tokens", "eval_batch_size",
                     "checkpoint_every", "keep_checkpoints", "log_every"):
            if getattr(t, name) < 1:
                raise InputError(f"train.{name}={getattr(t, name)} must be >= 1")
        if t.batch_size % t.microbatches:
            raise InputError(f"train.batch_size={t.batch_size} is not divisible by train.microbatches={t.microbatches}")
        if o.schedule not in SCHEDULES:
            raise InputError(f"optim.schedule={o.schedule!r} is unknown; choose one of {', '.join(SCHEDULES)}")
        if not o.lr > 0:
            raise InputError(f"optim.lr={o.lr} must be > 0")
        if not 0 <= o.warmup_steps < t.steps:
            raise InputError(f"optim.warmup_steps={o.warmup_steps} must lie in [0, train.steps={t.steps})")
        if not 0 < o.final_lr_fraction <= 1:
            raise InputError(f"optim.final_lr_fraction={o.final_lr_fraction} must lie in (0, 1]")
        if o.grad_clip < 0 or o.weight_decay < 0:
            raise InputError("optim.grad_clip and optim.weight_decay must be >= 0")
        for name, lo, hi, lo_open, hi_open in OPTIM_RANGES:
            in_range(f"optim.{name}", getattr(o, name), low=lo, high=hi, low_open=lo_open, high_open=hi_open)
        self.model.decoder(64, t.seq_len)  # Checks the model dimensions.

    @classmethod
    def from_config(cls, config: Mapping) -> RunSpec:
        """From the `model`, `optim` and `train` sections of a config (unknown fields are refused)."""
        parts = {}
        for name, kind in (("model", ModelSpec), ("optim", OptimSpec), ("train", TrainSpec)):
            section = dict(config[name])
            known = {f.name for f in dataclasses.fields(kind)}
            unknown = sorted(set(section) - known)
            if unknown:
                raise InputError(f"config.{name}.{unknown[0]} is not a {name} field; remove it")
            parts[name] = kind(**section)
        return cls(**parts)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class TrainState(NamedTuple):
    params: Any
    opt_state: Any
    rows_D: jax.Array  # [D] int32, rows drawn per domain so far (the sampler's ledger)


def lr_schedule(o: OptimSpec, steps: int) -> optax.Schedule:
    """Linear warmup to `lr`, then cosine or exponential decay to `lr * final_lr_fraction` at `steps`."""
    decay_steps = steps - o.warmup_steps
    if o.schedule == "cosine":
        after = optax.cosine_decay_schedule(o.lr, decay_steps, alpha=o.final_lr_fraction)
    elif o.schedule == "exponential":  # The BiMix paper's "decayed exponentially by 10x over training".
        after = optax.exponential_decay(o.lr, decay_steps, decay_rate=o.final_lr_fraction)
    else:
        after = optax.constant_schedule(o.lr)
    if not o.warmup_steps:
        return after
    warmup = optax.linear_schedule(0.0, o.lr, o.warmup_steps)
    return optax.join_schedules([warmup, after], [o.warmup_steps])


def make_optimizer(o: OptimSpec, steps: int) -> optax.GradientTransformation:
    decay_mask = lambda params: jax.tree_util.tree_map(lambda x: x.ndim >= 2, params)  # noqa: E731
    adamw = optax.adamw(lr_schedule(o, steps), b1=o.b1, b2=o.b2, eps=o.eps, weight_decay=o.weight_decay,
                        mask=decay_mask)
    return optax.chain(optax.clip_by_global_norm(o.grad_clip), adamw) if o.grad_clip else adamw


def init_state(cfg: DecoderConfig, optimizer: optax.GradientTransformation, key: jax.Array,
               num_domains: int) -> TrainState:
    params = init_params(cfg, key)
    return TrainState(params, optimizer.init(params), jnp.zeros((num_domains,), jnp.int32))


def _train_step(
    state: TrainState,
    data: sampler.TrainBuffers,
    key: jax.Array,
    step: jax.Array,
    proportions_D: jax.Array,
    *,
    cfg: DecoderConfig,
    optimizer: optax.GradientTransformation,
    schedule: optax.Schedule,
    batch_size: int,
    seq_len: int,
    microbatches: int,
    batch_sharding: jax.sharding.Sharding | None,
    batch_input: bool = False,
) -> tuple[TrainState, dict]:
    if batch_input:
        x_BxS, domain_B = data["x"], data["domain"]
    else:
        step_key = jax.random.fold_in(key, step)
        x_BxS, domain_B = sampler.sample_batch(data, step_key, proportions_D, batch_size=batch_size, seq_len=seq_len)
    grad_fn = jax.value_and_grad(lambda params, x: jnp.mean(token_losses(cfg, params, x)))
    if microbatches == 1:
        if batch_sharding is not None:
            x_BxS = jax.lax.with_sharding_constraint(x_BxS, batch_sharding)
        loss, grads = grad_fn(state.params, x_BxS)
    else:  # Gradient accumulation: equal slices, each sharded over the devices like a full batch.
        x_AxBxS = x_BxS.reshape(microbatches, batch_size // microbatches, -1)
        if batch_sharding is not None:
            x_AxBxS = jax.lax.with_sharding_constraint(
                x_AxBxS, jax.sharding.NamedSharding(batch_sharding.mesh, jax.sharding.PartitionSpec(None, "data")))

        def accumulate(total, x_BxS):
            return jax.tree_util.tree_map(jnp.add, total, grad_fn(state.params, x_BxS)), None

        zero = (jnp.zeros((), jnp.float32), jax.tree_util.tree_map(jnp.zeros_like, state.params))
        (loss, grads), _ = jax.lax.scan(accumulate, zero, x_AxBxS)
        loss, grads = jax.tree_util.tree_map(lambda g: g / microbatches, (loss, grads))
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    rows_D = state.rows_D + sampler.rows_per_domain(domain_B, proportions_D.shape[0])
    metrics = {"loss": loss, "lr": schedule(step), "grad_norm": optax.global_norm(grads), "rows_D": rows_D}
    return TrainState(params, opt_state, rows_D), metrics


def _step_fn(cfg: DecoderConfig, spec: RunSpec, batch_sharding: jax.sharding.Sharding | None,
             batch_input: bool = False) -> Callable:
    return functools.partial(
        _train_step,
        cfg=cfg,
        optimizer=make_optimizer(spec.optim, spec.train.steps),
        schedule=lr_schedule(spec.optim, spec.train.steps),
        batch_size=spec.train.batch_size,
        seq_len=spec.train.seq_len,
        microbatches=spec.train.microbatches,
        batch_sharding=batch_sharding,
        batch_input=batch_input,
    )


def _jit_donating_state(fn: Callable, n_args: int, state_sharding: Any, data_sharding: Any) -> Callable:
    """`jax.jit(fn)` donating argument 0 (the state); with `state_sharding`, the state and the data (arguments 0
    and 1) are placed by the given shardings and the other `n_args - 2` arguments are left to the compiler."""
    kwargs = {}
    if state_sharding is not None:
        kwargs["in_shardings"] = (state_sharding, data_sharding) + (None,) * (n_args - 2)
        kwargs["out_shardings"] = (state_sharding, None)
    return jax.jit(fn, donate_argnums=(0,), **kwargs)


def make_train_step(
    cfg: DecoderConfig,
    spec: RunSpec,
    *,
    state_sharding: Any = None,
    data_sharding: Any = None,
    batch_sharding: jax.sharding.Sharding | None = None,
    batch_input: bool = False,
) -> Callable:
    """The jitted `train_step(state, data, key, step, proportions_D) -> (state, metrics)`; donates `state`.

    `data`: the token buffers the step samples from, or with `batch_input` the batch (see the module docstring).
    """
    return _jit_donating_state(_step_fn(cfg, spec, batch_sharding, batch_input), 5, state_sharding, data_sharding)


def _group_train_step(state_K: TrainState, data: Any, key_K: jax.Array, step_K: jax.Array,
                      proportions_KxD: jax.Array, active_K: jax.Array, *, step_fn: Callable,
                      batch_input: bool) -> tuple[TrainState, dict]:
    in_axes = (0, 0 if batch_input else None, 0, 0, 0)
    new_K, metrics_K = jax.vmap(step_fn, in_axes=in_axes)(state_K, data, key_K, step_K, proportions_KxD)

    def keep(new, old):  # A run that is not active keeps its state (it has finished, others have not).
        return jnp.where(jnp.reshape(active_K, (-1,) + (1,) * (new.ndim - 1)), new, old)

    return jax.tree_util.tree_map(keep, new_K, state_K), metrics_K


def make_group_train_step(
    cfg: DecoderConfig,
    spec: RunSpec,
    *,
    state_sharding: Any = None,
    data_sharding: Any = None,
    batch_sharding: jax.sharding.Sharding | None = None,
    batch_input: bool = False,
) -> Callable:
    """K runs in one program: the jitted `group_step(state_K, data, key_K, step_K, proportions_KxD, active_K)
    -> (state_K, metrics_K)`.

    Every leaf of `state_K` and of the metrics has a leading run axis K; each run draws its own batch
    from its own key, step and mixture (`jax.vmap` of the single-run step; `batch_sharding` shards the
    rows of each run's batch), or with `batch_input` takes its own batch, stacked on a leading K axis of
    `data`. Runs with `active_K` False keep their state. Donates `state_K`.
    """
    fn = functools.partial(_group_train_step, step_fn=_step_fn(cfg, spec, batch_sharding, batch_input),
                           batch_input=batch_input)
    return _jit_donating_state(fn, 6, state_sharding, data_sharding)
