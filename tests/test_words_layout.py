"""Tests for hnet/data/words.py: the word layout's invariants on arbitrary documents."""
import hypothesis.strategies as st
import ml_collections
import numpy as np
import pytest
from hypothesis import given, settings

from hnet import bytes as hbytes
from hnet.data import words as wl
from hnet.text.splitter import split

ALPHABET = list("aB cX.,\n") + ["中", "é", "  ", "😀", "camelCase", "abcdefghijklmnop"]
doc_strategy = st.one_of(
    st.binary(max_size=30),
    st.lists(st.sampled_from(ALPHABET), max_size=12).map(lambda x: "".join(x).encode()))
documents_strategy = st.lists(doc_strategy, max_size=6)
sizes_strategy = st.tuples(st.integers(8, 40), st.integers(1, 8), st.integers(4, 12)).map(
    lambda t: (t[0], t[1], min(t[2], t[0])))


def _rows(documents, seq_len, words_per_row, bytes_per_word):
  return list(wl.words_rows(documents, seq_len=seq_len, words_per_row=words_per_row,
                            bytes_per_word=bytes_per_word))


def _doc_words(documents, bytes_per_word):
  """Expected word sequence of every non-empty document (ids), BOS/EOS words included."""
  out = []
  for doc in documents:
    if doc:
      words = [[hbytes.BOS_ID]] + [list(w) for w in split(doc, bytes_per_word)] + [[hbytes.EOS_ID]]
      out.append(words)
  return out


@settings(max_examples=120, deadline=None)
@given(documents_strategy, sizes_strategy)
def test_words_layout_invariants(documents, sizes):
  seq_len, w_slots, lw = sizes
  rows = _rows(documents, seq_len, w_slots, lw)
  expected_docs = _doc_words(documents, lw)
  expected_words = [(d, p, w) for d, ws in enumerate(expected_docs) for p, w in enumerate(ws)]

  seen_words, seen_ids, seen_targets = [], [], []   # across rows, in order
  previous_last_doc = None
  for r, row in enumerate(rows):
    # static shapes and dtypes
    assert set(row) == set(wl.WORDS_LAYOUT_KEYS)
    for key, value in row.items():
      per_byte = key in wl._PER_BYTE_KEYS
      shape = {"word_bytes": (w_slots, lw), "next_word_bytes": (w_slots, lw)}.get(
          key, (seq_len,) if per_byte else (w_slots,))
      assert value.shape == shape, key
      assert value.dtype == (np.float32 if key in wl._FLOAT_KEYS else np.int32), key
    real = row["segment_ids"] > 0
    n_ids = int(real.sum())
    assert real[:n_ids].all() and not real[n_ids:].any()  # real ids first, then padding
    assert (row["inputs"][n_ids:] == hbytes.PAD_ID).all()
    n_words = int(row["word_mask"].sum())
    assert (row["word_mask"][:n_words] == 1).all() and (row["word_mask"][n_words:] == 0).all()
    assert 1 <= n_words <= w_slots and n_ids <= seq_len

    # byte stream <-> words
    lengths = row["word_lengths"][:n_words]
    assert lengths.sum() == n_ids and (lengths >= 1).all() and (lengths <= lw).all()
    assert (row["word_starts"][:n_words] == np.concatenate([[0], np.cumsum(lengths)[:-1]])).all()
    assert (row["word_index"][:n_ids] == np.repeat(np.arange(n_words), lengths)).all()
    assert (row["word_index"][n_ids:] == w_slots).all()
    t = np.arange(n_ids)
    assert (row["word_bytes"][row["word_index"][t], row["byte_in_word"][t]]
            == row["inputs"][t]).all()
    assert (row["byte_in_word"][:n_ids] == t - row["word_starts"][row["word_index"][t]]).all()
    for w in range(w_slots):
      word = row["word_bytes"][w]
      assert (word[row["word_lengths"][w]:] == hbytes.PAD_ID).all()
    assert (row["word_segment_ids"][:n_words]
            == row["segment_ids"][row["word_starts"][:n_words]]).all()
    assert (row["word_segment_ids"][n_words:] == 0).all()

    # segments number the row's documents 1..n; a document continuing from the previous
    # row is segment 1 and keeps its word / byte positions
    segs = row["word_segment_ids"][:n_words]
    assert segs[0] == 1 and (np.diff(segs) >= 0).all() and (np.diff(segs) <= 1).all()
    first_word_position = int(row["word_positions"][0])
    if previous_last_doc is not None and first_word_position > 0:
      assert row["positions"][0] > 0
    for w in range(n_words):
      seen_words.append((list(row["word_bytes"][w][:row["word_lengths"][w]]),
                         int(row["word_positions"][w]),
                         list(row["next_word_bytes"][w]), float(row["next_word_mask"][w])))
    seen_ids += [(int(i), int(p)) for i, p in zip(row["inputs"][:n_ids], row["positions"][:n_ids])]
    seen_targets += [(int(tg), float(m)) for tg, m in zip(row["targets"][:n_ids],
                                                          row["loss_mask"][:n_ids])]
    assert (row["loss_mask"][n_ids:] == 0).all()
    previous_last_doc = int(segs[-1])

    # greedy: the next row's first word did not fit in this row
    if r + 1 < len(rows):
      next_len = int(rows[r + 1]["word_lengths"][0])
      assert n_words == w_slots or n_ids + next_len > seq_len

  # every word (and so every byte) exactly once, in order, with positions in its document
  assert [w for w, _, _, _ in seen_words] == [w for _, _, w in expected_words]
  assert [p for _, p, _, _ in seen_words] == [p for _, p, _ in expected_words]
  for index, (d, p, _) in enumerate(expected_words):
    _, _, next_bytes, next_mask = seen_words[index]
    if p + 1 < len(expected_docs[d]):
      following = expected_docs[d][p + 1]
      assert next_mask == 1.0
      assert next_bytes == following + [hbytes.PAD_ID] * (lw - len(following))
    else:
      assert next_mask == 0.0 and next_bytes == [hbytes.PAD_ID] * lw

  stream = [(i, pos) for ws in expected_docs
            for pos, i in enumerate([i for w in ws for i in w])]
  assert seen_ids == stream
  for k, (target, mask) in enumerate(seen_targets):
    if stream[k][0] == hbytes.EOS_ID:
      assert mask == 0.0 and target == hbytes.PAD_ID
    else:
      assert mask == 1.0 and target == stream[k + 1][0]

  stats = wl.layout_stats(documents, seq_len=seq_len, words_per_row=w_slots, bytes_per_word=lw)
  assert stats.num_rows == len(rows)
  if rows:
    assert stats.rows_full_words + stats.rows_full_bytes == len(rows) - 1
  assert stats.num_bytes == sum(len(d) for d in documents)
  assert stats.num_words == sum(len(ws) - 2 for ws in expected_docs)


