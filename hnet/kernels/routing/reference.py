"""Plain jnp reference of H-Net routing: boundary probabilities from cosine similarity.

p_t = clamp((1 - cos(q_t, k_t)) / 2, 0, 1), forced to 1 where `segment_start` is true;
boundary b_t = p_t > 0.5. Computed in float32 whatever the input dtype.

The backward is written out (custom_vjp, the same formula as the Pallas kernel): per
row, dq = g_cos (k / (|q||k|) - cos q / |q|^2), dk likewise, with g_cos = -g_p / 2 where
the clamp passes (0 <= (1 - cos) / 2 <= 1, edges included) and the row is not a segment
start, else 0.
"""

import jax
import jax.numpy as jnp

# Norms are floored at this value (as torch.nn.functional.cosine_similarity does):
# cos = q.k / (max(|q|, eps) * max(|k|, eps)). Written as sqrt(max(|q|^2, eps^2)) so
# that the gradient of a zero vector is 0, not NaN.
COSINE_EPS = 1e-8


def _cosine(q32: jax.Array, k32: jax.Array):
  """q32, k32 [B, L, D] float32 -> (cos, |q|, |k|, |q| > eps, |k| > eps), [B, L]; the
  norms floored at eps."""
  dot = jnp.sum(q32 * k32, axis=-1)  # [B, L]
  q_sq = jnp.sum(q32 * q32, axis=-1)
  k_sq = jnp.sum(k32 * k32, axis=-1)
  eps_sq = COSINE_EPS**2
  q_norm = jnp.sqrt(jnp.maximum(q_sq, eps_sq))
  k_norm = jnp.sqrt(jnp.maximum(k_sq, eps_sq))
  cosine = dot / (q_norm * k_norm)  # [B, L]
  return cosine, q_norm, k_norm, q_sq > eps_sq, k_sq > eps_sq


def _grads(q32, k32, grad_cos, cosine, inv_q, inv_k, q_big, k_big):
  """dq = g_cos (k / (|q| |k|) - cos q / |q|^2) (the norm term only where |q| > eps),
  dk likewise: two per-row multiply-adds on [B, L, D] each."""
  cross = (grad_cos * inv_q * inv_k)[..., None]  # [B, L, 1]
  self_q = jnp.where(q_big, grad_cos * cosine * inv_q * inv_q, 0.0)[..., None]
  self_k = jnp.where(k_big, grad_cos * cosine * inv_k * inv_k, 0.0)[..., None]
  return cross * k32 - self_q * q32, cross * q32 - self_k * k32  # [B, L, D] each


def _prob_from_cosine(cosine: jax.Array, segment_start: jax.Array) -> jax.Array:
  boundary_prob = jnp.clip((1.0 - cosine) * 0.5, 0.0, 1.0)
  return jnp.where(segment_start, 1.0, boundary_prob)  # [B, L] float32


@jax.custom_vjp
def _boundary_prob(q: jax.Array, k: jax.Array, segment_start: jax.Array) -> jax.Array:
  cosine = _cosine(q.astype(jnp.float32), k.astype(jnp.float32))[0]
  return _prob_from_cosine(cosine, segment_start)


def _boundary_prob_fwd(q, k, segment_start):
  stats = _cosine(q.astype(jnp.float32), k.astype(jnp.float32))  # [B, L] each
  return _prob_from_cosine(stats[0], segment_start), (q, k, segment_start, stats)


def _boundary_prob_bwd(residuals, grad_prob):
  q, k, segment_start, (cosine, q_norm, k_norm, q_big, k_big) = residuals
  raw = (1.0 - cosine) * 0.5
  passes = (raw >= 0.0) & (raw <= 1.0) & ~segment_start
  grad_cos = jnp.where(passes, -0.5 * grad_prob, 0.0)  # [B, L]
  operands = (q.astype(jnp.float32), k.astype(jnp.float32), grad_cos, cosine,
              1.0 / q_norm, 1.0 / k_norm, q_big, k_big)

  def on_cpu(*args):
    # XLA:CPU would fuse this elementwise gradient into each of its consumers, one of
    # which is the transposed copy feeding the weight-gradient matmul: a strided
    # re-read of q and k there costs about three times a transpose of the finished
    # array.
    # A conditional is a fusion boundary, so its outputs are computed once. The other
    # branch is taken only when every g_cos is 0, where the gradients are 0 anyway
    # (for finite q, k).
    return jax.lax.cond(jnp.any(grad_cos != 0.0), _grads,
                        lambda q32, k32, *_: (jnp.zeros_like(q32), jnp.zeros_like(k32)),
                        *args)

  grad_q, grad_k = jax.lax.platform_dependent(*operands, cpu=on_cpu, default=_grads)
  return grad_q.astype(q.dtype), grad_k.astype(k.dtype), None


_boundary_prob.defvjp(_boundary_prob_fwd, _boundary_prob_bwd)


def boundary_probs_reference(
    q: jax.Array, k: jax.Array, segment_start: jax.Array
) -> tuple[jax.Array, jax.Array]:
  """q, k: [B, L, D] (any float dtype); segment_start: [B, L] bool.

  Returns (boundary_prob [B, L] float32, boundary_mask [B, L] bool).
  """
  boundary_prob = _boundary_prob(q, k, segment_start)
  return boundary_prob, boundary_prob > 0.5
