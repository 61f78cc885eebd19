"""Packing invariants: round trip, segments, positions, loss mask, raw bytes, empties."""
import numpy as np
import pytest

from hnet import bytes as hbytes
from hnet.data import packing


def _documents_from_rows(rows: dict) -> list[bytes]:
  """Rebuilds the documents from packed rows: the stream is the inputs of every row plus
  the last target of the last row; documents sit between BOS and EOS."""
  stream = np.concatenate([rows["inputs"].reshape(-1), rows["targets"][-1, -1:]])
  stream = stream[stream != hbytes.PAD_ID]
  docs, current = [], None
  for token in stream.tolist():
    if token == hbytes.BOS_ID:
      assert current is None, "BOS inside a document"
      current = []
    elif token == hbytes.EOS_ID:
      docs.append(bytes(current))
      current = None
    else:
      current.append(token)
  assert current is None, "stream ends inside a document"
  return docs


DOCS = [b"hello world", b"\xff\xfe invalid utf-8 \x80\x00 bytes", b"x",
        bytes(range(256)) * 3, b"the end\n"]


@pytest.mark.parametrize("seq_len", [1, 2, 7, 16, 64, 1000])
def test_round_trip_and_shapes(seq_len):
  rows = packing.pack_all(DOCS, seq_len)
  total = sum(len(d) + 2 for d in DOCS)
  assert rows["inputs"].shape == (-(-(total - 1) // seq_len), seq_len)
  for key in packing.EXAMPLE_KEYS:
    assert rows[key].shape == rows["inputs"].shape
    assert rows[key].dtype == (np.float32 if key == "loss_mask" else np.int32)
  assert _documents_from_rows(rows) == DOCS  # invalid UTF-8 and NUL bytes preserved
  # Consecutive rows overlap by one id: a row's last target is the next row's first input.
  np.testing.assert_array_equal(rows["targets"][:-1, -1], rows["inputs"][1:, 0])


def test_segments_positions_and_loss_mask_match_a_direct_construction():
  seq_len = 8
  rows = packing.pack_all(DOCS, seq_len)
  # Direct construction of the full stream, with the document index and in-document
  # position of each id.
  ids, doc_of, pos_of = [], [], []
  for d, doc in enumerate(DOCS):
    tokens = [hbytes.BOS_ID] + list(doc) + [hbytes.EOS_ID]
    ids += tokens
    doc_of += [d] * len(tokens)
    pos_of += list(range(len(tokens)))
  for r in range(rows["inputs"].shape[0]):
    for j in range(seq_len):
      t = r * seq_len + j  # stream index of input j of row r
      if t >= len(ids) - 1:  # target beyond the stream: padding
        assert rows["loss_mask"][r, j] == 0
        if t >= len(ids):
          assert rows["segment_ids"][r, j] == 0 and rows["inputs"][r, j] == hbytes.PAD_ID
        continue
      assert rows["inputs"][r, j] == ids[t] and rows["targets"][r, j] == ids[t + 1]
      assert rows["positions"][r, j] == pos_of[t]  # keeps counting across row starts
      first_doc = doc_of[r * seq_len]
      assert rows["segment_ids"][r, j] == doc_of[t] - first_doc + 1
      assert rows["loss_mask"][r, j] == float(doc_of[t] == doc_of[t + 1])


def test_loss_mask_never_crosses_documents_and_bos_never_a_target():
  rows = packing.pack_all([b"ab", b"cd", b"", b"efg"], 4)
  masked_targets = rows["targets"][rows["loss_mask"] == 1]
  assert hbytes.BOS_ID not in masked_targets
  assert hbytes.PAD_ID not in masked_targets
  assert (masked_targets == hbytes.EOS_ID).sum() == 3  # every document's EOS is predicted
  # Within a row, segment ids start at 1 and increase by at most 1.
  for seg in rows["segment_ids"]:
    real = seg[seg > 0]
    assert real[0] == 1 and np.all(np.diff(real) >= 0) and np.all(np.diff(real) <= 1)


def test_empty_documents_skipped_and_counted():
  packed = packing.pack_documents([b"", b"abc", b"", b"", b"d"], 4)
  assert packed.num_documents == 2 and packed.num_empty_skipped == 3
  stats = packed.stats()
  assert stats.num_bytes == 4 and stats.num_rows == len(packed)
  rows = packing.pack_all([b"", b"abc", b"", b"", b"d"], 4)
  assert _documents_from_rows(rows) == [b"abc", b"d"]
  assert stats.num_target_tokens == int(rows["loss_mask"].sum())
  assert len(packing.pack_documents([b"", b""], 4)) == 0


def test_stats_target_count_on_larger_input():
  rng = np.random.default_rng(0)
  docs = [rng.integers(0, 256, size=int(n), dtype=np.uint8).tobytes()
          for n in rng.integers(0, 50, size=40)]
  rows = packing.pack_all(docs, 16)
  assert packing.pack_documents(docs, 16).stats().num_target_tokens == int(rows["loss_mask"].sum())
  assert _documents_from_rows(rows) == [d for d in docs if d]


def test_pad_example():
  pad = packing.pad_example(5)
  assert pad["loss_mask"].sum() == 0 and pad["segment_ids"].sum() == 0
  assert set(pad) == set(packing.EXAMPLE_KEYS) and pad["inputs"].shape == (5,)
