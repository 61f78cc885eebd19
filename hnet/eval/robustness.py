"""Spelling-noise robustness (MODELS.md section 6): bpb and multiple-choice accuracy of
trained models on clean vs noised held-out text, at several noise levels.

  settings = Settings(noises=("hat_mix", "antspeak"), levels=(0.05, 0.1, 0.2), seed=0)
  documents = held_out_documents(config, max_bytes=32768)
  tasks = {"cloze": make_cloze_examples(documents, num_examples=200, seed=0)}
  result = evaluate_model(model, config, documents=documents, tasks=tasks, settings=settings)
  results = {"settings": ..., "models": [result, ...]}
  write_results(results, out_dir)     # results.json, results.md, <metric>_<noise>.png

Metrics: "bpb" (bits per byte of the *noised* text, lower is better: the bytes counted
are the noised text's bytes) and one accuracy per task (higher is better; choices
scored by per-byte log-likelihood, hnet.eval.tasks.score_choices, with the noise applied
to the context and to every choice).

Reproducible: document i is noised with np.random.default_rng([seed, i]); task example
i with tasks.noised_example(..., seed, i); nothing else is random. The clean value is
measured once per model and stored apart from the levels; a level 0 in `levels` goes
through the noise path (k = 0 units perturbed) and must reproduce it.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Sequence

import numpy as np
from tqdm.auto import tqdm

from hnet.eval import noise as noise_lib
from hnet.eval import scoring, tasks as tasks_lib

LOWER_IS_BETTER = {"bpb"}
DEFAULT_NOISES = ("hat_mix", "all_caps", "antspeak", "char_drop", "random_case",
                  "char_repeat", "codespell_typos")
DEFAULT_LEVELS = (0.05, 0.1, 0.2, 0.4)


@dataclasses.dataclass(frozen=True)
class Settings:
  noises: Sequence[str] = DEFAULT_NOISES
  levels: Sequence[float] = DEFAULT_LEVELS
  seed: int = 0
  batch_size: int = 32
  normalize: str = "bytes"   # choice scores: per-byte log-likelihood (tasks.score_choices)

  def __post_init__(self):
    unknown = [n for n in self.noises if n not in noise_lib.NOISES]
    if unknown:
      raise ValueError(f"unknown noise(s) {unknown}; known: {sorted(noise_lib.NOISES)}")
    bad = [level for level in self.levels if not 0.0 <= level <= 1.0]
    if bad:
      raise ValueError(f"noise levels must lie in [0, 1], got {bad}")


def held_out_documents(config, *, max_bytes: int = 0, split: str | None = None) -> list[bytes]:
  """The run's held-out documents (data.eval_split), in order, cut to max_bytes in total
  (0 = all): whole documents while they fit, then the next one's first bytes."""
  from hnet.data import sources  # pylint: disable=g-import-not-at-top
  documents = sources.load_documents(config.data, split or config.data.eval_split)
  out, total = [], 0
  for doc in documents:
    doc = bytes(doc)
    if not doc:
      continue
    if max_bytes and total + len(doc) > max_bytes:
      if max_bytes - total > 0:
        out.append(doc[:max_bytes - total])
      break
    out.append(doc)
    total += len(doc)
  return out


def noised_documents(documents: Sequence[bytes], noise: str, level: float,
                     seed: int) -> list[bytes]:
  """Document i noised with np.random.default_rng([seed, i])."""
  fn = noise_lib.NOISES[noise]
  return [fn(bytes(doc), level, np.random.default_rng([seed, i]))
          for i, doc in enumerate(documents)]


def _measure(model, config, logprob_fn, documents, tasks, settings, noise, level) -> dict:
  """All metrics at one (noise, level); noise None = clean."""
  docs = documents if noise is None else noised_documents(documents, noise, level,
                                                         settings.seed)
  out = {"bpb": scoring.bpb_on_documents(model, config, docs, batch_size=settings.batch_size)}
  for name, examples in tasks.items():
    out[name] = tasks_lib.score_choices(
        logprob_fn, examples, normalize=settings.normalize, batch_size=4 * settings.batch_size,
        noise=noise, noise_level=level, noise_seed=settings.seed)
  return out


def evaluate_model(model, config, *, documents: Sequence[bytes],
                   tasks: dict[str, Sequence[tasks_lib.Example]], settings: Settings,
                   name: str = "model", progress: bool = True) -> dict:
  """One model: {"name", "family", "layout", "clean": {metric: value},
  "noised": {noise: {metric: [value per level]}}}."""
  logprob_fn = scoring.make_logprob_fn(model, config, batch_size=settings.batch_size)
  family = str(config.model.name)
  layout = str(config.data.get("layout", "bytes"))
  points = [(None, 0.0)] + [(n, level) for n in settings.noises for level in settings.levels]
  bar = tqdm(points, desc=f"robustness {name}", unit="setting", disable=not progress)
  clean, noised = None, {n: {} for n in settings.noises}
  for noise, level in bar:
    bar.set_postfix_str("clean" if noise is None else f"{noise}@{level:g}")
    values = _measure(model, config, logprob_fn, documents, tasks, settings, noise, level)
    if noise is None:
      clean = values
      continue
    for metric, value in values.items():
      noised[noise].setdefault(metric, []).append(value)
  bar.close()
  return {"name": name, "family": family, "layout": layout, "clean": clean, "noised": noised}


