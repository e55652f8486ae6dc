"""The decoder: shapes, exact causality, parameter counts, FLOPs per token, the attention path chosen."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bimix_jax import loss_table
from bimix_jax.errors import InputError
from bimix_jax.model import (Decoder, DecoderConfig, attention_choice, causal_attention, choose_attention,
                             format_size, init_params, param_count, token_losses)

CFG = DecoderConfig(D=32, H=4, L=2, F=64, V=97, max_len=32)


@pytest.fixture(scope="module")
def params():
    return jax.jit(init_params, static_argnums=0)(CFG, jax.random.key(0))


def test_shapes_and_finite(params):
    tokens_BxL = jax.random.randint(jax.random.key(1), (3, 32), 0, CFG.V)
    logits_BxLxV = jax.jit(Decoder(CFG).apply)({"params": params}, tokens_BxL)
    assert logits_BxLxV.shape == (3, 32, CFG.V) and logits_BxLxV.dtype == jnp.float32
    assert np.all(np.isfinite(logits_BxLxV))
    losses_BxL = jax.jit(token_losses, static_argnums=0)(CFG, params, tokens_BxL)
    assert losses_BxL.shape == (3, 31)
    # A fresh model predicts near-uniformly: loss close to log V.
    assert abs(float(losses_BxL.mean()) - np.log(CFG.V)) < 0.5


def test_causal_exactly(params):
    """d loss_t / d x_s is exactly zero for every s > t, and nonzero for s <= t."""
    L = 12
    x_1xLxD = jax.random.normal(jax.random.key(2), (1, L, CFG.D))
    targets = jax.random.randint(jax.random.key(3), (L,), 0, CFG.V)

    def losses_L(x_LxD):
        logits_LxV = Decoder(CFG).apply({"params": params}, x_LxD[None], method=Decoder.decode)[0]
        return -jnp.take_along_axis(jax.nn.log_softmax(logits_LxV), targets[:, None], axis=1)[:, 0]

    g_LxLxD = np.asarray(jax.jit(jax.jacrev(losses_L))(x_1xLxD[0]))  # [t, s, :] = d loss_t / d x_s
    seen_LxL = np.abs(g_LxLxD).sum(axis=2) > 0
    np.testing.assert_array_equal(seen_LxL, np.tril(np.ones((L, L), bool)))
    assert np.all(g_LxLxD[np.triu_indices(L, k=1)] == 0.0)  # exactly zero, not merely small


def test_param_counts(params):
    total, non_embedding = CFG.num_params()
    assert param_count(params) == total
    assert total - non_embedding == CFG.V * CFG.D  # tied input/output embedding counted once


def test_format_size_parses_back():
    for n in (950, 16_736, 1_234_567, 85_000_000, 1_300_000_000):
        s = format_size(n)
        assert abs(loss_table.parse_model_size(s) - n) / n < 5e-3


def test_bfloat16_compute_keeps_float32_params_and_logits(params):
    cfg = DecoderConfig(D=32, H=4, L=2, F=64, V=97, max_len=32, dtype="bfloat16")
    assert all(x.dtype == jnp.float32 for x in jax.tree_util.tree_leaves(params))
    tokens_1x8 = jnp.arange(8, dtype=jnp.int32)[None]
    logits = jax.jit(Decoder(cfg).apply)({"params": params}, tokens_1x8)
    assert logits.dtype == jnp.float32
    ref = jax.jit(Decoder(CFG).apply)({"params": params}, tokens_1x8)
    np.testing.assert_allclose(logits, ref, atol=0.05)


def test_bad_dimensions():
    with pytest.raises(InputError, match="model.D=30"):
        DecoderConfig(D=30, H=4, L=1, F=8, V=10, max_len=8)
    with pytest.raises(InputError, match="dtype"):
        DecoderConfig(D=32, H=4, L=1, F=8, V=10, max_len=8, dtype="float16")


def test_attention_and_loss_equal_their_textbook_forms(params):
    """The written-out attention and the logsumexp loss compute what jax.nn's forms compute."""
    q, k, v = (jax.random.normal(jax.random.key(i), (2, 9, 4, 8)) for i in (4, 5, 6))
    np.testing.assert_allclose(jax.jit(causal_attention)(q, k, v),
                               jax.nn.dot_product_attention(q, k, v, is_causal=True), rtol=1e-5, atol=1e-6)
    x_BxS = jax.random.randint(jax.random.key(7), (3, 17), 0, CFG.V)
    logits_BxLxV = Decoder(CFG).apply({"params": params}, x_BxS[:, :-1])
    ref_BxL = -jnp.take_along_axis(jax.nn.log_softmax(logits_BxLxV), x_BxS[:, 1:, None], axis=-1)[..., 0]
    np.testing.assert_allclose(token_losses(CFG, params, x_BxS), ref_BxL, rtol=1e-6)


