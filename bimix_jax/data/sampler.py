"""The mixture sampler: each training batch is drawn inside jit from `(key, step, proportions)`.

* Train buffers live on device as one concatenated int32 buffer plus per-domain offsets and lengths
  (`TrainBuffers`). A row is `seq_len + 1` consecutive tokens of ONE domain, starting at a uniformly
  random position of that domain's buffer (windows may cross document boundaries; documents end in eos).
* Rows are allocated to domains by systematic sampling: row j of a batch of B goes to domain
  `searchsorted(cumsum(r), (j + u) / B)` with one uniform `u` per step. Every batch holds
  `floor(B r_i)` or `ceil(B r_i)` rows of domain i, the expected share is exactly `r_i`, and a domain
  with `r_i = 0` owns an empty interval, so it is never drawn.
* The proportions are a traced float array: a new mixture never recompiles.
* Sampling is stateless in `(key, step)`: resuming at step s reproduces the stream exactly. The only
  sampler state worth checkpointing is the ledger of rows drawn per domain (realized shares).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from bimix_jax.data.tokens import DomainTokens
from bimix_jax.errors import InputError


class TrainBuffers(NamedTuple):
    """Every domain's training tokens in one device buffer (a pytree, passed to jitted functions)."""

    buffer_T: jax.Array  # [T] int32, the domains' train buffers concatenated in domain order
    offsets_D: jax.Array  # [D] int32, start of each domain in buffer_T
    lengths_D: jax.Array  # [D] int32, tokens of each domain


def train_buffers(tokens: DomainTokens, seq_len: int, *, field: str = "train.seq_len") -> TrainBuffers:
    """Concatenates the train buffers (host numpy; place them with `jax.device_put`).

    Raises `InputError` naming a domain shorter than `seq_len + 1` tokens.
    """
    lengths = np.array([tokens.train[d].size for d in tokens.domains], dtype=np.int64)
    for d, n in zip(tokens.domains, lengths):
        if n < seq_len + 1:
            raise InputError(
                f"domain {d!r} has {n} training tokens, fewer than {field} + 1 = {seq_len + 1}; "
                f"add documents to it, lower {field} or drop the domain"
            )
    if lengths.sum() >= 2**31:
        raise InputError(
            f"the corpus has {lengths.sum()} training tokens, more than int32 indexing allows (2^31); "
            "use fewer documents per domain (data.max_docs_per_domain)"
        )
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    return TrainBuffers(
        buffer_T=np.concatenate([tokens.train[d] for d in tokens.domains]).astype(np.int32),
        offsets_D=offsets.astype(np.int32),
        lengths_D=lengths.astype(np.int32),
    )


def allocate_rows(u: jax.Array, proportions_D: jax.Array, batch_size: int) -> jax.Array:
    """Systematic allocation: the domain of each of `batch_size` rows, given one uniform `u` in [0, 1).

    Returns [B] int32, sorted by domain. Zero-weight domains are never chosen.
    """
    r_D = jnp.maximum(proportions_D.astype(jnp.float32), 0.0)
    positive_D = r_D > 0
    cum_D = jnp.cumsum(r_D) / jnp.sum(r_D)
    # A zero-weight domain must own an empty interval [cum[i-1], cum[i]) whatever the rounding of
    # cumsum: carry the running maximum over positive-weight domains only.
    cum_D = jax.lax.cummax(jnp.where(positive_D, cum_D, 0.0), axis=0)
    q_B = (jnp.arange(batch_size, dtype=jnp.float32) + u) / batch_size
    domain_B = jnp.searchsorted(cum_D, q_B, side="right")
    # q may exceed the last boundary by rounding: give it to the last positive-weight domain.
    last = proportions_D.shape[0] - 1 - jnp.argmax(positive_D[::-1])
    return jnp.minimum(domain_B, last).astype(jnp.int32)


def sample_batch(
    data: TrainBuffers, key: jax.Array, proportions_D: jax.Array, *, batch_size: int, seq_len: int
) -> tuple[jax.Array, jax.Array]:
    """Draws one batch inside jit.

    Returns:
      x_BxS: [B, seq_len + 1] int32 token windows (inputs are x[:, :-1], targets x[:, 1:]).
      domain_B: [B] int32 domain of each row.
    """
    key_u, key_start = jax.random.split(key)
    domain_B = allocate_rows(jax.random.uniform(key_u, ()), proportions_D, batch_size)
    n_starts_B = data.lengths_D[domain_B] - seq_len  # valid window starts per row (>= 1)
    start_B = jax.random.randint(key_start, (batch_size,), 0, n_starts_B, dtype=jnp.int32)
    idx_BxS = (data.offsets_D[domain_B] + start_B)[:, None] + jnp.arange(seq_len + 1, dtype=jnp.int32)
    return data.buffer_T[idx_BxS], domain_B


def rows_per_domain(domain_B: jax.Array, num_domains: int) -> jax.Array:
    """[D] int32 count of rows of each domain in a batch (for the realized-share ledger)."""
    return jnp.zeros((num_domains,), jnp.int32).at[domain_B].add(1)
