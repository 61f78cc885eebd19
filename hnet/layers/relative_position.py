"""T5 relative position bias: log-spaced distance buckets -> one learned scalar per head.

Written from the T5 paper's description (Raffel et al. 2020, section 2.1) and the
public T5 v1.1 / ByT5 settings (32 buckets, max distance 128). Half of the buckets are
exact distances, the rest grow logarithmically up to `max_distance`; larger distances
share the last bucket. Bidirectional (encoder): the sign of the offset picks one half
of the buckets. Causal (decoder): only keys at or before the query get distinct buckets
(later keys are masked anyway and fall into bucket 0).

One `RelativePositionBias` is shared by every layer of a stack (as in T5, where the
first layer owns the table and passes the bias on). The bias is computed from the
given positions, not from row indices, so that packed rows (positions restart per
document) and compacted rows (MrT5 hard deletion keeps original positions) get the
same bias as the uncompacted, unpacked sequence.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from hnet.layers.linear import normal_param


def relative_position_bucket(relative_position: jax.Array, *, bidirectional: bool,
                             num_buckets: int = 32, max_distance: int = 128) -> jax.Array:
  """relative_position = key_position - query_position (int) -> bucket in [0, num_buckets)."""
  relative_position = relative_position.astype(jnp.int32)
  bucket = jnp.zeros_like(relative_position)
  if bidirectional:
    num_buckets //= 2
    bucket = bucket + (relative_position > 0).astype(jnp.int32) * num_buckets
    distance = jnp.abs(relative_position)
  else:
    distance = jnp.maximum(-relative_position, 0)  # keys before the query: positive distance
  max_exact = num_buckets // 2
  is_exact = distance < max_exact
  # log-spaced buckets for max_exact <= distance < max_distance
  scaled = (jnp.log(jnp.maximum(distance, 1).astype(jnp.float32) / max_exact)
            / math.log(max_distance / max_exact) * (num_buckets - max_exact))
  log_bucket = jnp.minimum(max_exact + scaled.astype(jnp.int32), num_buckets - 1)
  return bucket + jnp.where(is_exact, distance, log_bucket)


class RelativePositionBias(nnx.Module):
  """Table [num_buckets, num_heads]; __call__ gives the logit bias [B, H, L, S]."""

  def __init__(self, num_heads: int, *, bidirectional: bool, rngs: nnx.Rngs,
               num_buckets: int = 32, max_distance: int = 128, std: float = 0.02):
    self.embedding = normal_param(rngs, (num_buckets, num_heads), (None, "heads"), std)
    self.bidirectional = bidirectional
    self.num_buckets, self.max_distance = num_buckets, max_distance

  def __call__(self, q_positions: jax.Array, k_positions: jax.Array) -> jax.Array:
    """q_positions [B, L], k_positions [B, S] (ints) -> float32 bias [B, H, L, S]."""
    relative = k_positions[:, None, :] - q_positions[:, :, None]  # [B, L, S]
    buckets = relative_position_bucket(relative, bidirectional=self.bidirectional,
                                       num_buckets=self.num_buckets,
                                       max_distance=self.max_distance)
    bias = jnp.take(self.embedding[...], buckets, axis=0)  # [B, L, S, H]
    return jnp.transpose(bias, (0, 3, 1, 2)).astype(jnp.float32)
