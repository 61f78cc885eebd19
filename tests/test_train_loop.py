"""The training loop end to end: resume after a kill, SIGTERM, corrupt checkpoints,
NaN loss, config errors, multi-process runs. Runs use a tiny model on a small local
text corpus (source=files), so they do not need the embedded corpus."""
import itertools
import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from hnet.testing import subprocess_env, subprocess_xla_flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SENTENCES = [
    "The quick brown fox jumps over the lazy dog. ",
    "Now is the winter of our discontent made glorious summer. ",
    "Of man's first disobedience, and the fruit of that forbidden tree. ",
    "All the world's a stage, and all the men and women merely players. ",
]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  directory = tmp_path_factory.mktemp("corpus")
  rng = np.random.default_rng(0)
  for i in range(24):
    text = "".join(SENTENCES[j] for j in rng.integers(0, len(SENTENCES), 30))
    (directory / f"doc{i:02d}.txt").write_bytes(text.encode() + (b"\xff\xfe" if i % 5 == 0 else b""))
  return str(directory)


def overrides(corpus, **extra):
  args = {"data.source": "files", "data.path": corpus, "data.seq_len": 32, "data.eval_fraction": 0.2,
          "model.dim": 32, "model.num_layers": 2, "model.num_heads": 2, "model.num_kv_heads": 2,
          "model.mlp_dim": 64, "train.batch_size": 8, "train.steps": 8, "train.warmup_steps": 2,
          "train.log_every": 1, "train.eval_every": 0, "train.eval_batches": 2,
          "checkpoint.every": 2, "checkpoint.async_save": False, "mesh.data": 1}
  args.update(extra)
  return [f"--config.{k}={v}" for k, v in args.items()]


def train_cli(workdir, corpus, env=None, **extra):
  cmd = [sys.executable, "-m", "hnet.main", "--config=configs/transformer_tiny.py",
         f"--workdir={workdir}"] + overrides(corpus, **extra)
  full_env = subprocess_env(**(env or {}))
  return cmd, full_env


def run_cli(workdir, corpus, timeout=300, **extra):
  cmd, env = train_cli(workdir, corpus, **extra)
  return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def train_losses(workdir) -> dict[int, float]:
  losses = {}
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    for line in f:
      record = json.loads(line)
      if record["split"] == "train":
        losses[record["step"]] = record["loss"]
  return losses


