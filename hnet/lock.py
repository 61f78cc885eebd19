"""The workdir lock: one training run per run directory at a time.

`<workdir>/lock.json` is a lease: {host, pid, started, renewed, token}. A run creates it
with `storage.create_new` (O_EXCL locally, an if-generation-match=0 precondition on GCS:
write-once, so it works on gs:// where flock does not), renews it every RENEW_SECONDS from
a background thread, and deletes it when the run ends. A second run on the workdir is
refused with an error naming the holder. A lock is stale, and is taken over with a
warning, when its process is gone: on the same host, when the pid no longer runs; from
another host (whose processes we cannot see), when it was not renewed for LEASE_SECONDS
(a run that finds a recently renewed lock of another host waits that long once, so a
run relaunched on new hosts after a preemption takes over its dead predecessor's lock).

Multi-process runs: only process 0 takes the lock; the other processes of the run learn
its outcome from process 0 (a broadcast) and are never refused themselves.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid

from etils import epath

from hnet import storage

log = logging.getLogger("hnet")

LOCK_FILE = "lock.json"
RENEW_SECONDS = 20.0
LEASE_SECONDS = 90.0


class WorkdirLockedError(RuntimeError):
  pass


def _pid_running(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # another user's live process
    return True
  return True


def _describe(holder: dict) -> str:
  started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(holder.get("started", 0)))
  return f"host {holder.get('host')!r} pid {holder.get('pid')} (started {started})"


def stale_reason(holder: dict, now: float | None = None) -> str | None:
  """Why the lock `holder` wrote is stale, or None while its run may still be alive."""
  now = time.time() if now is None else now
  if holder.get("host") == socket.gethostname():
    if holder.get("pid") == os.getpid():
      return "it was left by this same process"
    if not _pid_running(int(holder.get("pid", -1))):
      return f"pid {holder.get('pid')} no longer runs on this host"
    return None
  idle = now - float(holder.get("renewed", 0))
  if idle > LEASE_SECONDS:
    return f"it was last renewed {idle:.0f} s ago (lease {LEASE_SECONDS:.0f} s)"
  return None


class WorkdirLock:
  """Holds <workdir>/lock.json while a run trains there (see the module docstring)."""

  def __init__(self, workdir: epath.Path):
    self.path = workdir / LOCK_FILE
    self.workdir = workdir
    now = time.time()
    self.record = {"host": socket.gethostname(), "pid": os.getpid(), "started": now,
                   "renewed": now, "token": uuid.uuid4().hex}
    self.lost: str | None = None  # set when another run replaced our lock
    self._stop = threading.Event()
    self._thread: threading.Thread | None = None

  def acquire(self) -> None:
    """Takes the lock or raises WorkdirLockedError naming the run that holds it.

    A holder on another host that renewed within the lease may be a run that just died
    (a preempted TPU VM whose slice was re-created): we wait once for its lease to run
    out, and take it over if it was not renewed meanwhile."""
    waited = False
    for _ in range(5):  # a holder may release (or a taker create) between our reads
      if storage.create_new(self.path, json.dumps(self.record)):
        break
      text = storage.read_text(self.path)
      if text is None:
        continue
      try:
        holder = json.loads(text)
      except ValueError:
        holder = {}
      reason = stale_reason(holder) if holder else "it is not readable"
      foreign = holder.get("host") != self.record["host"]
      if reason is None and foreign and not waited:
        wait = min(float(holder.get("renewed", 0)) + LEASE_SECONDS - time.time(), LEASE_SECONDS) + 1
        log.warning("%s is held by %s; waiting %.0f s for its lease to run out in case that run "
                    "is gone", self.path, _describe(holder), wait)
        time.sleep(max(wait, 0.0))
        waited = True
        continue
      if reason is None:
        raise WorkdirLockedError(
            f"{self.workdir} is in use by another run: {_describe(holder)}, lock renewed "
            f"{time.time() - float(holder.get('renewed', 0)):.0f} s ago ({self.path}). Wait for it "
            "to finish, stop it, or train in another --workdir. If that run is gone, delete the "
            "lock file.")
      log.warning("taking over the stale workdir lock %s of %s: %s", self.path, _describe(holder),
                  reason)
      storage.remove(self.path)
    else:
      raise WorkdirLockedError(f"could not take the workdir lock {self.path}: it changed "
                               "hands five times while we tried; is another run starting there?")
    self._thread = threading.Thread(target=self._renew_loop, name="workdir-lock", daemon=True)
    self._thread.start()

  def _renew_loop(self) -> None:
    while not self._stop.wait(RENEW_SECONDS):
      self.renew()

  def renew(self) -> None:
    """Rewrites the lease with the current time, unless another run took it over."""
    try:
      text = storage.read_text(self.path)
      current = json.loads(text) if text else {}
      if current.get("token") != self.record["token"]:
        self.lost = (f"the workdir lock {self.path} now belongs to "
                     f"{_describe(current) if current else 'nobody (it was deleted)'}")
        return
      self.record["renewed"] = time.time()
      storage.write_text(self.path, json.dumps(self.record))
    except Exception as e:  # a transient storage error: the next renewal tries again
      log.warning("could not renew the workdir lock %s: %s", self.path, e)

  def check(self) -> None:
    """Raises WorkdirLockedError if another run took the lock over from us."""
    if self.lost:
      raise WorkdirLockedError(f"{self.lost}: stopping, so two runs do not write one workdir.")

  def release(self) -> None:
    self._stop.set()
    if self._thread is not None:
      self._thread.join()
    text = storage.read_text(self.path)
    try:
      mine = text is not None and json.loads(text).get("token") == self.record["token"]
    except ValueError:
      mine = False
    if mine:
      storage.remove(self.path)
