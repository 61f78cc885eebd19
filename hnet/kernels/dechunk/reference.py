"""Plain jnp reference of H-Net dechunking: EMA smoothing over chunks, then upsampling.

    z_bar_k = P_k z_k + (1 - P_k) keep_k z_bar_{k-1},  z_bar_{-1} = 0,
    keep_k = 0 at chunks that start a new document (reset), else 1,
    out_t = z_bar[chunk_index_of_byte_t].

The recurrence y_k = a_k y_{k-1} + x_k (a = (1 - P) keep, x = P z) is an associative
scan over (a, x) pairs, computed in float32.
"""

import jax
import jax.numpy as jnp

from hnet.kernels.chunk.reference import gather_rows_reference

PROB_CLAMP = 1e-4  # P is clamped to [1e-4, 1 - 1e-4] before the EMA (as in H-Net)


def clamp_chunk_prob(chunk_prob: jax.Array) -> jax.Array:
  return jnp.clip(chunk_prob.astype(jnp.float32), PROB_CLAMP, 1.0 - PROB_CLAMP)


def _combine(earlier, later):
  decay_1, value_1 = earlier
  decay_2, value_2 = later
  return decay_1 * decay_2, decay_2 * value_1 + value_2


def ema_scan_reference(
    z: jax.Array, chunk_prob: jax.Array, chunk_reset: jax.Array
) -> jax.Array:
  """z [B, C, D], chunk_prob [B, C] (already clamped), chunk_reset [B, C] bool
  -> z_bar [B, C, D] float32."""
  prob = chunk_prob.astype(jnp.float32)[..., None]  # [B, C, 1]
  keep = 1.0 - chunk_reset.astype(jnp.float32)[..., None]  # [B, C, 1]
  decay = (1.0 - prob) * keep  # [B, C, 1]
  value = prob * z.astype(jnp.float32)  # [B, C, D]
  _, z_bar = jax.lax.associative_scan(_combine, (decay, value), axis=1)
  return z_bar


def dechunk_reference(
    z: jax.Array,
    chunk_prob: jax.Array,
    chunk_reset: jax.Array,
    chunk_index_of_byte: jax.Array,
) -> jax.Array:
  """z [B, C, D], chunk_prob [B, C] (clamped here), chunk_reset [B, C] bool,
  chunk_index_of_byte [B, L] int32 -> out [B, L, D] in z.dtype."""
  z_bar = ema_scan_reference(z, clamp_chunk_prob(chunk_prob), chunk_reset)  # [B, C, D]
  # Upsample the float32 z_bar, then cast: the backward scatter-add sums in float32.
  out = gather_rows_reference(z_bar, chunk_index_of_byte)  # [B, L, D]
  return out.astype(z.dtype)
