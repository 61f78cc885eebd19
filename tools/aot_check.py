"""Size a pod run before renting the pod: compile the real train and eval step for a TPU
(or GPU) topology on this CPU machine and check that they fit the chip's memory.

  bash launch/setup_aot.sh      # once: .venv-aot with libtpu and the CUDA PJRT plugin
  .venv-aot/bin/python tools/aot_check.py --config=configs/hnet_2stage_XL.py --topology=v5p:4x4x4
  .venv-aot/bin/python tools/aot_check.py --config=configs/hat_7b.py --topology=v5e:4x4 \
      --config.mesh.fsdp=16                   # any config field can be overridden
  .venv-aot/bin/python tools/aot_check.py --kernels --topology=v5e:2x2    # the Pallas kernels
  .venv-aot/bin/python tools/aot_check.py --kernels --topology=h100:1     # ... for a GPU

Prints per-device memory (arguments, outputs, temporaries, peak) against the chip's HBM,
FLOPs per step and compile time. --topology defaults to the config's pod.topology.
Exit status: 0 when it fits, 2 when the compiler says the step does not fit the chip's
memory (the message names the memory needed and the chip's HBM), 1 on any other error.
"""
from __future__ import annotations

import os
import sys

os.environ["JAX_PLATFORMS"] = "cpu"  # before jax loads: the accelerators are compile-only
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import json  # noqa: E402

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

config_flags.DEFINE_config_file("config", None, "experiment config file", lock_config=True)
flags.DEFINE_string("topology", "", "TPU topology (v4:2x2x2, v5e:4x4, v5p:4x4x4, v6e:8x8) or "
                    "GPUs (h100:8); default: the config's pod.topology")
flags.DEFINE_integer("num_slices", 0, "TPU slices joined over the data-centre network "
                     "(default: the config's pod.num_slices)")
flags.DEFINE_bool("eval_step", True, "also compile the eval step")
flags.DEFINE_bool("kernels", False, "compile the Pallas chunk-routing kernels instead of a config")
flags.DEFINE_float("train_bytes", 0.0, "bytes to train on, for the MFU needed (default: pod.train_bytes)")
flags.DEFINE_float("train_days", 0.0, "days to train them in (default: pod.train_days)")
flags.DEFINE_string("json", "", "also write the figures to this file")
FLAGS = flags.FLAGS

GB = 1e9


def _gib(n: float) -> str:
  return f"{n / 1024 ** 3:.2f} GiB"


