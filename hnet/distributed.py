"""Where this process runs, and `jax.distributed` set up to match.

    cluster = distributed.initialize(coordinator, num_processes, process_id)  # before any jax op
    log.info(distributed.describe(cluster))

Detection, in this order (the first that applies wins):
  explicit  --coordinator (with --num_processes/--process_id): passed to JAX as given; any of
            the three also overrides what JAX would detect under SLURM or on a TPU slice.
  slurm     a task of a SLURM job step (`srun`): JAX reads SLURM_* itself (coordinator = the
            step's first node, port from the job id; process = SLURM_PROCID of SLURM_NTASKS).
  tpu-vm    a Cloud TPU VM (libtpu loaded): JAX asks the VM's metadata server for the worker
            list and this worker's number.
  tpu-env   TPU_WORKER_HOSTNAMES / TPU_WORKER_ID in the environment (as on GKE TPU pods) on a
            machine without TPUs: coordinator = the first hostname, process = TPU_WORKER_ID.
            The TPU launcher's test gives its local "workers" this environment.
  single    none of these: one process, jax.distributed is not started.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Mapping

# JAX's own default port for the TPU coordinator (jax._src.clusters.cloud_tpu_cluster).
TPU_COORDINATOR_PORT = 8482


@dataclasses.dataclass(frozen=True)
class Cluster:
  kind: str                 # explicit | slurm | tpu-vm | tpu-env | single
  coordinator: str | None   # host:port, None where JAX detects it itself
  num_processes: int | None
  process_id: int | None


def _slurm_tasks(environ: Mapping[str, str]) -> int:
  return int(environ.get("SLURM_NTASKS", environ.get("SLURM_NPROCS", "1")))


def detect(coordinator: str = "", num_processes: int | None = None, process_id: int | None = None,
           environ: Mapping[str, str] | None = None, on_tpu_vm: bool | None = None) -> Cluster:
  """Where this process runs (see the module docstring). Raises ValueError with what to
  do when the environment is contradictory."""
  environ = os.environ if environ is None else environ
  explicit = bool(coordinator) or num_processes is not None or process_id is not None
  if on_tpu_vm is None:
    from jax._src import cloud_tpu_init  # set by `import jax` when libtpu sees TPU chips
    on_tpu_vm = cloud_tpu_init.running_in_cloud_tpu_vm
  in_slurm_step = all(k in environ for k in ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_PROCID",
                                             "SLURM_LOCALID")) and "SLURM_NTASKS" in environ
  if in_slurm_step and _slurm_tasks(environ) > 1:
    return Cluster("slurm", coordinator or None, num_processes, process_id)
  if "SLURM_JOB_ID" in environ and not in_slurm_step and _slurm_tasks(environ) > 1 and not explicit:
    raise ValueError(f"this SLURM job has {_slurm_tasks(environ)} tasks but this process is not "
                     "one of them: start training with `srun python -m hnet.main ...` (as "
                     "launch/slurm.sbatch does), not directly in the batch script.")
  if on_tpu_vm:
    return Cluster("tpu-vm", coordinator or None, num_processes, process_id)
  hosts = [h for h in environ.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]
  if len(hosts) > 1:
    if "TPU_WORKER_ID" not in environ:
      raise ValueError("TPU_WORKER_HOSTNAMES is set but TPU_WORKER_ID is not: set both "
                       "(this worker's index in the host list) or neither.")
    port = environ.get("JAX_COORDINATOR_PORT", str(TPU_COORDINATOR_PORT))
    return Cluster("tpu-env", coordinator or f"{hosts[0]}:{port}",
                   len(hosts) if num_processes is None else num_processes,
                   int(environ["TPU_WORKER_ID"]) if process_id is None else process_id)
  if explicit:
    if not coordinator or num_processes is None or process_id is None:
      raise ValueError("outside SLURM and Cloud TPU, a multi-process run needs all three of "
                       "--coordinator=host:port --num_processes=N --process_id=i "
                       f"(got coordinator={coordinator!r}, num_processes={num_processes}, "
                       f"process_id={process_id}).")
    return Cluster("explicit", coordinator, num_processes, process_id)
  return Cluster("single", None, 1, 0)


def initialize(coordinator: str = "", num_processes: int | None = None,
               process_id: int | None = None) -> Cluster:
  """Detects the cluster and starts jax.distributed for it (nothing on one process).
  Call before any JAX computation or device query."""
  import jax
  cluster = detect(coordinator, num_processes, process_id)
  if cluster.kind != "single" and not jax.distributed.is_initialized():
    # None fields are left to JAX's own detection (SLURM_* / the TPU metadata server).
    jax.distributed.initialize(cluster.coordinator, cluster.num_processes, cluster.process_id)
  return cluster


def describe(cluster: Cluster) -> str:
  """One line: how this process was started, and the devices it sees (local / global)."""
  import jax
  from jax._src import distributed as jax_distributed  # the address JAX settled on
  coordinator = cluster.coordinator or jax_distributed.global_state.coordinator_address
  where = f" via {cluster.kind}, coordinator {coordinator}" if cluster.kind != "single" else ""
  return (f"process {jax.process_index()} of {jax.process_count()}{where}; devices "
          f"{jax.local_device_count()} local / {jax.device_count()} global "
          f"({jax.devices()[0].platform}, {jax.devices()[0].device_kind})")
