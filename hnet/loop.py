"""The training loop: data, checkpoints, evaluation, logging, pre-emption.

    summary = run(config, workdir)

A killed run started again with the same workdir resumes from its newest readable
checkpoint (params, optimizer, step, RNG, data position) and continues exactly.
SIGTERM saves a checkpoint and exits cleanly; a NaN loss stops with the step and the
last good checkpoint.
"""
from __future__ import annotations

import json
import logging
import math
import os
import signal
import time
from typing import Any, Iterator

import jax
import numpy as np
from jax.experimental import multihost_utils

from hnet import checkpoint, lock as workdir_lock, sharding, storage
from hnet.data import pipeline
from hnet.optim import schedule
from hnet.perf import ProfileWindow, compiled_flops, compiled_memory, measure_matmul_peak
from hnet.metrics import MetricLogger
from hnet.train import (Setup, bits_per_byte, init_state, jit_eval_step, jit_train_step,
                        make_setup, warm_start)

log = logging.getLogger("hnet")


class NonFiniteLossError(RuntimeError):
  pass


class _Preemption:
  """SIGTERM (a scheduler's preemption or time-limit notice, TPU maintenance) -> a stop
  at a step that every process agrees on, so that all save the same checkpoint.

  One process: a Python SIGTERM handler sets a flag the loop reads once per step.
  Several processes: jax.distributed's preemption sync manager has caught SIGTERM since
  jax.distributed.initialize; a notice on any host reaches the others through the
  coordination service, and `reached(step)` turns True on every host at the same step
  (the largest step any host had reached, plus one). No Python handler is installed
  then: it would replace JAX's."""

  def __init__(self):
    self.requested = False
    self._previous = None
    self._multi = jax.process_count() > 1

  def __enter__(self):
    if self._multi:
      return self
    try:
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # not the main thread
      self._previous = None
    return self

  def _handle(self, signum, frame):
    del signum, frame
    self.requested = True

  def reached(self, step: int) -> bool:
    """Called once per step with the step just completed, on every process."""
    if self._multi and multihost_utils.reached_preemption_sync_point(step):
      self.requested = True
    return self.requested

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


def _out_of_time(config, started: float, at_log_step: bool) -> bool:
  """train.max_seconds passed. Several processes read their clocks at different moments,
  so there process 0 decides, at log steps only (the same steps on every process)."""
  if not config.train.max_seconds:
    return False
  late = time.perf_counter() - started > config.train.max_seconds
  if jax.process_count() == 1:
    return late
  if not at_log_step:
    return False
  return bool(multihost_utils.broadcast_one_to_all(np.asarray(late)))


def data_iterator(config, split: str, *, repeat: bool, seed_offset: int = 0):
  return pipeline.make_iterator(
      config.data, split, seq_len=config.data.seq_len, global_batch_size=config.train.batch_size,
      process_index=jax.process_index(), process_count=jax.process_count(),
      seed=config.data.shuffle_seed + seed_offset, repeat=repeat)


