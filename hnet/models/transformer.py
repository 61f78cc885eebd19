"""Llama-style byte (or BPE-token) Transformer: the baseline of every paper.

Embedding -> N x TransformerBlock (RMSNorm, RoPE, causal attention with an
optional sliding window, SwiGLU) -> RMSNorm -> head (tied or untied).
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from hnet.layers.linear import Dense, Embed
from hnet.layers.norm import RMSNorm
from hnet.layers.transformer_block import TransformerBlock
from hnet.models.output import ModelOutput
from hnet.sharding import shard


class Transformer(nnx.Module):
  def __init__(self, *, vocab_size: int, dim: int, num_layers: int, num_heads: int, mlp_dim: int,
               rngs: nnx.Rngs, num_kv_heads: int | None = None, window: int | None = None,
               tie_embeddings: bool = False, dtype=jnp.float32):
    self.embed = Embed(vocab_size, dim, rngs=rngs, dtype=dtype)
    self.layers = nnx.List([
        TransformerBlock(dim, num_heads, mlp_dim, rngs=rngs, num_kv_heads=num_kv_heads,
                         window=window, num_layers_for_init=num_layers, dtype=dtype)
        for _ in range(num_layers)])
    self.final_norm = RMSNorm(dim)
    self.head = None if tie_embeddings else Dense(dim, vocab_size, rngs=rngs,
                                                  axes=("embed", "vocab"), dtype=dtype)

  def _logits(self, x: jax.Array) -> jax.Array:
    x = self.final_norm(x)
    logits = self.embed.attend(x) if self.head is None else self.head(x)
    return shard(logits.astype(jnp.float32), ("batch", "length", "act_vocab"))

  def __call__(self, batch: dict[str, jax.Array]) -> ModelOutput:
    x = shard(self.embed(batch["inputs"]), ("batch", "length", "act_embed"))  # [B, L, D]
    for layer in self.layers:
      x = layer(x, batch["positions"], batch["segment_ids"])
    return ModelOutput(logits=self._logits(x))

  def init_cache(self, batch_size: int, max_len: int) -> dict[str, Any]:
    """Keys stored transposed, and each decode step attends to the cache before its update
    plus the new key (Attention.decode, attend_cache_and_new): with keys [B, K, S, Dh],
    XLA:CPU copied the caches at every step at batch 1 (it drops the batch dimension and
    duplicates the in-place update) and transposed every key cache for the product. Tiny
    Transformer, 256 new bytes: batch 1 3,700 -> 6,200 bytes/s, batch 2 4,400 -> 6,300,
    batch 4 6,500 -> 9,200, batch 8 4,300 -> 7,400, batch 16 unchanged within noise."""
    return {"index": jnp.zeros((), jnp.int32),
            "layers": [layer.init_cache(batch_size, max_len, keys_transposed=True)
                       for layer in self.layers]}

  def decode_step(self, cache: dict[str, Any], ids: jax.Array) -> tuple[jax.Array, dict[str, Any]]:
    """ids [B] -> logits [B, V] for the next position; appends to the KV cache."""
    index = cache["index"]
    x = self.embed(ids[:, None])  # [B, 1, D]
    new_layers = []
    for layer, layer_cache in zip(self.layers, cache["layers"]):
      x, layer_cache = layer.decode(x, layer_cache, index)
      new_layers.append(layer_cache)
    return self._logits(x)[:, 0], {"index": index + 1, "layers": new_layers}

  def prefill(self, cache: dict[str, Any], ids: jax.Array, length: jax.Array) -> dict[str, Any]:
    """ids [B, W] -> the cache that `length` (traced, <= W) decode_steps feeding
    ids[:, :length] leave, in one causal pass over the W positions; no logits. Slots
    index+length.. hold keys of ids past `length`: each decode_step writes its slot
    before attending and never attends past it, so they are never read."""
    index = cache["index"]
    x = self.embed(ids)  # [B, W, D]
    new_layers = []
    for layer, layer_cache in zip(self.layers, cache["layers"]):
      x, layer_cache = layer.decode(x, layer_cache, index)
      new_layers.append(layer_cache)
    return {"index": index + length, "layers": new_layers}


def build(cfg, rngs: nnx.Rngs) -> Transformer:
  return Transformer(vocab_size=cfg.vocab_size, dim=cfg.dim, num_layers=cfg.num_layers,
                     num_heads=cfg.num_heads, mlp_dim=cfg.mlp_dim, rngs=rngs,
                     num_kv_heads=cfg.get("num_kv_heads") or None, window=cfg.get("window") or None,
                     tie_embeddings=cfg.get("tie_embeddings", False),
                     dtype=jnp.dtype(cfg.get("dtype", "float32")))
