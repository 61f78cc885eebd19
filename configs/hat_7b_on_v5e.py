"""HAT 7B (configs/hat_7b.py) on a slice far too small for it, on purpose: 16 TPU v5e
chips of 16 GiB. Its float32 parameters and Adam moments alone take 86 GB, 5.4 GB per
chip even when sharded over all 16, and 16 rows of 16384 bytes per chip need many times
the rest. tools/aot_check.py must refuse it at compile time, naming the memory needed
and the chip's HBM (tests/test_aot.py):

  .venv-aot/bin/python tools/aot_check.py --config=configs/hat_7b_on_v5e.py   # exit 2
"""
from configs import hat_7b


def get_config():
  c = hat_7b.get_config()
  c.mesh.data, c.mesh.fsdp, c.mesh.tensor = -1, 16, 1
  c.pod.topology = "v5e:4x4"
  return c
