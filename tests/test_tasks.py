"""hnet/eval/tasks.py: cloze examples, HellaSwag loader, the multiple-choice scorer.

The scorer is driven by a real model: a byte-bigram language model estimated (add-one
smoothing) from the docstrings of a few standard-library modules.
"""
import collections
import functools
import inspect
import itertools
import json
import os
import re
import string
import textwrap

import numpy as np
import pytest

from hnet.eval import tasks
from hnet.eval.tasks import Example

HELD_OUT = [
    "The river was quiet in the early morning, and the fishermen were already out on the "
    "water with their nets.",
    "She opened the letter slowly and read it twice before she put it back on the table.",
    "In the afternoon the children went to the market to buy bread, cheese and apples.",
    "The old house at the end of the street had been empty for many years.",
    "When the train finally arrived, the station was full of people waiting in the rain.",
    "He said that the meeting would start at nine and that everyone should be there on time.",
    "The garden behind the school was planted with roses, tulips and other flowers.",
    "After dinner they talked about the weather, the harvest and the prices in the town.",
    "There is nothing more pleasant than a long walk in the hills on a warm summer evening.",
    "The teacher explained the problem again, and this time most of the students understood.",
    "A small boat was moving along the shore, and the sound of the engine carried far.",
    "They decided to leave the city and to live in the country where the air was clean.",
]


def _stdlib_documents():
  docs = []
  for module in (collections, functools, inspect, itertools, json, os, re, string, textwrap):
    for _, obj in sorted(vars(module).items()):
      doc = inspect.getdoc(obj) if callable(obj) else None
      if doc and len(doc) > 80:
        docs.append(doc.encode("utf-8"))
  return docs


@functools.lru_cache(maxsize=1)
def _bigram_logprobs():
  counts = np.ones([256, 256])
  for doc in _stdlib_documents():
    data = np.frombuffer(doc, np.uint8)
    np.add.at(counts, (data[:-1], data[1:]), 1)
  return np.log(counts / counts.sum(axis=1, keepdims=True))  # [prev, next]


def bigram_logprob_fn(contexts, continuations):
  table = _bigram_logprobs()
  out = []
  for context, continuation in zip(contexts, continuations):
    data = np.frombuffer(context[-1:] or b" ", np.uint8).tolist() + list(continuation)
    out.append(sum(table[a, b] for a, b in zip(data, data[1:])))
  return np.array(out)


