"""Hugging Face export / import of MrT5 (hnet/export/mrt5.py, remote code in
hnet/export/remote/mrt5/), against the real transformers and torch (CPU).

A shrunk MrT5 (span corruption, standardised gate, softmax1 after the gate) is trained
for a few steps with the project's own loop once per module, then exported. Measured
figures are printed: run with -s to see them.
"""
import json
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
from flax import nnx
import pytest

from hnet.testing import forward
from tests.export_helpers import (LOGIT_ATOL, ROOT, hf_model, jax_model, run_tool, shrink,
                                  train_and_export, write_corpus)

SPAN_SOURCES = [b"To be, or <X> to be", b"Hi <X>",
                b"All the world's a <X>, and all the men and <X> merely players."]
PREFIX_SOURCES = [b"ROMEO: But soft,", b"To be, or not", b"All the world's a stage, and all"]
NEW_BYTES = 64
GATE_TENSORS = {"encoder.delete_gate.layer_norm.weight", "encoder.delete_gate.weight",
                "encoder.delete_gate.bias"}


@pytest.fixture(scope="module")
def mrt5_run(tmp_path_factory):
  corpus = write_corpus(tmp_path_factory.mktemp("export_mrt5_corpus"))
  config = shrink("mrt5_tiny", corpus, 60, data=dict(seq_len=64, decoder_seq_len=32), dim=32,
                  num_encoder_layers=3, num_decoder_layers=2, num_heads=4, head_dim=8,
                  mlp_dim=64, rel_buckets=8, rel_max_distance=20, gate_layer=2)
  return train_and_export(tmp_path_factory, "mrt5", config)


def _jax_model(run):
  return jax_model(run.workdir)


def _hf_model(run):
  return hf_model(run.hf, seq2seq=True)


def _batch(sources=SPAN_SOURCES, objective="span_corruption"):
  """Sources of different lengths and teacher-forced decoder rows of different lengths."""
  from hnet import generate as hgenerate
  enc = hgenerate.source_batch([hgenerate.source_ids(s, objective) for s in sources])
  decoder = np.array([[257, 259, 84, 104, 101, 32, 119], [257, 259, 97, 256, 256, 256, 256],
                      [257, 259, 115, 116, 97, 103, 101]], np.int32)[:len(sources)]
  mask = (decoder != 256).astype(np.int32)
  positions = np.where(mask > 0, np.arange(decoder.shape[1])[None], 0).astype(np.int32)
  batch = {**enc, "decoder_inputs": decoder, "segment_ids": mask, "positions": positions}
  return enc, decoder, mask, batch


def _hf_outputs(hf, enc, decoder, mask, hard):
  import torch
  with torch.no_grad():
    return hf(input_ids=torch.tensor(enc["encoder_inputs"]),
              attention_mask=torch.tensor(enc["encoder_segment_ids"]),
              decoder_input_ids=torch.tensor(decoder), decoder_attention_mask=torch.tensor(mask),
              hard_deletion=hard)


