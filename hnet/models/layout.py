"""H-Net layout strings, per-stage hyper-parameters and per-stage learning rates.

A layout names the layers of every stage (paper notation):

  "m4"                       4 Mamba-2 layers
  "T22"                      22 Transformer layers
  "T1m4"                     1 Transformer layer, then 4 Mamba-2 layers
  ["m4", "T22", "m4"]        1 stage: encoder, main network, decoder
  ["m4", ["T1m4", "T27", "m4T1"], "m4"]   2 stages: the main network is itself an H-Net

A layout may be given as a nested list/tuple or as its string form
"[m4, [T1m4, T27, m4T1], m4]" (handy on the command line). `parse_layout` turns it
into `StageLayout`s, outermost first: stage s < S has an encoder and a decoder, the
innermost stage S has the main network only. Widths, heads, MLP sizes and windows are
per-stage lists of length S + 1 in the model config.

Pure Python (no JAX): configs import it to set `train.lr_multipliers`.
"""
from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, Sequence

_SEGMENT = re.compile(r"([A-Za-z])(\d+)")
BLOCK_KINDS = {"m": "mamba2", "T": "transformer"}


@dataclasses.dataclass(frozen=True)
class StageLayout:
  """Block kinds ("m" or "T") of one stage, in order. `main` only at the innermost."""
  encoder: tuple[str, ...] = ()
  decoder: tuple[str, ...] = ()
  main: tuple[str, ...] = ()


def parse_blocks(spec: str) -> tuple[str, ...]:
  """"T1m4" -> ("T", "m", "m", "m", "m"). Empty string -> ()."""
  spec = spec.strip()
  if not spec:
    return ()
  pos, kinds = 0, []
  for match in _SEGMENT.finditer(spec):
    if match.start() != pos:
      break
    kind, count = match.group(1), int(match.group(2))
    if kind not in BLOCK_KINDS:
      raise ValueError(f"unknown block kind {kind!r} in layout {spec!r}; use m (Mamba-2) or T")
    kinds.extend([kind] * count)
    pos = match.end()
  if pos != len(spec):
    raise ValueError(f"cannot parse layout segment {spec!r}: expected e.g. 'm4', 'T22', 'T1m4'")
  return tuple(kinds)


def _parse_string(text: str) -> Any:
  """"[m4, [T1m4, T27, m4T1], m4]" -> nested lists of strings."""
  tokens = re.findall(r"\[|\]|[^\[\],\s]+", text)
  pos = 0

  def value():
    nonlocal pos
    if pos >= len(tokens):
      raise ValueError(f"unexpected end of layout {text!r}")
    token = tokens[pos]
    pos += 1
    if token != "[":
      if token == "]":
        raise ValueError(f"unexpected ']' in layout {text!r}")
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


def parse_layout(spec: str | Sequence[Any]) -> list[StageLayout]:
  """Layout (nested list or its string form) -> [StageLayout], outermost first."""
  if isinstance(spec, str):
    spec = _parse_string(spec) if spec.strip().startswith("[") else spec
  if isinstance(spec, str):
    return [StageLayout(main=parse_blocks(spec))]
  spec = list(spec)
  if len(spec) == 1:
    return parse_layout(spec[0])
  if len(spec) != 3 or not isinstance(spec[0], str) or not isinstance(spec[2], str):
    raise ValueError(f"a stage layout is [encoder, main, decoder] with string encoder/decoder; "
                     f"got {spec!r}")
  outer = StageLayout(encoder=parse_blocks(spec[0]), decoder=parse_blocks(spec[2]))
  return [outer] + parse_layout(spec[1])


def num_stages(spec) -> int:
  """Number of chunking stages S (the layout has S + 1 levels)."""
  return len(parse_layout(spec)) - 1


def per_stage(value, count: int, name: str) -> list:
  """A scalar broadcast to `count` entries, or a list of exactly `count`."""
  if isinstance(value, (list, tuple)):
    if len(value) != count:
      raise ValueError(f"model.{name} has {len(value)} entries but the layout needs {count}")
    return list(value)
  return [value] * count


def length_fractions(target_ratios: Sequence[float]) -> list[float]:
  """L^s / L^0 for s = 0..S from the per-stage target compression N_s."""
  out = [1.0]
  for ratio in target_ratios:
    out.append(out[-1] / float(ratio))
  return out


def stage_lr_multipliers(model_config) -> dict[str, float]:
  """{parameter-path regex: multiplier}: lambda_s = sqrt(4.6 * (L^s/L^0) * (D^S/D^s)).

  L^s/L^0 uses the target compressions (what the ratio loss drives the chunking to);
  D^s are the stage widths. The byte embedding and the head belong to stage 0. Paths
  look like "stages/0/encoder/layers/0/mixer/in_proj/kernel" (see hnet/models/hnet.py).

  `router_lr_multiplier` (optional, None or absent = the stage's lambda, 0 = frozen): a fixed multiplier for
  the routing projections W_q, W_k of every routing stage (a more specific rule, which
  wins over the stage's; see hnet/optim.py lr_multiplier_tree).
  """
  stages = parse_layout(model_config.layout)
  S = len(stages) - 1
  widths = per_stage(list(model_config.d_model), S + 1, "d_model")
  ratios = per_stage(list(model_config.target_ratio), S, "target_ratio") if S else []
  fractions = length_fractions(ratios)
  lambdas = [math.sqrt(4.6 * fractions[s] * widths[S] / widths[s]) for s in range(S + 1)]
  rules = {"^(embed|head)/": lambdas[0]}
  for s in range(S + 1):
    rules[f"^stages/{s}/"] = lambdas[s]
  router_lr = model_config.get("router_lr_multiplier")
  if router_lr is not None:
    for s in range(S):
      rules[f"^stages/{s}/router/"] = float(router_lr)
  return rules
