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
  open_word_index [Lb]  the slot of the word that is *open* after reading inputs[:t+1]
                      of the input's document, i.e. the last word of
                      splitter.split(doc[:t+1]) (splitter.WordStream's open word): what a
                      causal model may use at t. Equals word_index except where the
                      splitter places a boundary late (splitter property P3): the first
                      bytes of a multi-byte character belong to the word before it until
                      the character completes (e.g. "ab中": b"\xe4", b"\xb8" -> slot of
                      "ab").
                      Never exceeds word_index. If the open word started in a previous row
                      (a document continuing across rows) it is clamped to slot 0. W for
                      padding (as word_index). BOS / EOS: their own slot.
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
  rare_word_mask   [W]  float32, only when WordRows gets word_counts (the pipeline's
                        "words" layout passes the training split's counts for every
                        split, unless data.rare_max_count < 0): 1 for a splitter word (not
                        BOS / EOS / an empty slot) occurring at most rare_max_count times
                        (data.rare_max_count, default DEFAULT_RARE_MAX_COUNT) in the
                        TRAINING split, counted with the same splitter and max_word_size
                        (`train_word_counts`). Words are compared as exact bytes, leading
                        space included (" the" and "the" are different words): the unit
                        the models predict. HAT's next_word_accuracy_rare reads it.

So word_bytes[word_index[t], byte_in_word[t]] == inputs[t] for every real t, and for a
real word w, next_word_bytes[w] == word_bytes[w + 1] whenever w + 1 is a slot of the
same document in the row. LYT's next-word targets are next_word_bytes under
next_word_mask; HAT predicts targets from the byte stream.

Memory: ids are held once as uint16 (2 bytes per byte) plus int64/int32 arrays per word
(about 20 bytes per word); rows are materialised on access (`WordRows[r]`), so a grain
MapDataset over WordRows is random access and shuffleable.
"""
from __future__ import annotations

import collections
import dataclasses
import json
from typing import Iterable, Iterator, Mapping, Sequence

import numpy as np

from hnet import bytes as hbytes
from hnet.data import sources
from hnet.text import splitter

WORDS_LAYOUT_KEYS = ("inputs", "targets", "segment_ids", "positions", "loss_mask",
                     "word_index", "byte_in_word", "open_word_index", "word_segment_ids",
                     "word_positions", "word_mask", "word_lengths", "word_starts",
                     "word_bytes", "next_word_bytes", "next_word_mask")
_FLOAT_KEYS = ("loss_mask", "word_mask", "next_word_mask")
_PER_BYTE_KEYS = WORDS_LAYOUT_KEYS[:8]
# A word seen at most this many times in the training split is "rare": unseen words and
# hapax / dis legomena, which a model cannot have learned as frequent units. On the
# embedded corpus (2.9M training words) that is 2.7% of the held-out words (1.4% are
# unseen), enough occurrences for a stable accuracy.
DEFAULT_RARE_MAX_COUNT = 2


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
               bytes_per_word: int, word_counts: Mapping[bytes, int] | None = None,
               rare_max_count: int = DEFAULT_RARE_MAX_COUNT):
    """word_counts (e.g. train_word_counts): when given, rows also get rare_word_mask:
    words occurring at most rare_max_count times in it."""
    if not 4 <= bytes_per_word <= seq_len:
      raise ValueError(f"need 4 <= bytes_per_word ({bytes_per_word}) <= seq_len ({seq_len})")
    if words_per_row < 1:
      raise ValueError(f"words_per_row must be >= 1, got {words_per_row}")
    self.seq_len, self.words_per_row, self.bytes_per_word = seq_len, words_per_row, bytes_per_word
    chunks, lengths, doc_of_word, empty, num_bytes = [], [], [], 0, 0
    not_raw_start, invalid_docs = [], []   # cap pieces after a raw word's first; bad UTF-8
    rare = []                              # per word (BOS / EOS: False), with word_counts
    for doc in documents:
      doc = bytes(doc)
      if not doc:
        empty += 1
        continue
      # == splitter.split(doc, bytes_per_word), keeping which pieces start a raw word
      doc_words = splitter._raw_words(doc)
      if max(map(len, doc_words)) > bytes_per_word:
        raw, doc_words = doc_words, []
        for w in raw:
          pieces = splitter._cap(w, bytes_per_word)
          first_piece = len(lengths) + 1 + len(doc_words)
          not_raw_start.extend(range(first_piece + 1, first_piece + len(pieces)))
          doc_words += pieces
      word_lengths = [1] + [len(w) for w in doc_words] + [1]
      if word_counts is not None:
        rare += [False] + [word_counts.get(w, 0) <= rare_max_count for w in doc_words] + [False]
      if not doc.isascii():
        try:
          doc.decode("utf-8")
        except UnicodeDecodeError:
          invalid_docs.append(len(chunks))
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
    self._word_rare = None if word_counts is None else np.asarray(rare, np.float32)  # [N]
    first_word = np.concatenate([[0], np.flatnonzero(np.diff(self._word_doc)) + 1])
    self._doc_first_word = first_word.astype(np.int64)                         # [D]
    self._row_start, self._row_reason = self._assign_rows()
    self._late_pos, self._late_delta = self._late_boundaries(
        chunks, set(not_raw_start), np.asarray(invalid_docs, np.int64))

  def _late_boundaries(self, docs: list[bytes], not_raw_start: set[int],
                       invalid_docs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """-> (stream positions t, sorted, where open_word_index < word_index; the gap).

    open(t) = the last word of split(doc[:k]), k = t's byte offset in its document + 1.
    By splitter P1/P3 it is t's own word unless a final boundary lies inside the
    incomplete tail of doc[:k], i.e. while a multi-byte character is incomplete. Valid
    UTF-8 documents: in closed form (below). Documents with invalid UTF-8: a local split
    after every boundary that starts with a non-ASCII byte. Work ~ non-ASCII bytes,
    numpy-vectorised."""
    ids, word_start, lw = self._ids, self._word_start, self.bytes_per_word
    T = len(ids)
    if T == 0:
      return np.zeros([0], np.int64), np.zeros([0], np.int64)
    word_doc = self._word_doc
    doc_bos = word_start[self._doc_first_word]                                 # [D]
    invalid = np.zeros([len(docs)], bool)
    invalid[invalid_docs] = True
    ids_ext = np.concatenate([ids, [hbytes.PAD_ID]]).astype(np.int32)          # [T+1]

    def word_of(pos):
      return np.searchsorted(word_start, pos, side="right") - 1

    def local_open(d: int, k: int) -> int:
      """Global index of the last word of split(doc[:k]). The raw word containing byte
      k-5 starts at or before the raw open word of doc[:k] (P3: the open word less its
      last character, <= 4 bytes, is a prefix of a final word) and every raw word before
      that is final (P1), so only the text from its start needs splitting."""
      bos = int(doc_bos[d])
      j = int(word_of(bos + 1 + max(0, k - 5)))
      while j in not_raw_start:
        j -= 1
      a = int(word_start[j]) - bos - 1
      return j + len(splitter.split(docs[d][a:k], lw)) - 1

    late: dict[int, int] = {}   # stream position -> its open word (global word index)
    # (a) non-last bytes t of a multi-byte character (the next byte is a continuation):
    # doc[:t+1] ends with an incomplete tail, so (valid UTF-8) split(doc[:t+1]) is
    # split(doc[:c]), c = the character's start, with the tail appended to its last word:
    # the open word after byte c-1, unless that word would exceed Lw (then split locally).
    tail_pos, tail_open = np.zeros([0], np.int64), np.zeros([0], np.int64)
    nxt = ids_ext[1:]
    tail = np.flatnonzero((nxt >= 0x80) & (nxt < 0xC0) & (ids_ext[:-1] < 256))
    if len(tail):
      back = np.where(ids_ext[tail] >= 0xC0, 0, np.where(ids_ext[tail - 1] >= 0xC0, 1, 2))
      c = tail - back
      tail_word = word_of(tail)
      keep = (ids_ext[c - 1] < 256) & ~invalid[word_doc[tail_word]]   # c = doc start: same
      tail, c, tail_word = tail[keep], c[keep], tail_word[keep]
      prev_open = word_of(c - 1)
      for i in np.flatnonzero(tail + 1 - word_start[prev_open] > lw).tolist():
        d = int(word_doc[tail_word[i]])
        prev_open[i] = local_open(d, int(tail[i] - doc_bos[d]))
      moved = prev_open < tail_word
      tail_pos, tail_open = tail[moved], prev_open[moved]
    # documents with invalid UTF-8
    for d in invalid_docs.tolist():
      bos, doc = int(doc_bos[d]), docs[d]
      end_word = self._doc_first_word[d + 1] if d + 1 < len(docs) else len(self._word_len)
      for w in range(int(self._doc_first_word[d]) + 2, int(end_word) - 1):
        s = int(word_start[w]) - bos - 1
        if doc[s] >= 0x80:
          for k in range(s + 1, min(s + 4, len(doc)) + 1):
            value = local_open(d, k)
            if value < int(word_of(bos + k)):
              late[bos + k] = value
    pos = np.concatenate([tail_pos, np.fromiter(late, np.int64, len(late))])  # disjoint
    open_word = np.concatenate([tail_open, np.fromiter(late.values(), np.int64, len(late))])
    order = np.argsort(pos, kind="stable")
    pos, open_word = pos[order], open_word[order]
    return pos, word_of(pos) - open_word

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

    out = {k: np.zeros([lb], np.int32) for k in _PER_BYTE_KEYS}
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
    open_word = word_of_id.astype(np.int64)
    lo, hi = np.searchsorted(self._late_pos, [first_id, first_id + row_len])
    open_word[self._late_pos[lo:hi] - first_id] -= self._late_delta[lo:hi]
    out["open_word_index"][:] = w_slots
    out["open_word_index"][:row_len] = np.maximum(open_word, 0)  # opened in an earlier row

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
    if self._word_rare is not None:
      out["rare_word_mask"] = per_word(self._word_rare[words], 0.0, np.float32)
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
  source order when seed is None) -> grain.MapDataset over WordRows, with rare_word_mask
  from the training split's word counts (any split; data.rare_max_count < 0: none).
  The counts cost one splitter pass over the training split per process (cached)."""
  import grain  # the pipeline's dependency

  if seed is not None:
    order = np.random.default_rng(seed).permutation(len(documents))
    documents = [documents[int(i)] for i in order]
  words_per_row, bytes_per_word = layout_sizes(data_config, seq_len)
  rare_max_count = int(data_config.get("rare_max_count", DEFAULT_RARE_MAX_COUNT))
  counts = train_word_counts(data_config, bytes_per_word) if rare_max_count >= 0 else None
  rows = WordRows(documents, seq_len=seq_len, words_per_row=words_per_row,
                  bytes_per_word=bytes_per_word, word_counts=counts,
                  rare_max_count=rare_max_count)
  if len(rows) == 0:
    raise ValueError("No rows to train on: every document is empty.")
  return grain.MapDataset.source(rows)


# ------------------------------------------------------------------------ rare words

def count_words(documents: Iterable[bytes], max_word_size: int) -> collections.Counter:
  """How often each word of splitter.split(doc, max_word_size) occurs in `documents`."""
  counts = collections.Counter()
  for doc in documents:
    counts.update(splitter.split(bytes(doc), max_word_size))
  return counts


_TRAIN_WORD_COUNTS: dict[tuple[str, int], collections.Counter] = {}


def train_word_counts(data_config, max_word_size: int) -> collections.Counter:
  """count_words over the training split of data_config (sources.load_documents).

  Computed once per process for a given data config and max_word_size (every
  evaluation rebuilds its dataset and reuses them)."""
  key = (json.dumps(data_config.to_dict(), sort_keys=True, default=str), max_word_size)
  if key not in _TRAIN_WORD_COUNTS:
    documents = sources.load_documents(data_config, data_config.get("train_split", "train"))
    _TRAIN_WORD_COUNTS[key] = count_words(documents, max_word_size)
  return _TRAIN_WORD_COUNTS[key]
