"""Data layer: embedded corpus, document sources, packing, grain pipeline, TFDS builder.

  hnet.data.corpus        embedded_documents(split), install(...)
  hnet.data.sources       load_documents(data_config, split)
  hnet.data.packing       pack_documents(documents, seq_len) -> PackedRows
  hnet.data.pipeline      make_dataset(...), make_iterator(...), LAYOUTS
  hnet.data.tfds_builder  HnetTextFiles (tfds builder "hnet_text_files"), build_text_files(...)

Submodules are imported on first use (`hnet.data.make_iterator` works) so that the
corpus installer does not pay for importing grain or tensorflow_datasets.
"""
import importlib

_EXPORTS = {
    "make_dataset": "pipeline", "make_iterator": "pipeline", "LAYOUTS": "pipeline",
    "load_documents": "sources", "embedded_documents": "corpus",
    "pack_documents": "packing", "PackedRows": "packing",
}


def __getattr__(name):
  if name in _EXPORTS:
    return getattr(importlib.import_module(f"hnet.data.{_EXPORTS[name]}"), name)
  raise AttributeError(f"module 'hnet.data' has no attribute {name!r}")
