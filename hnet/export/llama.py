"""Byte / BPE Transformer (hnet/models/transformer.py) <-> LlamaForCausalLM, or
MistralForCausalLM when model.window is set. Native: no remote code.

Every convention was checked against transformers' modeling_llama.py / modeling_mistral.py
(5.24) and is tested logit for logit (tests/test_export_hf.py):
  - RMSNorm: x * rsqrt(mean(x^2) + eps) * weight in float32, eps 1e-6 (ours,
    hnet/layers/norm.py) = LlamaRMSNorm with rms_norm_eps = 1e-6; pre-norm before
    attention and MLP, one final norm before the head.
  - RoPE: ours is the half-split ("rotate-half") layout with inv_freq = theta^(-i / (Dh/2)),
    i < Dh/2, theta 10000 (hnet/layers/rope.py) = Llama's default rope, which pairs
    dimension i with i + Dh/2. No permutation of the q/k rows is needed (that is only
    for checkpoints with interleaved pairs).
  - Projections: our Dense kernels are [in, out]; torch Linear weights are [out, in], so
    every kernel is transposed. q [D, H*Dh] and k/v [D, K*Dh] are head-major (head h =
    columns h*Dh:(h+1)*Dh), as q_proj/k_proj/v_proj view their outputs. No biases.
  - Grouped-query heads: our query head h reads kv head h // (H/K), as repeat_kv does.
  - SwiGLU: down(silu(gate(x)) * up(x)) = Llama's down_proj(act(gate_proj(x)) * up_proj(x)).
  - Attention scale 1/sqrt(Dh); sliding window: key j is seen from query i when
    0 <= i - j < window, as Mistral's mask (kv_idx > q_idx - sliding_window).
  - Embeddings [V, D] as they are; the untied head kernel [D, V] -> lm_head [V, D];
    tied runs (model.tie_embeddings) export tie_word_embeddings = true and no lm_head.
  - Vocabulary: the padded size (264 for bytes, the BPE size rounded up to 8) is the
    model's vocab_size; the unused ids are suppressed in generation_config.json.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from hnet.export.family import ExportError, FamilyExport, check_config, check_tensor_names

ROPE_THETA = 10000.0      # hnet/layers/attention.py Attention(rope_base) default, used by the Transformer
RMS_NORM_EPS = 1e-6       # hnet/layers/norm.py RMSNorm default
# RoPE has no trained length limit; this only sizes transformers' position bookkeeping.
MAX_POSITION_EMBEDDINGS = 8192


def _dims(model_config) -> dict[str, int]:
  heads = int(model_config.num_heads)
  kv_heads = int(model_config.get("num_kv_heads") or heads)
  return {"dim": int(model_config.dim), "layers": int(model_config.num_layers), "heads": heads,
          "kv_heads": kv_heads, "head_dim": int(model_config.dim) // heads,
          "mlp": int(model_config.mlp_dim), "vocab": int(model_config.vocab_size)}


def hf_config(model_config) -> dict[str, Any]:
  """The config.json fields that describe `model_config` (token ids are added by export_run)."""
  if model_config.get("dtype", "float32") not in ("float32", "bfloat16"):
    raise ExportError(f"model.dtype {model_config.dtype!r} is not supported by the export")
  d = _dims(model_config)
  window = int(model_config.get("window") or 0)
  config = {
      "architectures": ["MistralForCausalLM" if window else "LlamaForCausalLM"],
      "model_type": "mistral" if window else "llama",
      "vocab_size": d["vocab"], "hidden_size": d["dim"], "intermediate_size": d["mlp"],
      "num_hidden_layers": d["layers"], "num_attention_heads": d["heads"],
      "num_key_value_heads": d["kv_heads"], "head_dim": d["head_dim"], "hidden_act": "silu",
      "rms_norm_eps": RMS_NORM_EPS,
      "rope_parameters": {"rope_type": "default", "rope_theta": ROPE_THETA},
      "tie_word_embeddings": bool(model_config.get("tie_embeddings", False)),
      "max_position_embeddings": MAX_POSITION_EMBEDDINGS, "attention_dropout": 0.0,
      "dtype": "float32"}
  if window:
    config["sliding_window"] = window
  else:
    config.update({"attention_bias": False, "mlp_bias": False})
  return config


def _tensor_shapes(model_config) -> dict[str, tuple[int, ...]]:
  d = _dims(model_config)
  q, kv = d["heads"] * d["head_dim"], d["kv_heads"] * d["head_dim"]
  shapes = {"model.embed_tokens.weight": (d["vocab"], d["dim"]), "model.norm.weight": (d["dim"],)}
  if not model_config.get("tie_embeddings", False):
    shapes["lm_head.weight"] = (d["vocab"], d["dim"])
  for i in range(d["layers"]):
    p = f"model.layers.{i}."
    shapes.update({p + "input_layernorm.weight": (d["dim"],),
                   p + "post_attention_layernorm.weight": (d["dim"],),
                   p + "self_attn.q_proj.weight": (q, d["dim"]),
                   p + "self_attn.k_proj.weight": (kv, d["dim"]),
                   p + "self_attn.v_proj.weight": (kv, d["dim"]),
                   p + "self_attn.o_proj.weight": (d["dim"], q),
                   p + "mlp.gate_proj.weight": (d["mlp"], d["dim"]),
                   p + "mlp.up_proj.weight": (d["mlp"], d["dim"]),
                   p + "mlp.down_proj.weight": (d["dim"], d["mlp"])})
  return shapes


# (our path inside a layer, HF name inside model.layers.i, transposed?)
_LAYER_MAP = (
    (("attn_norm", "scale"), "input_layernorm.weight", False),
    (("mlp_norm", "scale"), "post_attention_layernorm.weight", False),
    (("attn", "query", "kernel"), "self_attn.q_proj.weight", True),
    (("attn", "key", "kernel"), "self_attn.k_proj.weight", True),
    (("attn", "value", "kernel"), "self_attn.v_proj.weight", True),
    (("attn", "out", "kernel"), "self_attn.o_proj.weight", True),
    (("mlp", "gate", "kernel"), "mlp.gate_proj.weight", True),
    (("mlp", "up", "kernel"), "mlp.up_proj.weight", True),
    (("mlp", "down", "kernel"), "mlp.down_proj.weight", True),
)


def _get(tree, path):
  for key in path:
    tree = tree[key] if key in tree else tree[str(key)]
  return tree


def _float32(x) -> np.ndarray:
  return np.ascontiguousarray(np.asarray(x, np.float32))


def to_hf(params: dict, model_config) -> FamilyExport:
  d = _dims(model_config)
  tensors = {"model.embed_tokens.weight": _float32(params["embed"]["embedding"]),
             "model.norm.weight": _float32(params["final_norm"]["scale"])}
  if not model_config.get("tie_embeddings", False):
    tensors["lm_head.weight"] = _float32(np.asarray(params["head"]["kernel"]).T)
  for i in range(d["layers"]):
    layer = _get(params, ("layers", i))
    for ours, theirs, transpose in _LAYER_MAP:
      value = np.asarray(_get(layer, ours))
      tensors[f"model.layers.{i}.{theirs}"] = _float32(value.T if transpose else value)
  check_tensor_names(_tensor_shapes(model_config), tensors)
  return FamilyExport(config=hf_config(model_config), tensors=tensors, remote_files=[],
                      generation_config={})


def from_hf(tensors: dict[str, np.ndarray], hf_config_json: dict, model_config) -> dict:
  expected = hf_config(model_config)
  check_config({k: v for k, v in expected.items() if k not in ("max_position_embeddings", "dtype")},
               hf_config_json, target=f"the {model_config.name} config")
  check_tensor_names(_tensor_shapes(model_config), tensors)
  d = _dims(model_config)
  params: dict[str, Any] = {"embed": {"embedding": _float32(tensors["model.embed_tokens.weight"])},
                            "final_norm": {"scale": _float32(tensors["model.norm.weight"])},
                            "layers": {}}
  if not model_config.get("tie_embeddings", False):
    params["head"] = {"kernel": _float32(tensors["lm_head.weight"].T)}
  for i in range(d["layers"]):
    layer: dict[str, Any] = {}
    for ours, theirs, transpose in _LAYER_MAP:
      value = tensors[f"model.layers.{i}.{theirs}"]
      node = layer
      for key in ours[:-1]:
        node = node.setdefault(key, {})
      node[ours[-1]] = _float32(value.T if transpose else value)
    params["layers"][i] = layer
  return params
