"""The training loop: data, checkpoints, evaluation, logging, pre-emption.

    summary = run(config, workdir)

A killed run started again with the same workdir resumes from its newest readable
checkpoint (params, optimizer, step, RNG, data position) and continues exactly; a newer
checkpoint that cannot be read is moved aside (`<step>.unreadable`), so the step is
saved again. SIGTERM saves a checkpoint and exits cleanly (before the first step it
saves nothing and says so; it cancels an evaluation in progress). A non-finite loss,
gradient norm or parameter stops the run naming which: that step is never saved, the
checkpoint whose parameters produced it is moved aside (`<step>.diverged`) and rotation
never deletes the last good one. Throughput counts completed steps: each step's results
are fetched while the next one runs, and evaluations are left out of it.
"""
from __future__ import annotations

import json
import logging
import math
import os
import signal
import time
from typing import Any, Callable, Sequence

import grain
import jax
import numpy as np
from jax.experimental import multihost_utils
from tqdm.auto import tqdm

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


def evaluate(setup: Setup, eval_fn, state, max_batches: int = 0, *, label: str = "eval",
             cancelled: Callable[[], bool] | None = None) -> dict[str, float] | None:
  """Held-out bpb over the eval split (all of it when max_batches == 0), with its own
  progress bar labelled `label`. The model's own metrics (ratios per batch) are averaged
  with each batch weighted by its targets, so a padded last batch with few or no targets
  counts little or not at all. Returns None when `cancelled()` becomes true (SIGTERM)."""
  config = setup.config
  dataset = pipeline.make_dataset(
      config.data, config.data.eval_split, seq_len=config.data.seq_len,
      global_batch_size=config.train.batch_size, process_index=jax.process_index(),
      process_count=jax.process_count(), seed=config.data.shuffle_seed, repeat=False)
  total = min(len(dataset), max_batches) if max_batches else len(dataset)
  if not total:
    raise ValueError(f"the eval split {config.data.eval_split!r} produced no batches")
  totals: dict[str, float] = {}
  bar = tqdm(total=total, desc=label, leave=False, dynamic_ncols=True,
             disable=jax.process_index() != 0)
  with bar:
    batches = dataset.to_iter_dataset(grain.ReadOptions(num_threads=2, prefetch_buffer_size=8))
    for count, local in enumerate(batches, start=1):
      if cancelled is not None and cancelled():
        return None
      out = jax.device_get(eval_fn(state["params"], to_global(setup, local), state["extra"]))
      weight = float(out["targets"])  # model metrics: mean over batches weighted by targets
      for k, v in out.items():
        totals[k] = totals.get(k, 0.0) + float(v) * (weight if k.startswith("model/") else 1.0)
      bar.update(1)
      if count >= total:
        break
  result = {"bpb": bits_per_byte(totals["nats"], totals["bytes"]),
            "loss": totals["nats"] / max(totals["targets"], 1.0), "bytes": totals["bytes"]}
  result.update({k: v / max(totals["targets"], 1.0) for k, v in totals.items()
                 if k.startswith("model/")})
  return result


# What a train step reports -> how the message names it when it is not finite.
_WATCHED = (("loss", "the loss"), ("objective", "the objective (loss + aux losses)"),
            ("grad_norm", "the gradient norm"),
            ("param_max_abs", "the largest |parameter| after the update"))


def _non_finite(metrics: dict[str, Any]) -> list[str]:
  """What is not finite in a step's metrics, e.g. ["the loss (nan)", ...]."""
  return [f"{name} ({float(metrics[key])})" for key, name in _WATCHED
          if key in metrics and not math.isfinite(float(metrics[key]))]


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


