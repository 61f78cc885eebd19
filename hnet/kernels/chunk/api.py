"""Chunking: order-preserving gather of the boundary bytes with a static capacity.

    out = chunk(h, boundary_mask, capacity, extras={"boundary_prob": p, ...},
                implementation="jnp" | "pallas", interpret=False)

Shapes (C = capacity, static):
  h                       [B, L, D]  encoder output (any float dtype)
  boundary_mask           [B, L]     bool (position 0 / document starts should be 1)
  extras                  name -> [B, L] arrays gathered like h (e.g. boundary_prob,
                                     segment_ids, positions, segment_start); float
                                     extras carry gradients
Returns `Chunked` (a NamedTuple):
  chunks                  [B, C, D]  h at the first C kept positions, in order; zeros
                                     in empty slots
  chunk_valid             [B, C]     bool
  chunk_byte_index        [B, C]     int32 byte position of each chunk, -1 if empty
  chunk_index_of_byte     [B, L]     int32 clip(cumsum(b) - 1, 0, C - 1): the chunk each
                                     byte reads after dechunking
  num_dropped             [B]        int32 kept bytes beyond the capacity (dropped)
  extras                  name -> [B, C], zeros in empty slots

Gradient wrt h is a scatter-add onto the kept positions (zero elsewhere). With
C = L nothing is dropped: the exact variable-length semantics. The index bookkeeping
(cumsums on [B, L] ints) and the [B, L] extras are plain jnp in both implementations;
"pallas" runs the [B, L, D] gather and its backward as Pallas kernels.
"""

import jax

from hnet.kernels.chunk.pallas import gather_rows_pallas
from hnet.kernels.chunk.reference import (Chunked, chunk_indices, chunk_reference,
                                          gather_rows_reference)


def chunk(
    h: jax.Array,
    boundary_mask: jax.Array,
    capacity: int,
    extras: dict[str, jax.Array] | None = None,
    *,
    implementation: str = "jnp",
    interpret: bool = False,
) -> Chunked:
  """See the module docstring for shapes."""
  if implementation == "jnp":
    return chunk_reference(h, boundary_mask, capacity, extras)
  if implementation != "pallas":
    raise ValueError(f"unknown implementation {implementation!r}")
  byte_index, valid, index_of_byte, num_dropped = chunk_indices(boundary_mask, capacity)
  gathered = {name: gather_rows_reference(value, byte_index)
              for name, value in (extras or {}).items()}
  chunks = gather_rows_pallas(h, byte_index, interpret)  # [B, C, D]
  return Chunked(chunks, valid, byte_index, index_of_byte, num_dropped, gathered)
