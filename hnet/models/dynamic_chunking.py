"""H-Net dynamic chunking: routing, chunking with a static capacity, dechunking.

One routing stage takes the encoder output h [B, L, D] of a stream (bytes, or the
chunks of an outer stage) and:

  1. Router: q_t = W_q h_{t-1}, k_t = W_k h_t (square, no bias, identity init);
     p_t = clamp((1 - cos(q_t, k_t)) / 2, 0, 1), forced to 1 at position 0 and at every
     document start (a new document always starts a new chunk); b_t = p_t > 0.5.
     Padding (segment id 0) and empty chunk slots are never boundaries, except where a
     padding run starts (so padding forms one chunk of its own and costs 1 slot).
  2. Chunk: at most C kept positions of each row, in order (C static: `capacity`);
     document starts get their slots first (see Capacity below).
     Positions / segment ids / document starts of the chunks are gathered too, so the
     inner stage sees per-document, causal streams; inner positions are chunk ordinals
     within the document (what variable-length packing of the chunks would give).
  3. Dechunk (after the inner network): EMA z_bar_k = P_k z_k + (1 - P_k) z_bar_{k-1}
     with P clamped to [1e-4, 1 - 1e-4] in float32, reset at document starts; byte t
     reads z_bar[cumsum(b)_t - 1]; times STE(c_t), c_t = b_t ? p_t : 1 - p_t (forward
     value 1, gradient of c); plus residual = Linear(h) (zero-initialised).

Capacity: C_s = min(L_s, round_up(ceil(L_s * capacity_factor / N_s), 8)) for a stream of
length L_s and target compression N_s; capacity_factor <= 0 (or C >= L) is the exact
variable-length semantics. When a row has more boundaries than C, a row with S document
starts (padding runs included) keeps its first min(S, C) starts and its first
max(C - S, 0) boundaries inside documents; the others are dropped (their bytes read
the last kept chunk, which is in their own document) and counted: `dropped_fraction` =
dropped / boundaries, reported per stage. So a new document always starts a new
chunk, also after an overflow. Only a row with more than C documents has documents
with no chunk at all (those after the C-th): their bytes read nothing (the dechunked
vector is 0 and the output is the residual alone), never another document's chunk.
The default factor 2 leaves room for twice the target number of chunks (the ratio loss
keeps the fraction near 1/N once trained; early in training it may overflow, which the
metric shows).

Ratio loss (target 1/N): F = mean(b), G = mean(p) over real positions (not padding,
not empty slots); L_ratio = N/(N-1) * ((N-1) F G + (1-F)(1-G)); F carries no gradient.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from hnet.kernels.chunk import chunk as chunk_op
from hnet.kernels.dechunk import dechunk as dechunk_op
from hnet.kernels.dechunk.reference import clamp_chunk_prob
from hnet.kernels.routing import boundary_probs
from hnet.layers.linear import Dense


def capacity_for(length: int, target_ratio: float, capacity_factor: float) -> int:
  """Static chunk slots for a stream of `length` (see the module docstring)."""
  if capacity_factor <= 0:
    return length
  wanted = math.ceil(length * capacity_factor / target_ratio)
  return max(1, min(length, -(-wanted // 8) * 8))


def segment_starts(segment_ids: jax.Array) -> jax.Array:
  """[B, L] -> [B, L] bool: position 0 and every position whose segment id changes."""
  changed = segment_ids[:, 1:] != segment_ids[:, :-1]
  return jnp.pad(changed, ((0, 0), (1, 0)), constant_values=True)


def positions_within_document(is_start: jax.Array) -> jax.Array:
  """is_start [B, C] bool (True at slot 0) -> [B, C] int32 ordinal since the last start."""
  index = jnp.broadcast_to(jnp.arange(is_start.shape[1], dtype=jnp.int32), is_start.shape)
  last_start = jax.lax.cummax(jnp.where(is_start, index, 0), axis=1)
  return index - last_start


def ratio_loss(boundary_mask: jax.Array, boundary_prob: jax.Array, real: jax.Array,
               target_ratio: float) -> tuple[jax.Array, jax.Array, jax.Array]:
  """[B, L] each (real: bool) -> (L_ratio, F, G) scalars; F = mean(b), G = mean(p)."""
  n = float(target_ratio)
  weight = real.astype(jnp.float32)
  count = jnp.maximum(jnp.sum(weight), 1.0)
  selected = jnp.sum(boundary_mask.astype(jnp.float32) * weight) / count  # F
  mean_prob = jnp.sum(boundary_prob.astype(jnp.float32) * weight) / count  # G
  loss = n / (n - 1.0) * ((n - 1.0) * selected * mean_prob + (1.0 - selected) * (1.0 - mean_prob))
  return loss, selected, mean_prob


def ste_confidence(boundary_prob: jax.Array, boundary_mask: jax.Array) -> jax.Array:
  """STE(c), c = b ? p : 1 - p: forward value 1 (up to rounding), gradient of c."""
  confidence = jnp.where(boundary_mask, boundary_prob, 1.0 - boundary_prob)
  return confidence + jax.lax.stop_gradient(1.0 - confidence)


class Stream(NamedTuple):
  """Per-position bookkeeping of one stage's sequence ([B, L] each)."""
  positions: jax.Array      # int32, ordinal within the document (RoPE)
  segment_ids: jax.Array    # int32, 0 = padding / empty slot
  is_start: jax.Array       # bool, position 0 and document starts (p forced to 1)
  real: jax.Array           # bool, counts for the ratio loss and the metrics


