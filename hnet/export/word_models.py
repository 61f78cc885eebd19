"""HAT (hnet/models/hat.py) and the word-pooled LMs, Learn Your Tokens and Byte2Word
(hnet/models/word_pooled.py) <-> remote code: HnetHATForCausalLM and
HnetWordPooledForCausalLM (hnet/export/remote/hat/, remote/word_pooled/, with the shared
torch layers of remote/words/ and the word splitter: hnet/text/splitter.py itself,
copied into the export as splitter.py, so the export splits words exactly as the
run's training data did).

Conventions (each checked logit for logit in tests/test_export_hf_words.py): every
block is our pre-norm Llama block (RMSNorm eps 1e-6 in float32, half-split RoPE with
theta 10000, SwiGLU, no biases, Dense kernels [in, out] -> torch weights [out, in]),
exported with Llama's layer names; learned vectors (the pooling query [H, Dh], the CLS
vectors [C, D], the first-word vector [D]) keep their shapes.

HAT's config.json follows the published TFree-HAT (`hierarchical_autoregressive_transformer`)
config's field names where our model has the same quantity; MODEL_CARD_NOTES_HAT says
which differ and why.
"""
from __future__ import annotations

import pathlib
from typing import Any

import numpy as np

from hnet.export.family import ExportError, FamilyExport, check_config, check_tensor_names

REMOTE = pathlib.Path(__file__).parent / "remote"
SPLITTER_SOURCE = pathlib.Path(__file__).parent.parent / "text" / "splitter.py"
COMMON_FILES = [REMOTE / "words" / "hnet_word_layers.py"]
RMS_NORM_EPS = 1e-6       # hnet/layers/norm.py
ROPE_THETA = 10000.0      # hnet/layers/attention.py, hnet/layers/pooling.py
MAX_POSITION_EMBEDDINGS = 262144  # RoPE has no trained limit; TFree-HAT's value

MODEL_CARD_NOTES_HAT = """- config.json uses the field names of the published TFree-HAT checkpoints
  (`hierarchical_autoregressive_transformer`) where this model has the same quantity:
  encoder_config / backbone_config / decoder_config (Llama fields), their
  cross_attention_config, max_word_size, sliding_window, special_token_dict. It differs
  where the models differ: model_type is `hnet_hat` (the modeling code and tensor names
  are hnet's, not Aleph Alpha's); the encoder's cross_attention_config describes hnet's
  word pooling (one learned query per head, RoPE with the word position on the query and
  byte positions on the keys; hidden_size_q is the pooled word's width, not a query
  input's); the decoder's cross-attention has a single key (the word vector predicting the
  current word), so it is a projection o_proj(v_proj(RMSNorm(word))) and
  word_window_size is 1; hnet_pooling and hnet_decoder_input_proj are hnet's own
  fields; no key/query norm (key_query_norm false), RoPE rotate-half (is_neox_style true).
- The word splitter (`splitter.py`) is hnet's (hnet/text/splitter.py), written to the
  published `hat-splitter` 0.1.10's rules (the same words on the corpora of
  tools/compare_splitter.py); it also accepts invalid UTF-8 and lone surrogates.
- generate() recomputes the whole prefix at every step (no KV cache in this export).
"""
MODEL_CARD_NOTES_WORD_POOLED = """- Word splitter: hnet's (`splitter.py`, hnet/text/splitter.py), with
  max_word_size = the run's bytes per word slot.
- generate() recomputes the whole prefix at every step (no KV cache in this export).
"""


def _float32(x) -> np.ndarray:
  return np.ascontiguousarray(np.asarray(x, np.float32))


def _get(tree, path):
  for key in path:
    tree = tree[key] if key in tree else tree[str(key)]
  return tree


def _set(tree: dict, path, value) -> None:
  for key in path[:-1]:
    tree = tree.setdefault(key, {})
  tree[path[-1]] = value


