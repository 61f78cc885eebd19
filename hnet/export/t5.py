"""ByT5 (hnet/models/mrt5.py with model.name "byt5") <-> HnetByT5ForConditionalGeneration,
remote code (hnet/export/remote/byt5/) that subclasses transformers' T5.

Checked against transformers 5.24 modeling_t5.py, convention by convention:
  same as T5 v1.1 -- relative position buckets (relative_position_bucket in
    hnet/layers/relative_position.py computes T5's `_relative_position_bucket`: half the
    buckets exact, log-spaced up to max_distance, sign halves in the bidirectional
    encoder; tested bucket for bucket against torch), one bias table per stack owned by
    block 0 and shared by its self-attention layers, none in cross-attention;
    gated-GELU FFN wo(gelu_tanh(wi_0 x) * wi_1 x) (T5's "gated-gelu" = gelu_new); no
    biases anywhere; RMSNorm (no mean, eps 1e-6, float32) before every sublayer and a
    final norm per stack; one shared input embedding, unscaled; decoder start = a
    configurable id (ours BOS 257, not T5's pad 0: set in config.json).
  NOT as T5 v1.1 -- so this is not exported as T5ForConditionalGeneration:
    1. scaling: our attention multiplies q.k by 1/sqrt(d_kv) before adding the relative
       bias (hnet/layers/attention.py attend); T5 does not scale (scaling = 1.0).
       Folding the factor into the q weights would give the same function but would not
       round-trip bit for bit (32^-0.5 is not a power of two).
    2. the untied head: ours is a separate [D, V] head with no d_model^-0.5 output scale;
       transformers 5.24's T5ForConditionalGeneration always ties lm_head to `shared`
       (T5Config forces tie_word_embeddings = True).
  The remote code keeps T5's module names and sets both (`scaling` = d_kv^-0.5 on every
  T5Attention; lm_head untied), so the tensor names below are T5's.

MrT5 (with a delete gate) is not exported here.
"""
from __future__ import annotations

import pathlib
from typing import Any

import numpy as np

from hnet.export.family import ExportError, FamilyExport, check_config, check_tensor_names

REMOTE_DIR = pathlib.Path(__file__).parent / "remote" / "byt5"
REMOTE_FILES = [REMOTE_DIR / "configuration_hnet_byt5.py", REMOTE_DIR / "modeling_hnet_byt5.py"]
RMS_NORM_EPS = 1e-6
MODEL_CARD_NOTES = """- Architecture: T5 v1.1 (ByT5) with two differences, which is why it ships remote code
  (`modeling_hnet_byt5.py`): attention logits are scaled by 1/sqrt(d_kv) before the
  relative position bias is added, and the output head is untied and unscaled.
- Decoder start: id 257 (`<bos>`); span-corruption runs also feed the first sentinel
  (`<extra_id_0>`, id 259) and their sources end with `<eos>` (the tokenizer adds it).
"""


