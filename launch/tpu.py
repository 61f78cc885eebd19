"""Pretraining on a Cloud TPU slice with the gcloud CLI, brought back after preemption.

  python launch/tpu.py --name=hnet-xl --zone=us-east5-a --project=my-project \\
      --accelerator_type=v5p-128 --spot \\
      --config=configs/hnet_2stage_xl.py --workdir=gs://my-bucket/runs/xl -- --config.train.steps=20000

What it does, with the commands it prints under --dry_run:
  1. the slice: `gcloud compute tpus queued-resources describe`; created (spot or on-demand)
     when absent, deleted and created again when SUSPENDED or FAILED; waits until ACTIVE.
  2. the project: this checkout's files (git's tracked and unignored ones) packed, copied
     to every worker (`tpu-vm scp --worker=all`), unpacked and set up there
     (launch/setup_tpu.sh: Python 3.11, requirements.txt, jax[tpu]; --setup_command replaces it).
  3. the same command on every worker (`tpu-vm ssh --worker=all`, launch/tpu_worker.sh):
     python -m hnet.main, which finds the other workers through JAX (hnet/distributed.py).
  4. worker 0's log streamed here; every --poll_seconds each worker's state. All finished:
     done. A worker's process killed or gone, a worker stopped by SIGTERM before the last
     step, or the slice no longer ACTIVE: preemption -- every worker's run is stopped, and
     after --retry_seconds the slice is re-created if needed and the run started again; it
     resumes from the workdir's newest checkpoint (a workdir every worker sees: gs://).
     A worker exiting with an error on a healthy slice ends the launcher with that error.
"""
from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import tarfile
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REMOTE_DIR = "hnet"  # under each worker's home directory
PROVISIONING = {"ACCEPTED", "WAITING_FOR_RESOURCES", "PROVISIONING", "CREATING", "CREATING_SLICE"}
BROKEN = {"SUSPENDED", "SUSPENDING", "FAILED"}
RUNTIMES = {"v4": "tpu-ubuntu2204-base", "v5litepod": "v2-alpha-tpuv5-lite", "v5p": "v2-alpha-tpuv5",
            "v6e": "v2-alpha-tpuv6e"}
SETUP = "bash launch/setup_tpu.sh"


class Preempted(Exception):
  pass


