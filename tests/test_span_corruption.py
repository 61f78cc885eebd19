"""Span corruption / prefix LM rows: lossless, statistics, static shapes, determinism."""
import numpy as np
import pytest

from configs import mrt5_tiny
from hnet import bytes as hbytes
from hnet.data import span_corruption as sc


def documents(seed=0, count=30):
  rng = np.random.default_rng(seed)
  docs = [rng.integers(0, 256, int(n)).astype(np.uint8).tobytes()
          for n in rng.integers(1, 900, count)]
  return docs + [b"", b"x", "caf\u00e9 \U0001f600".encode()]


@pytest.mark.parametrize("n", [1, 2, 3, 7, 40, 300, 1180])
def test_corrupt_spans_roundtrip_and_lengths(n):
  ids = np.random.default_rng(n).integers(0, 256, n)
  encoder, target = sc.corrupt_spans(ids, np.random.default_rng(0))
  assert (len(encoder), len(target)) == sc.corrupted_lengths(n)
  np.testing.assert_array_equal(sc.uncorrupt(encoder, target), ids)
  assert encoder[-1] == target[-1] == hbytes.EOS_ID
  sentinels = encoder[encoder >= sc.SENTINEL_BASE]
  num_noise, num_spans = sc.noise_counts(n)
  np.testing.assert_array_equal(sentinels, sc.SENTINEL_BASE + np.arange(num_spans) % 5)
  np.testing.assert_array_equal(target[target >= sc.SENTINEL_BASE], sentinels)
  assert np.all(encoder[encoder >= sc.SENTINEL_BASE] <= 263)
  assert np.sum(target < 256) == num_noise


def test_noise_statistics():
  """15% noise density, mean span length about 20 bytes (ByT5)."""
  rng = np.random.default_rng(0)
  masks = [sc.noise_mask(1180, rng) for _ in range(200)]
  mask = np.concatenate(masks)
  assert abs(mask.mean() - 0.15) < 0.005
  span_starts = sum(int(np.sum(m & ~np.concatenate([[False], m[:-1]]))) for m in masks)
  assert 18 <= mask.sum() / span_starts <= 22
  starts_at_zero = np.mean([m[0] for m in masks])
  assert 0 < starts_at_zero < 0.5  # spans may open the chunk (unlike T5)


def check_rows(rows, docs):
  Le, Ld = rows.encoder_length, rows.decoder_length
  recovered = []
  for r in range(len(rows)):
    row = rows[r]
    for k in sc.ENCODER_KEYS:
      assert row[k].shape == (Le,) and row[k].dtype == np.int32
    for k in sc.DECODER_KEYS:
      assert row[k].shape == (Ld,)
    assert row["loss_mask"].dtype == np.float32
    enc_seg, dec_seg = row["encoder_segment_ids"], row["segment_ids"]
    assert set(np.unique(enc_seg[enc_seg > 0])) == set(np.unique(dec_seg[dec_seg > 0]))
    np.testing.assert_array_equal(row["loss_mask"], dec_seg > 0)
    assert np.all(row["encoder_inputs"][enc_seg == 0] == hbytes.PAD_ID)
    for s in np.unique(enc_seg[enc_seg > 0]):
      e, d = enc_seg == s, dec_seg == s
      np.testing.assert_array_equal(row["encoder_positions"][e], np.arange(e.sum()))
      np.testing.assert_array_equal(row["positions"][d], np.arange(d.sum()))
      targets = row["targets"][d]
      np.testing.assert_array_equal(row["decoder_inputs"][d],
                                    np.concatenate([[hbytes.BOS_ID], targets[:-1]]))
      if rows.objective == "span_corruption":
        recovered.append(sc.uncorrupt(row["encoder_inputs"][e], targets))
      else:
        encoder = row["encoder_inputs"][e]
        recovered.append(np.concatenate([encoder, targets[targets < 256]]))
  stream = np.concatenate(recovered).astype(np.uint8).tobytes()
  assert stream == b"".join(docs)  # every byte once, in order: nothing dropped


@pytest.mark.parametrize("objective", sc.OBJECTIVES)
def test_rows_static_shapes_lossless(objective):
  docs = documents()
  rows = sc.SpanCorruptionRows(docs, 96, 32, seed=5, objective=objective)
  check_rows(rows, docs)
  stats = rows.stats()
  assert stats.num_empty_skipped == 1 and stats.num_rows == len(rows)
  assert stats.encoder_fill > 0.6


def test_prefix_lm_eos_only_at_document_end():
  rows = sc.SpanCorruptionRows([b"a" * 10, b"b" * 300], 64, 16, objective="prefix_lm")
  eos_chunks = [c for c in range(len(rows._chunk_length))
                if rows.example(c)[1][-1] == hbytes.EOS_ID]
  ends = list(np.flatnonzero(rows._chunk_ends_doc))
  assert eos_chunks == ends and len(ends) == 2


def test_deterministic_and_seeded():
  docs = documents(1)
  a = sc.SpanCorruptionRows(docs, 96, 32, seed=7)
  b = sc.SpanCorruptionRows(docs, 96, 32, seed=7)
  c = sc.SpanCorruptionRows(docs, 96, 32, seed=8)
  order = np.random.default_rng(0).permutation(len(a))
  for r in order:  # random access order does not matter
    for k in sc.EXAMPLE_KEYS:
      np.testing.assert_array_equal(a[r][k], b[r][k])
  assert any(not np.array_equal(a[r]["encoder_inputs"], c[r]["encoder_inputs"])
             for r in range(len(a)))


def test_chunks_fit_and_from_config():
  cfg = mrt5_tiny.get_config().data
  rows = sc.span_corruption_rows([b"z" * 5000], cfg)
  assert (rows.encoder_length, rows.decoder_length) == (256, 64)
  enc, dec = sc.corrupted_lengths(rows.chunk_bytes)
  assert enc <= 256 and dec <= 64 and sc.corrupted_lengths(rows.chunk_bytes + 1)[0] > 256
  stacked = sc.stack_rows(rows)
  assert stacked["encoder_inputs"].shape == (len(rows), 256)
  assert stacked["targets"].shape == (len(rows), 64)
  with pytest.raises(ValueError):
    sc.SpanCorruptionRows([b"abc"], 96, 32, objective="nope")


def test_pipeline_layout_batches():
  from hnet.data import pipeline
  cfg = mrt5_tiny.get_config().data
  cfg.seq_len, cfg.decoder_seq_len = 64, 16
  assert "span_corruption" in pipeline.LAYOUTS
  ds = pipeline.make_dataset(cfg, "train", global_batch_size=4)
  batch = ds[0]
  assert batch["encoder_inputs"].shape == (4, 64) and batch["targets"].shape == (4, 16)
  assert set(batch) == set(sc.EXAMPLE_KEYS)
  eval_a = pipeline.make_dataset(cfg, "validation", global_batch_size=4, repeat=False)[0]
  eval_b = pipeline.make_dataset(cfg, "validation", global_batch_size=4, repeat=False)[0]
  for k in sc.EXAMPLE_KEYS:
    np.testing.assert_array_equal(eval_a[k], eval_b[k])
