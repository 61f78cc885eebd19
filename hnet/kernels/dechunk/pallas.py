"""Pallas dechunk: a sequential-in-C EMA scan kernel blocked over (batch, D), its
reverse-time backward kernel, and the upsample as the chunk package's gather kernel.

Forward  y_k = a_k y_{k-1} + P_k z_k,  a_k = (1 - P_k) keep_k.
Backward (g = dL/dy): gy_k = g_k + a_{k+1} gy_{k+1} (a reverse-time recurrence),
         dz_k = P_k gy_k,  dP_k = sum_D gy_k (z_k - keep_k y_{k-1}).
dP is summed over D blocks outside the kernel ([B, D/bd, C, 1] partial sums).
The scans read and write one row per step at a dynamic index; rows are float32 in the
kernels (z is widened before, dz narrowed after), since Mosaic TPU cannot prove such an
access aligned in a packed bfloat16 tile (found by compiling for a TPU topology,
hnet/kernel_aot.py).
"""

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from hnet.kernels.backend import compiler_params
from hnet.kernels.padding import next_pow2

from hnet.kernels.chunk.pallas import gather_rows_pallas


def _scan_forward_kernel(prob_ref, keep_ref, z_ref, z_bar_ref):
  num_chunks, block_d = z_ref.shape

  def body(k, y):  # y [1, bd] float32
    step = pl.ds(k, 1)
    prob = prob_ref[step, :]  # [1, 1]
    decay = (1.0 - prob) * keep_ref[step, :]
    y = decay * y + prob * z_ref[step, :].astype(jnp.float32)
    z_bar_ref[step, :] = y
    return y

  jax.lax.fori_loop(0, num_chunks, body, jnp.zeros((1, block_d), jnp.float32))


def _scan_backward_kernel(prob_ref, keep_ref, z_ref, z_bar_ref, grad_ref,
                          grad_z_ref, grad_prob_ref):
  num_chunks, block_d = z_ref.shape

  def body(i, carry):  # carry = a_{k+1} gy_{k+1}, [1, bd] float32
    k = num_chunks - 1 - i
    step = pl.ds(k, 1)
    prob = prob_ref[step, :]  # [1, 1]
    keep = keep_ref[step, :]
    grad_y = grad_ref[step, :] + carry  # [1, bd]
    grad_z_ref[step, :] = prob * grad_y
    has_previous = (k > 0).astype(jnp.float32)
    y_previous = z_bar_ref[pl.ds(jnp.maximum(k - 1, 0), 1), :] * has_previous
    z = z_ref[step, :].astype(jnp.float32)
    grad_prob_ref[step, :] = jnp.sum(grad_y * (z - keep * y_previous), axis=1, keepdims=True)
    return (1.0 - prob) * keep * grad_y

  jax.lax.fori_loop(0, num_chunks, body, jnp.zeros((1, block_d), jnp.float32))


def _scan_call(kernel, inputs, outputs, block_d, interpret, name):
  """inputs: (prob [B, C, 1], keep [B, C, 1], rows [B, C, Dp] ...); outputs: pairs of
  a ShapeDtypeStruct and its kind, "rows" ([B, C, Dp], blocked along Dp) or "per_block"
  ([B, Dp // block_d, C, 1], one column per D-block). The kind is stated, not inferred
  from the shape: C may equal Dp. Per-chunk values are [C, 1] columns in the kernels
  (whole last dims, as Mosaic TPU's tiling wants)."""
  batch, num_chunks, dim_p = inputs[2].shape
  column = pl.BlockSpec((None, num_chunks, 1), lambda b, d: (b, 0, 0))
  specs = {"rows": pl.BlockSpec((None, num_chunks, block_d), lambda b, d: (b, 0, d)),
           "per_block": pl.BlockSpec((None, None, num_chunks, 1), lambda b, d: (b, d, 0, 0))}
  return pl.pallas_call(
      kernel, out_shape=tuple(shape for shape, _ in outputs), grid=(batch, dim_p // block_d),
      in_specs=[column, column] + [specs["rows"]] * (len(inputs) - 2),
      out_specs=tuple(specs[kind] for _, kind in outputs), interpret=interpret, name=name,
      compiler_params=compiler_params())(*inputs)


def _pad_dim(x, dim_p):
  return jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, dim_p - x.shape[-1])])