class Launcher:
  def __init__(self, args, overrides: list[str]):
    self.args = args
    self.overrides = overrides
    self.location = [f"--zone={args.zone}"] + ([f"--project={args.project}"] if args.project else [])

  # --- running gcloud
  def gcloud(self, *words: str, check: bool = True, capture: bool = False) -> subprocess.CompletedProcess:
    cmd = ["gcloud", *words]
    if self.args.dry_run:
      print(shlex.join(cmd))
      return subprocess.CompletedProcess(cmd, 0, "", "")
    result = subprocess.run(cmd, text=True, capture_output=capture)
    if check and result.returncode != 0:
      raise RuntimeError(f"{shlex.join(cmd)} failed with exit {result.returncode}: "
                         f"{(result.stderr or '')[-2000:]}")
    return result

  def ssh(self, command: str, worker: str = "all", **kw) -> subprocess.CompletedProcess:
    return self.gcloud("compute", "tpus", "tpu-vm", "ssh", self.args.name, f"--worker={worker}",
                       *self.location, f"--command={command}", **kw)

  def worker_command(self, action: str, *words: str) -> str:
    return f"cd ~/{REMOTE_DIR} && bash launch/tpu_worker.sh {action}" + "".join(
        " " + shlex.quote(w) for w in words)

  # --- the slice
  def state(self) -> str:
    """The queued resource's state, or NOT_FOUND."""
    result = self.gcloud("compute", "tpus", "queued-resources", "describe", self.args.name,
                         *self.location, "--format=value(state.state)", check=False, capture=True)
    if result.returncode != 0:
      if "NOT_FOUND" in result.stderr or "not found" in result.stderr.lower():
        return "NOT_FOUND"
      raise RuntimeError(f"gcloud queued-resources describe failed: {result.stderr[-2000:]}")
    return result.stdout.strip() or "NOT_FOUND"

  def create(self) -> None:
    a = self.args
    runtime = a.runtime_version or RUNTIMES.get(a.accelerator_type.split("-")[0])
    if not runtime:
      raise SystemExit(f"no default runtime for {a.accelerator_type}: give --runtime_version")
    self.gcloud("compute", "tpus", "queued-resources", "create", a.name, f"--node-id={a.name}",
                *self.location, f"--accelerator-type={a.accelerator_type}",
                f"--runtime-version={runtime}", *(["--spot"] if a.spot else []))

  def delete(self) -> None:
    self.gcloud("compute", "tpus", "queued-resources", "delete", self.args.name, *self.location,
                "--force", "--quiet", check=False)

  def ensure_active(self) -> bool:
    """Waits until the slice is ACTIVE, creating it (again) where needed. True when the
    slice is new (the project must be installed on it)."""
    if self.args.dry_run:
      print("# the slice: created when absent (deleted first when SUSPENDED/FAILED), then polled until ACTIVE")
      self.state()
      self.create()
      self.state()
      return True
    created = False
    while True:
      state = self.state()
      if state == "ACTIVE":
        return created
      if state in BROKEN:
        log(f"slice {self.args.name} is {state}: deleting it to create it again")
        self.delete()
      elif state == "NOT_FOUND":
        log(f"creating slice {self.args.name} ({self.args.accelerator_type}, "
            f"{'spot' if self.args.spot else 'on-demand'})")
        self.create()
        created = True
      else:
        log(f"slice {self.args.name}: {state}")
      time.sleep(self.args.poll_seconds)

  # --- the project on the workers
  def install(self) -> None:
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, text=True,
                           capture_output=True, check=True).stdout.split()
    # Packed into a temporary directory that is removed once copied: every install (the
    # first and one per relaunch) would otherwise leave a tarball behind.
    with tempfile.TemporaryDirectory(prefix="hnet-launch-") as staging:
      tarball = os.path.join(staging, "hnet.tar.gz")
      if self.args.dry_run:
        print(f"# the project: {len(files)} files of {ROOT} (git ls-files -co --exclude-standard) "
              f"packed into a temporary {tarball}")
      else:
        with tarfile.open(tarball, "w:gz") as tar:
          for name in files:
            if os.path.isfile(os.path.join(ROOT, name)):
              tar.add(os.path.join(ROOT, name), arcname=name)
      self.gcloud("compute", "tpus", "tpu-vm", "scp", tarball, f"{self.args.name}:hnet.tar.gz",
                  "--worker=all", *self.location)
    self.ssh(f"mkdir -p ~/{REMOTE_DIR} && tar -xzf ~/hnet.tar.gz -C ~/{REMOTE_DIR} && "
             f"cd ~/{REMOTE_DIR} && {self.args.setup_command}")

  # --- the run
  def start(self) -> subprocess.Popen | None:
    """Starts training on every worker; returns the process streaming worker 0's log."""
    self.ssh(self.worker_command("start", self.args.config, self.args.workdir, *self.overrides))
    if self.args.dry_run:
      print("# worker 0's log, streamed while the run goes on:")
      self.ssh(self.worker_command("log"), worker="0")
      return None
    cmd = ["gcloud", "compute", "tpus", "tpu-vm", "ssh", self.args.name, "--worker=0", *self.location,
           f"--command={self.worker_command('log')}"]
    return subprocess.Popen(cmd, stdin=subprocess.DEVNULL)

  def statuses(self) -> list[str] | None:
    """Each worker's state (launch/tpu_worker.sh status); None when some worker did not
    answer on a slice that is still ACTIVE. Raises Preempted when the slice is not."""
    result = self.ssh(self.worker_command("status"), check=False, capture=True)
    states = [line.split(" ", 2)[2] for line in result.stdout.splitlines()
              if line.startswith("hnet-worker ")]
    if result.returncode != 0 or not states:
      state = self.state()
      if state != "ACTIVE":
        raise Preempted(f"slice {self.args.name} is {state}")
      log(f"a worker did not answer (ssh exit {result.returncode}: {result.stderr.strip()[-300:]})")
      return None
    return states

  def wait(self) -> None:
    """Polls the workers until all finished; raises Preempted or SystemExit (a failure)."""
    expected, unanswered = None, 0
    while True:
      time.sleep(self.args.poll_seconds)
      states = self.statuses()
      unanswered = 0 if states else unanswered + 1
      if unanswered >= 3:
        raise Preempted(f"workers did not answer {unanswered} times in a row")
      if not states:
        continue
      expected = expected or len(states)
      if len(states) < expected:
        raise Preempted(f"{expected - len(states)} worker(s) did not answer")
      if all(s == "finished" for s in states):
        return
      lost = [s for s in states if s in ("vanished", "stopped") or
              (s.startswith("exit ") and int(s.split()[1]) >= 128)]
      if lost:
        raise Preempted(f"worker states {states}")
      failed = [s for s in states if s.startswith("exit ")]
      if failed and "running" not in states:
        raise SystemExit(f"training failed on a healthy slice (worker states {states}); "
                         "see the log above. Not relaunching.")

  def stop(self) -> None:
    self.ssh(self.worker_command("stop"), check=False)

  def run(self) -> None:
    installed = False
    for attempt in range(self.args.max_restarts + 1):
      if self.ensure_active() or not installed:
        self.install()
        installed = True
      tail = self.start()
      if self.args.dry_run:
        print(f"# every {self.args.poll_seconds:g} s, each worker's state:")
        self.ssh(self.worker_command("status"))
        print("# on preemption (a worker's process gone or stopped by SIGTERM, or the slice not "
              f"ACTIVE): every worker's run stopped, a wait of {self.args.retry_seconds:g} s, then "
              "from the top (it resumes from the newest checkpoint):")
        self.stop()
        print("# ... and where the slice is SUSPENDED or FAILED, it is deleted and created again:")
        self.delete()
        self.create()
        if self.args.delete_when_done:
          print("# when every worker finished:")
          self.delete()
        return
      try:
        self.wait()
        log(f"training finished on every worker of {self.args.name}")
        if self.args.delete_when_done:
          self.delete()
        return
      except Preempted as e:
        log(f"preempted ({e}); relaunch {attempt + 1} of {self.args.max_restarts} in "
            f"{self.args.retry_seconds} s")
        if self.state() == "ACTIVE":
          self.stop()
        else:
          installed = False
        time.sleep(self.args.retry_seconds)
      finally:
        if tail is not None:
          time.sleep(min(2.0, self.args.poll_seconds))  # the log's last lines
          tail.terminate()
          tail.wait()
    raise SystemExit(f"gave up after {self.args.max_restarts} relaunches")


