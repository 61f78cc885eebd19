"""Dense and embedding layers whose parameters carry logical axis names."""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

DEFAULT_STD = 0.02


def normal_param(rngs: nnx.Rngs, shape: Sequence[int], axes: Sequence[str | None],
                 std: float = DEFAULT_STD) -> nnx.Param:
  return nnx.Param(std * jax.random.normal(rngs.params(), tuple(shape), jnp.float32),
                   axes=tuple(axes))


class Dense(nnx.Module):
  """y = x @ W (+ b). W: [in, out], annotated with `axes` = (in_axis, out_axis)."""

  def __init__(self, in_dim: int, out_dim: int, *, rngs: nnx.Rngs,
               axes: tuple[str | None, str | None] = ("embed", "mlp"),
               std: float = DEFAULT_STD, use_bias: bool = False, zero_init: bool = False,
               dtype=jnp.float32):
    if zero_init:
      self.kernel = nnx.Param(jnp.zeros((in_dim, out_dim), jnp.float32), axes=axes)
    else:
      self.kernel = normal_param(rngs, (in_dim, out_dim), axes, std)
    self.bias = nnx.Param(jnp.zeros((out_dim,), jnp.float32), axes=(axes[1],)) if use_bias else None
    self.dtype = dtype

  def __call__(self, x: jax.Array) -> jax.Array:
    y = jnp.einsum("...i,io->...o", x.astype(self.dtype), self.kernel[...].astype(self.dtype))
    if self.bias is not None:
      y = y + self.bias[...].astype(self.dtype)
    return y


class Embed(nnx.Module):
  """Token embedding table [vocab, dim]; `attend` gives tied-output logits."""

  def __init__(self, vocab_size: int, dim: int, *, rngs: nnx.Rngs, std: float = DEFAULT_STD,
               dtype=jnp.float32):
    self.embedding = normal_param(rngs, (vocab_size, dim), ("vocab", "embed"), std)
    self.dtype = dtype

  def __call__(self, ids: jax.Array) -> jax.Array:
    return jnp.take(self.embedding[...], ids, axis=0).astype(self.dtype)

  def attend(self, x: jax.Array) -> jax.Array:
    return jnp.einsum("...d,vd->...v", x.astype(self.dtype), self.embedding[...].astype(self.dtype))
