"""Concat-then-split packing of byte documents into fixed-length rows.

Each document becomes the id sequence BOS, b_0 .. b_{n-1}, EOS (ids from hnet/bytes.py;
every byte value, invalid UTF-8 included, is kept as it is). The documents are laid end to
end into one stream of T ids; row r holds stream ids [r*L, r*L + L] (L + 1 ids, L =
seq_len), so consecutive rows overlap by one id and every id after the first is a target
exactly once. The last row is padded with PAD_ID. Nothing is dropped.

Per row (all [L]; int32 except loss_mask float32):
  inputs       ids[:-1]
  targets      ids[1:]
  segment_ids  1..n for the documents of the row in order, 0 = padding. A document that
               continues from the previous row is segment 1 of the new row.
  positions    the input's index inside its document (BOS = 0). A document continuing
               from the previous row keeps counting (no restart at the row start), so
               relative positions (RoPE) stay right across the row boundary.
  loss_mask    1 where the target is real and belongs to the same document as its input;
               0 on padding and on the transition from one document's EOS to the next
               document's BOS (never predicted across segments).

Memory: the documents are held once, as one uint8 buffer (1 byte per byte) plus an
int64 offset per document; rows are materialised on access (`PackedRows[r]`), so a
grain MapDataset over PackedRows is random access, shuffleable and checkpointable.
"""
from __future__ import annotations

import dataclasses
from typing import Iterable

import numpy as np

from hnet import bytes as hbytes

EXAMPLE_KEYS = ("inputs", "targets", "segment_ids", "positions", "loss_mask")


@dataclasses.dataclass(frozen=True)
class PackingStats:
  num_documents: int        # documents packed (non-empty)
  num_empty_skipped: int    # empty documents dropped
  num_bytes: int            # document bytes packed
  num_rows: int
  num_target_tokens: int    # loss_mask ones over all rows


