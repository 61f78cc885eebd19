"""Word layout: documents -> packed rows with static shapes for HAT and word-pooled models.

Every document becomes the id stream BOS, b_0 .. b_{n-1}, EOS (ids from hnet/bytes.py),
cut into words: BOS is a word by itself (the document's first word, position 0), then
the words of `hnet.text.splitter.split(doc, max_word_size=Lw)`, then EOS as a word by
itself (the document's last word). Empty documents are skipped (counted in the stats).

Rows are filled greedily with whole words, in document order: a word goes into the
current row if the row still has room for its bytes (<= Lb ids) and a free word slot
(<= W words); otherwise a new row starts with it. Words are never cut by a row and
never dropped (Lw <= Lb, so every word fits an empty row); a document that does not fit
continues in the next row, its byte and word positions continuing where they stopped.

Static sizes: Lb = seq_len (ids per row), W = words_per_row, Lw = bytes_per_word (the
splitter's max_word_size: longer words are cut into pieces by the splitter, so HAT and
LYT see the same words).

Per row (int32 unless noted):
  inputs        [Lb]  the ids of the row's words, in order; PAD after them.
  targets       [Lb]  the next id of the same document (also when that id lies in the
                      next row); PAD for EOS and padding.
  segment_ids   [Lb]  1..n for the documents of the row in order, 0 = padding.
  positions     [Lb]  index in the document's id stream (BOS = 0), continued across rows.
  loss_mask     [Lb]  float32: 1 where the target is a real id of the same document,
                      i.e. every real input except EOS (same meaning as the byte layout).
  word_index    [Lb]  the slot 0..W-1 of the word the input belongs to; W for padding
                      (out of range on purpose: segment_sum(num_segments=W) drops it).
  byte_in_word  [Lb]  position of the input inside its word (0 = first byte); 0 on pads.
  word_segment_ids [W]  segment id (as above) of each word slot, 0 for empty slots.
  word_positions   [W]  index of the word in its document (BOS word = 0), continued
                        across rows.
  word_mask        [W]  float32: 1 for real words.
  word_lengths     [W]  ids in the word (1..Lw), 0 for empty slots.
  word_starts      [W]  offset of the word's first id in the row (Lb for empty slots).
  word_bytes       [W, Lw]  the ids of each word (BOS and EOS words are [BOS] / [EOS]),
                            PAD-padded.
  next_word_bytes  [W, Lw]  the ids of the next word of the same document (even when it
                            lies in the next row), PAD-padded; all PAD when none.
  next_word_mask   [W]  float32: 1 where there is a next word (every real word but EOS).

So word_bytes[word_index[t], byte_in_word[t]] == inputs[t] for every real t, and for a
real word w, next_word_bytes[w] == word_bytes[w + 1] whenever w + 1 is a slot of the
same document in the row. LYT's next-word targets are next_word_bytes under
next_word_mask; HAT predicts targets from the byte stream.

Memory: ids are held once as uint16 (2 bytes per byte) plus int64/int32 arrays per word
(about 20 bytes per word); rows are materialised on access (`WordRows[r]`), so a grain
MapDataset over WordRows is random access and shuffleable.
"""
from __future__ import annotations

import dataclasses
from typing import Iterable, Iterator, Sequence

import numpy as np

from hnet import bytes as hbytes
from hnet.text import splitter

WORDS_LAYOUT_KEYS = ("inputs", "targets", "segment_ids", "positions", "loss_mask",
                     "word_index", "byte_in_word", "word_segment_ids", "word_positions",
                     "word_mask", "word_lengths", "word_starts", "word_bytes",
                     "next_word_bytes", "next_word_mask")
_FLOAT_KEYS = ("loss_mask", "word_mask", "next_word_mask")


@dataclasses.dataclass(frozen=True)
class WordLayoutStats:
  num_documents: int          # non-empty documents laid out
  num_empty_skipped: int
  num_bytes: int              # document bytes (BOS/EOS not counted)
  num_words: int              # splitter words (BOS/EOS words not counted)
  bytes_per_word: float       # num_bytes / num_words
  num_rows: int
  rows_full_words: int        # rows closed because all W word slots were used
  rows_full_bytes: int        # rows closed because the next word did not fit in Lb
  byte_fill: float            # mean fraction of the Lb inputs that are real
  word_fill: float            # mean fraction of the W word slots that are real

  @property
  def fraction_limited_by_words(self) -> float:
    return self.rows_full_words / max(self.num_rows, 1)

  @property
  def fraction_limited_by_bytes(self) -> float:
    return self.rows_full_bytes / max(self.num_rows, 1)


