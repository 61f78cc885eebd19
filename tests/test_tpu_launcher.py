"""launch/tpu.py against a stand-in for the gcloud CLI put first on PATH.

The stand-in (written below) records every call and plays the Cloud TPU side: a queued
resource with a state, and per worker a home directory in which `tpu-vm scp` puts files
and `tpu-vm ssh` runs the command as a local process, with the environment JAX's TPU
cluster detection reads (TPU_WORKER_HOSTNAMES, TPU_WORKER_ID; on real TPU VMs JAX asks
the metadata server for the same facts). The JAX processes it starts are real: 2 workers
train together and must equal a 1-process run, through a worker's death and a slice
preemption."""
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from hnet.testing import subprocess_env

from test_train_loop import ROOT, corpus, one_process_losses, overrides, train_losses  # noqa: F401

# A checkpoint every 4 steps: a save of the 2 workers takes a few tenths of a second here.
STEPS = {"train.steps": 24, "checkpoint.every": 4, "mesh.data": 2}

GCLOUD = r'''#!{python}
"""Stand-in for `gcloud compute tpus ...` (tests/test_tpu_launcher.py): queued resources
and TPU VM workers on this machine."""
import json, os, shutil, signal, socket, subprocess, sys

DIR = os.environ["GCLOUD_STANDIN_DIR"]
WORKERS = int(os.environ.get("GCLOUD_STANDIN_WORKERS", "2"))
SLICE = os.path.join(DIR, "slice.json")
args = sys.argv[1:]
with open(os.path.join(DIR, "calls.jsonl"), "a") as f:
  f.write(json.dumps(args) + "\n")
words = [a for a in args if not a.startswith("--")]
option = lambda name: next((a.split("=", 1)[1] for a in args if a.startswith(f"--{{name}}=")), None)
load = lambda: json.load(open(SLICE)) if os.path.exists(SLICE) else None
homes = lambda: [os.path.join(DIR, "workers", f"w{{i}}") for i in range(WORKERS)]


def fail(message, code=1):
  print(message, file=sys.stderr)
  sys.exit(code)


def stop_worker_runs():  # a deleted VM takes its processes with it
  for home in homes():
    pid_file = os.path.join(home, "hnet", ".launch", "pid")
    if os.path.exists(pid_file):
      try:
        os.killpg(int(open(pid_file).read()), signal.SIGKILL)
      except ProcessLookupError:
        pass


if words[:3] == ["compute", "tpus", "queued-resources"]:
  verb, name, current = words[3], words[4], load()
  if verb == "describe":
    if current is None:
      fail(f"ERROR: (gcloud.compute.tpus.queued-resources.describe) NOT_FOUND: {{name}} not found")
    print(current["state"])
  elif verb == "create":
    if current is not None:
      fail(f"ERROR: (gcloud.compute.tpus.queued-resources.create) ALREADY_EXISTS: {{name}}")
    shutil.rmtree(os.path.join(DIR, "workers"), ignore_errors=True)
    for home in homes():
      os.makedirs(home)
    with socket.socket() as s:
      s.bind(("127.0.0.1", 0))
      port = s.getsockname()[1]
    json.dump({{"name": name, "state": "ACTIVE", "port": port, "spot": "--spot" in args,
               "accelerator_type": option("accelerator-type")}}, open(SLICE, "w"))
  elif verb == "delete":
    if current is None:
      fail(f"ERROR: (gcloud.compute.tpus.queued-resources.delete) NOT_FOUND: {{name}}")
    stop_worker_runs()
    shutil.rmtree(os.path.join(DIR, "workers"), ignore_errors=True)
    os.remove(SLICE)
  sys.exit(0)

if words[:3] != ["compute", "tpus", "tpu-vm"] or words[3] not in ("scp", "ssh"):
  fail(f"the gcloud stand-in does not know {{args}}", 2)
current = load()
if current is None or current["state"] != "ACTIVE":
  fail("ssh: connect to host: Connection refused", 255)
worker = option("worker")
chosen = range(WORKERS) if worker == "all" else [int(worker)]
if words[3] == "scp":
  source, target = words[4], words[5].split(":", 1)[1]
  for i in chosen:
    shutil.copy(source, os.path.join(homes()[i], target))
  sys.exit(0)
procs = []
for i in chosen:
  env = {{**os.environ, "HOME": homes()[i], "TPU_WORKER_ID": str(i),
         "TPU_WORKER_HOSTNAMES": ",".join(["127.0.0.1"] * WORKERS),
         "JAX_COORDINATOR_PORT": str(current["port"]),
         "JAX_COORDINATOR_BIND_ADDRESS": f"127.0.0.1:{{current['port']}}"}}
  procs.append(subprocess.Popen(["bash", "-c", option("command")], cwd=homes()[i], env=env))


def hang_up(signum, frame):  # the ssh sessions end with gcloud
  for p in procs:
    p.kill()
  sys.exit(0)


signal.signal(signal.SIGTERM, hang_up)
sys.exit(max(p.wait() for p in procs))
'''


