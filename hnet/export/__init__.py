"""Hugging Face export and import of trained runs.

  export_run(workdir, out, step=None)          a run's checkpoint -> an HF model directory
  import_run(hf_dir, config, workdir)          an HF model directory -> an orbax checkpoint
                                               that train.init_from, tools/eval.py and
                                               tools/sample.py accept

FAMILIES maps config.model.name to the module (imported lazily) that converts that
family's parameters, on the seam of hnet/export/family.py (to_hf / from_hf). Writing
and reading the directory is hnet/export/writer.py; tokenizers hnet/export/tokenizer.py.
Nothing here imports torch: transformers is needed only to load the export.
"""
from __future__ import annotations

import importlib
import json
import logging
import os
import pathlib
from types import ModuleType
from typing import Any

import ml_collections
import numpy as np

from hnet.export import tokenizer as export_tokenizer
from hnet.export import writer
from hnet.export.family import ExportError, FamilyExport, flatten_params, unflatten_params

log = logging.getLogger("hnet")

# config.model.name -> module implementing to_hf / from_hf (hnet/export/family.py).
FAMILIES: dict[str, str] = {
    "transformer": "hnet.export.llama",   # byte and BPE Transformer: Llama / Mistral, native
    "byt5": "hnet.export.t5",             # ByT5: T5 v1.1 + two differences, remote code
    "hat": "hnet.export.hat",             # HAT: HnetHATForCausalLM, remote code
    "lyt": "hnet.export.word_pooled",     # Learn Your Tokens: HnetWordPooledForCausalLM, remote
    "byte2word": "hnet.export.word_pooled",  # Byte2Word: HnetWordPooledForCausalLM, remote
    "mrt5": "hnet.export.mrt5",           # MrT5: HnetMrT5ForConditionalGeneration, remote code
    "hnet": "hnet.export.hnet_family",    # H-Net 1 and 2 stages: remote code (HNetForCausalLM)
}
RUN_FILE = "hnet_run.json"  # in the export: the run's config, step and held-out figures


def family_module(model_name: str) -> ModuleType:
  if model_name not in FAMILIES:
    raise ExportError(f"model family {model_name!r} is not exportable yet; exportable "
                      f"families (config.model.name): {', '.join(sorted(FAMILIES))}.")
  return importlib.import_module(FAMILIES[model_name])


# ------------------------------------------------------------------------------ export

def restore_run(workdir: str, step: int | None):
  """(setup, state, step) of the newest readable checkpoint (or `step`), one device."""
  import jax
  from hnet import checkpoint, sharding
  from hnet.runs import load_config
  from hnet.train import make_setup
  config = load_config(workdir)
  config.mesh.data, config.mesh.fsdp, config.mesh.tensor = 1, 1, 1
  mesh = sharding.make_mesh(1, 1, 1, devices=jax.devices()[:1])
  setup = make_setup(config, mesh)
  manager = checkpoint.make_manager(os.path.join(workdir, "checkpoints"), async_save=False)
  try:
    step, state = checkpoint.restore(manager, setup.abstract_state, None, step)
  except checkpoint.CheckpointError as e:
    raise ExportError(f"cannot export {workdir}: {e}") from e
  finally:
    manager.close()
  return setup, state, step


def held_out_bpb(workdir: str, setup, state, step: int, max_batches: int = 0,
                 use_summary: bool = True) -> dict[str, Any]:
  """Held-out bpb of the checkpoint: the run's own final evaluation (summary.json, over the
  whole held-out split) when it is of this step, else measured now with the train loop's
  evaluation (hnet/loop.py evaluate)."""
  import jax
  from hnet import loop
  from hnet.train import jit_eval_step
  summary_path = os.path.join(workdir, "summary.json")
  if use_summary and os.path.exists(summary_path) and not max_batches:
    with open(summary_path) as f:
      summary = json.load(f)
    if summary.get("step") == step and "eval" in summary:
      return {"bpb": float(summary["eval"]["bpb"]), "bytes": float(summary["eval"]["bytes"]),
              "source": "the run's final evaluation, summary.json"}
  config = setup.config
  example = next(iter(loop.data_iterator(config, config.data.eval_split, repeat=False)))
  eval_fn = jit_eval_step(setup, loop.to_global(setup, example))
  with jax.set_mesh(setup.mesh):
    result = loop.evaluate(setup, eval_fn, state, max_batches)
  return {"bpb": float(result["bpb"]), "bytes": float(result["bytes"]),
          "source": "measured at export with hnet.loop.evaluate"}


def _apply_tokens(export: FamilyExport, spec: export_tokenizer.TokenizerSpec) -> None:
  ids = {"bos_token_id": spec.bos_id, "eos_token_id": spec.eos_id, "pad_token_id": spec.pad_id}
  if export.config.get("is_encoder_decoder"):
    ids["decoder_start_token_id"] = spec.bos_id
  export.config.update(ids)
  export.generation_config.update(ids)
  export.generation_config["suppress_tokens"] = list(spec.suppress_ids)
  export.generation_config.setdefault("_from_model_config", False)


