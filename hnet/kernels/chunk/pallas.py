"""Pallas chunk gather: rows of x picked by an index, as blocked one-hot matmuls.

`gather_rows_pallas(x, index)`: out[b, i] = x[b, index[b, i]] (zeros where index < 0).
Both the chunk gather (index = byte position of each chunk) and the dechunk upsample
(index = chunk of each byte) are this op, and its backward is a scatter-add,
grad_x[b, j] = sum_i [index[b, i] == j] grad_out[b, i], the same kernel with the keys
swapped. The kernel computes

    out[b, i, :] = sum_j [row_key[b, i] == col_key[b, j]] x[b, j, :]

per (batch, row block, D block) with a loop over column blocks; the valid (>= 0) keys
are non-decreasing in both sequences, so a column block whose key range misses the row
block's range is skipped: the work is about (M + N) / block * block^2 * D, not M N D.
The one-hot matrix is exact in any dtype and the dot accumulates in float32 at full
precision, so the gather is exact.
"""

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from hnet.kernels.backend import compiler_params
from hnet.kernels.padding import next_pow2, pad_to

_ROW_PAD = -1   # key of padded / empty rows
_COL_PAD = -2   # key of padded / empty columns: never equals a row key
_BIG = 2**30


def _key_range(keys):
  """keys int32 (any shape) -> (min, max) over valid (>= 0) keys; (BIG, -1) if none."""
  valid = keys >= 0
  return (jnp.min(jnp.where(valid, keys, _BIG)), jnp.max(jnp.where(valid, keys, -1)))


def _match_matmul_kernel(row_key_ref, col_key_ref, x_ref, out_ref, *, block_n: int):
  row_key = row_key_ref[...]  # [bm, 1]
  row_lo, row_hi = _key_range(row_key)
  num_col_blocks = x_ref.shape[0] // block_n

  def body(j, acc):
    cols = pl.ds(pl.multiple_of(j * block_n, block_n), block_n)
    col_key = col_key_ref[:, cols]  # [1, bn]
    col_lo, col_hi = _key_range(col_key)
    overlap = jnp.maximum(row_lo, col_lo) <= jnp.minimum(row_hi, col_hi)

    def accumulate(acc):
      x = x_ref[cols, :]  # [bn, bd]
      one_hot = (row_key == col_key).astype(x.dtype)  # [bm, bn]
      # HIGHEST keeps float32 rows exact; bfloat16 rows are exact at the default (a
      # one-hot product accumulated in float32), and Mosaic TPU rejects HIGHEST for them.
      precision = jax.lax.Precision.HIGHEST if x.dtype == jnp.float32 else None
      return acc + jnp.dot(one_hot, x, preferred_element_type=jnp.float32, precision=precision)

    return jax.lax.cond(overlap, accumulate, lambda acc: acc, acc)

  acc = jnp.zeros(out_ref.shape, jnp.float32)
  acc = jax.lax.fori_loop(0, num_col_blocks, body, acc)
  out_ref[...] = acc.astype(out_ref.dtype)


def match_matmul(x, row_key, col_key, *, block_m=64, block_n=128, block_d=128,
                 out_dtype=None, interpret=False):
  """x [B, N, D], row_key [B, M], col_key [B, N] int32 -> [B, M, D] in out_dtype
  (default x.dtype).

  out[b, i] = sum_j [row_key[b, i] == col_key[b, j] >= 0] x[b, j]; valid keys must be
  non-decreasing along each row (negative keys may sit anywhere). block_n is a multiple
  of 128: the column keys are sliced along lanes at j * block_n, which Mosaic TPU can
  prove aligned only then (64 failed to compile for a TPU topology).
  """
  batch, num_cols, dim = x.shape
  num_rows = row_key.shape[1]
  block_d = min(block_d, next_pow2(dim))
  rows_p = pl.cdiv(num_rows, block_m) * block_m
  cols_p = pl.cdiv(num_cols, block_n) * block_n
  dim_p = pl.cdiv(dim, block_d) * block_d
  x_p = pad_to(pad_to(x, 1, cols_p), 2, dim_p)
  # Row keys as columns [B, Mp, 1] and column keys as rows [B, 1, Np]: the one-hot block
  # is their broadcast compare, and both meet Mosaic TPU's tiling (last dims whole).
  row_key = pad_to(jnp.where(row_key >= 0, row_key, _ROW_PAD).astype(jnp.int32),
                    1, rows_p, _ROW_PAD)[:, :, None]
  col_key = pad_to(jnp.where(col_key >= 0, col_key, _COL_PAD).astype(jnp.int32),
                    1, cols_p, _COL_PAD)[:, None, :]
  out = pl.pallas_call(
      functools.partial(_match_matmul_kernel, block_n=block_n),
      out_shape=jax.ShapeDtypeStruct((batch, rows_p, dim_p), out_dtype or x.dtype),
      grid=(batch, rows_p // block_m, dim_p // block_d),
      in_specs=[
          pl.BlockSpec((None, block_m, 1), lambda b, i, d: (b, i, 0)),
          pl.BlockSpec((None, 1, cols_p), lambda b, i, d: (b, 0, 0)),
          pl.BlockSpec((None, cols_p, block_d), lambda b, i, d: (b, 0, d)),
      ],
      out_specs=pl.BlockSpec((None, block_m, block_d), lambda b, i, d: (b, i, d)),
      interpret=interpret,
      compiler_params=compiler_params(),
      name="hnet_match_matmul",
  )(row_key, col_key, x_p)
  return out[:, :num_rows, :dim]


def _arange_keys(batch: int, n: int) -> jax.Array:
  return jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32), (batch, n))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def gather_rows_pallas(x: jax.Array, index: jax.Array, interpret: bool = False,
                       out_dtype=None):
  """x [B, N, D], index [B, M] int32 (valid entries non-decreasing, -1 = empty)
  -> [B, M, D] = x[b, index[b, i]] cast to out_dtype (default x.dtype), zeros where
  empty. Backward: a scatter-add accumulated in float32, returned in x.dtype."""
  return match_matmul(x, index, _arange_keys(x.shape[0], x.shape[1]),
                      out_dtype=out_dtype, interpret=interpret)


def _gather_fwd(x, index, interpret, out_dtype):
  out = gather_rows_pallas(x, index, interpret, out_dtype)
  x_like = jnp.zeros((0, x.shape[1]), x.dtype)  # carries x's row count and dtype
  return out, (index, x_like)


def _gather_bwd(interpret, out_dtype, residuals, grad_out):
  del out_dtype
  index, x_like = residuals
  grad_x = match_matmul(grad_out, _arange_keys(index.shape[0], x_like.shape[1]), index,
                        out_dtype=x_like.dtype, interpret=interpret)
  return grad_x, None


gather_rows_pallas.defvjp(_gather_fwd, _gather_bwd)
