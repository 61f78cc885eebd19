"""Configuration of the H-Net byte-level language model (dynamic chunking), for
`AutoConfig.from_pretrained(dir, trust_remote_code=True)`.

Self-contained: imports only transformers and the standard library.

A layout names the layers of every stage, outermost first: "m" a Mamba-2 layer, "T"
a Transformer layer, with counts ("m4", "T1m4"). One routing stage is
"[encoder, main, decoder]"; for two stages the main network is itself such a list:
"[m4, [T1m4, T27, m4T1], m4]". Per-level lists (one entry per level, S + 1 for S
routing stages): d_model, num_heads, mlp_dim, window (0 = full causal attention). Per
routing stage: target_ratio (the compression the model was trained towards) and
capacity_factor (0 = the exact semantics, every boundary kept; > 0 reproduces the
training-time static chunk capacity min(L, round_up(ceil(L * factor / N), 8)), whose
overflowing boundaries are dropped).
"""
from __future__ import annotations

import re

from transformers import PretrainedConfig

_SEGMENT = re.compile(r"([A-Za-z])(\d+)")


def parse_blocks(spec: str) -> list[str]:
  """"T1m4" -> ["T", "m", "m", "m", "m"]; "" -> []."""
  spec = spec.strip()
  kinds, pos = [], 0
  for match in _SEGMENT.finditer(spec):
    if match.start() != pos:
      break
    if match.group(1) not in ("m", "T"):
      raise ValueError(f"unknown block kind {match.group(1)!r} in layout {spec!r}: use m or T")
    kinds += [match.group(1)] * int(match.group(2))
    pos = match.end()
  if pos != len(spec):
    raise ValueError(f"cannot read layout segment {spec!r}: expected e.g. 'm4', 'T22', 'T1m4'")
  return kinds


def _nested(text: str):
  """"[m4, [T1m4, T27, m4T1], m4]" -> nested lists of strings."""
  tokens = re.findall(r"\[|\]|[^\[\],\s]+", text)
  pos = 0

  def value():
    nonlocal pos
    if pos >= len(tokens) or tokens[pos] == "]":
      raise ValueError(f"malformed layout {text!r}")
    token = tokens[pos]
    pos += 1
    if token != "[":
      return token.strip("'\"")
    items = []
    while pos < len(tokens) and tokens[pos] != "]":
      items.append(value())
    if pos >= len(tokens):
      raise ValueError(f"unbalanced brackets in layout {text!r}")
    pos += 1
    return items

  out = value()
  if pos != len(tokens):
    raise ValueError(f"trailing text in layout {text!r}")
  return out


def parse_layout(spec) -> list[dict[str, list[str]]]:
  """Layout (string or nested list) -> one dict per level, outermost first: outer
  levels {"encoder", "decoder"}, the innermost {"main"} (lists of "m"/"T")."""
  if isinstance(spec, str):
    spec = _nested(spec) if spec.strip().startswith("[") else spec
  if isinstance(spec, str):
    return [{"main": parse_blocks(spec)}]
  spec = list(spec)
  if len(spec) == 1:
    return parse_layout(spec[0])
  if len(spec) != 3 or not isinstance(spec[0], str) or not isinstance(spec[2], str):
    raise ValueError(f"a stage layout is [encoder, main, decoder]; got {spec!r}")
  return [{"encoder": parse_blocks(spec[0]), "decoder": parse_blocks(spec[2])}] + parse_layout(spec[1])


class HNetConfig(PretrainedConfig):
  model_type = "hnet"

  vocab_size: int = 264
  layout: str = "[m4, T22, m4]"
  d_model: list | None = None
  num_heads: list | None = None
  mlp_dim: list | None = None
  window: list | None = None
  target_ratio: list | None = None
  capacity_factor: list | None = None
  d_state: int = 128
  headdim: int = 64
  expand: int = 2
  d_conv: int = 4
  ngroups: int = 1
  ssd_chunk_size: int = 64
  norm_eps: float = 1e-6
  mamba_norm_eps: float = 1e-5
  rope_base: float = 10000.0
  initializer_range: float = 0.02
  use_mamba_kernels: bool = True
  use_cache: bool = True
  tie_word_embeddings: bool = False
  pad_token_id: int | None = 256
  bos_token_id: int | None = 257
  eos_token_id: int | None = 258

  def __post_init__(self, **kwargs):
    levels = len(parse_layout(self.layout))
    stages = levels - 1
    defaults = {"d_model": [1024] * levels, "num_heads": [16] * levels,
                "mlp_dim": [4096] * levels, "window": [0] * levels,
                "target_ratio": [6.0] * stages, "capacity_factor": [0.0] * stages}
    for name, default in defaults.items():
      value = getattr(self, name)
      if value is None:
        value = default
      elif not isinstance(value, (list, tuple)):
        value = [value] * len(default)
      value = list(value)
      if len(value) != len(default):
        raise ValueError(f"HNetConfig.{name} has {len(value)} entries but layout {self.layout!r} "
                         f"needs {len(default)}")
      setattr(self, name, value)
    if any(b < a for a, b in zip(self.d_model, self.d_model[1:])):
      raise ValueError(f"HNetConfig.d_model must not shrink inward: {self.d_model}")
    super().__post_init__(**kwargs)

  @property
  def num_stages(self) -> int:
    return len(parse_layout(self.layout)) - 1
