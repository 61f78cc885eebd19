"""Run-directory paths that may be local or on cloud storage (gs://bucket/run).

Everything that reads or writes a workdir goes through `etils.epath` (gcsfs behind it for
gs://), never `open()`/`os.path` on a possibly remote path. Object stores have no rename
and no append, so every write here replaces a whole file (object), and `create_new` is
the one atomic primitive: O_EXCL locally, an if-generation-match=0 precondition on GCS.
"""
from __future__ import annotations

import os
import tempfile

import fsspec
from etils import epath


def is_remote(path: str | os.PathLike) -> bool:
  """True for a URL (gs://, s3://, ...), False for a local path."""
  return "://" in os.fspath(path)


def resolve(path: str | os.PathLike) -> epath.Path:
  """A workdir as a Path: local ones absolute (~ expanded), remote ones as given."""
  path = os.fspath(path)
  if is_remote(path):
    return epath.Path(path.rstrip("/"))
  return epath.Path(os.path.abspath(os.path.expanduser(path)))


def files_under(root: epath.Path) -> list[epath.Path]:
  """Every file below `root`, sorted (epath's glob refuses `**`, which would be one request
  per directory on GCS; walk lists directory by directory, locally and remotely)."""
  if not root.exists():
    return []
  return sorted(epath.Path(directory) / name for directory, _, names in root.walk()
                for name in names)


def write_text(path: epath.Path, text: str) -> None:
  """Replaces the whole file with `text`: a reader never sees half of it (locally a
  temporary file renamed over it; on an object store an object write is whole anyway)."""
  if is_remote(path):
    path.write_text(text)
    return
  directory = os.path.dirname(os.fspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.", suffix=".tmp")
  try:
    with os.fdopen(fd, "w") as f:
      f.write(text)
    os.replace(tmp, os.fspath(path))
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise


def read_text(path: epath.Path) -> str | None:
  """The file's text, or None when it does not exist."""
  try:
    return path.read_text()
  except FileNotFoundError:
    return None


def create_new(path: epath.Path, text: str) -> bool:
  """Writes `text` to `path` only if nothing is there; True if this call created it."""
  if is_remote(path):
    fs, object_path = fsspec.core.url_to_fs(os.fspath(path))
    try:
      fs.pipe_file(object_path, text.encode(), mode="create")  # ifGenerationMatch=0 on GCS
    except FileExistsError:
      return False
    return True
  os.makedirs(os.path.dirname(os.fspath(path)), exist_ok=True)
  try:
    with open(os.fspath(path), "x") as f:
      f.write(text)
  except FileExistsError:
    return False
  return True


def remove(path: epath.Path) -> None:
  """Deletes a file if it is there."""
  try:
    path.unlink()
  except FileNotFoundError:
    pass
