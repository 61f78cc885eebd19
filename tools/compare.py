"""Train several configs at matched training FLOPs and compare held-out figures.

  python tools/compare.py --configs=configs/hnet_1stage_tiny.py,configs/transformer_tiny.py \
      --flops=2e15 --out=runs/compare

Each config's train-step FLOPs come from XLA's cost analysis of its compiled step (the
same count for every family, backward included); its step budget is flops / step_flops.
Writes <out>/compare.json and compare.md (held-out bpb and every eval metric the models
report: bytes per chunk, bytes per word, next-word accuracy, deletion ratio, ...).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import importlib.util  # noqa: E402
import json  # noqa: E402

from absl import app, flags  # noqa: E402

flags.DEFINE_list("configs", ["configs/hnet_1stage_tiny.py", "configs/transformer_tiny.py"],
                  "config files to compare")
flags.DEFINE_float("flops", 2e15, "training FLOPs per model")
flags.DEFINE_string("out", "runs/compare", "output directory (one run directory per config)")
flags.DEFINE_multi_string("set", [], "override for every config, e.g. --set=train.batch_size=16")
FLAGS = flags.FLAGS


def load(path):
  spec = importlib.util.spec_from_file_location("cmp_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def apply_override(config, assignment: str):
  key, value = assignment.split("=", 1)
  *parents, leaf = key.split(".")
  node = config
  for p in parents:
    node = node[p]
  node[leaf] = type(node[leaf])(value) if not isinstance(node[leaf], bool) else value == "True"


def step_flops(config) -> float:
  import jax
  from hnet import loop, sharding
  from hnet.perf import compiled_flops
  from hnet.train import jit_train_step, make_setup
  mesh = sharding.make_mesh(config.mesh.data, config.mesh.fsdp, config.mesh.tensor)
  setup = make_setup(config, mesh)
  example = loop.to_global(setup, next(iter(loop.data_iterator(config, config.data.train_split,
                                                               repeat=True))))
  with jax.set_mesh(mesh):
    return compiled_flops(jit_train_step(setup, example).lower(setup.abstract_state, example).compile())


def main(argv):
  del argv
  from hnet import loop
  os.makedirs(FLAGS.out, exist_ok=True)
  rows = []
  for path in FLAGS.configs:
    name = os.path.splitext(os.path.basename(path))[0]
    config = load(path)
    for assignment in FLAGS.set:
      apply_override(config, assignment)
    flops = step_flops(config)
    steps = max(int(FLAGS.flops // flops), 1)
    config.train.steps = steps
    config.train.eval_every = 0
    config.checkpoint.every = steps
    print(f"[compare] {name}: {flops:.3g} FLOPs/step -> {steps} steps", flush=True)
    summary_path = os.path.join(FLAGS.out, name, "summary.json")
    if os.path.exists(summary_path):  # finished earlier with this budget: reuse, do not retrain
      with open(summary_path) as f:
        summary = json.load(f)
      if summary.get("step") != steps or "eval" not in summary:
        raise SystemExit(f"{summary_path} is from another budget ({summary.get('step')} steps, "
                         f"now {steps}); delete {os.path.dirname(summary_path)} to retrain.")
      print(f"[compare] {name}: reusing the finished run in {os.path.dirname(summary_path)}")
    else:
      summary = loop.run(config, os.path.join(FLAGS.out, name))
    rows.append({"name": name, "config": path, "steps": steps, "step_flops": flops,
                 "train_flops": flops * steps, "train_seconds": summary["train_seconds"],
                 **{k: v for k, v in summary["eval"].items()}})
  with open(os.path.join(FLAGS.out, "compare.json"), "w") as f:
    json.dump(rows, f, indent=2)
  keys = sorted({k for r in rows for k in r} - {"name", "config"})
  lines = ["| model | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
  for r in rows:
    lines.append(f"| {r['name']} | " + " | ".join(
        f"{r[k]:.4g}" if isinstance(r.get(k), float) else str(r.get(k, "")) for k in keys) + " |")
  table = "\n".join(lines)
  with open(os.path.join(FLAGS.out, "compare.md"), "w") as f:
    f.write(table + "\n")
  print(table)


if __name__ == "__main__":
  app.run(main)
