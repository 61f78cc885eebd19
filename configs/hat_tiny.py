"""Tiny HAT (hierarchical autoregressive transformer), sized to train on a 2-core CPU.

  python -m hnet.main --config=configs/hat_tiny.py --workdir=runs/hat_tiny

Byte encoder (sliding window) -> learned-query word pooling -> word backbone -> byte
decoder conditioned on the word vector that predicts the current word (hnet/models/hat.py).
The data layer builds the word layout (c.data.layout = "words": hnet/data/words.py).
"""
from configs import base


def get_config():
  c = base.get_config()
  c.model.name = "hat"
  # byte encoder
  c.model.encoder_dim = 96
  c.model.encoder_layers = 2
  c.model.encoder_heads = 4
  c.model.encoder_kv_heads = 4
  c.model.encoder_mlp_dim = 256
  c.model.window = 64            # sliding window of encoder and decoder (bytes)
  # word backbone
  c.model.dim = 128
  c.model.num_layers = 4
  c.model.num_heads = 4
  c.model.num_kv_heads = 4
  c.model.mlp_dim = 384
  # byte decoder
  c.model.decoder_dim = 96
  c.model.decoder_layers = 2
  c.model.decoder_heads = 4
  c.model.decoder_kv_heads = 4
  c.model.decoder_mlp_dim = 256
  c.model.pooling = "query"      # query | cls | mean (hnet/layers/pooling.py)
  c.model.pooling_heads = 4
  c.model.max_word_len = 32      # bytes per word slot (= the splitter's max_word_size)
  c.model.max_words_per_step = 4
  # data: word layout, static capacities
  c.data.layout = "words"
  c.data.seq_len = 256
  c.data.words_per_row = 96      # word slots per row (W)
  c.data.bytes_per_word = 32     # bytes per word slot (Lw) = the splitter max_word_size
  c.data.rare_max_count = 2      # rare words: seen <= 2 times in the training split (-1: off)
  base.cpu_training(c, steps=600, batch_size=32, lr=3e-3, eval_every=200)
  return c