def run(config, workdir: str, devices: Sequence[jax.Device] | None = None,
        eager_init: bool = False) -> dict[str, Any]:
  """Trains `config` in `workdir` (a local path or gs://..., resuming if it holds
  checkpoints) while holding the workdir lock; returns a summary. SIGTERM at any point,
  even while compiling, stops cleanly (exit 0 from hnet.main).

  devices: the devices the mesh (config.mesh) spans; every visible device by default. A
  single process may train on fewer, e.g. `jax.devices()[:1]` beside other work.
  eager_init: a new run builds its initial state op by op and then places it
  (train.init_state(eager=True)): for tiny models, which then start seconds sooner."""
  workdir = storage.resolve(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  lock = _lock_workdir(workdir)
  try:
    with _Preemption() as preemption:
      return _run(config, workdir, lock, preemption, devices, eager_init)
  finally:
    if lock is not None:
      lock.release()


def _run(config, workdir, lock, preemption: _Preemption, devices, eager_init) -> dict[str, Any]:
  _prepare_bpe(config, workdir)
  mesh = sharding.make_mesh(config.mesh.data, config.mesh.fsdp, config.mesh.tensor, devices)
  log.info("mesh %s over %d devices", dict(mesh.shape), mesh.size)
  with sharding.rules(config.mesh.get("rules", sharding.DEFAULT_RULES)):
    sharding.check_global_batch(mesh, config.train.batch_size)
  setup = make_setup(config, mesh)
  profile = ProfileWindow(config.train.get("profile_steps", ""), config.train.steps,
                          os.fspath(workdir / "tb"))
  # keep=None: orbax deletes nothing; checkpoint.rotate keeps the newest checkpoint.keep
  # steps and never the last good one.
  manager = checkpoint.make_manager(workdir / "checkpoints", keep=None,
                                    async_save=config.checkpoint.async_save)
  train_iter = data_iterator(config, config.data.train_split, repeat=True)
  if manager.latest_step() is not None:
    start, state = checkpoint.restore(manager, setup.abstract_state, train_iter,
                                      move_unreadable=True)
    log.info("resumed from step %d in %s", start, manager.directory)
  else:
    start, state = 0, init_state(setup, eager=eager_init)
    if config.train.init_from:
      state = warm_start(setup, state, config.train.init_from)
  if jax.process_index() == 0:
    storage.write_text(workdir / "config.json", config.to_json_best_effort(indent=2))

  if preemption.requested:  # SIGTERM while setting up: stop before compiling
    return _stop_before_first_step(start, state, manager)
  first = next(train_iter)
  example = to_global(setup, first)
  with jax.set_mesh(mesh):
    compiled = jit_train_step(setup, example).lower(state, example).compile()
  if preemption.requested:  # SIGTERM while compiling
    return _stop_before_first_step(start, state, manager)
  eval_fn = jit_eval_step(setup, example)
  # cost_analysis counts one device's program: the step's FLOPs are that times the devices.
  step_flops = compiled_flops(compiled) * mesh.size
  memory = compiled_memory(compiled)
  # CPU devices beyond the first are simulated (--xla_force_host_platform_device_count,
  # launch/local.sh) and share the host's cores, which one device's matmul already uses.
  peak_devices = jax.process_count() if jax.default_backend() == "cpu" else mesh.size
  peak = measure_matmul_peak(1024, repeats=3) * peak_devices
  log.info("train step: %.3g FLOPs, memory per device %s", step_flops, memory)

  logger = MetricLogger(workdir, config.train.steps, start)
  summary: dict[str, Any] = {"start_step": start, "step_flops": step_flops, "memory": memory,
                             "losses": {}}
  started = time.perf_counter()
  tracker = _StepTracker(config, logger, summary, manager, start, step_flops, peak)
  try:
    with logger.flushed_on_error():
      step, state = _train(setup, compiled, eval_fn, state, example, train_iter, manager,
                           tracker, preemption, started, profile, lock)
    manager.wait_until_finished()  # an async save is listed once it is finished
    checkpoint.rotate(manager, config.checkpoint.keep, protect=tracker.good)
    logger.bar.close()  # the training bar's time and rate end here, before the final eval
    summary["step"] = step
    summary["train_seconds"] = time.perf_counter() - started
    if step >= config.train.steps and not preemption.requested:
      split = config.data.eval_split
      result = evaluate(setup, eval_fn, state, 0, label=f"final eval (whole {split} split)",
                        cancelled=lambda: preemption.requested)
      if result is not None:
        summary["eval"] = result
        logger.write(step, result, "eval")
  finally:
    manager.wait_until_finished()
    logger.close()
    manager.close()
  if jax.process_index() == 0:
    storage.write_text(workdir / "summary.json", json.dumps(summary, indent=2, default=float))
  summary["state"] = state
  return summary


def _stop_before_first_step(start: int, state, manager) -> dict[str, Any]:
  """SIGTERM came before any step ran: nothing new to save; say so and stop."""
  tqdm.write(f"SIGTERM before the first step: stopping at step {start}, nothing trained, no "
             "checkpoint saved" + (f" (step {start} stays in {manager.directory})" if start else ""))
  manager.close()
  return {"start_step": start, "step": start, "train_seconds": 0.0, "losses": {}, "state": state}


def _newest(manager, at_most: int) -> int | None:
  """The newest checkpoint step <= at_most (None if none)."""
  return max((s for s in manager.all_steps() if s <= at_most), default=None)


def _train(setup, compiled, eval_fn, state, batch, train_iter, manager, tracker, preemption,
           started, profile, lock):
  """The step loop. Each step's results are fetched while the next step runs (one step in
  flight), so the progress bar and the throughput count completed steps; a step that is
  saved, evaluated or stopped at is waited for first, so a non-finite one is never saved."""
  config = setup.config
  step, in_flight = tracker.start, None
  while step < config.train.steps:
    profile.before(step + 1)
    state, metrics = compiled(state, batch)
    step += 1
    profile.after(step, state)
    if in_flight is not None:  # the previous step: its results are ready once this one runs
      tracker.finish(*in_flight, force_log=False)
    in_flight = (step, metrics)
    save_now = step % config.checkpoint.every == 0 or step == config.train.steps
    eval_now = bool(config.train.eval_every) and step % config.train.eval_every == 0 \
        and step < config.train.steps
    log_now = step % config.train.log_every == 0 or step == config.train.steps
    stop = preemption.reached(step) or _out_of_time(config, started, log_now)
    if lock is not None:
      lock.check()
    if save_now or eval_now or stop:
      # The checkpoint's own step is logged first: a kill right after the save must not
      # lose the line a resumed run will not write again.
      tracker.finish(*in_flight, force_log=save_now or stop)
      in_flight = None
    if eval_now and not stop:
      eval_start = time.perf_counter()
      result = evaluate(setup, eval_fn, state, config.train.eval_batches,
                        label=f"eval at step {step}", cancelled=lambda: preemption.requested)
      tracker.exclude(time.perf_counter() - eval_start)
      if result is None:  # SIGTERM during the evaluation: stop without finishing it
        stop = True
        tracker.finish_log(step)
      else:
        tracker.logger.write(step, result, "eval")
    if save_now or stop:
      tracker.logger.flush()
      checkpoint.save(manager, step, state, train_iter, force=True)
      tracker.saved(step)
    if stop:
      tracker.logger.bar.write(
          f"stopping at step {step} ({'SIGTERM' if preemption.requested else 'time budget'}); "
          f"checkpoint saved in {manager.directory}")
      break
    if step < config.train.steps:
      batch = to_global(setup, next(train_iter))
  profile.close()
  if in_flight is not None:
    tracker.finish(*in_flight, force_log=True)
  return step, state


class _StepTracker:
  """Bookkeeping of completed steps: progress bar, finiteness, throughput, logging, and
  which checkpoint is the last good one (its parameters gave a finite loss)."""

  def __init__(self, config, logger, summary, manager, start, step_flops, peak):
    self.config, self.logger, self.summary, self.manager = config, logger, summary, manager
    self.start, self.step_flops, self.peak = start, step_flops, peak
    self.lr_at = schedule(config)
    self.checkpoints = sorted(manager.all_steps())   # saved steps, oldest first
    self.good = start if start in self.checkpoints else None
    self.last_time, self.last_step = time.perf_counter(), start
    self.unlogged: tuple[int, dict] | None = None

  def exclude(self, seconds: float) -> None:
    """Leaves `seconds` (an evaluation) out of the throughput figures."""
    self.last_time += seconds

  def finish(self, step: int, metrics, *, force_log: bool) -> None:
    """Waits for `step`'s results; raises NonFiniteLossError if any is not finite."""
    metrics = jax.device_get(metrics)
    now = time.perf_counter()
    self.logger.advance()
    bad = _non_finite(metrics)
    if bad:
      self._diverged(step, metrics, bad)
    # The loss of `step` was computed from the parameters of step - 1: finite, so the
    # checkpoints up to step - 1 are good.
    self.good = max((s for s in self.checkpoints if s <= step - 1), default=self.good)
    self.unlogged = (step, metrics)
    if force_log or step % self.config.train.log_every == 0 or step == self.config.train.steps:
      self._log(now)

  def finish_log(self, step: int) -> None:
    if self.unlogged is not None and self.unlogged[0] == step:
      self._log(time.perf_counter())

  def saved(self, step: int) -> None:
    self.checkpoints.append(step)
    checkpoint.rotate(self.manager, self.config.checkpoint.keep, protect=self.good)
    self.checkpoints = sorted(set(self.manager.all_steps()) | {step})

  def _log(self, now: float) -> None:
    step, metrics = self.unlogged
    elapsed = max(now - self.last_time, 1e-9)
    steps_done = max(step - self.last_step, 1)
    scalars = {k: float(v) for k, v in metrics.items() if np.ndim(v) == 0}
    scalars["bpb"] = bits_per_byte(metrics["nats"], metrics["bytes"])
    scalars["lr"] = float(self.lr_at(step - 1))
    scalars["bytes_per_s"] = float(metrics["bytes"]) * steps_done / elapsed
    scalars["model_flops_per_s"] = self.step_flops * steps_done / elapsed
    scalars["mfu"] = scalars["model_flops_per_s"] / self.peak
    self.summary["losses"][step] = scalars["loss"]
    self.logger.write(step, scalars, "train")
    self.last_time, self.last_step, self.unlogged = now, step, None

  def _diverged(self, step: int, metrics, bad: list[str]) -> None:
    """Stops the run: nothing of `step` is saved; a checkpoint whose parameters produced
    the non-finite loss or gradient (step - 1) is moved aside, so a resume starts from
    the last good one."""
    self.unlogged = (step, metrics)
    self._log(time.perf_counter())
    from_previous = any(not math.isfinite(float(metrics[k])) for k in ("loss", "objective", "grad_norm")
                        if k in metrics)
    moved = ""
    self.manager.wait_until_finished()
    if from_previous and step - 1 in self.manager.all_steps():
      path = checkpoint.move_aside(self.manager, step - 1, "diverged")
      moved = (f" The checkpoint of step {step - 1}, whose parameters gave it, was moved to "
               f"{path}.")
    good = _newest(self.manager, step - 1)
    where = (f"the last good checkpoint is step {good} in {self.manager.directory}"
             if good is not None else "no good checkpoint was saved")
    source = f"computed from the parameters of step {step - 1}" if from_previous else "after the update"
    raise NonFiniteLossError(
        f"step {step}: {' and '.join(bad)} became non-finite ({source}); step {step} was "
        f"not saved.{moved} {where[0].upper() + where[1:]}. Lower --config.train.lr, raise "
        "--config.train.warmup_steps or use float32, then rerun with the same --workdir to "
        "resume from that checkpoint.")
