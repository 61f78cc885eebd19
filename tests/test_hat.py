"""HAT: word-aware causality, cached generation == forward, sharding, overfit, metrics."""
import jax
import numpy as np
import pytest
from flax import nnx

from configs import hat_7b, hat_tiny
from hnet import testing
from hnet.models import build_model
from hnet.train import abstract_model

WORD_LEN = 8
DOCS = [b"Hello world, HTTPServer ok fine", b"ab cd\n\nefgh, ij klmnop qr"]


def tiny_config(**model):
  c = hat_tiny.get_config()
  m = c.model
  m.encoder_dim, m.encoder_layers, m.encoder_heads, m.encoder_kv_heads = 16, 1, 2, 2
  m.encoder_mlp_dim, m.window = 32, 6
  m.dim, m.num_layers, m.num_heads, m.num_kv_heads, m.mlp_dim = 32, 2, 4, 2, 64
  m.decoder_dim, m.decoder_layers, m.decoder_heads, m.decoder_kv_heads = 16, 2, 2, 2
  m.decoder_mlp_dim, m.pooling_heads, m.max_word_len = 32, 2, WORD_LEN
  m.update(model)
  c.train.steps, c.train.warmup_steps, c.train.lr = 40, 2, 1e-2
  return c


@pytest.mark.parametrize("pooling", ["query", "mean"])
def test_causal(pooling):
  testing.assert_word_causal(tiny_config(pooling=pooling), DOCS, 24, 24, WORD_LEN,
                             positions=(0, 4, 11, 17))


def test_late_boundary_uses_open_word():
  """The boundary before an incomplete character is known only once it completes
  (splitter P3): "ab" + b"\xc3" continues as " abé" or becomes " ab", "×". The logits at
  the lead byte b"\xc3" must not depend on the byte that follows it."""
  cfg = tiny_config()
  model = build_model(cfg.model, nnx.Rngs(0))
  a = testing.word_layout_batch([["xy ab×".encode()]], 10, 6, WORD_LEN)
  b = testing.word_layout_batch([["xy abé".encode()]], 10, 6, WORD_LEN)
  assert a["word_index"][0, 6] != b["word_index"][0, 6]       # b"\xc3" starts "×" only in a
  np.testing.assert_array_equal(a["open_word_index"][0, :7], b["open_word_index"][0, :7])
  np.testing.assert_allclose(testing.forward_logits(model, a)[:, :7],
                             testing.forward_logits(model, b)[:, :7], atol=0, rtol=0)


@pytest.mark.parametrize("window", [4, 0])
def test_cached_generation_matches_forward(window):
  docs = DOCS + ["ab×e 中".encode() + b"\xe6x \xff camelCase"]
  testing.assert_word_cached_generation_matches(tiny_config(window=window), docs, 30, 20, WORD_LEN)


def test_sharded_matches_single_device():
  rows = [[DOCS[i % 2][:12 + i], b"zz top"] for i in range(8)]
  batch = testing.word_layout_batch(rows, 24, 14, WORD_LEN)
  testing.assert_sharded_matches_single(tiny_config(), batch)


def test_documents_do_not_interact():
  cfg = tiny_config()
  both = testing.word_layout_batch([[b"ab cd ef", b"gh ij"]], 16, 10, WORD_LEN)
  alone = testing.word_layout_batch([[b"gh ij"]], 6, 10, WORD_LEN)
  start = int(np.argmax(both["segment_ids"][0] == 2))
  out_both = np.asarray(testing.model_logits(cfg, both))
  out_alone = np.asarray(testing.model_logits(cfg, alone))
  np.testing.assert_allclose(out_both[:, start:start + 6], out_alone[:, :6], atol=2e-5)


def _metric_batch(word_counts=None):
  """One word-layout row (hnet/data/words.py) of "the quick brownie fox jumps"."""
  from hnet.data.words import WordRows
  rows = WordRows([b"the quick brownie fox jumps"], seq_len=30, words_per_row=10,
                  bytes_per_word=WORD_LEN, word_counts=word_counts, rare_max_count=2)
  return {k: v[None] for k, v in rows[0].items()}


