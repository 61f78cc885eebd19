"""ByT5 span corruption (and a plain prefix -> continuation LM) over packed byte rows.

Objective "span_corruption" (T5 / ByT5, written from the papers' description): a raw
chunk of n document bytes gets num_noise = round(n * noise_density) noise bytes
(clipped to [1, n-1]) in num_spans = round(num_noise / mean_span_length) spans (at
least 1). The noise bytes are split into num_spans random non-empty runs, interleaved
with the non-noise bytes (see noise_mask: unlike T5 a span may open or close the chunk).
Then
  encoder input = the non-noise bytes, each noise span replaced by one sentinel, + EOS
  decoder target = for each span j: sentinel j, the span's bytes; then EOS
The lengths depend only on n (not on the random draw), so the packing plan is fixed
before any row is materialised.

Sentinels: the byte vocabulary (hnet/bytes.py) has exactly five spare ids, 259..263.
Span j uses id 259 + (j mod 5): cyclic sentinels. Ids never collide with bytes
(0..255) or PAD/BOS/EOS, and the vocabulary stays 264 so every family shares one head
size. A sentinel id is therefore not unique within a long example (more than five
spans, about 500+ bytes per chunk at the defaults); the pairing is by order (the j-th
sentinel in the input <-> the j-th in the target), which `uncorrupt` uses and which the
model can learn from the order and position. ByT5 instead used the top byte ids of a
384-id vocabulary as unique sentinels.

Objective "prefix_lm" (plain continued LM): a chunk of up to Le + Ld - 1 bytes is split
at a random point; the encoder gets the prefix (no EOS), the decoder predicts the
continuation (+ EOS if the chunk ends its document).

Rows (all static shapes; int32 except loss_mask float32):
  encoder_inputs, encoder_segment_ids, encoder_positions                  [Le]
  decoder_inputs (BOS + targets[:-1] per example), targets, segment_ids,
  positions, loss_mask                                                    [Ld]
Documents are cut into chunks of at most `max_chunk_bytes` (the largest n whose
corrupted example fits both Le and Ld); each chunk is one example with its own segment
id in both streams (the same id in the encoder and decoder streams), and examples are
packed greedily in order into rows; padding is segment 0 / PAD_ID with loss_mask 0.
Nothing is dropped. Deterministic: chunk c's noise pattern comes from
np.random.default_rng([seed, c]) whatever the order rows are read in.
"""
from __future__ import annotations

import dataclasses
from typing import Iterable

import numpy as np

from hnet import bytes as hbytes

SENTINEL_BASE = 259
NUM_SENTINELS = 5  # ids 259..263
OBJECTIVES = ("span_corruption", "prefix_lm")
ENCODER_KEYS = ("encoder_inputs", "encoder_segment_ids", "encoder_positions")
DECODER_KEYS = ("decoder_inputs", "targets", "segment_ids", "positions", "loss_mask")
EXAMPLE_KEYS = ENCODER_KEYS + DECODER_KEYS


def sentinel_id(span_index):
  return SENTINEL_BASE + np.asarray(span_index) % NUM_SENTINELS


def noise_counts(n: int, noise_density: float = 0.15,
                 mean_span_length: float = 20.0) -> tuple[int, int]:
  """(noise bytes, noise spans) of a chunk of n bytes; (0, 0) when n < 2."""
  if n < 2:
    return 0, 0
  num_noise = min(max(int(round(n * noise_density)), 1), n - 1)
  num_spans = max(1, int(round(num_noise / mean_span_length)))
  return num_noise, min(num_spans, num_noise, n - num_noise)


def corrupted_lengths(n: int, noise_density: float = 0.15,
                      mean_span_length: float = 20.0) -> tuple[int, int]:
  """(encoder length, decoder length) of the corrupted example of a chunk of n bytes."""
  num_noise, num_spans = noise_counts(n, noise_density, mean_span_length)
  return n - num_noise + num_spans + 1, num_noise + num_spans + 1


def _random_partition(total: int, parts: int, rng: np.random.Generator) -> np.ndarray:
  """`total` items into `parts` non-empty runs -> run lengths [parts]."""
  cuts = np.sort(rng.choice(np.arange(1, total), parts - 1, replace=False))
  return np.diff(np.concatenate([[0], cuts, [total]]))


