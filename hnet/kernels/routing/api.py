"""Routing: boundary probabilities of H-Net dynamic chunking.

    boundary_prob, boundary_mask = boundary_probs(
        q, k, segment_start, implementation="jnp" | "pallas", interpret=False)

Shapes:
  q              [B, L, D]  W_q h_{t-1}, already shifted by the caller so that q[:, t]
                            pairs with k[:, t] (any float dtype; computed in float32)
  k              [B, L, D]  W_k h_t
  segment_start  [B, L]     bool: first byte of each document in a packed row, and
                            position 0 (there the probability is forced to 1)
  boundary_prob  [B, L]     float32, p_t = clamp((1 - cos(q_t, k_t)) / 2, 0, 1)
  boundary_mask  [B, L]     bool, p_t > 0.5

Gradients flow from boundary_prob into q and k (zero at segment starts and where the
clamp is active); boundary_mask carries none. cos uses norms floored at 1e-8.
"""

import jax

from hnet.kernels.routing.pallas import boundary_probs_pallas
from hnet.kernels.routing.reference import boundary_probs_reference


def boundary_probs(
    q: jax.Array,
    k: jax.Array,
    segment_start: jax.Array,
    *,
    implementation: str = "jnp",
    interpret: bool = False,
    block_l: int = 32,
) -> tuple[jax.Array, jax.Array]:
  """Returns (boundary_prob [B, L] float32, boundary_mask [B, L] bool); see module doc."""
  if implementation == "jnp":
    return boundary_probs_reference(q, k, segment_start)
  if implementation == "pallas":
    return boundary_probs_pallas(
        q, k, segment_start, block_l=block_l, interpret=interpret)
  raise ValueError(f"unknown implementation {implementation!r}")