def one_process_losses(tmp_path_factory, corpus, devices: int, **extra) -> dict[int, float]:
  """Per-step losses of `train_cli(**extra)` in one process over `devices` simulated
  devices: the reference that multi-process runs (SLURM tasks, the TPU launcher's workers)
  must equal. Run once per pytest run for a given corpus and overrides: pytest-xdist's
  workers share the result through a file in the run's common temporary directory,
  written under an exclusive lock (the other worker waits rather than runs it again).
  The losses do not depend on how often a run saves: the reference saves once, at its
  end, whatever `checkpoint.every` the caller's runs use."""
  import fcntl
  import hashlib
  extra = {**extra, "checkpoint.every": 10**6}  # saves only at its last step
  digest = hashlib.sha256(json.dumps([devices, extra], sort_keys=True).encode())
  for document in sorted(pathlib.Path(corpus).iterdir()):
    digest.update(document.name.encode() + document.read_bytes())
  base = tmp_path_factory.getbasetemp()
  shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
  path = shared / f"one-process-losses-{digest.hexdigest()[:16]}.json"
  with open(shared / "one-process-losses.lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    if not path.exists():
      workdir = tmp_path_factory.mktemp("one_process") / "run"
      cmd, env = train_cli(workdir, corpus, **extra)
      env["XLA_FLAGS"] = subprocess_xla_flags(devices)
      result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
      assert result.returncode == 0, result.stderr[-2000:]
      path.write_text(json.dumps(train_losses(workdir)))
  return {int(step): loss for step, loss in json.loads(path.read_text()).items()}


def config_for(corpus, **extra):
  from configs import transformer_tiny
  c = transformer_tiny.get_config()
  for arg in overrides(corpus, **{"mesh.data": -1, **extra}):
    key, value = arg[len("--config."):].split("=", 1)
    section, field = key.split(".")
    c[section][field] = type(c[section][field])(value) if c[section][field] != "" else value
  return c


@pytest.mark.slow
def test_killed_run_resumes_exactly(corpus, tmp_path):
  reference = run_cli(tmp_path / "ref", corpus)
  assert reference.returncode == 0, reference.stderr[-2000:]
  expected = train_losses(tmp_path / "ref")
  cmd, env = train_cli(tmp_path / "killed", corpus)
  proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  checkpoints = tmp_path / "killed" / "checkpoints"
  deadline = time.time() + 240
  while time.time() < deadline and proc.poll() is None:
    if (checkpoints / "4").is_dir():
      break
    time.sleep(0.05)
  proc.kill()  # SIGKILL: no chance to save anything more
  proc.wait()
  resumed = run_cli(tmp_path / "killed", corpus)
  assert resumed.returncode == 0, resumed.stderr[-2000:]
  assert "resumed from step" in resumed.stderr
  got = train_losses(tmp_path / "killed")
  assert set(got) == set(expected)
  for step in expected:  # every step, before and after the kill, matches the uninterrupted run
    assert got[step] == pytest.approx(expected[step], rel=1e-6, abs=1e-6), step


@pytest.mark.slow
def test_sigterm_saves_and_exits_cleanly(corpus, tmp_path):
  cmd, env = train_cli(tmp_path / "run", corpus, **{"train.steps": 100000, "checkpoint.every": 100000})
  proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  metrics = tmp_path / "run" / "metrics.jsonl"
  deadline = time.time() + 240
  while time.time() < deadline and not (metrics.exists() and metrics.stat().st_size > 0):
    time.sleep(0.1)
  proc.send_signal(signal.SIGTERM)
  out, err = proc.communicate(timeout=120)
  assert proc.returncode == 0, err[-2000:]
  assert "SIGTERM" in out + err
  steps = [int(p) for p in os.listdir(tmp_path / "run" / "checkpoints") if p.isdigit()]
  assert steps and max(steps) == max(train_losses(tmp_path / "run"))


def test_corrupt_latest_checkpoint_falls_back(corpus, tmp_path, caplog):
  import jax
  from hnet import checkpoint, loop, sharding
  from hnet.train import make_setup
  config = config_for(corpus, **{"train.steps": 4})
  workdir = str(tmp_path / "run")
  loop.run(config, workdir)
  state_dir = tmp_path / "run" / "checkpoints" / "4" / "state"
  for root, _, files in os.walk(state_dir):  # damage every data file of the newest step
    for name in files:
      if not name.endswith(".json"):
        with open(os.path.join(root, name), "r+b") as f:
          f.truncate(7)
  setup = make_setup(config, sharding.make_mesh(1, 1, 1, devices=jax.devices()[:1]))
  manager = checkpoint.make_manager(os.path.join(workdir, "checkpoints"), async_save=False)
  with caplog.at_level("WARNING", logger="hnet"):
    step, state = checkpoint.restore(manager, setup.abstract_state)
  assert step == 2 and int(state["step"]) == 2
  assert "step 4" in caplog.text and "falling back" in caplog.text
  shutil.rmtree(tmp_path / "run" / "checkpoints" / "2")
  with pytest.raises(checkpoint.CheckpointError, match="no readable checkpoint"):
    checkpoint.restore(manager, setup.abstract_state)


def test_warm_start_copies_shared_params_and_keeps_new_ones(corpus, tmp_path, caplog):
  import jax
  from flax import nnx, traverse_util
  from hnet import checkpoint, loop, sharding
  from hnet.runs import load_model
  from hnet.train import init_state, make_setup, warm_start
  source = str(tmp_path / "source")
  loop.run(config_for(corpus, **{"train.steps": 2}), source)
  trained = traverse_util.flatten_dict(nnx.to_pure_dict(nnx.state(load_model(source)[0], nnx.Param)))
  deeper = config_for(corpus, **{"model.num_layers": 3})  # one layer more than the source
  setup = make_setup(deeper, sharding.make_mesh(1, 1, 1, devices=jax.devices()[:1]))
  fresh = init_state(setup, eager=True)
  with caplog.at_level("INFO", logger="hnet"):
    warmed = warm_start(setup, fresh, source)
  before = traverse_util.flatten_dict(fresh["params"])
  after = traverse_util.flatten_dict(warmed["params"])
  copied = [k for k in after if k in trained]
  new = [k for k in after if k not in trained]
  assert copied and new and all("2" in map(str, k) for k in new)  # only the third layer is new
  for key in copied:
    np.testing.assert_array_equal(np.asarray(after[key]), np.asarray(trained[key]))
  for key in new:
    np.testing.assert_array_equal(np.asarray(after[key]), np.asarray(before[key]))
  assert "warm start" in caplog.text and f"{len(copied)} parameter arrays copied" in caplog.text
  assert int(warmed["step"]) == 0

  wider = config_for(corpus, **{"model.dim": 48})
  setup = make_setup(wider, sharding.make_mesh(1, 1, 1, devices=jax.devices()[:1]))
  with pytest.raises(checkpoint.CheckpointError, match="differ in shape"):
    warm_start(setup, init_state(setup, eager=True), source)
  with pytest.raises(checkpoint.CheckpointError, match="holds no checkpoint"):
    warm_start(setup, init_state(setup, eager=True), str(tmp_path / "empty"))


def test_missing_checkpoint_is_a_clear_error(tmp_path):
  from hnet.runs import load_model
  with pytest.raises(FileNotFoundError, match="not a run directory"):
    load_model(str(tmp_path))


def test_unknown_config_key_names_it(tmp_path):
  result = subprocess.run([sys.executable, "-m", "hnet.main", "--config=configs/transformer_tiny.py",
                           "--config.model.num_layerz=3", f"--workdir={tmp_path}"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
  assert result.returncode != 0
  assert "num_layerz" in result.stderr and "unknown key" in result.stderr
  # the hint's command lists every field, with the overrides applied
  hint = result.stderr.split("Did you mean 'num_layers'? ")[1].split(" lists every field")[0]
  assert hint == "python -m hnet.main --config=configs/transformer_tiny.py --print_config"
  listed = subprocess.run([sys.executable, "-m", "hnet.main", "--config=configs/transformer_tiny.py",
                           "--print_config", "--config.model.num_layers=3"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
  assert listed.returncode == 0 and "num_layers: 3" in listed.stdout
  assert all(f"  {field}:" in listed.stdout for field in ("eval_batches", "mlp_dim", "keep", "seq_len"))


def test_bad_dtype_names_the_key(corpus):
  import jax
  from hnet import sharding
  from hnet.train import make_setup
  config = config_for(corpus, **{"model.dtype": "float16x"})
  with pytest.raises(ValueError, match=r"--config.model.dtype='float16x' .*float32, bfloat16"):
    make_setup(config, sharding.make_mesh(1, 1, 1, devices=jax.devices()[:1]))


def test_user_error_is_one_line_unless_verbose(tmp_path, monkeypatch):
  """batch 12 on 8 devices: exit 1, one line naming the valid sizes, no traceback."""
  result = subprocess.run([sys.executable, "-m", "hnet.main", "--config=configs/transformer_tiny.py",
                           f"--workdir={tmp_path}", "--config.train.batch_size=12"], cwd=ROOT,
                          env=subprocess_env(8, HNET_VERBOSE=""),
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
  errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
  assert len(errors) == 1 and "train.batch_size=12" in errors[0] and "8 or 16" in errors[0]
  from hnet import cli

  def bad_input():
    raise ValueError("bad input, do this")
  with pytest.raises(SystemExit, match="^error: bad input, do this"):
    cli.report(bad_input)
  monkeypatch.setenv("HNET_VERBOSE", "1")
  with pytest.raises(ValueError, match="bad input"):  # the traceback on request
    cli.report(bad_input)


def test_sigterm_before_the_first_step_saves_nothing_and_says_so(corpus, tmp_path, capsys):
  import threading
  from hnet import loop

  def ignore(signum, frame):  # until the run installs its own handler
    del signum, frame
  previous = signal.signal(signal.SIGTERM, ignore)

  def sigterm_once_the_run_listens():
    deadline = time.time() + 120
    while time.time() < deadline and signal.getsignal(signal.SIGTERM) is ignore:
      time.sleep(0.001)
    os.kill(os.getpid(), signal.SIGTERM)
  sender = threading.Thread(target=sigterm_once_the_run_listens, daemon=True)
  sender.start()
  try:
    summary = loop.run(config_for(corpus), str(tmp_path / "run"))
  finally:
    sender.join(timeout=130)
    signal.signal(signal.SIGTERM, previous)
  assert summary["step"] == 0 and "eval" not in summary
  assert not [p for p in os.listdir(tmp_path / "run" / "checkpoints") if p.isdigit()]
  captured = capsys.readouterr()
  assert "SIGTERM before the first step" in captured.out + captured.err
  assert "no checkpoint saved" in captured.out + captured.err


def test_sigterm_during_an_evaluation_cancels_it(corpus):
  import jax
  from hnet import loop, sharding
  from hnet.train import init_state, jit_eval_step, make_setup
  config = config_for(corpus)
  setup = make_setup(config, sharding.make_mesh(-1, 1, 1))
  state = init_state(setup, eager=True)
  example = loop.to_global(setup, next(loop.data_iterator(config, config.data.eval_split, repeat=False)))
  eval_fn = jit_eval_step(setup, example)
  asked = []

  def sigterm_after_two_batches() -> bool:
    asked.append(True)
    return len(asked) > 2
  with jax.set_mesh(setup.mesh):
    assert loop.evaluate(setup, eval_fn, state, 0, cancelled=sigterm_after_two_batches) is None
    assert len(asked) == 3  # the split has more batches than that: it stopped early
    assert loop.evaluate(setup, eval_fn, state, 2)["bytes"] > 0


def test_missing_dataset_is_a_clear_error(tmp_path):
  from hnet import loop
  config = config_for(str(tmp_path / "nothing_here" / "*.txt"))
  with pytest.raises(FileNotFoundError, match="nothing_here"):
    loop.run(config, str(tmp_path / "run"))


def _free_port():
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_train_like_one(corpus, tmp_path):
  cmd, env = train_cli(tmp_path / "single", corpus, **{"train.steps": 4, "mesh.data": 2})
  env["XLA_FLAGS"] = subprocess_xla_flags(2)
  single = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert single.returncode == 0, single.stderr[-2000:]
  port = _free_port()
  procs = []
  for pid in range(2):
    cmd, env = train_cli(tmp_path / "multi", corpus, **{"train.steps": 4, "mesh.data": 2})
    cmd += [f"--coordinator=localhost:{port}", "--num_processes=2", f"--process_id={pid}"]
    procs.append(subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True))
  outputs = [p.communicate(timeout=300) for p in procs]
  for p, (_, err) in zip(procs, outputs):
    assert p.returncode == 0, err[-3000:]
  expected, got = train_losses(tmp_path / "single"), train_losses(tmp_path / "multi")
  assert set(got) == set(expected) == {1, 2, 3, 4}
  for step in expected:
    assert got[step] == pytest.approx(expected[step], rel=1e-5), step


# ----------------------------------------------------------------- reliability (issue 18)


@pytest.fixture(scope="module")
def trained_run(corpus, tmp_path_factory):
  """A run directory trained 4 steps with checkpoints at steps 2 and 4 (copy it to change it)."""
  from hnet import loop
  workdir = str(tmp_path_factory.mktemp("trained") / "run")
  loop.run(config_for(corpus, **{"train.steps": 4, "train.log_every": 2}), workdir)
  return workdir


def test_unreadable_checkpoint_is_moved_aside_and_the_run_saves_past_it(corpus, trained_run, tmp_path,
                                                                        caplog):
  from hnet import checkpoint, loop
  workdir = str(tmp_path / "run")
  shutil.copytree(trained_run, workdir)
  # The reproducer truncates the largest data file; in one process the tensorstore
  # cache may still hold it, so every data file of the step is truncated.
  for root, _, names in os.walk(tmp_path / "run" / "checkpoints" / "4" / "state"):
    for name in names:
      if not name.endswith(".json"):
        with open(os.path.join(root, name), "r+b") as f:
          f.truncate(7)
  with caplog.at_level("WARNING", logger="hnet"):
    summary = loop.run(config_for(corpus, **{"train.steps": 6, "train.log_every": 2}), workdir)
  assert summary["start_step"] == 2 and summary["step"] == 6
  assert "moved the unreadable step 4" in caplog.text
  names = set(os.listdir(tmp_path / "run" / "checkpoints"))
  assert {"4", "6", "4.unreadable"} <= names  # step 4 retrained and saved again
  manager = checkpoint.make_manager(os.path.join(workdir, "checkpoints"), async_save=False)
  assert 6 in manager.all_steps() and all(isinstance(s, int) for s in manager.all_steps())
  # a step that does not exist (tools/eval.py --step=5) names the ones that do
  with pytest.raises(checkpoint.CheckpointError, match=r"no checkpoint at step 5 .* holds steps 2, 4, 6"):
    checkpoint.restore(manager, None, step=5)
  manager.close()


def test_diverged_run_never_saves_a_non_finite_update_nor_deletes_the_last_good_one(corpus, tmp_path):
  from flax import traverse_util
  from hnet import loop
  from hnet.runs import load_model
  from flax import nnx
  workdir = str(tmp_path / "run")
  diverging = {"train.lr": 1e30, "train.grad_clip": 0.0, "train.warmup_steps": 1,
               "train.schedule": "constant", "checkpoint.every": 1, "checkpoint.keep": 1}
  with pytest.raises(loop.NonFiniteLossError) as failure:
    loop.run(config_for(corpus, **diverging), workdir)
  message = str(failure.value)
  # this run's gradient norm turns nan while the loss is still finite: the message says so
  assert "the gradient norm (nan)" in message and "the loss (" not in message, message
  good = int(message.split("last good checkpoint is step ")[1].split()[0])
  assert str(good) in os.listdir(tmp_path / "run" / "checkpoints")  # keep=1 did not delete it
  params = traverse_util.flatten_dict(nnx.to_pure_dict(nnx.state(load_model(workdir)[0], nnx.Param)))
  assert all(np.isfinite(np.asarray(v)).all() and np.abs(np.asarray(v)).max() < 1e6
             for v in params.values())
  # the same workdir with a sane learning rate resumes from the good step and finishes
  sane = {**diverging, "train.lr": 1e-3, "train.steps": good + 2}
  summary = loop.run(config_for(corpus, **sane), workdir)
  assert summary["start_step"] == good and np.isfinite(summary["eval"]["bpb"])


def test_batch_that_the_data_axes_cannot_divide_is_an_error(corpus, tmp_path):
  import jax
  from hnet import loop
  assert jax.device_count() == 8
  with pytest.raises(ValueError, match=r"train.batch_size=12 .* 8 ways .*nearest 8 or 16"):
    loop.run(config_for(corpus, **{"train.batch_size": 12, "train.steps": 1}), str(tmp_path / "run"))
  with pytest.raises(ValueError, match=r"nearest 8 \("):
    loop.run(config_for(corpus, **{"train.batch_size": 4, "train.steps": 1}), str(tmp_path / "run"))


def test_a_run_can_take_some_of_the_devices(corpus, tmp_path):
  """loop.run(devices=...) spans its mesh over those devices only; config.mesh still
  checks that they divide (data=-1: all of them)."""
  import jax
  from hnet import loop
  devices = jax.devices()[2:4]
  summary = loop.run(config_for(corpus, **{"train.steps": 1}), str(tmp_path / "run"),
                     devices=devices)
  assert summary["step"] == 1
  for leaf in jax.tree.leaves(summary["state"]):
    assert leaf.sharding.device_set == set(devices)
  with pytest.raises(ValueError, match=r"mesh data\*fsdp\*tensor = 4\*1\*1 = 4 but 2 devices"):
    loop.run(config_for(corpus, **{"train.steps": 1, "mesh.data": 4}), str(tmp_path / "other"),
             devices=devices)


def _train_records(workdir) -> list[dict]:
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [r for r in map(json.loads, f) if r["split"] == "train"]


@pytest.mark.slow
def test_throughput_does_not_depend_on_how_often_it_is_logged(corpus, tmp_path):
  """Model FLOP/s after warm-up, logged every step vs every 20 steps (issue 18: within
  20%). Each record covers the wall time of its steps, measured once their results are
  ready.

  A 20-step window is about 1 s here, and a shared machine (CI's included: one run saw
  single-step mfu vary 3x) can slow any one window; the suite's other xdist worker shares
  the 2 cores throughout. So each run trains 60 steps and its throughput is that of the
  faster of its two 20-step windows after the first (steps 21-40 and 41-60): a stall
  slows one window. Runs alternate log_every=1 and 20 and the best of each is compared
  after every pair, for at least four pairs and until 100 s have passed: a logging cost or
  a timing error that is real shows in every window of every pair and still fails; stalls
  do not. (In one CI run, all four pairs fell within the 30 s of the other worker's
  multi-process SLURM test, and every log_every=1 run there was 1.4x slower; alone, or
  beside 4 busy JAX processes, the first pair passes.) The runs
  are compared by throughput, not by each record's mfu: mfu divides by the matmul peak
  each run measures at its start, which moves as much from run to run (mfu 0.074-0.102
  for like windows)."""
  from hnet import loop
  best = {1: 0.0, 20: 0.0}
  deadline = time.monotonic() + 100
  for repeat, every in enumerate(itertools.cycle((1, 20))):
    config = config_for(corpus, **{"train.steps": 60, "train.log_every": every, "checkpoint.every": 1000,
                                   "model.dim": 64, "model.mlp_dim": 256, "data.seq_len": 64})
    workdir = str(tmp_path / f"run{repeat}")
    summary = loop.run(config, workdir)
    records = _train_records(workdir)
    assert [r["step"] for r in records] == list(range(every, 61, every))
    assert all(r["mfu"] < 1 for r in records), [r["mfu"] for r in records]  # a physical bound
    seconds = [summary["step_flops"] * every / r["model_flops_per_s"] for r in records]
    assert sum(seconds) <= summary["train_seconds"], (seconds, summary["train_seconds"])
    per_window = 20 // every
    windows = [sum(seconds[i:i + per_window]) for i in range(per_window, len(seconds), per_window)]
    assert len(windows) == 2, windows
    best[every] = max(best[every], 20 * summary["step_flops"] / min(windows))
    if every == 20 and (abs(best[1] - best[20]) <= 0.2 * best[20]
                        or (repeat >= 7 and time.monotonic() > deadline)):
      break
  print(f"model FLOP/s, fastest 20-step window after warm-up, best of {repeat // 2 + 1} runs "
        f"each: log_every=1 {best[1]:.4g}, log_every=20 {best[20]:.4g}")
  assert abs(best[1] - best[20]) <= 0.2 * best[20], best


def test_sample_takes_any_prompt_bytes_and_checks_the_length(trained_run):
  from hnet import generate
  from hnet.runs import load_model
  result = subprocess.run([sys.executable, "tools/sample.py", f"--workdir={trained_run}",
                           b"--prompt=caf\xe9 \xff", "--max_new_bytes=40", "--temperature=0"],
                          cwd=ROOT, env=subprocess_env(),
                          capture_output=True, timeout=300)
  out = result.stdout.decode("utf-8", "replace")
  assert result.returncode == 0, result.stderr.decode("utf-8", "replace")[-2000:]
  assert "--- step 4" in out and "caf\ufffd \ufffd" in out  # the prompt's own bytes, echoed
  assert "note: generating 47 bytes (prompt + max_new_bytes), past the 32 the run was trained on" in out
  model = load_model(trained_run)[0]
  with pytest.raises(ValueError, match="max_new_bytes=-5: ask for at least 1 byte"):
    generate.generate(model, [b"To be"], max_new_bytes=-5)
  with pytest.raises(ValueError, match=r"max_new_bytes=100000000 .* GB cache, more than the .* GB"):
    generate.generate(model, [b"To be"], max_new_bytes=10**8)