# (our path inside a TransformerBlock, Llama name, transposed?)
_BLOCK = (
    (("attn_norm", "scale"), "input_layernorm.weight", False),
    (("attn", "query", "kernel"), "self_attn.q_proj.weight", True),
    (("attn", "key", "kernel"), "self_attn.k_proj.weight", True),
    (("attn", "value", "kernel"), "self_attn.v_proj.weight", True),
    (("attn", "out", "kernel"), "self_attn.o_proj.weight", True),
    (("mlp_norm", "scale"), "post_attention_layernorm.weight", False),
    (("mlp", "gate", "kernel"), "mlp.gate_proj.weight", True),
    (("mlp", "up", "kernel"), "mlp.up_proj.weight", True),
    (("mlp", "down", "kernel"), "mlp.down_proj.weight", True),
)


def _blocks(ours: tuple, theirs: str, count: int):
  return [(ours + (i,) + o, f"{theirs}.{i}.{t}", tr) for i in range(count) for o, t, tr in _BLOCK]


def _pooling_pairs(kind: str, ours: tuple, theirs: str, num_layers: int):
  if kind == "query":
    return [(ours + ("norm", "scale"), f"{theirs}.norm.weight", False),
            (ours + ("query",), f"{theirs}.query", False),
            (ours + ("key", "kernel"), f"{theirs}.k_proj.weight", True),
            (ours + ("value", "kernel"), f"{theirs}.v_proj.weight", True),
            (ours + ("out", "kernel"), f"{theirs}.o_proj.weight", True)]
  if kind == "cls":
    return ([(ours + ("cls",), f"{theirs}.cls", False),
             (ours + ("norm", "scale"), f"{theirs}.norm.weight", False),
             (ours + ("out", "kernel"), f"{theirs}.o_proj.weight", True)]
            + _blocks(ours + ("layers",), f"{theirs}.layers", num_layers))
  if kind == "mean":
    return [(ours + ("norm", "scale"), f"{theirs}.norm.weight", False),
            (ours + ("out", "kernel"), f"{theirs}.o_proj.weight", True)]
  raise ExportError(f"pooling {kind!r} has no export; known: query, cls, mean")


def _g(model_config, name, default=None):
  """As the model builders read optional fields: missing or falsy -> default."""
  return model_config.get(name, default) or default


# ------------------------------------------------------------------------------ HAT

def _llama(dim, layers, heads, kv_heads, mlp, *, window=None, vocab=0) -> dict[str, Any]:
  return {"hidden_size": dim, "num_hidden_layers": layers, "num_attention_heads": heads,
          "num_key_value_heads": kv_heads or heads, "intermediate_size": mlp,
          "rms_norm_eps": RMS_NORM_EPS, "rope_theta": ROPE_THETA, "rope_scaling": None,
          "mlp_bias": False, "hidden_act": "silu", "sliding_window": window,
          "max_position_embeddings": MAX_POSITION_EMBEDDINGS, "vocab_size": vocab,
          "key_query_norm": False, "key_query_norm_per_head": False, "is_neox_style": True}


def _cross(inner, q, kv, heads, **extra) -> dict[str, Any]:
  return {"hidden_size": inner, "hidden_size_q": q, "hidden_size_kv": kv,
          "num_attention_heads": heads, "attention_num_kv_heads": heads, "word_window_size": 1,
          "key_query_norm": False, "key_query_norm_per_head": False, **extra}


