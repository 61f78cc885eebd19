"""Benchmarks, as ratios measured in one run on this machine.

  python tools/bench.py                       # every section, table + JSON
  python tools/bench.py --sections=baseline,memory --json=bench.json

Sections:
  peak      f32 matmul FLOP/s (2048^3), the reference for every ratio below
  baseline  byte Transformer train step at widths 128 (tiny) and 512, on 1 and 2
            simulated CPU devices (batch split): model FLOP/s by the standard count
            (6 x params x tokens + attention) and by XLA's cost analysis, each as a
            fraction of the matmul peak re-measured before every repeat
  memory    compiled train step on 8 simulated devices: per-device parameter +
            optimizer bytes with fsdp=8 vs 1 device (ratio)
  hnet      tiny H-Net train bytes/s vs a byte Transformer of the same width and depth;
            routing + chunk + dechunk fwd+bwd at 8 x 2048 x 512 vs its two projections
  ssd       Mamba-2 SSD scan: chunked vs sequential (fwd+bwd)
  words     HAT / Learn Your Tokens train bytes/s vs the byte Transformer; splitter MB/s
  splitter  the HAT word splitter, one core, on the embedded corpus; with
            --splitter_reference_python (a scratch venv with hat-splitter 0.1.10, never a
            dependency): side by side with the published Rust splitter on eight corpora,
            word-boundary F1 and speed (tools/compare_splitter.py)
  generation  compile time, steady-state decode and prefill bytes/s at batch 1 and 16
            (transformer, H-Net, HAT, LYT, Byte2Word, MrT5)
  mrt5      encoder time with hard deletion vs soft deletion
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
from hnet.perf import (compiled_flops, compiled_memory, measure_matmul_peak,  # noqa: E402
                       transformer_model_flops)
from hnet.testing import packed_byte_batch  # noqa: E402
from hnet.train import init_state, jit_train_step, make_setup  # noqa: E402

flags.DEFINE_list("sections", ["peak", "baseline", "memory", "hnet", "ssd", "words", "splitter",
                               "generation", "mrt5"], "sections to run")
flags.DEFINE_string("mrt5_workdir", "runs/compare/mrt5_tiny", "trained MrT5 run for the mrt5 section")
flags.DEFINE_string("config", "configs/transformer_tiny.py", "baseline config file")
flags.DEFINE_integer("steps", 10, "timed steps per measurement")
flags.DEFINE_integer("repeats", 3, "baseline: repeats of (peak, steps) per variant")
flags.DEFINE_list("baseline_widths", ["128", "512"], "baseline: model widths to time")
flags.DEFINE_integer("baseline_batch_wide", 16, "baseline: rows per step at widths other "
                     "than the config's")
flags.DEFINE_list("baseline_devices", ["1", "2"], "baseline: data-parallel device counts "
                  "(simulated CPU devices) to time each width on")
flags.DEFINE_string("json", "", "also write the results to this file")
flags.DEFINE_string("splitter_reference_python", "", "splitter section: python of a scratch venv "
                    "with hat-splitter installed, to compare with (e.g. /tmp/hatsplit/bin/python)")
FLAGS = flags.FLAGS


def load_config(path: str):
  import importlib.util
  spec = importlib.util.spec_from_file_location("bench_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def compile_train_step(config, batch, devices: int = 1):
  """The config's train step compiled with the batch split over `devices` (data parallel).
  Returns (run, compiled): run(steps) times `steps` steps and returns seconds per step."""
  mesh = sharding.make_mesh(devices, 1, 1, devices=jax.devices()[:devices])
  config.mesh.data = devices
  setup = make_setup(config, mesh)
  holder = {"state": init_state(setup)}
  with jax.set_mesh(mesh):
    placed = {k: jax.device_put(v, s) for (k, v), s in
              zip(batch.items(), setup.batch_sharding(batch).values())}
    compiled = jit_train_step(setup, placed).lower(holder["state"], placed).compile()

  def run(steps: int) -> float:
    with jax.set_mesh(mesh):
      holder["state"], metrics = compiled(holder["state"], placed)  # warm
      jax.block_until_ready(metrics)
      start = time.perf_counter()
      for _ in range(steps):
        holder["state"], metrics = compiled(holder["state"], placed)
      jax.block_until_ready(metrics)
    return (time.perf_counter() - start) / steps
  run.setup = setup
  return run, compiled


def time_train_step(config, batch, steps: int, devices: int = 1) -> dict:
  """Compiles the train step on a `devices`-device mesh and times `steps` steps."""
  run, compiled = compile_train_step(config, batch, devices)
  seconds = run(steps)
  flops = compiled_flops(compiled) * devices  # cost_analysis counts one device's program
  return {"step_seconds": seconds, "bytes_per_s": float(np.sum(batch["loss_mask"])) / seconds,
          "model_flops_per_s": flops / seconds, "step_flops": flops}


def section_peak(results):
  results["peak_flops_per_s"] = measure_matmul_peak(2048, repeats=5)
  return {"matmul_peak_gflops": results["peak_flops_per_s"] / 1e9}


def baseline_variants() -> list[tuple[str, object]]:
  """(label, config) for each width in --baseline_widths: the baseline config at that
  width (mlp 3x, 64-wide heads above 128), rows from --baseline_batch_512 above 128."""
  out = []
  for width in FLAGS.baseline_widths:
    config = load_config(FLAGS.config)
    width = int(width)
    if width != config.model.dim:
      config.model.dim, config.model.mlp_dim = width, 3 * width
      config.model.num_heads = config.model.num_kv_heads = max(width // 64, 1)
      config.train.batch_size = FLAGS.baseline_batch_wide
    out.append((f"d{width}", config))
  return out


def section_baseline(results):
  """Byte Transformer train step: model FLOP/s by the standard count (6 x params x tokens
  + attention) and by XLA's cost analysis, each as a fraction of the f32 matmul peak.
  The peak is re-measured before every repeat and each repeat's steps are divided by the
  peak measured just before them (the host is shared: both move with load)."""
  devices = [int(d) for d in FLAGS.baseline_devices]
  runs = []
  for label, config in baseline_variants():
    batch = packed_byte_batch(0, config.train.batch_size, config.data.seq_len)
    for n in devices:
      if config.train.batch_size % n:
        continue
      run, compiled = compile_train_step(config, batch, n)
      params = run.setup.abstract_state["params"]
      standard = transformer_model_flops(
          params, num_layers=config.model.num_layers, dim=config.model.dim,
          seq_len=config.data.seq_len, tokens=config.train.batch_size * config.data.seq_len)
      runs.append({"label": f"{label}_{n}dev", "run": run, "standard_flops": standard,
                   "xla_flops": compiled_flops(compiled) * n,
                   "bytes": float(np.sum(batch["loss_mask"])), "fractions": [], "xla_fractions": [],
                   "step_seconds": [], "peaks": []})
  for _ in range(FLAGS.repeats):
    for r in runs:
      peak = measure_matmul_peak(2048, repeats=3)
      seconds = r["run"](FLAGS.steps)
      r["peaks"].append(peak)
      r["step_seconds"].append(seconds)
      r["fractions"].append(r["standard_flops"] / seconds / peak)
      r["xla_fractions"].append(r["xla_flops"] / seconds / peak)
  out, detail = {"load_average_1min": os.getloadavg()[0]}, {}
  for r in runs:
    label = r.pop("label")
    del r["run"]
    detail[label] = r
    median = float(np.median(r["fractions"]))
    out[f"baseline_{label}_bytes_per_s"] = r["bytes"] / float(np.median(r["step_seconds"]))
    out[f"baseline_{label}_model_fraction_of_peak"] = median
    out[f"baseline_{label}_model_fraction_spread"] = (f"{min(r['fractions']):.3f}-"
                                                      f"{max(r['fractions']):.3f}")
    out[f"baseline_{label}_xla_fraction_of_peak"] = float(np.median(r["xla_fractions"]))
    out[f"baseline_{label}_xla_over_model_flops"] = r["xla_flops"] / r["standard_flops"]
    out[f"baseline_{label}_peak_gflops"] = float(np.median(r["peaks"])) / 1e9
  results["baseline"] = detail
  return out


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


def relative_throughput(config_path: str, reference, overrides=None) -> dict:
  """bytes/s of a config's train step and its ratio to `reference` (a time_train_step dict)."""
  config = load_config(config_path)
  for key, value in (overrides or {}).items():
    section, field = key.split(".")
    config[section][field] = value
  batch = real_batch(config)
  r = time_train_step(config, batch, FLAGS.steps)
  return {"bytes_per_s": r["bytes_per_s"], "ratio": r["bytes_per_s"] / reference["bytes_per_s"],
          "model_flops_per_s": r["model_flops_per_s"]}