def _usage(export: FamilyExport, out: str, objective: str | None) -> str:
  remote = ", trust_remote_code=True" if export.remote_files else ""
  if export.config.get("is_encoder_decoder") and objective == "span_corruption":
    return f"""import torch
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer
tokenizer = AutoTokenizer.from_pretrained("{out}"{remote})
model = AutoModelForSeq2SeqLM.from_pretrained("{out}"{remote})
# a span-corruption source: the missing span is sentinel 259 (<extra_id_0>), then <eos>
ids = list(b"To be, or ") + [259] + list(b" to be, that is the question") + [258]
out = model.generate(input_ids=torch.tensor([ids]), decoder_input_ids=torch.tensor([[257, 259]]),
                     max_new_tokens=64, do_sample=False)
print(tokenizer.decode(out[0], skip_special_tokens=True))  # the span (sentinels dropped)"""
  if export.config.get("is_encoder_decoder"):
    return f"""from transformers import AutoModelForSeq2SeqLM, AutoTokenizer
tokenizer = AutoTokenizer.from_pretrained("{out}"{remote})
model = AutoModelForSeq2SeqLM.from_pretrained("{out}"{remote})
source = tokenizer(["To be, or not to be"], return_tensors="pt")  # prefix LM: the continuation
out = model.generate(**source, max_new_tokens=64, do_sample=False)
print(tokenizer.decode(out[0], skip_special_tokens=True))"""
  return f"""from transformers import AutoModelForCausalLM, AutoTokenizer
tokenizer = AutoTokenizer.from_pretrained("{out}"{remote})
model = AutoModelForCausalLM.from_pretrained("{out}"{remote})
prompt = tokenizer(["ROMEO:"], return_tensors="pt")  # adds <bos>, as the training rows
out = model.generate(**prompt, max_new_tokens=64, do_sample=False)
print(tokenizer.decode(out[0], skip_special_tokens=True))"""


def export_run(workdir: str, out: str, step: int | None = None, *,
               max_shard_bytes: int = writer.DEFAULT_MAX_SHARD_BYTES,
               bpb_batches: int = 0) -> dict[str, Any]:
  """Writes the HF directory of `workdir`'s newest readable checkpoint (or `step`) to
  `out`. bpb_batches: held-out batches for the model card's bpb (0 = the whole split).
  Returns {"out", "step", "architecture", "held_out", "files"}."""
  from hnet.runs import load_config
  if not os.path.exists(os.path.join(workdir, "config.json")):
    raise ExportError(f"{workdir!r} is not a run directory (no config.json): point --workdir "
                      "at a directory written by python -m hnet.main.")
  config = load_config(workdir)
  family = family_module(config.model.name)
  if not os.path.isdir(os.path.join(workdir, "checkpoints")) or not any(
      name.isdigit() for name in os.listdir(os.path.join(workdir, "checkpoints"))):
    raise ExportError(f"{workdir!r} holds no checkpoint (checkpoints/<step>/): train it first, "
                      "or point --workdir at a run that saved one.")
  spec = export_tokenizer.spec_for_run(config, workdir)
  setup, state, step = restore_run(workdir, step)
  import jax
  params = jax.tree.map(np.asarray, jax.device_get(state["params"]))
  export = family.to_hf(params, config.model)
  _apply_tokens(export, spec)
  held_out = held_out_bpb(workdir, setup, state, step, bpb_batches)
  config_json = config.to_json_best_effort(indent=2)
  architecture = export.config["architectures"][0]
  card = writer.model_card(
      repo_name=os.path.basename(os.path.normpath(out)), family=config.model.name,
      architecture=architecture, config_json=config_json, step=step, held_out=held_out,
      remote_code=bool(export.remote_files),
      usage=_usage(export, out, config.data.get("objective")),
      notes=getattr(family, "MODEL_CARD_NOTES", ""))
  path = writer.write_hf_dir(out, export, tokenizer_files=spec.files, model_card=card,
                             max_shard_bytes=max_shard_bytes)
  run_info = {"model_name": config.model.name, "step": step, "held_out": held_out,
              "config": json.loads(config_json)}
  writer.write_json(path / RUN_FILE, run_info)
  files = sorted(p.name for p in path.iterdir())
  log.info("exported %s step %d as %s to %s", workdir, step, architecture, out)
  return {"out": str(path), "step": step, "architecture": architecture, "held_out": held_out,
          "files": files}


# ------------------------------------------------------------------------------ import

