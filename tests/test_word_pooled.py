"""Learn Your Tokens / Byte2Word: causality, stream alignment, sharding, overfit, words.py rows."""
import numpy as np
import pytest
from flax import nnx

from configs import byte2word_tiny, lyt_tiny
from hnet import testing
from hnet.models import build_model

WORD_LEN = 8
DOCS = [b"Hello world, its fine ok", b"ab cd\n\nefgh, ij klmnop qr"]


def tiny_config(name="lyt", **model):
  c = (lyt_tiny if name == "lyt" else byte2word_tiny).get_config()
  m = c.model
  m.byte_dim, m.pooling_layers, m.pooling_heads = 16, 1, 2
  m.dim, m.num_layers, m.num_heads, m.num_kv_heads, m.mlp_dim = 32, 2, 4, 2, 64
  m.decoder_layers, m.decoder_heads, m.decoder_mlp_dim = 2, 2, 32
  m.max_word_len = WORD_LEN
  m.update(model)
  c.train.steps, c.train.warmup_steps, c.train.lr = 40, 2, 1e-2
  return c


@pytest.mark.parametrize("name,pooling", [("lyt", "cls"), ("byte2word", "query"), ("lyt", "mean")])
def test_causal(name, pooling):
  testing.assert_word_causal(tiny_config(name, pooling=pooling), DOCS, 24, 24, WORD_LEN,
                             positions=(0, 4, 11, 17))


def test_word_start_not_leaked():
  """The first byte of a word is predicted before the word is known to have started:
  the logits at the last byte of 'ab' are the same whether the next byte continues the
  word ('abc') or starts a new one ('ab ')."""
  cfg = tiny_config()
  model = build_model(cfg.model, nnx.Rngs(0))
  a = testing.word_layout_batch([[b"xy abcd"]], 8, 8, WORD_LEN)
  b = testing.word_layout_batch([[b"xy ab d"]], 8, 8, WORD_LEN)
  assert a["word_mask"].sum() != b["word_mask"].sum()
  np.testing.assert_allclose(testing.forward_logits(model, a)[:, :6],
                             testing.forward_logits(model, b)[:, :6], atol=0, rtol=0)


def test_every_byte_predicted_once_from_words_rows():
  """Rows of hnet/data/words.py: logits are [B, Lb, V] aligned with targets, and the
  loss mask covers every document byte and EOS exactly once."""
  docs = [b"The cat sat on the mat.", b"Zebras zigzag", b"a b c d e f g"]
  batch = testing.words_rows_batch(docs, seq_len=24, words_per_row=10, bytes_per_word=WORD_LEN)
  out = testing.forward(build_model(tiny_config().model, nnx.Rngs(0)), batch)
  assert out.logits.shape == batch["targets"].shape + (264,)
  assert np.isfinite(np.asarray(out.logits)).all()
  assert batch["loss_mask"].sum() == sum(len(d) + 1 for d in docs)
  assert 0.0 <= float(out.metrics["next_word_accuracy"]) <= 1.0


def test_late_boundary_uses_open_word():
  """The boundary before an incomplete character is known only once it completes
  (splitter P3): "ab" + b"\xc3" continues as " abé" or becomes " ab", "×". The logits at
  the lead byte b"\xc3" must not depend on the byte that follows it (the 'S' is decoded inside the open word)."""
  model = build_model(tiny_config().model, nnx.Rngs(0))
  a = testing.word_layout_batch([["xy ab×".encode()]], 10, 6, WORD_LEN)
  b = testing.word_layout_batch([["xy abé".encode()]], 10, 6, WORD_LEN)
  assert a["word_index"][0, 6] != b["word_index"][0, 6]       # b"\xc3" starts "×" only in a
  np.testing.assert_allclose(testing.forward_logits(model, a)[:, :7],
                             testing.forward_logits(model, b)[:, :7], atol=0, rtol=0)


@pytest.mark.parametrize("name,word_len", [("lyt", WORD_LEN), ("byte2word", WORD_LEN),
                                           ("lyt", 12)])
def test_cached_generation_matches_forward(name, word_len):
  """Rows finish words at different steps; late boundaries (an incomplete multi-byte
  character: "ab×", "中"; invalid bytes) re-read the new word's bytes with the new vector.
  With 12-byte word slots the step decodes open words of up to word_pooled.SHORT_WORD
  bytes over the first positions only and longer ones ("camelCase", "klmnopqrstu") over
  all of them."""
  docs = DOCS + ["ab×e 中".encode() + b"\xe6x \xff camelCase", "xy ab× ab".encode(),
                 b"klmnopqrstu v"]
  testing.assert_word_cached_generation_matches(tiny_config(name, max_word_len=word_len),
                                                docs, 30, 20, word_len)


def test_generate_rows_match_alone():
  """Batched greedy generation with prompts of different lengths == each prompt alone."""
  from hnet.models.word_pooled import generate
  model = build_model(tiny_config().model, nnx.Rngs(0))
  prompts = [b"Hello wor", b"ab"]
  both = generate(model, prompts, max_new_bytes=10, temperature=0)
  alone = [generate(model, [p], max_new_bytes=10, temperature=0)[0] for p in prompts]
  assert both == alone, (both, alone)
  assert all(len(x) > 0 for x in both)


def test_sharded_matches_single_device():
  rows = [[DOCS[i % 2][:12 + i], b"zz top"] for i in range(8)]
  batch = testing.word_layout_batch(rows, 24, 14, WORD_LEN)
  testing.assert_sharded_matches_single(tiny_config(), batch)


@pytest.mark.parametrize("name", ["lyt", "byte2word"])
def test_overfit(name):
  rows = [[DOCS[0]], [DOCS[1]], [b"one two three four five"], [b"six seven eight"]]
  batch = testing.word_layout_batch(rows, 32, 16, WORD_LEN)
  losses = testing.overfit_losses(tiny_config(name), batch, steps=40)
  assert losses[-1] < 0.5 * losses[0], losses
