"""Word pooling: the bytes of each word -> one word vector (shared by HAT and the
word-pooled models; one pluggable choice, `make_pooling(kind, ...)`).

All poolers work on a word grid: x [B, W, Lw, D] (byte features laid out per word,
slot k of word w = the word's k-th byte), mask [B, W, Lw] (real bytes), and return
[B, W, D_out]. `stream_to_words` / `words_to_stream` move features between the byte
stream [B, Lb, ...] and the grid using the layout's word_index / byte_in_word.

Variants:
  "query": one learned query per head attends to the word's bytes only (HAT, Byte2Word).
           RoPE: the query is rotated by the word position, the keys by the byte
           positions (as HAT specifies); values are the (normed) byte features.
  "cls":   Learn Your Tokens: `num_cls` (4) learned CLS vectors are prepended to the
           word's bytes, a small bidirectional Transformer runs inside each word
           (padding slots are masked out), and the CLS outputs, concatenated, are
           projected to the word vector.
  "mean":  masked mean of the byte features, then a projection.
A word with no real byte (grid padding) gives a finite vector that callers mask out.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from hnet.layers.attention import attend
from hnet.layers.linear import DEFAULT_STD, Dense, normal_param
from hnet.layers.norm import RMSNorm
from hnet.layers.rope import apply_rope
from hnet.layers.transformer_block import TransformerBlock
from hnet.sharding import shard

POOLING_KINDS = ("query", "cls", "mean")


def stream_to_words(x: jax.Array, word_index: jax.Array, byte_in_word: jax.Array,
                    num_words: int, word_len: int) -> jax.Array:
  """x [B, Lb, ...] -> grid [B, W, Lw, ...]: byte t goes to slot (word_index[t], byte_in_word[t]).

  Bytes whose slot lies outside the grid are dropped (the layout caps W and Lw and
  counts what overflows); empty slots are zero.
  """
  B, Lb = word_index.shape
  rows = jnp.broadcast_to(jnp.arange(B)[:, None], (B, Lb))
  grid = jnp.zeros((B, num_words, word_len) + x.shape[2:], x.dtype)
  return grid.at[rows, word_index, byte_in_word].set(x, mode="drop")


def words_to_stream(grid: jax.Array, word_index: jax.Array, byte_in_word: jax.Array) -> jax.Array:
  """grid [B, W, Lw, ...] -> [B, Lb, ...]: the inverse gather (slot of each byte;
  out-of-grid indices are clamped, callers mask them)."""
  B, W, Lw = grid.shape[:3]
  flat = grid.reshape(B, W * Lw, *grid.shape[3:])
  index = jnp.clip(word_index, 0, W - 1) * Lw + jnp.clip(byte_in_word, 0, Lw - 1)  # [B, Lb]
  index = index.reshape(B, -1, *([1] * (grid.ndim - 3)))
  return jnp.take_along_axis(flat, index, axis=1)


def gather_words(x: jax.Array, index: jax.Array) -> jax.Array:
  """x [B, W, D], index [B, L] (clamped to [0, W)) -> [B, L, D]: per-position word vectors."""
  index = jnp.clip(index, 0, x.shape[1] - 1)
  return jnp.take_along_axis(x, index[..., None], axis=1)


class QueryPooling(nnx.Module):
  """One learned query per head cross-attends to the word's bytes (HAT / Byte2Word)."""

  def __init__(self, in_dim: int, out_dim: int, num_heads: int, *, rngs: nnx.Rngs,
               num_kv_heads: int | None = None, head_dim: int | None = None, rope: bool = True,
               rope_base: float = 10000.0, dtype=jnp.float32):
    self.num_heads = num_heads
    self.num_kv_heads = num_kv_heads or num_heads
    self.head_dim = head_dim or in_dim // num_heads
    self.rope, self.rope_base, self.dtype = rope, rope_base, dtype
    self.norm = RMSNorm(in_dim)
    self.query = normal_param(rngs, (num_heads, self.head_dim), ("heads", None), 1.0)
    self.key = Dense(in_dim, self.num_kv_heads * self.head_dim, rngs=rngs, axes=("embed", "heads"),
                     dtype=dtype)
    self.value = Dense(in_dim, self.num_kv_heads * self.head_dim, rngs=rngs,
                       axes=("embed", "heads"), dtype=dtype)
    self.out = Dense(num_heads * self.head_dim, out_dim, rngs=rngs, axes=("heads", "embed"),
                     dtype=dtype)

  def __call__(self, x: jax.Array, mask: jax.Array, byte_positions: jax.Array,
               word_positions: jax.Array) -> jax.Array:
    """x [B, W, Lw, D], mask/byte_positions [B, W, Lw], word_positions [B, W] -> [B, W, Do]."""
    B, W, Lw, _ = x.shape
    h = self.norm(x).reshape(B * W, Lw, -1)
    k = self.key(h).reshape(B * W, Lw, self.num_kv_heads, self.head_dim)
    v = self.value(h).reshape(B * W, Lw, self.num_kv_heads, self.head_dim)
    q = jnp.broadcast_to(self.query[...].astype(self.dtype), (B * W, 1, self.num_heads, self.head_dim))
    if self.rope:
      q = apply_rope(q, word_positions.reshape(B * W, 1), self.rope_base)
      k = apply_rope(k, byte_positions.reshape(B * W, Lw), self.rope_base)
    attn_mask = mask.reshape(B * W, 1, 1, Lw)
    out = attend(q, k, v, attn_mask)  # [B*W, 1, H, Dh]
    return self.out(out.reshape(B, W, -1))


