"""The training loop end to end: resume after a kill, SIGTERM, corrupt checkpoints,
NaN loss, config errors, multi-process runs. Runs use a tiny model on a small local
text corpus (source=files), so they do not need the embedded corpus."""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

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
  full_env = {**os.environ, "XLA_FLAGS": "", "JAX_PLATFORMS": "cpu", **(env or {})}
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
  fresh = init_state(setup)
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
    warm_start(setup, init_state(setup), source)
  with pytest.raises(checkpoint.CheckpointError, match="holds no checkpoint"):
    warm_start(setup, init_state(setup), str(tmp_path / "empty"))


def test_missing_checkpoint_is_a_clear_error(tmp_path):
  from hnet.runs import load_model
  with pytest.raises(FileNotFoundError, match="not a run directory"):
    load_model(str(tmp_path))


def test_nan_loss_stops_with_pointer_to_last_checkpoint(corpus, tmp_path):
  from hnet import loop
  config = config_for(corpus, **{"train.lr": 1e30, "train.grad_clip": 0.0, "train.warmup_steps": 1,
                                 "train.schedule": "constant", "checkpoint.every": 1})
  with pytest.raises(loop.NonFiniteLossError, match=r"at step \d+; the last good checkpoint is step \d+"):
    loop.run(config, str(tmp_path / "run"))


def test_unknown_config_key_names_it(tmp_path):
  result = subprocess.run([sys.executable, "-m", "hnet.main", "--config=configs/transformer_tiny.py",
                           "--config.model.num_layerz=3", f"--workdir={tmp_path}"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
  assert result.returncode != 0
  assert "num_layerz" in result.stderr and "unknown key" in result.stderr


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
  env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
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
