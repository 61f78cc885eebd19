"""hnet/eval/scoring.py: continuation log-probs and bpb for every supported layout,
checked against independent computations (a hand-built forward, the chain rule, the
train loop's own held-out evaluation, MrT5's cached decoder)."""
import json
import math
import os
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import base
from hnet import bytes as hbytes
from hnet import loop, sharding, testing
from hnet.data import bpe, sources
from hnet.eval import scoring
from hnet.models import build_model
from hnet.train import init_state, jit_eval_step, make_setup, merge_model

CONTEXT = b"It is a truth universally acknowledged, that a single man in possession"
CONTINUATION = b" of a good fortune, must be in want"


def write_corpus(directory) -> str:
  """A dozen small English documents (stdlib sources' text) as files; -> glob."""
  text = b"".join(open(m.__file__, "rb").read() for m in (textwrap, json, os))
  os.makedirs(directory, exist_ok=True)
  for i in range(12):
    with open(os.path.join(directory, f"doc{i:02d}.txt"), "wb") as f:
      f.write(text[i * 1200:(i + 1) * 1200])
  return os.path.join(directory, "*.txt")


def tiny_config(corpus: str, layout: str = "bytes", tokenizer_path: str = ""):
  c = base.get_config()
  c.model.dim, c.model.num_layers, c.model.num_heads, c.model.num_kv_heads = 32, 1, 2, 2
  c.model.mlp_dim = 64
  c.data.source, c.data.path, c.data.eval_fraction = "files", corpus, 0.25
  c.data.seq_len = 64
  c.data.layout = layout
  if layout == "bpe":
    c.data.bpe_tokenizer = tokenizer_path
    c.data.bpe_vocab_size = 300
    c.model.vocab_size = 304
  c.train.batch_size = 8
  return c


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  return write_corpus(str(tmp_path_factory.mktemp("corpus")))


def fresh_model(config, seed: int = 0):
  return build_model(config.model, nnx.Rngs(seed))


def direct_byte_logprob(model, context: bytes, continuation: bytes, seq_len: int) -> float:
  """log p(continuation | BOS context) from one hand-built padded row."""
  ids = hbytes.encode(context + continuation, add_bos=True)      # [n + 1]
  n = len(ids) - 1
  inputs = np.full([1, seq_len], hbytes.PAD_ID, np.int32)
  targets = np.full([1, seq_len], hbytes.PAD_ID, np.int32)
  inputs[0, :n], targets[0, :n] = ids[:-1], ids[1:]
  real = (np.arange(seq_len) < n)[None]
  batch = {"inputs": inputs, "targets": targets, "segment_ids": real.astype(np.int32),
           "positions": np.where(real, np.arange(seq_len), 0).astype(np.int32),
           "loss_mask": real.astype(np.float32)}
  logp = np.asarray(jax.nn.log_softmax(testing.forward_logits(model, batch).astype(np.float32)))[0]
  return float(sum(logp[t, targets[0, t]] for t in range(len(context), n)))


def hnet_config(corpus):
  from configs.hnet_1stage_tiny import hnet_config as set_hnet
  c = tiny_config(corpus)
  set_hnet(c, layout="[m1, T1, m1]", d_model=(32, 48), num_heads=(2, 2), mlp_dim=(0, 64),
           window=(0, 0), target_ratio=(4,), capacity_factor=2.0, d_state=8, headdim=8,
           ssd_chunk_size=16)
  return c


@pytest.mark.parametrize("family", ["transformer", pytest.param("hnet", marks=pytest.mark.slow)])
def test_byte_logprob_matches_direct_forward_and_chain_rule(corpus, family):
  config = tiny_config(corpus) if family == "transformer" else hnet_config(corpus)
  model = fresh_model(config)
  fn = scoring.make_logprob_fn(model, config, batch_size=4)
  got = fn([CONTEXT[-28:], b"", CONTEXT + CONTINUATION[:10], b""],
           [CONTINUATION, CONTEXT[:40], CONTINUATION[10:], b""])
  assert got.shape == (4,) and got.dtype == np.float64
  want = direct_byte_logprob(model, CONTEXT[-28:], CONTINUATION, 64)
  np.testing.assert_allclose(got[0], want, rtol=1e-5)
  assert got[3] == 0.0
  # chain rule: log p(ab) = log p(a) + log p(b | a), all inside one row
  pair = fn([b"", CONTEXT[:20]], [CONTEXT[:20], CONTEXT[20:50]])
  np.testing.assert_allclose(fn([b""], [CONTEXT[:50]])[0], pair.sum(), rtol=1e-5)
  # a uniform model would give -len * ln(264); a fresh model is near it, not equal
  assert abs(got[0] + len(CONTINUATION) * math.log(264)) < 0.2 * len(CONTINUATION)


def test_long_context_is_cut_from_the_left(corpus):
  config = tiny_config(corpus)
  model = fresh_model(config)
  fn = scoring.make_logprob_fn(model, config)
  long_context = CONTEXT * 3  # 213 bytes > seq_len 64
  got = fn([long_context], [CONTINUATION])[0]
  kept = long_context[len(long_context) - (64 - len(CONTINUATION)):]
  np.testing.assert_allclose(got, direct_byte_logprob(model, kept, CONTINUATION, 64),
                             rtol=1e-5)
  with pytest.raises(ValueError, match="exceeds data.seq_len"):
    fn([b""], [CONTEXT])  # 71 bytes of continuation cannot fit 64


