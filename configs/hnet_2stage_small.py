"""Small 2-stage H-Net: [m3, [T1m3, T8, m3T1], m3], widths (256, 320, 384).

Two routing stages, each with target N = 3 (about 9 bytes per top-level chunk), the
outer stages' attention windowed (1023 positions of their own stream), the innermost
Transformer full-causal. 1024-byte rows.
"""
from configs import base
from configs.hnet_1stage_tiny import hnet_config


def get_config():
  c = base.get_config()
  hnet_config(c, layout="[m3, [T1m3, T8, m3T1], m3]", d_model=(256, 320, 384),
              num_heads=(4, 4, 6), mlp_dim=(0, 864, 1024), window=(1023, 1023, 0),
              target_ratio=(3, 3), capacity_factor=2.0, d_state=64, headdim=32)
  c.data.seq_len = 1024
  c.train.batch_size = 32
  c.train.steps = 5000
  c.train.lr = 1e-3
  c.train.warmup_steps = 200
  return c