def log(message: str) -> None:
  print(f"[launch/tpu.py {time.strftime('%H:%M:%S')}] {message}", flush=True)


def parse(argv: list[str]):
  overrides = argv[argv.index("--") + 1:] if "--" in argv else []
  argv = argv[:argv.index("--")] if "--" in argv else argv
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--name", required=True, help="queued resource and TPU node name")
  p.add_argument("--zone", required=True)
  p.add_argument("--project", default="", help="default: gcloud's configured project")
  p.add_argument("--accelerator_type", required=True, help="e.g. v5p-128, v5litepod-64, v6e-256")
  p.add_argument("--runtime_version", default="", help=f"default by TPU generation: {RUNTIMES}")
  kind = p.add_mutually_exclusive_group(required=True)
  kind.add_argument("--spot", action="store_true", help="spot capacity (preemptible, cheaper)")
  kind.add_argument("--on_demand", action="store_true")
  p.add_argument("--config", required=True, help="experiment config, e.g. configs/hnet_2stage_xl.py")
  p.add_argument("--workdir", required=True, help="run directory every worker sees (gs://bucket/run)")
  p.add_argument("--setup_command", default=SETUP, help="run in the project directory on every worker")
  p.add_argument("--poll_seconds", type=float, default=30.0)
  p.add_argument("--retry_seconds", type=float, default=60.0, help="wait after a preemption")
  p.add_argument("--max_restarts", type=int, default=100)
  p.add_argument("--delete_when_done", action="store_true", help="delete the slice when training finished")
  p.add_argument("--dry_run", action="store_true", help="print every command instead of running it")
  args = p.parse_args(argv)
  bad = [o for o in overrides if not o.startswith("--config.")]
  if bad:
    p.error(f"after -- only --config.x=y overrides go to hnet.main; got {bad}")
  return args, overrides


def main(argv: list[str]) -> None:
  args, overrides = parse(argv)
  Launcher(args, overrides).run()


if __name__ == "__main__":
  main(sys.argv[1:])