def load_config_arg(config) -> ml_collections.ConfigDict:
  """A ConfigDict, a config file (configs/*.py with get_config()) or a run's config.json."""
  if isinstance(config, ml_collections.ConfigDict):
    return config
  if isinstance(config, dict):
    return ml_collections.ConfigDict(config)
  path = os.fspath(config)
  if not os.path.exists(path):
    raise ExportError(f"--config={path!r} does not exist: give a config file "
                      "(configs/*.py) or a run's config.json.")
  if path.endswith(".json"):
    with open(path) as f:
      return ml_collections.ConfigDict(json.load(f))
  import importlib.util
  spec = importlib.util.spec_from_file_location("hnet_import_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def import_run(hf_dir: str, config, workdir: str, *, step: int | None = None) -> dict[str, Any]:
  """Writes `hf_dir`'s weights as an orbax checkpoint of `config` into `workdir` (which
  must hold no checkpoint yet), with config.json (and a BPE run's tokenizer) beside it.
  The checkpoint's step is `step`, else the exported run's (hnet_run.json), else 0.
  Optimizer state, RNG and data position start afresh (as after train.init_from).
  Returns {"workdir", "step", "tensors"}."""
  import jax
  from hnet import checkpoint, sharding
  from hnet.train import make_setup, state_with_params
  config = load_config_arg(config)
  family = family_module(config.model.name)
  hf_config = writer.read_config(hf_dir)
  tensors = writer.read_tensors(hf_dir)
  params = family.from_hf(tensors, hf_config, config.model)
  if os.path.isdir(os.path.join(workdir, "checkpoints")) and any(
      n.isdigit() for n in os.listdir(os.path.join(workdir, "checkpoints"))):
    raise ExportError(f"{workdir!r} already holds checkpoints: import into a new --workdir.")
  os.makedirs(workdir, exist_ok=True)
  if config.data.get("layout", "bytes") == "bpe":
    _import_bpe_tokenizer(hf_dir, config, workdir)
  config.mesh.data, config.mesh.fsdp, config.mesh.tensor = 1, 1, 1
  mesh = sharding.make_mesh(1, 1, 1, devices=jax.devices()[:1])
  setup = make_setup(config, mesh)
  abstract = flatten_params(setup.abstract_state["params"], as_numpy=False)  # name -> ShapeDtypeStruct
  imported = flatten_params(params)
  missing, extra = sorted(set(abstract) - set(imported)), sorted(set(imported) - set(abstract))
  if missing or extra:  # the family's from_hf disagrees with the model: a bug, not bad input
    raise ExportError(f"{FAMILIES[config.model.name]}.from_hf returned params that do not fit "
                      f"the model: missing {missing[:10]}, extra {extra[:10]}")
  for name, leaf in abstract.items():
    if imported[name].shape != tuple(leaf.shape):
      raise ExportError(f"imported {name} has shape {imported[name].shape}, the model needs "
                        f"{tuple(leaf.shape)}")
  new_params = _like(setup.abstract_state["params"], unflatten_params(imported))
  state = state_with_params(setup, jax.device_put(new_params, setup.state_shardings["params"]))
  if step is None:
    run_path = pathlib.Path(hf_dir) / RUN_FILE
    step = int(json.loads(run_path.read_text())["step"]) if run_path.exists() else 0
  state["step"] = jax.device_put(np.asarray(step, np.int32), setup.state_shardings["step"])
  with open(os.path.join(workdir, "config.json"), "w") as f:
    f.write(config.to_json_best_effort(indent=2))
  manager = checkpoint.make_manager(os.path.join(workdir, "checkpoints"), async_save=False)
  try:
    checkpoint.save(manager, step, state, None, force=True)
    manager.wait_until_finished()
  finally:
    manager.close()
  return {"workdir": workdir, "step": step, "tensors": len(tensors)}


def _like(abstract_tree, nested: dict):
  """`nested` (keys as from unflatten_params) rebuilt with the abstract tree's keys and
  dtypes (so int list indices and str names are exactly the checkpoint's)."""
  if isinstance(abstract_tree, dict):
    out = {}
    for key, child in abstract_tree.items():
      source = nested[key] if key in nested else nested[str(key)]
      out[key] = _like(child, source)
    return out
  return np.asarray(nested, dtype=abstract_tree.dtype)


def _import_bpe_tokenizer(hf_dir: str, config, workdir: str) -> None:
  """A BPE run reads its tokenizer from data.bpe_tokenizer: the export's tokenizer.json
  (the run's, with a <|bos|> post-processor that encoding without specials ignores)."""
  from hnet.data import bpe
  source = pathlib.Path(hf_dir) / "tokenizer.json"
  if not source.exists():
    raise ExportError(f"{source} is missing: a BPE model needs the tokenizer it was trained with.")
  target = os.path.abspath(os.path.join(workdir, bpe.TOKENIZER_FILE))
  bpe.BPETokenizer.load(str(source)).save(target)
  config.data.bpe_tokenizer = target