def real_batch(config):
  """One train batch of the config's own layout from the embedded corpus."""
  from hnet import loop
  config.mesh.data = 1
  return next(iter(loop.data_iterator(config, config.data.train_split, repeat=True)))


def section_hnet(results):
  """H-Net tiny vs a byte Transformer of the same outer width and total depth."""
  from hnet import kernels
  hnet_config = load_config("configs/hnet_1stage_tiny.py")
  transformer = load_config("configs/transformer_tiny.py")
  transformer.model.dim, transformer.model.num_layers = 128, 6
  transformer.data.seq_len, transformer.train.batch_size = hnet_config.data.seq_len, hnet_config.train.batch_size
  hnet_batch, reference_batch = real_batch(hnet_config), real_batch(transformer)
  hnet_run, _ = compile_train_step(hnet_config, hnet_batch)
  reference_run, _ = compile_train_step(transformer, reference_batch)
  ratios, hnet_rates = [], []
  for _ in range(FLAGS.repeats):  # interleaved: both move with the host's load
    reference_rate = float(np.sum(reference_batch["loss_mask"])) / reference_run(FLAGS.steps)
    hnet_rates.append(float(np.sum(hnet_batch["loss_mask"])) / hnet_run(FLAGS.steps))
    ratios.append(hnet_rates[-1] / reference_rate)
  hnet = {"bytes_per_s": float(np.median(hnet_rates)), "ratio": float(np.median(ratios)),
          "ratios": ratios}
  reference = {"bytes_per_s": float(np.median(hnet_rates)) / float(np.median(ratios))}
  routing = kernels.benchmark_routing(8, 2048, 512, "jnp", iters=3)
  results["hnet"] = {"reference": reference, "hnet": hnet, "routing": routing}
  summary = {"hnet_train_bytes_per_s": hnet["bytes_per_s"],
             "hnet_vs_transformer_same_width_depth": hnet["ratio"],
             "hnet_vs_transformer_spread": f"{min(ratios):.3f}-{max(ratios):.3f}",
             "routing_path_fwd_bwd_s_8x2048x512": routing["path_s"],
             "routing_floor_s_two_projections": routing["floor_s"],
             "routing_path_over_floor": routing["ratio"]}
  if jax.default_backend() != "cpu":  # compiled Pallas kernels (interpret mode times nothing useful)
    pallas = kernels.benchmark_routing(8, 2048, 512, "pallas", iters=3)
    results["hnet"]["routing_pallas"] = pallas
    summary["routing_pallas_path_fwd_bwd_s"] = pallas["path_s"]
    summary["routing_pallas_over_floor"] = pallas["ratio"]
    summary["routing_pallas_speedup_over_jnp"] = routing["path_s"] / pallas["path_s"]
  return summary


