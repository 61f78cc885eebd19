"""Dense and embedding layers whose parameters carry logical axis names."""
from __future__ import annotations

import contextlib
import threading
from typing import Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from hnet.kernels import backend

DEFAULT_STD = 0.02

_UNFUSED = threading.local()  # trace-time switch of project_together (unfused_projections)


@contextlib.contextmanager
def unfused_projections() -> Iterator[None]:
  """Within it, project_together traces one matmul per layer instead of concatenating
  their kernels. For code traced into a lax.cond branch inside a decode loop: XLA hoists
  the loop-invariant concatenation out of a while loop's body, not out of a conditional's
  branch, where it runs at every step the branch is taken (the tiny HAT's backbone: eight
  [128, 384|768] concatenations, 35-120 us each, for every finished word)."""
  previous = getattr(_UNFUSED, "on", False)
  _UNFUSED.on = True
  try:
    yield
  finally:
    _UNFUSED.on = previous


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


def project_together(x: jax.Array, layers: Sequence[Dense]) -> list[jax.Array]:
  """[layer(x) for layer in layers] as one matmul over the concatenated kernels (fused
  QKV, SwiGLU gate+up): one wider GEMM instead of several narrow ones, and in the
  backward one input-gradient GEMM and one weight-gradient GEMM. Same values (each
  output column is the same dot product). A CPU optimisation: compiled for a TPU or GPU
  (`hnet.kernels.backend.target_platform`) the layers stay apart, as they do under a
  mesh whose "tensor" axis is larger than 1 (the kernels' output columns are sharded
  separately) and within unfused_projections(). On a v5p, the byte Transformer L's
  fused QKV made XLA keep a float32 [rows, heads, 8192, 8192] buffer more: one block's
  train step took 32.0 GiB per chip instead of 17.5 (tests/test_aot.py)."""
  mesh = jax.sharding.get_abstract_mesh()
  tensor_ways = 1 if mesh is None or mesh.empty else dict(mesh.shape).get("tensor", 1)
  if (len(layers) == 1 or tensor_ways > 1 or getattr(_UNFUSED, "on", False)
      or backend.target_platform() != "cpu"
      or any(l.bias is not None for l in layers)
      or len({l.dtype for l in layers}) > 1):
    return [layer(x) for layer in layers]
  dtype = layers[0].dtype
  kernel = jnp.concatenate([l.kernel[...] for l in layers], axis=1).astype(dtype)
  y = jnp.einsum("...i,io->...o", x.astype(dtype), kernel)
  bounds = np.cumsum([l.kernel.shape[1] for l in layers])[:-1].tolist()
  return jnp.split(y, bounds, axis=-1)


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
