"""Command-line entry point for training.

  python -m hnet.main --config=configs/transformer_tiny.py --workdir=runs/tiny \
      --config.train.steps=200 --config.model.num_layers=2

Every config field can be overridden; an unknown key is an error that names it.
--print_config prints every field (after the overrides) and exits. A user error (bad
config, data or checkpoint) prints one line; --verbose or HNET_VERBOSE=1 adds the traceback.
Multi-host: the same command on every host. Under SLURM (`srun`, launch/slurm.sbatch) and on
Cloud TPU VMs (launch/tpu.py) jax.distributed finds the other processes itself; elsewhere
give --coordinator=host:port --num_processes=N --process_id=i (hnet/distributed.py).
"""
from __future__ import annotations

import logging
import re
import sys

from absl import flags
from ml_collections import config_flags

from hnet import cli

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", "configs/transformer_tiny.py", "experiment config file",
                                lock_config=True)
flags.DEFINE_string("workdir", "runs/default", "run directory: checkpoints, TensorBoard, metrics")
flags.DEFINE_string("coordinator", "", "multi-process: coordinator address host:port "
                    "(overrides SLURM / Cloud TPU detection)")
flags.DEFINE_integer("num_processes", None, "multi-process: number of processes (overrides detection)")
flags.DEFINE_integer("process_id", None, "multi-process: this process's index (overrides detection)")
flags.DEFINE_bool("print_config", False, "print every config field (after the overrides) and exit")


def main(argv):
  del argv
  if FLAGS.print_config:
    print(FLAGS.config)
    return
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
  logging.getLogger("absl").setLevel(logging.WARNING)
  import jax
  from hnet import distributed
  try:
    cluster = distributed.initialize(FLAGS.coordinator, FLAGS.num_processes, FLAGS.process_id)
  except ValueError as e:
    sys.exit(f"launch error: {e}")
  logging.getLogger("hnet").info("%s", distributed.describe(cluster))
  from hnet import lock, loop
  try:
    summary = loop.run(FLAGS.config, FLAGS.workdir)
  except lock.WorkdirLockedError as e:
    sys.exit(f"error: {e}")
  if jax.process_index() == 0 and "eval" in summary:
    ev = summary["eval"]
    extra = " ".join(f"{k.split('/')[-1]}={v:.3f}" for k, v in ev.items() if k.startswith("model/"))
    print(f"done: step {summary['step']} in {summary['train_seconds']:.0f}s, "
          f"held-out bpb {ev['bpb']:.4f} {extra}; workdir {FLAGS.workdir}")


def run():
  try:
    cli.run(main)
  except (KeyError, AttributeError) as e:  # ml_collections: override of a key that does not exist
    match = re.search(r"([A-Za-z_][A-Za-z0-9_]*)", str(e))
    key = match.group(1) if match else ""
    flag = next((a for a in sys.argv[1:] if a.startswith("--config.") and key and key in a), None)
    if flag is None or cli.verbose():
      raise
    hint = re.search(r'Did you mean "([^"]+)"', str(e))
    config = next((a for a in sys.argv[1:] if a.startswith("--config=")), "--config=<file>")
    sys.exit(f"config error: unknown key {key!r} in {flag.split('=')[0]}."
             + (f" Did you mean {hint.group(1)!r}?" if hint else "")
             + f" python -m hnet.main {config} --print_config lists every field.")


if __name__ == "__main__":
  run()
