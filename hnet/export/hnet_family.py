"""H-Net (hnet/models/hnet.py) <-> HNetForCausalLM, remote code written for this project
(hnet/export/remote/hnet/: configuration_hnet.py, modeling_hnet.py; they import only
torch, transformers and the standard library, and are copied verbatim into the export).

Tensor names are the checkpoint's parameter paths with "/" -> "." and these changes
(everything else, e.g. A_log, D, dt_bias, pad, is copied as it is):
  .../kernel [in, out]               -> .../weight [out, in]          (torch Linear)
  embed/embedding [V, D]             -> embed.weight
  .../scale (RMSNorm)                -> .../weight
  stages/s/router/{query,key} [D, D] -> stages.s.router.{query,key}.weight, transposed
                                        (ours computes h @ W, torch Linear h @ W^T)
  mixer/conv_weight [W, C]           -> mixer.conv1d.weight [C, 1, W] (depthwise Conv1d:
                                        ours reads weight[k] at input t - (W-1) + k, as
                                        Conv1d with W-1 left padding does)
  mixer/conv_bias [C]                -> mixer.conv1d.bias
Transposes are exact, so JAX -> HF -> JAX gives the parameters bit for bit.

The export computes in float32 whatever model.dtype the run trained with. Chunk capacity:
the exported config has capacity_factor 0 at every stage (every boundary kept, the exact
semantics that hnet's cached decoding has); set it to the run's model.capacity_factor to
reproduce the training-time forward, whose overflowing boundaries are dropped.
"""
from __future__ import annotations

import pathlib
from typing import Any

import numpy as np

from hnet.export.family import (ExportError, FamilyExport, check_config, check_tensor_names,
                                flatten_params, unflatten_params)
from hnet.models.layout import _parse_string, parse_layout, per_stage

REMOTE_DIR = pathlib.Path(__file__).parent / "remote" / "hnet"
REMOTE_FILES = [REMOTE_DIR / "configuration_hnet.py", REMOTE_DIR / "modeling_hnet.py"]
RMS_NORM_EPS = 1e-6        # hnet/layers/norm.py RMSNorm default (blocks and stack norms)
MAMBA_NORM_EPS = 1e-5      # hnet/layers/mamba2.py Mamba2.norm
ROPE_BASE = 10000.0        # hnet/layers/attention.py Attention default
MODEL_CARD_NOTES = """
H-Net with dynamic chunking, as remote code written for hnet: a plain-PyTorch Mamba-2
(chunked SSD, and its step recurrence for generation) that runs on CPU, using
`mamba_ssm`'s chunked-scan kernel on CUDA when it is installed. `generate()` keeps a
cache at every stage; pad batched prompts on the left. Every routing boundary is kept
(config `capacity_factor` 0); set it to the training run's `model.capacity_factor` to
reproduce the training-time forward with its static chunk capacity.
"""


def _layout_string(layout) -> str:
  """A layout (string or nested list) -> its canonical string "[m2, [T1m1, T1, m1T1], m2]"."""
  if isinstance(layout, str):
    stripped = layout.strip()
    if not stripped.startswith("["):
      return stripped
    layout = _parse_string(stripped)
    if isinstance(layout, str):
      return layout
  return "[" + ", ".join(_layout_string(item) for item in layout) + "]"


def _stages(model_config) -> int:
  return len(parse_layout(model_config.layout)) - 1


def hf_config(model_config) -> dict[str, Any]:
  """config.json fields of `model_config` (token ids are added by export_run)."""
  S = _stages(model_config)
  levels = S + 1
  if model_config.get("dtype", "float32") not in ("float32", "bfloat16"):
    raise ExportError(f"model.dtype {model_config.dtype!r} is not supported by the export")
  return {
      "architectures": ["HNetForCausalLM"],
      "model_type": "hnet",
      "auto_map": {"AutoConfig": "configuration_hnet.HNetConfig",
                   "AutoModelForCausalLM": "modeling_hnet.HNetForCausalLM"},
      "vocab_size": int(model_config.vocab_size),
      "layout": _layout_string(model_config.layout),
      "d_model": [int(x) for x in per_stage(list(model_config.d_model), levels, "d_model")],
      "num_heads": [int(x) for x in per_stage(model_config.num_heads, levels, "num_heads")],
      "mlp_dim": [int(x) for x in per_stage(model_config.mlp_dim, levels, "mlp_dim")],
      "window": [int(x) for x in per_stage(model_config.window, levels, "window")],
      "target_ratio": [float(x) for x in per_stage(model_config.target_ratio, S, "target_ratio")],
      "capacity_factor": [0.0] * S,
      "d_state": int(model_config.d_state), "headdim": int(model_config.headdim),
      "expand": int(model_config.expand), "d_conv": int(model_config.d_conv), "ngroups": 1,
      "ssd_chunk_size": int(model_config.ssd_chunk_size),
      "norm_eps": RMS_NORM_EPS, "mamba_norm_eps": MAMBA_NORM_EPS, "rope_base": ROPE_BASE,
      "tie_word_embeddings": False, "use_cache": True, "dtype": "float32"}


