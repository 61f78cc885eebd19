"""Chunking: order-preserving gather of the boundary bytes with a static capacity.

    out = chunk(h, boundary_mask, segment_start, capacity,
                extras={"boundary_prob": p, ...},
                implementation="jnp" | "pallas", interpret=False)

Shapes (C = capacity, static):
  h                       [B, L, D]  encoder output (any float dtype)
  boundary_mask           [B, L]     bool
  segment_start           [B, L]     bool, first byte of each document (padding runs
                                     included); these and position 0 are always
                                     boundaries and get their slots first
  extras                  name -> [B, L] arrays gathered like h (e.g. boundary_prob,
                                     segment_ids, positions, segment_start); float
                                     extras carry gradients
Returns `Chunked` (a NamedTuple):
  chunks                  [B, C, D]  h at the kept positions, in order; zeros in
                                     empty slots. A row with S starts keeps its first
                                     min(S, C) starts and its first max(C - S, 0)
                                     boundaries inside documents
  chunk_valid             [B, C]     bool
  chunk_byte_index        [B, C]     int32 byte position of each chunk, -1 if empty
  chunk_index_of_byte     [B, L]     int32 the chunk each byte reads after dechunking:
                                     the last kept boundary at or before it, always in
                                     its own document; -1 (reads nothing) for the bytes
                                     of a document that got no slot (more than C
                                     documents in the row)
  num_dropped             [B]        int32 boundaries beyond the capacity (dropped)
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
    segment_start: jax.Array,
    capacity: int,
    extras: dict[str, jax.Array] | None = None,
    *,
    implementation: str = "jnp",
    interpret: bool = False,
) -> Chunked:
  """See the module docstring for shapes."""
  if implementation == "jnp":
    return chunk_reference(h, boundary_mask, segment_start, capacity, extras)
  if implementation != "pallas":
    raise ValueError(f"unknown implementation {implementation!r}")
  byte_index, valid, index_of_byte, num_dropped = chunk_indices(
      boundary_mask, segment_start, capacity)
  gathered = {name: gather_rows_reference(value, byte_index)
              for name, value in (extras or {}).items()}
  chunks = gather_rows_pallas(h, byte_index, interpret)  # [B, C, D]
  return Chunked(chunks, valid, byte_index, index_of_byte, num_dropped, gathered)
