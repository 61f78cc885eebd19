"""A real single-node SLURM cluster on 127.0.0.1 for tests (Debian's slurm-wlm and munge).

    with LocalSlurm(tmp_dir, cpus=2) as slurm:
      job = slurm.submit(["launch/slurm.sbatch", ...], cwd=ROOT, env=...)
      slurm.wait(job)

munged, slurmctld and slurmd run in the foreground as children of this process (no
systemd), with every file (keys, sockets, state, logs, slurm.conf) under `tmp_dir`; the
daemons bind 127.0.0.1 only (CommunicationParameters=NoCtldInAddrAny,NoInAddrAny) and are
stopped, by their process ids, when the block ends.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time

REQUIRED = ("munged", "slurmctld", "slurmd", "sbatch")


def missing() -> str:
  """Why a local cluster cannot start here ("" when it can)."""
  absent = [d for d in REQUIRED if shutil.which(d) is None and not os.path.exists(f"/usr/sbin/{d}")]
  if absent:
    return (f"slurm-wlm/munge not installed ({', '.join(absent)} missing): "
            "apt-get install -y slurm-wlm munge (.ci/run does)")
  return ""


def _binary(name: str) -> str:
  return shutil.which(name) or f"/usr/sbin/{name}"


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


SLURM_CONF = """\
ClusterName=hnettest
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SrunPortRange={srun_ports}
CommunicationParameters=NoCtldInAddrAny,NoInAddrAny
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={dir}/munge.socket,cred_expire=5
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2,bf_interval=1
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
KillWait=60
MinJobAge=600
StateSaveLocation={dir}/state
SlurmdSpoolDir={dir}/slurmd
SlurmctldPidFile={dir}/slurmctld.pid
SlurmdPidFile={dir}/slurmd.pid
SlurmctldLogFile={dir}/slurmctld.log
SlurmdLogFile={dir}/slurmd.log
MailProg=/bin/true
PlugStackConfig={dir}/plugstack.conf
NodeName=localhost NodeAddr=127.0.0.1 CPUs={cpus} State=UNKNOWN
PartitionName=test Nodes=localhost Default=YES MaxTime=INFINITE State=UP
"""


class LocalSlurm:
  def __init__(self, directory: str, cpus: int = 2):
    self.dir = os.path.abspath(directory)
    self.cpus = cpus
    self.conf = os.path.join(self.dir, "slurm.conf")
    self.daemons: list[subprocess.Popen] = []
    self.env = {**os.environ, "SLURM_CONF": self.conf}

  # --- lifecycle
  def __enter__(self) -> "LocalSlurm":
    os.makedirs(self.dir, mode=0o700, exist_ok=True)
    for sub in ("state", "slurmd"):
      os.makedirs(os.path.join(self.dir, sub), mode=0o700, exist_ok=True)
    key = os.path.join(self.dir, "munge.key")
    with open(key, "wb") as f:
      f.write(os.urandom(1024))
    os.chmod(key, 0o400)
    open(os.path.join(self.dir, "plugstack.conf"), "w").close()
    srun_low = _free_port() // 100 * 100
    with open(self.conf, "w") as f:
      f.write(SLURM_CONF.format(dir=self.dir, cpus=self.cpus, ctld_port=_free_port(),
                                slurmd_port=_free_port(),
                                srun_ports=f"{srun_low}-{srun_low + 99}"))
    try:
      self._start([_binary("munged"), "--foreground", "--force", f"--socket={self.dir}/munge.socket",
                   f"--key-file={key}", f"--pid-file={self.dir}/munged.pid",
                   f"--log-file={self.dir}/munged.log", f"--seed-file={self.dir}/munged.seed"],
                  "munged")
      self._wait_for(lambda: os.path.exists(f"{self.dir}/munge.socket"), "munged's socket", 30)
      self._start([_binary("slurmctld"), "-D", "-i"], "slurmctld")
      self._wait_for(lambda: self._run(["scontrol", "ping"]).returncode == 0, "slurmctld", 60)
      self._start([_binary("slurmd"), "-D", "-N", "localhost"], "slurmd")
      self._wait_for(self._node_idle, "the node to become idle", 60)
    except BaseException:
      self.__exit__(None, None, None)
      raise
    return self

  def __exit__(self, *exc) -> None:
    for proc in reversed(self.daemons):  # slurmd, slurmctld, munged: each one we started
      if proc.poll() is None:
        proc.terminate()
        try:
          proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
          proc.kill()
          proc.wait()
    self.daemons.clear()

  def _start(self, cmd: list[str], name: str) -> None:
    log = open(os.path.join(self.dir, f"{name}.stdout"), "w")
    self.daemons.append(subprocess.Popen(cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL))

  def _wait_for(self, ready, what: str, timeout: float) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
      dead = [p.args[0] for p in self.daemons if p.poll() is not None]
      if dead:
        raise RuntimeError(f"{dead} exited while waiting for {what}:\n{self.logs()}")
      if ready():
        return
      time.sleep(0.2)
    raise TimeoutError(f"timed out after {timeout} s waiting for {what}:\n{self.logs()}")

  def _node_idle(self) -> bool:
    out = self._run(["sinfo", "-h", "-N", "-o", "%T"]).stdout.strip()
    return out.startswith("idle")

  def logs(self) -> str:
    parts = []
    for name in ("munged.log", "slurmctld.log", "slurmd.log", "munged.stdout", "slurmctld.stdout",
                 "slurmd.stdout"):
      path = os.path.join(self.dir, name)
      if os.path.exists(path):
        with open(path, errors="replace") as f:
          parts.append(f"--- {name}\n" + f.read()[-3000:])
    return "\n".join(parts)

  # --- jobs
  def _run(self, cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, env={**self.env, **kw.pop("env", {})}, capture_output=True, text=True,
                          timeout=60, **kw)

  def submit(self, args: list[str], cwd: str, env: dict[str, str] | None = None) -> str:
    result = self._run(["sbatch", "--parsable"] + args, cwd=cwd, env=env or {})
    if result.returncode != 0:
      raise RuntimeError(f"sbatch failed: {result.stderr}\n{self.logs()}")
    return result.stdout.strip().split(";")[0]

  def job(self, job_id: str) -> dict[str, str]:
    """scontrol's fields of the job (JobState, Restarts, ExitCode, ...)."""
    out = self._run(["scontrol", "-o", "show", "job", job_id]).stdout
    return dict(field.split("=", 1) for field in out.split() if "=" in field)

  def scontrol(self, *args: str) -> subprocess.CompletedProcess:
    return self._run(["scontrol", *args])

  def scancel(self, *args: str) -> subprocess.CompletedProcess:
    return self._run(["scancel", *args])

  def wait(self, job_id: str, states=("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL",
                                      "OUT_OF_MEMORY", "PREEMPTED", "BOOT_FAIL", "DEADLINE"),
           timeout: float = 600) -> dict[str, str]:
    deadline = time.time() + timeout
    while time.time() < deadline:
      info = self.job(job_id)
      if info.get("JobState") in states:
        return info
      time.sleep(0.5)
    raise TimeoutError(f"job {job_id} still {self.job(job_id).get('JobState')} after {timeout} s\n"
                       f"{self.logs()}")