# Fields that must agree for the weights of one to be the model of the other, in order.
_ARCHITECTURE_FIELDS = ("model_type", "vocab_size", "layout", "d_model", "num_heads", "mlp_dim",
                        "window", "target_ratio", "d_state", "headdim", "expand", "d_conv",
                        "ngroups")


def _hf_name(path: str) -> tuple[str, str]:
  """Checkpoint path "a/b/kernel" -> (HF tensor name, conversion: same | transpose | conv)."""
  parts = path.split("/")
  leaf, parent = parts[-1], parts[-2] if len(parts) > 1 else ""
  if leaf == "kernel":
    return ".".join(parts[:-1] + ["weight"]), "transpose"
  if leaf in ("scale", "embedding"):
    return ".".join(parts[:-1] + ["weight"]), "same"
  if parent == "router" and leaf in ("query", "key"):
    return ".".join(parts + ["weight"]), "transpose"
  if leaf == "conv_weight":
    return ".".join(parts[:-1] + ["conv1d", "weight"]), "conv"
  if leaf == "conv_bias":
    return ".".join(parts[:-1] + ["conv1d", "bias"]), "same"
  return ".".join(parts), "same"


def _to_hf_array(array: np.ndarray, kind: str) -> np.ndarray:
  if kind == "transpose":
    array = array.T
  elif kind == "conv":  # [W, C] -> [C, 1, W]
    array = array.T[:, None, :]
  return np.ascontiguousarray(array)


def _from_hf_array(array: np.ndarray, kind: str) -> np.ndarray:
  if kind == "transpose":
    array = array.T
  elif kind == "conv":  # [C, 1, W] -> [W, C]
    array = array[:, 0, :].T
  return np.ascontiguousarray(array)


def to_hf(params: dict, model_config) -> FamilyExport:
  tensors = {}
  for path, array in flatten_params(params).items():
    name, kind = _hf_name(path)
    tensors[name] = _to_hf_array(np.asarray(array, np.float32), kind)
  return FamilyExport(config=hf_config(model_config), tensors=tensors,
                      remote_files=list(REMOTE_FILES), generation_config={})


def _abstract_shapes(model_config) -> dict[str, tuple[int, ...]]:
  """Checkpoint path -> shape of every parameter of the H-Net `model_config` builds."""
  from flax import nnx
  from hnet.train import abstract_model
  state = nnx.to_pure_dict(nnx.state(abstract_model(model_config), nnx.Param))
  return {path: tuple(leaf.shape) for path, leaf in flatten_params(
      _map_leaves(state, lambda leaf: np.empty(leaf.shape, np.int8))).items()}


def _map_leaves(tree, fn):
  if isinstance(tree, dict):
    return {key: _map_leaves(child, fn) for key, child in tree.items()}
  return fn(tree)


def from_hf(tensors: dict[str, np.ndarray], hf_config_json: dict, model_config) -> dict:
  expected = hf_config(model_config)
  actual = dict(hf_config_json)
  if isinstance(actual.get("layout"), (str, list)):
    try:
      actual["layout"] = _layout_string(actual["layout"])
    except ValueError:
      pass
  check_config({field: expected[field] for field in _ARCHITECTURE_FIELDS}, actual,
               target=f"the H-Net config (layout {expected['layout']})")
  shapes = _abstract_shapes(model_config)
  names = {path: _hf_name(path) for path in shapes}
  hf_shapes = {name: tuple(_to_hf_array(np.empty(shapes[path], np.int8), kind).shape)
               for path, (name, kind) in names.items()}
  check_tensor_names(hf_shapes, tensors)
  flat = {}
  for path, (name, kind) in names.items():
    array = np.asarray(tensors[name])
    if array.dtype != np.float32:
      raise ExportError(f"tensor {name} is {array.dtype}; the H-Net parameters are float32 "
                        "(re-export in float32).")
    flat[path] = _from_hf_array(array, kind)
  return unflatten_params(flat)
