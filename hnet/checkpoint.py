"""Orbax checkpoints: the train state plus the data iterator's position.

A checkpoint holds params, optimizer state, step, RNG, any extra state (e.g. the
MrT5 controller) and the grain iterator state, so a resumed run continues exactly.
Restoring falls back to the previous checkpoint when the latest one is corrupt or
partial, and says so; the training loop also moves the unreadable step aside
(`<step>.unreadable`, a name orbax does not read as a step) so that it can save that
step again. Rotation (`rotate`) keeps the newest `keep` steps and never deletes the
last checkpoint known to be good.
"""
from __future__ import annotations

import datetime
import logging
import os
from typing import Any

import fsspec
import grain
import jax
import orbax.checkpoint as ocp
from etils import epath
from flax import traverse_util

from hnet import storage

log = logging.getLogger("hnet")


class CheckpointError(RuntimeError):
  pass


def make_manager(directory: str | os.PathLike, *, keep: int | None = 3,
                 async_save: bool = True) -> ocp.CheckpointManager:
  """keep=None: orbax deletes nothing (the training loop rotates with `rotate`)."""
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=async_save,
                                         create=True)
  return ocp.CheckpointManager(storage.resolve(directory), options=options)


def rotate(manager: ocp.CheckpointManager, keep: int, protect: int | None) -> list[int]:
  """Deletes all but the newest `keep` steps, never `protect` (the last step known to be
  good: its parameters gave a finite loss). Returns the deleted steps."""
  steps = sorted(manager.all_steps(), reverse=True)
  doomed = [s for s in steps[max(keep, 1):] if s != protect]
  for step in doomed:
    manager.delete(step)
  return doomed


def move_aside(manager: ocp.CheckpointManager, step: int, reason: str) -> str:
  """Renames checkpoint `step` to `<step>.<reason>` (with a time stamp if that exists), a
  name orbax does not read as a step: it is kept for inspection and the step can be saved
  again. On a remote file system (gs://) this is copy + delete. Returns the new path."""
  source = epath.Path(manager.directory) / str(step)
  target = source.parent / f"{step}.{reason}"
  if target.exists():
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S%f")
    target = source.parent / f"{step}.{reason}-{stamp}"
  if jax.process_index() == 0:
    if storage.is_remote(source):  # an object store has no rename
      _copy_tree(source, target)
      source.rmtree()
    else:
      os.rename(source, target)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices(f"hnet_move_aside_{step}_{reason}")
  manager.reload()
  return str(target)


def _copy_tree(source: epath.Path, target: epath.Path) -> None:
  """Copies a folder on an object store (gs://) object by object."""
  fs, source_path = fsspec.core.url_to_fs(os.fspath(source))
  target_path = fsspec.core.url_to_fs(os.fspath(target))[1]
  for path in fs.find(source_path):
    fs.copy(path, target_path + path[len(source_path.rstrip("/")):])


def save(manager: ocp.CheckpointManager, step: int, state: Any, data_iterator=None,
         force: bool = False) -> bool:
  items = {"state": ocp.args.StandardSave(state)}
  if data_iterator is not None:
    items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
  return manager.save(step, args=ocp.args.Composite(**items), force=force)


def restore(manager: ocp.CheckpointManager, abstract_state: Any, data_iterator=None,
            step: int | None = None, move_unreadable: bool = False) -> tuple[int, Any]:
  """Restores the newest readable checkpoint (or `step`) into `abstract_state`'s
  structure and shardings; restores `data_iterator`'s position in place.
  move_unreadable: move each newer step that fails to restore aside (`move_aside`), so
  that training can save that step again (the training loop does; tools only read).

  Returns (step, state). Raises CheckpointError when none can be read.
  """
  existing = sorted(manager.all_steps(), reverse=True)
  if step is not None and step not in existing:
    raise CheckpointError(f"no checkpoint at step {step} in {manager.directory}; it holds "
                          + (f"steps {', '.join(map(str, sorted(existing)))}" if existing else "none")
                          + ". Pass one of those (or leave the step out for the newest).")
  steps = existing if step is None else [step]
  if not steps:
    raise CheckpointError(f"no checkpoint in {manager.directory}; train first, or point "
                          "--workdir at a run directory that has checkpoints.")
  errors = []
  for candidate in steps:
    items = {"state": ocp.args.StandardRestore(abstract_state)}
    if data_iterator is not None:
      items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
    try:
      restored = manager.restore(candidate, args=ocp.args.Composite(**items))
    except Exception as e:  # orbax raises many types for unreadable files.
      errors.append(f"step {candidate}: {type(e).__name__}: {str(e)[:200]}")
      log.warning("checkpoint at step %d in %s is unreadable (%s); falling back to an earlier one",
                  candidate, manager.directory, type(e).__name__)
      if move_unreadable:
        moved = move_aside(manager, candidate, "unreadable")
        log.warning("moved the unreadable step %d to %s (kept for inspection; delete it when "
                    "done); training will save step %d again", candidate, moved, candidate)
      continue
    if errors:
      log.warning("restored step %d after skipping %d unreadable checkpoint(s)", candidate, len(errors))
    return candidate, restored["state"]
  raise CheckpointError(f"no readable checkpoint in {manager.directory}:\n  " + "\n  ".join(errors)
                        + "\nDelete the damaged step directories or start a new --workdir.")


