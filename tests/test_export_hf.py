"""Hugging Face export / import of the byte Transformer, the BPE Transformer and ByT5
(hnet/export), against the real transformers and torch (CPU).

Each family is trained for a few steps with the project's own loop (hnet/loop.py) on a
small local corpus, in a shrunk config, once per module; then exported with export_run.
Measured figures (max |HF logits - JAX logits| over the real positions) are printed:
run with -s to see them. Every test that takes a run fixture is marked slow: the first
one to use a fixture trains it (20-60 s of CPU for each of the four).
"""
import json
import os
import pathlib
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from hnet.testing import forward_logits, subprocess_env

from tests.export_helpers import (LOGIT_ATOL, PROMPTS, ROOT, SHAKESPEARE as TEXT, hf_model, jax_model, run_tool,
                                  shrink as _shrunk, train_and_export as _train_and_export,
                                  until_eos as _until_eos, write_corpus)

NEW_TOKENS = 64


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  return write_corpus(tmp_path_factory.mktemp("export_corpus"))


@pytest.fixture(scope="module")
def byte_run(corpus, tmp_path_factory):
  """Byte Transformer, grouped-query heads (4 query, 2 kv), untied head: Llama."""
  config = _shrunk("transformer_tiny", corpus, 100, dim=32, num_layers=2, num_heads=4,
                   num_kv_heads=2, mlp_dim=64)
  config.data.seq_len = 64
  return _train_and_export(tmp_path_factory, "byte", config)


@pytest.fixture(scope="module")
def window_run(corpus, tmp_path_factory):
  """Byte Transformer with a sliding window of 8 and tied embeddings: Mistral."""
  config = _shrunk("transformer_tiny", corpus, 30, dim=32, num_layers=2, num_heads=2,
                   num_kv_heads=1, mlp_dim=64, window=8, tie_embeddings=True)
  config.data.seq_len = 64
  return _train_and_export(tmp_path_factory, "window", config)


@pytest.fixture(scope="module")
def bpe_run(corpus, tmp_path_factory):
  config = _shrunk("bpe_tiny", corpus, 150, dim=32, num_layers=2, num_heads=4, num_kv_heads=4,
                   mlp_dim=64)
  config.data.bpe_vocab_size = 320  # model.vocab_size follows (a FieldReference)
  config.data.seq_len = 24
  return _train_and_export(tmp_path_factory, "bpe", config)


@pytest.fixture(scope="module")
def byt5_run(corpus, tmp_path_factory):
  config = _shrunk("byt5_tiny", corpus, 60, dim=32, num_encoder_layers=2, num_decoder_layers=2,
                   num_heads=4, head_dim=8, mlp_dim=64, rel_buckets=8, rel_max_distance=20)
  config.data.update(seq_len=64, decoder_seq_len=32)
  return _train_and_export(tmp_path_factory, "byt5", config)


FAMILIES = ["byte_run", "bpe_run", "byt5_run", "window_run"]


def _jax_model(run):
  return jax_model(run.workdir)


def _hf_model(run, trust_remote_code=None):
  import torch
  torch.manual_seed(0)
  encoder_decoder = run.config.model.name == "byt5"
  trust = encoder_decoder if trust_remote_code is None else trust_remote_code
  return hf_model(run.hf, seq2seq=encoder_decoder, trust_remote_code=trust)


def _tokenizer(run, padding_side="right"):
  from transformers import AutoTokenizer
  tokenizer = AutoTokenizer.from_pretrained(run.hf)
  tokenizer.padding_side = padding_side
  return tokenizer


def _decoder_batch(run, texts):
  """Right-padded rows of different lengths: HF input + the same batch for our model."""
  enc = _tokenizer(run)([t.decode() for t in texts], return_tensors="np", padding=True)
  ids, mask = enc["input_ids"].astype(np.int32), enc["attention_mask"].astype(np.int32)
  positions = np.where(mask > 0, np.arange(ids.shape[1])[None], 0).astype(np.int32)
  return ids, mask, {"inputs": ids, "segment_ids": mask, "positions": positions}