def section_ssd(results):
  from hnet.layers.ssd import benchmark_ssd
  r = benchmark_ssd(8, 1024, 256, repeats=2)
  results["ssd"] = r
  return {"ssd_chunked_s_8x1024x256": r["chunked_s"], "ssd_sequential_s": r["sequential_s"],
          "ssd_chunked_speedup": r["speedup"]}


def section_words(results):
  """HAT / Learn Your Tokens training bytes/s relative to the byte Transformer, and the splitter."""
  from hnet.data import corpus
  from hnet.text.splitter import splitter_throughput
  transformer = load_config("configs/transformer_tiny.py")
  reference = time_train_step(transformer, real_batch(transformer), FLAGS.steps)
  out = {}
  for name in ("hat_tiny", "lyt_tiny"):
    r = relative_throughput(f"configs/{name}.py", reference)
    out[f"{name}_train_bytes_per_s"] = r["bytes_per_s"]
    out[f"{name}_vs_transformer_tiny"] = r["ratio"]
  text = b"".join(corpus.embedded_documents("train"))[:4_000_000]
  split = splitter_throughput(text)
  out["splitter_mb_per_s_one_core"] = split["mb_per_s"]
  out["splitter_bytes_per_word"] = split["bytes_per_word"]
  results["words"] = out
  return out