@pytest.mark.slow
@pytest.mark.parametrize("hard", [False, True], ids=["soft", "hard"])
def test_hf_logits_and_deletion_ratio_equal_jax(mrt5_run, hard):
  import jax.numpy as jnp
  from hnet import generate as hgenerate
  from hnet.models import mrt5
  model, _ = _jax_model(mrt5_run)
  hf = _hf_model(mrt5_run)
  enc, decoder, mask, batch = _batch()
  out = _hf_outputs(hf, enc, decoder, mask, hard)
  jbatch = {k: jnp.asarray(v) for k, v in batch.items()}
  if hard:
    ours, encoded = mrt5.hard_deletion_forward(model, jbatch)
  else:
    ours, encoded = forward(model, jbatch).logits, nnx.jit(lambda m, b: m.encode(b))(model, jbatch)
  ours, theirs, real = np.asarray(ours), out.logits.numpy(), mask.astype(bool)
  diff = float(np.max(np.abs(theirs - ours)[real]))
  ratios = np.asarray(hgenerate.deletion_ratios(model, encoded, enc))
  their_ratios = out.deletion_ratio.numpy()
  memory = out.encoder_last_hidden_state.shape[1]
  print(f"\nmrt5 {'hard' if hard else 'soft'}: max |HF - JAX| logits = {diff:.3g} over "
        f"{int(real.sum())} positions; deletion ratio per row HF {their_ratios.round(4).tolist()}"
        f" JAX {ratios.round(4).tolist()}; memory slots HF {memory}, source lengths "
        f"{enc['encoder_segment_ids'].sum(1).tolist()}")
  assert diff < LOGIT_ATOL
  np.testing.assert_allclose(their_ratios, ratios, rtol=0, atol=1e-6)
  assert 0.0 < float(np.mean(ratios)) < 1.0, "the gate must delete some bytes, not all"
  if hard:  # the later layers really ran on the kept bytes only
    real_bytes = enc["encoder_segment_ids"].sum(1)
    kept = np.rint((1 - ratios) * real_bytes).astype(int)
    assert memory == kept.max() < enc["encoder_inputs"].shape[1]
    assert out.encoder_attention_mask.sum(1).tolist() == kept.tolist()
  batch_ratio = float(forward(model, jbatch).metrics["deletion_ratio"])  # ours, over the whole batch
  real_total = enc["encoder_segment_ids"].sum()
  assert abs(float((their_ratios * enc["encoder_segment_ids"].sum(1)).sum() / real_total)
             - batch_ratio) < 1e-6


def _hf_generate(run, sources, objective, hard):
  import torch
  from hnet import generate as hgenerate
  hf = _hf_model(run)
  enc = hgenerate.source_batch([hgenerate.source_ids(s, objective) for s in sources])
  start = [257, 259] if objective == "span_corruption" else [257]
  # This run was trained on span corruption: its generation_config lets sentinels through.
  # Continuing a source (prefix LM) never samples them, as hnet/generate.py.
  suppress = ({} if objective == "span_corruption" else
              {"suppress_tokens": [256, 257] + list(range(259, 264))})
  out = hf.generate(input_ids=torch.tensor(enc["encoder_inputs"]),
                    attention_mask=torch.tensor(enc["encoder_segment_ids"]),
                    decoder_input_ids=torch.tensor([start] * len(sources)), hard_deletion=hard,
                    max_new_tokens=NEW_BYTES, do_sample=False, **suppress)
  texts = []
  for row in out.tolist():
    new = row[len(start):]
    new = new[:new.index(258)] if 258 in new else new
    assert 256 not in new
    ids = np.asarray(start[1:] + new)
    texts.append(hgenerate._render(ids, hgenerate.SPAN_MARKER))
  return texts


def _sample_tool(run, sources, objective, hard):
  args = ["tools/sample.py", f"--workdir={run.workdir}", "--temperature=0",
          f"--max_new_bytes={NEW_BYTES}", f"--objective={objective}"]
  args += ["--hard_deletion"] * hard + [f"--prompt={s.decode()}" for s in sources]
  return run_tool(args, text=False).stdout.decode("utf-8", "replace")


@pytest.mark.slow
@pytest.mark.parametrize("objective,hard", [("span_corruption", False), ("prefix_lm", True)])
def test_greedy_generate_equals_sample_tool(mrt5_run, objective, hard):
  """transformers' greedy generate() == tools/sample.py --temperature=0 (its own process)
  on the same sources, batched with sources of different lengths."""
  sources = SPAN_SOURCES if objective == "span_corruption" else PREFIX_SOURCES
  theirs = _hf_generate(mrt5_run, sources, objective, hard)
  printed = _sample_tool(mrt5_run, sources, objective, hard)
  print(f"\nmrt5 {objective} {'hard' if hard else 'soft'}: "
        + " | ".join(repr(t[:40]) for t in theirs))
  for source, text in zip(sources, theirs):
    if objective == "prefix_lm":
      assert len(text) >= NEW_BYTES
      assert (source + text).decode("utf-8", "replace") in printed
    else:
      assert f"{text!r}\n" in printed