def test_metrics_exact_match():
  """With logits that put all mass on the targets, every counted word is right."""
  from hnet.models.hat import word_metrics
  # Training-split counts: " fox" is planted rare (never seen), " quick" is rare (twice);
  # the long " brownie" is frequent, so it is not rare (the old 8+-byte proxy said it was).
  counts = {b"the": 50, b" quick": 2, b" brownie": 40, b" jumps": 3}
  batch = _metric_batch(counts)
  np.testing.assert_array_equal(batch["rare_word_mask"][0], [0, 0, 1, 0, 1, 0, 0, 0, 0, 0])
  perfect = jax.nn.one_hot(batch["targets"], 264) * 10.0
  m = word_metrics(perfect, batch, 10)
  assert float(m["next_word_accuracy"]) == 1.0 and float(m["next_word_accuracy_rare"]) == 1.0
  # counted: "the", " quick", " brownie", " fox", " jumps" (the row is padded after EOS,
  # so no word touches the row's end); BOS has no target byte. Rare: " quick", " fox".
  np.testing.assert_allclose(float(m["rare_word_fraction"]), 2 / 5)
  np.testing.assert_allclose(float(m["bytes_per_word"]), 27 / 7)  # 27 bytes; words: BOS, 5, EOS
  wrong = np.array(perfect)
  wrong[0, 13] = np.roll(wrong[0, 13], 1)  # target 13 = input 14, inside " brownie"
  m = word_metrics(wrong, batch, 10)
  np.testing.assert_allclose(float(m["next_word_accuracy"]), 4 / 5)
  np.testing.assert_allclose(float(m["next_word_accuracy_rare"]), 1.0)
  wrong[0, 19] = np.roll(wrong[0, 19], 1)  # target 19 = input 20, inside " fox"
  m = word_metrics(wrong, batch, 10)
  np.testing.assert_allclose(float(m["next_word_accuracy"]), 3 / 5)
  np.testing.assert_allclose(float(m["next_word_accuracy_rare"]), 1 / 2)
  wrong[0, 6] = np.roll(wrong[0, 6], 1)    # target 6 = input 7, inside " quick"
  np.testing.assert_allclose(float(word_metrics(wrong, batch, 10)["next_word_accuracy_rare"]), 0.0)
  # Without word counts the layout has no rare_word_mask and no rare metric is reported.
  assert "next_word_accuracy_rare" not in word_metrics(perfect, _metric_batch(), 10)


def test_overfit():
  rows = [[DOCS[0]], [DOCS[1]], [b"one two three four five"], [b"six seven eight"]]
  batch = testing.word_layout_batch(rows, 32, 16, WORD_LEN)
  losses = testing.overfit_losses(tiny_config(), batch, steps=40)
  assert losses[-1] < 0.5 * losses[0], losses


def test_runs_on_words_rows():
  """Rows of hnet/data/words.py (whole words per row, documents continuing across rows)."""
  docs = [b"The cat sat on the mat.", b"Zebras zigzag", b"a b c d e f g"]
  batch = testing.words_rows_batch(docs, seq_len=24, words_per_row=10, bytes_per_word=WORD_LEN)
  out = testing.forward(build_model(tiny_config().model, nnx.Rngs(0)), batch)
  assert out.logits.shape == batch["targets"].shape + (264,)
  assert np.isfinite(np.asarray(out.logits)).all()


# Llama-3.1-8B-TFree-HAT, arXiv 2603.15953 (sources in configs/hat_7b.py)
PUBLISHED_7B_PARAMS = 7_192_495_104


def test_7b_shapes():
  cfg = hat_7b.get_config()
  model = abstract_model(cfg.model)
  count = lambda module: sum(int(np.prod(x.shape))
                             for x in jax.tree.leaves(nnx.state(module, nnx.Param)))
  llama_layer = lambda d, kv, mlp: d * (2 * d + 2 * kv) + 3 * d * mlp + 2 * d  # attn, SwiGLU, 2 norms
  # Llama-3.1-8B without embedding and head; the published encoder's 6 layers
  assert count(model.backbone) == 32 * llama_layer(4096, 1024, 14336)
  assert count(model.encoder) == 6 * llama_layer(1024, 1024, 2816)
  # Within 1% of the published total (the differences are listed in configs/hat_7b.py).
  n = count(model)
  assert abs(n / PUBLISHED_7B_PARAMS - 1) < 0.01, n
  batch = testing.word_layout_batch([[b"Hello world, this is HAT."]], 32, 12, 100)
  logits = jax.eval_shape(lambda b: build_model(cfg.model, nnx.Rngs(0))(b).logits, batch)
  assert logits.shape == (1, 32, 264)
