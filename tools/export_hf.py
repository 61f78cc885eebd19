"""Export a trained run to a Hugging Face model directory (no torch needed).

  python tools/export_hf.py --workdir=runs/transformer --out=hf/transformer [--step=N]

Writes config.json, model.safetensors (sharded with an index above --max_shard_mb),
generation_config.json, the tokenizer files, README.md (model card with the run's
config, steps and held-out bpb) and, for families without a native transformers class,
the remote code. Exportable families: hnet/export/__init__.py FAMILIES.
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

flags.DEFINE_string("workdir", None, "run directory with checkpoints", required=True)
flags.DEFINE_string("out", None, "output directory (created)", required=True)
flags.DEFINE_integer("step", -1, "checkpoint step (-1 = newest readable)")
flags.DEFINE_integer("max_shard_mb", 2048, "largest safetensors file before sharding (MiB)")
flags.DEFINE_integer("bpb_batches", 0, "held-out batches for the model card's bpb (0 = all)")
FLAGS = flags.FLAGS


def main(argv):
  del argv
  from hnet.export import ExportError, export_run
  try:
    result = export_run(FLAGS.workdir, FLAGS.out, None if FLAGS.step < 0 else FLAGS.step,
                        max_shard_bytes=FLAGS.max_shard_mb * 1024 * 1024,
                        bpb_batches=FLAGS.bpb_batches)
  except ExportError as e:
    sys.exit(f"export_hf: {e}")
  print(json.dumps(result, indent=2))


if __name__ == "__main__":
  app.run(main)