def _loop_eval_bpb(config):
  """The train loop's held-out bpb of a freshly initialised model (8-device mesh)."""
  mesh = sharding.make_mesh(-1, 1, 1)
  setup = make_setup(config, mesh)
  state = init_state(setup, eager=True)
  example = next(iter(loop.data_iterator(config, config.data.eval_split, repeat=False)))
  eval_fn = jit_eval_step(setup, loop.to_global(setup, example))
  with jax.set_mesh(mesh):
    result = loop.evaluate(setup, eval_fn, state, 0)
  return result["bpb"], merge_model(setup.graphdef, jax.device_get(state["params"]))


@pytest.mark.parametrize("layout", ["bytes", "bpe"])
def test_bpb_equals_train_loop_evaluation(corpus, tmp_path, layout):
  config = tiny_config(corpus, layout, str(tmp_path / "bpe_tokenizer.json"))
  loop_bpb, model = _loop_eval_bpb(config)
  documents = sources.load_documents(config.data, config.data.eval_split)
  got = scoring.bpb_on_documents(model, config, documents, batch_size=8)
  np.testing.assert_allclose(got, loop_bpb, rtol=1e-5)
  assert 3.0 < got < 12.0
  if layout == "bpe":  # different row batching, same sums
    np.testing.assert_allclose(
        scoring.bpb_on_documents(model, config, documents, batch_size=3), got, rtol=1e-5)


def test_bpe_scores_separately_tokenised_continuation(corpus, tmp_path):
  config = tiny_config(corpus, "bpe", str(tmp_path / "bpe_tokenizer.json"))
  tokenizer = scoring.bpe_tokenizer(config)
  model = fresh_model(config)
  context, continuation = b"the qu", b"ick brown fox"  # a token would straddle "qu|ick"
  fn = scoring.make_logprob_fn(model, config)
  got = fn([context], [continuation])[0]
  ctx_ids, cont_ids = tokenizer.encode(context), tokenizer.encode(continuation)
  ids = np.concatenate([[bpe.BOS_ID], ctx_ids, cont_ids]).astype(np.int32)
  n = len(ids) - 1
  batch = {"inputs": ids[None, :-1], "targets": ids[None, 1:],
           "segment_ids": np.ones([1, n], np.int32), "positions": np.arange(n)[None],
           "loss_mask": np.ones([1, n], np.float32)}
  logp = np.asarray(jax.nn.log_softmax(testing.forward_logits(model, batch)))[0]
  want = sum(logp[t, ids[t + 1]] for t in range(len(ctx_ids), n))
  np.testing.assert_allclose(got, want, rtol=1e-5)
  assert tokenizer.decode(cont_ids) == continuation
  # the head is 304 wide: scores are over real tokens, no worse than uniform by much
  assert -got < len(cont_ids) * math.log(304) * 1.2


@pytest.mark.slow
def test_mrt5_prefix_lm_matches_cached_decoding(corpus):
  config = tiny_config(corpus)
  m = config.model
  m.name, m.num_encoder_layers, m.num_decoder_layers, m.head_dim = "mrt5", 2, 1, 16
  m.gate_layer = 1
  config.data.layout, config.data.decoder_seq_len = "span_corruption", 48
  model = fresh_model(config)
  got = scoring.make_logprob_fn(model, config)([CONTEXT], [CONTINUATION])[0]
  row, _ = scoring._encdec_row(CONTEXT, CONTINUATION, config)
  batch = {k: jnp.asarray(v)[None] for k, v in row.items()}
  encoded = nnx.jit(lambda m, b: m.encode(b))(model, batch)
  cache = model.init_cache(1, len(CONTINUATION), encoded)
  ids = np.concatenate([[hbytes.BOS_ID], hbytes.encode(CONTINUATION)])
  want = 0.0
  decode_step = nnx.jit(lambda m, c, i: m.decode_step(c, i))  # one program, not op by op
  for t in range(len(CONTINUATION)):
    logits, cache = decode_step(model, cache, jnp.asarray(ids[t:t + 1]))
    want += float(jax.nn.log_softmax(logits[0])[ids[t + 1]])
  np.testing.assert_allclose(got, want, rtol=1e-4)
  doc = CONTEXT + CONTINUATION
  nats, nbytes = scoring.nats_and_bytes(model, config, [doc])
  assert nbytes == len(doc) and math.isfinite(nats) and nats > 0


def test_unsupported_layout_names_the_family(corpus):
  config = tiny_config(corpus)
  config.model.name = "some_family"
  config.data.layout = "unknown_layout"
  with pytest.raises(NotImplementedError, match="some_family"):
    scoring.make_logprob_fn(None, config)
  with pytest.raises(NotImplementedError, match="unknown_layout"):
    scoring.bpb_on_documents(None, config, [b"abc"])


@pytest.mark.slow
@pytest.mark.parametrize("family", ["hat", "lyt"])
def test_word_layout_families_chain_rule_and_loop_bpb(corpus, family):
  """HAT / Learn-Your-Tokens read through the "words" layout: the chain rule holds at a
  word boundary (a causal byte model split across two documents), and bpb over the
  held-out split equals the train loop's evaluation."""
  import importlib
  config = importlib.import_module(f"configs.{family}_tiny").get_config()
  config.data.source, config.data.path, config.data.eval_fraction = "files", corpus, 0.25
  config.data.seq_len, config.train.batch_size = 64, 8
  fn = scoring.make_logprob_fn(fresh_model(config), config, batch_size=4)
  a, b = CONTEXT[:44], CONTEXT[44:60]  # "...acknowledged, that" | " a single man in"
  got = fn([b"", a, b""], [a, b, a + b])
  np.testing.assert_allclose(got[0] + got[1], got[2], rtol=1e-5)
  loop_bpb, model = _loop_eval_bpb(config)
  documents = sources.load_documents(config.data, config.data.eval_split)
  np.testing.assert_allclose(scoring.bpb_on_documents(model, config, documents, batch_size=8),
                             loop_bpb, rtol=1e-5)
