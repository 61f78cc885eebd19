"""Byte Transformer baseline: causality, sharding, cache, overfit."""
import numpy as np
import pytest

from configs import transformer_tiny
from hnet import testing


def tiny_config(**model):
  c = transformer_tiny.get_config()
  c.model.dim, c.model.num_layers, c.model.num_heads, c.model.num_kv_heads = 32, 2, 4, 2
  c.model.mlp_dim = 64
  c.model.update(model)
  c.train.steps, c.train.warmup_steps, c.train.lr = 40, 2, 1e-2
  return c


@pytest.mark.parametrize("window", [0, 4])
def test_causal(window):
  batch = testing.packed_byte_batch(0, 2, 24, doc_lengths=(10, None))
  testing.assert_causal(tiny_config(window=window), batch)


def test_sharded_matches_single_device():
  batch = testing.packed_byte_batch(0, 8, 32, doc_lengths=(12, None))
  testing.assert_sharded_matches_single(tiny_config(), batch)


@pytest.mark.parametrize("window", [0, 5])
def test_cached_generation_matches_forward(window):
  batch = testing.packed_byte_batch(0, 3, 16)
  testing.assert_cached_generation_matches(tiny_config(window=window), batch)


def test_documents_do_not_attend_across_segments():
  cfg = tiny_config()
  batch = testing.packed_byte_batch(0, 1, 24, doc_lengths=(10, None))
  second_alone = {k: v[:, 10:] for k, v in batch.items()}
  both = np.asarray(testing.model_logits(cfg, batch))
  alone = np.asarray(testing.model_logits(cfg, second_alone))
  np.testing.assert_allclose(both[:, 10:], alone, atol=2e-5)


def test_overfit():
  batch = testing.packed_byte_batch(0, 4, 32)
  losses = testing.overfit_losses(tiny_config(), batch, steps=40)
  assert losses[-1] < 0.5 * losses[0], losses
