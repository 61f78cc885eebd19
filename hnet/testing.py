"""Checks every model family must pass, shared by the test files.

Each takes a config (shrunk from configs/<experiment>.py) and a batch dict, so a new
family gets causality, sharding, cached-generation and overfit tests in a few lines.
"""
from __future__ import annotations

import os
import re

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from hnet import bytes as hbytes
from hnet import sharding
from hnet.models import build_model
from hnet.train import init_state, jit_train_step, loss_fn, make_setup


def packed_byte_batch(seed: int, batch_size: int, length: int, doc_lengths=(None,)) -> dict:
  """A random packed batch: rows of documents of `doc_lengths` (None = fill the row)."""
  rng = np.random.default_rng(seed)
  ids = rng.integers(0, 256, (batch_size, length + 1)).astype(np.int32)
  segment_ids = np.zeros((batch_size, length), np.int32)
  positions = np.zeros((batch_size, length), np.int32)
  for b in range(batch_size):
    start, seg = 0, 1
    for doc_len in doc_lengths:
      end = length if doc_len is None else min(start + doc_len, length)
      segment_ids[b, start:end] = seg
      positions[b, start:end] = np.arange(end - start)
      ids[b, start] = hbytes.BOS_ID
      start, seg = end, seg + 1
      if start >= length:
        break
  loss_mask = (segment_ids > 0).astype(np.float32)
  loss_mask[:, :-1] *= segment_ids[:, :-1] == segment_ids[:, 1:]
  return {"inputs": ids[:, :-1], "targets": ids[:, 1:], "segment_ids": segment_ids,
          "positions": positions, "loss_mask": loss_mask}


_jit_forward = nnx.jit(lambda model, batch: model(batch))


def forward(model, batch: dict):
  """model(batch), its ModelOutput, run as one jitted program. Run op by op, a forward
  compiles a program per operation and shape, hundreds of them: seconds a test here."""
  return _jit_forward(model, {k: jnp.asarray(v) for k, v in batch.items()})


def forward_logits(model, batch: dict) -> np.ndarray:
  """forward(model, batch).logits as a numpy array."""
  return np.asarray(forward(model, batch).logits)


def model_logits(config, batch, seed: int = 0) -> jax.Array:
  return forward(build_model(config.model, nnx.Rngs(seed)), batch).logits


def assert_causal(config, batch, positions=(0, 5, 17), key: str = "inputs", atol: float = 0.0):
  """Changing `batch[key]` after position t never changes logits at positions <= t."""
  model = build_model(config.model, nnx.Rngs(0))
  base = forward_logits(model, batch)
  rng = np.random.default_rng(1)
  for t in positions:
    changed = dict(batch)
    ids = np.array(batch[key])
    ids[:, t + 1:] = rng.integers(0, 256, ids[:, t + 1:].shape)
    changed[key] = ids
    out = forward_logits(model, changed)
    np.testing.assert_allclose(out[:, :t + 1], base[:, :t + 1], atol=atol, rtol=0,
                               err_msg=f"logits at positions <= {t} depend on later {key}")
    assert not np.allclose(out[:, t + 1:], base[:, t + 1:]), "changing the future changed nothing"


def loss_and_grads(config, batch, mesh) -> tuple[float, dict]:
  """Loss and gradients of the freshly initialised model, jitted over `mesh`."""
  setup = make_setup(config, mesh)
  state = init_state(setup, eager=True)
  num_targets = jnp.sum(jnp.asarray(batch["loss_mask"]))
  def loss_of(params, batch, num_targets):
    return loss_fn(params, setup.graphdef, batch, num_targets)
  fn = jax.jit(jax.value_and_grad(loss_of, has_aux=True),
               in_shardings=(setup.state_shardings["params"], setup.batch_sharding(batch), None))
  with jax.set_mesh(mesh):
    (loss, _), grads = fn(state["params"], batch, num_targets)
  return float(loss), jax.device_get(grads)


def assert_sharded_matches_single(config, batch, rtol: float = 2e-5, atol: float = 2e-6,
                                  mesh_shape=(2, 2, 2)):
  """data x fsdp x tensor over 8 devices gives the loss and gradients of 1 device."""
  single = sharding.make_mesh(1, 1, 1, devices=jax.devices()[:1])
  multi = sharding.make_mesh(*mesh_shape, devices=jax.devices()[:int(np.prod(mesh_shape))])
  loss_1, grads_1 = loss_and_grads(config, batch, single)
  loss_8, grads_8 = loss_and_grads(config, batch, multi)
  np.testing.assert_allclose(loss_8, loss_1, rtol=rtol)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=rtol, atol=atol), grads_8, grads_1)


