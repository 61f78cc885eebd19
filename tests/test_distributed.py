"""Multi-process launch: where hnet.main finds its processes (hnet/distributed.py), SIGTERM
on one host stopping every host at the same step, and the profiler switch."""
import os
import re
import signal
import subprocess
import time

import pytest

from hnet import distributed
from test_train_loop import ROOT, _free_port, config_for, corpus, train_cli  # noqa: F401 (fixture)

SLURM_STEP = {"SLURM_JOB_ID": "4242", "SLURM_STEP_NODELIST": "node[003-004]", "SLURM_NTASKS": "4",
              "SLURM_PROCID": "3", "SLURM_LOCALID": "1"}


def test_single_process_starts_nothing():
  assert distributed.detect(environ={}, on_tpu_vm=False) == distributed.Cluster("single", None, 1, 0)
  one_task = {**SLURM_STEP, "SLURM_NTASKS": "1", "SLURM_PROCID": "0", "SLURM_LOCALID": "0"}
  assert distributed.detect(environ=one_task, on_tpu_vm=False).kind == "single"


def test_slurm_step_is_left_to_jax_and_flags_override():
  assert distributed.detect(environ=SLURM_STEP, on_tpu_vm=False) == distributed.Cluster(
      "slurm", None, None, None)
  # What JAX itself then reads from that environment in jax.distributed.initialize().
  from jax._src.clusters.slurm_cluster import SlurmCluster
  with pytest.MonkeyPatch.context() as mp:
    for k, v in SLURM_STEP.items():
      mp.setenv(k, v)
    assert SlurmCluster.is_env_present()
    assert SlurmCluster.get_coordinator_address(None, None) == f"node003:{4242 % 4096 + 61440}"
    assert (SlurmCluster.get_process_count(), SlurmCluster.get_process_id()) == (4, 3)
  forced = distributed.detect("node009:1234", 4, 3, environ=SLURM_STEP, on_tpu_vm=False)
  assert forced == distributed.Cluster("slurm", "node009:1234", 4, 3)


def test_batch_script_without_srun_is_a_clear_error():
  batch = {"SLURM_JOB_ID": "7", "SLURM_NTASKS": "2"}  # the batch shell: no SLURM_STEP_NODELIST
  with pytest.raises(ValueError, match="srun"):
    distributed.detect(environ=batch, on_tpu_vm=False)


def test_tpu_vm_is_left_to_jax_and_tpu_env_is_read():
  assert distributed.detect(environ={}, on_tpu_vm=True) == distributed.Cluster("tpu-vm", None, None, None)
  env = {"TPU_WORKER_HOSTNAMES": "10.0.0.5,10.0.0.6,10.0.0.7", "TPU_WORKER_ID": "2"}
  assert distributed.detect(environ=env, on_tpu_vm=False) == distributed.Cluster(
      "tpu-env", "10.0.0.5:8482", 3, 2)
  env["JAX_COORDINATOR_PORT"] = "9000"
  assert distributed.detect(environ=env, on_tpu_vm=False).coordinator == "10.0.0.5:9000"
  with pytest.raises(ValueError, match="TPU_WORKER_ID"):
    distributed.detect(environ={"TPU_WORKER_HOSTNAMES": "a,b"}, on_tpu_vm=False)


def test_explicit_flags_need_all_three():
  assert distributed.detect("h:1", 2, 1, environ={}, on_tpu_vm=False) == distributed.Cluster(
      "explicit", "h:1", 2, 1)
  with pytest.raises(ValueError, match="--num_processes"):
    distributed.detect("h:1", None, None, environ={}, on_tpu_vm=False)


@pytest.mark.slow
def test_profile_steps_write_a_tensorboard_trace(corpus, tmp_path):
  from hnet import loop
  workdir = tmp_path / "run"
  loop.run(config_for(corpus, **{"train.steps": 4, "train.profile_steps": "2,3"}), str(workdir))
  traces = list((workdir / "tb" / "plugins" / "profile").glob("*/*.xplane.pb"))
  assert len(traces) == 1 and traces[0].stat().st_size > 1000
  with pytest.raises(ValueError, match="profile_steps"):
    loop.run(config_for(corpus, **{"train.steps": 4, "train.profile_steps": "3,9"}), str(tmp_path / "bad"))


def start_two_processes(workdir, corpus, **extra):
  """Two processes found through TPU_WORKER_HOSTNAMES/TPU_WORKER_ID, training one run."""
  port = _free_port()
  procs = []
  for worker in range(2):
    cmd, env = train_cli(workdir, corpus, **{"train.steps": 100000, "checkpoint.every": 100000,
                                             "mesh.data": 2, **extra})
    env.update(TPU_WORKER_HOSTNAMES="127.0.0.1,127.0.0.1", TPU_WORKER_ID=str(worker),
               JAX_COORDINATOR_PORT=str(port), JAX_COORDINATOR_BIND_ADDRESS=f"127.0.0.1:{port}")
    procs.append(subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True))
  return procs


def assert_stopped_together(procs, workdir, reason):
  outputs = [p.communicate(timeout=300)[0] for p in procs]
  assert [p.returncode for p in procs] == [0, 0], outputs[1][-3000:]
  assert "process 1 of 2 via tpu-env" in outputs[1]
  stops = [int(re.search(rf"stopping at step (\d+) \({reason}\)", out).group(1)) for out in outputs]
  saved = [int(p) for p in os.listdir(workdir / "checkpoints") if p.isdigit()]
  assert stops[0] == stops[1] == max(saved) > 1


@pytest.mark.slow
def test_sigterm_on_one_host_stops_every_host_at_the_same_step(corpus, tmp_path):
  """SIGTERM reaches only process 1 (as a maintenance event on one TPU host would): both
  save the same step and exit 0."""
  workdir = tmp_path / "run"
  procs = start_two_processes(workdir, corpus)
  metrics = workdir / "metrics.jsonl"
  deadline = time.time() + 240
  while time.time() < deadline and not (metrics.exists() and metrics.stat().st_size > 0):
    time.sleep(0.1)
  procs[1].send_signal(signal.SIGTERM)
  assert_stopped_together(procs, workdir, "SIGTERM")


@pytest.mark.slow
def test_time_budget_stops_every_host_at_the_same_step(corpus, tmp_path):
  """train.max_seconds: process 0's clock decides, so both stop at one step."""
  workdir = tmp_path / "run"
  assert_stopped_together(start_two_processes(workdir, corpus, **{"train.max_seconds": 3.0}),
                          workdir, "time budget")
