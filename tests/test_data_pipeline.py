"""Grain pipeline: determinism, per-epoch shuffle, process slicing, eval padding, resume."""
import grain
import numpy as np
import orbax.checkpoint as ocp
import pytest

from configs import base
from hnet.data import packing, pipeline

SEQ_LEN = 16


@pytest.fixture()
def data_config(tmp_path):
  rng = np.random.default_rng(0)
  docs = tmp_path / "docs"
  docs.mkdir()
  for i in range(40):  # raw bytes, invalid UTF-8 included
    (docs / f"doc{i:02d}.txt").write_bytes(
        rng.integers(0, 256, size=int(rng.integers(5, 60)), dtype=np.uint8).tobytes())
  c = base.get_config().data
  c.source = "files"
  c.path = str(docs)
  c.eval_fraction = 0.2
  return c


def _take(iterator, n):
  return [next(iterator) for _ in range(n)]


def _assert_batches_equal(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert set(x) == set(y)
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])


def _row_keys(batch):
  return [tuple(row) for row in np.concatenate(
      [batch["inputs"], batch["targets"][:, -1:], batch["positions"][:, :1]], axis=1)]


def test_batch_format_and_determinism(data_config):
  make = lambda seed: pipeline.make_iterator(data_config, "train", seq_len=SEQ_LEN,
                                             global_batch_size=4, seed=seed)
  first = _take(make(0), 6)
  for batch in first:
    assert set(batch) == set(packing.EXAMPLE_KEYS)
    for k, v in batch.items():
      assert v.shape == (4, SEQ_LEN) and v.dtype == (np.float32 if k == "loss_mask" else np.int32)
  _assert_batches_equal(first, _take(make(0), 6))
  other = _take(make(1), 6)
  assert any(not np.array_equal(a["inputs"], b["inputs"]) for a, b in zip(first, other))


def test_each_epoch_is_a_fresh_permutation_of_all_rows(data_config):
  rows = pipeline.make_dataset(data_config, "train", seq_len=SEQ_LEN, global_batch_size=1,
                               seed=3, repeat=False)  # one epoch, same packing
  all_rows = sorted(k for i in range(len(rows)) for k in _row_keys(rows[i]))
  n = len(all_rows)
  ds = pipeline.make_dataset(data_config, "train", seq_len=SEQ_LEN, global_batch_size=1, seed=3)
  epoch1 = [k for i in range(n) for k in _row_keys(ds[i])]
  epoch2 = [k for i in range(n, 2 * n) for k in _row_keys(ds[i])]
  assert sorted(epoch1) == all_rows and sorted(epoch2) == all_rows
  assert epoch1 != epoch2


@pytest.mark.parametrize("repeat", [True, False])
@pytest.mark.parametrize("process_count", [2, 4])
def test_processes_get_slices_of_the_single_process_batch(data_config, repeat, process_count):
  kwargs = dict(seq_len=SEQ_LEN, global_batch_size=8, seed=5, repeat=repeat)
  single = pipeline.make_dataset(data_config, "train", **kwargs)
  per_process = [pipeline.make_dataset(data_config, "train", process_index=p,
                                       process_count=process_count, **kwargs)
                 for p in range(process_count)]
  num_batches = len(single) if not repeat else 7
  for ds in per_process:
    if not repeat:
      assert len(ds) == len(single)
  for step in range(num_batches):
    whole = single[step]
    for p, ds in enumerate(per_process):
      part = ds[step]
      b = 8 // process_count
      for k in whole:
        np.testing.assert_array_equal(part[k], whole[k][p * b:(p + 1) * b])