@pytest.mark.slow
@pytest.mark.parametrize("objective,hard", [("span_corruption", True), ("prefix_lm", False)])
def test_greedy_generate_equals_generate_from_source(mrt5_run, objective, hard):
  """The other two combinations, against hnet.generate.generate_from_source (what
  tools/sample.py runs) in this process."""
  from hnet import generate as hgenerate
  sources = SPAN_SOURCES if objective == "span_corruption" else PREFIX_SOURCES
  model, _ = _jax_model(mrt5_run)
  ours = hgenerate.generate_from_source(model, sources, max_new_bytes=NEW_BYTES,
                                        objective=objective, hard_deletion=hard,
                                        temperature=0).texts
  theirs = _hf_generate(mrt5_run, sources, objective, hard)
  assert theirs == ours
  if objective == "prefix_lm":
    assert all(len(t) >= NEW_BYTES for t in ours)


@pytest.mark.slow
def test_round_trip_is_bit_identical(mrt5_run, tmp_path):
  """JAX -> HF -> JAX through tools/import_hf.py: the very parameters of the run."""
  from flax import nnx
  from hnet.export.family import flatten_params
  imported = str(tmp_path / "imported")
  run_tool(["tools/import_hf.py", f"--hf={mrt5_run.hf}", f"--config={mrt5_run.workdir}/config.json",
            f"--workdir={imported}"])
  params = []
  for workdir in (mrt5_run.workdir, imported):
    model, step = jax_model(workdir)
    params.append((step, flatten_params(nnx.to_pure_dict(nnx.state(model, nnx.Param)))))
  (step_a, a), (step_b, b) = params
  assert step_a == step_b and set(a) == set(b)
  for name in a:
    assert a[name].dtype == b[name].dtype and np.array_equal(a[name], b[name]), name


@pytest.mark.slow
def test_shared_weights_load_into_t5_and_only_the_gate_is_new(mrt5_run):
  """T5ForConditionalGeneration.from_pretrained on the MrT5 export: every ByT5 weight
  loads by its name; the gate's three tensors are reported as unexpected, nothing is
  missing."""
  import torch
  from safetensors.numpy import load_file
  from transformers import T5Config, T5ForConditionalGeneration
  config = json.loads(open(os.path.join(mrt5_run.hf, "config.json")).read())
  t5_config = T5Config(**{k: config[k] for k in (
      "vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_decoder_layers", "num_heads",
      "relative_attention_num_buckets", "relative_attention_max_distance",
      "feed_forward_proj", "layer_norm_epsilon")}, tie_word_embeddings=False)
  model, info = T5ForConditionalGeneration.from_pretrained(mrt5_run.hf, config=t5_config,
                                                           output_loading_info=True)
  print(f"\nT5ForConditionalGeneration on the MrT5 export: unexpected {sorted(info['unexpected_keys'])},"
        f" missing {sorted(info['missing_keys'])}")
  assert set(info["unexpected_keys"]) == GATE_TENSORS
  assert not info["missing_keys"] and not info.get("mismatched_keys")
  tensors = load_file(os.path.join(mrt5_run.hf, "model.safetensors"))
  state = model.state_dict()
  for name, value in tensors.items():
    if name not in GATE_TENSORS:
      assert torch.equal(state[name], torch.from_numpy(value)), name


