"""Held-out bits per byte of a trained run on a dataset.

  python tools/eval.py --workdir=runs/default                     # its own held-out split
  python tools/eval.py --workdir=runs/default --source=files --path='my/*.txt' --split=train
  python tools/eval.py --workdir=runs/transformer --words_from=configs/hat_tiny.py
      # + next-word exact match of a byte-stream model on the words HAT is scored on
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags  # noqa: E402

flags.DEFINE_string("workdir", "runs/default", "run directory with checkpoints")
flags.DEFINE_string("source", "", "override data.source (embedded | files | tfds)")
flags.DEFINE_string("path", "", "override data.path (files)")
flags.DEFINE_string("tfds_name", "", "override data.tfds_name")
flags.DEFINE_string("split", "", "split to evaluate (default: the run's eval split)")
flags.DEFINE_integer("max_batches", 0, "0 = the whole split")
flags.DEFINE_integer("step", -1, "checkpoint step (-1 = newest readable)")
flags.DEFINE_string("words_from", "", "a words-layout config (e.g. configs/hat_tiny.py): also "
                    "report next-word accuracy of this byte-stream model on its words")
FLAGS = flags.FLAGS


def main(argv):
  del argv
  import jax
  from hnet import checkpoint, loop, sharding, storage
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
  manager = checkpoint.make_manager(storage.resolve(FLAGS.workdir) / "checkpoints", async_save=False)
  step, state = checkpoint.restore(manager, setup.abstract_state, None,
                                   None if FLAGS.step < 0 else FLAGS.step)
  example = next(iter(loop.data_iterator(config, config.data.eval_split, repeat=False)))
  eval_fn = jit_eval_step(setup, loop.to_global(setup, example))
  with jax.set_mesh(mesh):
    result = loop.evaluate(setup, eval_fn, state, FLAGS.max_batches)
  if FLAGS.words_from:
    result.update(_word_metrics(setup, state, config))
  print(json.dumps({"workdir": FLAGS.workdir, "step": step, "split": config.data.eval_split, **result},
                   indent=2))


def _word_metrics(setup, state, config) -> dict[str, float]:
  """Next-word metrics of the evaluated model on the words layout of --words_from."""
  import importlib.util
  from hnet.eval.words import next_word_metrics
  from hnet.train import merge_model
  if config.data.get("layout", "bytes") != "bytes":
    raise SystemExit(f"--words_from is for byte-stream models (data.layout 'bytes'); this run "
                     f"has layout {config.data.layout!r} and reports its own word metrics")
  spec = importlib.util.spec_from_file_location("words_config", FLAGS.words_from)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  words_data = module.get_config().data
  words_data.eval_split = config.data.eval_split
  model = merge_model(setup.graphdef, state["params"])
  metrics = next_word_metrics(model, words_data, split=config.data.eval_split,
                              max_batches=FLAGS.max_batches)
  return {f"words/{k}": v for k, v in metrics.items()}


if __name__ == "__main__":
  from hnet import cli
  cli.run(main)
