"""Benchmarks, as ratios measured in one run on this machine.

  python tools/bench.py                       # every section, table + JSON
  python tools/bench.py --sections=baseline,memory --json=bench.json

Sections:
  peak      f32 matmul FLOP/s (2048^3), the reference for every ratio below
  baseline  byte Transformer train step: bytes/s, model FLOP/s (XLA cost analysis of
            the compiled step), fraction of the matmul peak
  memory    compiled train step on 8 simulated devices: per-device parameter +
            optimizer bytes with fsdp=8 vs 1 device (ratio)
Other families add sections in SECTIONS.
"""
import os
import sys

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8").strip()
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import json  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

from hnet import sharding  # noqa: E402
from hnet.perf import compiled_flops, compiled_memory, measure_matmul_peak  # noqa: E402
from hnet.testing import packed_byte_batch  # noqa: E402
from hnet.train import init_state, jit_train_step, make_setup  # noqa: E402

flags.DEFINE_list("sections", ["peak", "baseline", "memory"], "sections to run")
flags.DEFINE_string("config", "configs/transformer_tiny.py", "baseline config file")
flags.DEFINE_integer("steps", 10, "timed steps per measurement")
flags.DEFINE_string("json", "", "also write the results to this file")
FLAGS = flags.FLAGS


def load_config(path: str):
  import importlib.util
  spec = importlib.util.spec_from_file_location("bench_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def time_train_step(config, batch, steps: int, devices=None) -> dict:
  """Compiles the train step on a 1-device mesh and times `steps` steps."""
  mesh = sharding.make_mesh(1, 1, 1, devices=(devices or jax.devices()[:1]))
  setup = make_setup(config, mesh)
  state = init_state(setup)
  with jax.set_mesh(mesh):
    compiled = jit_train_step(setup, batch).lower(state, batch).compile()
    state, metrics = compiled(state, batch)
    jax.block_until_ready(metrics)
    start = time.perf_counter()
    for _ in range(steps):
      state, metrics = compiled(state, batch)
    jax.block_until_ready(metrics)
  seconds = (time.perf_counter() - start) / steps
  flops = compiled_flops(compiled)
  return {"step_seconds": seconds, "bytes_per_s": float(np.sum(batch["loss_mask"])) / seconds,
          "model_flops_per_s": flops / seconds, "step_flops": flops}


def section_peak(results):
  results["peak_flops_per_s"] = measure_matmul_peak(2048, repeats=5)
  return {"matmul_peak_gflops": results["peak_flops_per_s"] / 1e9}


def section_baseline(results):
  config = load_config(FLAGS.config)
  batch = packed_byte_batch(0, config.train.batch_size, config.data.seq_len)
  r = time_train_step(config, batch, FLAGS.steps)
  results["baseline"] = r
  peak = results.get("peak_flops_per_s") or measure_matmul_peak(2048)
  return {"baseline_bytes_per_s": r["bytes_per_s"],
          "baseline_model_gflops_per_s": r["model_flops_per_s"] / 1e9,
          "baseline_fraction_of_peak": r["model_flops_per_s"] / peak}


def state_bytes_per_device(setup) -> float:
  """Bytes of params + optimizer state held by one device under the state shardings."""
  total = 0
  for leaf in jax.tree.leaves(setup.abstract_state):
    shard_shape = leaf.sharding.shard_shape(leaf.shape)
    total += int(np.prod(shard_shape)) * leaf.dtype.itemsize
  return total


def section_memory(results):
  config = load_config(FLAGS.config)
  config.model.dim, config.model.mlp_dim = 512, 1536  # large enough that params dominate
  batch = packed_byte_batch(0, 8, config.data.seq_len)
  out = {}
  for name, shape in (("1dev", (1, 1, 1)), ("fsdp8", (1, 8, 1))):
    mesh = sharding.make_mesh(*shape, devices=jax.devices()[:int(np.prod(shape))])
    setup = make_setup(config, mesh)
    with jax.set_mesh(mesh):
      compiled = jit_train_step(setup, batch).lower(setup.abstract_state, batch).compile()
    mem = compiled_memory(compiled)
    out[f"{name}_state_bytes"] = state_bytes_per_device(setup)
    out[f"{name}_compiled_argument_bytes"] = mem.get("argument_bytes", 0)
    out[f"{name}_compiled_temp_bytes"] = mem.get("temp_bytes", 0)
  out["fsdp8_state_reduction"] = out["1dev_state_bytes"] / out["fsdp8_state_bytes"]
  out["fsdp8_argument_reduction"] = (out["1dev_compiled_argument_bytes"] /
                                     max(out["fsdp8_compiled_argument_bytes"], 1))
  results["memory"] = out
  return out


SECTIONS = {"peak": section_peak, "baseline": section_baseline, "memory": section_memory}


def main(argv):
  del argv
  results, table = {"devices": str(jax.devices()[0].device_kind), "cpu_count": os.cpu_count()}, {}
  for name in FLAGS.sections:
    if name not in SECTIONS:
      raise SystemExit(f"unknown section {name!r}; known: {sorted(SECTIONS)}")
    print(f"[bench] {name} ...", flush=True)
    table.update(SECTIONS[name](results))
  for key, value in table.items():
    print(f"{key:45s} {value:.4g}" if isinstance(value, float) else f"{key:45s} {value}")
  if FLAGS.json:
    with open(FLAGS.json, "w") as f:
      json.dump({**results, "table": table}, f, indent=2, default=float)


if __name__ == "__main__":
  app.run(main)
