"""Plain jnp reference of H-Net dechunking: EMA smoothing over chunks, then upsampling.

    z_bar_k = P_k z_k + (1 - P_k) keep_k z_bar_{k-1},  z_bar_{-1} = 0,
    keep_k = 0 at chunks that start a new document (reset), else 1,
    out_t = z_bar[chunk_index_of_byte_t]  (0 where chunk_index_of_byte_t = -1).

The recurrence y_k = a_k y_{k-1} + x_k (a = (1 - P) keep, x = P z) is computed in
float32 as a blocked scan: a small matmul of decay products inside each block of
SCAN_BLOCK chunks, an associative scan over (a, x) pairs across blocks. Its backward
is written out (custom_vjp): the same scan run backwards in time, as in the Pallas
kernel, rather than autodiff through the scan's structure.
"""

import functools

import jax
import jax.numpy as jnp

from hnet.kernels.chunk.reference import scatter_add_rows, take_rows


PROB_CLAMP = 1e-4  # P is clamped to [1e-4, 1 - 1e-4] before the EMA (as in H-Net)


def clamp_chunk_prob(chunk_prob: jax.Array) -> jax.Array:
  return jnp.clip(chunk_prob.astype(jnp.float32), PROB_CLAMP, 1.0 - PROB_CLAMP)


def _combine(earlier, later):
  decay_1, value_1 = earlier
  decay_2, value_2 = later
  return decay_1 * decay_2, decay_2 * value_1 + value_2


SCAN_BLOCK = 16  # chunks per block of the blocked linear scan


