"""Turn a Hugging Face model directory (exported by tools/export_hf.py, or compatible)
back into a run directory with an orbax checkpoint.

  python tools/import_hf.py --hf=hf/transformer --config=configs/transformer_tiny.py \
      --workdir=runs/imported [--config.model.num_layers=...]

--config is a config file (configs/*.py) or a run's config.json; the HF config.json
must describe the same model (the first differing field is named otherwise). The new
run directory works with tools/eval.py, tools/sample.py and --config.train.init_from.
Only safetensors weights are read (never pickled .bin files).
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

flags.DEFINE_string("hf", None, "Hugging Face model directory", required=True)
flags.DEFINE_string("workdir", None, "new run directory to write", required=True)
flags.DEFINE_integer("step", -1, "checkpoint step to write (-1 = the exported run's, else 0)")
FLAGS = flags.FLAGS


def main(argv):
  del argv
  from hnet.export import ExportError, import_run, load_config_arg
  try:
    config = load_config_arg(CONFIG_PATH) if CONFIG_PATH.endswith(".json") else FLAGS.config
    result = import_run(FLAGS.hf, config, FLAGS.workdir,
                        step=None if FLAGS.step < 0 else FLAGS.step)
  except ExportError as e:
    sys.exit(f"import_hf: {e}")
  print(json.dumps(result, indent=2))


def _config_path() -> str:
  for arg in sys.argv[1:]:
    if arg.startswith("--config="):
      return arg.split("=", 1)[1]
  return ""


CONFIG_PATH = _config_path()
if CONFIG_PATH.endswith(".json"):  # a run's config.json: read as it is (no overrides)
  flags.DEFINE_string("config", None, "a run's config.json")
else:
  config_flags.DEFINE_config_file("config", None, "config file (configs/*.py) the model was "
                                  "trained with", lock_config=False)
flags.mark_flag_as_required("config")

if __name__ == "__main__":
  app.run(main)
