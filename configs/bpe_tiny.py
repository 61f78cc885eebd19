"""Tiny BPE-token Transformer: the second baseline (MODELS.md section 1), sized like
configs/transformer_tiny.py so the two differ only in what a position holds.

  python -m hnet.main --config=configs/bpe_tiny.py --workdir=runs/bpe_tiny

Tokenizer: byte-level BPE (hnet/data/bpe.py, the `tokenizers` library) trained on the
run's *train* split with data.bpe_vocab_size ids. The train loop saves it as
<workdir>/bpe_tokenizer.json (data.bpe_tokenizer, filled in by hnet/loop.py when left
empty) and reloads it on resume and in every eval tool, so the run is read back with the
very tokenizer it was trained with.

Vocabulary: the model's head must cover every token id. The tokenizer holds at most
bpe_vocab_size ids and pads to a multiple of 8 (BPETokenizer.padded_vocab_size), so
model.vocab_size = bpe_vocab_size rounded up to a multiple of 8 is known before the
tokenizer exists; the loop checks it against the trained tokenizer. Override both with
--config.data.bpe_vocab_size=N alone: vocab_size follows through a FieldReference.

Same train loop, sharding, optimizer and eval as the byte model; bits per byte come
from the rows' `target_bytes` (bytes each target token stands for), so bpb is
comparable with the byte models. seq_len counts tokens: 72 tokens at ~3.6 bytes per
token (2048 ids, this corpus) cover about as much text as the byte model's 256 bytes.
"""
import ml_collections

from configs import base, transformer_tiny


def get_config():
  c = transformer_tiny.get_config()  # the same model; only what a position holds differs
  c.data.layout = "bpe"
  c.data.bpe_tokenizer = ""      # "" = <workdir>/bpe_tokenizer.json (set by the loop)
  bpe_vocab = ml_collections.FieldReference(2048, field_type=int)
  c.data.bpe_vocab_size = bpe_vocab
  # The model's head: bpe_vocab_size rounded up to a multiple of 8 (lazy, so an override
  # of data.bpe_vocab_size changes it too).
  c.model.vocab_size = ((bpe_vocab + 7) // 8) * 8
  c.data.seq_len = 72            # tokens per row (~256 bytes at ~3.6 bytes per token)

  base.cpu_training(c, steps=600, batch_size=32, lr=3e-3, eval_every=200)
  return c