def _timed(fn):
  fn()  # compile
  start = time.perf_counter()
  fn()
  return time.perf_counter() - start


def section_splitter(results):
  """Splitter MB/s on the embedded corpus; side by side with hat-splitter when given."""
  import importlib.util
  from hnet.data import corpus
  from hnet.text.splitter import splitter_throughput
  text = b"".join(corpus.embedded_documents("train"))[:4_000_000]
  split = splitter_throughput(text)
  out = {"splitter_mb_per_s_one_core": split["mb_per_s"],
         "splitter_bytes_per_word": split["bytes_per_word"]}
  if FLAGS.splitter_reference_python:
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "compare_splitter.py")
    spec = importlib.util.spec_from_file_location("compare_splitter", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rows, table, details = module.side_by_side(FLAGS.splitter_reference_python)
    print("\n".join(table))
    print("remaining differences:\n" + ("\n".join(details) if details else "  none"))
    for name, row in rows.items():
      out[f"splitter_{name}_f1_vs_published"] = row["f1"]
      out[f"splitter_{name}_speed_vs_published"] = row["speed_ratio"]
  results["splitter"] = out
  return out


GENERATION_FAMILIES = ("transformer_tiny", "hnet_1stage_tiny", "hat_tiny", "lyt_tiny",
                       "byte2word_tiny", "mrt5_tiny")
PROMPT_TEXT = (b"ROMEO. But soft, what light through yonder window breaks? It is the east, and "
               b"Juliet is the sun. Arise, fair sun, and kill the envious moon, who is already "
               b"sick and pale with grief that thou her maid art far more fair than she. ") * 8


def _clock(fn, cpu: bool = False):
  """Wall seconds of fn() (and this process's CPU seconds with cpu=True)."""
  start, start_cpu = time.perf_counter(), time.process_time()
  fn()
  wall = time.perf_counter() - start
  return (wall, time.process_time() - start_cpu) if cpu else wall


def generation_figures(name: str, batch: int, new_bytes: int = 256, long_prompt: int = 1000,
                       calls: int = 3):
  """One fresh tiny model of configs/<name>.py at `batch` rows (EOS does not stop a row):
    compile_s         first call (32-byte prompts, new_bytes) minus second_call_s
    second_call_s     the median of `calls` later calls, each with a new 32-byte prompt
                      (same buckets), new_bytes: no compilation (one call alone varied
                      up to 2x on this shared host)
    decode_bytes_per_s  batch * new_bytes / second_call_s (includes the 32-byte prefill)
    decode_bytes_per_cpu_s  the same per CPU second of this process, median of the calls
                      (on a loaded host the wall figure measures the other processes too)
    prefill_bytes_per_s batch * long_prompt / (a call with long_prompt-byte prompts and
                      1 new byte, after its own compilation): the prompt pass (MrT5:
                      the encoder over a long_prompt-byte source)."""
  from flax import nnx
  from hnet import generate as hgenerate
  from hnet.models import build_model
  from hnet.models import hat as hat_lib
  config = load_config(f"configs/{name}.py")
  model = build_model(config.model, nnx.Rngs(0))
  family = config.model.name
  if family in ("mrt5", "byt5"):
    def sample(prompts, n):
      return hgenerate.generate_from_source(model, prompts, max_new_bytes=n, stop_at_eos=False)
  elif family in ("hat", "lyt", "byte2word"):
    def sample(prompts, n):
      return hat_lib.generate(model, prompts, max_new_bytes=n, stop_at_eos=False,
                              max_word_size=model.max_word_len)
  else:
    def sample(prompts, n):
      return hgenerate.generate(model, prompts, max_new_bytes=n, stop_at_eos=False)
  first = _clock(lambda: sample([PROMPT_TEXT[:32]] * batch, new_bytes))
  timings = [_clock(lambda: sample([PROMPT_TEXT[40 + i:72 + i]] * batch, new_bytes), cpu=True)
             for i in range(calls)]
  second, second_cpu = (float(np.median(t)) for t in zip(*timings))
  long_prompts = [PROMPT_TEXT[:long_prompt]] * batch
  if family in ("mrt5", "byt5"):
    ids = [hgenerate.source_ids(p) for p in long_prompts]
    source = hgenerate.source_batch(ids + ids[:1] * (hgenerate.batch_bucket(batch) - batch),
                                    hgenerate.length_bucket(long_prompt))
    encode = lambda: jax.block_until_ready(hgenerate.encode_sources(model, source))
  else:
    encode = lambda: sample(long_prompts, 1)
  encode()  # compile
  prefill = _clock(encode)
  return {"compile_s": first - second, "second_call_s": second,
          "decode_bytes_per_s": batch * new_bytes / second,
          "decode_bytes_per_cpu_s": batch * new_bytes / second_cpu,
          "prefill_bytes_per_s": batch * long_prompt / prefill}


def section_generation(results):
  """Generation: compile time, steady-state decode and prefill bytes/s at batch 1 and 16,
  fresh tiny models of every family with a generation path (generation_figures)."""
  out = {}
  for name in GENERATION_FAMILIES:
    for batch in (1, 16):
      figures = generation_figures(name, batch)
      print(f"[bench] {name} batch {batch}: " + ", ".join(
          f"{k} {v:.4g}" for k, v in figures.items()), flush=True)
      out.update({f"{name}_b{batch}_{k}": v for k, v in figures.items()})
    out[f"{name}_decode_batch16_over_batch1"] = (out[f"{name}_b16_decode_bytes_per_s"]
                                                 / out[f"{name}_b1_decode_bytes_per_s"])
  results["generation"] = out
  return out


def section_mrt5(results):
  """MrT5 encoder time with hard deletion vs soft deletion (same model, same batch)."""
  from flax import nnx
  from hnet.models import build_model
  from hnet.models import mrt5 as mrt5_lib
  workdir = FLAGS.mrt5_workdir
  if workdir and os.path.isdir(os.path.join(workdir, "checkpoints")):
    from hnet.runs import load_model
    model, config, _ = load_model(workdir)
    source = f"trained run {workdir}"
  else:
    config = load_config("configs/mrt5_tiny.py")
    model = build_model(config.model, nnx.Rngs(0))
    source = "fresh init (nothing deleted): pass --mrt5_workdir for a trained gate"
  config.data.seq_len, config.train.batch_size = 1024, 32
  batch = {k: jax.numpy.asarray(v) for k, v in real_batch(config).items()}
  front = mrt5_lib._jit_encode_front(model, batch)  # pylint: disable=protected-access
  soft = _timed(lambda: jax.block_until_ready(mrt5_lib._jit_encode_back(model, front, None)))
  hard = _timed(lambda: jax.block_until_ready(mrt5_lib.encode_hard(model, batch)))
  front_s = _timed(lambda: jax.block_until_ready(mrt5_lib._jit_encode_front(model, batch)))
  real = np.asarray(front["segment_ids"]) > 0
  deleted = float(np.sum(real & (np.asarray(front["gate"]) < model.gate_k / 2)) / np.sum(real))
  out = {"mrt5_deleted_fraction": deleted, "mrt5_encoder_soft_s": front_s + soft,
         "mrt5_encoder_hard_s": hard, "mrt5_encoder_speedup": (front_s + soft) / hard}
  results["mrt5"] = {**out, "source": source}
  print(f"[bench] mrt5 model: {source}")
  return out


SECTIONS = {"peak": section_peak, "baseline": section_baseline, "memory": section_memory,
            "splitter": section_splitter, "hnet": section_hnet, "ssd": section_ssd, "words": section_words,
            "generation": section_generation, "mrt5": section_mrt5}


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
