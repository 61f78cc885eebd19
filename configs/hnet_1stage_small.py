"""Small 1-stage H-Net (a single-GPU experiment): [m4, T8, m4], widths (256, 384).

Paper recipe scaled down: Mamba-2 byte encoder/decoder (d_state 64, headdim 32), an
8-layer Transformer main network on chunks, target N = 6, 1024-byte rows.
"""
from configs import base
from configs.hnet_1stage_tiny import hnet_config


def get_config():
  c = base.get_config()
  hnet_config(c, layout="[m4, T8, m4]", d_model=(256, 384), num_heads=(4, 6), mlp_dim=(0, 1024),
              window=(1023, 0), target_ratio=(6,), capacity_factor=2.0, d_state=64, headdim=32)
  c.data.seq_len = 1024
  c.train.batch_size = 32
  c.train.steps = 5000
  c.train.lr = 1e-3
  c.train.warmup_steps = 200
  return c
