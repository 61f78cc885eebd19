"""The grain input pipeline: documents -> layout rows -> per-process batches.

  ds = make_dataset(config.data, "train", seq_len=256, global_batch_size=32,
                    process_index=jax.process_index(), process_count=jax.process_count(),
                    seed=config.data.shuffle_seed)       # grain.MapDataset of batches
  it = make_iterator(...same arguments...)                # grain.DatasetIterator
  batch = next(it)   # {"inputs", "targets", "segment_ids", "positions", "loss_mask"}: [b, L]

Order of operations (all deterministic given `seed`):
  1. documents = sources.load_documents(data_config, split)
  2. rows = LAYOUTS[data_config.layout](documents, data_config, seq_len=..., seed=...)
  3. shuffle=True (default for the train split): rows are shuffled with `seed`, with a
     different permutation every epoch (grain reseeds per epoch); repeat=True repeats
     forever. repeat=False makes one pass; the last global batch is completed with
     padding rows (every array zero: segment_ids 0, loss_mask 0) so shapes stay static.
  4. global batch g is rows [g*B, (g+1)*B) of that sequence (B = global_batch_size);
     process p of P gets rows [g*B + p*b, g*B + (p+1)*b), b = B / P. So the P processes
     together see exactly the single-process global batch, sliced: a multi-host run
     reproduces a single-host run bit for bit.

Exact resume: the iterator's `get_state()` / `set_state()` record the next batch index.
With orbax: `ocp.args.Composite(data=grain.checkpoint.CheckpointSave(iterator), ...)` to
save and `grain.checkpoint.CheckpointRestore(fresh_iterator)` to restore (one JSON file
per process); the restored iterator yields exactly the batches that followed the save.

Layout contract (for "words", "span_corruption", "bpe", ... added next to "bytes"):
  LAYOUTS[name] = fn(documents: Sequence[bytes], data_config, *, seq_len: int,
                     seed: int | None) -> grain.MapDataset
  * documents are raw bytes, in source order; len() and [] work (may be lazy, e.g. TFDS).
  * seed is None for unshuffled passes (eval): keep source order. Otherwise use it for
    any randomness (document order, noise), e.g. np.random.default_rng(seed).
  * return a finite, random-access MapDataset whose elements are dicts of numpy arrays
    with static shapes, the same keys and shapes for every element (the pipeline
    shuffles, repeats, shards and batches it). Include "loss_mask" (float32) and
    "segment_ids" (0 = padding): padding rows are made as all-zero copies of element 0.
  * do not shuffle rows yourself; do not read jax / process state.
"""
from __future__ import annotations

import sys
from typing import Callable, Sequence

import grain
import numpy as np

from hnet.data import packing, sources

LayoutFn = Callable[..., grain.MapDataset]


def bytes_layout(documents: Sequence[bytes], data_config, *, seq_len: int,
                 seed: int | None) -> grain.MapDataset:
  """Byte rows: documents (order permuted with seed) packed by concat-then-split."""
  del data_config
  if seed is not None:
    order = np.random.default_rng(seed).permutation(len(documents))
    source_documents = documents
    documents = (source_documents[int(i)] for i in order)
  rows = packing.pack_documents(documents, seq_len)
  if len(rows) == 0:
    raise ValueError("No rows to train on: every document is empty.")
  return grain.MapDataset.source(rows)


LAYOUTS: dict[str, LayoutFn] = {"bytes": bytes_layout}


def _bpe_layout(documents, data_config, *, seq_len, seed):
  """Token rows + target_bytes (hnet/data/bpe.py; `tokenizers` is imported on first use)."""
  from hnet.data import bpe
  return bpe.bpe_layout(documents, data_config, seq_len=seq_len, seed=seed)


LAYOUTS["bpe"] = _bpe_layout


def _words_layout(documents, data_config, *, seq_len, seed):
  """Word rows for HAT / word-pooled models (hnet/data/words.py; data.words_per_row,
  data.bytes_per_word)."""
  from hnet.data import words
  return words.words_layout(documents, data_config, seq_len=seq_len, seed=seed)


LAYOUTS["words"] = _words_layout


def _span_corruption_layout(documents, data_config, *, seq_len, seed):
  """Encoder-decoder rows for MrT5 / ByT5 (hnet/data/span_corruption.py; data.objective
  span_corruption | prefix_lm, data.decoder_seq_len, noise_density, mean_span_length)."""
  from hnet.data import span_corruption
  return span_corruption.span_corruption_layout(documents, data_config, seq_len=seq_len,
                                                seed=seed)


LAYOUTS["span_corruption"] = _span_corruption_layout


