"""Kernels of the H-Net chunk-routing core, each a jnp reference beside a Pallas version.

  routing.boundary_probs(q, k, segment_start)            -> (boundary_prob, boundary_mask)
  chunk.chunk(h, boundary_mask, segment_start, capacity, extras) -> Chunked
  dechunk.dechunk(z, chunk_prob, chunk_reset, chunk_index_of_byte) -> out [B, L, D]

Each takes `implementation="jnp" | "pallas"` and `interpret` (Pallas interpret mode, for
CPU). Shapes are documented in each op's api.py. `benchmark_routing` times the whole
routing + chunk + dechunk path against its floor (the two routing projections).
"""

import time

import jax
import jax.numpy as jnp

from hnet.kernels.chunk import chunk
from hnet.kernels.dechunk import dechunk
from hnet.kernels.routing import boundary_probs


def _routing_inputs(batch, length, dim, seed):
  key_h, key_q, key_k, key_w = jax.random.split(jax.random.PRNGKey(seed), 4)
  h = jax.random.normal(key_h, (batch, length, dim), jnp.float32)  # [B, L, D]
  # Near-identity projections (H-Net initialises W_q, W_k to the identity).
  w_q = jnp.eye(dim) + 0.02 * jax.random.normal(key_q, (dim, dim))
  w_k = jnp.eye(dim) + 0.02 * jax.random.normal(key_k, (dim, dim))
  out_weight = jax.random.normal(key_w, (batch, length, dim), jnp.float32)
  segment_start = jnp.zeros((batch, length), bool).at[:, 0].set(True)
  segment_start = segment_start.at[:, length // 2].set(True)  # two documents per row
  return h, w_q, w_k, out_weight, segment_start


def _projections(h, w_q, w_k):
  h_previous = jnp.pad(h, ((0, 0), (1, 0), (0, 0)))[:, :-1]  # [B, L, D] h_{t-1}
  return h_previous @ w_q, h @ w_k  # q, k [B, L, D]


def _time(fn, args, iters):
  jax.block_until_ready(fn(*args))  # compile + warm up
  times = []
  for _ in range(iters):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return sorted(times)[len(times) // 2]


def benchmark_routing(batch: int = 8, length: int = 2048, dim: int = 512,
                      implementation: str = "jnp", *, capacity: int | None = None,
                      interpret: bool = False, iters: int = 5, seed: int = 0) -> dict:
  """Median seconds of forward+backward of routing -> chunk -> dechunk (identity main
  network) vs its floor, the projections q = h_{t-1} W_q, k = h W_k alone (fwd+bwd).

  Returns {"path_s", "floor_s", "ratio", "mean_chunks", "mean_dropped"}; capacity
  defaults to length // 2 (random inputs give p near 0.5).
  """
  capacity = capacity or length // 2
  h, w_q, w_k, out_weight, segment_start = _routing_inputs(batch, length, dim, seed)
  impl = dict(implementation=implementation, interpret=interpret)

  def path_loss(h, w_q, w_k, out_weight, segment_start):
    q, k = _projections(h, w_q, w_k)
    boundary_prob, boundary_mask = boundary_probs(q, k, segment_start, **impl)
    chunked = chunk(h, boundary_mask, segment_start, capacity,
                    {"boundary_prob": boundary_prob, "segment_start": segment_start},
                    **impl)
    out = dechunk(chunked.chunks, chunked.extras["boundary_prob"],
                  chunked.extras["segment_start"], chunked.chunk_index_of_byte, **impl)
    loss = jnp.sum(out * out_weight) + jnp.sum(boundary_prob)
    return loss, (jnp.sum(chunked.chunk_valid), jnp.sum(chunked.num_dropped))

  def floor_loss(h, w_q, w_k, out_weight):
    q, k = _projections(h, w_q, w_k)
    return jnp.sum(q * out_weight) + jnp.sum(k * out_weight)

  path = jax.jit(jax.value_and_grad(path_loss, argnums=(0, 1, 2), has_aux=True))
  floor = jax.jit(jax.value_and_grad(floor_loss, argnums=(0, 1, 2)))
  # Every array is an argument (closed-over arrays would be constant-folded by XLA).
  path_args = (h, w_q, w_k, out_weight, segment_start)
  (_, (num_chunks, num_dropped)), _ = path(*path_args)
  path_s = _time(path, path_args, iters)
  floor_s = _time(floor, (h, w_q, w_k, out_weight), iters)
  return {"path_s": path_s, "floor_s": floor_s, "ratio": path_s / floor_s,
          "mean_chunks": float(num_chunks) / batch,
          "mean_dropped": float(num_dropped) / batch}


__all__ = ["benchmark_routing", "boundary_probs", "chunk", "dechunk"]
