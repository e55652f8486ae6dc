"""A decoder-only transformer in `flax.linen` (pure `init`/`apply` parameter pytrees).

Pre-norm blocks (RMSNorm -> causal self-attention -> residual, RMSNorm -> GELU MLP -> residual),
rotary position embeddings (RoPE) on queries and keys (no position parameters), a final RMSNorm and
logits tied to the input embedding. Parameters are float32; `dtype` sets the compute dtype
(`bfloat16` for GPU/TPU configs, `float32` on CPU). Logits are returned in float32.

Every parameter carries logical axis names (`nn.with_partitioning`: vocab, embed, heads, kv, mlp) that
`bimix_jax.train.sharding` maps onto a device mesh; `init_params` returns plain arrays. `remat=True`
recomputes each block's activations in the backward pass.

Attention (`attention=`): `einsum` (written out, `causal_attention`), `xla`
(`jax.nn.dot_product_attention(implementation='xla')`, which materialises the scores), `cudnn` (cuDNN flash
attention: O(S) memory per head) or `auto`: cuDNN on a GPU when its constraints hold (bfloat16, head width a
multiple of 8 and at most 128, or 256 from compute capability 9.0, and a trial compilation succeeds), else
XLA with the reason logged; XLA on TPU; einsum on CPU. `attention_choice` says which path a config takes;
the memory estimate (`bimix_jax.train.memory`) follows it.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from bimix_jax.errors import InputError

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
ATTENTION = ("auto", "einsum", "xla", "cudnn")
ATTENTION_ALIASES = {"dot_product": "xla"}  # the older name of the XLA path, read as it


def _init(init, *axes: str | None):
    """An initializer carrying logical axis names (read by `bimix_jax.train.sharding`)."""
    return nn.with_partitioning(init, axes)


@dataclasses.dataclass(frozen=True)
class AttentionChoice:
    """The attention path a model runs, and why."""

    impl: str  # einsum | xla | cudnn
    reason: str

    @property
    def flash(self) -> bool:
        """True when attention keeps O(S) memory per head (cuDNN); the other paths keep the S x S scores."""
        return self.impl == "cudnn"


def _capability(compute_capability: str | None) -> tuple[int, ...] | None:
    try:
        return tuple(int(x) for x in str(compute_capability).split("."))
    except ValueError:
        return None


def cudnn_unsupported(dtype: str, head_dim: int, platform: str, compute_capability: str | None = None) -> str | None:
    """Why cuDNN flash attention cannot run here (None when its documented constraints hold)."""
    if platform != "gpu":
        return f"cuDNN flash attention needs a CUDA GPU, the devices are {platform}"
    if dtype not in ("bfloat16", "float16"):
        return f"model.dtype={dtype}: cuDNN flash attention needs bfloat16"
    cc = _capability(compute_capability)
    if cc is not None and cc < (8, 0):
        return f"compute capability {compute_capability} is below 8.0 (Ampere), which cuDNN flash attention needs"
    head_max = 256 if cc is not None and cc >= (9, 0) else 128
    if head_dim % 8 or head_dim > head_max:
        return f"head width D/H={head_dim} must be a multiple of 8 and at most {head_max} for cuDNN"
    return None


def choose_attention(requested: str, *, dtype: str, head_dim: int, platform: str,
                     compute_capability: str | None = None, probe=None) -> AttentionChoice:
    """The path for `model.attention=requested` on `platform` ('cpu', 'gpu', 'tpu').

    `probe()` (GPU only) returns None when cuDNN attention compiles for the model's shapes, else the reason;
    without it the documented constraints decide. An explicit 'cudnn' that cannot run is an `InputError`.
    """
    requested = ATTENTION_ALIASES.get(requested, requested)
    if requested in ("einsum", "xla"):
        return AttentionChoice(requested, f"model.attention={requested}")
    why = cudnn_unsupported(dtype, head_dim, platform, compute_capability)
    if why is None and probe is not None:
        why = probe()
    if requested == "cudnn":
        if why:
            raise InputError(f"model.attention='cudnn' cannot run: {why}; set model.attention=auto")
        return AttentionChoice("cudnn", "model.attention=cudnn")
    if why is None:
        return AttentionChoice("cudnn", f"auto: cuDNN flash attention ({dtype}, head width {head_dim})")
    if platform == "cpu":
        return AttentionChoice("einsum", "auto on CPU: the einsum path (its gradient compiles faster on XLA:CPU)")
    if platform == "gpu":
        return AttentionChoice("xla", f"auto on GPU fell back to XLA attention: {why}")
    return AttentionChoice("xla", f"auto on {platform}: jax.nn.dot_product_attention, XLA implementation")


def _cudnn_probe(seq_len: int, heads: int, head_dim: int, dtype: str) -> str | None:
    """None when cuDNN causal attention and its gradient compile for [1, seq_len, heads, head_dim]; else why not."""
    x = jax.ShapeDtypeStruct((1, seq_len, heads, head_dim), DTYPES[dtype])

    def loss(q, k, v):
        out = jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation="cudnn")
        return jnp.sum(out.astype(jnp.float32))

    try:
        jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(x, x, x).compile()
    except Exception as e:  # noqa: BLE001 - any failure means: fall back, and say why
        lines = [line for line in str(e).splitlines() if line.strip()]
        return f"cuDNN attention did not compile ({type(e).__name__}: {lines[0][:200] if lines else ''})"
    return None


@functools.lru_cache(maxsize=64)
def _resolved(requested: str, dtype: str, head_dim: int, heads: int, seq_len: int) -> AttentionChoice:
    platform = jax.default_backend()
    capability = getattr(jax.local_devices()[0], "compute_capability", None) if platform == "gpu" else None
    probe = functools.partial(_cudnn_probe, seq_len, heads, head_dim, dtype) if platform == "gpu" else None
    choice = choose_attention(requested, dtype=dtype, head_dim=head_dim, platform=platform,
                              compute_capability=capability, probe=probe)
    log = logging.warning if platform == "gpu" and not choice.flash else logging.info
    log("attention: %s (%s)", choice.impl, choice.reason)
    return choice


def attention_choice(cfg: "DecoderConfig", platform: str | None = None,
                     compute_capability: str | None = None) -> AttentionChoice:
    """The attention path `cfg` runs on `platform` (default: JAX's default backend, where a GPU is probed once
    and the choice logged); on another platform the documented constraints decide (for estimates)."""
    if platform is None or platform == jax.default_backend():
        return _resolved(cfg.attention, cfg.dtype, cfg.K, cfg.H, cfg.max_len)
    return choose_attention(cfg.attention, dtype=cfg.dtype, head_dim=cfg.K, platform=platform,
                            compute_capability=compute_capability)


def _attend(cfg: "DecoderConfig", q_BxLxHxK: jax.Array, k_BxLxHxK: jax.Array, v_BxLxHxK: jax.Array) -> jax.Array:
    impl = attention_choice(cfg).impl
    if impl == "einsum":
        return causal_attention(q_BxLxHxK, k_BxLxHxK, v_BxLxHxK)
    return jax.nn.dot_product_attention(q_BxLxHxK, k_BxLxHxK, v_BxLxHxK, is_causal=True, implementation=impl)


@dataclasses.dataclass(frozen=True)
class DecoderConfig:
    """Model size: width D, heads H, layers L, MLP width F, vocabulary V, longest sequence max_len."""

    D: int
    H: int
    L: int
    F: int
    V: int
    max_len: int
    dtype: str = "float32"  # compute dtype: float32 or bfloat16
    rope_base: float = 10_000.0
    remat: bool = False  # recompute block activations in the backward pass (memory for compute)
    attention: str = "auto"  # auto | einsum | xla | cudnn (see the module docstring)

    def __post_init__(self):
        for name in ("D", "H", "L", "F", "V", "max_len"):
            if getattr(self, name) < 1:
                raise InputError(f"model.{name}={getattr(self, name)} must be >= 1")
        if self.D % self.H or (self.D // self.H) % 2:
            raise InputError(
                f"model.D={self.D} must be a multiple of model.H={self.H} with an even head width "
                "(rotary embeddings); change D or H"
            )
        if self.dtype not in DTYPES:
            raise InputError(f"model.dtype={self.dtype!r} is unknown; choose one of {', '.join(DTYPES)}")
        if self.attention not in ATTENTION and self.attention not in ATTENTION_ALIASES:
            raise InputError(f"model.attention={self.attention!r} is unknown; choose one of {', '.join(ATTENTION)}")

    @property
    def K(self) -> int:  # noqa: N802 - head width, single letter like the other dimensions.
        return self.D // self.H

    def num_params(self) -> tuple[int, int]:
        """(total, non-embedding) parameter counts; the embedding (V x D) is shared with the output."""
        D, F, L, V = self.D, self.F, self.L, self.V
        per_block = 4 * D * D + 2 * D * F + F + D + 2 * D  # attn (qkv + out), MLP (+biases), 2 norms
        non_embedding = L * per_block + D  # + final norm
        return non_embedding + V * D, non_embedding

    def flops_per_token(self, seq_len: int) -> int:
        """Model FLOPs of one training token (forward + backward), PaLM's convention: 6 (N + V D) + 12 L S D.

        N is the non-embedding parameter count; V D is the tied output projection (a matmul; the input
        lookup is a gather and is not counted); 12 L S D is attention's scores and weighted values over the
        full S x S square (causal masking not discounted). Remat's recomputation is not counted: these are
        model FLOPs, not hardware FLOPs.
        """
        _, non_embedding = self.num_params()
        return 6 * (non_embedding + self.V * self.D) + 12 * self.L * seq_len * self.D


def format_size(n: int) -> str:
    """A parameter count as a short size string: 1234567 -> '1.23M' (readable by `parse_model_size`)."""
    for scale, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= scale:
            return f"{n / scale:.3g}{suffix}"
    return str(int(n))


def param_count(params) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(params)))


def _rope(x_BxLxHxK: jax.Array, base: float) -> jax.Array:
    """Rotates channel pairs (i, i + K/2) by position-dependent angles."""
    L, K = x_BxLxHxK.shape[1], x_BxLxHxK.shape[3]
    freq_K2 = base ** (-jnp.arange(0, K // 2, dtype=jnp.float32) * 2.0 / K)
    angle_LxK2 = jnp.arange(L, dtype=jnp.float32)[:, None] * freq_K2[None, :]
    sin, cos = jnp.sin(angle_LxK2)[None, :, None, :], jnp.cos(angle_LxK2)[None, :, None, :]
    x1, x2 = jnp.split(x_BxLxHxK.astype(jnp.float32), 2, axis=-1)
    out = jnp.concatenate([x1 * cos - x2 * sin, x1 * sin + x2 * cos], axis=-1)
    return out.astype(x_BxLxHxK.dtype)


def causal_attention(q_BxLxHxK: jax.Array, k_BxLxHxK: jax.Array, v_BxLxHxK: jax.Array) -> jax.Array:
    """Softmax attention of each position over itself and earlier positions (scores and softmax in float32).

    The same arithmetic as `jax.nn.dot_product_attention(..., is_causal=True)` (XLA implementation), written
    out: its gradient compiles to a faster program on XLA:CPU (see `experiments/bench_train.py`).
    """
    L, K = q_BxLxHxK.shape[1], q_BxLxHxK.shape[3]
    s_BxHxLxL = jnp.einsum("blhk,bmhk->bhlm", q_BxLxHxK, k_BxLxHxK, preferred_element_type=jnp.float32)
    s_BxHxLxL = s_BxHxLxL * jnp.float32(1.0 / math.sqrt(K))
    causal_LxL = jnp.tril(jnp.ones((L, L), bool))
    s_BxHxLxL = jnp.where(causal_LxL, s_BxHxLxL, jnp.finfo(jnp.float32).min)
    p_BxHxLxL = jax.nn.softmax(s_BxHxLxL, axis=-1).astype(v_BxLxHxK.dtype)
    return jnp.einsum("bhlm,bmhk->blhk", p_BxHxLxL, v_BxLxHxK)


class Attention(nn.Module):
    cfg: DecoderConfig

    @nn.compact
    def __call__(self, x_BxLxD: jax.Array) -> jax.Array:
        c = self.cfg
        dtype = DTYPES[c.dtype]
        init = _init(nn.initializers.normal(0.02), "embed", None, "heads", "kv")
        qkv_BxLx3xHxK = nn.DenseGeneral((3, c.H, c.K), use_bias=False, dtype=dtype, kernel_init=init,
                                        name="qkv")(x_BxLxD)
        q_BxLxHxK, k_BxLxHxK, v_BxLxHxK = (qkv_BxLx3xHxK[:, :, i] for i in range(3))
        q_BxLxHxK, k_BxLxHxK = _rope(q_BxLxHxK, c.rope_base), _rope(k_BxLxHxK, c.rope_base)
        o_BxLxHxK = _attend(c, q_BxLxHxK, k_BxLxHxK, v_BxLxHxK)
        out_init = _init(nn.initializers.normal(0.02 / math.sqrt(2 * c.L)), "heads", "kv", "embed")
        return nn.DenseGeneral(c.D, axis=(-2, -1), use_bias=False, dtype=dtype, kernel_init=out_init,
                               name="out")(o_BxLxHxK)


class Mlp(nn.Module):
    cfg: DecoderConfig

    @nn.compact
    def __call__(self, x_BxLxD: jax.Array) -> jax.Array:
        c = self.cfg
        dtype = DTYPES[c.dtype]
        h_BxLxF = nn.Dense(c.F, dtype=dtype, kernel_init=_init(nn.initializers.normal(0.02), "embed", "mlp"),
                           bias_init=_init(nn.initializers.zeros, "mlp"), name="up")(x_BxLxD)
        h_BxLxF = jax.nn.gelu(h_BxLxF)
        out_init = _init(nn.initializers.normal(0.02 / math.sqrt(2 * c.L)), "mlp", "embed")
        return nn.Dense(c.D, dtype=dtype, kernel_init=out_init, bias_init=_init(nn.initializers.zeros, "embed"),
                        name="down")(h_BxLxF)


class Block(nn.Module):
    cfg: DecoderConfig

    @nn.compact
    def __call__(self, x_BxLxD: jax.Array) -> jax.Array:
        dtype = DTYPES[self.cfg.dtype]
        scale = _init(nn.initializers.ones, "embed")
        x_BxLxD = x_BxLxD + Attention(self.cfg, name="attn")(
            nn.RMSNorm(dtype=dtype, scale_init=scale, name="norm1")(x_BxLxD))
        return x_BxLxD + Mlp(self.cfg, name="mlp")(nn.RMSNorm(dtype=dtype, scale_init=scale, name="norm2")(x_BxLxD))


class Decoder(nn.Module):
    """`apply(params, tokens_BxL) -> logits_BxLxV` (float32)."""

    cfg: DecoderConfig

    def setup(self):
        c = self.cfg
        dtype = DTYPES[c.dtype]
        self.embed = nn.Embed(c.V, c.D, dtype=dtype, embedding_init=_init(nn.initializers.normal(0.02), "vocab", "embed"),
                              name="embed")
        block = nn.remat(Block) if c.remat else Block
        self.blocks = [block(c, name=f"block{i}") for i in range(c.L)]
        self.norm = nn.RMSNorm(dtype=dtype, scale_init=_init(nn.initializers.ones, "embed"), name="norm")

    def __call__(self, tokens_BxL: jax.Array) -> jax.Array:
        return self.decode(self.embed(tokens_BxL))

    def decode(self, x_BxLxD: jax.Array) -> jax.Array:
        """Logits from input embeddings (used directly by the causality test)."""
        if x_BxLxD.shape[1] > self.cfg.max_len:
            raise ValueError(f"sequence length {x_BxLxD.shape[1]} exceeds max_len {self.cfg.max_len}")
        for block in self.blocks:
            x_BxLxD = block(x_BxLxD)
        return self.embed.attend(self.norm(x_BxLxD)).astype(jnp.float32)


def init_params(cfg: DecoderConfig, key: jax.Array) -> dict:
    """Parameters of a fresh model (float32)."""
    return nn.meta.unbox(init_boxed_params(cfg, key))


def init_boxed_params(cfg: DecoderConfig, key: jax.Array) -> dict:
    """Parameters with their logical axis names (`nn.Partitioned` boxes)."""
    return Decoder(cfg).init(key, jnp.zeros((1, min(cfg.max_len, 8)), jnp.int32))["params"]


def token_losses(cfg: DecoderConfig, params: dict, x_BxS: jax.Array) -> jax.Array:
    """Per-token next-token cross-entropy [B, S-1] (nats) of windows `x_BxS` (inputs x[:, :-1]).

    Computed as logsumexp(logits) - logits[target] rather than by indexing `log_softmax`: the same value,
    but the gradient of the latter made XLA:CPU transpose the [B, L, V] gradient in a slow fused loop
    (about half of the train step of the tiny config; see `experiments/bench_train.py`).
    """
    logits_BxLxV = Decoder(cfg).apply({"params": params}, x_BxS[:, :-1])
    target_BxL = jnp.take_along_axis(logits_BxLxV, x_BxS[:, 1:, None], axis=-1)[..., 0]
    return jax.nn.logsumexp(logits_BxLxV, axis=-1) - target_BxL
