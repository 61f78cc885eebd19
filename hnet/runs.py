"""Reading a run directory back: its config and its trained model.

A run directory (--workdir) holds config.json, checkpoints/<step>/, tb/ and
metrics.jsonl. Tools load models from it with `load_model(workdir)`.
"""
from __future__ import annotations

import hashlib
import json
import os

import jax
import ml_collections
from flax import nnx

from hnet import checkpoint, sharding, storage
from hnet.train import make_setup, merge_model


def run_names(workdirs: list[str], names: list[str]) -> list[str]:
  """A label per run directory: `names` if given (one each), else each directory's name."""
  if not workdirs:
    raise ValueError("give --workdirs=run1,run2,...")
  if names and len(names) != len(workdirs):
    raise ValueError("--names needs one label per --workdirs entry")
  return list(names) or [storage.resolve(w).name for w in workdirs]


def run_fingerprint(workdir: str, step: int) -> str:
  """A short hash of the run's config.json and of the names and sizes of the files of
  checkpoint `step`: it changes when the run directory is trained again with another
  config, or holds another checkpoint at the same step (tools that cache results use it)."""
  digest = hashlib.sha256()
  workdir = storage.resolve(workdir)
  digest.update((workdir / "config.json").read_bytes())
  root = workdir / "checkpoints" / str(step)
  for path in storage.files_under(root):
    digest.update(f"{os.fspath(path)[len(os.fspath(root)) + 1:]}:{path.stat().length};".encode())
  return digest.hexdigest()[:16]


def load_config(workdir: str) -> ml_collections.ConfigDict:
  text = storage.read_text(storage.resolve(workdir) / "config.json")
  if text is None:
    raise FileNotFoundError(f"{storage.resolve(workdir) / 'config.json'} not found: {workdir!r} is "
                            "not a run directory (train with python -m hnet.main --workdir=... first).")
  return ml_collections.ConfigDict(json.loads(text))


def load_model(workdir: str, step: int | None = None) -> tuple[nnx.Module, ml_collections.ConfigDict, int]:
  """The model of the newest readable checkpoint (or `step`) on one device."""
  config = load_config(workdir)
  config.mesh.data, config.mesh.fsdp, config.mesh.tensor = 1, 1, 1
  mesh = sharding.make_mesh(1, 1, 1, devices=jax.devices()[:1])
  setup = make_setup(config, mesh)
  manager = checkpoint.make_manager(storage.resolve(workdir) / "checkpoints", async_save=False)
  try:
    step, state = checkpoint.restore(manager, setup.abstract_state, None, step)
  finally:
    manager.close()
  return merge_model(setup.graphdef, state["params"]), config, step


def training_finished(workdir: str) -> bool:
  """Whether the run in `workdir` trained all its steps (its summary.json says so). False
  when it stopped early (SIGTERM, time budget) or has not run: launchers requeue then."""
  from etils import epath  # local paths and gs:// alike
  summary, config = epath.Path(workdir) / "summary.json", epath.Path(workdir) / "config.json"
  if not (summary.exists() and config.exists()):
    return False
  return json.loads(summary.read_text())["step"] >= json.loads(config.read_text())["train"]["steps"]
