"""Metric logging: TensorBoard event files, <workdir>/metrics.jsonl and a progress bar.

The workdir may be on an object store (gs://), which has no append: metrics.jsonl is
rewritten whole at each flush (at most every `flush_seconds` (10 s), and when the loop asks,
e.g. just before a checkpoint is saved), so it holds one record per (split, step):
  * a run resumed from checkpoint step S keeps the earlier records up to step S and
    replaces the rest (the replayed steps write them again);
  * a run that starts from step 0 in a workdir whose metrics.jsonl already holds records
    (its checkpoints/ was emptied) starts a new history and keeps the earlier one as
    metrics-before-<UTC time>.jsonl, with a warning.
TensorBoard: each run segment writes a new event file that opens with a SessionLog.START
at step S+1 (tensorboardX's purge_step), so TensorBoard drops the events of replayed steps
that earlier files hold.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import time
from typing import Mapping

import jax
from etils import epath
from tqdm.auto import tqdm

from hnet import storage

log = logging.getLogger("hnet")
METRICS_FILE = "metrics.jsonl"


def read_metrics(workdir: str | os.PathLike) -> list[dict]:
  """The records of <workdir>/metrics.jsonl (local or gs://), in file order."""
  text = storage.read_text(storage.resolve(workdir) / METRICS_FILE)
  return [json.loads(line) for line in (text or "").splitlines() if line.strip()]


def _kept_history(workdir: epath.Path, path: epath.Path, initial_step: int) -> dict[tuple, str]:
  """{(split, step): line} of the records a run starting at `initial_step` keeps."""
  text = storage.read_text(path)
  if not text:
    return {}
  records = {}
  for line in text.splitlines():
    if line.strip():
      record = json.loads(line)
      records[(record["split"], record["step"])] = line + "\n"
  if initial_step == 0:
    archive = workdir / time.strftime("metrics-before-%Y%m%d-%H%M%S.jsonl", time.gmtime())
    storage.write_text(archive, text)
    last = max(step for _, step in records)
    log.warning("%s holds %d records (up to step %d) of an earlier run, but training starts "
                "from step 0 (no checkpoint in %s): starting a new metrics history; the earlier "
                "one is kept as %s (TensorBoard shows only the new run's steps).",
                path, len(records), last, workdir / "checkpoints", archive)
    return {}
  return {key: line for key, line in records.items() if key[1] <= initial_step}


def _summary_writer_class():
  """tensorboardX's SummaryWriter, imported with torch hidden: tensorboardX imports torch
  whenever it is installed (only to accept torch tensors, which we never log), and torch
  is in the environment only to load Hugging Face exports: the training path must not
  pay its import time and memory."""
  hide = "torch" not in sys.modules
  if hide:
    sys.modules["torch"] = None  # `import torch` raises ImportError while this is set
  try:
    from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
  finally:
    if hide:
      del sys.modules["torch"]
  return SummaryWriter


SummaryWriter = _summary_writer_class()


class MetricLogger:
  """Writes the same scalars to TensorBoard, <workdir>/metrics.jsonl and the progress bar."""

  def __init__(self, workdir: str | os.PathLike, total_steps: int, initial_step: int = 0,
               enabled: bool = True, flush_seconds: float = 10.0):
    self.enabled = enabled and jax.process_index() == 0
    self.flush_seconds = flush_seconds
    self.path = storage.resolve(workdir) / METRICS_FILE
    self.records: dict[tuple, str] = {}
    self.writer = None
    self._last_flush = -float("inf")
    if self.enabled:
      self.records = _kept_history(storage.resolve(workdir), self.path, initial_step)
      self.writer = SummaryWriter(os.fspath(storage.resolve(workdir) / "tb"),
                                  purge_step=initial_step + 1)
    self.bar = tqdm(total=total_steps, initial=initial_step, disable=not self.enabled,
                    dynamic_ncols=True, desc="train")

  def write(self, step: int, scalars: Mapping[str, float], prefix: str = "train") -> None:
    if not self.enabled:
      return
    for name, value in scalars.items():
      self.writer.add_scalar(f"{prefix}/{name}", float(value), step)
    self.records.pop((prefix, step), None)  # a step written again replaces its record
    self.records[(prefix, step)] = json.dumps(
        {"step": step, "split": prefix, "time": time.time(),
         **{k: float(v) for k, v in scalars.items()}}) + "\n"
    if time.monotonic() - self._last_flush >= self.flush_seconds:
      self.flush()
    shown = {k: scalars[k] for k in ("loss", "bpb", "lr", "bytes_per_s", "mfu") if k in scalars}
    if prefix == "train":
      self.bar.set_postfix({k: f"{v:.3g}" for k, v in shown.items()}, refresh=False)
    else:
      self.bar.write(f"step {step} {prefix}: " + " ".join(f"{k}={float(v):.4g}" for k, v in scalars.items()))

  def flush(self) -> None:
    """Writes metrics.jsonl whole (one object on gs://) and flushes TensorBoard."""
    if not self.enabled:
      return
    storage.write_text(self.path, "".join(self.records.values()))
    self.writer.flush()
    self._last_flush = time.monotonic()

  @contextlib.contextmanager
  def flushed_on_error(self):
    """Flushes what was logged when the block raises (a NaN stop, a crash), so the lines
    written since the last flush are not lost with the run."""
    try:
      yield self
    except BaseException:
      try:
        self.flush()
      except Exception as e:  # the original error is the one to report
        log.warning("could not write %s: %s", self.path, e)
      raise

  def advance(self, n: int = 1) -> None:
    self.bar.update(n)

  def close(self) -> None:
    self.bar.close()
    if self.writer:
      self.flush()
      self.writer.close()