class Routed(NamedTuple):
  """What a routing stage hands to the inner stage and keeps for dechunking."""
  chunks: jax.Array             # [B, C, D] encoder output at the kept positions
  inner: Stream                 # [B, C] bookkeeping of the chunk stream
  chunk_prob: jax.Array         # [B, C] p of each kept position (EMA weights)
  chunk_index_of_byte: jax.Array  # [B, L] int32, -1: reads no chunk
  chunk_byte_index: jax.Array   # [B, C] int32 position each chunk came from, -1 if empty
  boundary_prob: jax.Array      # [B, L] float32
  boundary_mask: jax.Array      # [B, L] bool
  num_dropped: jax.Array        # [B] int32


class Router(nnx.Module):
  """q_t = h_{t-1} W_q, k_t = h_t W_k; W_q, W_k [D, D] initialised to the identity."""

  def __init__(self, dim: int, *, dtype=jnp.float32):
    self.query = nnx.Param(jnp.eye(dim, dtype=jnp.float32), axes=("embed", None))
    self.key = nnx.Param(jnp.eye(dim, dtype=jnp.float32), axes=("embed", None))
    self.dtype = dtype

  def project(self, h_previous: jax.Array, h: jax.Array) -> tuple[jax.Array, jax.Array]:
    q = jnp.einsum("...i,io->...o", h_previous.astype(self.dtype), self.query[...].astype(self.dtype))
    k = jnp.einsum("...i,io->...o", h.astype(self.dtype), self.key[...].astype(self.dtype))
    return q, k

  def __call__(self, h: jax.Array, stream: Stream, *, implementation: str = "jnp",
               interpret: bool = False) -> tuple[jax.Array, jax.Array]:
    """h [B, L, D] -> (boundary_prob [B, L] float32, boundary_mask [B, L] bool)."""
    h_previous = jnp.pad(h, ((0, 0), (1, 0), (0, 0)))[:, :-1]  # [B, L, D] h_{t-1}
    q, k = self.project(h_previous, h)
    prob, mask = boundary_probs(q, k, stream.is_start, implementation=implementation,
                                interpret=interpret)
    # Padding / empty slots never start chunks, except where a padding run begins.
    mask = mask & (stream.real | stream.is_start)
    return prob, mask

  def step(self, h_previous: jax.Array, h: jax.Array, is_start: jax.Array):
    """One position per row: h_previous, h [B, D], is_start [B] -> (p [B], b [B])."""
    q, k = self.project(h_previous, h)
    prob, mask = boundary_probs(q[:, None], k[:, None], is_start[:, None])
    return prob[:, 0], mask[:, 0]


def route_and_chunk(router: Router, h: jax.Array, stream: Stream, capacity: int, *,
                    implementation: str = "jnp", interpret: bool = False) -> Routed:
  """h [B, L, D] -> Routed with C = capacity chunk slots."""
  prob, mask = router(h, stream, implementation=implementation, interpret=interpret)
  extras = {"boundary_prob": prob, "segment_ids": stream.segment_ids,
            "is_start": stream.is_start, "real": stream.real}
  out = chunk_op(h, mask, stream.is_start, capacity, extras, implementation=implementation,
                 interpret=interpret)
  is_start = out.extras["is_start"] & out.chunk_valid  # [B, C]
  inner = Stream(positions=positions_within_document(is_start),
                 segment_ids=out.extras["segment_ids"].astype(jnp.int32),
                 is_start=is_start, real=out.extras["real"] & out.chunk_valid)
  return Routed(out.chunks, inner, out.extras["boundary_prob"], out.chunk_index_of_byte,
                out.chunk_byte_index, prob, mask, out.num_dropped)


def dechunk_and_combine(z: jax.Array, routed: Routed, residual: jax.Array, *,
                        implementation: str = "jnp", interpret: bool = False) -> jax.Array:
  """z [B, C, D] inner output -> [B, L, D]: EMA, upsample, * STE(c) + residual [B, L, D]."""
  upsampled = dechunk_op(z, routed.chunk_prob, routed.inner.is_start,
                         routed.chunk_index_of_byte, implementation=implementation,
                         interpret=interpret)  # [B, L, D]
  ste = ste_confidence(routed.boundary_prob, routed.boundary_mask)[..., None]  # [B, L, 1]
  out = upsampled.astype(jnp.float32) * ste + residual.astype(jnp.float32)
  return out.astype(z.dtype)


def dechunk_step(z: jax.Array, z_bar_previous: jax.Array, boundary_prob: jax.Array,
                 boundary_mask: jax.Array, residual: jax.Array) -> tuple[jax.Array, jax.Array]:
  """One byte of dechunking. z, z_bar_previous, residual [B, D]; p, b [B].

  Returns (output [B, D], z_bar [B, D] float32: the EMA value this byte reads).
  """
  prob = clamp_chunk_prob(boundary_prob)[:, None]  # [B, 1]
  updated = prob * z.astype(jnp.float32) + (1.0 - prob) * z_bar_previous
  z_bar = jnp.where(boundary_mask[:, None], updated, z_bar_previous)
  ste = ste_confidence(boundary_prob, boundary_mask)[:, None]
  out = z_bar.astype(z.dtype).astype(jnp.float32) * ste + residual.astype(jnp.float32)
  return out.astype(z.dtype), z_bar


class ResidualProjection(Dense):
  """Linear(h) added after dechunking; weight initialised to zero (float32 compute)."""

  def __init__(self, dim: int, *, rngs: nnx.Rngs):
    super().__init__(dim, dim, rngs=rngs, axes=("embed", None), zero_init=True,
                     dtype=jnp.float32)
