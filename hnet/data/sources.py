"""Document sources: `load_documents(data_config, split) -> Sequence[bytes]`.

data_config.source picks one:
  embedded  the installed default corpus (hnet/data/corpus.py); held-out split by work.
            `data_config.embedded_code = True` (optional field) adds the stdlib code corpus.
  files     data_config.path: a file, a directory (every *.txt and *.jsonl below it) or a
            glob. A .jsonl file holds one JSON object per line, the document in field
            data_config.text_key; any other file is one document, read as raw bytes
            (invalid UTF-8 is data, not an error). Empty documents are skipped with one
            warning counting them. Held-out split: see `split_documents`.
  tfds      tfds.data_source(data_config.tfds_name, split=..., data_dir=...) read through
            array_record (no TensorFlow needed), field data_config.text_key. Datasets made
            from local files with hnet/data/tfds_builder.py work by name (hnet_text_files).

Splits: "train" and "eval" (aliases: data_config.train_split, data_config.eval_split,
"validation"). For tfds they map to the configured tfds split names; any other string is
passed to tfds as it is (e.g. "train[:1%]").
"""
from __future__ import annotations

import glob
import hashlib
import json
import os
import pathlib
import warnings
from typing import Sequence

from hnet.data import corpus

TEXT_SUFFIXES = (".txt",)
JSONL_SUFFIXES = (".jsonl",)
_GLOB_CHARS = set("*?[")


def canonical_split(data_config, split: str) -> str | None:
  """"train" | "eval" for a known split name, None for anything else."""
  if split in ("train", data_config.get("train_split", "train")):
    return "train"
  if split in ("eval", "validation", data_config.get("eval_split", "validation")):
    return "eval"
  return None


# ----------------------------------------------------------------------------- files


def expand_paths(pattern: str) -> list[pathlib.Path]:
  """A file, a directory (its *.txt / *.jsonl, recursively) or a glob -> sorted files."""
  if not pattern:
    raise ValueError("data.source='files' needs data.path: a file, directory or glob of "
                     ".txt / .jsonl files (e.g. --config.data.path='/data/books/*.txt').")
  expanded = os.path.expanduser(pattern)
  path = pathlib.Path(expanded)
  if any(c in expanded for c in _GLOB_CHARS):
    files = sorted(pathlib.Path(p) for p in glob.glob(expanded, recursive=True)
                   if pathlib.Path(p).is_file())
    if not files:
      raise FileNotFoundError(f"data.path glob {pattern!r} matches no files.")
    return files
  if path.is_dir():
    files = sorted(p for p in path.rglob("*") if p.is_file()
                   and p.suffix.lower() in TEXT_SUFFIXES + JSONL_SUFFIXES)
    if not files:
      raise FileNotFoundError(f"data.path directory {pattern!r} holds no .txt or .jsonl files.")
    return files
  if path.is_file():
    return [path]
  raise FileNotFoundError(f"data.path {pattern!r} does not exist.")


def _jsonl_documents(path: pathlib.Path, text_key: str) -> list[bytes]:
  documents = []
  with open(path, "rb") as f:
    for line_number, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        record = json.loads(line)
      except ValueError as e:
        raise ValueError(f"{path}:{line_number}: not valid JSON ({e}).") from None
      if not isinstance(record, dict) or text_key not in record:
        raise ValueError(f"{path}:{line_number}: no field {text_key!r} "
                         f"(set data.text_key to the field holding the text).")
      text = record[text_key]
      if isinstance(text, str):  # lone surrogates (\ud800) are kept as their raw bytes
        documents.append(text.encode("utf-8", errors="surrogatepass"))
      elif text is None:
        documents.append(b"")
      else:
        raise ValueError(f"{path}:{line_number}: field {text_key!r} is "
                         f"{type(text).__name__}, expected a string.")
  return documents


def file_documents(pattern: str, text_key: str = "text") -> list[bytes]:
  """Every non-empty document under `pattern`, in sorted file order (then line order).

  Warns once with the number of empty documents skipped; ValueError if none remain.
  """
  files = expand_paths(pattern)
  documents, empty = [], 0
  for path in files:
    if path.suffix.lower() in JSONL_SUFFIXES:
      docs = _jsonl_documents(path, text_key)
    else:
      docs = [path.read_bytes()]
    for doc in docs:
      if doc:
        documents.append(doc)
      else:
        empty += 1
  if empty:
    warnings.warn(f"data.path {pattern!r}: skipped {empty} empty document(s) "
                  f"of {empty + len(documents)}.", stacklevel=2)
  if not documents:
    raise ValueError(f"data.path {pattern!r}: all {empty} document(s) in {len(files)} file(s) "
                     f"are empty; point data.path at files with text (for .jsonl, check that "
                     f"data.text_key={text_key!r} is the field holding it).")
  return documents


def _unit_hash(document: bytes) -> float:
  """A document's place in [0, 1) from its sha256 (same bytes -> same side of the split)."""
  return int.from_bytes(hashlib.sha256(document).digest()[:8], "big") / 2.0**64