class ClsPooling(nnx.Module):
  """Learn Your Tokens: CLS vectors + a small bidirectional in-word Transformer."""

  def __init__(self, in_dim: int, out_dim: int, num_heads: int, *, rngs: nnx.Rngs,
               num_cls: int = 4, num_layers: int = 2, mlp_dim: int | None = None,
               dtype=jnp.float32):
    self.num_cls = num_cls
    self.cls = normal_param(rngs, (num_cls, in_dim), (None, "embed"), DEFAULT_STD)
    self.layers = nnx.List([
        TransformerBlock(in_dim, num_heads, mlp_dim or 3 * in_dim, rngs=rngs, causal=False,
                         num_layers_for_init=num_layers, dtype=dtype)
        for _ in range(num_layers)])
    self.norm = RMSNorm(in_dim)
    self.out = Dense(num_cls * in_dim, out_dim, rngs=rngs, axes=("mlp", "embed"), dtype=dtype)

  def __call__(self, x: jax.Array, mask: jax.Array, byte_positions: jax.Array | None = None,
               word_positions: jax.Array | None = None) -> jax.Array:
    """x [B, W, Lw, D], mask [B, W, Lw] -> [B, W, Do]. Positions inside the word are
    0..C-1 for the CLS slots and C.. for the bytes (document positions are not used)."""
    del byte_positions, word_positions
    B, W, Lw, D = x.shape
    C = self.num_cls
    cls = jnp.broadcast_to(self.cls[...].astype(x.dtype), (B * W, C, D))
    h = jnp.concatenate([cls, x.reshape(B * W, Lw, D)], axis=1)  # [B*W, C+Lw, D]
    seg = jnp.concatenate([jnp.ones((B * W, C), jnp.int32),
                           mask.reshape(B * W, Lw).astype(jnp.int32)], axis=1)
    pos = jnp.broadcast_to(jnp.arange(C + Lw), seg.shape)
    for layer in self.layers:
      h = layer(h, pos, seg)
    cls_out = self.norm(h[:, :C])  # [B*W, C, D]
    return self.out(cls_out.reshape(B, W, C * D))


class MeanPooling(nnx.Module):
  """Masked mean of the word's byte features, then a projection."""

  def __init__(self, in_dim: int, out_dim: int, *, rngs: nnx.Rngs, dtype=jnp.float32):
    self.norm = RMSNorm(in_dim)
    self.out = Dense(in_dim, out_dim, rngs=rngs, axes=("mlp", "embed"), dtype=dtype)

  def __call__(self, x: jax.Array, mask: jax.Array, byte_positions: jax.Array | None = None,
               word_positions: jax.Array | None = None) -> jax.Array:
    del byte_positions, word_positions
    m = mask.astype(jnp.float32)[..., None]                               # [B, W, Lw, 1]
    mean = jnp.sum(x.astype(jnp.float32) * m, axis=2) / jnp.maximum(jnp.sum(m, axis=2), 1.0)
    return self.out(self.norm(mean.astype(x.dtype)))


def make_pooling(kind: str, in_dim: int, out_dim: int, *, num_heads: int, rngs: nnx.Rngs,
                 num_cls: int = 4, num_layers: int = 2, mlp_dim: int | None = None,
                 rope: bool = True, dtype=jnp.float32) -> nnx.Module:
  if kind == "query":
    return QueryPooling(in_dim, out_dim, num_heads, rngs=rngs, rope=rope, dtype=dtype)
  if kind == "cls":
    return ClsPooling(in_dim, out_dim, num_heads, rngs=rngs, num_cls=num_cls,
                      num_layers=num_layers, mlp_dim=mlp_dim, dtype=dtype)
  if kind == "mean":
    return MeanPooling(in_dim, out_dim, rngs=rngs, dtype=dtype)
  raise ValueError(f"unknown pooling {kind!r}; known: {POOLING_KINDS}")


def pool_stream(pooling: nnx.Module, x: jax.Array, batch: dict, num_words: int,
                word_len: int) -> jax.Array:
  """Pools byte-stream features x [B, Lb, D] into word vectors [B, W, Do] with the
  layout keys word_index, byte_in_word, positions, word_positions, segment_ids."""
  wi, bw = batch["word_index"], batch["byte_in_word"]
  real = batch["segment_ids"] > 0
  grid = stream_to_words(x, wi, bw, num_words, word_len)                       # [B, W, Lw, D]
  mask = stream_to_words(real, wi, bw, num_words, word_len)                    # [B, W, Lw]
  byte_positions = stream_to_words(batch["positions"], wi, bw, num_words, word_len)
  out = pooling(grid, mask, byte_positions, batch["word_positions"])
  return shard(out, ("batch", "length", "act_embed"))
