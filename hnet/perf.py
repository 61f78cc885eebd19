"""Throughput helpers: a measured matmul peak and compiled-step FLOP / memory figures."""
from __future__ import annotations

import math
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


def transformer_model_flops(params, *, num_layers: int, dim: int, seq_len: int,
                            tokens: int) -> float:
  """FLOPs of one train step of a Transformer by the standard model-FLOPs count (as MFU is
  usually defined, PaLM appendix B): 6 x parameters x tokens for the weight matmuls
  (forward 2, backward 4), plus 12 x layers x dim x seq_len per token for the attention
  scores and their weighted sum (full L x L, causal masking not discounted). `params`
  is the parameter tree (arrays or ShapeDtypeStructs); the input embedding table is a
  lookup, not a matmul, and is left out (a tied table counts once, as the head)."""
  count = 0
  for path, leaf in _flat(params):
    if "embedding" in path and "head" not in path:
      continue
    count += math.prod(leaf.shape)
  tied = not any("head" in path for path, _ in _flat(params))
  if tied:  # the embedding table is also the output projection: count it once
    count += sum(math.prod(leaf.shape) for path, leaf in _flat(params) if "embedding" in path)
  return 6.0 * count * tokens + 12.0 * num_layers * dim * seq_len * tokens


def _flat(tree) -> list[tuple[str, Any]]:
  return [("/".join(str(getattr(k, "key", k)) for k in path), leaf)
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]]


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


class ProfileWindow:
  """train.profile_steps = "N,M": a jax.profiler trace of steps N..M (1-based, inclusive)
  written under `log_dir` (plugins/profile/<run>/, what TensorBoard's profile plugin reads).
  "" = off. Call before(step) before running step `step`, after(step, state) after it."""

  def __init__(self, spec: str, total_steps: int, log_dir: str):
    self.first = self.last = 0
    self.log_dir = log_dir
    self.active = False
    if not spec:
      return
    try:
      first, last = (int(s) for s in str(spec).split(","))
    except ValueError:
      first = last = -1
    if not 1 <= first <= last <= total_steps:
      raise ValueError(f"train.profile_steps={spec!r}: give two steps 'N,M' with "
                       f"1 <= N <= M <= train.steps ({total_steps}), e.g. --config.train.profile_steps=5,7")
    self.first, self.last = first, last

  def before(self, step: int) -> None:
    if self.first and step == self.first:
      jax.profiler.start_trace(self.log_dir)
      self.active = True

  def after(self, step: int, state: Any) -> None:
    if self.active and (step >= self.last):
      jax.block_until_ready(state)  # the trace holds the steps' device work, not just dispatch
      jax.profiler.stop_trace()
      self.active = False

  def close(self) -> None:
    if self.active:  # a run stopped inside the window still keeps what it traced
      jax.profiler.stop_trace()
      self.active = False