def standin(tmp_path):
  """A directory holding the stand-in `gcloud`, and the environment that puts it first
  (with TMPDIR in tmp_path: launcher_leftovers reads what the launcher left there)."""
  bin_dir, state, tmp = tmp_path / "bin", tmp_path / "gcloud", tmp_path / "tmp"
  for folder in (bin_dir, state, tmp):
    folder.mkdir()
  (bin_dir / "gcloud").write_text(GCLOUD.format(python=sys.executable))
  (bin_dir / "gcloud").chmod(0o755)
  env = subprocess_env(PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
                       GCLOUD_STANDIN_DIR=str(state), TMPDIR=str(tmp))
  return state, env


def launcher_leftovers(tmp_path) -> list[str]:
  """The launcher's staging directories still in TMPDIR (each install packs the project
  into one and must remove it)."""
  return sorted(p.name for p in (tmp_path / "tmp").glob("hnet-launch-*"))


def calls(state):
  path = state / "calls.jsonl"
  return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def launcher_cmd(corpus, workdir, *extra):
  return [sys.executable, "launch/tpu.py", "--name=hnet-test", "--zone=us-east5-a",
          "--project=test-project", "--accelerator_type=v5p-16", "--spot",
          "--config=configs/transformer_tiny.py", f"--workdir={workdir}", *extra,
          "--"] + overrides(corpus, **STEPS)


