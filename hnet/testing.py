"""Checks every model family must pass, shared by the test files.

Each takes a config (shrunk from configs/<experiment>.py) and a batch dict, so a new
family gets causality, sharding, cached-generation and overfit tests in a few lines.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from hnet import bytes as hbytes
from hnet import sharding
from hnet.models import build_model
from hnet.train import init_state, jit_train_step, loss_fn, make_setup, merge_model


def packed_byte_batch(seed: int, batch_size: int, length: int, doc_lengths=(None,)) -> dict:
  """A random packed batch: rows of documents of `doc_lengths` (None = fill the row)."""
  rng = np.random.default_rng(seed)
  ids = rng.integers(0, 256, (batch_size, length + 1)).astype(np.int32)
  segment_ids = np.zeros((batch_size, length), np.int32)
  positions = np.zeros((batch_size, length), np.int32)
  for b in range(batch_size):
    start, seg = 0, 1
    for doc_len in doc_lengths:
      end = length if doc_len is None else min(start + doc_len, length)
      segment_ids[b, start:end] = seg
      positions[b, start:end] = np.arange(end - start)
      ids[b, start] = hbytes.BOS_ID
      start, seg = end, seg + 1
      if start >= length:
        break
  loss_mask = (segment_ids > 0).astype(np.float32)
  loss_mask[:, :-1] *= segment_ids[:, :-1] == segment_ids[:, 1:]
  return {"inputs": ids[:, :-1], "targets": ids[:, 1:], "segment_ids": segment_ids,
          "positions": positions, "loss_mask": loss_mask}


def model_logits(config, batch, seed: int = 0) -> jax.Array:
  model = build_model(config.model, nnx.Rngs(seed))
  return nnx.jit(lambda m, b: m(b).logits)(model, batch)


def assert_causal(config, batch, positions=(0, 5, 17), key: str = "inputs", atol: float = 0.0):
  """Changing `batch[key]` after position t never changes logits at positions <= t."""
  model = build_model(config.model, nnx.Rngs(0))
  forward = nnx.jit(lambda m, b: m(b).logits)
  base = np.asarray(forward(model, batch))
  rng = np.random.default_rng(1)
  for t in positions:
    changed = dict(batch)
    ids = np.array(batch[key])
    ids[:, t + 1:] = rng.integers(0, 256, ids[:, t + 1:].shape)
    changed[key] = ids
    out = np.asarray(forward(model, changed))
    np.testing.assert_allclose(out[:, :t + 1], base[:, :t + 1], atol=atol, rtol=0,
                               err_msg=f"logits at positions <= {t} depend on later {key}")
    assert not np.allclose(out[:, t + 1:], base[:, t + 1:]), "changing the future changed nothing"


def loss_and_grads(config, batch, mesh) -> tuple[float, dict]:
  """Loss and gradients of the freshly initialised model, jitted over `mesh`."""
  setup = make_setup(config, mesh)
  state = init_state(setup)
  num_targets = jnp.sum(jnp.asarray(batch["loss_mask"]))
  def loss_of(params, batch, num_targets):
    return loss_fn(params, setup.graphdef, batch, num_targets)
  fn = jax.jit(jax.value_and_grad(loss_of, has_aux=True),
               in_shardings=(setup.state_shardings["params"], setup.batch_sharding(batch), None))
  with jax.set_mesh(mesh):
    (loss, _), grads = fn(state["params"], batch, num_targets)
  return float(loss), jax.device_get(grads)


def assert_sharded_matches_single(config, batch, rtol: float = 2e-5, atol: float = 2e-6,
                                  mesh_shape=(2, 2, 2)):
  """data x fsdp x tensor over 8 devices gives the loss and gradients of 1 device."""
  single = sharding.make_mesh(1, 1, 1, devices=jax.devices()[:1])
  multi = sharding.make_mesh(*mesh_shape, devices=jax.devices()[:int(np.prod(mesh_shape))])
  loss_1, grads_1 = loss_and_grads(config, batch, single)
  loss_8, grads_8 = loss_and_grads(config, batch, multi)
  np.testing.assert_allclose(loss_8, loss_1, rtol=rtol)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=rtol, atol=atol), grads_8, grads_1)


def assert_cached_generation_matches(config, batch, atol: float = 2e-5, steps: int | None = None):
  """decode_step fed x_0..x_t one by one gives the full forward logits at t."""
  model = build_model(config.model, nnx.Rngs(0))
  inputs = np.asarray(batch["inputs"])
  B, L = inputs.shape
  steps = steps or L
  full = np.asarray(nnx.jit(lambda m, b: m(b).logits)(model, batch))
  step_fn = nnx.jit(lambda m, c, ids: m.decode_step(c, ids))
  cache = model.init_cache(B, steps)
  for t in range(steps):
    logits, cache = step_fn(model, cache, jnp.asarray(inputs[:, t]))
    np.testing.assert_allclose(np.asarray(logits), full[:, t], atol=atol, rtol=1e-4,
                               err_msg=f"cached logits differ at step {t}")


def overfit_losses(config, batch, steps: int = 30) -> list[float]:
  """Losses of `steps` train steps on one repeated batch (1 device)."""
  mesh = sharding.make_mesh(1, 1, 1, devices=jax.devices()[:1])
  setup = make_setup(config, mesh)
  state = init_state(setup)
  step_fn = jit_train_step(setup, batch)
  losses = []
  with jax.set_mesh(mesh):
    for _ in range(steps):
      state, metrics = step_fn(state, batch)
      losses.append(float(metrics["loss"]))
  return losses