def _dims(model_config) -> dict[str, int]:
  heads = int(model_config.num_heads)
  return {"dim": int(model_config.dim), "heads": heads,
          "head_dim": int(model_config.get("head_dim") or int(model_config.dim) // heads),
          "mlp": int(model_config.mlp_dim), "vocab": int(model_config.vocab_size),
          "enc": int(model_config.num_encoder_layers), "dec": int(model_config.num_decoder_layers),
          "buckets": int(model_config.get("rel_buckets", 32)),
          "max_distance": int(model_config.get("rel_max_distance", 128))}


def hf_config(model_config) -> dict[str, Any]:
  if model_config.name != "byt5":
    raise ExportError(f"hnet.export.t5 exports ByT5 (model.name 'byt5'), not {model_config.name!r}")
  d = _dims(model_config)
  return {
      "architectures": ["HnetByT5ForConditionalGeneration"], "model_type": "hnet_byt5",
      "auto_map": {"AutoConfig": "configuration_hnet_byt5.HnetByT5Config",
                   "AutoModelForSeq2SeqLM": "modeling_hnet_byt5.HnetByT5ForConditionalGeneration"},
      "vocab_size": d["vocab"], "d_model": d["dim"], "d_kv": d["head_dim"], "d_ff": d["mlp"],
      "num_layers": d["enc"], "num_decoder_layers": d["dec"], "num_heads": d["heads"],
      "relative_attention_num_buckets": d["buckets"],
      "relative_attention_max_distance": d["max_distance"],
      "feed_forward_proj": "gated-gelu", "layer_norm_epsilon": RMS_NORM_EPS,
      "dropout_rate": 0.0, "is_encoder_decoder": True, "tie_word_embeddings": False,
      "dtype": "float32"}


# (our path inside a block, T5 name inside the block, transposed?)
_ENCODER_BLOCK = (
    (("attn_norm", "scale"), "layer.0.layer_norm.weight", False),
    (("attn", "query", "kernel"), "layer.0.SelfAttention.q.weight", True),
    (("attn", "key", "kernel"), "layer.0.SelfAttention.k.weight", True),
    (("attn", "value", "kernel"), "layer.0.SelfAttention.v.weight", True),
    (("attn", "out", "kernel"), "layer.0.SelfAttention.o.weight", True),
    (("mlp_norm", "scale"), "layer.1.layer_norm.weight", False),
    (("mlp", "gate", "kernel"), "layer.1.DenseReluDense.wi_0.weight", True),
    (("mlp", "up", "kernel"), "layer.1.DenseReluDense.wi_1.weight", True),
    (("mlp", "down", "kernel"), "layer.1.DenseReluDense.wo.weight", True),
)
_DECODER_BLOCK = (
    (("self_attn_norm", "scale"), "layer.0.layer_norm.weight", False),
    (("self_attn", "query", "kernel"), "layer.0.SelfAttention.q.weight", True),
    (("self_attn", "key", "kernel"), "layer.0.SelfAttention.k.weight", True),
    (("self_attn", "value", "kernel"), "layer.0.SelfAttention.v.weight", True),
    (("self_attn", "out", "kernel"), "layer.0.SelfAttention.o.weight", True),
    (("cross_attn_norm", "scale"), "layer.1.layer_norm.weight", False),
    (("cross_attn", "query", "kernel"), "layer.1.EncDecAttention.q.weight", True),
    (("cross_attn", "key", "kernel"), "layer.1.EncDecAttention.k.weight", True),
    (("cross_attn", "value", "kernel"), "layer.1.EncDecAttention.v.weight", True),
    (("cross_attn", "out", "kernel"), "layer.1.EncDecAttention.o.weight", True),
    (("mlp_norm", "scale"), "layer.2.layer_norm.weight", False),
    (("mlp", "gate", "kernel"), "layer.2.DenseReluDense.wi_0.weight", True),
    (("mlp", "up", "kernel"), "layer.2.DenseReluDense.wi_1.weight", True),
    (("mlp", "down", "kernel"), "layer.2.DenseReluDense.wo.weight", True),
)
# (our top-level path, T5 name, transposed?)
_TOP = (
    (("embed", "embedding"), "shared.weight", False),
    (("encoder_position_bias", "embedding"),
     "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight", False),
    (("encoder_norm", "scale"), "encoder.final_layer_norm.weight", False),
    (("decoder_position_bias", "embedding"),
     "decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight", False),
    (("decoder_norm", "scale"), "decoder.final_layer_norm.weight", False),
    (("head", "kernel"), "lm_head.weight", True),
)


def _all_pairs(model_config):
  """(our path as a tuple, T5 tensor name, transposed?) for every parameter."""
  d = _dims(model_config)
  pairs = list(_TOP)
  for stack, count, block in (("encoder", d["enc"], _ENCODER_BLOCK), ("decoder", d["dec"], _DECODER_BLOCK)):
    for i in range(count):
      pairs += [((f"{stack}_layers", i) + ours, f"{stack}.block.{i}.{theirs}", transpose)
                for ours, theirs, transpose in block]
  return pairs


def _get(tree, path):
  for key in path:
    tree = tree[key] if key in tree else tree[str(key)]
  return tree


def _float32(x) -> np.ndarray:
  return np.ascontiguousarray(np.asarray(x, np.float32))


def _check_ours(params: dict) -> None:
  if "gate" in params:
    raise ExportError("this run has a delete gate (MrT5): only ByT5 (model.name 'byt5') is "
                      "exportable in this family")


def to_hf(params: dict, model_config) -> FamilyExport:
  _check_ours(params)
  config = hf_config(model_config)
  tensors = {}
  for ours, theirs, transpose in _all_pairs(model_config):
    value = np.asarray(_get(params, ours))
    tensors[theirs] = _float32(value.T if transpose else value)
  return FamilyExport(config=config, tensors=tensors, remote_files=list(REMOTE_FILES),
                      generation_config={})


def _expected_shapes(model_config) -> dict[str, tuple[int, ...]]:
  d = _dims(model_config)
  inner = d["heads"] * d["head_dim"]
  shapes = {}
  for ours, theirs, _ in _all_pairs(model_config):
    leaf = ours[-1]
    if theirs == "shared.weight":
      shape = (d["vocab"], d["dim"])
    elif theirs == "lm_head.weight":
      shape = (d["vocab"], d["dim"])
    elif "relative_attention_bias" in theirs:
      shape = (d["buckets"], d["heads"])
    elif leaf == "scale":
      shape = (d["dim"],)
    elif theirs.endswith((".q.weight", ".k.weight", ".v.weight")):
      shape = (inner, d["dim"])
    elif theirs.endswith(".o.weight"):
      shape = (d["dim"], inner)
    elif theirs.endswith(("wi_0.weight", "wi_1.weight")):
      shape = (d["mlp"], d["dim"])
    else:  # wo
      shape = (d["dim"], d["mlp"])
    shapes[theirs] = shape
  return shapes


# Tensors transformers may write besides ours (save_pretrained of the tied input
# embeddings); they must equal shared.weight and are dropped.
TIED_COPIES = ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight")


def from_hf(tensors: dict[str, np.ndarray], hf_config_json: dict, model_config) -> dict:
  expected = hf_config(model_config)
  check_config({k: v for k, v in expected.items() if k not in ("dtype", "auto_map", "dropout_rate")},
               hf_config_json, target=f"the {model_config.name} config")
  tensors = dict(tensors)
  for name in TIED_COPIES:
    if name in tensors and "shared.weight" in tensors:
      if not np.array_equal(tensors[name], tensors["shared.weight"]):
        raise ExportError(f"{name} differs from shared.weight: our ByT5 shares one input embedding")
      del tensors[name]
  check_tensor_names(_expected_shapes(model_config), tensors)
  params: dict[str, Any] = {}
  for ours, theirs, transpose in _all_pairs(model_config):
    node = params
    for key in ours[:-1]:
      node = node.setdefault(key, {})
    value = tensors[theirs]
    node[ours[-1]] = _float32(value.T if transpose else value)
  return params
