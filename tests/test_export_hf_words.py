"""Hugging Face export / import of HAT, Learn Your Tokens and Byte2Word (hnet/export/
word_models.py, remote code in hnet/export/remote/{hat,word_pooled,words}), against the
real transformers and torch (CPU).

Each family is trained for a few steps with the project's own loop (hnet/loop.py) on a
small local corpus, in a shrunk config, once per module; then exported with export_run.
Measured figures are printed: run with -s to see them.
"""
import importlib
import json
import os
import pathlib
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from hnet.testing import forward_logits
from tests.export_helpers import (LOGIT_ATOL, PROMPTS, ROOT, hf_model, jax_model,
                                  run_tool, shrink, train_and_export as _train_and_export,
                                  write_corpus)

# Rows of different lengths with the splitter's late boundaries (HTTPSe, an incomplete
# then complete multi-byte character), camelCase, whitespace runs and a long word.
LOGIT_ROWS = PROMPTS + [b"JULIET: O Romeo, Romeo, wherefore art thou",
                        "HTTPServer parseHTTPSe  中文 naïve\n\tx".encode(),
                        b"a" * 40 + b" end"]
NEW_BYTES = 64


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  return write_corpus(tmp_path_factory.mktemp("export_words_corpus"))


def _shrunk(module_name: str, corpus: str, steps: int, **model):
  return shrink(module_name, corpus, steps, data=dict(seq_len=64, words_per_row=32,
                                                      rare_max_count=-1), **model)


@pytest.fixture(scope="module")
def hat_run(corpus, tmp_path_factory):
  """HAT with a sliding window of 8, grouped-query encoder heads and a decoder narrower
  than the encoder (the decoder input projection)."""
  config = _shrunk("hat_tiny", corpus, 60, encoder_dim=32, encoder_layers=2, encoder_heads=4,
                   encoder_kv_heads=2, encoder_mlp_dim=64, window=8, dim=48, num_layers=2,
                   num_heads=4, num_kv_heads=4, mlp_dim=96, decoder_dim=24, decoder_layers=2,
                   decoder_heads=2, decoder_kv_heads=1, decoder_mlp_dim=48, pooling_heads=2,
                   max_word_len=16)
  config.data.bytes_per_word = 16
  return _train_and_export(tmp_path_factory, "hat", config)


@pytest.fixture(scope="module")
def lyt_run(corpus, tmp_path_factory):
  config = _shrunk("lyt_tiny", corpus, 60, byte_dim=32, dim=48, num_layers=2, num_heads=4,
                   num_kv_heads=2, mlp_dim=96, decoder_layers=2, decoder_heads=4,
                   decoder_mlp_dim=64, pooling_layers=1, pooling_heads=4, max_word_len=16)
  config.data.bytes_per_word = 16
  return _train_and_export(tmp_path_factory, "lyt", config)


@pytest.fixture(scope="module")
def byte2word_run(corpus, tmp_path_factory):
  config = _shrunk("byte2word_tiny", corpus, 60, byte_dim=32, dim=48, num_layers=2,
                   num_heads=4, num_kv_heads=4, mlp_dim=96, decoder_layers=1, decoder_heads=2,
                   decoder_mlp_dim=64, pooling_heads=2, max_word_len=16)
  config.data.bytes_per_word = 16
  return _train_and_export(tmp_path_factory, "byte2word", config)


FAMILIES = ["hat_run", "lyt_run", "byte2word_run"]


def _jax_model(run):
  return jax_model(run.workdir)


def _hf_model(run):
  return hf_model(run.hf)


def _tokenizer(run, padding_side="right"):
  from transformers import AutoTokenizer
  tokenizer = AutoTokenizer.from_pretrained(run.hf, trust_remote_code=True)
  tokenizer.padding_side = padding_side
  return tokenizer


