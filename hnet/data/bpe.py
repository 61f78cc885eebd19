"""Byte-level BPE tokenizer (the BPE-Transformer baseline) and its packed rows.

Built on the `tokenizers` library: a BPE model with the ByteLevel pre-tokenizer
(GPT-2 regex split, every byte mapped to one printable character) and ByteLevel decoder,
initial alphabet = all 256 byte characters, so every byte has a token.

Arbitrary bytes, losslessly. `tokenizers` works on `str` (valid Unicode), but our data
is bytes that may be invalid UTF-8. `encode` decodes with `surrogateescape`; the text
between invalid bytes goes through the tokenizer as usual, and each invalid byte
(a lone surrogate U+DC80+b) becomes the single-byte token of byte b directly. (Latin-1
decoding would also be lossless but would turn each non-ASCII byte into a 2-byte UTF-8
character inside the tokenizer and ruin the merges of non-Latin text.) Merges therefore
never cross an invalid byte. `decode` does not use the library: every token's string is
a sequence of byte characters, mapped back to its bytes through a table built at load,
so decode(encode(x)) == x for every byte string x.

Special tokens: PAD = 0, BOS = 1, EOS = 2 (registered as special tokens, never matched
inside text: `encode_special_tokens` is on, so the text "<|eos|>" is ordinary bytes).

`token_byte_lengths(ids)` = bytes each token covers (0 for specials), so
bits per byte = sum of nats / ln 2 / sum of covered bytes is exact.

Packing (`PackedBPERows`) follows hnet/data/packing.py exactly, with tokens in place of
bytes: each document is BOS, t_0..t_{n-1}, EOS; concat then split into rows of L+1 ids
overlapping by one; keys inputs, targets, segment_ids, positions, loss_mask ([L] each),
plus `target_bytes` [L] int32: the bytes the target token covers, 0 where masked. The
EOS target counts 1, as the byte layout counts its EOS target (target_bytes defaults to 1
there), so both layouts divide by the same number for the same documents.
"""
from __future__ import annotations

import json
import os
import re
from typing import Iterable, Iterator, Sequence

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from hnet.data import packing

PAD_TOKEN, BOS_TOKEN, EOS_TOKEN = "<|pad|>", "<|bos|>", "<|eos|>"
SPECIAL_TOKENS = (PAD_TOKEN, BOS_TOKEN, EOS_TOKEN)
PAD_ID, BOS_ID, EOS_ID = 0, 1, 2
DEFAULT_VOCAB_SIZE = 4096
TOKENIZER_FILE = "bpe_tokenizer.json"

_ESCAPED_RUN = re.compile("([\udc80-\udcff]+)")


def byte_to_char() -> list[str]:
  """The ByteLevel alphabet: byte b -> one printable character (the GPT-2 table).

  Printable Latin-1 bytes map to themselves; the other 68 bytes to U+0100 + n in order.
  """
  printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
               + list(range(ord("®"), ord("ÿ") + 1)))
  table, extra = [], 0
  for b in range(256):
    if b in printable:
      table.append(chr(b))
    else:
      table.append(chr(256 + extra))
      extra += 1
  return table


def _valid_pieces(text: str) -> Iterator[tuple[bool, str]]:
  """Surrogate-escaped text -> (is_valid_text, piece) in order; invalid runs are escapes."""
  for i, piece in enumerate(_ESCAPED_RUN.split(text)):
    if piece:
      yield i % 2 == 0, piece


def _as_bytes(data: bytes | str) -> bytes:
  return data.encode("utf-8") if isinstance(data, str) else bytes(data)


