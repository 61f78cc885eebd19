"""The run directory: one run at a time (the workdir lock), and metrics that a resume or a
restart from step 0 does not duplicate (metrics.jsonl and TensorBoard)."""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from test_train_loop import ROOT, config_for, corpus, train_cli  # noqa: F401 (fixture)


def _dead_pid() -> int:
  proc = subprocess.Popen(["true"])
  proc.wait()
  return proc.pid


def _tb_steps(workdir, tag="train/loss") -> list[int]:
  """The steps TensorBoard itself shows for `tag` (its own event reader and purge rules)."""
  from tensorboard.backend.event_processing import event_accumulator
  accumulator = event_accumulator.EventAccumulator(str(workdir / "tb"), size_guidance={"scalars": 0})
  accumulator.Reload()
  return [event.step for event in accumulator.Scalars(tag)]


def _jsonl_steps(workdir, split="train") -> list[int]:
  lines = (workdir / "metrics.jsonl").read_text().splitlines()
  return [json.loads(line)["step"] for line in lines if json.loads(line)["split"] == split]


@pytest.mark.slow
def test_resume_and_restart_do_not_duplicate_metrics(corpus, tmp_path, caplog):  # noqa: F811
  from hnet import loop
  config = config_for(corpus, **{"train.steps": 6, "checkpoint.every": 2})
  workdir = tmp_path / "run"
  first = loop.run(config, str(workdir))
  shutil.rmtree(workdir / "checkpoints" / "6")  # the next run resumes from step 4: replays 5, 6
  shutil.rmtree(workdir / "checkpoints" / "4")
  resumed = loop.run(config, str(workdir))
  assert resumed["start_step"] == 2
  assert _jsonl_steps(workdir) == [1, 2, 3, 4, 5, 6]
  assert _jsonl_steps(workdir, "eval") == [6]
  assert _tb_steps(workdir) == [1, 2, 3, 4, 5, 6]
  assert _tb_steps(workdir, "eval/bpb") == [6]
  records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  losses = {r["step"]: r["loss"] for r in records if r["split"] == "train"}
  for step in (1, 2, 3, 4, 5, 6):  # kept and replayed records are the runs' own values
    assert losses[step] == pytest.approx(first["losses"][step], rel=1e-6), step

  shutil.rmtree(workdir / "checkpoints")  # emptied: the next run starts again from step 0
  with caplog.at_level("WARNING", logger="hnet"):
    again = loop.run(config_for(corpus, **{"train.steps": 4, "checkpoint.every": 2}), str(workdir))
  assert again["start_step"] == 0
  assert "starting a new metrics history" in caplog.text
  assert _jsonl_steps(workdir) == [1, 2, 3, 4]
  assert _tb_steps(workdir) == [1, 2, 3, 4]
  archived = list(workdir.glob("metrics-before-*.jsonl"))
  assert len(archived) == 1 and archived[0].name in caplog.text
  assert [json.loads(line)["step"] for line in archived[0].read_text().splitlines()
          if json.loads(line)["split"] == "train"] == [1, 2, 3, 4, 5, 6]


def check_lock_semantics(workdir, caplog, monkeypatch):
  """Stale locks are taken over with a warning; a live one refuses naming its holder; a
  run whose lock was taken over stops. `workdir`: an epath.Path, local or gs://."""
  from hnet import lock
  path = workdir / lock.LOCK_FILE
  here = socket.gethostname()
  # A dead process on this host: taken over at once, with a warning naming it.
  dead = _dead_pid()
  path.write_text(json.dumps({"host": here, "pid": dead, "started": 1.0, "renewed": time.time()}))
  held = lock.WorkdirLock(workdir)
  with caplog.at_level("WARNING", logger="hnet"):
    held.acquire()
  assert "taking over the stale workdir lock" in caplog.text and f"pid {dead}" in caplog.text
  # While it is held, a second run (another pid of this host) is refused, naming the holder.
  record = json.loads(path.read_text())
  assert record["pid"] == os.getpid() and record["host"] == here
  path.write_text(json.dumps({**record, "pid": os.getppid(), "token": "other"}))
  with pytest.raises(lock.WorkdirLockedError, match=f"pid {os.getppid()}"):
    lock.WorkdirLock(workdir).acquire()
  # Our renewal sees that the lock is no longer ours and the loop's check stops the run.
  held.renew()
  with pytest.raises(lock.WorkdirLockedError, match="now belongs to"):
    held.check()
  held.release()
  assert path.exists()  # not ours: left in place
  # Another host: a run that keeps renewing refuses after one lease of waiting; one that
  # stopped renewing is taken over after it.
  monkeypatch.setattr(lock, "LEASE_SECONDS", 1.5)
  foreign = {"host": "other-host", "pid": 1, "started": 1.0, "token": "foreign"}
  path.write_text(json.dumps({**foreign, "renewed": time.time()}))
  stop = threading.Event()

  def keep_renewing():
    while not stop.wait(0.2):
      path.write_text(json.dumps({**foreign, "renewed": time.time()}))
  renewer = threading.Thread(target=keep_renewing)
  renewer.start()
  try:
    with pytest.raises(lock.WorkdirLockedError, match="'other-host'"):
      lock.WorkdirLock(workdir).acquire()
  finally:
    stop.set()
    renewer.join()
  path.write_text(json.dumps({**foreign, "renewed": time.time()}))
  taker = lock.WorkdirLock(workdir)
  started = time.time()
  taker.acquire()
  assert time.time() - started >= 1.0  # it waited out the lease
  assert json.loads(path.read_text())["token"] == taker.record["token"]
  taker.release()
  assert not path.exists()


def test_stale_lock_is_taken_over_and_a_live_one_refuses(tmp_path, caplog, monkeypatch):
  from etils import epath
  check_lock_semantics(epath.Path(tmp_path), caplog, monkeypatch)


@pytest.mark.slow
def test_second_run_on_a_locked_workdir_exits_naming_the_first(corpus, tmp_path):  # noqa: F811
  workdir = tmp_path / "run"
  cmd, env = train_cli(workdir, corpus, **{"train.steps": 100000, "checkpoint.every": 100000})
  first = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                           text=True)
  try:
    deadline = time.time() + 240
    while time.time() < deadline and not (workdir / "metrics.jsonl").exists():
      assert first.poll() is None, first.stderr.read()[-2000:]
      time.sleep(0.1)
    cmd, env = train_cli(workdir, corpus, **{"train.steps": 4, "model.num_layers": 1})
    second = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert second.returncode != 0
    assert f"pid {first.pid}" in second.stderr and socket.gethostname() in second.stderr
    assert "in use by another run" in second.stderr
    assert json.loads((workdir / "config.json").read_text())["model"]["num_layers"] == 2
  finally:
    first.send_signal(signal.SIGTERM)
    _, err = first.communicate(timeout=120)
  assert first.returncode == 0, err[-2000:]
  assert not (workdir / "lock.json").exists()
