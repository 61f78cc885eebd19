"""Orbax checkpoints: the train state plus the data iterator's position.

A checkpoint holds params, optimizer state, step, RNG, any extra state (e.g. the
MrT5 controller) and the grain iterator state, so a resumed run continues exactly.
Restoring falls back to the previous checkpoint when the latest one is corrupt or
partial, and says so.
"""
from __future__ import annotations

import logging
import os
from typing import Any

import grain
import orbax.checkpoint as ocp

log = logging.getLogger("hnet")


class CheckpointError(RuntimeError):
  pass


def make_manager(directory: str, *, keep: int = 3, async_save: bool = True) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=async_save,
                                         create=True)
  return ocp.CheckpointManager(os.path.abspath(directory), options=options)


def save(manager: ocp.CheckpointManager, step: int, state: Any, data_iterator=None,
         force: bool = False) -> bool:
  items = {"state": ocp.args.StandardSave(state)}
  if data_iterator is not None:
    items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
  return manager.save(step, args=ocp.args.Composite(**items), force=force)


def restore(manager: ocp.CheckpointManager, abstract_state: Any, data_iterator=None,
            step: int | None = None) -> tuple[int, Any]:
  """Restores the newest readable checkpoint (or `step`) into `abstract_state`'s
  structure and shardings; restores `data_iterator`'s position in place.

  Returns (step, state). Raises CheckpointError when none can be read.
  """
  steps = sorted(manager.all_steps(), reverse=True) if step is None else [step]
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
      continue
    if errors:
      log.warning("restored step %d after skipping %d unreadable checkpoint(s)", candidate, len(errors))
    return candidate, restored["state"]
  raise CheckpointError(f"no readable checkpoint in {manager.directory}:\n  " + "\n  ".join(errors)
                        + "\nDelete the damaged step directories or start a new --workdir.")
