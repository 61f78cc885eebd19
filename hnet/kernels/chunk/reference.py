"""Plain jnp reference of H-Net chunking: an order-preserving gather with static capacity.

Bytes with boundary_mask = 1 are kept in order; the first `capacity` (C) of them become
chunks, later ones are dropped and counted. Every byte t reads chunk
clip(cumsum(b)_t - 1, 0, C - 1) after dechunking (a byte past an overflow reads the last
kept chunk). With C = L nothing can be dropped and the result is the exact
variable-length semantics, padded with empty slots.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp


class Chunked(NamedTuple):
  chunks: jax.Array               # [B, C, D] h at the kept positions, zeros in empty slots
  chunk_valid: jax.Array          # [B, C] bool, slot c holds a kept byte
  chunk_byte_index: jax.Array     # [B, C] int32 byte position of each chunk, -1 if empty
  chunk_index_of_byte: jax.Array  # [B, L] int32 chunk each byte reads, in [0, C-1]
  num_dropped: jax.Array          # [B] int32 boundaries that overflowed the capacity
  extras: dict[str, jax.Array]    # name -> [B, C] gathered like h, zeros in empty slots


def chunk_indices(boundary_mask: jax.Array, capacity: int):
  """boundary_mask [B, L] bool -> index arrays shared by every implementation.

  Returns (chunk_byte_index [B, C] int32 (-1 empty), chunk_valid [B, C] bool,
  chunk_index_of_byte [B, L] int32, num_dropped [B] int32).
  """
  batch, length = boundary_mask.shape
  kept_count = jnp.cumsum(boundary_mask.astype(jnp.int32), axis=1)  # [B, L]
  # Destination slot of each kept byte; non-kept bytes and overflow go to slot C (dropped).
  destination = jnp.where(boundary_mask, kept_count - 1, capacity)  # [B, L]
  byte_position = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (batch, length))
  rows = jnp.arange(batch)[:, None]
  chunk_byte_index = jnp.full((batch, capacity), -1, jnp.int32).at[
      rows, destination].set(byte_position, mode="drop")  # [B, C]
  chunk_valid = chunk_byte_index >= 0
  chunk_index_of_byte = jnp.clip(kept_count - 1, 0, capacity - 1).astype(jnp.int32)
  num_dropped = jnp.maximum(kept_count[:, -1] - capacity, 0).astype(jnp.int32)
  return chunk_byte_index, chunk_valid, chunk_index_of_byte, num_dropped


def gather_rows_reference(x: jax.Array, index: jax.Array) -> jax.Array:
  """x [B, N, ...], index [B, M] int (-1 = empty) -> [B, M, ...], zeros where empty."""
  safe = jnp.clip(index, 0, x.shape[1] - 1)
  expand = (slice(None), slice(None)) + (None,) * (x.ndim - 2)
  gathered = jnp.take_along_axis(x, safe[expand], axis=1)
  return jnp.where((index >= 0)[expand], gathered, jnp.zeros((), x.dtype))


def chunk_reference(
    h: jax.Array,
    boundary_mask: jax.Array,
    capacity: int,
    extras: dict[str, jax.Array] | None = None,
) -> Chunked:
  """h [B, L, D], boundary_mask [B, L] bool, extras name -> [B, L] -> Chunked."""
  byte_index, valid, index_of_byte, num_dropped = chunk_indices(boundary_mask, capacity)
  gathered = {name: gather_rows_reference(value, byte_index)
              for name, value in (extras or {}).items()}
  return Chunked(gather_rows_reference(h, byte_index), valid, byte_index,
                 index_of_byte, num_dropped, gathered)