class PackedRows:
  """Random-access rows of concat-then-split packed documents (see module docstring).

  Usable directly as a grain source: `grain.MapDataset.source(PackedRows(...))`.
  """

  def __init__(self, documents: Iterable[bytes], seq_len: int):
    if seq_len < 1:
      raise ValueError(f"seq_len must be >= 1, got {seq_len}")
    self.seq_len = int(seq_len)
    lengths, chunks, empty = [], [], 0
    for doc in documents:
      doc = bytes(doc)
      if not doc:
        empty += 1
        continue
      lengths.append(len(doc))
      chunks.append(doc)
    self.num_empty_skipped = empty
    self._data = np.frombuffer(b"".join(chunks), dtype=np.uint8)          # [total bytes]
    doc_lengths = np.asarray(lengths, dtype=np.int64)                     # [D]
    self._doc_lengths = doc_lengths
    self._layout = StreamLayout(doc_lengths, self.seq_len)
    self.stream_length = self._layout.stream_length                       # T
    self._num_rows = self._layout.num_rows

  @property
  def num_documents(self) -> int:
    return len(self._doc_lengths)

  def __len__(self) -> int:
    return self._num_rows

  def row_stream(self, row: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """-> ids, segment_ids, positions of the L+1 stream entries of `row` (int32 [L+1])."""
    return self._layout.row(row, self._data, (hbytes.BOS_ID, hbytes.EOS_ID, hbytes.PAD_ID))

  def __getitem__(self, row: int) -> dict[str, np.ndarray]:
    ids, segment_ids, positions = self.row_stream(int(row))
    return example_from_stream(ids, segment_ids, positions)

  def stats(self) -> PackingStats:
    # Every stream id after the first is a target once; masked are the BOS of documents
    # 2..D (cross-document transitions) and the padding.
    targets = max(self.stream_length - 1 - max(self.num_documents - 1, 0), 0)
    return PackingStats(self.num_documents, self.num_empty_skipped, int(len(self._data)),
                        len(self), targets)


class StreamLayout:
  """Where each document lies in the stream BOS d_0 EOS BOS d_1 EOS ... (computed once):
  documents of `doc_lengths` [D] laid end to end in a content array, rows of seq_len + 1
  stream ids overlapping by one, the last row padded."""

  def __init__(self, doc_lengths: np.ndarray, seq_len: int):
    self.seq_len = int(seq_len)
    self.doc_lengths = np.asarray(doc_lengths, np.int64)                       # [D]
    self.content_starts = np.concatenate([[0], np.cumsum(self.doc_lengths)])   # [D+1]
    self.stream_starts = np.concatenate([[0], np.cumsum(self.doc_lengths + 2)])  # [D+1]
    self.stream_length = int(self.stream_starts[-1])                          # T
    self.num_rows = 0 if self.stream_length < 2 else -(-(self.stream_length - 1) // self.seq_len)

  def row(self, row: int, content: np.ndarray, special_ids: tuple[int, int, int]
          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """-> ids, segment_ids, positions (int32 [seq_len + 1]) of `row`, reading document
    ids from `content`; special_ids = (BOS, EOS, PAD)."""
    if not 0 <= row < self.num_rows:
      raise IndexError(f"row {row} out of range [0, {self.num_rows})")
    bos, eos, pad = special_ids
    index = row * self.seq_len + np.arange(self.seq_len + 1, dtype=np.int64)   # [L+1]
    real = index < self.stream_length
    index = np.minimum(index, self.stream_length - 1)
    doc = np.searchsorted(self.stream_starts, index, side="right") - 1        # [L+1]
    pos = index - self.stream_starts[doc]                                      # 0 = BOS
    content_index = np.clip(self.content_starts[doc] + pos - 1, 0, max(len(content) - 1, 0))
    body = content[content_index].astype(np.int32) if len(content) else np.zeros_like(pos)
    ids = np.where(pos == 0, bos, np.where(pos == self.doc_lengths[doc] + 1, eos, body))
    ids = np.where(real, ids, pad).astype(np.int32)
    segment_ids = np.where(real, doc - doc[0] + 1, 0).astype(np.int32)
    positions = np.where(real, pos, 0).astype(np.int32)
    return ids, segment_ids, positions


def example_from_stream(ids: np.ndarray, segment_ids: np.ndarray,
                        positions: np.ndarray) -> dict[str, np.ndarray]:
  """L+1 stream entries (ids, segment ids, positions) -> one training example of length L."""
  same_document = (segment_ids[1:] == segment_ids[:-1]) & (segment_ids[1:] != 0)
  return {
      "inputs": ids[:-1].astype(np.int32),
      "targets": ids[1:].astype(np.int32),
      "segment_ids": segment_ids[:-1].astype(np.int32),
      "positions": positions[:-1].astype(np.int32),
      "loss_mask": same_document.astype(np.float32),
  }


def pad_example(seq_len: int) -> dict[str, np.ndarray]:
  """An all-padding byte example (segment 0, loss_mask 0)."""
  ids = np.full([seq_len + 1], hbytes.PAD_ID, np.int32)
  zeros = np.zeros([seq_len + 1], np.int32)
  return example_from_stream(ids, zeros, zeros)


def pack_documents(documents: Iterable[bytes], seq_len: int) -> PackedRows:
  """Documents (bytes) -> PackedRows of seq_len inputs per row. Empty documents are skipped."""
  return PackedRows(documents, seq_len)


def pack_all(documents: Iterable[bytes], seq_len: int) -> dict[str, np.ndarray]:
  """Every row stacked: {key: [R, L]} (convenient for small corpora and tests)."""
  rows = PackedRows(documents, seq_len)
  examples = [rows[r] for r in range(len(rows))]
  if not examples:
    return {k: np.zeros([0, seq_len], np.float32 if k == "loss_mask" else np.int32)
            for k in EXAMPLE_KEYS}
  return {k: np.stack([e[k] for e in examples]) for k in EXAMPLE_KEYS}