def assert_cached_generation_matches(config, batch, atol: float = 2e-5, steps: int | None = None):
  """decode_step fed x_0..x_t one by one gives the full forward logits at t."""
  model = build_model(config.model, nnx.Rngs(0))
  inputs = np.asarray(batch["inputs"])
  B, L = inputs.shape
  steps = steps or L
  full = forward_logits(model, batch)
  step_fn = nnx.jit(lambda m, c, ids: m.decode_step(c, ids))
  cache = model.init_cache(B, steps)
  for t in range(steps):
    logits, cache = step_fn(model, cache, jnp.asarray(inputs[:, t]))
    np.testing.assert_allclose(np.asarray(logits), full[:, t], atol=atol, rtol=1e-4,
                               err_msg=f"cached logits differ at step {t}")


def overfit_losses(config, batch, steps: int = 30) -> list[float]:
  """Losses of `steps` train steps on one repeated batch (1 device)."""
  mesh = sharding.make_mesh(1, 1, 1, devices=jax.devices()[:1])
  setup = make_setup(config, mesh)
  state = init_state(setup, eager=True)
  step_fn = jit_train_step(setup, batch)
  losses = []
  with jax.set_mesh(mesh):
    for _ in range(steps):
      state, metrics = step_fn(state, batch)
      losses.append(float(metrics["loss"]))
  return losses


# --- word layouts (HAT, Learn Your Tokens, Byte2Word) ---------------------------------

def words_rows_batch(docs, seq_len: int, words_per_row: int, bytes_per_word: int) -> dict:
  """Every row of hnet/data/words.py's WordRows over `docs`, stacked into one batch."""
  from hnet.data.words import WordRows
  rows = WordRows(docs, seq_len=seq_len, words_per_row=words_per_row, bytes_per_word=bytes_per_word)
  return {k: np.stack([rows[i][k] for i in range(len(rows))]) for k in rows[0]}


def word_layout_batch(rows_of_docs, length: int, num_words: int, word_len: int) -> dict:
  """Reference word layout built with hnet/text/splitter.py, for tests.

  rows_of_docs: per row, a list of documents (bytes); each row is BOS doc EOS BOS doc EOS
  ... cut to `length` inputs (+1 target), padded with PAD. Words: BOS and EOS are words
  of their own, the document bytes are split with max_word_size = word_len. Keys: the byte
  keys of packed_byte_batch plus word_index, byte_in_word, open_word_index [L] (the word
  open after reading inputs[:t+1]: equals word_index except where the splitter places a
  boundary late, splitter property P3), word_segment_ids, word_positions, word_mask,
  word_lengths [W], word_bytes, next_word_bytes [W, Lw] (PAD-filled), next_word_mask [W].
  """
  from hnet.text.splitter import split
  B = len(rows_of_docs)
  out = {k: np.zeros((B, length), np.int32) for k in
         ("inputs", "targets", "segment_ids", "positions", "word_index", "byte_in_word",
          "open_word_index")}
  out.update({k: np.zeros((B, num_words), np.int32) for k in
              ("word_segment_ids", "word_positions", "word_mask", "word_lengths", "next_word_mask")})
  out["word_bytes"] = np.full((B, num_words, word_len), hbytes.PAD_ID, np.int32)
  out["next_word_bytes"] = np.full((B, num_words, word_len), hbytes.PAD_ID, np.int32)
  for b, docs in enumerate(rows_of_docs):
    ids, seg, pos, widx, bidx, oidx, words = [], [], [], [], [], [], []  # words: (seg, wpos, ids)
    for d, doc in enumerate(docs):
      doc = bytes(doc)
      doc_words = [[hbytes.BOS_ID]] + [list(w) for w in split(doc, word_len)] + [[hbytes.EOS_ID]]
      first, doc_start = len(words), len(ids)
      for wpos, w in enumerate(doc_words):
        for k, byte in enumerate(w):
          pos.append(len(ids) - doc_start)
          ids.append(byte)
          seg.append(d + 1)
          widx.append(first + wpos)
          bidx.append(k)
        words.append((d + 1, wpos, w))
      # open word after each input: BOS word at BOS, then 1 + finished words of the prefix
      oidx.append(first)
      for k in range(1, len(doc) + 1):
        oidx.append(first + 1 + len(split(doc[:k], word_len)) - 1)
      oidx.append(first + len(doc_words) - 1)
    n = min(len(ids) - 1, length)
    assert n > 0 and widx[n - 1] < num_words, "row needs more words or shorter docs"
    out["inputs"][b, :n], out["targets"][b, :n] = ids[:n], ids[1:n + 1]
    out["segment_ids"][b, :n], out["positions"][b, :n] = seg[:n], pos[:n]
    out["word_index"][b, :n], out["byte_in_word"][b, :n] = widx[:n], bidx[:n]
    out["open_word_index"][b, :n] = oidx[:n]
    out["inputs"][b, n:] = out["targets"][b, n:] = hbytes.PAD_ID
    out["word_index"][b, n:] = num_words  # padding bytes belong to no word
    last_word = widx[n - 1]
    for w in range(last_word + 1):
      s, wpos, wbytes = words[w]
      in_row = [i for i in range(n) if widx[i] == w]
      out["word_segment_ids"][b, w], out["word_positions"][b, w] = s, wpos
      out["word_mask"][b, w], out["word_lengths"][b, w] = 1, len(in_row)
      out["word_bytes"][b, w, :len(in_row)] = [ids[i] for i in in_row]
      if w + 1 <= last_word and words[w + 1][0] == s:
        nxt = [ids[i] for i in range(n) if widx[i] == w + 1]
        out["next_word_bytes"][b, w, :len(nxt)] = nxt
        out["next_word_mask"][b, w] = 1
  # every real target, except an EOS input's target (the next document's BOS)
  out["loss_mask"] = ((out["segment_ids"] > 0) & (out["targets"] != hbytes.PAD_ID)
                      & (out["inputs"] != hbytes.EOS_ID)).astype(np.float32)
  return out


