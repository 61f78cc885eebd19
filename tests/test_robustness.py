"""hnet/eval/robustness.py and tools/robustness.py: two tiny runs (byte Transformer and
BPE Transformer, trained a few steps here) through the tool end to end; the outputs
exist and agree with each other, with the train loop's own held-out bpb, and with a
rerun under the same seed."""
import json
import math
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from hnet import loop
from hnet.eval import robustness, scoring, tasks
from hnet.runs import load_model
from tests.test_scoring import tiny_config, write_corpus

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HELLASWAG = [
    {"activity_label": "Cooking", "ctx_a": "A man cracks two eggs into a bowl.",
     "ctx_b": "he", "endings": ["whisks them with a fork.", "paints the fence red.",
                                "swims across the lake.", "reads the newspaper aloud."],
     "label": 0},
    {"ctx": "The children put on their coats because", "endings": [
        "it was sunny and hot.", "it was cold outside.", "the soup was salty.",
        "the cat slept."], "label": "1"},
]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """{name: workdir} of a byte and a BPE Transformer trained 3 steps on a tiny corpus."""
  root = tmp_path_factory.mktemp("robust")
  corpus = write_corpus(str(root / "corpus"))
  out = {}
  for name, layout in (("bytes", "bytes"), ("bpe", "bpe")):
    config = tiny_config(corpus, layout)  # bpe: tokenizer saved in the run dir by the loop
    config.train.steps, config.train.warmup_steps, config.train.eval_every = 3, 1, 0
    config.checkpoint.every, config.checkpoint.async_save = 3, False
    workdir = str(root / name)
    loop.run(config, workdir, devices=jax.devices()[:1], eager_init=True)  # the sharded loop is tested elsewhere
    out[name] = workdir
  return out


@pytest.mark.slow  # the module's two tiny trainings take ~30 s
def test_bpe_run_keeps_its_tokenizer(runs):
  _, config, step = load_model(runs["bpe"])
  assert step == 3
  assert config.data.bpe_tokenizer == os.path.join(os.path.abspath(runs["bpe"]),
                                                   "bpe_tokenizer.json")
  assert os.path.exists(config.data.bpe_tokenizer)
  assert scoring.bpe_tokenizer(config).padded_vocab_size <= config.model.vocab_size


@pytest.mark.slow
def test_tool_end_to_end(runs, tmp_path):
  hellaswag = tmp_path / "hellaswag.jsonl"
  hellaswag.write_text("".join(json.dumps(r) + "\n" for r in HELLASWAG))
  out = tmp_path / "report"
  noises, levels = ["hat_mix", "antspeak"], [0.0, 0.3]
  command = [sys.executable, os.path.join(REPO, "tools", "robustness.py"),
             f"--workdirs={runs['bytes']},{runs['bpe']}", "--names=byte,bpe", f"--out={out}",
             f"--noises={','.join(noises)}", "--levels=0,0.3", "--max_bytes=0",
             "--cloze_examples=6", "--cloze_context_bytes=40",
             "--cloze_continuation_bytes=12", f"--hellaswag={hellaswag}", "--seed=3",
             "--batch_size=8"]
  done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  results = json.loads((out / "results.json").read_text())
  assert results["settings"]["levels"] == levels and results["settings"]["seed"] == 3
  assert results["settings"]["tasks"] == {"cloze": 6, "hellaswag": 2}
  assert [m["name"] for m in results["models"]] == ["byte", "bpe"]
  metrics = ["bpb", "cloze", "hellaswag"]
  for model in results["models"]:
    assert sorted(model["clean"]) == sorted(metrics)
    for noise in noises:
      for metric in metrics:
        values = model["noised"][noise][metric]
        assert len(values) == len(levels) and all(math.isfinite(v) for v in values)
        assert values[0] == model["clean"][metric]  # level 0 goes through the noise path
        if metric != "bpb":
          assert all(0.0 <= v <= 1.0 for v in values)
      assert model["noised"][noise]["bpb"][1] != model["clean"]["bpb"]
    # the tool's clean bpb over the whole held-out split is the loop's own evaluation
    summary = json.loads(open(os.path.join(model["workdir"], "summary.json")).read())
    np.testing.assert_allclose(model["clean"]["bpb"], summary["eval"]["bpb"], rtol=1e-5)
  for noise in noises:
    for metric in metrics:
      png = out / f"{metric}_{noise}.png"
      assert png.exists() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  table = (out / "results.md").read_text()
  for model in results["models"]:
    row = (f"| {model['name']} | hat_mix | {model['clean']['bpb']:.4f} | "
           f"{model['noised']['hat_mix']['bpb'][0]:.4f} | "
           f"{model['noised']['hat_mix']['bpb'][1]:.4f} |")
    assert row in table
  assert "### cloze" in table and "### hellaswag" in table
  # --reuse keeps every model whose settings, name, run and step match: nothing re-evaluated
  again = subprocess.run(command + ["--reuse"], cwd=REPO, capture_output=True, text=True,
                         timeout=600)
  assert again.returncode == 0, again.stderr[-3000:]
  assert again.stdout.count("reused from") == 2
  assert json.loads((out / "results.json").read_text()) == results


@pytest.mark.slow
def test_evaluate_model_is_seed_reproducible(runs):
  model, config, _ = load_model(runs["bytes"])
  documents = robustness.held_out_documents(config, max_bytes=1000)
  assert sum(map(len, documents)) == 1000
  examples = {"cloze": tasks.make_cloze_examples(documents, num_examples=4, context_bytes=40,
                                                 continuation_bytes=12, seed=0)}

  def run(seed):
    settings = robustness.Settings(noises=("char_drop",), levels=(0.0, 0.5), seed=seed,
                                   batch_size=8)
    return robustness.evaluate_model(model, config, documents=documents, tasks=examples,
                                     settings=settings, progress=False)
  first, again, other = run(0), run(0), run(1)
  assert first == again
  assert first["noised"]["char_drop"]["bpb"][0] == first["clean"]["bpb"]
  assert other["noised"]["char_drop"]["bpb"][1] != first["noised"]["char_drop"]["bpb"][1]
  # char_drop at 0.5 removes half of the eligible characters: bpb is over the noised bytes
  noised = robustness.noised_documents(documents, "char_drop", 0.5, 0)
  assert 400 < sum(map(len, noised)) < 900
  np.testing.assert_allclose(first["noised"]["char_drop"]["bpb"][1],
                             scoring.bpb_on_documents(model, config, noised), rtol=1e-6)


def test_settings_reject_bad_noise_and_level():
  with pytest.raises(ValueError, match="unknown noise"):
    robustness.Settings(noises=("no_such_noise",))
  with pytest.raises(ValueError, match=r"\[0, 1\]"):
    robustness.Settings(levels=(1.5,))


@pytest.mark.slow
def test_run_fingerprint_tells_retrained_runs_apart(runs, tmp_path):
  """--reuse keys results by run_fingerprint: a run trained again with another config at
  the same path and step must not be taken for the old one."""
  import shutil
  from hnet.runs import run_fingerprint
  _, _, step = load_model(runs["bytes"])
  copy = tmp_path / "run"
  shutil.copytree(runs["bytes"], copy)
  assert run_fingerprint(str(copy), step) == run_fingerprint(runs["bytes"], step)
  config = json.loads((copy / "config.json").read_text())
  config["train"]["lr"] *= 2
  (copy / "config.json").write_text(json.dumps(config))
  assert run_fingerprint(str(copy), step) != run_fingerprint(runs["bytes"], step)
