"""Per-domain validation loss on a fixed set of sequences, in one jitted function.

The evaluation set of a domain is the first `eval_tokens + 1` tokens of its validation buffer, cut into
windows of `seq_len + 1` tokens (consecutive windows share one token, so every token after the first is
predicted exactly once). It depends only on the corpus and these two numbers, never on the training
mixture, so the losses of different mixtures are comparable. All domains' windows are packed into
batches of `eval_batch_size` rows; a weight mask removes padding.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from bimix_jax.data.tokens import DomainTokens
from bimix_jax.errors import InputError
from bimix_jax.model import DecoderConfig, token_losses


class EvalSet(NamedTuple):
    x_NxBxS: np.ndarray  # [N, B, seq_len + 1] int32 windows, N batches of B rows
    w_NxBxL: np.ndarray  # [N, B, seq_len] float32, 1 where the target is a real validation token
    domain_NxB: np.ndarray  # [N, B] int32 domain of each row
    tokens_D: np.ndarray  # [D] float32 predicted tokens per domain


def build_eval_set(tokens: DomainTokens, *, seq_len: int, eval_tokens: int, batch_size: int) -> EvalSet:
    """Windows over the first `eval_tokens` predictions of each domain's validation buffer."""
    rows_x, rows_w, rows_d, counts, short = [], [], [], [], []
    for i, d in enumerate(tokens.domains):
        val = tokens.val[d][: eval_tokens + 1]
        n = val.size - 1
        if n < 1:
            raise InputError(f"domain {d!r} has fewer than 2 validation tokens; add validation documents to it")
        if n < eval_tokens:
            short.append(f"{d} {n}")
        counts.append(n)
        for start in range(0, n, seq_len):
            window = val[start:start + seq_len + 1]
            x = np.zeros(seq_len + 1, np.int32)
            x[: window.size] = window
            w = np.zeros(seq_len, np.float32)
            w[: window.size - 1] = 1.0
            rows_x.append(x)
            rows_w.append(w)
            rows_d.append(i)
    if short:  # Not silent: such domains are scored on fewer tokens than the others.
        logging.warning("train.eval_tokens=%d exceeds the validation split of %s tokens; those domains are scored "
                        "on all their validation tokens (set train.eval_tokens <= %d for equal counts)",
                        eval_tokens, ", ".join(short), min(counts))
    pad = -len(rows_x) % batch_size
    rows_x += [np.zeros(seq_len + 1, np.int32)] * pad
    rows_w += [np.zeros(seq_len, np.float32)] * pad
    rows_d += [0] * pad
    n_batches = len(rows_x) // batch_size
    return EvalSet(
        x_NxBxS=np.stack(rows_x).reshape(n_batches, batch_size, seq_len + 1),
        w_NxBxL=np.stack(rows_w).reshape(n_batches, batch_size, seq_len),
        domain_NxB=np.array(rows_d, np.int32).reshape(n_batches, batch_size),
        tokens_D=np.array(counts, np.float32),
    )


def _eval_losses(params, eval_set: EvalSet, *, cfg: DecoderConfig, num_domains: int) -> jax.Array:
    def body(sum_D, batch):
        x_BxS, w_BxL, domain_B = batch
        loss_B = jnp.sum(token_losses(cfg, params, x_BxS) * w_BxL, axis=1)
        return sum_D + jax.ops.segment_sum(loss_B, domain_B, num_segments=num_domains), None

    sum_D, _ = jax.lax.scan(body, jnp.zeros((num_domains,), jnp.float32),
                            (eval_set.x_NxBxS, eval_set.w_NxBxL, eval_set.domain_NxB))
    return sum_D / eval_set.tokens_D


def make_eval_fn(cfg: DecoderConfig, num_domains: int, *, params_sharding=None, eval_sharding=None,
                 stacked: bool = False):
    """The jitted `eval_fn(params, eval_set) -> [D]` mean per-token loss (nats) of every domain.

    With `stacked`, `params` has a leading run axis K (every leaf) and the result is [K, D].
    """
    fn = functools.partial(_eval_losses, cfg=cfg, num_domains=num_domains)
    if stacked:
        fn = jax.vmap(fn, in_axes=(0, None))
    if params_sharding is None:
        return jax.jit(fn)
    return jax.jit(fn, in_shardings=(params_sharding, eval_sharding), out_shardings=None)