def test_overflow_is_carried_to_the_next_row():
  doc = b"one two three four five six seven"
  rows = _rows([doc, b"x"], seq_len=16, words_per_row=4, bytes_per_word=8)
  words = [bytes(r["word_bytes"][w][:r["word_lengths"][w]].tolist()) if
           r["word_bytes"][w][0] < 256 else int(r["word_bytes"][w][0])
           for r in rows for w in range(int(r["word_mask"].sum()))]
  assert words == [hbytes.BOS_ID, b"one", b" two", b" three", b" four", b" five", b" six",
                   b" seven", hbytes.EOS_ID, hbytes.BOS_ID, b"x", hbytes.EOS_ID]
  assert [int(r["word_mask"].sum()) for r in rows] == [4, 3, 4, 1]  # W, Lb, W full, end
  assert list(rows[1]["word_positions"][:3]) == [4, 5, 6]
  assert rows[1]["positions"][0] == 1 + len(b"one two three")
  stats = wl.layout_stats([doc, b"x"], seq_len=16, words_per_row=4, bytes_per_word=8)
  assert (stats.rows_full_words, stats.rows_full_bytes, stats.num_rows) == (2, 1, 4)
  assert stats.bytes_per_word == pytest.approx((len(doc) + 1) / 8)


def test_long_words_are_cut_to_bytes_per_word():
  rows = _rows([b"a" * 20], seq_len=12, words_per_row=8, bytes_per_word=6)
  lengths = [int(x) for r in rows for x in r["word_lengths"] if x]
  assert lengths == [1, 6, 6, 6, 2, 1]


def test_pipeline_registers_words_layout():
  pipeline = pytest.importorskip("hnet.data.pipeline")
  config = ml_collections.ConfigDict({"words_per_row": 5, "bytes_per_word": 8})
  dataset = pipeline.LAYOUTS["words"]([b"hello world", b"", b"abc"], config, seq_len=16,
                                      seed=None)
  first = dataset[0]
  assert first["word_bytes"].shape == (5, 8) and first["inputs"].shape == (16,)
  assert len(dataset) == len(_rows([b"hello world", b"abc"], 16, 5, 8))


def _reference_open(documents, lw):
  """open_word_index of testing.word_layout_batch for the documents in one row."""
  from hnet import testing
  ref = testing.word_layout_batch([documents], 4096, 1024, lw)
  n = int((ref["segment_ids"][0] > 0).sum())
  return ref["open_word_index"][0, :n], ref["word_index"][0, :n]


def _single_row(documents, lw):
  rows = _rows(documents, 4096, 1024, lw)
  assert len(rows) == 1
  return rows[0]


TRICKY = [b"xy HTTPSe", b"HTTPServer ok", "ÉCOLENormale".encode(), "ABÑa".encode(),
          b"ab\xe4\xb8", "ab中文x".encode(), b"ab\xe4\xb8x \xff\xc3", "漢字かなカタカナ한국어".encode(),
          b"camelCaseWordsHTTPServerX", "😀 é ß AAß".encode(), b"IBMs USAToday aB",
          "ÀÉÎÕÜ" .encode() * 3 + b"ab"]