def _byt5_batch():
  from hnet import generate as hgenerate
  sources = [b"To be, or <X> to be", b"Hi <X>", b"All the world's a <X>, and all the men"]
  enc = hgenerate.source_batch([hgenerate.source_ids(s, "span_corruption") for s in sources])
  decoder = np.array([[257, 259, 84, 104, 101, 32, 119], [257, 259, 97, 256, 256, 256, 256],
                      [257, 259, 115, 116, 97, 103, 101]], np.int32)
  mask = (decoder != 256).astype(np.int32)
  positions = np.where(mask > 0, np.arange(decoder.shape[1])[None], 0).astype(np.int32)
  batch = {**enc, "decoder_inputs": decoder, "segment_ids": mask, "positions": positions}
  return enc, decoder, mask, batch


def hf_and_jax_logits(run):
  """(HF logits, JAX logits, mask of the real positions) on rows of different lengths."""
  import torch
  model, _ = _jax_model(run)
  hf = _hf_model(run)
  if run.config.model.name == "byt5":
    enc, decoder, mask, batch = _byt5_batch()
    with torch.no_grad():
      theirs = hf(input_ids=torch.tensor(enc["encoder_inputs"]),
                  attention_mask=torch.tensor(enc["encoder_segment_ids"]),
                  decoder_input_ids=torch.tensor(decoder),
                  decoder_attention_mask=torch.tensor(mask)).logits.numpy()
  else:
    ids, mask, batch = _decoder_batch(run, PROMPTS + [b"JULIET: O Romeo, Romeo, wherefore art thou"])
    with torch.no_grad():
      theirs = hf(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()
  ours = forward_logits(model, batch)
  return theirs, ours, mask.astype(bool)


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_hf_logits_equal_jax_logits(family, request):
  run = request.getfixturevalue(family)
  theirs, ours, real = hf_and_jax_logits(run)
  assert theirs.shape == ours.shape
  diff = float(np.max(np.abs(theirs - ours)[real]))
  print(f"\n{run.name}: {run.export['architecture']}: max |HF - JAX| logits = {diff:.3g} "
        f"over {int(real.sum())} positions, rows of lengths {real.sum(1).tolist()}")
  assert diff < LOGIT_ATOL


def _jax_greedy(run, model):
  from hnet import generate as hgenerate
  if run.config.model.name == "byt5":
    return hgenerate.generate_from_source(model, [b"To be, or <X> to be", b"All the <X> a stage"],
                                          max_new_bytes=NEW_TOKENS, objective="span_corruption",
                                          temperature=0).texts
  if run.config.data.layout == "bpe":
    from hnet.eval.scoring import bpe_tokenizer
    return hgenerate.generate_bpe(model, PROMPTS, bpe_tokenizer(run.config),
                                  max_new_tokens=NEW_TOKENS, temperature=0)
  return hgenerate.generate(model, PROMPTS, max_new_bytes=NEW_TOKENS, temperature=0)


def _hf_greedy(run):
  import torch
  from hnet import generate as hgenerate
  hf = _hf_model(run)
  if run.config.model.name == "byt5":
    sources = [b"To be, or <X> to be", b"All the <X> a stage"]
    enc = hgenerate.source_batch([hgenerate.source_ids(s, "span_corruption") for s in sources])
    start = torch.tensor([[257, 259]] * len(sources))  # BOS + the first sentinel, as generate.py
    out = hf.generate(input_ids=torch.tensor(enc["encoder_inputs"]),
                      attention_mask=torch.tensor(enc["encoder_segment_ids"]),
                      decoder_input_ids=start, max_new_tokens=NEW_TOKENS, do_sample=False)
    rows = [row[1:].tolist() for row in out]  # drop BOS; keep the first sentinel
    return [hgenerate._render(np.asarray(_until_eos(r, 258, 256)), hgenerate.SPAN_MARKER) for r in rows]
  tokenizer = _tokenizer(run, padding_side="left")
  enc = tokenizer([p.decode() for p in PROMPTS], return_tensors="pt", padding=True)
  out = hf.generate(**enc, max_new_tokens=NEW_TOKENS, do_sample=False)
  new = [row[enc["input_ids"].shape[1]:].tolist() for row in out]
  eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
  if run.config.data.layout == "bpe":
    from hnet.eval.scoring import bpe_tokenizer
    return [bpe_tokenizer(run.config).decode(_until_eos(r, eos, pad)) for r in new]
  return [bytes(_until_eos(r, eos, pad)) for r in new]


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_greedy_generate_equals_hnet_sampling(family, request):
  """transformers' greedy generate() == hnet/generate.py at temperature 0 (what
  tools/sample.py --temperature=0 runs) for the same prompts, 64 new tokens, batched
  with prompts of different lengths (left-padded in transformers)."""
  run = request.getfixturevalue(family)
  model, _ = _jax_model(run)
  ours, theirs = _jax_greedy(run, model), _hf_greedy(run)
  print(f"\n{run.name}: " + " | ".join(repr(t[:40]) for t in ours))
  assert theirs == ours
  assert all(len(t) >= NEW_TOKENS for t in ours) or run.config.model.name == "byt5"


def _params(workdir):
  from hnet.export import restore_run
  from hnet.export.family import flatten_params
  setup, state, step = restore_run(workdir, None)
  return setup, state, step, flatten_params(state["params"])


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_round_trip_is_bit_identical_with_equal_bpb(family, request, tmp_path):
  from hnet.export import held_out_bpb, import_run
  run = request.getfixturevalue(family)
  imported = str(tmp_path / "imported")
  result = import_run(run.hf, os.path.join(run.workdir, "config.json"), imported)
  assert result["step"] == run.export["step"]
  setup_a, state_a, step_a, params_a = _params(run.workdir)
  setup_b, state_b, step_b, params_b = _params(imported)
  assert step_a == step_b and set(params_a) == set(params_b)
  for name in params_a:
    assert params_a[name].dtype == params_b[name].dtype
    assert np.array_equal(params_a[name], params_b[name]), name
  bpb_a = held_out_bpb(run.workdir, setup_a, state_a, step_a, use_summary=False)["bpb"]
  bpb_b = held_out_bpb(imported, setup_b, state_b, step_b, use_summary=False)["bpb"]
  print(f"\n{run.name}: held-out bpb original {bpb_a:.6f}, re-imported {bpb_b:.6f}")
  assert bpb_a == bpb_b


@pytest.mark.slow
def test_import_cli_gives_a_run_that_sample_tool_and_init_from_accept(byte_run, tmp_path):
  """tools/import_hf.py on the export, then tools/sample.py --temperature=0 on the
  imported run (each in its own process): it prints what transformers' greedy
  generate() gives; train.init_from reads every parameter of the imported run."""
  import jax
  from hnet import checkpoint
  from hnet.train import abstract_model
  from flax import nnx
  imported = str(tmp_path / "imported")
  run_tool(["tools/import_hf.py", f"--hf={byte_run.hf}", f"--config={byte_run.workdir}/config.json",
            f"--workdir={imported}"], timeout=300)
  proc = run_tool(["tools/sample.py", f"--workdir={imported}", "--temperature=0",
                   f"--max_new_bytes={NEW_TOKENS}"] + [f"--prompt={p.decode()}" for p in PROMPTS],
                  timeout=300)
  for prompt, new in zip(PROMPTS, _hf_greedy(byte_run)):
    assert (prompt + new).decode("utf-8", "replace") in proc.stdout
  abstract = nnx.to_pure_dict(nnx.state(abstract_model(byte_run.config.model), nnx.Param))
  copied, missing = checkpoint.load_params(imported, jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), abstract))
  assert not missing and len(copied) == len(jax.tree.leaves(abstract))