class ProcessRowsMapDataset(grain.MapDataset):
  """This process's rows of each global batch, in order (see module docstring, step 4).

  Index i -> parent row (i // b) * B + p * b + i % b. With pad_example set, the parent is
  read in whole global batches, the last one completed with pad_example; without it a
  trailing partial global batch is dropped (an infinite parent has none).
  """

  def __init__(self, parent: grain.MapDataset, *, global_batch_size: int, process_index: int,
               process_count: int, pad_example: dict | None = None):
    super().__init__(parent)
    self._global = global_batch_size
    self._local = global_batch_size // process_count
    self._offset = process_index * self._local
    self._parent_length = len(parent)
    self._pad = pad_example
    if pad_example is None or self._parent_length >= sys.maxsize:
      global_batches = self._parent_length // self._global
    else:
      global_batches = -(-self._parent_length // self._global)
    self._length = global_batches * self._local

  def __len__(self) -> int:
    return self._length

  def _parent_index(self, index: int) -> int:
    batch, row = divmod(index, self._local)
    return batch * self._global + self._offset + row

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    if not 0 <= index < self._length:
      raise IndexError(f"index {index} out of range [0, {self._length})")
    parent_index = self._parent_index(index)
    if parent_index >= self._parent_length:
      return {k: v.copy() for k, v in self._pad.items()}
    return self._parent[parent_index]

  def __str__(self) -> str:
    return (f"ProcessRowsMapDataset(B={self._global}, b={self._local}, "
            f"offset={self._offset})")


def _zeros_like(example: dict) -> dict:
  return {k: np.zeros_like(np.asarray(v)) for k, v in example.items()}


def make_dataset(data_config, split: str, *, seq_len: int | None = None,
                 global_batch_size: int, process_index: int = 0, process_count: int = 1,
                 seed: int | None = None, repeat: bool = True,
                 shuffle: bool | None = None) -> grain.MapDataset:
  """A grain MapDataset whose element k is this process's part of global batch k:
  a dict of numpy arrays [global_batch_size / process_count, ...] (see module docstring).

  seq_len: default data_config.seq_len. seed: default data_config.shuffle_seed.
  shuffle: default True for the train split, False otherwise.
  repeat: True = endless, reshuffled every epoch; False = one pass, last batch padded.
  """
  if global_batch_size < 1 or global_batch_size % process_count:
    raise ValueError(f"global_batch_size={global_batch_size} must be a positive multiple of "
                     f"process_count={process_count}.")
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index={process_index} not in [0, {process_count}).")
  seq_len = int(seq_len if seq_len is not None else data_config.seq_len)
  seed = int(seed if seed is not None else data_config.get("shuffle_seed", 0))
  if shuffle is None:
    shuffle = sources.canonical_split(data_config, split) == "train"
  layout = data_config.get("layout", "bytes")
  if layout not in LAYOUTS:
    raise ValueError(f"Unknown data.layout {layout!r}; registered: {sorted(LAYOUTS)}.")

  documents = sources.load_documents(data_config, split)
  rows = LAYOUTS[layout](documents, data_config, seq_len=seq_len,
                         seed=seed if shuffle else None)
  if len(rows) == 0:
    raise ValueError(f"Layout {layout!r} produced no rows for split {split!r}.")
  if shuffle:
    rows = rows.shuffle(seed=seed)
  pad = None
  if repeat:
    rows = rows.repeat()  # reseeds the shuffle each epoch
  else:
    pad = _zeros_like(rows[0])
  rows = ProcessRowsMapDataset(rows, global_batch_size=global_batch_size,
                               process_index=process_index, process_count=process_count,
                               pad_example=pad)
  return rows.batch(global_batch_size // process_count, drop_remainder=True)


def make_iterator(data_config, split: str, *, seq_len: int | None = None,
                  global_batch_size: int, process_index: int = 0, process_count: int = 1,
                  seed: int | None = None, repeat: bool = True, shuffle: bool | None = None,
                  read_threads: int = 2, prefetch_batches: int = 8) -> grain.DatasetIterator:
  """make_dataset(...) as a checkpointable grain.DatasetIterator.

  data_config.num_workers > 0 moves batch assembly to that many worker processes
  (grain mp_prefetch); the state stays exact either way, but its format depends on
  num_workers, so resume with the same value.
  """
  dataset = make_dataset(data_config, split, seq_len=seq_len, global_batch_size=global_batch_size,
                         process_index=process_index, process_count=process_count, seed=seed,
                         repeat=repeat, shuffle=shuffle)
  iter_dataset = dataset.to_iter_dataset(grain.ReadOptions(
      num_threads=read_threads, prefetch_buffer_size=prefetch_batches))
  num_workers = int(data_config.get("num_workers", 0))
  if num_workers > 0:
    from absl import flags  # pylint: disable=g-import-not-at-top
    if not flags.FLAGS.is_parsed():  # grain workers read absl flags; use their defaults
      flags.FLAGS.mark_as_parsed()
    iter_dataset = iter_dataset.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers))
  return iter(iter_dataset)
