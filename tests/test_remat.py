"""config.model.remat: recomputing blocks in the backward pass changes memory, not values."""
import jax
import numpy as np
import pytest

from configs import transformer_tiny
from hnet import sharding
from hnet.testing import loss_and_grads, packed_byte_batch
from tests.test_hnet import tiny_config as hnet_tiny
from tests.test_mrt5 import enc_dec_batch, tiny_config as mrt5_tiny


def _transformer():
  c = transformer_tiny.get_config()
  c.model.dim, c.model.num_layers, c.model.num_heads, c.model.num_kv_heads, c.model.mlp_dim = 32, 2, 2, 2, 64
  return c


# family -> (config, batch, the policy compared with "none"): each policy on at least one
# family, the nested Mamba-2 / Transformer stacks of a 2-stage H-Net with "full".
CASES = {
    "transformer": (_transformer, lambda: packed_byte_batch(0, 2, 32, (20, None)), "dots"),
    "hnet": (lambda: hnet_tiny(2), lambda: packed_byte_batch(0, 2, 32, (20, None)), "full"),
    "mrt5": (mrt5_tiny, lambda: enc_dec_batch(0, 2, 24, 8, (10, None), (3, None)), "full"),
}


def _rematerialised_blocks(config, batch) -> int:
  """How many blocks the traced loss wraps in jax.checkpoint with a remat policy (the
  SSD's own inner checkpoint has none)."""
  from hnet.train import loss_fn, make_setup
  setup = make_setup(config, sharding.make_mesh(1, 1, 1, devices=jax.devices()[:1]))
  jaxpr = str(jax.make_jaxpr(lambda p: loss_fn(p, setup.graphdef, batch, 1.0)[0])(
      setup.abstract_state["params"]))
  return jaxpr.count("policy=") - jaxpr.count("policy=None")


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(CASES))
def test_remat_policies_give_the_same_loss_and_gradients(family):
  make_config, make_batch, remat_policy = CASES[family]
  batch = make_batch()
  mesh = sharding.make_mesh(1, 1, 1, devices=jax.devices()[:1])
  results = {}
  for policy in ("none", remat_policy):
    config = make_config()
    config.model.remat = policy
    blocks = _rematerialised_blocks(config, batch)
    assert (blocks > 0) == (policy != "none"), (policy, blocks)
    results[policy] = loss_and_grads(config, batch, mesh)
  (loss, grads), (remat_loss, remat_grads) = results["none"], results[remat_policy]
  np.testing.assert_allclose(remat_loss, loss, rtol=1e-5, atol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5),
               remat_grads, grads)


def test_unknown_remat_policy_says_what_to_set():
  config = _transformer()
  config.model.remat = "everything"
  with pytest.raises(ValueError, match="--config.model.remat"):
    _rematerialised_blocks(config, packed_byte_batch(0, 1, 8))
