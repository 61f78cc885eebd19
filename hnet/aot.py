"""Ahead-of-time compilation for accelerators this machine does not have.

  devices = tpu_devices("v5p:4x4x4")                    # compile-only TPU devices (libtpu)
  devices = gpu_devices("h100", 8)                      # compile-only CUDA devices (no driver)
  report = compile_steps(config, devices)               # the real train and eval step
  report["train"].memory, report["train"].flops, report["train"].platform

Needs the heavy stack of requirements-aot.txt (libtpu, the CUDA PJRT plugin), installed
into .venv-aot by launch/setup_aot.sh, and JAX_PLATFORMS=cpu set before jax is imported
(tools/aot_check.py does both). The devices come from the PJRT topology API: a jitted
function whose shardings name a mesh over them is compiled by the accelerator's own
compiler (XLA TPU with Mosaic for Pallas; XLA GPU with Triton and ptxas), so the memory
figures are the compiler's buffer assignment for that chip and an oversized step fails
with RESOURCE_EXHAUSTED at compile time, as it would on the pod. Lowering with
`lowering_platforms=("tpu",)` but CPU devices in the shardings would compile for the
CPU instead; `executable_platform` checks what the executable was compiled for.
"""
from __future__ import annotations

import dataclasses
import os
import re
import time
from typing import Any

import jax
import numpy as np

GiB = 1024 ** 3


@dataclasses.dataclass(frozen=True)
class Chip:
  name: str
  hbm_bytes: int          # per chip, as the vendor publishes it
  peak_bf16_flops: float  # dense bf16 matmul FLOP/s per chip


# Published per-chip figures (Google Cloud TPU system architecture pages; NVIDIA H100
# SXM datasheet). The compiler reserves a little of the HBM for itself: v5e reports
# 15.75 GiB of its 16 GiB as available.
CHIPS = {
    "v4": Chip("TPU v4", 32 * GiB, 275e12),
    "v5e": Chip("TPU v5e", 16 * GiB, 197e12),
    "v5p": Chip("TPU v5p", 95 * GiB, 459e12),
    "v6e": Chip("TPU v6e", 32 * GiB, 918e12),
    "h100": Chip("NVIDIA H100 SXM 80GB", 80 * 10 ** 9, 989e12),
}

# GpuTargetConfigProto (xla/stream_executor/device_description.proto) for an H100 SXM:
# what XLA GPU would otherwise read from the driver. Figures from NVIDIA's H100 datasheet
# and CUDA programming guide (compute capability 9.0: 132 SMs, 228 KB shared memory per
# SM of which 227 KB per block opt-in, 64K registers, 50 MB L2, 3.35 TB/s HBM3).
H100_TARGET_CONFIG = """
gpu_device_info {
  threads_per_block_limit: 1024
  threads_per_warp: 32
  shared_memory_per_block: 49152
  shared_memory_per_core: 233472
  threads_per_core_limit: 2048
  core_count: 132
  fpus_per_core: 128
  block_dim_limit_x: 2147483647
  block_dim_limit_y: 65535
  block_dim_limit_z: 65535
  memory_bandwidth: 3352320000000
  l2_cache_size: 52428800
  clock_rate_ghz: 1.98
  device_memory_size: 80000000000
  shared_memory_per_block_optin: 232448
  cuda_compute_capability { major: 9 minor: 0 }
  registers_per_core_limit: 65536
  registers_per_block_limit: 65536
}
platform_name: "CUDA"
dnn_version_info { major: 9 minor: 8 }
runtime_version { major: 13 minor: 0 }
device_description_str: "NVIDIA H100 80GB HBM3"
"""
GPU_TARGET_CONFIGS = {"h100": H100_TARGET_CONFIG}


def chip_of(topology: str) -> Chip:
  """"v5p:4x4x4" -> the v5p chip; "h100:8" -> the H100."""
  kind = topology.split(":")[0].lower()
  if kind not in CHIPS:
    raise ValueError(f"unknown chip {kind!r} in topology {topology!r}; known: {sorted(CHIPS)} "
                     "(e.g. --topology=v5p:4x4x4, --topology=v5e:4x4 or --topology=h100:8)")
  return CHIPS[kind]


def tpu_devices(topology: str, num_slices: int = 1) -> list:
  """Compile-only TPU devices of `topology` ("v5e:4x4", "v5p:4x4x4", ...) x num_slices."""
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
  # libtpu takes a machine-wide lock file by default; compile-only use needs no chip, so
  # several processes (parallel checks, a test beside a CLI run) may load it at once.
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  kwargs = {"num_slices": num_slices} if num_slices > 1 else {}
  return list(topologies.get_topology_desc(topology_name=topology, platform="tpu",
                                           **kwargs).devices)


def gpu_devices(gpu: str, count: int) -> list:
  """Compile-only CUDA devices: `count` GPUs of kind `gpu` on one host (no driver needed)."""
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
  if gpu not in GPU_TARGET_CONFIGS:
    raise ValueError(f"no GPU target config for {gpu!r}; known: {sorted(GPU_TARGET_CONFIGS)}")
  return list(topologies.get_topology_desc(platform="cuda", topology=f"1x1x{count}",
                                           target_config=GPU_TARGET_CONFIGS[gpu]).devices)


def devices_for(topology: str, num_slices: int = 1) -> list:
  """"h100:8" -> 8 H100s; anything else is a TPU topology name."""
  kind, _, shape = topology.partition(":")
  if kind.lower() in GPU_TARGET_CONFIGS:
    return gpu_devices(kind.lower(), int(shape or 1) * num_slices)
  chip_of(topology)
  return tpu_devices(topology, num_slices)