@pytest.mark.slow  # trains its run fixture when run alone
def test_native_exports_need_no_remote_code(byte_run, bpe_run, window_run):
  for run, arch in ((byte_run, "LlamaForCausalLM"), (bpe_run, "LlamaForCausalLM"),
                    (window_run, "MistralForCausalLM")):
    config = json.loads((pathlib.Path(run.hf) / "config.json").read_text())
    assert config["architectures"] == [arch] and "auto_map" not in config
    assert not list(pathlib.Path(run.hf).glob("*.py"))
    _hf_model(run, trust_remote_code=False)  # loads without remote code


@pytest.mark.slow  # trains its run fixture when run alone
def test_byt5_export_is_remote_code_and_says_why(byt5_run):
  config = json.loads((pathlib.Path(byt5_run.hf) / "config.json").read_text())
  assert config["auto_map"]["AutoModelForSeq2SeqLM"].startswith("modeling_hnet_byt5.")
  assert config["decoder_start_token_id"] == 257
  card = (pathlib.Path(byt5_run.hf) / "README.md").read_text()
  assert "1/sqrt(d_kv)" in card and "untied" in card
  hf = _hf_model(byt5_run)
  assert hf.lm_head.weight.data_ptr() != hf.shared.weight.data_ptr()


FRESH_PROCESS = textwrap.dedent("""
    import json, os, sys
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer
    # the venv may live inside the project (.venv); nothing else of it may be on the path
    outside = [p for p in sys.path if "site-packages" not in p]
    assert not any(os.path.realpath(p or ".").startswith("{root}") for p in outside), sys.path
    try:
      import hnet
      raise SystemExit("hnet is importable: the test must run outside the project")
    except ImportError:
      pass
    ids = json.loads(sys.argv[1])
    out = {{}}
    for hf_dir, encoder_decoder in json.loads(sys.argv[2]):
      auto = AutoModelForSeq2SeqLM if encoder_decoder else AutoModelForCausalLM
      model = auto.from_pretrained(hf_dir, trust_remote_code=encoder_decoder).eval()
      tokenizer = AutoTokenizer.from_pretrained(hf_dir, trust_remote_code=encoder_decoder)
      assert len(tokenizer) == 264
      with torch.no_grad():
        if encoder_decoder:
          logits = model(input_ids=torch.tensor([ids]), decoder_input_ids=torch.tensor([[257, 259]])).logits
        else:
          logits = model(input_ids=torch.tensor([[257] + ids])).logits
      out[hf_dir] = logits[0, -1].tolist()
    print(json.dumps(out))
""")


