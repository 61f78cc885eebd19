"""Plain jnp reference of H-Net chunking: an order-preserving gather with static capacity.

Bytes with boundary_mask = 1 are kept in order, up to `capacity` (C) of them per row; the
rest are dropped and counted. Document starts (`segment_start`, and position 0) are
always boundaries and get their slots first: a row with S starts keeps its first min(S, C)
starts and its first max(C - S, 0) boundaries inside documents, so a new document always
starts a new chunk, also after an overflow (the boundaries that overflow are dropped
within their own documents). Byte t reads the last kept boundary at or before it, which
is then in its own document; a byte of a document that got no slot (a row with more
than C documents: the ones after the C-th) reads nothing, chunk index -1 (zeros after
dechunking). With C = L nothing can be dropped and the result is the exact
variable-length semantics, padded with empty slots.
"""

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp


class Chunked(NamedTuple):
  chunks: jax.Array               # [B, C, D] h at the kept positions, zeros in empty slots
  chunk_valid: jax.Array          # [B, C] bool, slot c holds a kept byte
  chunk_byte_index: jax.Array     # [B, C] int32 byte position of each chunk, -1 if empty
  chunk_index_of_byte: jax.Array  # [B, L] int32 chunk each byte reads, -1 = none
  num_dropped: jax.Array          # [B] int32 boundaries that overflowed the capacity
  extras: dict[str, jax.Array]    # name -> [B, C] gathered like h, zeros in empty slots


def chunk_indices(boundary_mask: jax.Array, segment_start: jax.Array, capacity: int):
  """boundary_mask, segment_start [B, L] bool -> index arrays shared by every
  implementation (see the module docstring for which boundaries are kept).

  Returns (chunk_byte_index [B, C] int32 (-1 empty), chunk_valid [B, C] bool,
  chunk_index_of_byte [B, L] int32 (-1: reads nothing), num_dropped [B] int32).
  """
  batch, length = boundary_mask.shape
  start = segment_start.astype(bool).at[:, 0].set(True)  # [B, L] position 0 starts
  inside = boundary_mask.astype(bool) & ~start  # [B, L] boundaries inside a document
  start_rank = jnp.cumsum(start.astype(jnp.int32), axis=1)  # [B, L] document ordinal, 1-based
  inside_rank = jnp.cumsum(inside.astype(jnp.int32), axis=1)  # [B, L]
  # Slots left once every start has one: the first `room` inside boundaries keep theirs.
  room = jnp.maximum(capacity - start_rank[:, -1:], 0)  # [B, 1]
  kept = (start & (start_rank <= capacity)) | (inside & (inside_rank <= room))  # [B, L]
  kept_count = jnp.cumsum(kept.astype(jnp.int32), axis=1)  # [B, L]
  # Destination slot of each kept byte; the others go to slot C (dropped).
  destination = jnp.where(kept, kept_count - 1, capacity)  # [B, L]
  byte_position = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (batch, length))
  rows = jnp.arange(batch)[:, None]
  chunk_byte_index = jnp.full((batch, capacity), -1, jnp.int32).at[
      rows, destination].set(byte_position, mode="drop")  # [B, C]
  chunk_valid = chunk_byte_index >= 0
  # A document whose start has no slot reads nothing (its start rank is above C).
  chunk_index_of_byte = jnp.where(start_rank <= capacity, kept_count - 1, -1)  # [B, L]
  num_dropped = start_rank[:, -1] + inside_rank[:, -1] - kept_count[:, -1]  # [B]
  return (chunk_byte_index, chunk_valid, chunk_index_of_byte.astype(jnp.int32),
          num_dropped.astype(jnp.int32))


def _flat_index(index: jax.Array, num_rows: int) -> jax.Array:
  """index [B, M] row of each batch's [num_rows] rows, -1 = none -> [B * M] index into
  the [B * num_rows] flattened rows; none maps to B * num_rows, out of range."""
  batch = index.shape[0]
  flat = index + num_rows * jnp.arange(batch, dtype=index.dtype)[:, None]  # [B, M]
  return jnp.where(index >= 0, flat, batch * num_rows).reshape(-1)


