"""TFDS builder `hnet_text_files`: local .txt / .jsonl files -> array_record train/validation.

Build (no TensorFlow needed; array_record is written and read by pure-Python/C++ libs):

  python -m hnet.data.tfds_builder --path '/data/books/*.txt' --data_dir /data/tfds

or in Python: `build_text_files(path, data_dir)`. Then train with
  --config.data.source=tfds --config.data.tfds_name=hnet_text_files
  --config.data.tfds_data_dir=/data/tfds

Documents and the train/validation split are exactly those of `source=files` on the same
path (hnet/data/sources.py: one document per .txt file or .jsonl line, empty ones
skipped, held out by document hash with eval_fraction). Each record holds
  text   the document's raw bytes (invalid UTF-8 kept; tfds Text features need valid
         UTF-8, so this is a scalar bytes Tensor)
  index  the document's position in the source order (int64)
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np
import tensorflow_datasets as tfds

from hnet.data import sources

TEXT_KEY = "text"


# Run as `python -m hnet.data.tfds_builder`, this file is also imported as its real module
# name (see the bottom); only that copy registers the name "hnet_text_files".
class HnetTextFiles(tfds.core.GeneratorBasedBuilder,
                    skip_registration=__name__ == "__main__"):
  """Local text files as a TFDS dataset (see module docstring)."""

  name = "hnet_text_files"
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Documents from local .txt / .jsonl files."}
  # Nothing is downloaded, so no checksums file. Set explicitly: tfds would otherwise
  # locate this module's checksums via `code_path`, which needs the optional
  # `importlib_resources` package (absent here).
  url_infos = None

  def __init__(self, *, source_path: str | None = None, text_key: str = "text",
               eval_fraction: float = 0.02, **kwargs):
    """source_path, text_key, eval_fraction matter only when building (download_and_prepare)."""
    self._source_path = source_path
    self._text_key = text_key
    self._eval_fraction = eval_fraction
    kwargs.setdefault("file_format", "array_record")
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        features=tfds.features.FeaturesDict({
            TEXT_KEY: tfds.features.Tensor(shape=(), dtype=np.object_),
            "index": tfds.features.Scalar(dtype=np.int64),
        }),
        description="Documents (raw bytes) from local .txt / .jsonl files.",
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download
    if not self._source_path:
      raise ValueError("HnetTextFiles needs source_path (a file, directory or glob) to build.")
    documents = sources.file_documents(self._source_path, self._text_key)
    indexed = list(enumerate(documents))
    return {
        "train": self._generate_examples(indexed, "train"),
        "validation": self._generate_examples(indexed, "eval"),
    }

  def _generate_examples(self, indexed, split):
    chosen = sources.split_documents([doc for _, doc in indexed], split, self._eval_fraction)
    if not chosen:
      raise ValueError(f"{self._source_path!r}: the {split!r} split would be empty "
                       f"(eval_fraction={self._eval_fraction}).")
    if len(indexed) == 1:  # single document split by bytes: keep its index
      for part in chosen:
        yield f"{split}-0", {TEXT_KEY: part, "index": 0}
      return
    wanted = {}
    for doc in chosen:
      wanted[doc] = wanted.get(doc, 0) + 1
    for index, doc in indexed:
      if wanted.get(doc, 0):
        wanted[doc] -= 1
        yield index, {TEXT_KEY: doc, "index": index}


def build_text_files(source_path: str, data_dir: str, *, text_key: str = "text",
                     eval_fraction: float = 0.02) -> HnetTextFiles:
  """Builds (or finds already built) hnet_text_files in data_dir; returns the builder."""
  if "://" not in data_dir:
    data_dir = os.path.expanduser(data_dir)  # "--data_dir=~/tfds" reaches us unexpanded
  builder = HnetTextFiles(source_path=source_path, text_key=text_key,
                          eval_fraction=eval_fraction, data_dir=data_dir)
  builder.download_and_prepare()
  return builder


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--path", required=True, help="file, directory or glob of .txt/.jsonl")
  parser.add_argument("--data_dir", required=True, help="TFDS data_dir to write into")
  parser.add_argument("--text_key", default="text", help="jsonl field holding the text")
  parser.add_argument("--eval_fraction", type=float, default=0.02)
  args = parser.parse_args(argv)
  builder = build_text_files(args.path, args.data_dir, text_key=args.text_key,
                             eval_fraction=args.eval_fraction)
  for split, info in builder.info.splits.items():
    print(f"{builder.name} {split}: {info.num_examples} documents in {builder.data_dir}")
  return 0


if __name__ == "__main__":
  from hnet.data import tfds_builder as _registered  # the copy tfds resolves by name
  sys.exit(_registered.main())