def _hat_config(m) -> dict[str, Any]:
  window = _g(m, "window")
  vocab, De, D, Dd = int(m.vocab_size), int(m.encoder_dim), int(m.dim), int(m.decoder_dim)
  pooling = _g(m, "pooling", "query")
  pool_heads = int(_g(m, "pooling_heads") or m.num_heads)
  pool_extra = {"hnet_num_cls": 4, "hnet_num_layers": 2, "hnet_intermediate_size": 3 * De}
  encoder = _llama(De, int(m.encoder_layers), int(m.encoder_heads), _g(m, "encoder_kv_heads"),
                   int(m.encoder_mlp_dim), window=window, vocab=vocab)
  encoder["cross_attention_config"] = _cross(De, D, De, pool_heads, **pool_extra)
  decoder = _llama(Dd, int(m.decoder_layers), int(m.decoder_heads), _g(m, "decoder_kv_heads"),
                   int(m.decoder_mlp_dim), window=window, vocab=vocab)
  heads = int(m.decoder_heads)
  decoder.update(cross_attn_every_layer=True,
                 cross_attention_config=_cross(heads * (Dd // heads), Dd, D, heads))
  return {"architectures": ["HnetHATForCausalLM"], "model_type": "hnet_hat",
          "auto_map": {"AutoConfig": "configuration_hnet_hat.HnetHATConfig",
                       "AutoModelForCausalLM": "modeling_hnet_hat.HnetHATForCausalLM"},
          "vocab_size": vocab, "encoder_config": encoder,
          "backbone_config": _llama(D, int(m.num_layers), int(m.num_heads),
                                    _g(m, "num_kv_heads"), int(m.mlp_dim)),
          "decoder_config": decoder, "max_word_size": int(m.max_word_len),
          "sliding_window": window, "max_position_embeddings": MAX_POSITION_EMBEDDINGS,
          "special_token_dict": {"<pad>": 256, "<bos>": 257, "<eos>": 258},
          "hnet_pooling": pooling, "hnet_decoder_input_proj": Dd != De,
          "tie_word_embeddings": False, "dtype": "float32"}


def _hat_pairs(m):
  pooling = _g(m, "pooling", "query")
  pairs = [(("embed", "embedding"), "encoder.embed_tokens.weight", False),
           (("first_word",), "backbone.first_word", False),
           (("final_norm", "scale"), "decoder.norm.weight", False),
           (("head", "kernel"), "lm_head.weight", True)]
  pairs += _blocks(("encoder",), "encoder.layers", int(m.encoder_layers))
  pairs += _pooling_pairs(pooling, ("pooling",), "encoder.pooling", 2)
  pairs += _blocks(("backbone",), "backbone.layers", int(m.num_layers))
  if int(m.decoder_dim) != int(m.encoder_dim):
    pairs.append((("decoder_in", "kernel"), "decoder.input_projection.weight", True))
  for i in range(int(m.decoder_layers)):
    p = f"decoder.layers.{i}"
    pairs += [(("decoder", i, "word_norm", "scale"), f"{p}.cross_attention.norm.weight", False),
              (("decoder", i, "cross_value", "kernel"), f"{p}.cross_attention.v_proj.weight", True),
              (("decoder", i, "cross_out", "kernel"), f"{p}.cross_attention.o_proj.weight", True)]
    pairs += [(("decoder", i, "block") + o, f"{p}.block.{t}", tr) for o, t, tr in _BLOCK]
  return pairs


# ------------------------------------------------------------------------------ LYT / Byte2Word

def _word_pooled_config(m) -> dict[str, Any]:
  default_pooling = "query" if m.name == "byte2word" else "cls"
  Db, dec_heads = int(m.byte_dim), int(m.decoder_heads)
  return {"architectures": ["HnetWordPooledForCausalLM"], "model_type": "hnet_word_pooled",
          "auto_map": {"AutoConfig": "configuration_hnet_word_pooled.HnetWordPooledConfig",
                       "AutoModelForCausalLM":
                           "modeling_hnet_word_pooled.HnetWordPooledForCausalLM"},
          "hnet_family": m.name, "vocab_size": int(m.vocab_size), "byte_hidden_size": Db,
          "pooling": _g(m, "pooling", default_pooling), "num_cls": int(_g(m, "num_cls", 4)),
          "pooling_layers": int(_g(m, "pooling_layers", 2)),
          "pooling_heads": int(_g(m, "pooling_heads") or dec_heads),
          "pooling_intermediate_size": int(m.decoder_mlp_dim),
          "backbone_config": {"hidden_size": int(m.dim), "num_hidden_layers": int(m.num_layers),
                              "num_attention_heads": int(m.num_heads),
                              "num_key_value_heads": int(_g(m, "num_kv_heads") or m.num_heads),
                              "intermediate_size": int(m.mlp_dim)},
          "decoder_config": {"num_hidden_layers": int(m.decoder_layers),
                             "num_attention_heads": dec_heads, "num_key_value_heads": dec_heads,
                             "intermediate_size": int(m.decoder_mlp_dim)},
          "max_word_size": int(_g(m, "max_word_len", 24)), "rms_norm_eps": RMS_NORM_EPS,
          "rope_theta": ROPE_THETA, "tie_word_embeddings": False, "dtype": "float32"}


def _word_pooled_pairs(m):
  config = _word_pooled_config(m)
  pairs = [(("embed", "embedding"), "embed_tokens.weight", False),
           (("first_word",), "backbone.first_word", False),
           (("decoder_in", "kernel"), "decoder.input_projection.weight", True),
           (("final_norm", "scale"), "decoder.norm.weight", False),
           (("head", "kernel"), "lm_head.weight", True)]
  pairs += _pooling_pairs(config["pooling"], ("pooling",), "pooling", config["pooling_layers"])
  pairs += _blocks(("backbone",), "backbone.layers", int(m.num_layers))
  pairs += _blocks(("decoder",), "decoder.layers", int(m.decoder_layers))
  return pairs


# ------------------------------------------------------------------------------ the seam

def _family(model_config):
  if model_config.name == "hat":
    return _hat_config(model_config), _hat_pairs(model_config), REMOTE / "hat", "hnet_hat"
  if model_config.name in ("lyt", "byte2word"):
    return (_word_pooled_config(model_config), _word_pooled_pairs(model_config),
            REMOTE / "word_pooled", "hnet_word_pooled")
  raise ExportError(f"hnet.export.word_models exports hat, lyt and byte2word, not "
                    f"{model_config.name!r}")


def remote_files(model_config) -> list[pathlib.Path]:
  """The family's configuration and modeling files, the shared layers, and
  hnet/text/splitter.py itself (copied as splitter.py: the export splits words with the
  very code the run's data was split with)."""
  _, _, directory, stem = _family(model_config)
  return [directory / f"configuration_{stem}.py", directory / f"modeling_{stem}.py",
          *COMMON_FILES, SPLITTER_SOURCE]


def to_hf(params: dict, model_config) -> FamilyExport:
  config, pairs, _, _ = _family(model_config)
  tensors = {}
  for ours, theirs, transpose in pairs:
    value = np.asarray(_get(params, ours))
    tensors[theirs] = _float32(value.T if transpose else value)
  return FamilyExport(config=config, tensors=tensors, remote_files=remote_files(model_config),
                      generation_config={})


def expected_shapes(model_config) -> dict[str, tuple[int, ...]]:
  """HF tensor name -> shape, from a freshly built model of `model_config` (no weights
  are kept: shapes only)."""
  from flax import nnx
  from hnet.models import build_model
  abstract = nnx.eval_shape(lambda: build_model(model_config, nnx.Rngs(0)))
  state = nnx.to_pure_dict(nnx.state(abstract, nnx.Param))
  _, pairs, _, _ = _family(model_config)
  shapes = {}
  for ours, theirs, transpose in pairs:
    shape = tuple(_get(state, ours).shape)
    shapes[theirs] = shape[::-1] if transpose else shape
  return shapes


def from_hf(tensors: dict[str, np.ndarray], hf_config_json: dict, model_config) -> dict:
  config, pairs, _, _ = _family(model_config)
  check_config({k: v for k, v in config.items() if k not in ("dtype",)}, hf_config_json,
               target=f"the {model_config.name} config")
  check_tensor_names(expected_shapes(model_config), tensors)
  params: dict[str, Any] = {}
  for ours, theirs, transpose in pairs:
    value = tensors[theirs]
    _set(params, ours, _float32(value.T if transpose else value))
  return params
