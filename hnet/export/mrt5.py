"""MrT5 (hnet/models/mrt5.py with a delete gate) <-> HnetMrT5ForConditionalGeneration,
remote code (hnet/export/remote/mrt5/).

Every weight MrT5 shares with ByT5 keeps the name ByT5's export gives it (T5's names,
hnet/export/t5.py `_all_pairs`): a user can load an MrT5 export into
T5ForConditionalGeneration and sees exactly the gate's tensors as new (unexpected):
  encoder.delete_gate.layer_norm.weight  [D]   (our gate/norm/scale)
  encoder.delete_gate.weight             [D]   (gate/weight)
  encoder.delete_gate.bias               [1]   (gate/bias, a scalar: [1] as torch
                                               parameters and safetensors files hold it)
The remote code is MrT5 in PyTorch (not a subclass of transformers' T5, whose attention
has no place for the gate's logit bias nor softmax1): soft deletion (forward's default,
the training path), hard deletion (forward(hard_deletion=True): the kept bytes gathered
per row), the deletion ratio per row in the output, and generate() for both training
objectives (prefix LM: decoder starts at <bos>; span corruption: pass
decoder_input_ids = [<bos>, <extra_id_0>], sentinels may be generated).
"""
from __future__ import annotations

import pathlib
from typing import Any

import numpy as np

from hnet.export import t5
from hnet.export.family import ExportError, FamilyExport, check_config, check_tensor_names

REMOTE_DIR = pathlib.Path(__file__).parent / "remote" / "mrt5"
REMOTE_FILES = [REMOTE_DIR / "configuration_hnet_mrt5.py", REMOTE_DIR / "modeling_hnet_mrt5.py"]
GATE_PAIRS = ((("gate", "norm", "scale"), "encoder.delete_gate.layer_norm.weight", False),
              (("gate", "weight"), "encoder.delete_gate.weight", False),
              (("gate", "bias"), "encoder.delete_gate.bias", False))
MODEL_CARD_NOTES = """- MrT5: ByT5 (T5 v1.1 over bytes, attention logits scaled by 1/sqrt(d_kv), untied
  head) with a delete gate after encoder layer `gate_layer`. Weights shared with ByT5 keep T5's names;
  the gate's are `encoder.delete_gate.*`.
- `model(..., hard_deletion=True)` / `model.generate(..., hard_deletion=True)` drop the
  deleted bytes (inference); the default is soft deletion (the training path). The output's
  `deletion_ratio` is the share of each row's bytes the gate deletes.
- Span-corruption runs: start the decoder with `decoder_input_ids=[[257, 259]]` (<bos>,
  <extra_id_0>) and mark each missing span of the source with a sentinel.
- generate() recomputes the decoder prefix at every step (no KV cache in this export).
"""


def _g(model_config, name, default):
  value = model_config.get(name, default)
  return default if value is None else value


def hf_config(model_config) -> dict[str, Any]:
  if model_config.name != "mrt5":
    raise ExportError(f"hnet.export.mrt5 exports MrT5 (model.name 'mrt5'), not {model_config.name!r}")
  gate_layer = int(_g(model_config, "gate_layer", 3))
  if gate_layer <= 0:
    raise ExportError("this MrT5 config has no delete gate (gate_layer 0): export it as byt5")
  config = t5.hf_config(_as_byt5(model_config))
  config.update({
      "architectures": ["HnetMrT5ForConditionalGeneration"], "model_type": "hnet_mrt5",
      "auto_map": {"AutoConfig": "configuration_hnet_mrt5.HnetMrT5Config",
                   "AutoModelForSeq2SeqLM": "modeling_hnet_mrt5.HnetMrT5ForConditionalGeneration"},
      "gate_layer": gate_layer, "gate_k": float(_g(model_config, "gate_k", -30.0)),
      "gate_standardise": bool(_g(model_config, "gate_standardise", False)),
      "softmax1": bool(_g(model_config, "softmax1", False)), "hard_deletion": False})
  return config


def _as_byt5(model_config):
  """The same model config named "byt5" (the shared part's mapping is ByT5's)."""
  import ml_collections
  config = ml_collections.ConfigDict(model_config.to_dict())
  config.name = "byt5"
  return config


def _pairs(model_config):
  return list(t5._all_pairs(model_config)) + list(GATE_PAIRS)


def _expected_shapes(model_config) -> dict[str, tuple[int, ...]]:
  dim = int(model_config.dim)
  return {**t5._expected_shapes(model_config), "encoder.delete_gate.layer_norm.weight": (dim,),
          "encoder.delete_gate.weight": (dim,), "encoder.delete_gate.bias": (1,)}


def _get(tree, path):
  for key in path:
    tree = tree[key] if key in tree else tree[str(key)]
  return tree


def _float32(x) -> np.ndarray:
  return np.array(x, dtype=np.float32, order="C")  # keeps the 0-d gate bias 0-d on import


def to_hf(params: dict, model_config) -> FamilyExport:
  config = hf_config(model_config)
  tensors = {}
  for ours, theirs, transpose in _pairs(model_config):
    value = np.asarray(_get(params, ours))
    value = value.reshape(1) if ours == ("gate", "bias") else value
    tensors[theirs] = _float32(value.T if transpose else value)
  check_tensor_names(_expected_shapes(model_config), tensors)
  return FamilyExport(config=config, tensors=tensors, remote_files=list(REMOTE_FILES),
                      generation_config={})


def from_hf(tensors: dict[str, np.ndarray], hf_config_json: dict, model_config) -> dict:
  expected = hf_config(model_config)
  check_config({k: v for k, v in expected.items()
                if k not in ("dtype", "auto_map", "dropout_rate", "hard_deletion")},
               hf_config_json, target=f"the {model_config.name} config")
  check_tensor_names(_expected_shapes(model_config), tensors)
  params: dict[str, Any] = {}
  for ours, theirs, transpose in _pairs(model_config):
    node = params
    for key in ours[:-1]:
      node = node.setdefault(key, {})
    value = tensors[theirs]
    value = value.reshape(()) if ours == ("gate", "bias") else value
    node[ours[-1]] = _float32(value.T if transpose else value)
  return params
