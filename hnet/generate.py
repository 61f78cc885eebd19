"""Batched sampling over the shared decode_step interface (every family).

Prompts may have different lengths: at step t a row feeds its own prompt byte while
t < len(prompt) and its previous sample afterwards, so one cache serves the batch.
The whole loop is one jitted lax.scan.
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from hnet import bytes as hbytes


def filter_logits(logits: jax.Array, *, temperature: float, top_k: int, top_p: float) -> jax.Array:
  """logits [B, V] -> scaled logits with everything outside top-k / nucleus set to -inf."""
  logits = logits.astype(jnp.float32) / max(temperature, 1e-6)
  is_special = jnp.arange(logits.shape[-1]) >= hbytes.NUM_BYTES
  logits = jnp.where(is_special & (jnp.arange(logits.shape[-1]) != hbytes.EOS_ID), -jnp.inf, logits)
  if top_k > 0:
    kth = jnp.sort(logits, axis=-1)[:, -top_k][:, None]
    logits = jnp.where(logits < kth, -jnp.inf, logits)
  if 0.0 < top_p < 1.0:
    sorted_logits = jnp.sort(logits, axis=-1)[:, ::-1]
    cumulative = jnp.cumsum(jax.nn.softmax(sorted_logits, axis=-1), axis=-1)
    # keep the smallest set whose probability reaches top_p (always at least one)
    cutoff_index = jnp.sum(cumulative < top_p, axis=-1, keepdims=True)
    cutoff = jnp.take_along_axis(sorted_logits, cutoff_index, axis=-1)
    logits = jnp.where(logits < cutoff, -jnp.inf, logits)
  return logits


def generate(model: nnx.Module, prompts: Sequence[bytes], *, max_new_bytes: int, seed: int = 0,
             temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0) -> list[bytes]:
  """Continues each prompt by up to `max_new_bytes` bytes (greedy when temperature == 0)."""
  ids = [hbytes.encode(p, add_bos=True) for p in prompts]
  lengths = np.array([len(x) for x in ids], np.int32)
  total = int(lengths.max()) + max_new_bytes
  prompt = np.full((len(ids), total), hbytes.PAD_ID, np.int32)
  for row, x in enumerate(ids):
    prompt[row, :len(x)] = x
  graphdef, state = nnx.split(model)

  @jax.jit
  def run(state, prompt, lengths, key):
    model = nnx.merge(graphdef, state)
    cache = model.init_cache(prompt.shape[0], prompt.shape[1])

    def step(carry, t):
      cache, previous, key = carry
      fed = jnp.where(t < lengths, prompt[:, t], previous)
      logits, cache = model.decode_step(cache, fed)
      key, sub = jax.random.split(key)
      if temperature == 0:
        sample = jnp.argmax(filter_logits(logits, temperature=1.0, top_k=0, top_p=1.0), axis=-1)
      else:
        sample = jax.random.categorical(
            sub, filter_logits(logits, temperature=temperature, top_k=top_k, top_p=top_p))
      return (cache, sample.astype(jnp.int32), key), fed

    init = (cache, jnp.zeros(prompt.shape[0], jnp.int32), key)
    (_, last, _), fed = jax.lax.scan(step, init, jnp.arange(prompt.shape[1]))
    return jnp.concatenate([fed.T[:, 1:], last[:, None]], axis=1)  # [B, total]

  out = np.asarray(run(state, prompt, lengths, jax.random.key(seed)))
  results = []
  for row, n in enumerate(lengths):
    continuation = out[row, n - 1:n - 1 + max_new_bytes]
    stop = np.flatnonzero(continuation == hbytes.EOS_ID)
    results.append(hbytes.decode_bytes(continuation[:stop[0]] if stop.size else continuation))
  return results
