"""Spelling-noise robustness of trained runs: bpb and multiple-choice accuracy on clean vs
noised held-out text, one curve per model (hnet/eval/robustness.py).

  python tools/robustness.py --workdirs=runs/robust/transformer,runs/robust/bpe \
      --out=runs/robust/report --noises=hat_mix,antspeak --levels=0.05,0.1,0.2 --seed=0
  # + --hellaswag=path/to/hellaswag_val.jsonl for HellaSwag-format multiple choice

Writes into --out: results.json, results.md (Markdown tables) and <metric>_<noise>.png.
Held-out text: the first run's eval split (override with --source/--path/--split),
cut to --max_bytes; the cloze task is cut from the same text (hnet.eval.tasks). Every
model sees the same documents and examples; the same --seed gives the same numbers.
"""
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

flags.DEFINE_list("workdirs", [], "run directories to evaluate (comma separated)")
flags.DEFINE_list("names", [], "a label per run (default: the run directory's name)")
flags.DEFINE_string("out", "runs/robustness", "output directory")
flags.DEFINE_list("noises", ["hat_mix", "all_caps", "antspeak", "char_drop", "random_case",
                             "char_repeat", "codespell_typos"], "noises (hnet.eval.noise.NOISES)")
flags.DEFINE_list("levels", ["0.05", "0.1", "0.2", "0.4"], "noise levels in [0, 1]")
flags.DEFINE_integer("seed", 0, "noise and task seed")
flags.DEFINE_integer("max_bytes", 32768, "held-out bytes for bpb (0 = the whole split)")
flags.DEFINE_integer("cloze_examples", 200, "cloze examples (0 = no cloze task)")
flags.DEFINE_integer("cloze_context_bytes", 192, "cloze context length (bytes)")
flags.DEFINE_integer("cloze_continuation_bytes", 32, "cloze continuation length (bytes)")
flags.DEFINE_integer("cloze_choices", 4, "choices per cloze example")
flags.DEFINE_string("hellaswag", "", "HellaSwag-format jsonl (optional)")
flags.DEFINE_integer("hellaswag_limit", 0, "first N HellaSwag examples (0 = all)")
flags.DEFINE_string("source", "", "override data.source of the held-out text")
flags.DEFINE_string("path", "", "override data.path of the held-out text")
flags.DEFINE_string("split", "", "held-out split (default: the first run's eval split)")
flags.DEFINE_integer("batch_size", 32, "rows per forward pass")
flags.DEFINE_integer("step", -1, "checkpoint step (-1 = newest readable)")
flags.DEFINE_bool("reuse", False, "keep a model's results from an existing OUT/results.json "
                  "when the settings, name, run directory and checkpoint step all match "
                  "(adds models to a report without re-evaluating the others)")
FLAGS = flags.FLAGS


def _load(workdir: str):
  from hnet.data import bpe
  from hnet.runs import load_model
  model, config, step = load_model(workdir, None if FLAGS.step < 0 else FLAGS.step)
  tokenizer = os.path.join(workdir, bpe.TOKENIZER_FILE)
  if config.data.get("layout") == "bpe" and os.path.exists(tokenizer):
    config.data.bpe_tokenizer = os.path.abspath(tokenizer)  # the run's own, wherever it moved
  return model, config, step


def _previous_results(settings: dict) -> dict:
  """(name, workdir, step, fingerprint) -> that model's entry of OUT/results.json, if the
  file exists and was written with exactly these settings; else {}. Entries written
  before fingerprints existed never match (they are evaluated again)."""
  path = os.path.join(FLAGS.out, "results.json")
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    previous = json.load(f)
  if previous.get("settings") != settings:
    print(f"--reuse: {path} has other settings; evaluating every model again")
    return {}
  return {(m["name"], m["workdir"], m["step"], m.get("fingerprint")): m
          for m in previous.get("models", [])}


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  from hnet.runs import run_fingerprint, run_names
  try:
    names = run_names(FLAGS.workdirs, FLAGS.names)
  except ValueError as e:
    raise app.UsageError(str(e)) from None
  import jax
  from hnet.eval import robustness, tasks
  from hnet.runs import load_config

  settings = robustness.Settings(noises=tuple(FLAGS.noises),
                                 levels=tuple(float(x) for x in FLAGS.levels),
                                 seed=FLAGS.seed, batch_size=FLAGS.batch_size)
  data_config = load_config(FLAGS.workdirs[0])
  for key in ("source", "path"):
    if getattr(FLAGS, key):
      data_config.data[key] = getattr(FLAGS, key)
  documents = robustness.held_out_documents(data_config, max_bytes=FLAGS.max_bytes,
                                            split=FLAGS.split or None)
  task_examples = {}
  if FLAGS.cloze_examples:
    task_examples["cloze"] = tasks.make_cloze_examples(
        documents, num_examples=FLAGS.cloze_examples, context_bytes=FLAGS.cloze_context_bytes,
        continuation_bytes=FLAGS.cloze_continuation_bytes, num_choices=FLAGS.cloze_choices,
        seed=FLAGS.seed)
    if not task_examples["cloze"]:
      raise app.UsageError("the held-out text is too short for a cloze example")
  if FLAGS.hellaswag:
    task_examples["hellaswag"] = tasks.load_hellaswag_jsonl(
        FLAGS.hellaswag, limit=FLAGS.hellaswag_limit or None)
  print(f"held-out text: {len(documents)} documents, {sum(map(len, documents))} bytes; "
        + ", ".join(f"{k}: {len(v)} examples" for k, v in task_examples.items()))

  results = {"settings": {"noises": list(settings.noises), "levels": list(settings.levels),
                          "seed": settings.seed, "max_bytes": FLAGS.max_bytes,
                          "held_out_documents": len(documents),
                          "held_out_bytes": sum(map(len, documents)),
                          "tasks": {k: len(v) for k, v in task_examples.items()},
                          "hellaswag": FLAGS.hellaswag or None,
                          "normalize": settings.normalize, "jax_backend": jax.default_backend()},
             "models": []}
  previous = _previous_results(results["settings"]) if FLAGS.reuse else {}
  for workdir, name in zip(FLAGS.workdirs, names):
    model, config, step = _load(workdir)
    fingerprint = run_fingerprint(workdir, step)
    kept = previous.get((name, workdir, step, fingerprint))
    if kept is not None:
      results["models"].append(kept)
      print(f"{name}: reused from {FLAGS.out}/results.json (step {step})")
      continue
    started = time.perf_counter()
    result = robustness.evaluate_model(model, config, documents=documents,
                                       tasks=task_examples, settings=settings, name=name)
    result.update({"workdir": workdir, "step": step, "fingerprint": fingerprint,
                   "seconds": round(time.perf_counter() - started, 1)})
    results["models"].append(result)
    print(f"{name}: clean " + json.dumps(result["clean"]))
  paths = robustness.write_results(results, FLAGS.out)
  print(f"wrote {paths['json']}, {paths['markdown']} and {len(paths['plots'])} plots")


if __name__ == "__main__":
  app.run(main)