def test_flops_per_token_by_hand():
    """6 (N + V D) + 12 L S D: the proxy (12 x 768, F 3072, V 32768) at S = 1024 is 774.24 MFLOPs per token."""
    cfg = DecoderConfig(D=768, H=12, L=12, F=3072, V=32768, max_len=1024)
    n = 12 * (4 * 768 * 768 + 2 * 768 * 3072 + 3072 + 768 + 2 * 768) + 768
    assert cfg.num_params()[1] == n
    assert cfg.flops_per_token(1024) == 6 * (n + 32768 * 768) + 12 * 12 * 1024 * 768 == 774_240_768


def _choose(requested, dtype="bfloat16", head_dim=64, platform="gpu", cc="9.0", probe=None):
    return choose_attention(requested, dtype=dtype, head_dim=head_dim, platform=platform, compute_capability=cc,
                            probe=probe)


def test_attention_choice_rules():
    assert _choose("auto").impl == "cudnn"
    assert _choose("auto", platform="cpu").impl == "einsum"
    assert _choose("auto", platform="tpu").impl == "xla"
    assert _choose("dot_product", platform="tpu").impl == "xla"  # the older name of the XLA path
    # Fallbacks on a GPU, each with its reason.
    for kw, why in [({"dtype": "float32"}, "model.dtype=float32"), ({"head_dim": 12}, "multiple of 8"),
                    ({"head_dim": 192, "cc": "8.0"}, "at most 128"), ({"cc": "7.0"}, "below 8.0"),
                    ({"probe": lambda: "cuDNN attention did not compile (x)"}, "did not compile")]:
        choice = _choose("auto", **kw)
        assert choice.impl == "xla" and why in choice.reason and "fell back" in choice.reason, (kw, choice)
    assert _choose("auto", head_dim=192, cc="9.0").impl == "cudnn"  # Hopper: head width up to 256
    assert _choose("xla").impl == "xla" and _choose("einsum").impl == "einsum"
    with pytest.raises(InputError, match="model.attention='cudnn' cannot run: .*CUDA GPU"):
        _choose("cudnn", platform="cpu")
    with pytest.raises(InputError, match="model.attention='zz'"):
        DecoderConfig(D=32, H=4, L=1, F=8, V=10, max_len=8, attention="zz")


def test_every_path_computes_the_same_logits(params):
    """The XLA path and the einsum path agree; on CPU 'auto' is the einsum path and 'cudnn' is refused."""
    import dataclasses

    tokens_2x16 = jax.random.randint(jax.random.key(8), (2, 16), 0, CFG.V)
    assert attention_choice(CFG).impl == "einsum"
    out = {a: jax.jit(Decoder(dataclasses.replace(CFG, attention=a)).apply)({"params": params}, tokens_2x16)
           for a in ("einsum", "xla")}
    np.testing.assert_allclose(out["xla"], out["einsum"], rtol=1e-5, atol=1e-5)
    with pytest.raises(InputError, match="model.attention='cudnn'"):
        Decoder(dataclasses.replace(CFG, attention="cudnn")).apply({"params": params}, tokens_2x16)
