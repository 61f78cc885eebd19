"""H-Net: causality, sharding, cached generation, Pallas vs jnp, overfit, lr groups,
paper-scale parameter counts."""
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import hnet_1stage_L, hnet_1stage_tiny, hnet_2stage_XL
from hnet import generate as hgenerate
from hnet import testing
from hnet.models import build_model
from hnet.models.layout import stage_lr_multipliers
from hnet.optim import lr_multiplier_tree, path_string
from hnet.train import abstract_model


def tiny_config(stages: int = 1, **model):
  c = hnet_1stage_tiny.get_config()
  m = c.model
  if stages == 1:
    m.layout, m.d_model, m.num_heads, m.mlp_dim = "[m1, T2, m1]", [32, 48], [2, 4], [0, 64]
    m.window, m.target_ratio, m.capacity_factor = [0, 0], [3], [0.0]
  else:
    m.layout = "[m1, [T1m1, T1, m1T1], m1]"
    m.d_model, m.num_heads, m.mlp_dim = [32, 32, 48], [2, 2, 4], [0, 64, 64]
    m.window, m.target_ratio, m.capacity_factor = [0, 3, 0], [2, 2], [0.0, 0.0]
  m.d_state, m.headdim, m.ssd_chunk_size = 8, 16, 8
  m.update(model)
  c.train.lr_multipliers = stage_lr_multipliers(m)
  c.train.steps, c.train.warmup_steps, c.train.lr = 40, 2, 1e-2
  return c


def _boundaries(config, batch):
  model = build_model(config.model, nnx.Rngs(0))
  return [np.asarray(s["boundary_mask"]) for s in nnx.jit(lambda m, b: m.chunking(b))(model, batch)]


@pytest.mark.parametrize("stages", [1, 2])
def test_causal_across_chunk_boundaries(stages):
  cfg = tiny_config(stages)
  batch = testing.packed_byte_batch(0, 2, 24, doc_lengths=(10, None))
  mask = _boundaries(cfg, batch)[-1][0]
  # positions on, just before and just after chunk boundaries of the innermost stage
  starts = [int(t) for t in np.flatnonzero(mask) if 0 < t < 22]
  assert starts, "the test needs chunk boundaries inside the row"
  positions = sorted({0, 9, 10, 17} | {starts[0] - 1, starts[0], starts[-1]})
  testing.assert_causal(cfg, batch, positions=tuple(positions))


def test_causal_with_capacity_overflow():
  cfg = tiny_config(1, capacity_factor=[0.5])  # C = 24 * 0.5 / 3 -> 8 slots: overflows
  batch = testing.packed_byte_batch(0, 2, 24, doc_lengths=(10, None))
  model = build_model(cfg.model, nnx.Rngs(0))
  metrics = nnx.jit(lambda m, b: m(b).metrics)(model, batch)
  assert float(metrics["dropped_fraction_s0"]) > 0
  # Past the overflow every byte reads the last kept chunk and (the residual projection
  # being zero at init) the decoder sees no byte-specific input: perturb only earlier.
  overflow = np.argmax(np.cumsum(_boundaries(cfg, batch)[0], axis=1) > 8, axis=1).min()
  assert overflow > 12
  testing.assert_causal(cfg, batch, positions=(0, 5, 11))


@pytest.mark.slow
def test_metrics_and_aux_losses():
  cfg = tiny_config(2)
  batch = testing.packed_byte_batch(0, 2, 24, doc_lengths=(10, 9))  # row ends in padding
  model = build_model(cfg.model, nnx.Rngs(0))
  out = testing.forward(model, batch)
  masks = _boundaries(cfg, batch)
  real = batch["segment_ids"] > 0
  assert set(out.aux_losses) == {"ratio_s0", "ratio_s1"}
  np.testing.assert_allclose(float(out.aux_losses["ratio_s0"]),
                             0.03 * float(out.metrics["ratio_loss_s0"]), rtol=1e-6)
  np.testing.assert_allclose(float(out.metrics["bytes_per_chunk_s0"]),
                             real.sum() / (masks[0] & real).sum(), rtol=1e-6)
  np.testing.assert_allclose(float(out.metrics["bytes_per_chunk_s1"]),
                             real.sum() / (masks[1] & real).sum(), rtol=1e-6)
  np.testing.assert_allclose(float(out.metrics["boundary_fraction_s0"]),
                             (masks[0] & real).sum() / real.sum(), rtol=1e-6)
  assert float(out.metrics["dropped_fraction_s0"]) == 0.0
  # stage-1 boundaries are a subset of stage-0 boundaries (in byte positions)
  assert not (masks[1] & ~masks[0]).any()


@pytest.mark.slow
def test_documents_do_not_interact():
  cfg = tiny_config(2)
  batch = testing.packed_byte_batch(0, 1, 24, doc_lengths=(10, None))
  second_alone = {k: v[:, 10:] for k, v in batch.items()}
  both = np.asarray(testing.model_logits(cfg, batch))
  alone = np.asarray(testing.model_logits(cfg, second_alone))
  np.testing.assert_allclose(both[:, 10:], alone, atol=2e-5)


def test_sharded_matches_single_device():
  """2 stages (covers the outer routing stage and the innermost one)."""
  batch = testing.packed_byte_batch(0, 8, 32, doc_lengths=(12, None))
  testing.assert_sharded_matches_single(tiny_config(2), batch)


@pytest.mark.parametrize("stages,layout,window", [
    (1, None, None),
    (1, "[T1m1, T2, m1T1]", [4, 0]),  # windowed byte-level attention
    (2, None, None)])                   # windowed attention over stage-1 chunks
