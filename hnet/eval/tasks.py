"""Multiple-choice tasks and their scorer (downstream accuracy, clean vs noised).

  Example(context: bytes, choices: tuple[bytes, ...], label: int)

  make_cloze_examples(documents, num_examples=..., ...)  -> list[Example]
      held-out text: a context ending at a word (or sentence) boundary, its true
      continuation, and K-1 distractor continuations cut from other places of the corpus.
  load_hellaswag_jsonl(path)                              -> list[Example]
  score_choices(logprob_fn, examples, normalize=..., batch_size=..., noise=...) -> accuracy

`logprob_fn(contexts: list[bytes], continuations: list[bytes]) -> np.ndarray [n]` gives
the summed log-probability of each continuation given its context; callers wrap their
model into it (nothing here imports a model). The choice is the argmax over the
example's choices of log p (normalize="none") or log p / continuation bytes
(normalize="bytes", the default: per-byte, tokenizer independent, so byte and BPE
models are scored alike). Ties go to the lowest index.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
from typing import Callable, Sequence

import numpy as np

from hnet.eval import noise as noise_lib

LogprobFn = Callable[[list[bytes], list[bytes]], np.ndarray]

_WHITESPACE = np.array([ord(c) for c in " \t\n\r\x0b\x0c"], np.uint8)
_SENTENCE_END = np.array([ord(c) for c in ".!?"], np.uint8)


@dataclasses.dataclass(frozen=True)
class Example:
  context: bytes
  choices: tuple[bytes, ...]
  label: int  # index of the right choice

  def __post_init__(self):
    if not 0 <= self.label < len(self.choices):
      raise ValueError(f"label {self.label} outside {len(self.choices)} choices")


# ------------------------------------------------------------------------ cloze task

def _boundaries(doc: bytes, boundary: str) -> np.ndarray:
  """Positions p where a continuation may start: doc[p] is whitespace, doc[p-1] is not
  (word), and for "sentence" doc[p-1] also ends a sentence (. ! ?). [n] int64."""
  data = np.frombuffer(doc, np.uint8)
  if len(data) < 2:
    return np.zeros(0, np.int64)
  is_space = np.isin(data, _WHITESPACE)
  ok = is_space[1:] & ~is_space[:-1]
  if boundary == "sentence":
    ok &= np.isin(data[:-1], _SENTENCE_END)
  elif boundary != "word":
    raise ValueError(f"boundary must be 'word' or 'sentence', got {boundary!r}")
  return np.flatnonzero(ok) + 1


def _utf8_start(doc: bytes, index: int, limit: int) -> int:
  """Moves index forward past UTF-8 continuation bytes (at most up to limit)."""
  while index < limit and 0x80 <= doc[index] < 0xC0:
    index += 1
  return index


def _continuation(doc: bytes, start: int, length: int, slack: int) -> bytes:
  """doc[start:end] with end the word boundary nearest start + length (within +-slack),
  else start + length moved back to a UTF-8 character start."""
  target = start + length
  lo, hi = max(start + 1, target - slack), min(len(doc), target + slack)
  window = np.frombuffer(doc[lo:hi + 1], np.uint8)
  spaces = np.flatnonzero(np.isin(window, _WHITESPACE)) + lo
  if len(spaces):
    end = int(spaces[np.argmin(np.abs(spaces - target))])
  else:
    end = min(target, len(doc))
    while start + 1 < end < len(doc) and 0x80 <= doc[end] < 0xC0:
      end -= 1
  return doc[start:end]


def make_cloze_examples(documents: Sequence[bytes], *, num_examples: int,
                        context_bytes: int = 256, continuation_bytes: int = 32,
                        num_choices: int = 4, length_slack: int = 4,
                        boundary: str = "word", seed: int = 0,
                        max_tries: int = 50) -> list[Example]:
  """Cloze multiple choice cut from held-out documents; deterministic under `seed`.

  Each example: a cut point p (a `boundary`; the continuation starts with the
  whitespace at p). Context = the up to `context_bytes` bytes before p (its start
  moved to just after a whitespace within the first quarter, else to a UTF-8 character
  start; at least context_bytes // 2 bytes). True continuation = doc[p:end], end the
  word boundary nearest p + continuation_bytes (within +-length_slack). Distractors are
  cut the same way at boundaries of other documents (or far-away places of the same
  one), have lengths within length_slack of the true one and all choices differ. The
  label is uniform over the K positions. Cut points are never reused. Fewer than
  num_examples come back only when the corpus runs out of cut points.
  """
  rng = np.random.default_rng(seed)
  documents = [bytes(d) for d in documents]
  min_context = max(1, context_bytes // 2)
  cut_points = []
  for doc in documents:
    points = _boundaries(doc, boundary)
    cut_points.append(points[(points >= min_context)
                             & (points + continuation_bytes <= len(doc))])
  anywhere = [_boundaries(doc, "word") for doc in documents]
  weights = np.array([len(p) for p in cut_points], np.float64)
  any_weights = np.array([len(p) for p in anywhere], np.float64)
  if weights.sum() == 0 or any_weights.sum() == 0:
    return []
  used: set[tuple[int, int]] = set()
  examples = []
  for _ in range(num_examples * max_tries):
    if len(examples) == num_examples or len(used) >= weights.sum():
      break
    doc_index = int(rng.choice(len(documents), p=weights / weights.sum()))
    cut = int(rng.choice(cut_points[doc_index]))
    if (doc_index, cut) in used:
      continue
    used.add((doc_index, cut))
    doc = documents[doc_index]
    start = max(0, cut - context_bytes)
    first_quarter = doc[start:start + max(1, context_bytes // 4)]
    spaces = np.flatnonzero(np.isin(np.frombuffer(first_quarter, np.uint8), _WHITESPACE))
    if start > 0 and len(spaces):
      start += int(spaces[0]) + 1
    else:
      start = _utf8_start(doc, start, cut)
    context = doc[start:cut]
    truth = _continuation(doc, cut, continuation_bytes, length_slack)
    choices = [truth]
    for _ in range(max_tries * num_choices):
      if len(choices) == num_choices:
        break
      other = int(rng.choice(len(documents), p=any_weights / any_weights.sum()))
      at = int(rng.choice(anywhere[other]))
      if other == doc_index and abs(at - cut) < context_bytes + continuation_bytes:
        continue
      candidate = _continuation(documents[other], at, len(truth), length_slack)
      if abs(len(candidate) - len(truth)) <= length_slack and candidate not in choices:
        choices.append(candidate)
    if len(choices) < num_choices:
      continue
    label = int(rng.integers(num_choices))
    choices[0], choices[label] = choices[label], choices[0]
    examples.append(Example(context, tuple(choices), label))
  return examples


# -------------------------------------------------------------------------- HellaSwag

def _hellaswag_clean(text: str) -> str:
  """The lm-evaluation-harness HellaSwag preprocessing (WikiHow artefacts removed)."""
  text = text.strip().replace(" [title]", ". ")
  text = re.sub(r"\[.*?\]", "", text)
  return text.replace("  ", " ")


def load_hellaswag_jsonl(path: str | os.PathLike, *, limit: int | None = None,
                         preprocess: bool = True) -> list[Example]:
  """HellaSwag-format jsonl -> Examples. One JSON object per line with `ctx` (or
  `ctx_a` + `ctx_b`), `endings` (the choices) and `label` (int or digit string).

  As in lm-evaluation-harness: context = activity_label + ": " + ctx_a + " " +
  ctx_b.capitalize() when those fields exist (else `ctx`), each choice = " " + ending;
  with preprocess, " [title]" becomes ". " and other [bracketed] markers are dropped.
  Lines without a label (the test split) raise ValueError.
  """
  examples = []
  with open(path, encoding="utf-8") as f:
    for line_number, line in enumerate(f, 1):
      if not line.strip():
        continue
      record = json.loads(line)
      if "ctx_a" in record:
        ctx_b = record.get("ctx_b", "")
        context = record["ctx_a"] + (" " + ctx_b.capitalize() if ctx_b else "")
      else:
        context = record["ctx"]
      if record.get("activity_label"):
        context = record["activity_label"] + ": " + context
      label = record.get("label", "")
      if label == "" or label is None:
        raise ValueError(f"{path}:{line_number}: no label")
      endings = list(record["endings"])
      if preprocess:
        context, endings = _hellaswag_clean(context), [_hellaswag_clean(e) for e in endings]
      endings = [" " + e for e in endings]
      examples.append(Example(context.encode("utf-8"),
                              tuple(e.encode("utf-8") for e in endings), int(label)))
      if limit is not None and len(examples) >= limit:
        break
  return examples


# ---------------------------------------------------------------------------- scoring

def noised_example(example: Example, noise: str, level: float, seed: int, index: int,
                   noise_choices: bool = True) -> Example:
  """The example with noise applied to its context (and choices), deterministic in
  (seed, index): one Generator per example, used for the context, then each choice."""
  rng = np.random.default_rng([seed, index])
  fn = noise_lib.NOISES[noise]
  context = fn(example.context, level, rng)
  choices = tuple(fn(c, level, rng) if noise_choices else c for c in example.choices)
  return Example(context, choices, example.label)


def predict_choices(logprob_fn: LogprobFn, examples: Sequence[Example], *,
                    normalize: str = "bytes", batch_size: int = 64) -> tuple[np.ndarray,
                                                                              list[np.ndarray]]:
  """-> predicted index [N] and each example's choice scores (after normalisation).

  batch_size = (context, continuation) pairs per logprob_fn call.
  """
  if normalize not in ("bytes", "none"):
    raise ValueError(f"normalize must be 'bytes' or 'none', got {normalize!r}")
  pairs = [(ex.context, choice) for ex in examples for choice in ex.choices]
  logprobs = []
  for start in range(0, len(pairs), batch_size):
    batch = pairs[start:start + batch_size]
    values = np.asarray(logprob_fn([c for c, _ in batch], [x for _, x in batch]), np.float64)
    if values.shape != (len(batch),):
      raise ValueError(f"logprob_fn returned shape {values.shape}, expected ({len(batch)},)")
    logprobs.append(values)
  flat = np.concatenate(logprobs) if logprobs else np.zeros(0)
  predictions, scores, at = [], [], 0
  for ex in examples:
    values = flat[at:at + len(ex.choices)]
    at += len(ex.choices)
    if normalize == "bytes":
      values = values / np.maximum([len(c) for c in ex.choices], 1)
    scores.append(values)
    predictions.append(int(np.argmax(values)))
  return np.asarray(predictions, np.int64), scores


def score_choices(logprob_fn: LogprobFn, examples: Sequence[Example], *,
                  normalize: str = "bytes", batch_size: int = 64, noise: str | None = None,
                  noise_level: float = 0.1, noise_seed: int = 0,
                  noise_choices: bool = True) -> float:
  """Accuracy of argmax-choice prediction (module docstring).

  noise: a name in hnet.eval.noise.NOISES, applied at `noise_level` to every context
  and (noise_choices) every choice, deterministic in noise_seed and the example index.
  """
  if not examples:
    raise ValueError("no examples to score")
  if noise is not None:
    examples = [noised_example(ex, noise, noise_level, noise_seed, i, noise_choices)
                for i, ex in enumerate(examples)]
  predictions, _ = predict_choices(logprob_fn, examples, normalize=normalize,
                                   batch_size=batch_size)
  labels = np.array([ex.label for ex in examples])
  return float(np.mean(predictions == labels))