def noise_mask(n: int, rng: np.random.Generator, noise_density: float = 0.15,
               mean_span_length: float = 20.0) -> np.ndarray:
  """bool [n]: True on noise bytes.

  Runs keep_0, noise_0, keep_1, ..., noise_{S-1}, keep_S with every noise run and the
  inner keep runs non-empty; keep_0 and keep_S may be empty, so a span can sit at the
  very start or end of the chunk (T5 always begins with non-noise and ends with noise,
  which with one span per chunk would make every span a suffix).
  """
  num_noise, num_spans = noise_counts(n, noise_density, mean_span_length)
  if num_spans == 0:
    return np.zeros([n], bool)
  noise_lengths = _random_partition(num_noise, num_spans, rng)               # [S], >= 1
  keep_lengths = _random_partition(n - num_noise + 2, num_spans + 1, rng)   # [S+1], >= 1
  keep_lengths[[0, -1]] -= 1                                                 # ends >= 0
  run_lengths = np.concatenate([np.stack([keep_lengths[:-1], noise_lengths], 1).reshape(-1),
                                keep_lengths[-1:]])                          # [2S+1]
  run_is_noise = np.concatenate([np.tile([False, True], num_spans), [False]])
  return np.repeat(run_is_noise, run_lengths)


def corrupt_spans(ids: np.ndarray, rng: np.random.Generator, noise_density: float = 0.15,
                  mean_span_length: float = 20.0) -> tuple[np.ndarray, np.ndarray]:
  """Byte ids [n] -> (encoder ids [n - noise + spans + 1], target ids [noise + spans + 1])."""
  ids = np.asarray(ids, np.int32)
  mask = noise_mask(len(ids), rng, noise_density, mean_span_length)
  noise_start = mask & ~np.concatenate([[False], mask[:-1]])
  sentinels = sentinel_id(np.arange(int(noise_start.sum())))  # span j -> 259 + j % 5
  encoder = ids.copy()
  encoder[noise_start] = sentinels
  encoder = encoder[~mask | noise_start]
  target = np.insert(ids[mask], np.flatnonzero(noise_start[mask]), sentinels)
  eos = np.array([hbytes.EOS_ID], np.int32)
  return (np.concatenate([encoder, eos]).astype(np.int32),
          np.concatenate([target, eos]).astype(np.int32))


def uncorrupt(encoder_ids, target_ids) -> np.ndarray:
  """Inverse of corrupt_spans (pairs sentinels by order) -> the original byte ids."""
  encoder_ids, target_ids = np.asarray(encoder_ids), np.asarray(target_ids)
  is_sentinel = (target_ids >= SENTINEL_BASE) & (target_ids < SENTINEL_BASE + NUM_SENTINELS)
  starts = np.flatnonzero(is_sentinel)
  ends = np.concatenate([starts[1:], [len(target_ids)]])
  spans = [target_ids[s + 1:e][target_ids[s + 1:e] < hbytes.NUM_BYTES] for s, e in zip(starts, ends)]
  out, j = [], 0
  for token in encoder_ids:
    if SENTINEL_BASE <= token < SENTINEL_BASE + NUM_SENTINELS:
      out.extend(spans[j].tolist())
      j += 1
    elif token < hbytes.NUM_BYTES:
      out.append(int(token))
  return np.asarray(out, np.int32)


def max_chunk_bytes(encoder_length: int, decoder_length: int, objective: str = "span_corruption",
                    noise_density: float = 0.15, mean_span_length: float = 20.0) -> int:
  """Largest n such that every chunk of <= n bytes fits one row in both streams."""
  if objective == "prefix_lm":
    return encoder_length + decoder_length - 1
  n = 0
  while True:
    enc, dec = corrupted_lengths(n + 1, noise_density, mean_span_length)
    if enc > encoder_length or dec > decoder_length:
      break
    n += 1
  if n == 0:
    raise ValueError(f"rows of {encoder_length} encoder / {decoder_length} decoder positions "
                     "cannot hold a single corrupted byte; make them longer")
  return n


@dataclasses.dataclass(frozen=True)
class SpanCorruptionStats:
  num_documents: int
  num_empty_skipped: int
  num_bytes: int
  num_examples: int        # chunks
  num_rows: int
  encoder_fill: float      # real encoder positions / (rows * Le)
  decoder_fill: float      # real decoder positions / (rows * Ld)


