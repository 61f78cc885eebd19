"""HAT at the published 8B shapes (Llama-3.1-8B-TFree-HAT): the Llama-3.1-8B backbone
(transformer blocks only: its embedding and head are removed) between a small byte
encoder and byte decoder.

Backbone (Llama-3.1-8B, published config.json): hidden 4096, 32 layers, 32 heads, 8 KV
heads (head dim 128), SwiGLU 14336, RoPE theta 500000, no final norm in HAT.
Encoder / decoder: the HF config of the TFree-HAT models could not be retrieved from
this sandbox; the values below follow the HAT paper's description (small Llama-style
byte transformers, sliding window 768, max_word_size 100 -- the latter two confirmed by
the published HATArchitectureConfig defaults) with hidden 1024 / 8 heads, 6 encoder
and 4 decoder layers: re-check them against Aleph-Alpha's config.json before loading
weights. tests/test_hat.py checks the shapes abstractly (jax.eval_shape, nothing is
allocated).
"""
from configs import base


def get_config():
  c = base.get_config()
  c.model.name = "hat"
  c.model.encoder_dim = 1024
  c.model.encoder_layers = 6
  c.model.encoder_heads = 8
  c.model.encoder_kv_heads = 8
  c.model.encoder_mlp_dim = 2816
  c.model.window = 768
  c.model.dim = 4096
  c.model.num_layers = 32
  c.model.num_heads = 32
  c.model.num_kv_heads = 8
  c.model.mlp_dim = 14336
  c.model.decoder_dim = 1024
  c.model.decoder_layers = 4
  c.model.decoder_heads = 8
  c.model.decoder_kv_heads = 8
  c.model.decoder_mlp_dim = 2816
  c.model.pooling = "query"
  c.model.pooling_heads = 8
  c.model.max_word_len = 100
  c.model.max_words_per_step = 4
  c.model.dtype = "bfloat16"
  c.data.layout = "words"
  c.data.seq_len = 16384          # bytes per row
  c.data.words_per_row = 3500     # word slots per row (the published short-context length)
  c.data.bytes_per_word = 100
  c.mesh.fsdp = 8
  c.mesh.data = -1
  c.train.batch_size = 256
  c.train.lr = 3e-4
  return c
