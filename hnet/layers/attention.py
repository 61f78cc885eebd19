"""Multi-head attention: causal or bidirectional, sliding window, packed rows, KV cache.

Shapes: B batch, L query length, S key length, H query heads, K kv heads, Dh head dim.
"""
from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from hnet.kernels import backend
from hnet.layers import linear
from hnet.layers.linear import DEFAULT_STD, Dense
from hnet.layers.rope import apply_rope
from hnet.sharding import shard

NEG_INF = -1e30


def make_mask(q_segment: jax.Array, k_segment: jax.Array, q_index: jax.Array,
              k_index: jax.Array, *, causal: bool = True, window: int | None = None) -> jax.Array:
  """Boolean mask [B, 1, L, S]: same document, optionally causal and within a window.

  q_segment [B, L], k_segment [B, S]: document ids (0 = padding, which only sees padding).
  q_index [B, L], k_index [B, S]: absolute positions in the row (or in the cache).
  """
  mask = q_segment[:, :, None] == k_segment[:, None, :]
  delta = q_index[:, :, None] - k_index[:, None, :]
  if causal:
    mask &= delta >= 0
  if window is not None:
    mask &= jnp.abs(delta) < window
  return mask[:, None]


def softmax1(logits: jax.Array, axis: int = -1) -> jax.Array:
  """exp(x_i) / (1 + sum_j exp(x_j)): a softmax with an extra key of logit 0 and value 0.

  MrT5's attention (paper eq. 7): when every key is pushed far below 0 (soft deletion)
  the weights go to 0 instead of being renormalised back to a full softmax."""
  shift = jax.lax.stop_gradient(jnp.maximum(jnp.max(logits, axis=axis, keepdims=True), 0.0))
  scaled = jnp.exp(logits - shift)
  return scaled / (jnp.exp(-shift) + jnp.sum(scaled, axis=axis, keepdims=True))


def _masked_softmax(logits: jax.Array, mask: jax.Array, logit_bias: jax.Array | None,
                    use_softmax1: bool, dtype) -> jax.Array:
  """float32 logits [B, H, L, S] (+ logit_bias, masked keys at NEG_INF) -> the attention
  weights in `dtype`."""
  if logit_bias is not None:
    logits = logits + logit_bias.astype(jnp.float32)
  logits = jnp.where(mask, logits, NEG_INF)
  return (softmax1 if use_softmax1 else jax.nn.softmax)(logits, axis=-1).astype(dtype)


