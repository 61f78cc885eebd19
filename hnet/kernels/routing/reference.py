"""Plain jnp reference of H-Net routing: boundary probabilities from cosine similarity.

p_t = clamp((1 - cos(q_t, k_t)) / 2, 0, 1), forced to 1 where `segment_start` is true;
boundary b_t = p_t > 0.5. Computed in float32 whatever the input dtype.
"""

import jax
import jax.numpy as jnp

# Norms are floored at this value (as torch.nn.functional.cosine_similarity does):
# cos = q.k / (max(|q|, eps) * max(|k|, eps)). Written as sqrt(max(|q|^2, eps^2)) so
# that the gradient of a zero vector is 0, not NaN.
COSINE_EPS = 1e-8


def boundary_probs_reference(
    q: jax.Array, k: jax.Array, segment_start: jax.Array
) -> tuple[jax.Array, jax.Array]:
  """q, k: [B, L, D] (any float dtype); segment_start: [B, L] bool.

  Returns (boundary_prob [B, L] float32, boundary_mask [B, L] bool).
  """
  q32 = q.astype(jnp.float32)  # [B, L, D]
  k32 = k.astype(jnp.float32)  # [B, L, D]
  dot = jnp.sum(q32 * k32, axis=-1)  # [B, L]
  q_norm = jnp.sqrt(jnp.maximum(jnp.sum(q32 * q32, axis=-1), COSINE_EPS**2))
  k_norm = jnp.sqrt(jnp.maximum(jnp.sum(k32 * k32, axis=-1), COSINE_EPS**2))
  cosine = dot / (q_norm * k_norm)  # [B, L]
  boundary_prob = jnp.clip((1.0 - cosine) * 0.5, 0.0, 1.0)
  boundary_prob = jnp.where(segment_start, 1.0, boundary_prob)
  return boundary_prob, boundary_prob > 0.5
