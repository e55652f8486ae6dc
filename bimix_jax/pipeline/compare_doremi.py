"""DoReMi's measurement in the comparison: the proxy's excess over the reference model, clipped per token.

The official trainer clips each token's excess `loss_proxy(tok) - loss_ref(tok)` at 0, then averages per
domain. Both losses are taken on the same tokens: the feedback set (spread over the selection split). The
reference's per-token losses are computed once from the reference run's final parameters; during the proxy
run the segment loop calls `TokenExcessDoReMi.feedback(params)` (`bimix_jax.train.segments`) after each
segment and hands the per-domain excess to the numpy method (`bimix_jax.online.doremi`).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib

import jax
import jax.numpy as jnp
import numpy as np

from bimix_jax.model import DecoderConfig, token_losses
from bimix_jax.online import doremi
from bimix_jax.online.schedule import Segment, State
from bimix_jax.train.evaluate import EvalSet


@functools.lru_cache(maxsize=4)
def _token_loss_fn(cfg: DecoderConfig):
    """jit (params, x_NxBxS) -> [N, B, L] per-token losses, one batch at a time."""
    return jax.jit(lambda params, x: jax.lax.map(lambda xb: token_losses(cfg, params, xb), x))


@functools.lru_cache(maxsize=4)
def _excess_fn(num_domains: int):
    def fn(loss_NxBxL, ref_NxBxL, w_NxBxL, domain_NxB, tokens_D):
        clipped = jnp.maximum(loss_NxBxL - ref_NxBxL, 0.0) * w_NxBxL
        return jax.ops.segment_sum(clipped.sum(-1).ravel(), domain_NxB.ravel(), num_segments=num_domains) / tokens_D
    return jax.jit(fn)


def token_losses_on(cfg: DecoderConfig, params, eval_set: EvalSet) -> np.ndarray:
    """[N, B, L] float32 per-token losses of `params` on an evaluation set's windows."""
    return np.asarray(jax.device_get(_token_loss_fn(cfg)(params, jnp.asarray(eval_set.x_NxBxS))), np.float32)


@dataclasses.dataclass(frozen=True)
class TokenExcessDoReMi:
    """DoReMi (`online.doremi.DoReMi`) fed with the per-token clipped excess over a reference model.

    `reference` identifies the reference's per-token losses (a hash) in the run record; build with `make`."""

    inner: doremi.DoReMi
    reference: str
    name: str = "doremi"

    @classmethod
    def make(cls, config: doremi.DoReMiConfig, cfg: DecoderConfig, feedback: EvalSet,
             reference_NxBxL: np.ndarray) -> TokenExcessDoReMi:
        ref = np.asarray(reference_NxBxL, np.float32)
        out = cls(doremi.DoReMi(config), hashlib.sha256(ref.tobytes()).hexdigest()[:16])
        args = (jnp.asarray(ref), jnp.asarray(feedback.w_NxBxL), jnp.asarray(feedback.domain_NxB),
                jnp.asarray(feedback.tokens_D))
        loss_fn, excess_fn, x = _token_loss_fn(cfg), _excess_fn(len(feedback.tokens_D)), jnp.asarray(feedback.x_NxBxS)
        object.__setattr__(out, "_measure", lambda params: excess_fn(loss_fn(params, x), *args))
        return out

    def feedback(self, params) -> np.ndarray:
        """[D] the per-domain mean of max(loss - reference loss, 0) over the feedback set's tokens."""
        return np.asarray(jax.device_get(self._measure(params)), np.float64)

    def init(self, num_domains: int, total_steps: int, seed: int) -> State:
        return self.inner.init(num_domains, total_steps, seed)

    def observe(self, state: State, excess_D: np.ndarray) -> State:
        return self.inner.observe(state, excess_D)

    def skip(self, state: State) -> State:
        return self.inner.skip(state)

    def next_segment(self, state: State, step: int) -> Segment | None:
        return self.inner.next_segment(state, step)

    def summary(self, state: State) -> dict:
        return {**self.inner.summary(state), "reference": self.reference}