def _random_text(rng, n: int) -> bytes:
  alphabet = b"abcdefgh ABCD,.\n"
  return bytes(rng.choice(list(alphabet), n).tolist())


def assert_word_causal(config, docs, length: int, num_words: int, word_len: int,
                       positions=(0, 5, 13), atol: float = 0.0):
  """Word-layout causality: one document per row; the bytes after input t are replaced
  (which changes later words and the word layout, rebuilt with the splitter) and the
  logits at positions <= t must not change."""
  model = build_model(config.model, nnx.Rngs(0))
  batch = word_layout_batch([[d] for d in docs], length, num_words, word_len)
  base = forward_logits(model, batch)
  rng = np.random.default_rng(1)
  for t in positions:
    # input t is document byte t-1 (input 0 is BOS): keep doc[:t], replace the rest
    changed_docs = [d[:t] + _random_text(rng, len(d) - t) for d in docs]
    changed = word_layout_batch([[d] for d in changed_docs], length, num_words, word_len)
    out = forward_logits(model, changed)
    np.testing.assert_allclose(out[:, :t + 1], base[:, :t + 1], atol=atol, rtol=0,
                               err_msg=f"logits at positions <= {t} depend on later bytes")
    assert not np.allclose(out[:, t + 1:], base[:, t + 1:]), "changing the future changed nothing"


def assert_word_cached_generation_matches(config, docs, length: int, num_words: int,
                                          word_len: int, atol: float = 2e-5):
  """Word models: decode_step(cache, ids, finished_lengths) fed x_0..x_t one by one, with
  the word boundaries found by the host-side splitter (hnet.models.hat.WordBoundaryTracker),
  gives the full-forward logits at t. One document per row."""
  from hnet.models.hat import WordBoundaryTracker
  model = build_model(config.model, nnx.Rngs(0))
  batch = word_layout_batch([[d] for d in docs], length, num_words, word_len)
  full = forward_logits(model, batch)
  inputs = np.asarray(batch["inputs"])
  B, L = inputs.shape
  tracker = WordBoundaryTracker(B, model.max_words_per_step, word_len)
  step_fn = nnx.jit(lambda m, c, ids, f: m.decode_step(c, ids, f))
  cache = model.init_cache(B, L)
  real = np.asarray(batch["segment_ids"]) > 0
  for t in range(L):
    finished = tracker.push(inputs[:, t])
    logits, cache = step_fn(model, cache, jnp.asarray(inputs[:, t]), jnp.asarray(finished))
    rows = real[:, t]
    np.testing.assert_allclose(np.asarray(logits)[rows], full[rows, t], atol=atol, rtol=1e-4,
                               err_msg=f"cached logits differ at step {t}")


def subprocess_env(devices: int = 1, **extra: str) -> dict[str, str]:
  """The environment of a test's JAX subprocess: this process's, on the CPU platform with
  `devices` simulated devices (subprocess_xla_flags), plus `extra`."""
  return {**os.environ, "XLA_FLAGS": subprocess_xla_flags(devices), "JAX_PLATFORMS": "cpu",
          **extra}


def subprocess_xla_flags(devices: int = 1) -> str:
  """XLA_FLAGS for a test's subprocess: `devices` simulated CPU devices, and the
  compile-speed flags the suite compiles with (tests/conftest.py), where set."""
  flags = [f"--xla_force_host_platform_device_count={devices}"] if devices > 1 else []
  compile_speed = re.findall(r"--xla_(?:backend_optimization_level|cpu_use_fusion_emitters)=\w+",
                             os.environ.get("XLA_FLAGS", ""))
  return " ".join(flags + compile_speed)