class SpanCorruptionRows:
  """Random-access packed rows of encoder-decoder examples (see module docstring).

  Usable as a grain source: `grain.MapDataset.source(SpanCorruptionRows(...))`.
  """

  def __init__(self, documents: Iterable[bytes], encoder_length: int, decoder_length: int, *,
               seed: int = 0, objective: str = "span_corruption", noise_density: float = 0.15,
               mean_span_length: float = 20.0):
    if objective not in OBJECTIVES:
      raise ValueError(f"objective {objective!r} not in {OBJECTIVES}")
    self.encoder_length, self.decoder_length = int(encoder_length), int(decoder_length)
    self.seed, self.objective = int(seed), objective
    self.noise_density, self.mean_span_length = float(noise_density), float(mean_span_length)
    self.chunk_bytes = max_chunk_bytes(self.encoder_length, self.decoder_length, objective,
                                       noise_density, mean_span_length)
    docs = [bytes(d) for d in documents]
    self.num_empty_skipped = sum(1 for d in docs if not d)
    docs = [d for d in docs if d]
    self.num_documents = len(docs)
    self._data = np.frombuffer(b"".join(docs), dtype=np.uint8)  # [total bytes]
    starts, lengths, ends_doc = [], [], []
    offset = 0
    for d in docs:
      for s in range(0, len(d), self.chunk_bytes):
        starts.append(offset + s)
        lengths.append(min(self.chunk_bytes, len(d) - s))
        ends_doc.append(s + self.chunk_bytes >= len(d))
      offset += len(d)
    self._chunk_start = np.asarray(starts, np.int64)    # [C] into _data
    self._chunk_length = np.asarray(lengths, np.int64)  # [C]
    self._chunk_ends_doc = np.asarray(ends_doc, bool)   # [C]
    self._split = self._prefix_splits() if objective == "prefix_lm" else None
    enc_len, dec_len = self._example_lengths()
    self._rows = self._plan(enc_len, dec_len)           # list of (first chunk, end chunk)
    self._enc_total, self._dec_total = int(enc_len.sum()), int(dec_len.sum())

  def _prefix_splits(self) -> np.ndarray:
    """Encoder prefix length per chunk in [max(1, n - (Ld-1)), min(n-1, Le)] (n=1: 1)."""
    n = self._chunk_length
    low = np.maximum(1, n - (self.decoder_length - 1))
    high = np.maximum(np.minimum(n - 1, self.encoder_length), low)
    u = np.random.default_rng([self.seed, 1 << 30]).random(len(n))
    return (low + np.floor(u * (high - low + 1))).astype(np.int64)

  def _example_lengths(self) -> tuple[np.ndarray, np.ndarray]:
    if self.objective == "prefix_lm":
      return self._split, self._chunk_length - self._split + self._chunk_ends_doc
    pairs = [corrupted_lengths(int(n), self.noise_density, self.mean_span_length)
             for n in self._chunk_length]
    lengths = np.asarray(pairs, np.int64).reshape(-1, 2)
    return lengths[:, 0], lengths[:, 1]

  def _plan(self, enc_len: np.ndarray, dec_len: np.ndarray) -> list[tuple[int, int]]:
    """Greedy in-order packing: a row takes chunks while both streams still fit."""
    rows, first, enc_used, dec_used = [], 0, 0, 0
    for c, (e, d) in enumerate(zip(enc_len.tolist(), dec_len.tolist())):
      if c > first and (enc_used + e > self.encoder_length or dec_used + d > self.decoder_length):
        rows.append((first, c))
        first, enc_used, dec_used = c, 0, 0
      enc_used, dec_used = enc_used + e, dec_used + d
    if len(enc_len) > first:
      rows.append((first, len(enc_len)))
    return rows

  def __len__(self) -> int:
    return len(self._rows)

  def example(self, chunk: int) -> tuple[np.ndarray, np.ndarray]:
    """Chunk index -> (encoder ids, target ids) of its example."""
    start, n = int(self._chunk_start[chunk]), int(self._chunk_length[chunk])
    ids = self._data[start:start + n].astype(np.int32)
    if self.objective == "prefix_lm":
      split = int(self._split[chunk])
      eos = [hbytes.EOS_ID] if self._chunk_ends_doc[chunk] else []
      return ids[:split], np.concatenate([ids[split:], np.asarray(eos, np.int32)])
    rng = np.random.default_rng([self.seed, chunk])
    return corrupt_spans(ids, rng, self.noise_density, self.mean_span_length)

  def __getitem__(self, row: int) -> dict[str, np.ndarray]:
    row = int(row)
    if not 0 <= row < len(self._rows):
      raise IndexError(f"row {row} out of range [0, {len(self._rows)})")
    first, end = self._rows[row]
    out = pad_example(self.encoder_length, self.decoder_length)
    enc_at, dec_at = 0, 0
    for segment, chunk in enumerate(range(first, end), start=1):
      encoder_ids, target_ids = self.example(chunk)
      e, d = len(encoder_ids), len(target_ids)
      out["encoder_inputs"][enc_at:enc_at + e] = encoder_ids
      out["encoder_segment_ids"][enc_at:enc_at + e] = segment
      out["encoder_positions"][enc_at:enc_at + e] = np.arange(e)
      out["targets"][dec_at:dec_at + d] = target_ids
      out["decoder_inputs"][dec_at:dec_at + d] = np.concatenate([[hbytes.BOS_ID], target_ids[:-1]])
      out["segment_ids"][dec_at:dec_at + d] = segment
      out["positions"][dec_at:dec_at + d] = np.arange(d)
      out["loss_mask"][dec_at:dec_at + d] = 1.0
      enc_at, dec_at = enc_at + e, dec_at + d
    return out

  def stats(self) -> SpanCorruptionStats:
    rows = max(len(self), 1)
    return SpanCorruptionStats(self.num_documents, self.num_empty_skipped, len(self._data),
                               len(self._chunk_length), len(self),
                               self._enc_total / (rows * self.encoder_length),
                               self._dec_total / (rows * self.decoder_length))


