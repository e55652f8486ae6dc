"""Per-domain validation loss on a fixed set of sequences, in one jitted function.

The evaluation set of a domain is the first `eval_tokens + 1` tokens of its validation buffer, cut into
windows of `seq_len + 1` tokens (consecutive windows share one token, so every token after the first is
predicted exactly once), or, spread, windows evenly spaced over the whole split (`split_eval_set`). It depends only on the corpus and these two numbers, never on the training
mixture, so the losses of different mixtures are comparable. All domains' windows are packed into
batches of `eval_batch_size` rows; a weight mask removes padding.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
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


def pack_windows(windows_D: Sequence[Sequence[np.ndarray]], seq_len: int, batch_size: int) -> EvalSet:
    """Each domain's windows (at most `seq_len + 1` tokens each) packed into batches of `batch_size` rows; zero rows
    pad the last batch; weights are 1 on every window's targets."""
    flat = [x for windows in windows_D for x in windows]
    rows = len(flat) + (-len(flat) % batch_size)
    x_RxS = np.zeros((rows, seq_len + 1), np.int32)
    for r, x in enumerate(flat):
        x_RxS[r, :x.size] = x
    targets_R = np.zeros(rows, np.int64)
    targets_R[:len(flat)] = [x.size - 1 for x in flat]
    domain_R = np.zeros(rows, np.int32)
    domain_R[:len(flat)] = np.repeat(np.arange(len(windows_D)), [len(w) for w in windows_D])
    n = rows // batch_size
    return EvalSet(x_NxBxS=x_RxS.reshape(n, batch_size, seq_len + 1),
                   w_NxBxL=(np.arange(seq_len)[None, :] < targets_R[:, None]).astype(np.float32).reshape(
                       n, batch_size, seq_len),
                   domain_NxB=domain_R.reshape(n, batch_size),
                   tokens_D=np.array([sum(x.size - 1 for x in w) for w in windows_D], np.float32))


def spread_windows(length: int, tokens: int, seq_len: int, *, what: str) -> list[tuple[int, int]]:
    """(offset, predictions) of `ceil(tokens / seq_len)` windows (`predictions + 1` tokens each, the last one
    shorter so the predictions add up to `tokens`), evenly spaced and non-overlapping over `length` tokens."""
    w = -(-tokens // seq_len)
    sizes = [seq_len] * (w - 1) + [tokens - seq_len * (w - 1)]
    need = sum(sizes) + w
    if length < need:
        raise InputError(f"{what}: {length} tokens hold no {w} separate windows for {tokens} evaluation tokens "
                         f"(needs {need}); lower the token count or give the split more documents")
    slack = length - need
    offsets, start = [], 0
    for k, n in enumerate(sizes):
        offsets.append((start + (slack * k // (w - 1) if w > 1 else 0), n))
        start += n + 1
    return offsets


def split_eval_set(domains: Sequence[str], length: Callable[[str], int], read: Callable[[str, int, int], np.ndarray],
                   *, tokens: int, seq_len: int, batch_size: int, spread: bool = False,
                   field: str = "train.eval_tokens", split: str = "validation") -> EvalSet:
    """`tokens` predictions per domain from one split (`length(domain)`, `read(domain, start, n)`).

    By default the first `tokens + 1` tokens, in consecutive windows that share one token (a domain with fewer is
    scored on all it has, with a warning); with `spread`, windows evenly spaced over the whole split
    (`spread_windows`), so every part of it is scored, not its first documents.
    """
    windows_D, counts, short = [], [], []
    for d in domains:
        if spread:
            windows_D.append([np.asarray(read(d, o, n + 1), np.int32) for o, n in
                              spread_windows(length(d), tokens, seq_len, what=f"{field} on the {split} split of {d!r}")])
            continue
        buf = np.asarray(read(d, 0, min(tokens + 1, length(d))), np.int32)
        n = buf.size - 1
        if n < 1:
            raise InputError(f"domain {d!r} has fewer than 2 {split} tokens; add {split} documents to it")
        if n < tokens:
            short.append(f"{d} {n}")
        counts.append(n)
        windows_D.append([buf[start:start + seq_len + 1] for start in range(0, n, seq_len)])
    if short:  # Not silent: such domains are scored on fewer tokens than the others.
        logging.warning("%s=%d exceeds the %s split of %s tokens; those domains are scored on all their %s tokens "
                        "(set %s <= %d for equal counts)", field, tokens, split, ", ".join(short), split, field,
                        min(counts))
    return pack_windows(windows_D, seq_len, batch_size)


def build_eval_set(tokens: DomainTokens, *, seq_len: int, eval_tokens: int, batch_size: int) -> EvalSet:
    """Windows over the first `eval_tokens` predictions of each domain's validation buffer."""
    return split_eval_set(tokens.domains, lambda d: tokens.val[d].size, lambda d, o, n: tokens.val[d][o:o + n],
                          tokens=eval_tokens, seq_len=seq_len, batch_size=batch_size)


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
