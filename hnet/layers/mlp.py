"""SwiGLU feed-forward."""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from hnet.layers import linear
from hnet.layers.linear import DEFAULT_STD, Dense
from hnet.sharding import shard


class SwiGLU(nnx.Module):
  def __init__(self, dim: int, hidden_dim: int, *, rngs: nnx.Rngs, out_std: float = DEFAULT_STD,
               dtype=jnp.float32, activation=jax.nn.silu):
    self.gate = Dense(dim, hidden_dim, rngs=rngs, axes=("embed", "mlp"), dtype=dtype)
    self.up = Dense(dim, hidden_dim, rngs=rngs, axes=("embed", "mlp"), dtype=dtype)
    self.down = Dense(hidden_dim, dim, rngs=rngs, axes=("mlp", "embed"), std=out_std, dtype=dtype)
    self.activation = activation

  def __call__(self, x: jax.Array) -> jax.Array:  # [B, L, D] -> [B, L, D]
    gate, up = linear.project_together(x, (self.gate, self.up))  # [B, L, F] each
    h = self.activation(gate) * up
    h = shard(h, ("batch", "length", "act_mlp"))
    return self.down(h)
