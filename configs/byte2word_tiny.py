"""Tiny Byte2Word model: Learn Your Tokens with the word vector pooled by one learned
query per word cross-attending to the word's byte embeddings (hnet/models/word_pooled.py).

  python -m hnet.main --config=configs/byte2word_tiny.py --workdir=runs/byte2word_tiny
"""
from configs import lyt_tiny


def get_config():
  c = lyt_tiny.get_config()
  c.model.name = "byte2word"
  c.model.pooling = "query"
  c.model.pooling_heads = 4
  return c
