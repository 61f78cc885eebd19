"""Rotary position embedding (RoPE), half-split layout."""
from __future__ import annotations

import jax
import jax.numpy as jnp


def apply_rope(x: jax.Array, positions: jax.Array, base: float = 10000.0) -> jax.Array:
  """x: [B, L, H, Dh]; positions: [B, L] (int). Returns x rotated, same dtype."""
  half = x.shape[-1] // 2
  freq = base ** (-jnp.arange(half, dtype=jnp.float32) / half)  # [Dh/2]
  angle = positions.astype(jnp.float32)[..., None, None] * freq  # [B, L, 1, Dh/2]
  sin, cos = jnp.sin(angle), jnp.cos(angle)
  x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
  return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1).astype(x.dtype)