@pytest.mark.parametrize("lw", [4, 5, 8, 32])
def test_open_word_index_matches_reference_on_tricky_documents(lw):
  row = _single_row(TRICKY, lw)
  expected, word_index = _reference_open(TRICKY, lw)
  n = len(expected)
  np.testing.assert_array_equal(row["word_index"][:n], word_index)
  np.testing.assert_array_equal(row["open_word_index"][:n], expected)
  assert (row["open_word_index"] <= row["word_index"]).all()
  assert (row["open_word_index"][row["segment_ids"] == 0] == 1024).all()  # padding: W


def test_open_word_index_late_boundaries():
  row = _single_row(["xy HTTPカ".encode(), "ab中".encode()], 8)
  # BOS "xy" " HTTP" "カ" EOS BOS "ab" "中" EOS: the first two bytes of "カ" read as part of
  # " HTTP"'s word, those of "中" as part of "ab" (the splitter's only late boundary, P3)
  assert list(row["word_index"][:19]) == [0, 1, 1, 2, 2, 2, 2, 2, 3, 3, 3, 4, 5, 6, 6, 7, 7, 7,
                                          8]
  assert list(row["open_word_index"][:19]) == [0, 1, 1, 2, 2, 2, 2, 2, 2, 2, 3, 4, 5, 6, 6, 6,
                                               6, 7, 8]


@settings(max_examples=150, deadline=None)
@given(st.lists(st.one_of(st.binary(min_size=1, max_size=20), st.lists(st.sampled_from(
    ALPHABET + ["HTTP", "S", "e", "É", "Ñ", "AB"]), min_size=1,
    max_size=10).map(lambda x: "".join(x).encode())), min_size=1, max_size=4),
       st.integers(4, 10))
def test_open_word_index_matches_reference_random(documents, lw):
  row = _single_row(documents, lw)
  expected, _ = _reference_open(documents, lw)
  np.testing.assert_array_equal(row["open_word_index"][:len(expected)], expected)
  assert (row["open_word_index"] <= row["word_index"]).all()


def test_open_word_index_equals_word_index_on_plain_english():
  text = (b"The quick brown fox jumps over the lazy dog. It was the best of times, it was "
          b"the worst of times; Hello World! camelCase is fine, and so is x86.") * 20
  rows = _rows([text, b"Another document, Plain English.\n\nNew paragraph."], 256, 64, 16)
  for row in rows:
    np.testing.assert_array_equal(row["open_word_index"], row["word_index"])


def test_open_word_index_clamped_in_continued_rows():
  # the row break falls after "abc": the first bytes of "中" open in the previous row -> slot 0
  rows = _rows(["abc中".encode()], seq_len=6, words_per_row=3, bytes_per_word=4)
  assert len(rows) == 2 and list(rows[1]["inputs"][:3]) == list("中".encode())
  second = rows[1]
  assert second["open_word_index"][0] == 0 and second["word_index"][0] == 0
  for row in rows:
    assert (row["open_word_index"] <= row["word_index"]).all()
    assert (row["open_word_index"] >= 0).all()


HELD_OUT = b" the zebra met the okapi and the elephantine quagga."


def _rare_words_config(tmp_path, **overrides):
  """One file split by bytes (hnet/data/sources.py): the training part, then after its
  only newline the held-out part HELD_OUT."""
  from configs import hat_tiny
  train = (b"the elephantine cat and the dog met the owl. " * 20
           + b"a zebra a zebra okapi okapi okapi .")
  (tmp_path / "corpus.txt").write_bytes(train + b"\n" + HELD_OUT)
  c = hat_tiny.get_config().data
  c.source, c.path, c.eval_fraction = "files", str(tmp_path / "corpus.txt"), 0.08
  c.update(overrides)
  return c


def _rare_words_of(row):
  return {row["word_bytes"][w, :row["word_lengths"][w]].astype(np.uint8).tobytes()
          for w in np.flatnonzero(row["rare_word_mask"])}


def test_rare_words_are_counted_in_the_training_split(tmp_path):
  """rare_word_mask marks the held-out words seen at most data.rare_max_count times in the
  TRAINING split (splitter words, leading space and attached punctuation included):
  " zebra" (2), " quagga." (0);
  not " okapi" (3), nor the long but frequent " elephantine", nor " met" (20)."""
  from hnet.data import pipeline

  def held_out_row(config):
    batch = next(iter(pipeline.make_dataset(config, "validation", global_batch_size=1,
                                            repeat=False)))
    return {k: v[0] for k, v in batch.items()}

  c = _rare_words_config(tmp_path)
  row = held_out_row(c)
  assert list(wl.sources.load_documents(c, "validation")) == [HELD_OUT]
  assert _rare_words_of(row) == {b" zebra", b" quagga."}
  assert row["rare_word_mask"].dtype == np.float32 and row["rare_word_mask"].shape == (96,)
  assert wl.train_word_counts(c, 32)[b" zebra"] == 2
  assert _rare_words_of(held_out_row(_rare_words_config(tmp_path, rare_max_count=3))) == {
      b" zebra", b" okapi", b" quagga."}
  assert _rare_words_of(held_out_row(_rare_words_config(tmp_path, rare_max_count=0))) == {
      b" quagga."}
  assert "rare_word_mask" not in held_out_row(_rare_words_config(tmp_path, rare_max_count=-1))