def _planted_examples(seed=0):
  rng = np.random.default_rng(seed)
  examples = []
  for sentence in HELD_OUT:
    cut = sentence.index(" ", len(sentence) // 2)
    context, truth = sentence[:cut].encode(), sentence[cut:].encode()
    choices = [truth]
    while len(choices) < 4:  # same bytes, same length: only the order tells them apart
      choices.append(bytes(rng.permutation(np.frombuffer(truth, np.uint8)).tolist()))
    label = int(rng.integers(4))
    choices[0], choices[label] = choices[label], choices[0]
    examples.append(Example(context, tuple(choices), label))
  return examples


@pytest.mark.parametrize("normalize", ["bytes", "none"])
def test_planted_answer_ranked_first(normalize):
  examples = _planted_examples()
  accuracy = tasks.score_choices(bigram_logprob_fn, examples, normalize=normalize,
                                 batch_size=5)
  assert accuracy >= 0.9
  predictions, scores = tasks.predict_choices(bigram_logprob_fn, examples, batch_size=3)
  assert [int(np.argmax(s)) for s in scores] == predictions.tolist()


def test_normalization_changes_the_choice():
  example = Example(b"He walked to the end of", (b" xq", b" the street and on to the house"), 1)
  assert tasks.score_choices(bigram_logprob_fn, [example], normalize="none") == 0.0
  assert tasks.score_choices(bigram_logprob_fn, [example], normalize="bytes") == 1.0


def test_scorer_checks_logprob_shape_and_arguments():
  examples = _planted_examples()[:2]
  with pytest.raises(ValueError):
    tasks.score_choices(lambda c, x: np.zeros(len(c) + 1), examples)
  with pytest.raises(ValueError):
    tasks.score_choices(bigram_logprob_fn, examples, normalize="tokens")
  with pytest.raises(ValueError):
    Example(b"a", (b"b", b"c"), 2)


def test_noise_in_scorer_is_deterministic_and_applied():
  examples = _planted_examples()
  seen = collections.defaultdict(list)

  def recording(name):
    def fn(contexts, continuations):
      seen[name].extend(zip(contexts, continuations))
      return bigram_logprob_fn(contexts, continuations)
    return fn

  clean = tasks.score_choices(recording("clean"), examples)
  a = tasks.score_choices(recording("a"), examples, noise="hat_mix", noise_level=0.5,
                          noise_seed=1, batch_size=1)
  b = tasks.score_choices(recording("b"), examples, noise="hat_mix", noise_level=0.5,
                          noise_seed=1, batch_size=7)
  tasks.score_choices(recording("c"), examples, noise="hat_mix", noise_level=0.5,
                      noise_seed=2)
  zero = tasks.score_choices(recording("zero"), examples, noise="hat_mix", noise_level=0.0)
  assert a == b and seen["a"] == seen["b"]  # independent of batching
  assert seen["a"] != seen["clean"] and seen["a"] != seen["c"]
  assert zero == clean and seen["zero"] == seen["clean"]
  contexts = {c for c, _ in seen["a"]}
  assert len(contexts) == len(examples)  # one noised context per example, shared by choices
  assert all(len(x) <= len(y) for (x, _), (y, _) in zip(seen["a"], seen["clean"]))


def test_cloze_examples_structure_and_determinism():
  docs = _stdlib_documents()
  kwargs = dict(num_examples=30, context_bytes=120, continuation_bytes=24, num_choices=4,
                length_slack=4)
  examples = tasks.make_cloze_examples(docs, seed=3, **kwargs)
  assert len(examples) == 30
  assert examples == tasks.make_cloze_examples(docs, seed=3, **kwargs)
  assert examples != tasks.make_cloze_examples(docs, seed=4, **kwargs)
  corpus = b"\x00".join(docs)
  for ex in examples:
    truth = ex.choices[ex.label]
    assert ex.context + truth in corpus  # the true continuation follows its context
    assert 60 <= len(ex.context) <= 120
    assert truth[:1].isspace() and not ex.context[-1:].isspace()  # cut at a word boundary
    assert abs(len(truth) - 24) <= 4
    assert len(set(ex.choices)) == 4
    for choice in ex.choices:
      assert choice in corpus
      assert abs(len(choice) - len(truth)) <= 4
  labels = [ex.label for ex in examples]
  assert len(set(labels)) == 4  # the right answer moves around


def test_cloze_sentence_boundary_and_small_corpus():
  docs = [s.encode() for s in HELD_OUT]
  examples = tasks.make_cloze_examples(docs, num_examples=5, context_bytes=40,
                                       continuation_bytes=12, boundary="sentence", seed=0)
  assert examples == []  # every sentence ends its document: no room for a continuation
  joined = [b" ".join(docs[i:i + 4]) for i in range(0, len(docs), 4)]
  examples = tasks.make_cloze_examples(joined, num_examples=5, context_bytes=40,
                                       continuation_bytes=12, boundary="sentence", seed=0)
  assert examples and all(ex.context.endswith(b".") for ex in examples)


def test_hellaswag_loader(tmp_path):
  records = [
      {"activity_label": "Baking cookies", "ctx_a": "A woman puts flour in a bowl.",
       "ctx_b": "she", "ctx": "ignored when ctx_a exists",
       "endings": ["mixes it with eggs and sugar.", "xq zzv.", "flies [title] away.",
        "is a car."], "label": "0"},
      {"ctx": "The man opens the door and", "endings": [
          "qqq xxz.", "walks into the room.", "zzz qxq.", "vvv jjj."], "label": 1},
  ]
  path = tmp_path / "hellaswag.jsonl"
  path.write_text("\n".join(json.dumps(r) for r in records) + "\n", encoding="utf-8")
  examples = tasks.load_hellaswag_jsonl(path)
  assert examples[0] == Example(
      b"Baking cookies: A woman puts flour in a bowl. She",
      (b" mixes it with eggs and sugar.", b" xq zzv.", b" flies. away.", b" is a car."), 0)
  assert examples[1].context == b"The man opens the door and"
  assert examples[1].choices[1] == b" walks into the room." and examples[1].label == 1
  assert len(tasks.load_hellaswag_jsonl(path, limit=1)) == 1
  assert tasks.score_choices(bigram_logprob_fn, examples[1:]) == 1.0
  bad = tmp_path / "test_split.jsonl"
  bad.write_text(json.dumps({"ctx": "a", "endings": ["b", "c"], "label": ""}) + "\n")
  with pytest.raises(ValueError):
    tasks.load_hellaswag_jsonl(bad)
