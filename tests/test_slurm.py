"""launch/slurm.sbatch on a real single-node SLURM cluster (slurmctld, slurmd, munged started
here on 127.0.0.1, see tests/slurm_cluster.py): 2 tasks train like 1 process, and a job
stopped by `scancel --signal=TERM` requeues itself and ends with the losses of an
uninterrupted run."""
import re
import time

import pytest

from hnet.testing import subprocess_xla_flags

import slurm_cluster
from test_train_loop import (ROOT, _free_port, corpus, one_process_losses, overrides,  # noqa: F401
                             train_losses)

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(bool(slurm_cluster.missing()), reason=slurm_cluster.missing())]
# A checkpoint every 6 steps: the 2 tasks save together 4 times (each save is a few tenths of a
# second here), and the requeue test stops the job after its first.
STEPS = {"train.steps": 24, "checkpoint.every": 6, "mesh.data": 2}


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
  with slurm_cluster.LocalSlurm(str(tmp_path_factory.mktemp("slurm")), cpus=2) as cluster:
    yield cluster


@pytest.fixture(scope="module")
def reference(corpus, tmp_path_factory):
  """Per-step losses of the same run in one process over 2 simulated devices (the same
  reference as tests/test_tpu_launcher.py's, run once)."""
  return one_process_losses(tmp_path_factory, corpus, 2, **STEPS)


def submit(slurm, corpus, workdir, log):
  """launch/slurm.sbatch as a user submits it, with this test cluster's partition, no GPUs,
  and 2 tasks on the node (one per simulated CPU device)."""
  port = _free_port()
  env = {"XLA_FLAGS": subprocess_xla_flags(), "JAX_PLATFORMS": "cpu", "JAX_COORDINATOR_PORT": str(port),
         "JAX_COORDINATOR_BIND_ADDRESS": f"127.0.0.1:{port}"}
  return slurm.submit(["--partition=test", "--gpus-per-node=0", "--ntasks-per-node=2",
                       f"--output={log}", "launch/slurm.sbatch", "configs/transformer_tiny.py",
                       str(workdir)] + overrides(corpus, **STEPS), cwd=ROOT, env=env)


def assert_same_losses(got, expected):
  assert set(got) == set(expected) == set(range(1, STEPS["train.steps"] + 1))
  for step in expected:
    assert got[step] == pytest.approx(expected[step], rel=1e-5), step


def test_two_tasks_train_like_one_process(slurm, corpus, reference, tmp_path):
  log = tmp_path / "job.out"
  job = submit(slurm, corpus, tmp_path / "run", log)
  info = slurm.wait(job, timeout=400)
  output = log.read_text(errors="replace")
  assert info["JobState"] == "COMPLETED" and info["Restarts"] == "0", output[-3000:]
  assert "process 1 of 2 via slurm" in output and "devices 1 local / 2 global" in output
  assert_same_losses(train_losses(tmp_path / "run"), reference)


def test_sigterm_requeues_and_resumes_exactly(slurm, corpus, reference, tmp_path):
  log, workdir = tmp_path / "job.out", tmp_path / "run"
  job = submit(slurm, corpus, workdir, log)
  deadline = time.time() + 300
  while time.time() < deadline and not (workdir / "checkpoints" / "6").is_dir():
    assert slurm.job(job)["JobState"] in ("PENDING", "RUNNING"), log.read_text(errors="replace")[-3000:]
    time.sleep(0.05)
  assert slurm.scancel("--signal=TERM", job).returncode == 0
  info = slurm.wait(job, states=("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"), timeout=500)
  output = log.read_text(errors="replace")
  assert info["JobState"] == "COMPLETED" and info["Restarts"] == "1", output[-4000:]
  stopped = [int(s) for s in re.findall(r"stopping at step (\d+) \(SIGTERM\)", output)]
  assert len(stopped) == 2 and len(set(stopped)) == 1, output[-4000:]  # both tasks, one step
  assert 6 <= stopped[0] < STEPS["train.steps"]
  assert f"resumed from step {stopped[0]}" in output and "requeueing job" in output
  assert_same_losses(train_losses(workdir), reference)