def test_batched_cached_generation_matches_forward(stages, layout, window):
  overrides = {} if layout is None else {"layout": layout, "window": window}
  cfg = tiny_config(stages, **overrides)
  batch = testing.packed_byte_batch(3, 3, 20)
  masks = _boundaries(cfg, batch)
  # rows must differ in where they emit chunks, or the per-row commit is not exercised
  assert any((m[0] != m[r]).any() for m in masks for r in (1, 2))
  testing.assert_cached_generation_matches(cfg, batch)


def test_generate_rows_are_independent():
  """Batched sampling with different prompt lengths == each prompt alone (greedy)."""
  cfg = tiny_config(1)
  model = build_model(cfg.model, nnx.Rngs(0))
  prompts = [b"the cat", b"a much longer prompt", b"x"]
  together = hgenerate.generate(model, prompts, max_new_bytes=6, temperature=0.0)
  alone = [hgenerate.generate(model, [p], max_new_bytes=6, temperature=0.0)[0] for p in prompts]
  assert together == alone


def test_pallas_interpret_matches_jnp():
  batch = testing.packed_byte_batch(0, 2, 24, doc_lengths=(10, None))
  outs = {}
  for impl in ("jnp", "pallas"):
    cfg = tiny_config(2, implementation=impl, interpret=True, capacity_factor=[1.0, 1.5])
    model = build_model(cfg.model, nnx.Rngs(0))
    graphdef, params = nnx.split(model, nnx.Param)

    def loss(params, batch):
      out = nnx.merge(graphdef, params)(batch)
      return jnp.mean(out.logits ** 2) + sum(out.aux_losses.values()), out.metrics
    outs[impl] = jax.jit(jax.value_and_grad(loss, has_aux=True))(params, batch)
  (loss_j, metrics_j), grads_j = outs["jnp"]
  (loss_p, metrics_p), grads_p = outs["pallas"]
  np.testing.assert_allclose(float(loss_p), float(loss_j), rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
               metrics_p, metrics_j)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
               nnx.to_pure_dict(grads_p), nnx.to_pure_dict(grads_j))


@pytest.mark.parametrize("stages", [1, 2])
def test_overfit(stages):
  batch = testing.packed_byte_batch(0, 4, 32)
  losses = testing.overfit_losses(tiny_config(stages), batch, steps=40)
  assert losses[-1] < 0.5 * losses[0], losses


def test_lr_multipliers_cover_every_parameter():
  cfg = tiny_config(2)
  model = abstract_model(cfg.model)
  params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  rules = dict(cfg.train.lr_multipliers)
  paths = [path_string(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
  for path in paths:  # one stage rule each; the router rule (if any) adds a second
    matches = sum(bool(re.search(rx, path)) for rx in rules)
    assert matches == 1 + ("/router/" in path and "^stages/0/router/" in rules), path
  tree = lr_multiplier_tree(params, rules)
  flat = {path_string(p): v for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}
  assert flat["stages/1/encoder/layers/0/attn/query/kernel"] == pytest.approx(rules["^stages/1/"])
  assert flat["embed/embedding"] == flat["stages/0/encoder/layers/0/mixer/in_proj/kernel"] \
      == pytest.approx(rules["^stages/0/"])
  assert flat["stages/0/router/query"] == pytest.approx(rules.get("^stages/0/router/",
                                                                  rules["^stages/0/"]))
  assert flat["stages/2/main/norm/scale"] == pytest.approx(rules["^stages/2/"])
  # a more specific rule wins whatever the (sorted) key order of the ConfigDict
  cfg.train.lr_multipliers["^stages/0/router/"] = 0.125
  flat = {path_string(p): v for p, v in jax.tree_util.tree_flatten_with_path(
      lr_multiplier_tree(params, dict(cfg.train.lr_multipliers)))[0]}
  assert flat["stages/0/router/query"] == 0.125
  assert flat["stages/0/encoder/layers/0/mixer/in_proj/kernel"] == pytest.approx(rules["^stages/0/"])


def test_init_scales():
  cfg = tiny_config(1)
  model = build_model(cfg.model, nnx.Rngs(0))
  stage = model.stages[0]
  np.testing.assert_array_equal(np.asarray(stage.residual.kernel[...]), 0.0)
  np.testing.assert_array_equal(np.asarray(stage.router.query[...]), np.eye(32))
  main = model.stages[1].main
  std = float(np.std(np.asarray(main.layers[0].mlp.down.kernel[...])))
  assert std == pytest.approx(0.02 / np.sqrt(2 * 2), rel=0.15)  # 2 T layers, 2 branches each
  assert float(np.std(np.asarray(model.head.kernel[...]))) == pytest.approx(0.02, rel=0.15)


@pytest.mark.parametrize("module,expected", [(hnet_1stage_L, 680e6), (hnet_2stage_XL, 1.6e9)])
def test_paper_scale_parameter_counts(module, expected):
  cfg = module.get_config()
  model = abstract_model(cfg.model)
  count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
  assert abs(count - expected) / expected < 0.1, count



def test_lr_multipliers_follow_command_line_overrides():
  """The optimizer computes H-Net's stage rules from the model settings it is given."""
  from hnet.optim import training_lr_multipliers
  cfg = hnet_1stage_tiny.get_config()
  assert training_lr_multipliers(cfg) == stage_lr_multipliers(cfg.model)
  cfg.model.d_model = [128, 768]  # as --config.model.d_model=... would
  cfg.model.router_lr_multiplier = 0.5
  rules = training_lr_multipliers(cfg)
  assert rules["^stages/0/"] == pytest.approx((4.6 * 768 / 128) ** 0.5)
  assert rules["^stages/0/router/"] == 0.5
  cfg.train.lr_multipliers["^stages/1/"] = 0.25  # explicit entries win rule by rule
  assert training_lr_multipliers(cfg)["^stages/1/"] == 0.25