def pad_example(encoder_length: int, decoder_length: int) -> dict[str, np.ndarray]:
  """An all-padding example (segment 0, loss_mask 0)."""
  def full(length, value, dtype=np.int32):
    return np.full([length], value, dtype)
  return {"encoder_inputs": full(encoder_length, hbytes.PAD_ID),
          "encoder_segment_ids": full(encoder_length, 0),
          "encoder_positions": full(encoder_length, 0),
          "decoder_inputs": full(decoder_length, hbytes.PAD_ID),
          "targets": full(decoder_length, hbytes.PAD_ID),
          "segment_ids": full(decoder_length, 0),
          "positions": full(decoder_length, 0),
          "loss_mask": full(decoder_length, 0.0, np.float32)}


def span_corruption_rows(documents: Iterable[bytes], data_config, seed: int | None = None
                         ) -> SpanCorruptionRows:
  """From config.data: seq_len (encoder), decoder_seq_len (default seq_len // 4),
  objective, noise_density, mean_span_length; seed defaults to shuffle_seed."""
  c = data_config
  return SpanCorruptionRows(
      documents, c.seq_len, c.get("decoder_seq_len", 0) or max(c.seq_len // 4, 2),
      seed=c.get("shuffle_seed", 0) if seed is None else seed,
      objective=c.get("objective", "span_corruption"),
      noise_density=c.get("noise_density", 0.15),
      mean_span_length=c.get("mean_span_length", 20.0))


def span_corruption_layout(documents, data_config, *, seq_len: int, seed: int | None):
  """hnet/data/pipeline.py LAYOUTS["span_corruption"]: documents (order permuted with
  seed, as the bytes layout does) -> grain.MapDataset of encoder-decoder rows with
  seq_len encoder positions (data.decoder_seq_len decoder positions). seed None (eval):
  source order, and the noise still follows data.shuffle_seed, so evaluation rows are
  the same every time."""
  import grain  # pylint: disable=g-import-not-at-top
  if seed is not None:
    order = np.random.default_rng(seed).permutation(len(documents))
    source_documents = documents
    documents = [source_documents[int(i)] for i in order]
  c = data_config
  rows = SpanCorruptionRows(
      documents, seq_len, c.get("decoder_seq_len", 0) or max(seq_len // 4, 2),
      seed=c.get("shuffle_seed", 0) if seed is None else seed,
      objective=c.get("objective", "span_corruption"),
      noise_density=c.get("noise_density", 0.15),
      mean_span_length=c.get("mean_span_length", 20.0))
  if len(rows) == 0:
    raise ValueError("No rows to train on: every document is empty.")
  return grain.MapDataset.source(rows)


def stack_rows(rows: SpanCorruptionRows) -> dict[str, np.ndarray]:
  """Every row stacked: {key: [R, Le or Ld]} (small corpora and tests)."""
  examples = [rows[r] for r in range(len(rows))]
  template = pad_example(rows.encoder_length, rows.decoder_length)
  return {k: (np.stack([e[k] for e in examples]) if examples
              else np.zeros([0, len(v)], v.dtype)) for k, v in template.items()}
