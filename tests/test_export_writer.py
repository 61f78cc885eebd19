"""hnet/export/writer.py, family.py and tokenizer.py: the HF directory format (sharded
safetensors and their index), the seam's checks, and the byte tokenizer against
hnet.bytes (with the real `tokenizers` and transformers)."""
import json

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from hnet import bytes as hbytes
from hnet.export import family, tokenizer as export_tokenizer, writer


def test_weights_shard_above_the_limit_and_read_back(tmp_path):
  rng = np.random.default_rng(0)
  tensors = {f"layer.{i}.weight": rng.standard_normal((16, 8)).astype(np.float32) for i in range(5)}
  names = writer.write_weights(tmp_path, tensors, max_shard_bytes=2 * 16 * 8 * 4)  # 2 tensors a shard
  assert names[-1] == writer.INDEX_NAME and len(names) == 4  # 3 shards + index
  index = json.loads((tmp_path / writer.INDEX_NAME).read_text())
  assert index["metadata"]["total_size"] == 5 * 16 * 8 * 4
  assert set(index["weight_map"]) == set(tensors)
  back = writer.read_tensors(tmp_path)
  assert set(back) == set(tensors)
  for name, value in tensors.items():
    np.testing.assert_array_equal(back[name], value)


def test_single_file_below_the_limit(tmp_path):
  tensors = {"a": np.arange(6, dtype=np.float32).reshape(2, 3)}
  assert writer.write_weights(tmp_path, tensors) == [writer.WEIGHTS_NAME]
  np.testing.assert_array_equal(writer.read_tensors(tmp_path)["a"], tensors["a"])


def test_pickle_weights_are_refused(tmp_path):
  (tmp_path / "pytorch_model.bin").write_bytes(b"not loaded")
  with pytest.raises(family.ExportError, match="pytorch_model.bin are pickle files"):
    writer.read_tensors(tmp_path)


def test_config_check_names_the_first_differing_field():
  with pytest.raises(family.ExportError, match="first differing field 'num_hidden_layers'"):
    family.check_config({"hidden_size": 32, "num_hidden_layers": 2, "vocab_size": 264},
                        {"hidden_size": 32, "num_hidden_layers": 3, "vocab_size": 300})


def test_tensor_check_names_missing_and_extra():
  with pytest.raises(family.ExportError, match=r"missing tensor\(s\): b.*extra tensor\(s\): c"):
    family.check_tensor_names({"a": (1,), "b": (2,)}, {"a": np.zeros(1), "c": np.zeros(2)})


def test_flatten_unflatten_round_trip():
  params = {"layers": {0: {"w": np.ones(2)}, 1: {"w": np.zeros(2)}}, "embed": {"e": np.ones(3)}}
  flat = family.flatten_params(params)
  assert set(flat) == {"layers/0/w", "layers/1/w", "embed/e"}
  back = family.unflatten_params(flat)
  assert set(back["layers"]) == {0, 1}


@pytest.fixture(scope="module")
def byte_tokenizer_dir(tmp_path_factory):
  out = tmp_path_factory.mktemp("byte_tokenizer")
  spec = export_tokenizer.byte_spec(add_bos=True, add_eos=False, max_length=256, sentinels=False)
  for name, text in spec.files.items():
    (out / name).write_text(text)
  from transformers import AutoTokenizer
  return AutoTokenizer.from_pretrained(str(out))


@settings(max_examples=200, deadline=None)
@given(text=st.text())
def test_byte_tokenizer_ids_are_hnet_bytes(byte_tokenizer_dir, text):
  tok = byte_tokenizer_dir
  assert tok(text, add_special_tokens=False).input_ids == hbytes.encode(text).tolist()
  assert tok(text).input_ids == hbytes.encode(text, add_bos=True).tolist()
  assert tok.decode(hbytes.encode(text, add_bos=True, add_eos=True), skip_special_tokens=True) == text


def test_byte_tokenizer_keeps_special_names_in_text_as_bytes(byte_tokenizer_dir):
  text = "a <eos> b <bos><pad><extra_id_0>"
  assert byte_tokenizer_dir(text, add_special_tokens=False).input_ids == list(text.encode())


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=64))
def test_byte_tokenizer_decodes_invalid_utf8_as_hnet_bytes(byte_tokenizer_dir, data):
  ids = hbytes.encode(data, add_bos=True)  # raw bytes: the ids are the bytes themselves
  assert ids[1:].tolist() == list(data)
  assert byte_tokenizer_dir.decode(ids, skip_special_tokens=True) == hbytes.decode(ids)