def _linear_scan(decay: jax.Array, value: jax.Array, reverse: bool = False,
                 block: int = SCAN_BLOCK) -> jax.Array:
  """y_k = decay_k y_{k-1} + value_k along axis 1 (reverse: y_k = decay_k y_{k+1} +
  value_k), y = 0 outside; decay [B, C, 1], value [B, C, D] float32.

  Blocked: within each block of T chunks, y = transfer @ value with the [T, T]
  matrix of decay products (a batched matmul); between blocks, an associative scan
  over the block-boundary states ([B, C / T, D]); then each block adds its incoming
  state times the decay product up to each position.
  """
  batch, length, dim = value.shape
  block = min(block, length)
  padded = -(-length // block) * block
  if padded != length:  # zero values after the end: no effect on either direction
    pad = ((0, 0), (0, padded - length), (0, 0))
    decay, value = jnp.pad(decay, pad), jnp.pad(value, pad)
  num_blocks = padded // block
  a = decay[..., 0].reshape(batch, num_blocks, block)  # [B, N, T]
  x = value.reshape(batch, num_blocks, block, dim)  # [B, N, T, D]
  i = jnp.arange(block)
  row, col = i[:, None], i[None, :]
  if not reverse:  # transfer[i, j] = prod_{j < m <= i} a_m for j <= i, else 0
    factors = jnp.where(row > col, a[..., :, None], 1.0)  # [B, N, T(m), T(j)]
    transfer = jnp.where(row >= col, jax.lax.cumprod(factors, axis=2), 0.0)
    incoming_weight = transfer[..., :, 0] * a[..., :1]  # prod_{m <= i} a_m, [B, N, T]
    boundary = block - 1  # the position whose state the next block receives
  else:  # transfer[i, j] = prod_{i <= m < j} a_m for j >= i, else 0
    factors = jnp.where(row < col, a[..., :, None], 1.0)
    transfer = jnp.where(row <= col,
                         jax.lax.cumprod(factors, axis=2, reverse=True), 0.0)
    incoming_weight = transfer[..., :, -1] * a[..., -1:]  # prod_{m >= i} a_m
    boundary = 0
  local = jnp.einsum("bnij,bnjd->bnid", transfer, x,
                     precision=jax.lax.Precision.HIGHEST)  # [B, N, T, D]
  # Full state at each block's boundary position (a scan across blocks), then moved
  # one block on: the state entering block n (zero for the first block in time).
  boundary_state = jax.lax.associative_scan(
      _combine, (incoming_weight[..., boundary, None], local[:, :, boundary]), axis=1,
      reverse=reverse)[1]  # [B, N, D]
  if reverse:
    incoming = jnp.pad(boundary_state[:, 1:], ((0, 0), (0, 1), (0, 0)))  # [B, N, D]
  else:
    incoming = jnp.pad(boundary_state[:, :-1], ((0, 0), (1, 0), (0, 0)))
  y = local + incoming_weight[..., None] * incoming[:, :, None, :]  # [B, N, T, D]
  return y.reshape(batch, padded, dim)[:, :length]


def _decay(chunk_prob: jax.Array, chunk_reset: jax.Array) -> jax.Array:
  """a_k = (1 - P_k) keep_k, [B, C, 1] float32."""
  keep = 1.0 - chunk_reset.astype(jnp.float32)[..., None]  # [B, C, 1]
  return (1.0 - chunk_prob.astype(jnp.float32)[..., None]) * keep


@jax.custom_vjp
def ema_scan_reference(
    z: jax.Array, chunk_prob: jax.Array, chunk_reset: jax.Array
) -> jax.Array:
  """z [B, C, D], chunk_prob [B, C] (already clamped), chunk_reset [B, C] bool
  -> z_bar [B, C, D] float32.

  Backward (g = dL/dz_bar): gy_k = g_k + a_{k+1} gy_{k+1}, a reverse-time scan;
  dz_k = P_k gy_k, dP_k = sum_D gy_k (z_k - keep_k z_bar_{k-1}); no gradient to the
  reset flags.
  """
  prob = chunk_prob.astype(jnp.float32)[..., None]  # [B, C, 1]
  return _linear_scan(_decay(chunk_prob, chunk_reset), prob * z.astype(jnp.float32))


def _ema_fwd(z, chunk_prob, chunk_reset):
  z_bar = ema_scan_reference(z, chunk_prob, chunk_reset)
  return z_bar, (z, chunk_prob, chunk_reset, z_bar)


def _ema_bwd(residuals, grad_z_bar):
  z, chunk_prob, chunk_reset, z_bar = residuals
  prob = chunk_prob.astype(jnp.float32)[..., None]  # [B, C, 1]
  keep = 1.0 - chunk_reset.astype(jnp.float32)[..., None]  # [B, C, 1]
  decay = _decay(chunk_prob, chunk_reset)  # [B, C, 1]
  # a_{k+1}: the decay that carries y_k into y_{k+1}; nothing follows the last chunk.
  decay_next = jnp.pad(decay[:, 1:], ((0, 0), (0, 1), (0, 0)))  # [B, C, 1]
  grad_y = _linear_scan(decay_next, grad_z_bar.astype(jnp.float32), reverse=True)
  z_bar_previous = jnp.pad(z_bar[:, :-1], ((0, 0), (1, 0), (0, 0)))  # [B, C, D]
  grad_prob = jnp.sum(grad_y * (z.astype(jnp.float32) - keep * z_bar_previous), axis=-1)
  grad_z = (prob * grad_y).astype(z.dtype)
  return grad_z, grad_prob.astype(chunk_prob.dtype), None


ema_scan_reference.defvjp(_ema_fwd, _ema_bwd)


def upsample_reference(z_bar: jax.Array, chunk_index_of_byte: jax.Array) -> jax.Array:
  """z_bar [B, C, D], chunk_index_of_byte [B, L] (valid entries non-decreasing, -1 =
  reads nothing) -> [B, L, D], zeros where -1.

  The backward is a sorted scatter-add of the byte gradients onto the chunks. A -1 is
  indexed as the running maximum of the row's entries (so the indices stay sorted and
  in bounds) and masked out, forward and backward.
  """
  num_chunks = z_bar.shape[1]
  reads = chunk_index_of_byte >= 0  # [B, L]
  safe = jnp.clip(jax.lax.cummax(chunk_index_of_byte, axis=1), 0, num_chunks - 1)
  return _upsample(num_chunks, z_bar, safe, reads)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _upsample(num_chunks: int, z_bar: jax.Array, index: jax.Array,
              reads: jax.Array) -> jax.Array:
  del num_chunks  # z_bar.shape[1], static for the backward
  rows = take_rows(z_bar, index, in_bounds=True)  # [B, L, D]
  return jnp.where(reads[..., None], rows, jnp.zeros((), z_bar.dtype))


def _upsample_fwd(num_chunks, z_bar, index, reads):
  return _upsample(num_chunks, z_bar, index, reads), (index, reads)


def _upsample_bwd(num_chunks, residuals, grad_out):
  index, reads = residuals  # index: sorted along each row (see upsample_reference)
  grad_out = jnp.where(reads[..., None], grad_out, jnp.zeros((), grad_out.dtype))
  grad = scatter_add_rows(grad_out, index, num_chunks, indices_are_sorted=True,
                          in_bounds=True)  # [B, C, D], grad_out's (= z_bar's) dtype
  return grad, None, None


_upsample.defvjp(_upsample_fwd, _upsample_bwd)


def dechunk_reference(
    z: jax.Array,
    chunk_prob: jax.Array,
    chunk_reset: jax.Array,
    chunk_index_of_byte: jax.Array,
) -> jax.Array:
  """z [B, C, D], chunk_prob [B, C] (clamped here), chunk_reset [B, C] bool,
  chunk_index_of_byte [B, L] int32 -> out [B, L, D] in z.dtype."""
  z_bar = ema_scan_reference(z, clamp_chunk_prob(chunk_prob), chunk_reset)  # [B, C, D]
  # Upsample the float32 z_bar, then cast: the backward scatter-add sums in float32.
  out = upsample_reference(z_bar, chunk_index_of_byte)  # [B, L, D]
  return out.astype(z.dtype)
