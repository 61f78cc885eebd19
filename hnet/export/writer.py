"""Writing and reading a Hugging Face model directory (no torch needed for either).

  out/config.json                  FamilyExport.config (+ token ids from the tokenizer)
  out/model.safetensors            all tensors, or, above `max_shard_bytes`,
  out/model-0000k-of-0000n.safetensors + model.safetensors.index.json
  out/generation_config.json
  out/tokenizer.json, tokenizer_config.json, special_tokens_map.json
  out/<remote code files>          copied verbatim (FamilyExport.remote_files)
  out/README.md                    the model card
  out/hnet_run.json                the run's config, step and held-out bpb (export_run)

Weights are safetensors only: loading them runs no pickled code.
"""
from __future__ import annotations

import json
import os
import pathlib
import shutil
from typing import Any, Mapping

import numpy as np
from safetensors.numpy import load_file, save_file

from hnet.export.family import ExportError, FamilyExport

WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
DEFAULT_MAX_SHARD_BYTES = 2 * 1024 ** 3  # shards of at most 2 GiB (one tensor may exceed it)


def _shards(tensors: Mapping[str, np.ndarray], max_shard_bytes: int) -> list[dict[str, np.ndarray]]:
  """Tensors in name order, cut into groups of at most max_shard_bytes (a tensor larger
  than the limit gets a shard of its own)."""
  shards: list[dict[str, np.ndarray]] = [{}]
  size = 0
  for name in sorted(tensors):
    nbytes = tensors[name].nbytes
    if shards[-1] and size + nbytes > max_shard_bytes:
      shards.append({})
      size = 0
    shards[-1][name] = tensors[name]
    size += nbytes
  return shards


def write_weights(out: pathlib.Path, tensors: Mapping[str, np.ndarray],
                  max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES) -> list[str]:
  """Writes model.safetensors, or shards and their index; returns the file names."""
  tensors = {name: np.ascontiguousarray(value) for name, value in tensors.items()}
  shards = _shards(tensors, max_shard_bytes)
  metadata = {"format": "pt"}  # transformers loads safetensors files marked "pt"
  if len(shards) == 1:
    save_file(shards[0], str(out / WEIGHTS_NAME), metadata=metadata)
    return [WEIGHTS_NAME]
  names, weight_map = [], {}
  for index, shard in enumerate(shards):
    name = f"model-{index + 1:05d}-of-{len(shards):05d}.safetensors"
    save_file(shard, str(out / name), metadata=metadata)
    names.append(name)
    weight_map.update({tensor: name for tensor in shard})
  index_json = {"metadata": {"total_size": int(sum(t.nbytes for t in tensors.values()))},
                "weight_map": dict(sorted(weight_map.items()))}
  (out / INDEX_NAME).write_text(json.dumps(index_json, indent=2) + "\n")
  return names + [INDEX_NAME]


def write_json(path: pathlib.Path, content: Mapping[str, Any]) -> None:
  path.write_text(json.dumps(content, indent=2, sort_keys=True) + "\n")


def write_hf_dir(out: str | os.PathLike, export: FamilyExport, *,
                 tokenizer_files: Mapping[str, str], model_card: str,
                 max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES) -> pathlib.Path:
  """Writes the whole directory (created if missing; files of an earlier export with the
  same names are replaced, stale weight shards removed)."""
  out = pathlib.Path(out)
  out.mkdir(parents=True, exist_ok=True)
  for stale in list(out.glob("model*.safetensors")) + [out / INDEX_NAME]:
    if stale.exists():
      stale.unlink()
  write_weights(out, export.tensors, max_shard_bytes)
  write_json(out / "config.json", export.config)
  write_json(out / "generation_config.json", export.generation_config)
  for name, text in tokenizer_files.items():
    (out / name).write_text(text)
  for path in export.remote_files:
    shutil.copyfile(path, out / pathlib.Path(path).name)
  (out / "README.md").write_text(model_card)
  return out


def read_config(hf_dir: str | os.PathLike) -> dict[str, Any]:
  path = pathlib.Path(hf_dir) / "config.json"
  if not path.exists():
    raise ExportError(f"{path} not found: --hf must be a Hugging Face model directory "
                      "(written by tools/export_hf.py or save_pretrained).")
  return json.loads(path.read_text())


def read_tensors(hf_dir: str | os.PathLike) -> dict[str, np.ndarray]:
  """All tensors of model.safetensors or of the shards its index names (safetensors
  only: a directory with only pytorch_model.bin is refused, pickles are never loaded)."""
  hf_dir = pathlib.Path(hf_dir)
  if (hf_dir / INDEX_NAME).exists():
    weight_map = json.loads((hf_dir / INDEX_NAME).read_text())["weight_map"]
    files = sorted(set(weight_map.values()))
  elif (hf_dir / WEIGHTS_NAME).exists():
    files = [WEIGHTS_NAME]
  else:
    found = sorted(p.name for p in hf_dir.glob("*.bin"))
    raise ExportError(f"{hf_dir} holds no {WEIGHTS_NAME} (nor {INDEX_NAME})"
                      + (f"; {', '.join(found)} are pickle files, which are never loaded: "
                         "convert them to safetensors first" if found else "") + ".")
  tensors: dict[str, np.ndarray] = {}
  for name in files:
    tensors.update(load_file(str(hf_dir / name)))
  return tensors


def model_card(*, repo_name: str, family: str, architecture: str, config_json: str, step: int,
               held_out: Mapping[str, float] | None, remote_code: bool, usage: str,
               notes: str = "") -> str:
  """README.md of the export: what the model is, how it was trained, its held-out bpb."""
  if held_out:
    bpb = (f"**{held_out['bpb']:.4f}** bits per byte on the run's held-out split "
           f"({int(held_out['bytes']):,} bytes; {held_out.get('source', 'measured at export')})")
  else:
    bpb = "not measured"
  trust = ("This export uses remote code (the modeling files in this directory): load it "
           "with `trust_remote_code=True`." if remote_code else
           "This is a native transformers architecture: no remote code is needed.")
  return f"""---
library_name: transformers
tags:
- hnet
- byte-level
---
# {repo_name}

A `{family}` model trained with hnet (byte-level language models in JAX) and exported to Hugging Face
format as `{architecture}`. {trust}

- Training steps: {step}
- Held-out bpb: {bpb}
{notes}
## Usage

```python
{usage.strip()}
```

## Training config (hnet `config.json` of the run)

```json
{config_json.strip()}
```
"""