def hf_and_jax_logits(run, rows=LOGIT_ROWS, padding_side="right"):
  """(HF logits, JAX logits, real-position mask), both in the HF batch's columns."""
  import torch
  from hnet.testing import word_layout_batch
  model, _ = _jax_model(run)
  hf = _hf_model(run)
  enc = _tokenizer(run, padding_side)([r.decode() for r in rows], return_tensors="pt",
                                      padding=True)
  with torch.no_grad():
    theirs = hf(**enc).logits.numpy()
  mask = enc["attention_mask"].numpy().astype(bool)
  length = int(mask.sum(1).max())
  Lw = int(run.config.data.bytes_per_word)
  batch = word_layout_batch([[r] for r in rows], length, num_words=length, word_len=Lw)
  ours = forward_logits(model, batch)
  ours_cols = np.zeros_like(theirs)
  for b in range(len(rows)):
    columns = np.flatnonzero(mask[b])
    ours_cols[b, columns] = ours[b, :len(columns)]
    assert np.array_equal(np.asarray(batch["inputs"])[b, :len(columns)],
                          enc["input_ids"].numpy()[b, columns])
  return theirs, ours_cols, mask


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_hf_logits_equal_jax_logits(family, request):
  run = request.getfixturevalue(family)
  theirs, ours, real = hf_and_jax_logits(run)
  diff = float(np.max(np.abs(theirs - ours)[real]))
  print(f"\n{run.name}: {run.export['architecture']}: max |HF - JAX| logits = {diff:.3g} "
        f"over {int(real.sum())} positions, rows of lengths {real.sum(1).tolist()}")
  assert diff < LOGIT_ATOL
  theirs_left, _, real_left = hf_and_jax_logits(run, padding_side="left")
  for b in range(len(LOGIT_ROWS)):  # left padding gives the same logits
    np.testing.assert_array_equal(theirs_left[b, real_left[b]], theirs[b, real[b]])


def _hf_greedy(run):
  hf = _hf_model(run)
  tokenizer = _tokenizer(run, padding_side="left")
  enc = tokenizer([p.decode() for p in PROMPTS], return_tensors="pt", padding=True)
  out = hf.generate(**enc, max_new_tokens=NEW_BYTES, do_sample=False)
  new = [row[enc["input_ids"].shape[1]:].tolist() for row in out]
  eos = tokenizer.eos_token_id
  return [bytes(r[:r.index(eos)] if eos in r else r) for r in new]


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_greedy_generate_equals_sample_tool(family, request):
  """transformers' greedy generate() == tools/sample.py --temperature=0 (its own process,
  on the exported run) for the same prompts, 64 new bytes, batched with prompts of
  different lengths (left-padded in transformers)."""
  run = request.getfixturevalue(family)
  theirs = _hf_greedy(run)
  proc = run_tool(["tools/sample.py", f"--workdir={run.workdir}", "--temperature=0",
                   f"--max_new_bytes={NEW_BYTES}"] + [f"--prompt={p.decode()}" for p in PROMPTS],
                  text=False)
  printed = proc.stdout.decode("utf-8", "replace")
  print(f"\n{run.name}: " + " | ".join(repr(t[:40]) for t in theirs))
  for prompt, new in zip(PROMPTS, theirs):
    assert len(new) >= NEW_BYTES
    assert (prompt + new).decode("utf-8", "replace") in printed


def _params(workdir):
  from flax import nnx
  from hnet.export.family import flatten_params
  model, step = jax_model(workdir)
  return step, flatten_params(nnx.to_pure_dict(nnx.state(model, nnx.Param)))


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_round_trip_is_bit_identical(family, request, tmp_path):
  """JAX -> HF -> JAX: the import of the export gives the very parameters of the run
  (HAT through tools/import_hf.py in its own process, the others through
  hnet.export.import_run, which the tool calls)."""
  from hnet.export import import_run
  run = request.getfixturevalue(family)
  imported = str(tmp_path / "imported")
  if family == "hat_run":
    run_tool(["tools/import_hf.py", f"--hf={run.hf}", f"--config={run.workdir}/config.json",
              f"--workdir={imported}"])
  else:
    import_run(run.hf, os.path.join(run.workdir, "config.json"), imported)
  step_a, params_a = _params(run.workdir)
  step_b, params_b = _params(imported)
  assert step_a == step_b and set(params_a) == set(params_b)
  for name in params_a:
    assert params_a[name].dtype == params_b[name].dtype
    assert np.array_equal(params_a[name], params_b[name]), name


