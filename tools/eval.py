"""Held-out bits per byte of a trained run on a dataset.

  python tools/eval.py --workdir=runs/default                     # its own held-out split
  python tools/eval.py --workdir=runs/default --source=files --path='my/*.txt' --split=train
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

flags.DEFINE_string("workdir", "runs/default", "run directory with checkpoints")
flags.DEFINE_string("source", "", "override data.source (embedded | files | tfds)")
flags.DEFINE_string("path", "", "override data.path (files)")
flags.DEFINE_string("tfds_name", "", "override data.tfds_name")
flags.DEFINE_string("split", "", "split to evaluate (default: the run's eval split)")
flags.DEFINE_integer("max_batches", 0, "0 = the whole split")
flags.DEFINE_integer("step", -1, "checkpoint step (-1 = newest readable)")
FLAGS = flags.FLAGS


def main(argv):
  del argv
  import jax
  from hnet import checkpoint, loop, sharding
  from hnet.runs import load_config
  from hnet.train import jit_eval_step, make_setup
  config = load_config(FLAGS.workdir)
  for key in ("source", "path", "tfds_name"):
    if getattr(FLAGS, key):
      config.data[key] = getattr(FLAGS, key)
  if FLAGS.split:
    config.data.eval_split = FLAGS.split
  config.mesh.data, config.mesh.fsdp, config.mesh.tensor = -1, 1, 1
  mesh = sharding.make_mesh(-1, 1, 1)
  setup = make_setup(config, mesh)
  manager = checkpoint.make_manager(os.path.join(FLAGS.workdir, "checkpoints"), async_save=False)
  step, state = checkpoint.restore(manager, setup.abstract_state, None,
                                   None if FLAGS.step < 0 else FLAGS.step)
  example = next(iter(loop.data_iterator(config, config.data.eval_split, repeat=False)))
  eval_fn = jit_eval_step(setup, loop.to_global(setup, example))
  with jax.set_mesh(mesh):
    result = loop.evaluate(setup, eval_fn, state, FLAGS.max_batches)
  print(json.dumps({"workdir": FLAGS.workdir, "step": step, "split": config.data.eval_split, **result},
                   indent=2))


if __name__ == "__main__":
  app.run(main)