def _step_directory(path: str):
  """A run directory, its checkpoints/ folder, or one checkpoints/<step> folder (local or
  gs://) -> the newest complete step folder (one holding a `state` item)."""
  path = storage.resolve(path)
  if (path / "state").is_dir():
    return path
  folder = path / "checkpoints" if (path / "checkpoints").is_dir() else path
  steps = sorted((int(child.name) for child in (folder.iterdir() if folder.is_dir() else [])
                  if child.name.isdigit() and (child / "state").is_dir()), reverse=True)
  if not steps:
    raise CheckpointError(f"train.init_from={os.fspath(path)!r} holds no checkpoint: give a run "
                          "directory (with checkpoints/<step>/state), its checkpoints/ folder or "
                          "one step folder.")
  return folder / str(steps[0])


def load_params(path: str, abstract_params: Any) -> tuple[dict[str, Any], list[str]]:
  """Reads the parameters of another run's checkpoint that this model also has (same
  path and shape) straight into `abstract_params`' shardings (warm start, e.g. MrT5 from a
  trained ByT5, as the MrT5 paper does).

  Returns ({flattened key (a tuple): array} for the copied ones, ["a/b/c" names of the
  parameters this model has that the checkpoint lacks]). Raises CheckpointError when the checkpoint cannot be read, when a
  shared parameter has another shape, or when nothing matches.
  """
  state_dir = _step_directory(path) / "state"
  checkpointer = ocp.PyTreeCheckpointer()
  try:
    saved = checkpointer.metadata(state_dir).item_metadata.tree["params"]
  except Exception as e:  # orbax raises many types for unreadable files.
    raise CheckpointError(f"cannot read the checkpoint in {state_dir} ({type(e).__name__}: "
                          f"{str(e)[:200]}); point train.init_from at a complete checkpoint.") from e
  def by_name(tree) -> dict[str, tuple[tuple, Any]]:  # "encoder_layers/0/attn/key/kernel" -> (key, leaf)
    return {"/".join(map(str, key)): (key, leaf) for key, leaf in traverse_util.flatten_dict(tree).items()}
  saved_named, model_named = by_name(dict(saved)), by_name(abstract_params)
  shared = sorted(set(saved_named) & set(model_named))
  shape = lambda named, name: tuple(named[name][1].shape)
  mismatched = [f"{name}: checkpoint {shape(saved_named, name)} vs model {shape(model_named, name)}"
                for name in shared if shape(saved_named, name) != shape(model_named, name)]
  if mismatched:
    raise CheckpointError(f"train.init_from={path!r}: {len(mismatched)} shared parameter(s) differ "
                          "in shape (was the source trained with another width or vocabulary?):\n  "
                          + "\n  ".join(mismatched[:10]))
  if not shared:
    raise CheckpointError(f"train.init_from={path!r} shares no parameter with this model: "
                          "check that it is a run of the same family.")
  item = {"params": traverse_util.unflatten_dict({saved_named[n][0]: model_named[n][1] for n in shared})}
  restore_args = ocp.checkpoint_utils.construct_restore_args(item)
  restored = traverse_util.flatten_dict(checkpointer.restore(state_dir, args=ocp.args.PyTreeRestore(
      item=item, restore_args=restore_args, partial_restore=True))["params"])
  copied = {model_named[n][0]: restored[saved_named[n][0]] for n in shared}
  return copied, sorted(set(model_named) - set(shared))