def _block_and_padded_dim(dim, block_d):
  block_d = min(block_d, next_pow2(dim))
  return block_d, pl.cdiv(dim, block_d) * block_d


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def ema_scan_pallas(z, chunk_prob, chunk_reset, block_d=128, interpret=False):
  """z [B, C, D], chunk_prob [B, C] (clamped), chunk_reset [B, C] bool
  -> z_bar [B, C, D] float32."""
  return _ema_forward(z, chunk_prob, chunk_reset, block_d, interpret)


def _prob_and_keep(chunk_prob, chunk_reset):
  """[B, C] chunk_prob and chunk_reset -> the kernels' float32 columns, each [B, C, 1]."""
  keep = 1.0 - chunk_reset.astype(jnp.float32)
  return chunk_prob.astype(jnp.float32)[..., None], keep[..., None]


def _ema_forward(z, chunk_prob, chunk_reset, block_d, interpret):
  batch, num_chunks, dim = z.shape
  block_d, dim_p = _block_and_padded_dim(dim, block_d)
  rows = _pad_dim(z.astype(jnp.float32), dim_p)  # [B, C, Dp]
  (z_bar,) = _scan_call(
      _scan_forward_kernel, (*_prob_and_keep(chunk_prob, chunk_reset), rows),
      ((jax.ShapeDtypeStruct((batch, num_chunks, dim_p), jnp.float32), "rows"),),
      block_d, interpret, "hnet_ema_scan_fwd")
  return z_bar[..., :dim]


def _ema_fwd(z, chunk_prob, chunk_reset, block_d, interpret):
  z_bar = _ema_forward(z, chunk_prob, chunk_reset, block_d, interpret)
  return z_bar, (z, chunk_prob, chunk_reset, z_bar)


def _ema_bwd(block_d, interpret, residuals, grad_z_bar):
  z, chunk_prob, chunk_reset, z_bar = residuals
  batch, num_chunks, dim = z.shape
  block_d, dim_p = _block_and_padded_dim(dim, block_d)
  grad_z, grad_prob_partial = _scan_call(
      _scan_backward_kernel,
      (*_prob_and_keep(chunk_prob, chunk_reset), _pad_dim(z.astype(jnp.float32), dim_p),
       _pad_dim(z_bar, dim_p), _pad_dim(grad_z_bar.astype(jnp.float32), dim_p)),
      ((jax.ShapeDtypeStruct((batch, num_chunks, dim_p), jnp.float32), "rows"),
       (jax.ShapeDtypeStruct((batch, dim_p // block_d, num_chunks, 1), jnp.float32), "per_block")),
      block_d, interpret, "hnet_ema_scan_bwd")
  grad_prob = jnp.sum(grad_prob_partial[..., 0], axis=1).astype(chunk_prob.dtype)  # [B, C]
  return grad_z[..., :dim].astype(z.dtype), grad_prob, None


ema_scan_pallas.defvjp(_ema_fwd, _ema_bwd)


def dechunk_pallas(z, chunk_prob, chunk_reset, chunk_index_of_byte, *, block_d=128,
                   interpret=False):
  """Same contract as `dechunk_reference`; chunk_prob must already be clamped."""
  z_bar = ema_scan_pallas(z, chunk_prob, chunk_reset, block_d, interpret)  # [B, C, D]
  # Gather from the float32 z_bar, write z.dtype: the backward scatter-add then sums
  # the byte gradients in float32.
  return gather_rows_pallas(z_bar, chunk_index_of_byte, interpret, z.dtype)