def to_global(setup: Setup, local_batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
  """Process-local rows -> one global array per key, sharded over the batch axes."""
  shardings = setup.batch_sharding({k: np.zeros((setup.config.train.batch_size,) + v.shape[1:])
                                    for k, v in local_batch.items()})
  return {k: jax.make_array_from_process_local_data(shardings[k], v) for k, v in local_batch.items()}


def evaluate(setup: Setup, eval_fn, state, max_batches: int = 0) -> dict[str, float]:
  """Held-out bpb over the eval split (all of it when max_batches == 0). The model's own
  metrics (ratios per batch) are averaged with each batch weighted by its targets, so a
  padded last batch with few or no targets counts little or not at all."""
  totals: dict[str, float] = {}
  count = 0
  for local in data_iterator(setup.config, setup.config.data.eval_split, repeat=False):
    out = jax.device_get(eval_fn(state["params"], to_global(setup, local), state["extra"]))
    weight = float(out["targets"])  # model metrics: mean over batches weighted by targets
    for k, v in out.items():
      totals[k] = totals.get(k, 0.0) + float(v) * (weight if k.startswith("model/") else 1.0)
    count += 1
    if max_batches and count >= max_batches:
      break
  if not count:
    raise ValueError(f"the eval split {setup.config.data.eval_split!r} produced no batches")
  result = {"bpb": bits_per_byte(totals["nats"], totals["bytes"]),
            "loss": totals["nats"] / max(totals["targets"], 1.0), "bytes": totals["bytes"]}
  result.update({k: v / max(totals["targets"], 1.0) for k, v in totals.items()
                 if k.startswith("model/")})
  return result


def _check_finite(metrics: dict[str, float], step: int, manager) -> None:
  if not all(math.isfinite(metrics.get(k, 0.0)) for k in ("loss", "objective", "grad_norm")):
    good = manager.latest_step()
    where = (f"the last good checkpoint is step {good} in {manager.directory}"
             if good is not None else "no checkpoint was saved yet")
    raise NonFiniteLossError(
        f"loss became {metrics['loss']} (grad norm {metrics['grad_norm']}) at step {step}; {where}. "
        "Lower --config.train.lr, raise warmup or use float32, then rerun with the same "
        "--workdir to resume from that checkpoint.")


def _prepare_bpe(config, workdir) -> None:
  """BPE runs (data.layout "bpe"): the tokenizer lives in the run directory
  (data.bpe_tokenizer = <workdir>/bpe_tokenizer.json unless set), is trained (or loaded)
  before the model is built, and must fit the model's head (model.vocab_size)."""
  if config.data.get("layout", "bytes") != "bpe":
    return
  from hnet.data import bpe  # pylint: disable=g-import-not-at-top
  if not config.data.get("bpe_tokenizer", ""):
    if storage.is_remote(workdir):
      raise ValueError(f"a BPE run (data.layout='bpe') on the remote --workdir={workdir} needs "
                       "--config.data.bpe_tokenizer=<a local tokenizer .json path> (the "
                       "tokenizer is trained to and read from a local file).")
    with config.unlocked():
      config.data.bpe_tokenizer = os.fspath(workdir / bpe.TOKENIZER_FILE)
  tokenizer = bpe.tokenizer_for(config.data)
  if tokenizer.padded_vocab_size > config.model.vocab_size:
    raise ValueError(f"the BPE tokenizer {config.data.bpe_tokenizer} has "
                     f"{tokenizer.vocab_size} ids but model.vocab_size is "
                     f"{config.model.vocab_size}; set it to {tokenizer.padded_vocab_size}.")
  log.info("BPE tokenizer %s: %s", config.data.bpe_tokenizer, bpe.tokenizer_summary(tokenizer))


def _lock_workdir(workdir) -> workdir_lock.WorkdirLock | None:
  """Process 0 takes the workdir lock; every process raises if it could not."""
  lock = workdir_lock.WorkdirLock(workdir) if jax.process_index() == 0 else None
  refusal = ""
  if lock is not None:
    try:
      lock.acquire()
    except workdir_lock.WorkdirLockedError as e:
      refusal = str(e)
  if jax.process_count() > 1:
    refused = bool(multihost_utils.broadcast_one_to_all(np.int32(bool(refusal))))
    if refused and not refusal:
      refusal = f"process 0 could not take the workdir lock of {workdir} (its log says why)"
  if refusal:
    raise workdir_lock.WorkdirLockedError(refusal)
  return lock


def run(config, workdir: str) -> dict[str, Any]:
  """Trains `config` in `workdir` (a local path or gs://..., resuming if it holds
  checkpoints) while holding the workdir lock; returns a summary."""
  workdir = storage.resolve(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  lock = _lock_workdir(workdir)
  try:
    return _run(config, workdir, lock)
  finally:
    if lock is not None:
      lock.release()


def _run(config, workdir, lock) -> dict[str, Any]:
  _prepare_bpe(config, workdir)
  mesh = sharding.make_mesh(config.mesh.data, config.mesh.fsdp, config.mesh.tensor)
  log.info("mesh %s over %d devices", dict(mesh.shape), mesh.size)
  setup = make_setup(config, mesh)
  profile = ProfileWindow(config.train.get("profile_steps", ""), config.train.steps,
                          os.fspath(workdir / "tb"))
  manager = checkpoint.make_manager(workdir / "checkpoints", keep=config.checkpoint.keep,
                                    async_save=config.checkpoint.async_save)
  train_iter = data_iterator(config, config.data.train_split, repeat=True)
  if manager.latest_step() is not None:
    start, state = checkpoint.restore(manager, setup.abstract_state, train_iter)
    log.info("resumed from step %d in %s", start, manager.directory)
  else:
    start, state = 0, init_state(setup)
    if config.train.init_from:
      state = warm_start(setup, state, config.train.init_from)
  if jax.process_index() == 0:
    storage.write_text(workdir / "config.json", config.to_json_best_effort(indent=2))

  first = next(train_iter)
  example = to_global(setup, first)
  with jax.set_mesh(mesh):
    compiled = jit_train_step(setup, example).lower(state, example).compile()
  eval_fn = jit_eval_step(setup, example)
  step_flops = compiled_flops(compiled)
  memory = compiled_memory(compiled)
  peak = measure_matmul_peak(1024, repeats=3) * jax.local_device_count()
  lr_at = schedule(config)
  log.info("train step: %.3g FLOPs, memory per device %s", step_flops, memory)

  logger = MetricLogger(workdir, config.train.steps, start)
  pending, last_time, last_step = None, time.perf_counter(), start
  started = time.perf_counter()
  summary: dict[str, Any] = {"start_step": start, "step_flops": step_flops, "memory": memory,
                             "losses": {}}
  batch, step = example, start
  with _Preemption() as preemption, logger.flushed_on_error():
    while step < config.train.steps:
      profile.before(step + 1)
      state, metrics = compiled(state, batch)
      step += 1
      profile.after(step, state)
      logger.advance()
      log_now = step % config.train.log_every == 0 or step == config.train.steps
      save_now = step % config.checkpoint.every == 0 or step == config.train.steps
      stop = preemption.reached(step) or _out_of_time(config, started, log_now)
      if lock is not None:
        lock.check()
      if pending is not None:  # fetched one step late, so dispatch stays asynchronous
        _log_train(logger, summary, *pending, lr_at, last_time, last_step, step_flops, peak)
        last_time, last_step = time.perf_counter(), pending[0]
        pending = None
      if log_now or save_now or stop:
        pending = (step, jax.device_get(metrics))
        _check_finite(pending[1], step, manager)
      if config.train.eval_every and step % config.train.eval_every == 0 and step < config.train.steps:
        logger.write(step, evaluate(setup, eval_fn, state, config.train.eval_batches), "eval")
      if save_now or stop:
        # The checkpoint's own step is logged first: a kill right after the save must not
        # lose the line a resumed run will not write again.
        _log_train(logger, summary, *pending, lr_at, last_time, last_step, step_flops, peak)
        last_time, last_step, pending = time.perf_counter(), step, None
        logger.flush()
        checkpoint.save(manager, step, state, train_iter, force=True)
      if stop:
        logger.bar.write(f"stopping at step {step} ({'SIGTERM' if preemption.requested else 'time budget'}); "
                         f"checkpoint saved in {manager.directory}")
        break
      if step < config.train.steps:
        batch = to_global(setup, next(train_iter))
  profile.close()
  if pending is not None:
    _log_train(logger, summary, *pending, lr_at, last_time, last_step, step_flops, peak)
  manager.wait_until_finished()
  summary["step"] = step
  summary["train_seconds"] = time.perf_counter() - started
  if step >= config.train.steps:
    summary["eval"] = evaluate(setup, eval_fn, state, 0)
    logger.write(step, summary["eval"], "eval")
  logger.close()
  manager.close()
  if jax.process_index() == 0:
    storage.write_text(workdir / "summary.json", json.dumps(summary, indent=2, default=float))
  summary["state"] = state
  return summary


def _log_train(logger, summary, step, metrics, lr_at, last_time, last_step, step_flops, peak):
  elapsed = max(time.perf_counter() - last_time, 1e-9)
  steps_done = max(step - last_step, 1)
  scalars = {k: float(v) for k, v in metrics.items() if np.ndim(v) == 0}
  scalars["bpb"] = bits_per_byte(metrics["nats"], metrics["bytes"])
  scalars["lr"] = float(lr_at(step - 1))
  scalars["bytes_per_s"] = float(metrics["bytes"]) * steps_done / elapsed
  scalars["model_flops_per_s"] = step_flops * steps_done / elapsed
  scalars["mfu"] = scalars["model_flops_per_s"] / peak
  summary["losses"][step] = scalars["loss"]
  logger.write(step, scalars, "train")
