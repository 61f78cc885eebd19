"""Dechunking: EMA smoothing over the processed chunks, then upsampling to bytes.

    out = dechunk(z, chunk_prob, chunk_reset, chunk_index_of_byte,
                  implementation="jnp" | "pallas", interpret=False)

Shapes:
  z                    [B, C, D]  main-network output on the chunks (any float dtype)
  chunk_prob           [B, C]     boundary_prob of each kept byte (Chunked.extras);
                                  clamped here to [1e-4, 1 - 1e-4]; gradients flow
  chunk_reset          [B, C]     bool, chunk starts a new document (gather
                                  segment_start through `chunk`): the EMA forgets
                                  everything before it
  chunk_index_of_byte  [B, L]     int32 from `chunk`: the chunk byte t reads, -1 =
                                  none (the output is 0 there); its other entries
                                  must be non-decreasing (as `chunk` makes them)
  out                  [B, L, D]  z.dtype: z_bar[b, chunk_index_of_byte[b, t]], with
                                  z_bar_k = P_k z_k + (1 - P_k) z_bar_{k-1} (float32,
                                  z_bar_{-1} = 0, and 0 before a reset)

Empty chunk slots need no mask: no byte reads them. The confidence STE and the
residual of H-Net are the caller's (they are elementwise on [B, L]).
Gradients flow into z and chunk_prob.
"""

import jax

from hnet.kernels.dechunk.pallas import dechunk_pallas
from hnet.kernels.dechunk.reference import clamp_chunk_prob, dechunk_reference


def dechunk(
    z: jax.Array,
    chunk_prob: jax.Array,
    chunk_reset: jax.Array,
    chunk_index_of_byte: jax.Array,
    *,
    implementation: str = "jnp",
    interpret: bool = False,
    block_d: int = 128,
) -> jax.Array:
  """Returns out [B, L, D]; see the module docstring."""
  if implementation == "jnp":
    return dechunk_reference(z, chunk_prob, chunk_reset, chunk_index_of_byte)
  if implementation == "pallas":
    return dechunk_pallas(z, clamp_chunk_prob(chunk_prob), chunk_reset,
                          chunk_index_of_byte, block_d=block_d, interpret=interpret)
  raise ValueError(f"unknown implementation {implementation!r}")