def test_dry_run_prints_and_runs_nothing(corpus, tmp_path):
  state, env = standin(tmp_path)
  result = subprocess.run(launcher_cmd(corpus, "gs://bucket/run", "--dry_run"), cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
  assert result.returncode == 0, result.stderr
  lines = [l for l in result.stdout.splitlines() if l.startswith("gcloud ")]
  assert calls(state) == []  # printed, not run
  assert any("queued-resources create hnet-test" in l and "--accelerator-type=v5p-16" in l
             and l.endswith("--spot") for l in lines)
  assert any("tpu-vm scp" in l and "--worker=all" in l for l in lines)
  assert any("--worker=all" in l and "tpu_worker.sh start configs/transformer_tiny.py gs://bucket/run"
             in l for l in lines)
  assert any("--worker=0" in l and "tpu_worker.sh log" in l for l in lines)


def test_bad_arguments_are_clear_errors(tmp_path):
  state, env = standin(tmp_path)
  result = subprocess.run([sys.executable, "launch/tpu.py", "--name=x", "--zone=z",
                           "--accelerator_type=v5p-8", "--spot", "--on_demand", "--config=c",
                           "--workdir=w"], cwd=ROOT, env=env, capture_output=True, text=True)
  assert result.returncode == 2 and "not allowed with argument" in result.stderr
  result = subprocess.run([sys.executable, "launch/tpu.py", "--name=x", "--zone=z",
                           "--accelerator_type=v5p-8", "--spot", "--config=c", "--workdir=w", "--",
                           "--steps=3"], cwd=ROOT, env=env, capture_output=True, text=True)
  assert result.returncode == 2 and "--config.x=y" in result.stderr
  assert calls(state) == []


def wait_for(condition, what, proc, timeout=400):
  deadline = time.time() + timeout
  while time.time() < deadline:
    if condition():
      return
    assert proc.poll() is None, f"the launcher exited while waiting for {what}"
    time.sleep(0.05)
  raise TimeoutError(what)


def newest_checkpoint(workdir) -> int:
  folder = workdir / "checkpoints"
  return max((int(p) for p in os.listdir(folder) if p.isdigit()), default=0) if folder.is_dir() else 0


@pytest.mark.slow
def test_two_workers_train_like_one_through_preemptions(corpus, tmp_path, tmp_path_factory):
  expected = one_process_losses(tmp_path_factory, corpus, 2, **STEPS)  # as tests/test_slurm.py's

  state, env = standin(tmp_path)
  workdir = tmp_path / "run"
  launcher = subprocess.Popen(
      launcher_cmd(corpus, workdir, f"--setup_command=ln -sfn {ROOT}/.venv .venv",
                   "--poll_seconds=0.5", "--retry_seconds=0"),
      cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  try:
    # 1. worker 1's training process dies (SIGKILL): the slice stays ACTIVE.
    wait_for(lambda: newest_checkpoint(workdir) >= 4, "a first checkpoint", launcher)
    wrapper = int((state / "workers" / "w1" / "hnet" / ".launch" / "pid").read_text())
    trainer = int(open(f"/proc/{wrapper}/task/{wrapper}/children").read().split()[0])
    os.kill(trainer, signal.SIGKILL)
    killed_at = newest_checkpoint(workdir)
    # 2. after the relaunch saved again, the slice is preempted: SUSPENDED, its VMs gone.
    wait_for(lambda: newest_checkpoint(workdir) >= killed_at + 4, "checkpoints after a relaunch",
             launcher)
    slice_state = json.loads((state / "slice.json").read_text())
    (state / "slice.json").write_text(json.dumps({**slice_state, "state": "SUSPENDED"}))
    for home in ("w0", "w1"):
      os.killpg(int((state / "workers" / home / "hnet" / ".launch" / "pid").read_text()),
                signal.SIGKILL)
    out, _ = launcher.communicate(timeout=600)
  finally:
    if launcher.poll() is None:
      launcher.kill()
      launcher.wait()
  assert launcher.returncode == 0, out[-5000:]
  # (worker 0's streamed progress bar ends its lines with \r, so they are not line starts)
  launcher_lines = re.findall(r"\[launch/tpu\.py [\d:]+\] ([^\n]*)", out)
  assert sum("preempted (" in l for l in launcher_lines) == 2, "\n".join(launcher_lines)
  assert any("is SUSPENDED: deleting it" in l for l in launcher_lines), "\n".join(launcher_lines)
  assert "training finished on every worker" in out
  assert "process 0 of 2 via tpu-env" in out  # worker 0's log, streamed
  got = train_losses(workdir)
  assert set(got) == set(expected) == set(range(1, STEPS["train.steps"] + 1))
  for step in expected:
    assert got[step] == pytest.approx(expected[step], rel=1e-5), step
  recorded = calls(state)
  creates = [c for c in recorded if c[:4] == ["compute", "tpus", "queued-resources", "create"]]
  assert len(creates) == 2 and all("--spot" in c for c in creates)  # first, and after the preemption
  starts = [c for c in recorded if any("tpu_worker.sh start" in a for a in c)]
  assert len(starts) == 3 and all("--worker=all" in c for c in starts)
  installs = [c for c in recorded if c[:4] == ["compute", "tpus", "tpu-vm", "scp"]]
  assert len(installs) == 2 and launcher_leftovers(tmp_path) == []  # both tarballs removed


def test_a_failing_run_on_a_healthy_slice_is_not_relaunched(corpus, tmp_path):
  state, env = standin(tmp_path)
  cmd = launcher_cmd(corpus, tmp_path / "run", f"--setup_command=ln -sfn {ROOT}/.venv .venv",
                     "--poll_seconds=0.5", "--retry_seconds=0") + ["--config.model.num_layerz=3"]
  result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
  assert "training failed on a healthy slice" in result.stderr and "exit 1" in result.stderr
  assert "unknown key 'num_layerz'" in result.stdout + result.stderr  # worker 0's log, streamed
  assert sum(any("tpu_worker.sh start" in a for a in c) for c in calls(state)) == 1
