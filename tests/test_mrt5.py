"""MrT5 / ByT5: gate, soft vs hard deletion, controller, causality, cache, packing,
sharding, overfit, ByT5-small shape."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import byt5_small, mrt5_tiny
from hnet import bytes as hbytes
from hnet import generate as hgenerate
from hnet import testing
from hnet.testing import forward
from hnet.layers.relative_position import relative_position_bucket
from hnet.layers.attention import softmax1
from hnet.models import build_model, controller_for
from hnet.models import mrt5


def tiny_config(name="mrt5", **model):
  c = mrt5_tiny.get_config()
  m = c.model
  m.name = name
  m.dim, m.num_heads, m.head_dim, m.mlp_dim = 32, 2, 16, 64
  m.num_encoder_layers, m.num_decoder_layers, m.gate_layer = 3, 1, 1
  m.rel_buckets, m.rel_max_distance = 8, 16  # short rows still reach the log buckets
  m.update(model)
  c.train.steps, c.train.warmup_steps, c.train.lr = 40, 2, 1e-2
  return c


def enc_dec_batch(seed, batch_size, enc_len, dec_len, enc_docs=(None,), dec_docs=(None,)):
  """Random packed rows; document k of the encoder stream pairs with document k of the
  decoder stream (same segment id). Doc lengths None = the rest of the row."""
  assert len(enc_docs) == len(dec_docs)
  rng = np.random.default_rng(seed)

  def layout(length, docs):
    seg, pos = np.zeros([length], np.int32), np.zeros([length], np.int32)
    start = 0
    for k, n in enumerate(docs, start=1):
      end = length if n is None else min(start + n, length)
      seg[start:end], pos[start:end] = k, np.arange(end - start)
      start = end
    return seg, pos

  enc_seg, enc_pos = layout(enc_len, enc_docs)
  dec_seg, dec_pos = layout(dec_len, dec_docs)
  targets = rng.integers(0, 256, (batch_size, dec_len)).astype(np.int32)
  decoder_inputs = np.concatenate([np.full((batch_size, 1), hbytes.BOS_ID), targets[:, :-1]], 1)
  decoder_inputs = np.where(dec_pos == 0, hbytes.BOS_ID, decoder_inputs).astype(np.int32)
  tile = lambda a: np.tile(a[None], (batch_size, 1))
  return {"encoder_inputs": rng.integers(0, 256, (batch_size, enc_len)).astype(np.int32),
          "encoder_segment_ids": tile(enc_seg), "encoder_positions": tile(enc_pos),
          "decoder_inputs": decoder_inputs, "targets": targets,
          "segment_ids": tile(dec_seg), "positions": tile(dec_pos),
          "loss_mask": tile(dec_seg > 0).astype(np.float32)}


def make_model(name="mrt5", seed=0, **model):
  return build_model(tiny_config(name, **model).model, nnx.Rngs(seed))


def spread_gate(model, scale=12.0, seed=3):
  """Gate logits spread far from 0 (b = 0): about half the positions deleted (G < -15)."""
  dim = model.gate.weight[...].shape[0]
  model.gate.weight[...] = jax.random.normal(jax.random.key(seed), (dim,)) * scale / dim ** 0.5
  model.gate.bias[...] = jnp.zeros(())


encode_front = nnx.jit(lambda m, b: m.encode_front(b))
forward_capacity = nnx.jit(lambda m, b, c: m(b, capacity=c), static_argnums=2)


# ------------------------------------------------------------------ relative position bias

def test_relative_position_buckets():
  rel = jnp.array([0, -1, 1, -7, 7, -8, 8, -20, -127, -128, -1000, 1000])
  bi = relative_position_bucket(rel, bidirectional=True, num_buckets=32, max_distance=128)
  # 16 buckets per direction: 8 exact, then log-spaced up to 128 (keys after -> +16)
  np.testing.assert_array_equal(bi, [0, 1, 17, 7, 23, 8, 24, 10, 15, 15, 15, 31])
  causal = relative_position_bucket(rel, bidirectional=False, num_buckets=32, max_distance=128)
  # 16 exact distances, then log-spaced; keys after the query share bucket 0
  np.testing.assert_array_equal(causal, [0, 1, 0, 7, 0, 8, 0, 17, 31, 31, 31, 0])
  distance = -jnp.arange(0, 2000)
  buckets = relative_position_bucket(distance, bidirectional=False)
  assert np.all(np.diff(np.asarray(buckets)) >= 0) and int(buckets.max()) == 31


# ------------------------------------------------------------------ gate

PAPER_GATE = dict(gate_standardise=False, gate_logit_spread=0.32, gate_bias_init=-10.0)


def test_gate_shape_range_and_init_keeps_everything():
  model = make_model(**PAPER_GATE)  # the paper's init; mrt5_tiny's deletes about half at once
  batch = enc_dec_batch(0, 2, 24, 8)
  front = encode_front(model, batch)
  gate = np.asarray(front["gate"])
  assert gate.shape == (2, 24)
  assert np.all(gate < 0) and np.all(gate > -30)
  assert np.all(gate > -0.01)  # b = -10: sigmoid ~ 5e-5, nothing deleted at init
  out = forward(model, batch)
  assert float(out.metrics["deletion_ratio"]) == 0.0
  spread_gate(model)
  gate = np.asarray(encode_front(model, batch)["gate"])
  assert np.all(gate < 0) and np.all(gate >= -30)  # float32 sigmoid saturates at 1
  assert 0.2 < np.mean(gate < -15) < 0.8


def test_standardise_over_segments_is_per_document():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2, 12, 8)).astype(np.float32) + 5.0  # a large shared offset
  seg = np.array([[1] * 5 + [2] * 7, [1] * 9 + [0] * 3], np.int32)
  out = np.asarray(mrt5.standardise_over_segments(jnp.asarray(x), jnp.asarray(seg)))
  for row, doc in [(0, 1), (0, 2), (1, 1)]:
    part = out[row][seg[row] == doc]
    np.testing.assert_allclose(part.mean(0), 0.0, atol=1e-5)
    np.testing.assert_allclose(np.mean(part ** 2), 1.0, rtol=1e-4)
  assert np.all(out[1, 9:] == 0.0)  # padding
  changed = x.copy()
  changed[0, 5:] += rng.normal(size=(7, 8)).astype(np.float32) * 3  # document 2 only
  again = np.asarray(mrt5.standardise_over_segments(jnp.asarray(changed), jnp.asarray(seg)))
  np.testing.assert_array_equal(again[0, :5], out[0, :5])  # document 1 does not see it


def test_standardised_gate_spreads_logits_of_anisotropic_states():
  """States that share one dominant direction (as a trained encoder's do): the plain gate's
  logits are nearly equal across bytes, so a threshold deletes all or nothing; standardised
  over the document they spread about `logit_spread`, so the deletion ratio moves smoothly
  with the bias."""
  dim, length = 32, 400
  rng = np.random.default_rng(1)
  common = rng.normal(size=dim)
  h = jnp.asarray((10 * common + 0.3 * rng.normal(size=(length, dim)))[None], jnp.float32)
  seg = jnp.ones((1, length), jnp.int32)

  def ratios(standardise):
    gate = mrt5.DeleteGate(dim, rngs=nnx.Rngs(0), bias_init=0.0, logit_spread=4.0,
                           standardise=standardise)
    z = np.asarray(gate.logits(h, seg))[0] - float(gate.bias[...])
    return z.std(), [float(np.mean(z + b > 0)) for b in np.linspace(-2, 2, 9) - np.median(z)]
  plain_std, _ = ratios(False)
  std, curve = ratios(True)
  assert plain_std < 0.5 and 2.0 < std < 6.0, (plain_std, std)
  assert np.all(np.diff(curve) >= 0) and max(np.diff(curve)) < 0.25, curve  # no jump
  assert 0.2 < curve[0] < 0.5 < curve[-1] < 0.8, curve


def test_gate_reg_uses_batch_alpha_and_reports_ratio():
  model = make_model()
  spread_gate(model)
  batch = enc_dec_batch(0, 2, 24, 8, enc_docs=(10, None), dec_docs=(3, None))
  batch["encoder_segment_ids"][:, -4:] = 0  # padding is not counted
  out = forward(model, {**batch, "mrt5_alpha": jnp.float32(0.25)})
  gate = np.asarray(encode_front(model, batch)["gate"])
  real = batch["encoder_segment_ids"] > 0
  np.testing.assert_allclose(out.aux_losses["gate_reg"], 0.25 * gate[real].mean(), rtol=1e-5)
  np.testing.assert_allclose(out.metrics["deletion_ratio"], np.mean(gate[real] < -15), rtol=1e-6)
  out_b = forward(model, {**batch, "mrt5_alpha": jnp.full((2,), 0.25)})  # [B] works too
  np.testing.assert_allclose(out_b.aux_losses["gate_reg"], out.aux_losses["gate_reg"], rtol=1e-6)
  assert float(forward(model, batch).aux_losses["gate_reg"]) == 0.0  # gate_alpha default 0


def test_softmax1_is_a_softmax_with_an_extra_zero_logit():
  logits = jax.random.normal(jax.random.key(0), (3, 7)) * 4.0
  logits = logits.at[0].add(200.0)  # large logits must not overflow
  with_null = jax.nn.softmax(jnp.concatenate([logits, jnp.zeros((3, 1))], axis=-1), axis=-1)
  np.testing.assert_allclose(softmax1(logits), with_null[:, :-1], rtol=1e-5, atol=1e-7)
  # soft deletion of every key: the weights vanish instead of renormalising to 1
  assert float(jnp.sum(softmax1(logits[1:] - 30.0))) < 1e-9


@pytest.mark.parametrize("into_encoder", [True, False])
def test_gate_gradient_into_encoder_switch(into_encoder):
  """gate_into_encoder=False: the regulariser trains the gate's own parameters only."""
  model = make_model(gate_into_encoder=into_encoder)
  spread_gate(model, scale=2.0)
  batch = enc_dec_batch(0, 2, 16, 8)
  graphdef, params = nnx.split(model, nnx.Param)

  def reg(params):
    return nnx.merge(graphdef, params).encode(batch)["stats"]["gate_mean"]

  grads = nnx.to_pure_dict(jax.jit(jax.grad(reg))(params))  # one program, not op by op
  embed_grad = float(jnp.abs(grads["embed"]["embedding"]).max())
  assert float(jnp.abs(grads["gate"]["weight"]).max()) > 0
  assert (embed_grad > 0) if into_encoder else (embed_grad == 0.0)


def test_gate_binarize_term_is_zero_for_decided_gates():
  batch = enc_dec_batch(0, 2, 16, 8)
  model = make_model(gate_binarize_weight=0.5)
  spread_gate(model, scale=2.0)
  out = forward(model, batch)
  undecided = float(out.metrics["gate_undecided"])
  assert 0.0 < undecided <= 1.0
  np.testing.assert_allclose(out.aux_losses["gate_binarize"], 0.5 * undecided, rtol=1e-6)
  spread_gate(model, scale=400.0)  # every |z| huge: gates decided, term ~ 0
  assert float(forward(model, batch).metrics["gate_undecided"]) < 1e-3
  assert "gate_binarize" not in forward(make_model(), batch).aux_losses  # default: off


def test_gate_forced_to_zero_equals_byt5_exactly():
  model = make_model("mrt5")
  model.gate.bias[...] = jnp.float32(-1e30)  # sigmoid -> 0, G = -0.0 exactly
  baseline = make_model("byt5", seed=1)
  params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  del params["gate"]
  nnx.update(baseline, nnx.State(params))
  batch = enc_dec_batch(0, 2, 24, 8, enc_docs=(9, None), dec_docs=(3, None))
  out = forward(model, batch)
  assert float(out.metrics["gate_mean"]) == 0.0
  np.testing.assert_array_equal(np.asarray(out.logits), np.asarray(forward(baseline, batch).logits))


# ------------------------------------------------------------------ hard deletion

@pytest.mark.slow
def test_soft_and_hard_deletion_agree():
  """Hard deletion drops keys whose soft attention weight was scaled by exp(G) < exp(-15)
  ~ 3e-7: with <= 32 keys and O(1) values that bounds the change by ~1e-5 (measured:
  6e-8 here, the closest deleted G is -16.4), so atol 1e-5."""
  model = make_model()
  spread_gate(model)
  batch = enc_dec_batch(0, 3, 32, 10, enc_docs=(12, None), dec_docs=(4, None))
  batch["encoder_segment_ids"][2, -6:] = 0  # some padding, dropped too
  soft = forward(model, batch)
  hard_logits, encoded = mrt5.hard_deletion_forward(model, batch)
  capacity = encoded["hidden"].shape[1]
  assert capacity < 32, "the later layers must really run shorter"
  assert 0.3 < float(soft.metrics["deletion_ratio"]) < 0.7
  np.testing.assert_allclose(np.asarray(hard_logits), np.asarray(soft.logits), atol=1e-5, rtol=0)
  # the same in one traced function with a static capacity
  in_jit = forward_capacity(model, batch, capacity)
  assert int(in_jit.metrics["deletion_overflow"]) == 0
  np.testing.assert_allclose(np.asarray(in_jit.logits), np.asarray(hard_logits), atol=1e-5)
  # a capacity too small for the kept positions is counted, not silently ignored
  assert int(forward_capacity(model, batch, 4).metrics["deletion_overflow"]) > 0


def test_hard_deletion_compiles_once_per_bucket():
  model = make_model()
  spread_gate(model)
  before = dict(mrt5._TRACE_COUNTS)
  capacities = set()
  for seed in range(4):
    batch = enc_dec_batch(seed, 2, 32, 8)
    _, encoded = mrt5.hard_deletion_forward(model, batch)
    capacities.add(encoded["hidden"].shape[1])
  assert capacities <= set(mrt5.capacity_buckets(32, (0.25, 0.5, 0.75, 1.0)))
  assert mrt5._TRACE_COUNTS["front"] - before["front"] == 1
  assert mrt5._TRACE_COUNTS["back"] - before["back"] == len(capacities)
  assert mrt5._TRACE_COUNTS["decode"] - before["decode"] == len(capacities)


# ------------------------------------------------------------------ controller

def test_controller_update_formula():
  state = mrt5.controller_init()
  state = mrt5.controller_update(state, 0.1, target_ratio=0.5)
  np.testing.assert_allclose([state["p"], state["i"], state["alpha"]],
                             [0.05 * 0.4, 1e-5 * 0.4, 0.05 * 0.4 + 1e-5 * 0.4], rtol=1e-6)
  high = mrt5.controller_update(mrt5.controller_init(), 0.9, target_ratio=0.5)
  np.testing.assert_allclose(high["alpha"], -0.4 * (0.05 + 1e-5), rtol=1e-6)  # two-sided
  clipped = mrt5.controller_update(mrt5.controller_init(), 0.9, target_ratio=0.5,
                                   two_sided=False)
  assert float(clipped["alpha"]) == 0.0  # the paper's alpha = max(0, p + i)
  gentle = mrt5.controller_update(mrt5.controller_init(), 0.1, target_ratio=0.5, k_i=0.0, k_p=0.005)
  np.testing.assert_allclose(gentle["alpha"], 0.005 * 0.4, rtol=1e-6)


def test_controller_moves_deletion_ratio_to_target():
  """Closed loop on a toy gate: N logits z = b + offsets; the task loss pulls b down
  (keep everything), alpha * mean(G) pushes it up; plain gradient descent on b."""
  offsets = np.linspace(-4.0, 4.0, 201)
  b, task_pull, lr = -6.0, 0.02, 2.0
  state = mrt5.controller_init()
  ratios = []
  for _ in range(3000):
    z = b + offsets
    ratio = float(np.mean(mrt5.GATE_K * (1 / (1 + np.exp(-z))) < mrt5.GATE_K / 2))
    ratios.append(ratio)
    sig = 1 / (1 + np.exp(-z))
    d_gate_db = np.mean(mrt5.GATE_K * sig * (1 - sig))  # d mean(G) / db  (< 0)
    b -= lr * (task_pull + float(state["alpha"]) * d_gate_db)
    state = mrt5.controller_update(state, ratio, target_ratio=0.5)
  assert ratios[0] == 0.0
  assert abs(np.mean(ratios[-200:]) - 0.5) < 0.1, ratios[-10:]


def test_controller_hook_for_train_loop():
  cfg = tiny_config()
  controller = controller_for(cfg.model)
  assert isinstance(controller, mrt5.Controller)
  extra = controller.init()
  assert set(extra) == {"p", "i", "alpha"}
  extra = controller.update(extra, {"model/deletion_ratio": jnp.float32(0.0)})
  assert float(extra["alpha"]) > 0
  batch = enc_dec_batch(0, 4, 16, 8)
  assert controller.batch_inputs(extra)["mrt5_alpha"].shape == ()
  assert controller.batch_inputs(extra, batch)["mrt5_alpha"].shape == (4,)
  assert controller_for(tiny_config("byt5").model) is None


# ------------------------------------------------------------------ decoder, packing, cache

@pytest.mark.parametrize("name", ["mrt5", "byt5"])
def test_decoder_causal(name):
  batch = enc_dec_batch(0, 2, 16, 12, enc_docs=(6, None), dec_docs=(5, None))
  testing.assert_causal(tiny_config(name), batch, positions=(0, 4, 8), key="decoder_inputs")


def test_documents_do_not_attend_across_segments():
  model = make_model()
  spread_gate(model, scale=3.0)  # soft gate values of all sizes
  batch = enc_dec_batch(0, 2, 24, 10, enc_docs=(9, None), dec_docs=(4, None))
  alone = {k: v[:, 9:] if k.startswith("encoder") else v[:, 4:] for k, v in batch.items()}
  both = np.asarray(forward(model, batch).logits)
  np.testing.assert_allclose(both[:, 4:], np.asarray(forward(model, alone).logits), atol=2e-5)


@pytest.mark.parametrize("name,hard", [("byt5", False), ("mrt5", False), ("mrt5", True)])
def test_cached_decoding_matches_forward(name, hard):
  model = make_model(name)
  if name == "mrt5":
    spread_gate(model)
  batch = enc_dec_batch(0, 2, 20, 9)
  batch["encoder_segment_ids"][1, -5:] = 0  # a shorter input in row 1
  if hard:
    full, encoded = mrt5.hard_deletion_forward(model, batch)
  else:
    encoded = nnx.jit(lambda m, b: m.encode(b))(model, batch)
    full = forward(model, batch).logits
  full = np.asarray(full)
  cache = model.init_cache(2, 9, encoded)
  step = nnx.jit(lambda m, c, ids: m.decode_step(c, ids))
  for t in range(9):
    logits, cache = step(model, cache, jnp.asarray(batch["decoder_inputs"][:, t]))
    np.testing.assert_allclose(np.asarray(logits), full[:, t], atol=2e-5, rtol=1e-4,
                               err_msg=f"cached logits differ at step {t}")
  with pytest.raises(ValueError, match="encoder-decoder"):
    model.init_cache(2, 9)


# ------------------------------------------------------------------ sampling from a source

def greedy_by_forward(model, encoder_ids, prompt, steps, extra_ids=()):
  """Reference greedy decoder: the full teacher-forced forward pass on the prefix sampled
  so far (padded to one shape), argmax at its last position; stops at EOS."""
  batch = hgenerate.source_batch([encoder_ids])
  length = len(prompt) + steps
  ids = list(prompt)
  for _ in range(steps):
    real = (np.arange(length) < len(ids)).astype(np.int32)[None]
    decoder_inputs = np.full((1, length), hbytes.PAD_ID, np.int32)
    decoder_inputs[0, :len(ids)] = ids
    logits = forward(model, {**batch, "decoder_inputs": decoder_inputs, "segment_ids": real,
                             "positions": np.arange(length, dtype=np.int32)[None] * real}).logits
    filtered = hgenerate.filter_logits(logits[:, len(ids) - 1], temperature=1.0, top_k=0,
                                       top_p=1.0, extra_ids=extra_ids)
    token = int(jnp.argmax(filtered[0]))
    if token == hbytes.EOS_ID:
      break
    ids.append(token)
  return np.asarray(ids[len(prompt):], np.int32)


def test_span_corruption_source_layout():
  ids = hgenerate.source_ids(b"ab<X>cd<X>", "span_corruption")
  np.testing.assert_array_equal(ids, [97, 98, 259, 99, 100, 260, hbytes.EOS_ID])
  np.testing.assert_array_equal(hgenerate.source_ids(b"ab"), [97, 98])  # prefix_lm: no EOS
  np.testing.assert_array_equal(hgenerate.source_ids(b""), [hbytes.EOS_ID])
  with pytest.raises(ValueError, match="marks each missing span"):
    hgenerate.source_ids(b"no marker", "span_corruption")
  assert hgenerate.fill_spans(b"ab<X>cd<X>", b"<X>12<X>3") == b"ab12cd3"
  assert hgenerate.fill_spans(b"ab<X>cd<X>", b"<X>12") == b"ab12cd<X>"


@pytest.mark.parametrize("objective", ["prefix_lm", "span_corruption"])
def test_greedy_from_source_matches_forward(objective):
  model = make_model()
  spread_gate(model, scale=3.0)  # soft gate values of all sizes
  source = b"To be, or not" if objective == "prefix_lm" else b"To <X>, or not<X>"
  out = hgenerate.generate_from_source(model, [source], max_new_bytes=8, objective=objective,
                                       temperature=0.0)
  if objective == "prefix_lm":
    want = greedy_by_forward(model, hgenerate.source_ids(source), [hbytes.BOS_ID], 8)
    assert out.texts[0] == hbytes.decode_bytes(want)
  else:
    first = int(hgenerate.SENTINEL_IDS[0])
    want = greedy_by_forward(model, hgenerate.source_ids(source, objective),
                             [hbytes.BOS_ID, first], 8, extra_ids=hgenerate.SENTINEL_IDS)
    assert out.texts[0] == hgenerate._render(np.concatenate([[first], want]), b"<X>")
    assert out.texts[0].startswith(b"<X>")
  assert len(want) > 0
  assert out.deletion_ratios.shape == (1,)


@pytest.mark.parametrize("hard", [False, True])
def test_source_batch_rows_match_alone(hard):
  model = make_model()
  spread_gate(model)  # about half deleted: hard deletion really compacts
  sources = [b"To be, or not to be, that is", b"ROMEO:"]
  both = hgenerate.generate_from_source(model, sources, max_new_bytes=6, temperature=0.0,
                                        hard_deletion=hard)
  for row, source in enumerate(sources):
    alone = hgenerate.generate_from_source(model, [source], max_new_bytes=6, temperature=0.0,
                                           hard_deletion=hard)
    assert both.texts[row] == alone.texts[0]
    np.testing.assert_allclose(both.deletion_ratios[row], alone.deletion_ratios[0])
  assert 0.0 < both.deletion_ratios[0] < 1.0
  if hard:  # the encoder input is padded to length_bucket(28) = 64 slots; fewer are kept
    assert both.memory_slots < hgenerate.length_bucket(len(sources[0]))


def test_hard_deletion_keeping_everything_equals_soft():
  model = make_model()
  model.gate.bias[...] = jnp.float32(-1e30)  # G = -0: nothing deleted
  sources = [b"To be, or not to be", b"ab"]
  options = dict(max_new_bytes=6, temperature=0.8, top_k=20, seed=3)  # sampled, same keys
  soft = hgenerate.generate_from_source(model, sources, **options)
  hard = hgenerate.generate_from_source(model, sources, hard_deletion=True, **options)
  assert hard.texts == soft.texts
  # soft: the whole (length-bucketed) encoder input; hard: every real byte, not the padding
  assert soft.memory_slots == hgenerate.length_bucket(len(sources[0]))
  assert len(sources[0]) <= hard.memory_slots < soft.memory_slots
  np.testing.assert_array_equal(hard.deletion_ratios, [0.0, 0.0])


def test_byt5_samples_from_source_without_ratios():
  out = hgenerate.generate_from_source(make_model("byt5"), [b"abc", b"de"], max_new_bytes=4,
                                       hard_deletion=True, temperature=0.0)
  # no gate: the decoder attends over the whole encoder input (padded to its length bucket)
  assert len(out.texts) == 2 and out.deletion_ratios is None
  assert out.memory_slots == hgenerate.length_bucket(3)


# ------------------------------------------------------------------ training

def test_sharded_matches_single_device():
  if jax.device_count() < 8:
    pytest.skip("needs 8 (simulated) devices: run through tests/conftest.py")
  batch = enc_dec_batch(0, 8, 16, 8, enc_docs=(6, None), dec_docs=(3, None))
  testing.assert_sharded_matches_single(tiny_config(), batch)


def test_overfit():
  batch = enc_dec_batch(0, 4, 24, 12)
  losses = testing.overfit_losses(tiny_config(), batch, steps=40)
  assert losses[-1] < 0.5 * losses[0], losses


# ------------------------------------------------------------------ shapes

def test_byt5_small_parameter_count():
  cfg = byt5_small.get_config().model
  model = nnx.eval_shape(lambda: build_model(cfg, nnx.Rngs(0)))
  shapes = jax.tree.leaves(nnx.state(model, nnx.Param))
  count = sum(int(np.prod(s.shape)) for s in shapes)
  d, inner, ff, v = 1472, 6 * 64, 3584, 264
  encoder_layer = 4 * d * inner + 3 * d * ff + 2 * d
  decoder_layer = 8 * d * inner + 3 * d * ff + 3 * d
  expected = 2 * v * d + 12 * encoder_layer + 4 * decoder_layer + 2 * d + 2 * 32 * 6
  assert count == expected
  assert 290e6 < count < 310e6, count  # ByT5-small: ~300M
  assert model.gate is None
  cfg.name = "mrt5"
  gated = nnx.eval_shape(lambda: build_model(cfg, nnx.Rngs(0)))
  assert gated.gate is not None and gated.gate_layer == 3