def _last_logits(run, ids):
  from hnet import generate as hgenerate
  model, _ = _jax_model(run)
  if run.config.model.name == "byt5":
    enc = hgenerate.source_batch([np.asarray(ids, np.int32)])
    batch = {**enc, "decoder_inputs": np.array([[257, 259]], np.int32),
             "segment_ids": np.ones((1, 2), np.int32), "positions": np.arange(2)[None].astype(np.int32)}
  else:
    ids = [257] + ids
    batch = {"inputs": np.asarray([ids], np.int32), "segment_ids": np.ones((1, len(ids)), np.int32),
             "positions": np.arange(len(ids))[None].astype(np.int32)}
  return forward_logits(model, batch)[0, -1]


@pytest.mark.slow
def test_exports_load_in_a_fresh_process_outside_the_project(byte_run, byt5_run, tmp_path):
  """A Python process started in an empty directory, PYTHONPATH cleared, hnet not
  importable: the native byte export and the ByT5 export (remote code) load and give
  our logits."""
  runs = {str(tmp_path / run.name): run for run in (byte_run, byt5_run)}
  for copy, run in runs.items():
    shutil.copytree(run.hf, copy)  # no path back into the project or its tmp dirs
  script = tmp_path / "load.py"
  script.write_text(FRESH_PROCESS.format(root=ROOT))
  ids = list(b"To be, or not")
  env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "XLA_FLAGS")}
  env["HF_HUB_OFFLINE"] = "1"
  dirs = [[copy, run.config.model.name == "byt5"] for copy, run in runs.items()]
  proc = subprocess.run([sys.executable, str(script), json.dumps(ids), json.dumps(dirs)],
                        cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=300,
                        stdin=subprocess.DEVNULL)
  assert proc.returncode == 0, proc.stderr[-3000:]
  theirs = json.loads(proc.stdout.strip().splitlines()[-1])
  for copy, run in runs.items():
    diff = float(np.max(np.abs(np.asarray(theirs[copy]) - _last_logits(run, ids))))
    assert diff < LOGIT_ATOL, (run.name, diff)


