"""What the Hugging Face export tests share (tests/test_export_*.py): a small local
corpus, a shrunk config trained with the project's own loop and exported, the trained
and the exported model loaded back, and the tools run in their own processes."""
from __future__ import annotations

import importlib
import os
import pathlib
import subprocess
import sys
import types
from typing import Sequence

import numpy as np

from hnet.testing import subprocess_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOGIT_ATOL = 1e-4  # the issues' bound; float32 matmuls in torch and XLA sum in other orders
SHAKESPEARE = [
    "ROMEO: But soft, what light through yonder window breaks? It is the east. ",
    "JULIET: O Romeo, Romeo, wherefore art thou Romeo? Deny thy father. ",
    "HAMLET: To be, or not to be, that is the question. Whether 'tis nobler. ",
    "Of man's first disobedience, and the fruit of that forbidden tree. ",
    "All the world's a stage, and all the men and women merely players. ",
]
PROMPTS = [b"ROMEO:", b"To be, or not", b"All the world"]  # rows of different lengths


def write_corpus(directory: pathlib.Path, sentences: Sequence[str] = SHAKESPEARE,
                 documents: int = 20, sentences_per_document: int = 24) -> str:
  """`documents` text files of sentences drawn with a fixed seed; returns the directory."""
  rng = np.random.default_rng(0)
  for i in range(documents):
    text = "".join(sentences[j] for j in rng.integers(0, len(sentences), sentences_per_document))
    (directory / f"doc{i:02d}.txt").write_bytes(text.encode())
  return str(directory)


def shrink(module_name: str, corpus: str, steps: int, *, data: dict | None = None,
           lr: float = 1e-2, warmup_steps: int = 5, **model):
  """configs/<module_name>.py on the local corpus, trained `steps` steps of 8 rows with one
  checkpoint at the end, its model fields updated by `model`."""
  config = importlib.import_module(f"configs.{module_name}").get_config()
  config.data.update(source="files", path=corpus, eval_fraction=0.2, **(data or {}))
  config.train.update(steps=steps, batch_size=8, warmup_steps=warmup_steps, log_every=steps,
                      eval_every=0, eval_batches=2, lr=lr)
  config.checkpoint.update(every=steps, async_save=False)
  config.mesh.data = -1
  config.model.update(model)
  return config


def train_and_export(tmp_path_factory, name: str, config, **extra) -> types.SimpleNamespace:
  """Trains `config` (hnet/loop.py) and exports its last checkpoint to `<name>_hf` (a
  distinct directory name per export: transformers names remote modules after it).

  It trains on one of the 8 simulated devices: partitioning every program 8 ways costs
  the fixtures about a third of their time (the 2-stage H-Net's 24 s -> 34 s), and the
  sharded loop has tests of its own (tests/test_train_loop.py). Its initial state is built
  op by op (eager_init): one init program per fixture's model would take 2-4 s to compile."""
  import jax
  from hnet import loop
  from hnet.export import export_run
  root = tmp_path_factory.mktemp(name)
  workdir, hf_dir = str(root / "run"), str(root / f"{name}_hf")
  loop.run(config, workdir, devices=jax.devices()[:1], eager_init=True)
  result = export_run(workdir, hf_dir)
  return types.SimpleNamespace(name=name, workdir=workdir, hf=hf_dir, export=result,
                               config=config, **extra)


def jax_model(workdir: str):
  """(the run's model at its last checkpoint, that step)."""
  from hnet.runs import load_model
  model, _, step = load_model(workdir)
  return model, step


def hf_model(hf_dir: str, *, seq2seq: bool = False, trust_remote_code: bool = True, **overrides):
  """The export loaded by transformers' Auto class, in eval mode."""
  from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM
  auto = AutoModelForSeq2SeqLM if seq2seq else AutoModelForCausalLM
  return auto.from_pretrained(hf_dir, trust_remote_code=trust_remote_code, **overrides).eval()


def until_eos(ids, eos: int, pad: int) -> list[int]:
  """A generated row up to its first EOS; padding may only follow it."""
  ids = list(ids)
  ids = ids[:ids.index(eos)] if eos in ids else ids
  assert pad not in ids
  return ids


def run_tool(args: Sequence[str], timeout: int = 600, text: bool = True):
  """`python tools/<...>` in its own process from the project root on one CPU device."""
  env = subprocess_env()
  proc = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True,
                        text=text, timeout=timeout)
  assert proc.returncode == 0, proc.stderr[-2000:]
  return proc