def attend(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array,
           logit_bias: jax.Array | None = None, *, use_softmax1: bool = False) -> jax.Array:
  """q [B, L, H, Dh], k/v [B, S, K, Dh], mask [B, 1|H, L|1, S] -> [B, L, H, Dh].

  Softmax (or `softmax1`) in float32. `logit_bias` (broadcastable to [B, H, L, S]) is
  added to the logits (relative position bias, soft deletion). Two formulations of the
  same function, chosen by the platform the step is compiled for
  (`hnet.kernels.backend.target_platform`):
  - CPU: heads-major with a hand-written backward (`_attention`): fewer passes over the
    [B, H, L, S] scores and no transposed copies of them (README, "Training speed").
  - TPU / GPU: grouped-query heads as they come, differentiated by autodiff
    (`_attend_grouped`). There, the heads-major form made XLA keep two float32
    [B, H, L, S] buffers (logits and weights) where this one keeps the bfloat16 weights
    alone: 4 rows x 16 heads x 8192^2 on a v5p took 32.6 GiB forward and 32.3 GiB with
    the gradient, against 8.4 and 16.3 GiB (tests/test_aot.py).
  """
  if backend.target_platform() != "cpu":
    return _attend_grouped(q, k, v, mask, logit_bias, use_softmax1)
  H = q.shape[2]
  K = k.shape[2]
  heads = lambda x: jnp.swapaxes(x, 1, 2)  # [B, T, H, Dh] <-> [B, H, T, Dh]
  k, v = (jnp.repeat(x, H // K, axis=2) if K != H else x for x in (k, v))  # head h reads kv h // G
  return heads(_attention(heads(q), heads(k), heads(v), mask, logit_bias, use_softmax1))


def _attend_grouped(q, k, v, mask, logit_bias, use_softmax1):
  """attend() for accelerators: query heads grouped by their kv head ([B, K, G, L, S]
  scores, k/v never repeated), gradient by autodiff."""
  B, L, H, Dh = q.shape
  K = k.shape[2]
  q = q.reshape(B, L, K, H // K, Dh)
  logits = jnp.einsum("blkgd,bskd->bkgls", q, k).astype(jnp.float32) * (Dh ** -0.5)
  logits = logits.reshape(B, H, L, -1)
  weights = _masked_softmax(logits, mask, logit_bias, use_softmax1, v.dtype)
  out = jnp.einsum("bkgls,bskd->blkgd", weights.reshape(B, K, H // K, L, -1), v)
  return out.reshape(B, L, H, Dh)


def _attention_forward(q, k, v, mask, logit_bias, use_softmax1):
  """q [B, H, L, Dh], k/v [B, H, S, Dh] -> (out [B, H, L, Dh], weights [B, H, L, S])."""
  logits = jnp.einsum("bhld,bhsd->bhls", q, k).astype(jnp.float32) * (q.shape[-1] ** -0.5)
  weights = _masked_softmax(logits, mask, logit_bias, use_softmax1, v.dtype)
  return jnp.einsum("bhls,bhsd->bhld", weights, v), weights


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def _attention(q, k, v, mask, logit_bias, use_softmax1):
  """softmax(mask(q k^T / sqrt(Dh) + bias)) v, heads-major: q [B, H, L, Dh], k/v [B, H, S, Dh]."""
  return _attention_forward(q, k, v, mask, logit_bias, use_softmax1)[0]


def _attention_fwd(q, k, v, mask, logit_bias, use_softmax1):
  out, weights = _attention_forward(q, k, v, mask, logit_bias, use_softmax1)
  return out, (q, k, v, mask, weights, out, logit_bias)


def _attention_bwd(use_softmax1, residuals, d_out):
  """With P the weights and Z the logits: dV = P^T dO, dZ = P * (dO V^T - rowsum(dO * O))
  (zero where masked; also softmax1's, whose extra key has value 0), d_bias = dZ summed
  to the bias's shape, dQ = dZ K / sqrt(Dh), dK = dZ^T Q / sqrt(Dh). The products with
  P^T and dZ^T are computed transposed ([Dh, L] @ [L, S]) so the [L, S] matrices are
  read in their own layout."""
  del use_softmax1  # the same gradient formula for both
  q, k, v, mask, weights, out, logit_bias = residuals
  scale = q.shape[-1] ** -0.5
  d_v = jnp.swapaxes(jnp.einsum("bhld,bhls->bhds", d_out, weights), -1, -2).astype(v.dtype)
  d_weights = jnp.einsum("bhld,bhsd->bhls", d_out, v).astype(jnp.float32)
  row = jnp.sum(d_out.astype(jnp.float32) * out.astype(jnp.float32), axis=-1, keepdims=True)
  d_logits = jnp.where(mask, weights.astype(jnp.float32) * (d_weights - row), 0.0)
  d_bias = None
  if logit_bias is not None:
    shape, dtype = logit_bias.shape, logit_bias.dtype
    lead = d_logits.ndim - len(shape)
    summed = tuple(range(lead)) + tuple(lead + i for i, n in enumerate(shape) if n == 1)
    d_bias = jnp.sum(d_logits, axis=summed, keepdims=True).reshape(shape).astype(dtype)
  d_scaled = (d_logits * scale).astype(q.dtype)
  d_q = jnp.einsum("bhls,bhsd->bhld", d_scaled, k).astype(q.dtype)
  d_k = jnp.swapaxes(jnp.einsum("bhld,bhls->bhds", q, d_scaled), -1, -2).astype(k.dtype)
  return d_q, d_k, d_v, None, d_bias


_attention.defvjp(_attention_fwd, _attention_bwd)


def attend_cache(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array,
                 logit_bias: jax.Array | None = None, *, use_softmax1: bool = False,
                 keys_transposed: bool = False) -> jax.Array:
  """attend() over a KV cache in its [B, K, S, Dh] layout (decoding): q [B, T, H, Dh],
  k/v [B, K, S, Dh] (k [B, K, Dh, S] with keys_transposed), mask [B, 1|H, T, S] ->
  [B, T, H, Dh]. Heads-major keeps both products plain batched matmuls over the cache as
  it lies; in attend()'s [B, S, K, Dh] layout XLA copied the whole cache at every step
  (12x the attention time at batch 16)."""
  B, T, H, Dh = q.shape
  K = k.shape[1]
  q = jnp.moveaxis(q.reshape(B, T, K, H // K, Dh), 1, 3)  # [B, K, G, T, Dh]
  logits = jnp.einsum("bkgtd,bkds->bkgts" if keys_transposed else "bkgtd,bksd->bkgts", q, k)
  logits = logits.astype(jnp.float32).reshape(B, H, T, -1) * (Dh ** -0.5)
  weights = _masked_softmax(logits, mask, logit_bias, use_softmax1, v.dtype)
  out = jnp.einsum("bkgts,bksd->bkgtd", weights.reshape(B, K, H // K, T, -1), v)
  return jnp.moveaxis(out, 3, 1).reshape(B, T, H, Dh)


def attend_cache_and_new(q: jax.Array, k_cache: jax.Array, v_cache: jax.Array,
                         k_new: jax.Array, v_new: jax.Array, visible: jax.Array, *,
                         use_softmax1: bool = False) -> jax.Array:
  """One query per row over the cache as it was before this step plus the step's own
  key: the same softmax as attend_cache over the cache with the new key written in, but
  the products read the cache before the step updates it, so the update has a single
  reader (the loop's carry) and XLA performs it in place.

  q [B, 1, H, Dh]; k_cache [B, K, Dh, S] (keys transposed: the layout XLA:CPU's batched
  matrix-vector product reads without a copy), v_cache [B, K, S, Dh]; k_new, v_new
  [B, K, 1, Dh]; visible [S] bool (the cache slots this query attends to, not the one the
  new key goes to) -> [B, 1, H, Dh]."""
  B, _, H, Dh = q.shape
  K, S = v_cache.shape[1], v_cache.shape[2]
  q = jnp.moveaxis(q.reshape(B, 1, K, H // K, Dh), 1, 3)                   # [B, K, G, 1, Dh]
  cached = jnp.einsum("bkgtd,bkds->bkgts", q, k_cache).astype(jnp.float32)  # [B, K, G, 1, S]
  new = jnp.einsum("bkgtd,bksd->bkgts", q, k_new).astype(jnp.float32)      # [B, K, G, 1, 1]
  logits = jnp.concatenate([jnp.where(visible, cached, NEG_INF), new], axis=-1) * (Dh ** -0.5)
  weights = (softmax1 if use_softmax1 else jax.nn.softmax)(logits, axis=-1).astype(v_cache.dtype)
  out = (jnp.einsum("bkgts,bksd->bkgtd", weights[..., :S], v_cache)
         + weights[..., S:] * v_new[:, :, None])                             # [B, K, G, 1, Dh]
  return jnp.moveaxis(out, 3, 1).reshape(B, 1, H, Dh)


def write_rows(cache: jax.Array, new: jax.Array, slot: jax.Array) -> jax.Array:
  """cache [B, K, S, Dh], new [B, 1, K, Dh] -> cache with row b's new entry at slot[b]
  (rows at different positions; B entries written in place inside a loop)."""
  return cache.at[jnp.arange(cache.shape[0]), :, slot].set(new[:, 0].astype(cache.dtype))


class Attention(nnx.Module):
  """Self-attention with RoPE over packed rows, optional window and KV cache."""

  def __init__(self, dim: int, num_heads: int, *, rngs: nnx.Rngs, num_kv_heads: int | None = None,
               head_dim: int | None = None, window: int | None = None, causal: bool = True,
               rope: bool = True, rope_base: float = 10000.0, out_std: float = DEFAULT_STD,
               use_softmax1: bool = False, dtype=jnp.float32):
    self.num_heads = num_heads
    self.use_softmax1 = use_softmax1
    self.num_kv_heads = num_kv_heads or num_heads
    self.head_dim = head_dim or dim // num_heads
    self.window, self.causal, self.rope, self.rope_base = window, causal, rope, rope_base
    inner, kv_inner = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
    self.query = Dense(dim, inner, rngs=rngs, axes=("embed", "heads"), dtype=dtype)
    self.key = Dense(dim, kv_inner, rngs=rngs, axes=("embed", "heads"), dtype=dtype)
    self.value = Dense(dim, kv_inner, rngs=rngs, axes=("embed", "heads"), dtype=dtype)
    self.out = Dense(inner, dim, rngs=rngs, axes=("heads", "embed"), std=out_std, dtype=dtype)

  def _project(self, x, positions):
    B, L, _ = x.shape
    q, k, v = linear.project_together(x, (self.query, self.key, self.value))
    q = q.reshape(B, L, self.num_heads, self.head_dim)
    k = k.reshape(B, L, self.num_kv_heads, self.head_dim)
    v = v.reshape(B, L, self.num_kv_heads, self.head_dim)
    if self.rope:
      q = apply_rope(q, positions, self.rope_base)
      k = apply_rope(k, positions, self.rope_base)
    q = shard(q, ("batch", "length", "act_heads", None))
    return q, k, v

  def __call__(self, x: jax.Array, positions: jax.Array, segment_ids: jax.Array,
               logit_bias: jax.Array | None = None) -> jax.Array:
    """x [B, L, D], positions/segment_ids [B, L] -> [B, L, D] (training / full forward)."""
    q, k, v = self._project(x, positions)
    index = jnp.broadcast_to(jnp.arange(x.shape[1]), segment_ids.shape)
    mask = make_mask(segment_ids, segment_ids, index, index, causal=self.causal, window=self.window)
    out = attend(q, k, v, mask, logit_bias, use_softmax1=self.use_softmax1)
    return self.out(out.reshape(*x.shape[:2], -1))

  def init_cache(self, batch_size: int, max_len: int, dtype=jnp.float32, *,
                 keys_transposed: bool = False) -> dict[str, Any]:
    """{"k", "v"}: [B, K, max_len, Dh] (heads-major: see attend_cache). keys_transposed:
    {"k_transposed": [B, K, Dh, max_len], "v"}, which decode() steps through
    attend_cache_and_new (the key of the dict names the layout, so it is static)."""
    shape = (batch_size, self.num_kv_heads, max_len, self.head_dim)
    if keys_transposed:
      transposed = (batch_size, self.num_kv_heads, self.head_dim, max_len)
      return {"k_transposed": jnp.zeros(transposed, dtype), "v": jnp.zeros(shape, dtype)}
    return {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)}

  def decode(self, x: jax.Array, cache: dict[str, Any], index: jax.Array,
             valid: jax.Array | None = None,
             logit_bias: jax.Array | None = None) -> tuple[jax.Array, dict[str, Any]]:
    """Appends T new positions at cache slot `index` (scalar) and attends causally.

    x [B, T, D]; the positions of the new tokens are index .. index+T-1. `valid`
    [B, S] marks which cache slots hold real tokens (default: all written slots),
    so rows whose streams advance at different rates can share one cache.
    `logit_bias` (broadcastable to [B, H, T, S]) is added to the logits, as in __call__
    (T5 relative position bias over the cache slots). A cache made with keys_transposed
    steps one position (T = 1, no `valid`, no bias) through attend_cache_and_new.
    Returns ([B, T, D], new cache).
    """
    B, T, _ = x.shape
    S = cache["v"].shape[2]
    transposed = "k_transposed" in cache
    q_index = index + jnp.broadcast_to(jnp.arange(T), (B, T))
    q, k, v = self._project(x, q_index)
    k_new = jnp.moveaxis(k, 1, 2)  # [B, K, T, Dh]
    v_new = jnp.moveaxis(v, 1, 2)
    v_all = jax.lax.dynamic_update_slice(  # [B, K, S, Dh]
        cache["v"], v_new.astype(cache["v"].dtype), (0, 0, index, 0))
    if transposed:
      k_all = jax.lax.dynamic_update_slice(  # [B, K, Dh, S]
          cache["k_transposed"], jnp.swapaxes(k_new, 2, 3).astype(cache["k_transposed"].dtype),
          (0, 0, 0, index))
      new_cache = {"k_transposed": k_all, "v": v_all}
    else:
      k_all = jax.lax.dynamic_update_slice(  # [B, K, S, Dh]
          cache["k"], k_new.astype(cache["k"].dtype), (0, 0, index, 0))
      new_cache = {"k": k_all, "v": v_all}
    if transposed and T == 1 and valid is None and logit_bias is None:
      slot = jnp.arange(S)
      visible = slot < index
      if self.window is not None:
        visible &= index - slot < self.window
      out = attend_cache_and_new(
          q, cache["k_transposed"].astype(q.dtype), cache["v"].astype(q.dtype),
          k_new.astype(q.dtype), v_new.astype(q.dtype), visible, use_softmax1=self.use_softmax1)
      return self.out(out.reshape(B, T, -1)), new_cache
    k_index = jnp.broadcast_to(jnp.arange(S), (B, S))
    seg_q = jnp.ones((B, T), jnp.int32)
    seg_k = jnp.ones((B, S), jnp.int32) if valid is None else valid.astype(jnp.int32)
    mask = make_mask(seg_q, seg_k, q_index, k_index, causal=True, window=self.window)
    out = attend_cache(q, k_all.astype(q.dtype), v_all.astype(q.dtype), mask, logit_bias,
                       use_softmax1=self.use_softmax1, keys_transposed=transposed)
    return self.out(out.reshape(B, T, -1)), new_cache