def take_rows(x: jax.Array, index: jax.Array, *, in_bounds: bool = False) -> jax.Array:
  """x [B, N, ...], index [B, M] int (-1 or N and above = none) -> [B, M, ...]: the
  indexed rows, zeros for none. No gradient rule of its own (see gather_rows_reference).
  in_bounds: the caller promises every index is in [0, N - 1] (no masking).
  """
  x, index = jnp.asarray(x), jnp.asarray(index)  # host arrays too (eager callers)
  batch, num_rows = x.shape[:2]
  rows = x.reshape(batch * num_rows, -1)  # [B * N, F]
  flat = _flat_index(index, num_rows)  # [B * M]
  if in_bounds:
    out = rows.at[flat].get(mode="promise_in_bounds")
  else:
    out = rows.at[flat].get(mode="fill", fill_value=0)
  return out.reshape(index.shape + x.shape[2:])


def scatter_add_rows(updates: jax.Array, index: jax.Array, num_rows: int, *,
                     indices_are_sorted: bool = False, in_bounds: bool = False
                     ) -> jax.Array:
  """updates [B, M, ...], index [B, M] int (-1 or num_rows and above = none)
  -> [B, num_rows, ...]: row index[b, m] receives the sum of its updates[b, m].

  The transpose of `take_rows` (in_bounds: the same promise). Written with
  lax.scatter_add on flattened rows, updates [B * M, 1, F] and no inserted window
  dims: the form XLA:CPU scatters without first copying the updates into another
  layout (jnp's .at[].add and autodiff of take_along_axis both add that copy).
  """
  batch, length = index.shape
  feature = updates.shape[2:]
  flat = _flat_index(index, num_rows)[:, None]  # [B * M, 1]
  numbers = jax.lax.ScatterDimensionNumbers(
      update_window_dims=(1, 2), inserted_window_dims=(),
      scatter_dims_to_operand_dims=(0,))
  out = jax.lax.scatter_add(
      jnp.zeros((batch * num_rows, math.prod(feature)), updates.dtype), flat,
      updates.reshape(batch * length, 1, -1), numbers,
      indices_are_sorted=indices_are_sorted, unique_indices=False,
      mode=(jax.lax.GatherScatterMode.PROMISE_IN_BOUNDS if in_bounds
            else jax.lax.GatherScatterMode.FILL_OR_DROP))  # none: out of range, dropped
  return out.reshape((batch, num_rows) + feature)


def gather_rows_reference(x: jax.Array, index: jax.Array) -> jax.Array:
  """x [B, N, ...], index [B, M] int (-1 = empty) -> [B, M, ...], zeros where empty.

  The gradient wrt a float x is a scatter-add of the output gradient onto the
  gathered rows (empty slots are dropped).
  """
  if jnp.issubdtype(x.dtype, jnp.inexact):
    return _gather_rows(x.shape[1], x, index)
  return take_rows(x, index)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _gather_rows(num_rows: int, x: jax.Array, index: jax.Array) -> jax.Array:
  del num_rows  # x.shape[1], static for the backward
  return take_rows(x, index)


def _gather_rows_fwd(num_rows, x, index):
  return _gather_rows(num_rows, x, index), index


def _gather_rows_bwd(num_rows, index, grad_out):
  # grad_out has the output's (= x's) dtype.
  return scatter_add_rows(grad_out, index, num_rows), None


_gather_rows.defvjp(_gather_rows_fwd, _gather_rows_bwd)


def chunk_reference(
    h: jax.Array,
    boundary_mask: jax.Array,
    segment_start: jax.Array,
    capacity: int,
    extras: dict[str, jax.Array] | None = None,
) -> Chunked:
  """h [B, L, D], boundary_mask and segment_start [B, L] bool, extras name -> [B, L]
  -> Chunked."""
  byte_index, valid, index_of_byte, num_dropped = chunk_indices(
      boundary_mask, segment_start, capacity)
  gathered = {name: gather_rows_reference(value, byte_index)
              for name, value in (extras or {}).items()}
  return Chunked(gather_rows_reference(h, byte_index), valid, byte_index,
                 index_of_byte, num_dropped, gathered)