def split_documents(documents: Sequence[bytes], split: str,
                    eval_fraction: float) -> list[bytes]:
  """The documents of `split` ("train" | "eval"), order kept.

  A document is held out when its sha256, read as a number in [0, 1), is below
  eval_fraction: deterministic, independent of file order, and exact duplicates share a
  side. If that holds out nothing (small corpora), the document with the smallest hash
  is held out. A single document is split by bytes instead: its last eval_fraction
  (cut just after a newline when there is one) is "eval", the rest "train".
  """
  if split not in ("train", "eval"):
    raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
  documents = list(documents)
  if eval_fraction <= 0 or not documents:
    return documents if split == "train" else []
  if len(documents) == 1:
    doc = documents[0]
    cut = int(len(doc) * (1.0 - eval_fraction))
    newline = doc.find(b"\n", cut)
    cut = newline + 1 if 0 <= newline < len(doc) - 1 else cut
    part = doc[:cut] if split == "train" else doc[cut:]
    return [part] if part else []
  hashes = [_unit_hash(d) for d in documents]
  held = [h < eval_fraction for h in hashes]
  if not any(held):
    held[min(range(len(hashes)), key=hashes.__getitem__)] = True
  if all(held):
    held[max(range(len(hashes)), key=hashes.__getitem__)] = False
  return [d for d, h in zip(documents, held) if h == (split == "eval")]


# ----------------------------------------------------------------------------- tfds


class TfdsDocuments(Sequence):
  """Lazy Sequence[bytes] over a tfds array_record data source (reads on access)."""

  def __init__(self, data_source, text_key: str):
    self._source = data_source
    self._text_key = text_key

  def __len__(self) -> int:
    return len(self._source)

  def __iter__(self):
    return (self[i] for i in range(len(self)))

  def __getitem__(self, index):
    if isinstance(index, slice):
      return [self[i] for i in range(*index.indices(len(self)))]
    index = int(index)
    if index < 0:
      index += len(self)
    if not 0 <= index < len(self):
      raise IndexError(f"document {index} out of range [0, {len(self)})")
    record = self._source[index]
    if self._text_key not in record:
      raise KeyError(f"tfds record has no feature {self._text_key!r} (features: "
                     f"{sorted(record)}); set data.text_key.")
    text = record[self._text_key]
    if isinstance(text, str):
      return text.encode("utf-8", errors="surrogatepass")
    return bytes(text)


def tfds_documents(data_config, split: str) -> TfdsDocuments:
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from hnet.data import tfds_builder  # noqa: F401  (registers hnet_text_files)

  name = data_config.get("tfds_name", "")
  if not name:
    raise ValueError("data.source='tfds' needs data.tfds_name (e.g. 'hnet_text_files').")
  canonical = canonical_split(data_config, split)
  tfds_split = {"train": data_config.get("train_split", "train"),
                "eval": data_config.get("eval_split", "validation")}.get(canonical, split)
  data_dir = data_config.get("tfds_data_dir", "") or None
  if data_dir and "://" not in data_dir:
    data_dir = os.path.expanduser(data_dir)  # "~/tfds" as a flag value reaches us unexpanded
  how_to_build = (
      f"Build it first, e.g. for local .txt/.jsonl files: `python -m hnet.data.tfds_builder "
      f"--path '<files or glob>' --data_dir {data_dir or '<data_dir>'}` (then "
      f"tfds_name='{tfds_builder.HnetTextFiles.name}'), or for a catalog dataset "
      f"`tfds build {name}{' --data_dir ' + data_dir if data_dir else ''}` "
      f"(with file_format=array_record).")
  try:
    source = tfds.data_source(name, split=tfds_split, data_dir=data_dir, download=False)
  except tfds.core.registered.DatasetNotFoundError as e:
    first_line = str(e).strip().splitlines()[0] if str(e).strip() else "not registered"
    raise ValueError(f"Unknown TFDS dataset {name!r} ({first_line}). {how_to_build}") from None
  except (AssertionError, FileNotFoundError, KeyError, ValueError) as e:
    raise ValueError(f"TFDS dataset {name!r} split {tfds_split!r} is not available in "
                     f"{data_dir or 'the TFDS default data_dir'} ({e}). {how_to_build}") from None
  return TfdsDocuments(source, data_config.get("text_key", "text"))


# ----------------------------------------------------------------------------- entry


def load_documents(data_config, split: str) -> Sequence[bytes]:
  """The documents (raw bytes) of `split` from data_config.source (see module docstring)."""
  source = data_config.get("source", "embedded")
  eval_fraction = float(data_config.get("eval_fraction", 0.02))
  if source == "tfds":
    return tfds_documents(data_config, split)
  canonical = canonical_split(data_config, split)
  if canonical is None:
    raise ValueError(f"Unknown split {split!r} for source {source!r}; use 'train' or 'eval'.")
  if source == "embedded":
    return corpus.embedded_documents(canonical, eval_fraction=eval_fraction,
                                     include_code=bool(data_config.get("embedded_code", False)))
  if source == "files":
    path = data_config.get("path", "")
    documents = split_documents(file_documents(path, data_config.get("text_key", "text")),
                                canonical, eval_fraction)
    if not documents:
      raise ValueError(f"data.path {path!r}: the {canonical!r} split is empty "
                       f"(eval_fraction={eval_fraction}); add documents or change "
                       f"data.eval_fraction.")
    return documents
  raise ValueError(f"Unknown data.source {source!r}; use embedded | files | tfds.")