@pytest.mark.slow  # trains its run fixture when run alone
def test_sharded_export_loads_in_transformers(byte_run, tmp_path):
  import torch
  from transformers import AutoModelForCausalLM
  from hnet.export import export_run, writer
  out = tmp_path / "sharded"
  export_run(byte_run.workdir, str(out), max_shard_bytes=16 * 1024)
  index = json.loads((out / writer.INDEX_NAME).read_text())
  shards = sorted(set(index["weight_map"].values()))
  assert len(shards) > 1 and not (out / writer.WEIGHTS_NAME).exists()
  sharded = AutoModelForCausalLM.from_pretrained(str(out)).eval()
  single = _hf_model(byte_run)
  ids = torch.tensor([list(b"ROMEO: what")])
  with torch.no_grad():
    assert torch.equal(sharded(input_ids=ids).logits, single(input_ids=ids).logits)


@pytest.mark.slow  # trains its run fixture when run alone
def test_model_card_states_config_steps_and_bpb(byte_run):
  card = (pathlib.Path(byte_run.hf) / "README.md").read_text()
  summary = json.loads((pathlib.Path(byte_run.workdir) / "summary.json").read_text())
  assert f"Training steps: {byte_run.export['step']}" in card
  assert f"{summary['eval']['bpb']:.4f}" in card
  assert '"num_kv_heads": 2' in card and "AutoModelForCausalLM" in card


@pytest.mark.slow  # trains its run fixture when run alone
def test_bpe_tokenizer_export_gives_the_runs_ids(bpe_run):
  from hnet.data import bpe
  from hnet.eval.scoring import bpe_tokenizer
  ours = bpe_tokenizer(bpe_run.config)
  theirs = _tokenizer(bpe_run)
  for text in TEXT + ["naïve café <|eos|> 😀", ""]:
    assert theirs(text, add_special_tokens=False).input_ids == ours.encode(text).tolist()
    assert theirs(text).input_ids == [bpe.BOS_ID] + ours.encode(text).tolist()
    assert theirs.decode(ours.encode(text)) == text


# ------------------------------------------------------------------------------ errors

@pytest.mark.slow  # trains its run fixture when run alone
def test_export_of_a_workdir_without_checkpoints_says_so(byte_run, tmp_path):
  from hnet.export import ExportError, export_run
  workdir = tmp_path / "untrained"
  workdir.mkdir()
  shutil.copy(os.path.join(byte_run.workdir, "config.json"), workdir / "config.json")
  with pytest.raises(ExportError, match="holds no checkpoint"):
    export_run(str(workdir), str(tmp_path / "out"))
  with pytest.raises(ExportError, match="not a run directory"):
    export_run(str(tmp_path / "nothing"), str(tmp_path / "out"))


