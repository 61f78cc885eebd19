"""Metric logging: TensorBoard event files, a JSONL file and a progress bar."""
from __future__ import annotations

import json
import os
import time
from typing import Mapping

import jax
from tensorboardX import SummaryWriter
from tqdm.auto import tqdm


class MetricLogger:
  """Writes the same scalars to TensorBoard, <workdir>/metrics.jsonl and the progress bar."""

  def __init__(self, workdir: str, total_steps: int, initial_step: int = 0, enabled: bool = True):
    self.enabled = enabled and jax.process_index() == 0
    self.writer = SummaryWriter(os.path.join(workdir, "tb")) if self.enabled else None
    self.jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a") if self.enabled else None
    self.bar = tqdm(total=total_steps, initial=initial_step, disable=not self.enabled,
                    dynamic_ncols=True, desc="train")

  def write(self, step: int, scalars: Mapping[str, float], prefix: str = "train") -> None:
    if not self.enabled:
      return
    for name, value in scalars.items():
      self.writer.add_scalar(f"{prefix}/{name}", float(value), step)
    self.jsonl.write(json.dumps({"step": step, "split": prefix, "time": time.time(),
                                 **{k: float(v) for k, v in scalars.items()}}) + "\n")
    self.jsonl.flush()
    shown = {k: scalars[k] for k in ("loss", "bpb", "lr", "bytes_per_s", "mfu") if k in scalars}
    if prefix == "train":
      self.bar.set_postfix({k: f"{v:.3g}" for k, v in shown.items()}, refresh=False)
    else:
      self.bar.write(f"step {step} {prefix}: " + " ".join(f"{k}={float(v):.4g}" for k, v in scalars.items()))

  def advance(self, n: int = 1) -> None:
    self.bar.update(n)

  def close(self) -> None:
    self.bar.close()
    if self.writer:
      self.writer.flush()
      self.writer.close()
      self.jsonl.close()
