"""Tiny Learn Your Tokens model, sized to train on a 2-core CPU.

  python -m hnet.main --config=configs/lyt_tiny.py --workdir=runs/lyt_tiny

Per word: 4 CLS vectors + a 2-layer bidirectional in-word encoder -> word vector; a
causal word backbone; a causal in-word decoder predicts each word's bytes from the
previous word's backbone output (hnet/models/word_pooled.py). Word layout from
hnet/data/words.py.
"""
from configs import base


def get_config():
  c = base.get_config()
  c.model.name = "lyt"
  c.model.byte_dim = 96           # byte embeddings, in-word encoder and decoder width
  c.model.pooling = "cls"
  c.model.num_cls = 4
  c.model.pooling_layers = 2
  c.model.pooling_heads = 4
  c.model.dim = 128               # word backbone
  c.model.num_layers = 4
  c.model.num_heads = 4
  c.model.num_kv_heads = 4
  c.model.mlp_dim = 384
  c.model.decoder_layers = 2
  c.model.decoder_heads = 4
  c.model.decoder_mlp_dim = 256
  c.data.layout = "words"
  c.data.seq_len = 256
  c.data.words_per_row = 96
  c.data.bytes_per_word = 24
  c.data.rare_max_count = 2      # rare words: seen <= 2 times in the training split (-1: off)
  base.cpu_training(c, steps=600, batch_size=32, lr=3e-3, eval_every=200)
  return c
