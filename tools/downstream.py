"""Downstream check: a linear probe on the frozen encoder of trained MrT5 / ByT5 runs
(which work of the embedded corpus a passage comes from; hnet/eval/probe.py).

  python tools/downstream.py --workdirs=runs/compare/byt5_tiny,runs/compare/mrt5_tiny \
      --names=byt5,mrt5 --out=runs/downstream

Writes --out/downstream.json and --out/downstream.md (a table: probe-test accuracy,
encoder bytes/s, deletion ratio per model and feature mode, and a byte-histogram probe
as the no-model reference). Every model sees the same passages; --seq_len defaults to
the first run's data.seq_len. Other model families (no encoder) are refused.
"""
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

flags.DEFINE_list("workdirs", [], "encoder-decoder (mrt5 / byt5) run directories")
flags.DEFINE_list("names", [], "a label per run (default: the run directory's name)")
flags.DEFINE_string("out", "runs/downstream", "output directory")
flags.DEFINE_integer("num_classes", 8, "the K largest text works are the classes")
flags.DEFINE_integer("seq_len", 0, "passage bytes (0 = the first run's data.seq_len)")
flags.DEFINE_integer("train_per_class", 200, "probe-train passages per class (at most)")
flags.DEFINE_integer("test_per_class", 50, "probe-test passages per class (at most)")
flags.DEFINE_float("train_fraction", 0.8, "probe-train = this first part of each file")
flags.DEFINE_integer("dedup_bytes", 64, "drop test passages sharing this many bytes with "
                     "a train region (0 = off)")
flags.DEFINE_integer("seed", 0, "passage sampling seed")
flags.DEFINE_integer("steps", 2000, "logistic regression steps (full-batch Adam)")
flags.DEFINE_float("learning_rate", 0.05, "logistic regression learning rate")
flags.DEFINE_float("l2", 1e-4, "L2 penalty on the probe weights")
flags.DEFINE_integer("batch_size", 32, "passages per encoder call")
flags.DEFINE_integer("timing_repeats", 3, "timed encoder passes per mode (the fastest counts)")
flags.DEFINE_integer("step", -1, "checkpoint step (-1 = newest readable)")
FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  from hnet.runs import run_names
  try:
    names = run_names(FLAGS.workdirs, FLAGS.names)
  except ValueError as e:
    raise app.UsageError(str(e)) from None
  import jax
  from tqdm.auto import tqdm
  from hnet.eval import probe
  from hnet.runs import load_config, load_model

  configs = [load_config(w) for w in FLAGS.workdirs]
  for workdir, config in zip(FLAGS.workdirs, configs):
    try:
      probe.encoder_family(config)
    except NotImplementedError as e:
      raise app.UsageError(f"{workdir}: {e}") from None
  seq_len = FLAGS.seq_len or int(configs[0].data.seq_len)
  fit = {"steps": FLAGS.steps, "learning_rate": FLAGS.learning_rate, "l2": FLAGS.l2}
  data = probe.build_probe_data(
      num_classes=FLAGS.num_classes, seq_len=seq_len, train_per_class=FLAGS.train_per_class,
      test_per_class=FLAGS.test_per_class, train_fraction=FLAGS.train_fraction,
      dedup_bytes=FLAGS.dedup_bytes, seed=FLAGS.seed)
  print(f"{len(data.classes)} classes, {len(data.train.texts)} train / {len(data.test.texts)} "
        f"test passages of {seq_len} bytes; test passages dropped for shared text: "
        f"{sum(data.info['test_dropped_shared_text'].values())}")
  results = {"settings": {**data.info, "classes": list(data.classes), **fit,
                          "batch_size": FLAGS.batch_size, "timing_repeats": FLAGS.timing_repeats,
                          "jax_backend": jax.default_backend(), "device": str(jax.devices()[0])},
             "byte_histogram": probe.histogram_baseline(data, **fit), "models": []}
  for workdir, name in zip(tqdm(FLAGS.workdirs, desc="models", unit="model"), names):
    model, config, step = load_model(workdir, None if FLAGS.step < 0 else FLAGS.step)
    started = time.perf_counter()
    result = probe.evaluate_encoder(model, config, data, batch_size=FLAGS.batch_size,
                                    timing_repeats=FLAGS.timing_repeats, progress=True, **fit)
    result.update({"name": name, "workdir": workdir, "step": step,
                   "seconds": round(time.perf_counter() - started, 1)})
    results["models"].append(result)
    tqdm.write(f"{name}: " + ", ".join(
        f"{mode} test acc {r['test_accuracy']:.3f} ({r['bytes_per_s']:,.0f} bytes/s, "
        f"{100 * r['deletion_ratio']:.1f}% deleted)" for mode, r in result["modes"].items()))
  os.makedirs(FLAGS.out, exist_ok=True)
  with open(os.path.join(FLAGS.out, "downstream.json"), "w") as f:
    json.dump(results, f, indent=2)
  with open(os.path.join(FLAGS.out, "downstream.md"), "w") as f:
    f.write("# Downstream: linear probe on the frozen encoder\n\n"
            + probe.markdown_report(results))
  print(f"wrote {FLAGS.out}/downstream.json and {FLAGS.out}/downstream.md")


if __name__ == "__main__":
  app.run(main)
