"""The seam every exportable family implements (hnet/export/__init__.py FAMILIES).

A family module exposes

  to_hf(params: dict, model_config: ConfigDict) -> FamilyExport
      params: the run's parameters as the nested pure dict the checkpoints hold
      (`nnx.to_pure_dict`; list indices may be ints), numpy or jax arrays.
  from_hf(tensors: dict[str, np.ndarray], hf_config: dict, model_config: ConfigDict) -> dict
      the inverse: an exported (or compatible) directory's tensors and config.json ->
      params in the same nested form. It raises ExportError when hf_config does not
      describe `model_config` (naming the first differing field: `check_config`) and
      when tensors are missing or extra (`check_tensor_names`).

Token ids (bos/eos/pad, decoder start) are not the family's business: export_run sets
them in config.json and generation_config.json from the run's tokenizer.
"""
from __future__ import annotations

import dataclasses
import pathlib
from typing import Any, Iterable, Mapping

import numpy as np


class ExportError(ValueError):
  """Bad input to export or import: the message says what to do."""


@dataclasses.dataclass
class FamilyExport:
  config: dict                                  # config.json content (architectures, model_type, auto_map)
  tensors: dict[str, np.ndarray]                # safetensors name -> array (any shape, numpy)
  remote_files: list[pathlib.Path] = dataclasses.field(default_factory=list)  # copied verbatim; [] = native
  generation_config: dict = dataclasses.field(default_factory=dict)


def flatten_params(params: Mapping[str, Any], as_numpy: bool = True) -> dict[str, Any]:
  """Nested params -> {"layers/0/attn/query/kernel": numpy array (or the leaf as it is)}."""
  flat: dict[str, Any] = {}

  def walk(prefix: str, node):
    if isinstance(node, Mapping):
      for key, child in node.items():
        walk(f"{prefix}/{key}" if prefix else str(key), child)
    else:
      flat[prefix] = np.asarray(node) if as_numpy else node
  walk("", params)
  return flat


def unflatten_params(flat: Mapping[str, np.ndarray]) -> dict:
  """{"layers/0/attn/query/kernel": x} -> nested dict; all-digit parts become ints (list
  indices, as nnx.to_pure_dict writes them)."""
  nested: dict = {}
  for name, value in flat.items():
    node = nested
    parts = [int(p) if p.isdigit() else p for p in name.split("/")]
    for part in parts[:-1]:
      node = node.setdefault(part, {})
    node[parts[-1]] = value
  return nested


def check_config(expected: Mapping[str, Any], actual: Mapping[str, Any], *, hf_dir: str = "",
                 target: str = "the target config") -> None:
  """Raises ExportError naming the first field (in `expected`'s order) whose value in the
  HF config.json `actual` differs from what `target` needs."""
  for field, want in expected.items():
    have = actual.get(field, "<missing>")
    if isinstance(want, float) and isinstance(have, (int, float)) and not isinstance(have, bool):
      same = float(have) == want
    else:
      same = have == want
    if not same:
      raise ExportError(f"{hf_dir or 'the HF directory'}/config.json does not match {target}: "
                        f"first differing field {field!r}: config.json has {have!r}, the "
                        f"target needs {want!r}. Import with the config the model was trained "
                        "with (or fix --config overrides).")


def check_tensor_names(expected: Mapping[str, tuple[int, ...]], tensors: Mapping[str, np.ndarray],
                       *, hf_dir: str = "") -> None:
  """Raises ExportError naming missing and extra tensors, or the first shape mismatch."""
  where = hf_dir or "the HF directory"
  missing = sorted(set(expected) - set(tensors))
  extra = sorted(set(tensors) - set(expected))
  if missing or extra:
    parts = []
    if missing:
      parts.append(f"missing tensor(s): {', '.join(missing[:20])}"
                   + (f" (+{len(missing) - 20} more)" if len(missing) > 20 else ""))
    if extra:
      parts.append(f"extra tensor(s): {', '.join(extra[:20])}"
                   + (f" (+{len(extra) - 20} more)" if len(extra) > 20 else ""))
    raise ExportError(f"{where}: the weights do not fit the target config: "
                      + "; ".join(parts) + ". Was it exported from a model of another shape?")
  for name, shape in expected.items():
    if tuple(tensors[name].shape) != tuple(shape):
      raise ExportError(f"{where}: tensor {name} has shape {tuple(tensors[name].shape)}, "
                        f"the target config needs {tuple(shape)}.")

