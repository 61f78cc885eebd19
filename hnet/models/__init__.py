"""config.model.name -> model constructor. Imports are lazy so a family's
dependencies load only when it is used."""
from __future__ import annotations

import importlib

import jax.numpy as jnp
from flax import nnx

from hnet.layers import remat

# name -> "module:function"; the function is build(model_config, rngs) -> nnx.Module.
MODELS = {
    "transformer": "hnet.models.transformer:build",
    "mrt5": "hnet.models.mrt5:build",
    "byt5": "hnet.models.mrt5:build",
    "hat": "hnet.models.hat:build",
    "lyt": "hnet.models.word_pooled:build",
    "byte2word": "hnet.models.word_pooled:build",
    "hnet": "hnet.models.hnet:build",
}


# model.dtype: the compute dtype (parameters stay float32).
COMPUTE_DTYPES = ("float32", "bfloat16")


def build_model(model_config, rngs: nnx.Rngs) -> nnx.Module:
  name = model_config.name
  if name not in MODELS:
    raise ValueError(f"unknown model name {name!r}; known: {sorted(MODELS)} "
                     "(set --config.model.name to one of them)")
  dtype = model_config.get("dtype", "float32")
  try:
    known = jnp.dtype(dtype).name in COMPUTE_DTYPES
  except TypeError:  # not a dtype name at all
    known = False
  if not known:
    raise ValueError(f"--config.model.dtype={dtype!r} is not a compute dtype; use one of "
                     f"{', '.join(COMPUTE_DTYPES)}")
  module_name, fn_name = MODELS[name].split(":")
  model = getattr(importlib.import_module(module_name), fn_name)(model_config, rngs)
  return remat.set_policy(model, model_config.get("remat", "none"))


# name -> "module:Class" of a controller: non-gradient state a family keeps in the
# train state (saved in checkpoints). A controller has init() -> dict,
# batch_inputs(extra, batch) -> dict of extra [B]-leading batch entries, update(extra, metrics) -> dict.
CONTROLLERS = {
    "mrt5": "hnet.models.mrt5:Controller",
}


def controller_for(model_config):
  spec = CONTROLLERS.get(model_config.name)
  if spec is None:
    return None
  module_name, cls_name = spec.split(":")
  return getattr(importlib.import_module(module_name), cls_name)(model_config)


# name -> "module:function" giving the family's own per-parameter-group lr multipliers,
# function(model_config) -> {path regex: multiplier}. They are computed when the
# optimizer is built (so command-line overrides of widths or targets apply), and
# config.train.lr_multipliers entries override them rule by rule.
LR_MULTIPLIERS = {
    "hnet": "hnet.models.layout:stage_lr_multipliers",
}


def lr_multipliers_for(model_config) -> dict[str, float]:
  spec = LR_MULTIPLIERS.get(model_config.get("name"))
  if spec is None:
    return {}
  module_name, fn_name = spec.split(":")
  return dict(getattr(importlib.import_module(module_name), fn_name)(model_config))
