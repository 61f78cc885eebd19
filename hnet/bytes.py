"""Bytes <-> ids.

Ids 0..255 are the byte values themselves, so any byte string (invalid UTF-8
included) round-trips. Special ids live above 255 and never collide with data.
The vocabulary is padded to a multiple of 8 so the head shards evenly.
"""
from __future__ import annotations

import numpy as np

NUM_BYTES = 256
PAD_ID = 256
BOS_ID = 257
EOS_ID = 258
VOCAB_SIZE = 264  # 259 used ids, padded to a multiple of 8.


def encode(text: str | bytes, *, add_bos: bool = False, add_eos: bool = False) -> np.ndarray:
  """Text (str is UTF-8 encoded; bytes are taken as they are) -> int32 ids [L]."""
  data = text.encode("utf-8") if isinstance(text, str) else bytes(text)
  ids = np.frombuffer(data, dtype=np.uint8).astype(np.int32)
  parts = ([np.array([BOS_ID], np.int32)] if add_bos else []) + [ids]
  if add_eos:
    parts.append(np.array([EOS_ID], np.int32))
  return np.concatenate(parts)


def decode_bytes(ids) -> bytes:
  """Ids -> bytes, dropping special ids."""
  ids = np.asarray(ids).reshape(-1)
  return bytes(ids[ids < NUM_BYTES].astype(np.uint8).tolist())


def decode(ids, errors: str = "replace") -> str:
  """Ids -> str; invalid UTF-8 becomes U+FFFD unless errors says otherwise."""
  return decode_bytes(ids).decode("utf-8", errors=errors)
