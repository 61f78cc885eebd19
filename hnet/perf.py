"""Throughput helpers: a measured matmul peak and compiled-step FLOP / memory figures."""
from __future__ import annotations

import time
from typing import Any

import jax
import jax.numpy as jnp


def measure_matmul_peak(n: int = 2048, repeats: int = 5, dtype=jnp.float32) -> float:
  """FLOP/s of an n^3 matmul on the default device (best of `repeats`)."""
  a = jax.random.normal(jax.random.key(0), (n, n), dtype)
  b = jax.random.normal(jax.random.key(1), (n, n), dtype)
  matmul = jax.jit(lambda x, y: x @ y)
  matmul(a, b).block_until_ready()
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    matmul(a, b).block_until_ready()
    best = min(best, time.perf_counter() - start)
  return 2 * n ** 3 / best


def compiled_flops(compiled) -> float:
  """FLOPs of one call of a compiled function, as XLA counts them (0 if unknown)."""
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else {}
  return float((cost or {}).get("flops", 0.0))


def compiled_memory(compiled) -> dict[str, Any]:
  """Per-device memory of a compiled function from XLA's memory analysis (bytes)."""
  m = compiled.memory_analysis()
  if m is None:
    return {}
  return {"argument_bytes": m.argument_size_in_bytes, "output_bytes": m.output_size_in_bytes,
          "temp_bytes": m.temp_size_in_bytes, "alias_bytes": m.alias_size_in_bytes,
          "generated_code_bytes": m.generated_code_size_in_bytes}