class BPETokenizer:
  """Lossless byte-level BPE over arbitrary bytes (see the module docstring)."""

  def __init__(self, tokenizer: Tokenizer):
    self.tokenizer = tokenizer
    self.tokenizer.encode_special_tokens = True  # "<|eos|>" in text is just text
    for token, want in zip(SPECIAL_TOKENS, (PAD_ID, BOS_ID, EOS_ID)):
      if tokenizer.token_to_id(token) != want:
        raise ValueError(f"special token {token} must have id {want}")
    char_to_byte = {c: b for b, c in enumerate(byte_to_char())}
    byte_ids = [tokenizer.token_to_id(c) for c in byte_to_char()]
    if None in byte_ids:
      raise ValueError("the vocabulary lacks some single-byte tokens")
    self._byte_ids = np.array(byte_ids, np.int32)  # [256] byte -> its single-byte token
    self._token_bytes: list[bytes] = []
    for token_id in range(tokenizer.get_vocab_size()):
      token = tokenizer.id_to_token(token_id)
      self._token_bytes.append(
          b"" if token in SPECIAL_TOKENS else bytes(char_to_byte[c] for c in token))
    self._token_lengths = np.array([len(t) for t in self._token_bytes], np.int32)  # [V]

  # ------------------------------------------------------------------ properties
  pad_id, bos_id, eos_id = PAD_ID, BOS_ID, EOS_ID

  @property
  def vocab_size(self) -> int:
    """Ids in use (specials + 256 bytes + merges)."""
    return len(self._token_bytes)

  @property
  def padded_vocab_size(self) -> int:
    """vocab_size rounded up to a multiple of 8 (the model's head size; shards evenly)."""
    return -(-self.vocab_size // 8) * 8

  # -------------------------------------------------------------- encode / decode
  def encode(self, data: bytes | str) -> np.ndarray:
    """Bytes (str: its UTF-8) -> token ids int32 [T], no specials added."""
    return self.encode_batch([data])[0]

  def encode_batch(self, documents: Sequence[bytes | str]) -> list[np.ndarray]:
    """Many documents at once (the library tokenizes the valid pieces in parallel)."""
    layout, texts = [], []
    for doc in documents:
      pieces = []
      for is_text, piece in _valid_pieces(_as_bytes(doc).decode("utf-8", "surrogateescape")):
        if is_text:
          pieces.append(len(texts))
          texts.append(piece)
        else:
          pieces.append(self._byte_ids[[ord(c) - 0xDC00 for c in piece]])
      layout.append(pieces)
    encoded = self.tokenizer.encode_batch(texts, add_special_tokens=False) if texts else []
    out = []
    for pieces in layout:
      parts = [np.asarray(encoded[p].ids, np.int32) if isinstance(p, int) else p
               for p in pieces]
      out.append(np.concatenate(parts).astype(np.int32) if parts else np.zeros(0, np.int32))
    return out

  def decode(self, ids) -> bytes:
    """Token ids -> the exact bytes (special ids contribute nothing)."""
    ids = np.asarray(ids).reshape(-1)
    if ids.size and (ids.min() < 0 or ids.max() >= self.vocab_size):
      raise ValueError(f"ids outside [0, {self.vocab_size})")
    return b"".join(self._token_bytes[i] for i in ids.tolist())

  def token_byte_lengths(self, ids) -> np.ndarray:
    """Bytes each token covers (0 for specials); int32, the shape of `ids`."""
    return self._token_lengths[np.asarray(ids, np.int64)]

  def token_bytes(self, token_id: int) -> bytes:
    return self._token_bytes[token_id]

  # ----------------------------------------------------------------- persistence
  def save(self, path: str | os.PathLike) -> str:
    """Writes the tokenizer JSON (`tokenizers` format); a directory gets TOKENIZER_FILE."""
    path = os.fspath(path)
    if os.path.isdir(path):
      path = os.path.join(path, TOKENIZER_FILE)
    self.tokenizer.save(path)
    return path

  @classmethod
  def load(cls, path: str | os.PathLike) -> "BPETokenizer":
    path = os.fspath(path)
    if os.path.isdir(path):
      path = os.path.join(path, TOKENIZER_FILE)
    return cls(Tokenizer.from_file(path))


def train_bpe(documents: Iterable[bytes | str], vocab_size: int = DEFAULT_VOCAB_SIZE, *,
              min_frequency: int = 2, show_progress: bool = False) -> BPETokenizer:
  """Trains a byte-level BPE of at most `vocab_size` ids (specials and 256 bytes included).

  Invalid UTF-8 bytes are left out of training (they always encode as single bytes).
  """
  if vocab_size < len(SPECIAL_TOKENS) + 256:
    raise ValueError(f"vocab_size must be >= {len(SPECIAL_TOKENS) + 256}, got {vocab_size}")
  tokenizer = Tokenizer(models.BPE())
  tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
  tokenizer.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(
      vocab_size=vocab_size, min_frequency=min_frequency, show_progress=show_progress,
      special_tokens=list(SPECIAL_TOKENS), initial_alphabet=pre_tokenizers.ByteLevel.alphabet())

  def texts():
    for doc in documents:
      for is_text, piece in _valid_pieces(_as_bytes(doc).decode("utf-8", "surrogateescape")):
        if is_text:
          yield piece

  tokenizer.train_from_iterator(texts(), trainer=trainer)
  return BPETokenizer(tokenizer)


def load_or_train(run_dir: str | os.PathLike, documents: Iterable[bytes | str],
                  vocab_size: int = DEFAULT_VOCAB_SIZE) -> BPETokenizer:
  """The run's tokenizer: `run_dir/bpe_tokenizer.json` if present, else trained and saved."""
  path = os.path.join(os.fspath(run_dir), TOKENIZER_FILE)
  if os.path.exists(path):
    return BPETokenizer.load(path)
  os.makedirs(os.fspath(run_dir), exist_ok=True)
  tokenizer = train_bpe(documents, vocab_size)
  tokenizer.save(path)
  return tokenizer


# ------------------------------------------------------------------------------ packing

class PackedBPERows:
  """Random-access rows of concat-then-split packed token documents (module docstring).

  Holds every document's tokens once (int32) plus offsets; rows are built on access.
  """

  def __init__(self, documents: Iterable[bytes], tokenizer: BPETokenizer, seq_len: int):
    if seq_len < 1:
      raise ValueError(f"seq_len must be >= 1, got {seq_len}")
    self.seq_len = int(seq_len)
    self.tokenizer = tokenizer
    documents = [bytes(d) for d in documents]
    self.num_empty_skipped = sum(not d for d in documents)
    token_docs = tokenizer.encode_batch([d for d in documents if d])
    self.num_bytes = sum(len(d) for d in documents)
    self._tokens = (np.concatenate(token_docs) if token_docs else np.zeros(0, np.int32))
    self._doc_lengths = np.array([len(t) for t in token_docs], np.int64)      # [D]
    self._layout = packing.StreamLayout(self._doc_lengths, self.seq_len)
    self.stream_length = self._layout.stream_length
    self._num_rows = self._layout.num_rows

  def __len__(self) -> int:
    return self._num_rows

  @property
  def num_documents(self) -> int:
    return len(self._doc_lengths)

  def row_stream(self, row: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """-> ids, segment_ids, positions of the L+1 stream entries of `row` (int32 [L+1])."""
    return self._layout.row(row, self._tokens, (BOS_ID, EOS_ID, PAD_ID))

  def __getitem__(self, row: int) -> dict[str, np.ndarray]:
    ids, segment_ids, positions = self.row_stream(int(row))
    example = packing.example_from_stream(ids, segment_ids, positions)
    example["target_bytes"] = target_bytes(self.tokenizer, example["targets"],
                                           example["loss_mask"])
    return example


def target_bytes(tokenizer: BPETokenizer, targets: np.ndarray,
                 loss_mask: np.ndarray) -> np.ndarray:
  """Bytes each target token stands for: its covered bytes, EOS = 1, 0 where masked."""
  covered = np.where(targets == EOS_ID, 1, tokenizer.token_byte_lengths(targets))
  return np.where(loss_mask > 0, covered, 0).astype(np.int32)


def pack_bpe_documents(documents: Iterable[bytes], tokenizer: BPETokenizer,
                       seq_len: int) -> PackedBPERows:
  """Documents (bytes) -> PackedBPERows of seq_len input tokens per row."""
  return PackedBPERows(documents, tokenizer, seq_len)


def tokenizer_summary(tokenizer: BPETokenizer) -> str:
  """One line for logs: vocab size and mean token length over the merged tokens."""
  lengths = tokenizer._token_lengths[len(SPECIAL_TOKENS):]
  return json.dumps({"vocab_size": tokenizer.vocab_size,
                     "mean_token_bytes": round(float(lengths.mean()), 3)})


# ------------------------------------------------------------------- pipeline layout

_TOKENIZER_CACHE: dict[tuple, BPETokenizer] = {}


def tokenizer_for(data_config) -> BPETokenizer:
  """The tokenizer of a data config, always trained on its *train* split.

  data_config.bpe_tokenizer (optional): JSON path; loaded when it exists, otherwise the
  trained tokenizer is saved there (training runs point it into the run directory, so
  eval and later runs reuse it). data_config.bpe_vocab_size (optional, default 4096).
  Without a path the tokenizer is trained once per process and data config.
  """
  path = data_config.get("bpe_tokenizer", "") or ""
  vocab_size = int(data_config.get("bpe_vocab_size", DEFAULT_VOCAB_SIZE))
  if path and os.path.exists(path):
    key = ("file", os.path.abspath(path), os.path.getmtime(path))
  else:
    key = ("config", path, vocab_size, data_config.to_json() if hasattr(data_config, "to_json")
           else repr(sorted(dict(data_config).items())))
  if key not in _TOKENIZER_CACHE:
    if key[0] == "file":
      _TOKENIZER_CACHE[key] = BPETokenizer.load(path)
    else:
      from hnet.data import sources  # heavy (corpus, tfds); only when training one
      tokenizer = train_bpe(sources.load_documents(data_config, "train"), vocab_size)
      if path:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        tokenizer.save(path)
      _TOKENIZER_CACHE[key] = tokenizer
  return _TOKENIZER_CACHE[key]


def bpe_layout(documents: Sequence[bytes], data_config, *, seq_len: int, seed: int | None):
  """The "bpe" layout of hnet/data/pipeline.py: token rows with target_bytes.

  Documents are permuted with `seed` (kept in order when seed is None), tokenized with
  `tokenizer_for(data_config)` and packed by concat-then-split (PackedBPERows).
  The model's vocab_size must be `tokenizer_for(data_config).padded_vocab_size`.
  """
  import grain  # the pipeline's dependency, not the tokenizer's

  if seed is not None:
    order = np.random.default_rng(seed).permutation(len(documents))
    documents = [documents[int(i)] for i in order]
  rows = PackedBPERows(documents, tokenizer_for(data_config), seq_len)
  if len(rows) == 0:
    raise ValueError("No rows to train on: every document is empty.")
  return grain.MapDataset.source(rows)
