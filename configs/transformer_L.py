"""Byte-level Transformer at the training compute of the 1-stage H-Net L
(configs/hnet_1stage_L.py), sized for the same pod slice: the baseline the H-Net paper
compares against at matched compute. Same rows (256 x 8192 bytes), same slice (v5p
4x4x4), same optimizer; width 1024 (16 heads of 64, SwiGLU 2816). Depth 11: a one-layer
compile of this config counts 2.41e8 training FLOPs per byte (XLA, remat included;
tools/aot_check.py --config.model.num_layers=1), so 11 layers are about 2.65e9, 2% above
the 2.597e9 per byte of H-Net L's full-depth compile (tools/aot_check.py
--config=configs/hnet_1stage_L.py; README). Full causal attention over 8192 bytes
is most of its cost and of its memory.

  .venv-aot/bin/python tools/aot_check.py --config=configs/transformer_L.py
"""
from configs import base


def get_config():
  c = base.get_config()
  c.model.name = "transformer"
  c.model.dim = 1024
  c.model.num_layers = 11
  c.model.num_heads = 16
  c.model.num_kv_heads = 16
  c.model.mlp_dim = 2816
  c.model.dtype = "bfloat16"
  c.model.remat = "full"
  c.data.seq_len = 8192
  c.train.batch_size = 256
  c.train.steps = 20000
  c.train.lr = 6.25e-4
  c.train.warmup_steps = 2000
  c.mesh.data, c.mesh.fsdp, c.mesh.tensor = -1, 64, 1
  c.pod.topology = "v5p:4x4x4"
  c.pod.train_bytes = 100e9
  c.pod.train_days = 7.0
  return c