def test_eval_is_one_ordered_padded_pass(data_config):
  docs_rows = pipeline.make_dataset(data_config, "eval", seq_len=SEQ_LEN, global_batch_size=1,
                                    repeat=False)
  num_rows = len(docs_rows)
  batches = list(pipeline.make_iterator(data_config, "eval", seq_len=SEQ_LEN,
                                        global_batch_size=8, repeat=False))
  assert len(batches) == -(-num_rows // 8)
  stacked = {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}
  for i in range(num_rows):  # unshuffled: row i of the pass is row i of the packing
    np.testing.assert_array_equal(stacked["inputs"][i], docs_rows[i]["inputs"][0])
  pad = stacked["loss_mask"][num_rows:]
  assert pad.shape[0] == len(batches) * 8 - num_rows and pad.sum() == 0
  assert stacked["segment_ids"][num_rows:].sum() == 0
  # Same eval pass twice, regardless of seed.
  again = list(pipeline.make_iterator(data_config, "eval", seq_len=SEQ_LEN, global_batch_size=8,
                                      repeat=False, seed=123))
  _assert_batches_equal(batches, again)


def test_train_and_eval_rows_are_disjoint(data_config):
  train = pipeline.make_dataset(data_config, "train", seq_len=SEQ_LEN, global_batch_size=1,
                                repeat=False, shuffle=False)
  evaluation = pipeline.make_dataset(data_config, "eval", seq_len=SEQ_LEN, global_batch_size=1,
                                     repeat=False)
  train_rows = {k for i in range(len(train)) for k in _row_keys(train[i])}
  eval_rows = {k for i in range(len(evaluation)) for k in _row_keys(evaluation[i])}
  assert train_rows and eval_rows and not train_rows & eval_rows


def test_iterator_state_round_trip_with_orbax(data_config, tmp_path):
  make = lambda: pipeline.make_iterator(data_config, "train", seq_len=SEQ_LEN,
                                        global_batch_size=4, seed=7)
  iterator = make()
  _take(iterator, 5)
  options = ocp.CheckpointManagerOptions(enable_async_checkpointing=False)
  with ocp.CheckpointManager(tmp_path / "ckpt", options=options) as manager:
    manager.save(5, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(iterator)))
    manager.wait_until_finished()
  expected = _take(iterator, 4)

  fresh = make()
  assert fresh.get_state() != iterator.get_state()
  with ocp.CheckpointManager(tmp_path / "ckpt", options=options) as manager:
    assert manager.latest_step() == 5
    manager.restore(5, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(fresh)))
  _assert_batches_equal(expected, _take(fresh, 4))
  # Plain get_state / set_state too.
  state = fresh.get_state()
  following = _take(fresh, 2)
  another = make()
  another.set_state(state)
  _assert_batches_equal(following, _take(another, 2))


def test_layout_registry(data_config, monkeypatch):
  def tiny_layout(documents, config, *, seq_len, seed):
    del config, seed
    lengths = np.array([[len(d)] * seq_len for d in documents], np.int32)
    return grain.MapDataset.source([{"lengths": row, "loss_mask": np.ones(seq_len, np.float32),
                                     "segment_ids": np.ones(seq_len, np.int32)}
                                    for row in lengths])

  monkeypatch.setitem(pipeline.LAYOUTS, "doc_lengths", tiny_layout)
  data_config.layout = "doc_lengths"
  batches = list(pipeline.make_iterator(data_config, "eval", seq_len=3, global_batch_size=16,
                                        repeat=False))
  assert batches[0]["lengths"].shape == (16, 3)
  assert batches[-1]["loss_mask"][-1].sum() == 0  # padded with zero rows
  data_config.layout = "no_such_layout"
  with pytest.raises(ValueError, match="no_such_layout"):
    pipeline.make_dataset(data_config, "train", seq_len=4, global_batch_size=2)


def test_bad_batch_arguments(data_config):
  with pytest.raises(ValueError, match="multiple of process_count"):
    pipeline.make_dataset(data_config, "train", seq_len=4, global_batch_size=6, process_count=4)
  with pytest.raises(ValueError, match="process_index"):
    pipeline.make_dataset(data_config, "train", seq_len=4, global_batch_size=4,
                          process_index=2, process_count=2)