@pytest.mark.slow  # trains its run fixture when run alone
def test_export_of_a_family_not_yet_exportable_lists_the_exportable(byte_run, tmp_path,
                                                                      monkeypatch):
  """Every family may become exportable: the test takes one away (FAMILIES is the table
  export_run reads) and exports a run of it."""
  from hnet.export import FAMILIES, ExportError, export_run
  monkeypatch.delitem(FAMILIES, "transformer")
  with pytest.raises(ExportError, match="'transformer' is not exportable yet; exportable "
                                        "families") as info:
    export_run(byte_run.workdir, str(tmp_path / "out"))
  assert all(name in str(info.value) for name in FAMILIES)


@pytest.mark.slow  # trains its run fixture when run alone
def test_import_with_another_config_names_the_first_differing_field(byte_run, tmp_path):
  from hnet.export import ExportError, import_run
  config = byte_run.config.copy_and_resolve_references()
  config.model.num_layers = 3
  with pytest.raises(ExportError, match="first differing field 'num_hidden_layers'.* has 2"):
    import_run(byte_run.hf, config, str(tmp_path / "imported"))
  config = byte_run.config.copy_and_resolve_references()
  config.model.window = 16
  with pytest.raises(ExportError, match="first differing field 'architectures'"):
    import_run(byte_run.hf, config, str(tmp_path / "imported"))


@pytest.mark.slow  # trains its run fixture when run alone
def test_import_with_missing_or_extra_tensors_names_them(byte_run, tmp_path):
  from safetensors.numpy import load_file, save_file
  from hnet.export import ExportError, import_run
  hf = tmp_path / "hf"
  shutil.copytree(byte_run.hf, hf)
  tensors = load_file(str(hf / "model.safetensors"))
  del tensors["model.layers.1.mlp.up_proj.weight"]
  tensors["model.layers.2.mlp.up_proj.weight"] = np.zeros((64, 32), np.float32)
  save_file(tensors, str(hf / "model.safetensors"), metadata={"format": "pt"})
  with pytest.raises(ExportError, match=r"missing tensor\(s\): model.layers.1.mlp.up_proj.weight; "
                                        r"extra tensor\(s\): model.layers.2.mlp.up_proj.weight"):
    import_run(str(hf), byte_run.config.copy_and_resolve_references(), str(tmp_path / "imported"))


@pytest.mark.slow  # trains its run fixture when run alone
def test_import_refuses_a_workdir_with_checkpoints(byte_run):
  from hnet.export import ExportError, import_run
  with pytest.raises(ExportError, match="already holds checkpoints"):
    import_run(byte_run.hf, byte_run.config.copy_and_resolve_references(), byte_run.workdir)


# ------------------------------------------------------------------------------ conventions

@pytest.mark.parametrize("bidirectional", [True, False])
@pytest.mark.parametrize("buckets,max_distance", [(32, 128), (8, 20)])
def test_relative_position_buckets_equal_transformers_t5(bidirectional, buckets, max_distance):
  import torch
  from transformers.models.t5.modeling_t5 import T5Attention
  from hnet.layers.relative_position import relative_position_bucket
  relative = np.arange(-3000, 3001)
  ours = np.asarray(relative_position_bucket(relative, bidirectional=bidirectional,
                                             num_buckets=buckets, max_distance=max_distance))
  theirs = T5Attention._relative_position_bucket(torch.tensor(relative), bidirectional=bidirectional,
                                                 num_buckets=buckets, max_distance=max_distance)
  np.testing.assert_array_equal(ours, theirs.numpy())


def test_training_path_does_not_import_torch():
  code = ("import sys; import hnet.main, hnet.loop, hnet.train, hnet.runs, hnet.export, "
          "hnet.export.llama, hnet.export.t5, hnet.export.tokenizer; "
          "bad = [m for m in ('torch', 'transformers') if m in sys.modules]; "
          "sys.exit(f'imported {bad}' if bad else 0)")
  env = subprocess_env()
  proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr[-2000:]