# ------------------------------------------------------------------------------ output

def _metrics(results: dict) -> list[str]:
  names = []
  for model in results["models"]:
    names += [m for m in model["clean"] if m not in names]
  return names


def _fmt(value: float, metric: str) -> str:
  return f"{value:.4f}" if metric in LOWER_IS_BETTER else f"{100 * value:.1f}"


def markdown_table(results: dict) -> str:
  """One table per metric: a row per (model, noise); columns clean, then each level."""
  levels = list(results["settings"]["levels"])
  lines = []
  for metric in _metrics(results):
    unit = "bits per byte of the noised text, lower is better" if metric in LOWER_IS_BETTER \
        else "accuracy in %, higher is better"
    lines += [f"### {metric} ({unit})", "",
              "| model | noise | clean | " + " | ".join(f"{lv:g}" for lv in levels) + " |",
              "|---|---|---:|" + "---:|" * len(levels)]
    for model in results["models"]:
      clean = model["clean"][metric]
      for noise, values in model["noised"].items():
        cells = [_fmt(v, metric) for v in values[metric]]
        lines.append(f"| {model['name']} | {noise} | {_fmt(clean, metric)} | "
                     + " | ".join(cells) + " |")
    lines.append("")
  lines += _degradation_table(results)
  return "\n".join(lines)


def _degradation_table(results: dict) -> list[str]:
  """Change from clean at the largest level, averaged over the noises, per model."""
  levels = list(results["settings"]["levels"])
  if not levels:
    return []
  top = int(np.argmax(levels))
  metrics = _metrics(results)
  lines = [f"### Mean change from clean at level {levels[top]:g} (over the noises)", "",
           "| model | family | " + " | ".join(f"{m} change" for m in metrics) + " |",
           "|---|---|" + "---:|" * len(metrics)]
  for model in results["models"]:
    cells = []
    for metric in metrics:
      deltas = [values[metric][top] - model["clean"][metric]
                for values in model["noised"].values()]
      mean = float(np.mean(deltas)) if deltas else float("nan")
      cells.append(f"{mean:+.4f}" if metric in LOWER_IS_BETTER else f"{100 * mean:+.1f}")
    lines.append(f"| {model['name']} | {model['family']}/{model['layout']} | "
                 + " | ".join(cells) + " |")
  lines.append("")
  return lines


def plot_curves(results: dict, out_dir: str) -> list[str]:
  """One PNG per (noise, metric): score vs noise level (clean at 0), a curve per model."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  levels = list(results["settings"]["levels"])
  paths = []
  for noise in results["settings"]["noises"]:
    for metric in _metrics(results):
      fig, ax = plt.subplots(figsize=(5, 3.6), dpi=120)
      for model in results["models"]:
        xs, ys = [0.0], [model["clean"][metric]]
        for level, value in sorted(zip(levels, model["noised"][noise][metric])):
          if level > 0:
            xs.append(level)
            ys.append(value)
        ys = [100 * y for y in ys] if metric not in LOWER_IS_BETTER else ys
        ax.plot(xs, ys, marker="o", label=model["name"])
      ax.set_xlabel(f"{noise} noise level")
      ax.set_ylabel("bits per byte" if metric in LOWER_IS_BETTER else f"{metric} accuracy (%)")
      ax.set_title(f"{metric} under {noise}")
      ax.grid(alpha=0.3)
      ax.legend(fontsize=8)
      fig.tight_layout()
      path = os.path.join(out_dir, f"{metric}_{noise}.png")
      fig.savefig(path)
      plt.close(fig)
      paths.append(path)
  return paths


def write_results(results: dict, out_dir: str) -> dict[str, object]:
  """results.json, results.md and the plots into out_dir; -> their paths."""
  os.makedirs(out_dir, exist_ok=True)
  json_path = os.path.join(out_dir, "results.json")
  with open(json_path, "w") as f:
    json.dump(results, f, indent=2)
  md_path = os.path.join(out_dir, "results.md")
  with open(md_path, "w") as f:
    f.write("# Spelling-noise robustness\n\n" + markdown_table(results) + "\n")
  return {"json": json_path, "markdown": md_path, "plots": plot_curves(results, out_dir)}