class WordRows:
  """Random-access rows of the word layout (see the module docstring).

  Usable directly as a grain source: `grain.MapDataset.source(WordRows(...))`.
  """

  def __init__(self, documents: Iterable[bytes], *, seq_len: int, words_per_row: int,
               bytes_per_word: int):
    if not 4 <= bytes_per_word <= seq_len:
      raise ValueError(f"need 4 <= bytes_per_word ({bytes_per_word}) <= seq_len ({seq_len})")
    if words_per_row < 1:
      raise ValueError(f"words_per_row must be >= 1, got {words_per_row}")
    self.seq_len, self.words_per_row, self.bytes_per_word = seq_len, words_per_row, bytes_per_word
    chunks, lengths, doc_of_word, empty, num_bytes = [], [], [], 0, 0
    for doc in documents:
      doc = bytes(doc)
      if not doc:
        empty += 1
        continue
      word_lengths = [1] + [len(w) for w in splitter.split(doc, bytes_per_word)] + [1]
      doc_index = len(chunks)
      chunks.append(doc)
      lengths.extend(word_lengths)
      doc_of_word.extend([doc_index] * len(word_lengths))
      num_bytes += len(doc)
    self.num_empty_skipped = empty
    self._num_bytes = num_bytes
    # The id stream of every document, end to end: BOS bytes EOS BOS bytes EOS ...
    stream = [np.full([1], hbytes.BOS_ID, np.uint16)]
    for doc in chunks:
      stream += [np.frombuffer(doc, np.uint8).astype(np.uint16),
                 np.array([hbytes.EOS_ID, hbytes.BOS_ID], np.uint16)]
    self._ids = np.concatenate(stream)[:-1] if chunks else np.zeros([0], np.uint16)  # [T]
    self._word_len = np.asarray(lengths, np.int32)                             # [N]
    self._word_start = np.concatenate([[0], np.cumsum(self._word_len, dtype=np.int64)])
    self._word_doc = np.asarray(doc_of_word, np.int32)                         # [N]
    first_word = np.concatenate([[0], np.flatnonzero(np.diff(self._word_doc)) + 1])
    self._doc_first_word = first_word.astype(np.int64)                         # [D]
    self._row_start, self._row_reason = self._assign_rows()

  def _assign_rows(self) -> tuple[np.ndarray, np.ndarray]:
    """Greedy fill -> first word of each row [R+1], why each row closed [R]
    (0 = end of data, 1 = word slots full, 2 = next word does not fit in Lb)."""
    starts, reasons = [], []
    used_bytes = used_words = 0
    for index, length in enumerate(self._word_len.tolist()):
      if used_words == self.words_per_row or used_bytes + length > self.seq_len or not starts:
        if starts:
          reasons.append(1 if used_words == self.words_per_row else 2)
        starts.append(index)
        used_bytes = used_words = 0
      used_bytes += length
      used_words += 1
    if starts:
      reasons.append(0)
    return (np.asarray(starts + [len(self._word_len)], np.int64), np.asarray(reasons, np.int8))

  @property
  def num_documents(self) -> int:
    return len(self._doc_first_word) if len(self._word_len) else 0

  def __len__(self) -> int:
    return len(self._row_start) - 1

  def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
    for row in range(len(self)):
      yield self[row]

  def __getitem__(self, row: int) -> dict[str, np.ndarray]:
    row = int(row)
    if not 0 <= row < len(self):
      raise IndexError(f"row {row} out of range [0, {len(self)})")
    lb, w_slots, lw = self.seq_len, self.words_per_row, self.bytes_per_word
    words = np.arange(self._row_start[row], self._row_start[row + 1])          # [w]
    n = len(words)
    start, length, doc = self._word_start[words], self._word_len[words], self._word_doc[words]
    first_id = start[0]
    row_len = int(start[-1] + length[-1] - first_id)
    stream_index = first_id + np.arange(row_len)                               # [l]
    word_of_id = np.repeat(np.arange(n), length)                               # [l]
    ids = self._ids[stream_index].astype(np.int32)
    is_eos = ids == hbytes.EOS_ID
    next_ids = self._ids[np.minimum(stream_index + 1, len(self._ids) - 1)].astype(np.int32)
    segment = doc - doc[0] + 1                                                 # [w]
    doc_stream_start = self._word_start[self._doc_first_word[doc]]             # [w]

    out = {k: np.zeros([lb], np.int32) for k in WORDS_LAYOUT_KEYS[:7]}
    out["inputs"][:] = hbytes.PAD_ID
    out["targets"][:] = hbytes.PAD_ID
    out["inputs"][:row_len] = ids
    out["targets"][:row_len] = np.where(is_eos, hbytes.PAD_ID, next_ids)
    out["segment_ids"][:row_len] = segment[word_of_id]
    out["positions"][:row_len] = stream_index - doc_stream_start[word_of_id]
    out["loss_mask"] = np.zeros([lb], np.float32)
    out["loss_mask"][:row_len] = ~is_eos
    out["word_index"][:] = w_slots
    out["word_index"][:row_len] = word_of_id
    out["byte_in_word"][:row_len] = stream_index - start[word_of_id]

    def per_word(values, fill, dtype=np.int32):
      array = np.full([w_slots], fill, dtype)
      array[:n] = values
      return array

    has_next = ~(self._ids[start + length - 1] == hbytes.EOS_ID)               # [w]
    out["word_segment_ids"] = per_word(segment, 0)
    out["word_positions"] = per_word(words - self._doc_first_word[doc], 0)
    out["word_mask"] = per_word(1.0, 0.0, np.float32)
    out["word_lengths"] = per_word(length, 0)
    out["word_starts"] = per_word(start - first_id, lb)
    out["word_bytes"] = self._word_matrix(words, w_slots, lw)
    out["next_word_bytes"] = self._word_matrix(words[has_next] + 1, w_slots, lw,
                                               slots=np.flatnonzero(has_next))
    out["next_word_mask"] = per_word(has_next, 0.0, np.float32)
    return out

  def _word_matrix(self, words: np.ndarray, w_slots: int, lw: int,
                   slots: np.ndarray | None = None) -> np.ndarray:
    """Ids of `words` in rows `slots` (default 0..) of a PAD-filled [W, Lw] matrix."""
    matrix = np.full([w_slots, lw], hbytes.PAD_ID, np.int32)
    if len(words):
      offset = np.arange(lw)                                                   # [Lw]
      valid = offset[None, :] < self._word_len[words][:, None]                 # [w, Lw]
      index = np.minimum(self._word_start[words][:, None] + offset[None, :], len(self._ids) - 1)
      values = np.where(valid, self._ids[index].astype(np.int32), hbytes.PAD_ID)
      matrix[np.arange(len(words)) if slots is None else slots] = values
    return matrix

  def stats(self) -> WordLayoutStats:
    num_rows = len(self)
    num_words = len(self._word_len) - 2 * self.num_documents
    words_per_row = np.diff(self._row_start)
    row_bytes = np.diff(self._word_start[self._row_start])
    return WordLayoutStats(
        num_documents=self.num_documents, num_empty_skipped=self.num_empty_skipped,
        num_bytes=self._num_bytes, num_words=num_words,
        bytes_per_word=self._num_bytes / max(num_words, 1), num_rows=num_rows,
        rows_full_words=int(np.sum(self._row_reason == 1)),
        rows_full_bytes=int(np.sum(self._row_reason == 2)),
        byte_fill=float(np.mean(row_bytes) / self.seq_len) if num_rows else 0.0,
        word_fill=float(np.mean(words_per_row) / self.words_per_row) if num_rows else 0.0)