def executable_platform(compiled) -> str:
  """The platform of the client the executable was compiled by ("tpu", "cuda", "cpu")."""
  platforms = {d.client.platform for s in jax.tree.leaves(compiled.input_shardings)
               for d in s.device_set}
  if len(platforms) != 1:
    raise RuntimeError(f"executable spans several platforms: {sorted(platforms)}")
  return platforms.pop()


def abstract_batch(config) -> dict[str, jax.ShapeDtypeStruct]:
  """One global batch of the config's layout as shapes: row 0 of its eval split, widened
  to train.batch_size rows (reads the corpus, not a made-up spec of the layout)."""
  from hnet.data import pipeline  # pylint: disable=g-import-not-at-top
  rows = pipeline.make_dataset(config.data, config.data.eval_split, global_batch_size=1,
                               repeat=False)
  first = rows[0]
  batch_size = int(config.train.batch_size)
  return {k: jax.ShapeDtypeStruct((batch_size,) + np.shape(v)[1:], np.asarray(v).dtype)
          for k, v in first.items()}


@dataclasses.dataclass
class StepReport:
  platform: str
  compile_seconds: float
  flops: float                 # per device, one call (XLA cost analysis)
  memory: dict[str, int]       # per device, bytes

  @property
  def peak_bytes(self) -> int:
    """Arguments + outputs not aliased to (donated) arguments + temporaries + code."""
    m = self.memory
    return (m["argument_bytes"] + m["output_bytes"] - m["alias_bytes"] + m["temp_bytes"]
            + m["generated_code_bytes"])


class DoesNotFit(RuntimeError):
  """The compiler refused the step: it needs more memory than the chip has."""

  def __init__(self, message: str, needed_bytes: float | None, available_bytes: float | None):
    super().__init__(message)
    self.needed_bytes, self.available_bytes = needed_bytes, available_bytes


_SIZE = r"([0-9.]+)([KMGT]?)"


def _bytes(number: str, unit: str) -> float:
  return float(number) * 1024 ** " KMGT".index(unit or " ")


def parse_out_of_memory(message: str) -> tuple[float | None, float | None]:
  """(needed, available) bytes from XLA's RESOURCE_EXHAUSTED message, None if absent."""
  for pattern in (rf"required for .*?\({_SIZE}\) exceeds available HBM \({_SIZE}\)",
                  rf"Used {_SIZE} of {_SIZE} hbm"):
    match = re.search(pattern, message)
    if match:
      return _bytes(*match.group(1, 2)), _bytes(*match.group(3, 4))
  return None, None


def _compile(jitted, *args) -> tuple[Any, float]:
  start = time.perf_counter()
  try:
    compiled = jitted.lower(*args).compile()
  except jax.errors.JaxRuntimeError as e:
    if "RESOURCE_EXHAUSTED" not in str(e):
      raise
    needed, available = parse_out_of_memory(str(e))
    raise DoesNotFit(str(e).splitlines()[0], needed, available) from e
  return compiled, time.perf_counter() - start


def _report(compiled, seconds: float) -> StepReport:
  from hnet.perf import compiled_flops, compiled_memory  # pylint: disable=g-import-not-at-top
  return StepReport(executable_platform(compiled), seconds, compiled_flops(compiled),
                    compiled_memory(compiled))


def compile_steps(config, devices, *, eval_step: bool = True) -> dict[str, StepReport]:
  """Compiles the project's own train step (and eval step) for `devices` with the
  config's mesh, state shardings and batch; returns {"train": ..., "eval": ...}."""
  from hnet import sharding  # pylint: disable=g-import-not-at-top
  from hnet.kernels import backend  # pylint: disable=g-import-not-at-top
  from hnet.train import jit_eval_step, jit_train_step, make_setup  # pylint: disable=g-import-not-at-top
  mesh = sharding.make_mesh(config.mesh.data, config.mesh.fsdp, config.mesh.tensor,
                            devices=devices)
  setup = make_setup(config, mesh)
  batch = abstract_batch(config)
  batch = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                       batch, setup.batch_sharding(batch))
  reports = {}
  # Traced for the target's platform, not this CPU host's: the attention formulation and
  # the Pallas kernels' backend depend on it (hnet/kernels/backend.py).
  with jax.set_mesh(mesh), sharding.rules(config.mesh.get("rules", sharding.DEFAULT_RULES)), \
      backend.compiling_for(devices[0].client.platform):
    compiled, seconds = _compile(jit_train_step(setup, batch), setup.abstract_state, batch)
    reports["train"] = _report(compiled, seconds)
    if eval_step:
      state = setup.abstract_state
      compiled, seconds = _compile(jit_eval_step(setup, batch), state["params"], batch,
                                   state["extra"])
      reports["eval"] = _report(compiled, seconds)
  return reports


def train_bytes_per_step(config) -> int:
  """Input bytes one optimizer step reads: rows x bytes per row (encoder bytes for MrT5)."""
  return int(config.train.batch_size) * int(config.data.seq_len)


def mfu_needed(step_flops_total: float, bytes_per_step: int, train_bytes: float,
               seconds: float, num_chips: int, chip: Chip) -> float:
  """Model-FLOPs utilisation needed to read `train_bytes` in `seconds` on `num_chips`."""
  steps = train_bytes / bytes_per_step
  return step_flops_total * steps / seconds / (num_chips * chip.peak_bf16_flops)


__all__ = ["CHIPS", "Chip", "DoesNotFit", "StepReport", "abstract_batch", "chip_of",
           "compile_steps", "devices_for", "executable_platform", "gpu_devices", "mfu_needed",
           "parse_out_of_memory", "tpu_devices", "train_bytes_per_step"]
