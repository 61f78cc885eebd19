"""Pre-norm Llama block: x + Attn(RMSNorm(x)), then x + SwiGLU(RMSNorm(x))."""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from hnet.layers.attention import Attention
from hnet.layers.linear import DEFAULT_STD
from hnet.layers.mlp import SwiGLU
from hnet.layers.norm import RMSNorm
from hnet.layers.remat import rematerialisable
from hnet.sharding import shard


class TransformerBlock(nnx.Module):
  def __init__(self, dim: int, num_heads: int, mlp_dim: int, *, rngs: nnx.Rngs,
               num_kv_heads: int | None = None, window: int | None = None, causal: bool = True,
               num_layers_for_init: int = 1, dtype=jnp.float32):
    out_std = DEFAULT_STD / (2 * num_layers_for_init) ** 0.5
    self.attn_norm = RMSNorm(dim)
    self.attn = Attention(dim, num_heads, rngs=rngs, num_kv_heads=num_kv_heads, window=window,
                          causal=causal, out_std=out_std, dtype=dtype)
    self.mlp_norm = RMSNorm(dim)
    self.mlp = SwiGLU(dim, mlp_dim, rngs=rngs, out_std=out_std, dtype=dtype)

  @rematerialisable
  def __call__(self, x: jax.Array, positions: jax.Array, segment_ids: jax.Array) -> jax.Array:
    x = x + self.attn(self.attn_norm(x), positions, segment_ids)
    x = x + self.mlp(self.mlp_norm(x))
    return shard(x, ("batch", "length", "act_embed"))

  def init_cache(self, batch_size: int, max_len: int, dtype=jnp.float32, *,
                 keys_transposed: bool = False) -> dict[str, Any]:
    return self.attn.init_cache(batch_size, max_len, dtype, keys_transposed=keys_transposed)

  def decode(self, x: jax.Array, cache: dict[str, Any], index: jax.Array,
             valid: jax.Array | None = None) -> tuple[jax.Array, dict[str, Any]]:
    h, cache = self.attn.decode(self.attn_norm(x), cache, index, valid)
    x = x + h
    return x + self.mlp(self.mlp_norm(x)), cache
