"""Pallas routing kernel: fused norms, dot and clamp across D per (batch, L-block).

Forward and backward are both Pallas kernels (custom_vjp). L is padded to a multiple of
the L-block and D to a power of two (zeros change neither dots nor norms), so the same
kernels lower on Triton (power-of-two blocks) and Mosaic TPU, and run in interpret
mode on CPU. Per-position values are [B, L, 1] columns (see hnet/kernels/backend.py).
"""

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from hnet.kernels.backend import compiler_params
from hnet.kernels.padding import next_pow2, pad_to

from hnet.kernels.routing.reference import COSINE_EPS


def _cosine_parts(q, k):
  """q, k: [bl, D] float32 -> (cosine, inv_q, inv_k, q_big, k_big), each [bl, 1]."""
  dot = jnp.sum(q * k, axis=-1, keepdims=True)
  q_sq = jnp.sum(q * q, axis=-1, keepdims=True)
  k_sq = jnp.sum(k * k, axis=-1, keepdims=True)
  eps_sq = COSINE_EPS * COSINE_EPS
  inv_q = jax.lax.rsqrt(jnp.maximum(q_sq, eps_sq))
  inv_k = jax.lax.rsqrt(jnp.maximum(k_sq, eps_sq))
  cosine = dot * inv_q * inv_k
  return cosine, inv_q, inv_k, q_sq > eps_sq, k_sq > eps_sq


def _forward_kernel(q_ref, k_ref, start_ref, prob_ref):
  q = q_ref[...].astype(jnp.float32)  # [bl, D]
  k = k_ref[...].astype(jnp.float32)  # [bl, D]
  cosine = _cosine_parts(q, k)[0]  # [bl, 1]
  prob = jnp.clip((1.0 - cosine) * 0.5, 0.0, 1.0)
  prob_ref[...] = jnp.where(start_ref[...] != 0, 1.0, prob)  # [bl, 1]


def _backward_kernel(q_ref, k_ref, start_ref, grad_prob_ref, grad_q_ref, grad_k_ref):
  q = q_ref[...].astype(jnp.float32)  # [bl, D]
  k = k_ref[...].astype(jnp.float32)  # [bl, D]
  cosine, inv_q, inv_k, q_big, k_big = _cosine_parts(q, k)
  raw = (1.0 - cosine) * 0.5  # [bl, 1]
  passes = (raw >= 0.0) & (raw <= 1.0) & (start_ref[...] == 0)  # [bl, 1]
  grad_cos = jnp.where(passes, -0.5 * grad_prob_ref[...], 0.0)  # [bl, 1]
  # d cos / d q = k / (|q||k|) - cos q / |q|^2 (norm term only where |q| > eps).
  grad_q = k * (inv_q * inv_k) - jnp.where(q_big, cosine * inv_q * inv_q, 0.0) * q
  grad_k = q * (inv_q * inv_k) - jnp.where(k_big, cosine * inv_k * inv_k, 0.0) * k
  grad_q_ref[...] = (grad_cos * grad_q).astype(grad_q_ref.dtype)
  grad_k_ref[...] = (grad_cos * grad_k).astype(grad_k_ref.dtype)


def _specs(block_l: int, dim: int):
  """Rows [B, L, D] and per-byte columns [B, L, 1]: the columns match the kernels'
  [bl, 1] reductions and meet Mosaic TPU's tiling (a block's last dim whole)."""
  row = pl.BlockSpec((None, block_l, dim), lambda b, i: (b, i, 0))
  column = pl.BlockSpec((None, block_l, 1), lambda b, i: (b, i, 0))
  return row, column


def _pad_inputs(q, k, segment_start, block_l):
  length, dim = q.shape[1], q.shape[2]
  padded_len = pl.cdiv(length, block_l) * block_l
  padded_dim = next_pow2(dim)
  q = pad_to(pad_to(q, 1, padded_len), 2, padded_dim)
  k = pad_to(pad_to(k, 1, padded_len), 2, padded_dim)
  start = pad_to(segment_start.astype(jnp.int32), 1, padded_len, 1)[..., None]
  return q, k, start  # start [B, Lp, 1]


def _forward(q, k, segment_start, block_l, interpret):
  batch, length, _ = q.shape
  q_p, k_p, start = _pad_inputs(q, k, segment_start, block_l)
  row, column = _specs(block_l, q_p.shape[2])
  prob = pl.pallas_call(
      _forward_kernel,
      out_shape=jax.ShapeDtypeStruct(start.shape, jnp.float32),
      grid=(batch, start.shape[1] // block_l),
      in_specs=[row, row, column],
      out_specs=column,
      interpret=interpret,
      compiler_params=compiler_params(),
      name="hnet_routing_fwd",
  )(q_p, k_p, start)
  return prob[:, :length, 0]  # [B, L]


def _backward(q, k, segment_start, grad_prob, block_l, interpret):
  batch, length, dim = q.shape
  q_p, k_p, start = _pad_inputs(q, k, segment_start, block_l)
  grad_p = pad_to(grad_prob.astype(jnp.float32), 1, start.shape[1])[..., None]
  row, column = _specs(block_l, q_p.shape[2])
  grad_q, grad_k = pl.pallas_call(
      _backward_kernel,
      out_shape=(jax.ShapeDtypeStruct(q_p.shape, q.dtype),
                 jax.ShapeDtypeStruct(k_p.shape, k.dtype)),
      grid=(batch, start.shape[1] // block_l),
      in_specs=[row, row, column, column],
      out_specs=(row, row),
      interpret=interpret,
      compiler_params=compiler_params(),
      name="hnet_routing_bwd",
  )(q_p, k_p, start, grad_p)
  return grad_q[:, :length, :dim], grad_k[:, :length, :dim]


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _boundary_prob(q, k, segment_start, block_l, interpret):
  return _forward(q, k, segment_start, block_l, interpret)


def _boundary_prob_fwd(q, k, segment_start, block_l, interpret):
  return _forward(q, k, segment_start, block_l, interpret), (q, k, segment_start)


def _boundary_prob_bwd(block_l, interpret, residuals, grad_prob):
  q, k, segment_start = residuals
  grad_q, grad_k = _backward(q, k, segment_start, grad_prob, block_l, interpret)
  return grad_q, grad_k, None


_boundary_prob.defvjp(_boundary_prob_fwd, _boundary_prob_bwd)


def boundary_probs_pallas(
    q: jax.Array,
    k: jax.Array,
    segment_start: jax.Array,
    *,
    block_l: int = 32,
    interpret: bool = False,
) -> tuple[jax.Array, jax.Array]:
  """Same contract as `boundary_probs_reference`; block_l must be a power of two."""
  boundary_prob = _boundary_prob(q, k, segment_start, block_l, interpret)
  return boundary_prob, boundary_prob > 0.5
