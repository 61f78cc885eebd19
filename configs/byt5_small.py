"""ByT5-small shape (Xue et al. 2022; HF google/byt5-small config): d_model 1472,
12 encoder / 4 decoder layers, 6 heads of d_kv 64, gated-GELU d_ff 3584, 32 relative
position buckets (max distance 128), untied head. About 300M parameters with our
264-id byte vocabulary (HF pads the vocabulary to 384). Set gate_layer (e.g. 3) and
name "mrt5" for the MrT5 variant of the paper.
"""
import ml_collections

from configs import mrt5_tiny


def get_config() -> ml_collections.ConfigDict:
  c = mrt5_tiny.get_config()
  m = c.model
  m.name = "byt5"
  m.dim = 1472
  m.num_encoder_layers = 12
  m.num_decoder_layers = 4
  m.num_layers = 16
  m.num_heads = 6
  m.num_kv_heads = 6
  m.head_dim = 64
  m.mlp_dim = 3584
  m.gate_layer = 3                 # used only when name = "mrt5" (the paper's choice)
  c.data.seq_len = 1024            # ByT5 pretraining: 1024 input bytes, 189 targets
  c.data.decoder_seq_len = 192
  c.train.batch_size = 64
  c.train.lr = 1e-3
  return c