FRESH_PROCESS = textwrap.dedent("""
    import json, os, sys
    import torch
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer
    # no path entry is the project or holds its package (the venv may live beside it)
    assert not any(os.path.exists(os.path.join(p, "hnet", "__init__.py")) for p in sys.path), sys.path
    assert os.path.realpath("{root}") not in map(os.path.realpath, sys.path), sys.path
    try:
      import hnet
      raise SystemExit("hnet is importable: the test must run outside the project")
    except ImportError:
      pass
    hf_dir = sys.argv[1]
    model = AutoModelForSeq2SeqLM.from_pretrained(hf_dir, trust_remote_code=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(hf_dir, trust_remote_code=True)
    source = tokenizer(["To be, or not to be"], return_tensors="pt")
    with torch.no_grad():
      out = model(**source, decoder_input_ids=torch.tensor([[257, 259]]), hard_deletion=True)
    print(json.dumps({{"ids": source["input_ids"][0].tolist(), "logits": out.logits[0, -1].tolist(),
                      "ratio": float(out.deletion_ratio[0])}}))
""")


@pytest.mark.slow
def test_export_loads_in_a_fresh_process_outside_the_project(mrt5_run, tmp_path):
  import jax.numpy as jnp
  from hnet import generate as hgenerate
  from hnet.models import mrt5
  hf_copy = tmp_path / "hf"
  shutil.copytree(mrt5_run.hf, hf_copy)
  script = tmp_path / "load.py"
  script.write_text(FRESH_PROCESS.format(root=ROOT))
  env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "XLA_FLAGS")}
  env.update(HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "modules"))
  proc = subprocess.run([sys.executable, str(script), str(hf_copy)], cwd=str(tmp_path), env=env,
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = json.loads(proc.stdout.strip().splitlines()[-1])
  source_ids = hgenerate.source_ids(b"To be, or not to be", "prefix_lm").tolist() + [258]
  assert out["ids"] == source_ids  # the span-corruption tokenizer ends sources with EOS
  model, _ = _jax_model(mrt5_run)
  enc = hgenerate.source_batch([np.asarray(out["ids"], np.int32)])
  batch = {**enc, "decoder_inputs": np.array([[257, 259]], np.int32),
           "segment_ids": np.ones((1, 2), np.int32), "positions": np.arange(2)[None].astype(np.int32)}
  logits, encoded = mrt5.hard_deletion_forward(model, {k: jnp.asarray(v) for k, v in batch.items()})
  assert float(np.max(np.abs(np.asarray(out["logits"]) - np.asarray(logits)[0, -1]))) < LOGIT_ATOL
  assert abs(out["ratio"] - float(hgenerate.deletion_ratios(model, encoded, enc)[0])) < 1e-6


def test_import_names_the_first_differing_field_and_missing_tensors():
  import jax
  import configs.mrt5_tiny
  from flax import nnx
  from hnet.export import mrt5 as mrt5_export
  from hnet.export.family import ExportError
  from hnet.models import build_model
  config = configs.mrt5_tiny.get_config()
  config.model.update(dim=32, num_encoder_layers=3, num_decoder_layers=1, head_dim=8, mlp_dim=64)
  model = build_model(config.model, nnx.Rngs(0))
  params = jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(model, nnx.Param)))
  export = mrt5_export.to_hf(params, config.model)
  assert export.tensors["encoder.delete_gate.bias"].shape == (1,)
  back = mrt5_export.from_hf(export.tensors, export.config, config.model)
  assert back["gate"]["bias"].shape == () and back["gate"]["bias"] == params["gate"]["bias"]
  other = config.model.copy_and_resolve_references()
  other.gate_layer = 1
  with pytest.raises(ExportError, match="'gate_layer'"):
    mrt5_export.from_hf(export.tensors, export.config, other)
  tensors = {k: v for k, v in export.tensors.items() if k != "encoder.delete_gate.weight"}
  with pytest.raises(ExportError, match="missing tensor.*encoder.delete_gate.weight"):
    mrt5_export.from_hf(tensors, export.config, config.model)
  byt5 = config.model.copy_and_resolve_references()
  byt5.gate_layer = 0
  with pytest.raises(ExportError, match="no delete gate"):
    mrt5_export.to_hf(params, byt5)