def check_config(config) -> dict:
  from hnet import aot  # pylint: disable=g-import-not-at-top
  pod = config.get("pod", {})
  topology = FLAGS.topology or pod.get("topology", "")
  if not topology:
    raise SystemExit("no topology: pass --topology=v5p:4x4x4 (or set pod.topology in the config)")
  num_slices = FLAGS.num_slices or pod.get("num_slices", 1)
  chip = aot.chip_of(topology)
  devices = aot.devices_for(topology, num_slices)
  path = config_flags.get_config_filename(FLAGS["config"])
  mesh = {k: int(config.mesh[k]) for k in ("data", "fsdp", "tensor")}
  if mesh["data"] == -1:
    mesh["data"] = len(devices) // (mesh["fsdp"] * mesh["tensor"])
  print(f"config {path}: {config.model.name}, {len(devices)} x {chip.name} "
        f"({topology}, {num_slices} slice(s)), mesh data={mesh['data']} fsdp={mesh['fsdp']} "
        f"tensor={mesh['tensor']}, batch {config.train.batch_size} x {config.data.seq_len}, "
        f"dtype {config.model.dtype}, remat {config.model.get('remat', 'none')}", flush=True)
  result = {"config": path, "model": config.model.name, "topology": topology,
            "num_slices": num_slices, "chips": len(devices), "chip": chip.name,
            "hbm_bytes": chip.hbm_bytes, "batch_size": int(config.train.batch_size),
            "seq_len": int(config.data.seq_len),
            "mesh": mesh}
  try:
    reports = aot.compile_steps(config, devices, eval_step=FLAGS.eval_step)
  except aot.DoesNotFit as e:
    needed = f"{_gib(e.needed_bytes)} per chip" if e.needed_bytes else "more memory than it has"
    available = _gib(e.available_bytes) if e.available_bytes else _gib(chip.hbm_bytes)
    print(f"DOES NOT FIT: the train step needs {needed}; a {chip.name} has {_gib(chip.hbm_bytes)} "
          f"of HBM ({available} available to XLA). Use a larger slice (--topology), shard more "
          f"(--config.mesh.fsdp), a smaller batch, --config.train.grad_accum"
          f"{'' if config.model.get('remat', 'none') == 'full' else ' or --config.model.remat=full'}"
          f". Compiler: {e}", flush=True)
    result.update(fits=False, needed_bytes=e.needed_bytes, available_bytes=e.available_bytes)
    return result
  for name, r in reports.items():
    m = r.memory
    print(f"{name} step: compiled for {r.platform} in {r.compile_seconds:.1f} s; per device: "
          f"arguments {_gib(m['argument_bytes'])}, outputs {_gib(m['output_bytes'])} "
          f"({_gib(m['alias_bytes'])} aliased to donated arguments), temporaries "
          f"{_gib(m['temp_bytes'])}, code {_gib(m['generated_code_bytes'])}; peak "
          f"{_gib(r.peak_bytes)} of {_gib(chip.hbm_bytes)} HBM "
          f"({100 * r.peak_bytes / chip.hbm_bytes:.0f}%); "
          + (f"{r.flops:.4g} FLOPs per device, {r.flops * len(devices):.4g} per step" if r.flops
             else f"no FLOP count (XLA's {r.platform} cost analysis gives none)"), flush=True)
    result[name] = {"platform": r.platform, "compile_seconds": r.compile_seconds,
                    "flops_per_device": r.flops, "flops_per_step": r.flops * len(devices),
                    "memory": m, "peak_bytes": r.peak_bytes}
  train = result["train"]
  bytes_per_step = aot.train_bytes_per_step(config)
  train_bytes = FLAGS.train_bytes or pod.get("train_bytes", 0.0)
  train_days = FLAGS.train_days or pod.get("train_days", 0.0)
  result.update(fits=all(r.peak_bytes <= chip.hbm_bytes for r in reports.values()),
                bytes_per_step=bytes_per_step, flops_per_byte=train["flops_per_step"] / bytes_per_step)
  if not train["flops_per_step"]:
    print(f"training FLOPs per input byte and the MFU needed: not computed, the {train['platform']} "
          "compiler counted no FLOPs (compile for a TPU topology to get them)")
  else:
    print(f"{result['flops_per_byte']:.4g} training FLOPs per input byte ({bytes_per_step} bytes per step)")
  if train_bytes and train_days and train["flops_per_step"]:
    mfu = aot.mfu_needed(train["flops_per_step"], bytes_per_step, train_bytes, train_days * 86400,
                         len(devices), chip)
    result.update(train_bytes=train_bytes, train_days=train_days, mfu_needed=mfu)
    print(f"to train on {train_bytes:.3g} bytes in {train_days:g} days: {train_bytes / bytes_per_step:.4g} "
          f"steps, MFU needed {100 * mfu:.1f}% of {len(devices)} x {chip.peak_bf16_flops:.3g} "
          "bf16 FLOP/s")
  if not result["fits"]:
    print(f"DOES NOT FIT: peak {_gib(max(r.peak_bytes for r in reports.values()))} per chip "
          f"> {_gib(chip.hbm_bytes)} HBM of a {chip.name}", flush=True)
  return result


def check_kernels() -> dict:
  from hnet import aot, kernel_aot  # pylint: disable=g-import-not-at-top
  topology = FLAGS.topology or "v5e:2x2"
  devices = aot.devices_for(topology, FLAGS.num_slices or 1)
  results = kernel_aot.compile_all(devices[:1])
  for r in results:
    print(f"kernel {r['kernel']} {r['pass']} {r['dtype']}: compiled for {r['platform']} "
          f"({r['backend']}) in {r['compile_seconds']:.1f} s; device kernels: {', '.join(r['device_kernels'])}",
          flush=True)
  return {"topology": topology, "kernels": results}


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if FLAGS.kernels:
    result = check_kernels()
  elif FLAGS.config is None:
    raise app.UsageError("pass --config=configs/<experiment>.py (or --kernels)")
  else:
    result = check_config(FLAGS.config)
  if FLAGS.json:
    with open(FLAGS.json, "w") as f:
      json.dump(result, f, indent=2, default=float)
  if result.get("fits") is False:
    sys.exit(2)


if __name__ == "__main__":
  app.run(main)
