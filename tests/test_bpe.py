"""hnet/data/bpe.py: lossless byte-level BPE on any bytes, exact byte lengths, packed rows."""
import json
import os
import textwrap

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from hnet.data import bpe, packing

MULTI = "Привет, мир! Καλημέρα κόσμε. 你好世界。 naïve café — hello <|eos|> <|bos|>\r\n\t\x00"


def _training_documents():
  # Real text that every Python install has: the sources of a few stdlib modules.
  return [open(module.__file__, "rb").read() for module in (textwrap, json, os)]


@pytest.fixture(scope="module")
def tokenizer():
  return bpe.train_bpe(_training_documents() + [MULTI.encode()] * 3, vocab_size=600)


def test_vocab_and_specials(tokenizer):
  assert tokenizer.vocab_size == 600
  assert tokenizer.padded_vocab_size == 600
  assert (bpe.PAD_ID, bpe.BOS_ID, bpe.EOS_ID) == (0, 1, 2)
  for token, token_id in zip(bpe.SPECIAL_TOKENS, (0, 1, 2)):
    assert tokenizer.tokenizer.token_to_id(token) == token_id
  ids = tokenizer.encode(b"x <|eos|> <|pad|><|bos|>")
  assert not np.isin(ids, [0, 1, 2]).any(), "special strings in text must stay text"
  assert tokenizer.decode([1] + list(ids) + [2, 0]) == b"x <|eos|> <|pad|><|bos|>"
  with pytest.raises(ValueError):
    bpe.train_bpe([b"abc"], vocab_size=100)


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=300))
def test_round_trip_any_bytes(tokenizer, data):
  ids = tokenizer.encode(data)
  assert ids.dtype == np.int32
  assert tokenizer.decode(ids) == data
  assert int(tokenizer.token_byte_lengths(ids).sum()) == len(data)


@settings(max_examples=100, deadline=None)
@given(text=st.text(max_size=200))
def test_round_trip_any_text(tokenizer, text):
  data = text.encode("utf-8", "surrogatepass")  # lone surrogates -> invalid UTF-8 bytes
  assert tokenizer.decode(tokenizer.encode(data)) == data


def test_round_trip_documents_and_compression(tokenizer):
  held_out = (open(bpe.__file__, "rb").read() + MULTI.encode() + b"\xff\xfe\xc3(\xed\xa0\x80"
              + "end".encode())
  docs = _training_documents() + [held_out]
  for doc, ids in zip(docs, tokenizer.encode_batch(docs)):
    assert tokenizer.decode(ids) == doc
    lengths = tokenizer.token_byte_lengths(ids)
    assert int(lengths.sum()) == len(doc)
    assert (lengths >= 1).all()
    assert b"".join(tokenizer.token_bytes(i) for i in ids) == doc
  # Merges really compress unseen text (vocab 600: about 1.7 bytes per token, not 1).
  assert len(held_out) / len(tokenizer.encode(held_out)) > 1.5


def test_invalid_bytes_are_single_byte_tokens(tokenizer):
  ids = tokenizer.encode(b"ab\xffcd")
  pieces = [tokenizer.token_bytes(i) for i in ids]
  assert b"\xff" in pieces


def test_save_load(tokenizer, tmp_path):
  path = tokenizer.save(tmp_path)
  assert path == os.path.join(tmp_path, bpe.TOKENIZER_FILE)
  json.loads(open(path, encoding="utf-8").read())
  loaded = bpe.BPETokenizer.load(path)
  data = MULTI.encode() + b"\x80\xff" + _training_documents()[0][:2000]
  np.testing.assert_array_equal(loaded.encode(data), tokenizer.encode(data))
  assert loaded.decode(loaded.encode(data)) == data
  assert not np.isin(loaded.encode(b"<|eos|>"), [0, 1, 2]).any()


def test_load_or_train(tmp_path):
  docs = _training_documents()
  first = bpe.load_or_train(tmp_path / "run", docs, vocab_size=400)
  mtime = os.path.getmtime(tmp_path / "run" / bpe.TOKENIZER_FILE)
  second = bpe.load_or_train(tmp_path / "run", [b"entirely different"], vocab_size=300)
  assert second.vocab_size == first.vocab_size == 400
  assert os.path.getmtime(tmp_path / "run" / bpe.TOKENIZER_FILE) == mtime


@pytest.mark.parametrize("seq_len", [7, 64])
def test_packed_rows(tokenizer, seq_len):
  docs = [b"", MULTI.encode() + b"\xff", b"a", _training_documents()[1][:3000], b"tail\x80"]
  rows = bpe.pack_bpe_documents(docs, tokenizer, seq_len)
  assert rows.num_documents == 4 and rows.num_empty_skipped == 1
  examples = [rows[r] for r in range(len(rows))]
  for ex in examples:
    assert set(ex) == set(packing.EXAMPLE_KEYS) | {"target_bytes"}
    for key, value in ex.items():
      assert value.shape == (seq_len,), key
    assert ex["target_bytes"].dtype == np.int32
    assert (ex["target_bytes"][ex["loss_mask"] == 0] == 0).all()
    assert (ex["target_bytes"][ex["loss_mask"] > 0] >= 1).all()
  total_target_bytes = sum(int(ex["target_bytes"].sum()) for ex in examples)
  nonempty = [d for d in docs if d]
  # Every byte once, plus 1 per EOS target: the byte layout's denominator exactly.
  assert total_target_bytes == sum(map(len, nonempty)) + len(nonempty)
  assert total_target_bytes == packing.pack_documents(docs, 16).stats().num_target_tokens
  # The masked-in targets decode back to the documents, in order.
  stream = np.concatenate([ex["targets"][ex["loss_mask"] > 0] for ex in examples])
  pieces = np.split(stream, np.flatnonzero(stream == bpe.EOS_ID) + 1)[:-1]
  assert [tokenizer.decode(p) for p in pieces] == nonempty
  # Positions restart at 0 (BOS) for every document.
  first = examples[0]
  assert first["inputs"][0] == bpe.BOS_ID and first["positions"][0] == 0


def test_pipeline_bpe_layout(tmp_path):
  from configs import base
  from hnet.data import pipeline, sources

  corpus_dir = tmp_path / "corpus"
  corpus_dir.mkdir()
  for i, doc in enumerate(_training_documents()[0].split(b"\n\n")[:40]):
    (corpus_dir / f"doc{i:02d}.txt").write_bytes(doc + b"\xff")
  data_config = base.get_config().data
  data_config.source, data_config.path, data_config.layout = "files", str(corpus_dir), "bpe"
  data_config.eval_fraction = 0.1
  with data_config.unlocked():
    data_config.bpe_tokenizer = str(tmp_path / "run" / bpe.TOKENIZER_FILE)
    data_config.bpe_vocab_size = 300
  assert "bpe" in pipeline.LAYOUTS
  batches = list(pipeline.make_dataset(data_config, "eval", seq_len=16, global_batch_size=2,
                                       repeat=False))
  assert os.path.exists(data_config.bpe_tokenizer)  # trained on "train", saved for reuse
  tokenizer = bpe.BPETokenizer.load(data_config.bpe_tokenizer)
  assert tokenizer.vocab_size == 300
  eval_docs = [d for d in sources.load_documents(data_config, "eval") if d]
  total = sum(int((b["target_bytes"] * (b["loss_mask"] > 0)).sum()) for b in batches)
  assert total == sum(map(len, eval_docs)) + len(eval_docs)
  assert batches[0]["target_bytes"].shape == (2, 16)
  assert all(int(b["inputs"].max()) < tokenizer.vocab_size for b in batches)