def words_rows(documents: Iterable[bytes], *, seq_len: int, words_per_row: int,
               bytes_per_word: int) -> Iterator[dict[str, np.ndarray]]:
  """Documents -> the rows of the word layout, in order (dicts of WORDS_LAYOUT_KEYS)."""
  return iter(WordRows(documents, seq_len=seq_len, words_per_row=words_per_row,
                       bytes_per_word=bytes_per_word))


def layout_stats(documents: Iterable[bytes], *, seq_len: int, words_per_row: int,
                 bytes_per_word: int) -> WordLayoutStats:
  """Bytes per word and how rows fill (limited by W vs by Lb) for these documents."""
  return WordRows(documents, seq_len=seq_len, words_per_row=words_per_row,
                  bytes_per_word=bytes_per_word).stats()


def layout_sizes(data_config, seq_len: int) -> tuple[int, int]:
  """(words_per_row, bytes_per_word) from data_config: `words_per_row` (default
  seq_len // 4) and `bytes_per_word` (default min(32, seq_len))."""
  words_per_row = int(data_config.get("words_per_row", 0) or max(seq_len // 4, 1))
  bytes_per_word = int(data_config.get("bytes_per_word", 0) or min(32, seq_len))
  return words_per_row, bytes_per_word


def words_layout(documents: Sequence[bytes], data_config, *, seq_len: int, seed: int | None):
  """The "words" layout of hnet/data/pipeline.py: documents (order permuted with seed,
  source order when seed is None) -> grain.MapDataset over WordRows."""
  import grain  # the pipeline's dependency

  if seed is not None:
    order = np.random.default_rng(seed).permutation(len(documents))
    documents = [documents[int(i)] for i in order]
  words_per_row, bytes_per_word = layout_sizes(data_config, seq_len)
  rows = WordRows(documents, seq_len=seq_len, words_per_row=words_per_row,
                  bytes_per_word=bytes_per_word)
  if len(rows) == 0:
    raise ValueError("No rows to train on: every document is empty.")
  return grain.MapDataset.source(rows)
