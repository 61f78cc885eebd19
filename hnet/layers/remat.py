"""Rematerialisation of residual blocks: recompute a block's activations in the backward
pass instead of keeping them, as `config.model.remat` says.

  @rematerialisable
  def __call__(self, x, ...): ...        # a block's forward
  set_policy(model, "full")              # every such block of `model` (build_model does it)

Policies: "none" keeps every activation (the default); "full" keeps only each block's
inputs and recomputes the rest; "dots" also keeps the outputs of the weight matmuls
(dots with no batch dimension), so the backward pass recomputes only the cheap
elementwise work and attention. Values are identical under every policy.
"""
from __future__ import annotations

import functools

import jax
from flax import nnx

POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def rematerialisable(method):
  """Decorates a block's __call__: recomputed in the backward pass when the block's
  `remat` attribute (set by set_policy) names a policy other than "none"."""
  @functools.wraps(method)
  def call(self, *args):
    policy = getattr(self, "remat", "none")
    if policy == "none":
      return method(self, *args)
    graphdef, state = nnx.split(self)

    def forward(state, *args):
      return method(nnx.merge(graphdef, state), *args)
    return jax.checkpoint(forward, policy=POLICIES[policy])(state, *args)
  call.rematerialisable = True
  return call


def set_policy(model: nnx.Module, policy: str) -> nnx.Module:
  """Sets the remat policy of every rematerialisable block in `model`."""
  if policy not in POLICIES:
    raise ValueError(f"unknown remat policy {policy!r}; set --config.model.remat to one of "
                     f"{sorted(POLICIES)}")
  for _, module in nnx.iter_modules(model):
    if getattr(type(module).__call__, "rematerialisable", False):
      module.remat = policy
  return model