FRESH_PROCESS = textwrap.dedent("""
    import json, os, sys
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    # no path entry is the project or holds its package (the venv may live beside it)
    assert not any(os.path.exists(os.path.join(p, "hnet", "__init__.py")) for p in sys.path), sys.path
    assert os.path.realpath("{root}") not in map(os.path.realpath, sys.path), sys.path
    try:
      import hnet
      raise SystemExit("hnet is importable: the test must run outside the project")
    except ImportError:
      pass
    results = []
    for hf_dir in sys.argv[2:]:
      model = AutoModelForCausalLM.from_pretrained(hf_dir, trust_remote_code=True).eval()
      tokenizer = AutoTokenizer.from_pretrained(hf_dir, trust_remote_code=True)
      enc = tokenizer(json.loads(sys.argv[1]), return_tensors="pt", padding=True)
      with torch.no_grad():
        logits = model(**enc).logits
      results.append({{"logits": logits.tolist(), "mask": enc["attention_mask"].tolist()}})
    print(json.dumps(results))
""")


@pytest.mark.slow
def test_exports_load_in_a_fresh_process_outside_the_project(request, tmp_path):
  """All three exports, copied out of the project, loaded one after another by one fresh
  Python whose path holds nothing of the project (one torch + transformers start-up)."""
  runs = [request.getfixturevalue(family) for family in FAMILIES]
  copies = []
  for run in runs:  # distinct directory names: transformers names remote modules after them
    copies.append(tmp_path / pathlib.Path(run.hf).name)
    shutil.copytree(run.hf, copies[-1])
  script = tmp_path / "load.py"
  script.write_text(FRESH_PROCESS.format(root=ROOT))
  env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "XLA_FLAGS")}
  env.update(HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "modules"))
  rows = [r.decode() for r in LOGIT_ROWS]
  proc = subprocess.run([sys.executable, str(script), json.dumps(rows), *map(str, copies)],
                        cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  outs = json.loads(proc.stdout.strip().splitlines()[-1])
  assert len(outs) == len(runs)
  for run, out in zip(runs, outs):
    theirs, real = np.asarray(out["logits"]), np.asarray(out["mask"]).astype(bool)
    _, ours, _ = hf_and_jax_logits(run)
    assert float(np.max(np.abs(theirs - ours)[real])) < LOGIT_ATOL, run.name


@pytest.mark.slow
def test_hat_config_uses_tfree_hat_field_names(hat_run):
  config = json.loads((pathlib.Path(hat_run.hf) / "config.json").read_text())
  assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_hnet_hat.HnetHATForCausalLM"
  for part in ("encoder_config", "backbone_config", "decoder_config"):
    for field in ("hidden_size", "num_hidden_layers", "num_attention_heads",
                  "num_key_value_heads", "intermediate_size", "rms_norm_eps", "rope_theta",
                  "sliding_window", "mlp_bias", "is_neox_style"):
      assert field in config[part], (part, field)
  cross = config["decoder_config"]["cross_attention_config"]
  assert set(cross) >= {"hidden_size", "hidden_size_q", "hidden_size_kv", "num_attention_heads",
                        "attention_num_kv_heads", "word_window_size"}
  assert config["max_word_size"] == 16 and config["sliding_window"] == 8
  assert config["encoder_config"]["num_key_value_heads"] == 2
  assert config["hnet_decoder_input_proj"] is True
  assert "TFree-HAT" in (pathlib.Path(hat_run.hf) / "README.md").read_text()


@pytest.mark.slow
def test_export_ships_the_projects_splitter(hat_run):
  source = pathlib.Path(ROOT, "hnet", "text", "splitter.py").read_bytes()
  assert (pathlib.Path(hat_run.hf) / "splitter.py").read_bytes() == source


# ------------------------------------------------------------------------------ splitter

def _remote_module(run, name):
  """A module of the export's remote code, as transformers imported it."""
  hf = _hf_model(run)
  return importlib.import_module(sys.modules[type(hf).__module__].__package__ + "." + name)


@pytest.mark.slow
def test_exported_splitter_equals_the_projects_on_the_embedded_corpus(hat_run):
  """The splitter transformers runs for the HAT export splits every document of the
  embedded corpus (both splits) into the words hnet/text/splitter.py gives, at the
  export's max_word_size."""
  from hnet.data import corpus
  from hnet.text import splitter
  theirs = _remote_module(hat_run, "splitter")
  assert theirs.__file__ != splitter.__file__
  documents = corpus.embedded_documents("train") + corpus.embedded_documents("eval")
  size = json.loads((pathlib.Path(hat_run.hf) / "config.json").read_text())["max_word_size"]
  words = 0
  for document in documents:
    expected = splitter.split(document, size)
    assert theirs.split(document, size) == expected
    words += len(expected)
  print(f"\nsplitter: {len(documents)} documents, {sum(map(len, documents)):,} bytes, "
        f"{words:,} words equal")


def _reference_row(data: bytes, word_len: int):
  """hnet's word layout of one document (BOS + data): word_index, byte_in_word,
  open_word_index (hnet/testing.py word_layout_batch, built with hnet's splitter)."""
  from hnet.testing import word_layout_batch
  n = len(data) + 1
  batch = word_layout_batch([[data]], n + 1, n + 2, word_len)
  return [batch[k][0, :n].tolist() for k in ("word_index", "byte_in_word", "open_word_index")]


@pytest.mark.slow
def test_exported_word_layout_equals_the_projects_on_the_property_test_inputs(hat_run):
  """The export's word layout (splitter words, in-word slots and the open word after each
  byte, which decides what every byte may read) equals hnet's on the splitter property
  tests' inputs (tests/test_splitter.py strategies) and expected cases."""
  from hypothesis import given, settings
  import test_splitter
  layers = _remote_module(hat_run, "hnet_word_layers")
  splitter_copy = _remote_module(hat_run, "splitter")
  from hnet.text import splitter

  def check(data: bytes, size: int):
    word_index, byte_in_word, open_word, _ = layers._row_words([257] + list(data), size)
    assert [word_index, byte_in_word, open_word] == _reference_row(data, size), data
    assert splitter_copy.split(data, size) == splitter.split(data, size)

  for text, _ in test_splitter.EXPECTED:
    if text:
      check(text.encode(), 100)
  check(b"ab\xe4\xb8X HTTPSe \xff", 4)

  @settings(max_examples=300, deadline=None)
  @given(test_splitter.any_input, test_splitter.sizes)
  def property_inputs(data, size):
    if data:
      check(data, size)
  property_inputs()


def _fresh_export(name: str, **model):
  """A freshly initialised (untrained) model of configs/<name>.py -> (config, FamilyExport)."""
  import jax
  from flax import nnx
  from hnet.export import word_models
  from hnet.models import build_model
  config = importlib.import_module(f"configs.{name}").get_config()
  config.model.update(model)
  model = build_model(config.model, nnx.Rngs(0))
  params = jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(model, nnx.Param)))
  return config, word_models.to_hf(params, config.model)


@pytest.mark.parametrize("name", ["hat_tiny", "lyt_tiny", "byte2word_tiny"])
def test_import_names_the_first_differing_field_and_missing_tensors(name):
  from hnet.export import word_models
  from hnet.export.family import ExportError
  config, export = _fresh_export(name, num_layers=1)
  params = word_models.from_hf(export.tensors, export.config, config.model)
  assert set(params) >= {"embed", "backbone", "pooling", "head"}
  other = config.model.copy_and_resolve_references()
  other.num_layers = 2
  with pytest.raises(ExportError, match="backbone_config"):
    word_models.from_hf(export.tensors, export.config, other)
  tensors = dict(export.tensors)
  tensors.pop("lm_head.weight")
  with pytest.raises(ExportError, match="missing tensor.*lm_head.weight"):
    word_models.from_hf(tensors, export.config, config.model)
