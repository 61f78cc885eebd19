"""hnet/generate.py's shared loop: compiled once per bucket, prefill + decode == decode
alone, early exit at EOS (tiny models of every family with a `prefill`)."""
import jax
import numpy as np
import pytest
from flax import nnx

from configs import transformer_tiny
from hnet import bytes as hbytes
from hnet import generate as hgenerate
from hnet.models import build_model
from test_hnet import tiny_config as hnet_config


def transformer_config():
  c = transformer_tiny.get_config()
  c.model.update(dim=32, num_layers=2, num_heads=2, num_kv_heads=1, mlp_dim=64, window=24)
  return c


FAMILIES = {"transformer": transformer_config, "hnet_1stage": lambda: hnet_config(1),
            "hnet_2stage": lambda: hnet_config(2)}
_MODELS: dict = {}


def model_of(family):
  if family not in _MODELS:
    _MODELS[family] = build_model(FAMILIES[family]().model, nnx.Rngs(0))
  return _MODELS[family]


class CompileCounter:
  """Counts XLA backend compilations while active (jax.monitoring's compile event)."""

  def __init__(self):
    self.count, self.active = 0, False
    jax.monitoring.register_event_duration_secs_listener(self._listen)

  def _listen(self, event, duration, **kwargs):
    del duration, kwargs
    if self.active and event == "/jax/core/compile/backend_compile_duration":
      self.count += 1


COMPILES = CompileCounter()


PROMPTS = [b"To be, or not to be, that is the question: whether", b"ROMEO. But soft",
           b"Now is the winter of our discontent made glorious summer"]
GREEDY = hgenerate.Sampling(temperature=0.0)


def sample(family, prompts, temperature=0.0, eos_id=-1, max_new_bytes=40, **options):
  """3 rows, 128 slots, prefill width 64: the tests below share one compiled loop."""
  ids = [hbytes.encode(p, add_bos=True) for p in prompts]
  return hgenerate._sample_ids(model_of(family), ids, max_new_bytes=max_new_bytes, seed=3,
                               sampling=hgenerate.Sampling(temperature=temperature),
                               eos_id=eos_id, **options)


@pytest.mark.parametrize("family", ["transformer", "hnet_1stage"])
def test_second_call_with_a_new_prompt_does_not_compile(family):
  first = sample(family, PROMPTS)
  COMPILES.count, COMPILES.active = 0, True
  try:
    second = sample(family, [b"JULIET. O Romeo, Romeo! wherefore art thou", b"What light",
                             b"Friends, Romans, countrymen, lend me your ears"], max_new_bytes=50)
    third = hgenerate.generate(model_of(family), [b"To sleep, perchance to dream", b"Ay, there",
                                                  b"For in that sleep of death"],
                               max_new_bytes=80, temperature=0.0)
  finally:
    COMPILES.active = False
  assert COMPILES.count == 0, f"{COMPILES.count} compilation(s) in later calls"
  assert [len(x) for x in first] == [40] * 3 and [len(x) for x in second] == [50] * 3
  assert len(third) == 3


@pytest.mark.parametrize("family,temperature", [
    ("transformer", 0.0), ("transformer", 1.0), ("hnet_1stage", 0.0),
    pytest.param("hnet_2stage", 0.0, marks=pytest.mark.slow)])
def test_prefill_then_decode_equals_decode_alone(family, temperature):
  """Rows of different prompt lengths (the common 15 ids prefilled, the rest stepped):
  the same ids as stepping through every prompt (same seed: same samples)."""
  assert hgenerate.prefill_width(model_of(family), 16, 128) == 64
  prefilled = sample(family, PROMPTS, temperature)
  stepped = sample(family, PROMPTS, temperature, prefill=False)
  for a, b in zip(prefilled, stepped):
    np.testing.assert_array_equal(a, b)
  assert all(len(x) == 40 for x in prefilled)


def test_loop_exits_when_every_row_has_sampled_eos():
  """EOS = an id row 0 samples in its first steps: each row is cut at its own first
  EOS, and the loop stops at the step where every row is done (the later columns stay
  PAD; rows 1 and 2 inactive)."""
  free = sample("transformer", PROMPTS)
  eos = int(free[0][3])
  cut = sample("transformer", PROMPTS, eos_id=eos)
  for full, short in zip(free, cut):
    stops = np.flatnonzero(full == eos)
    np.testing.assert_array_equal(short, full[:stops[0]] if stops.size else full)
  ids = [hbytes.encode(p, add_bos=True) for p in PROMPTS]
  lengths = np.array([len(x) for x in ids] + [1], np.int32)
  prompt = np.full((4, 128), hbytes.PAD_ID, np.int32)
  for row, x in enumerate(ids):
    prompt[row, :len(x)] = x
  graphdef, state = nnx.split(model_of("transformer"))
  out = np.asarray(hgenerate._loop(
      hgenerate.StaticGraph(graphdef), state, None, prompt, lengths, np.arange(4) < 1,
      np.int32(lengths.min() - 1), np.int32(40), jax.random.key(3), np.int32(eos),
      sampling=GREEDY, width=64))
  stop = lengths[0] - 1 + int(np.flatnonzero(free[0] == eos)[0])  # the step that sampled EOS
  assert out[0, stop] == eos
  assert (out[:, stop + 1:] == hbytes.PAD_ID).all(), "the loop ran past EOS"


def test_sampling_draws_the_filtered_distribution():
  """Inverse-CDF sampling over 40,000 uniforms: each id's frequency is its filtered
  softmax probability within 4 standard errors; ids outside top-k / top-p, special ids
  but EOS, and u = 0 never give an id of probability 0."""
  rng = np.random.default_rng(0)
  logits = np.full((1, 264), -np.inf, np.float32)
  logits[0, [3, 7, 50, 200, hbytes.EOS_ID, hbytes.PAD_ID]] = np.log([0.1, 0.4, 0.2, 0.1, 0.1, 0.1])
  uniforms = np.concatenate([[0.0], rng.random(39_999)]).astype(np.float32)
  cases = {  # options -> the probabilities of the ids it keeps (renormalised)
      (1.0, 0, 1.0): {3: 0.1, 7: 0.4, 50: 0.2, 200: 0.1, hbytes.EOS_ID: 0.1},
      (1.0, 2, 1.0): {7: 0.4, 50: 0.2},
      (1.0, 0, 0.55): {7: 0.4, 50: 0.2},
      (0.5, 0, 1.0): {3: 0.01, 7: 0.16, 50: 0.04, 200: 0.01, hbytes.EOS_ID: 0.01}}
  for (temperature, top_k, top_p), kept in cases.items():
    pick = jax.jit(jax.vmap(lambda u: hgenerate.Sampling(temperature, top_k, top_p).pick(
        logits, u[None])[0]))
    ids = np.asarray(pick(uniforms))
    total = sum(kept.values())
    assert set(np.unique(ids)) <= set(kept), (temperature, top_k, top_p, np.unique(ids))
    for token, weight in kept.items():
      p = weight / total
      got = np.mean(ids == token)
      assert abs(got - p) < 4 * np.sqrt(p * (1 - p) / len(ids)), (token, got, p)


# --------------------------------------------------------------------------- word models
# HAT and the word-pooled models run the same compiled loop, the host-side splitter
# reached through an io_callback (hnet.generate.HostInput).

def word_model(family):
  if family not in _MODELS:
    from test_hat import tiny_config as hat_config
    from test_word_pooled import tiny_config as pooled_config
    config = hat_config() if family == "hat" else pooled_config(family)
    _MODELS[family] = build_model(config.model, nnx.Rngs(0))
  return _MODELS[family]


def host_loop_reference(model, prompts, max_new_bytes, temperature, seed=3):
  """The plain reference: one jitted decode_step per byte from Python, the tracker
  pushed on the host, step t sampling with step_uniforms(key, T, B)[t] (as
  hnet.generate._loop)."""
  from hnet.models.hat import WordBoundaryTracker
  ids = [hbytes.encode(p, add_bos=True) for p in prompts]
  B = hgenerate.batch_bucket(len(ids))
  ids += [ids[0][:1]] * (B - len(ids))
  slots = hgenerate.length_bucket(max(len(x) for x in ids) + max_new_bytes)
  tracker = WordBoundaryTracker(B, model.max_words_per_step, model.max_word_len)
  step = nnx.jit(lambda m, c, fed, f: m.decode_step(c, fed, f))
  sampling, key = hgenerate.Sampling(temperature), jax.random.key(seed)
  cache, previous = model.init_cache(B, slots), np.zeros(B, np.int32)
  uniforms = hgenerate.step_uniforms(key, slots, B)
  out = [[] for _ in prompts]
  for t in range(max(len(x) for x in ids) - 1 + max_new_bytes):
    fed = np.array([x[t] if t < len(x) else previous[r] for r, x in enumerate(ids)], np.int32)
    logits, cache = step(model, cache, fed, tracker.push(fed))
    previous = np.asarray(sampling.pick(logits, uniforms[t]))
    for row in range(len(prompts)):
      if len(ids[row]) - 1 <= t < len(ids[row]) - 1 + max_new_bytes:
        out[row].append(int(previous[row]))
  return out


@pytest.mark.parametrize("family,temperature", [("hat", 0.0), ("hat", 1.0), ("lyt", 0.0)])
def test_word_model_loop_equals_the_host_loop(family, temperature):
  """Rows of different prompt lengths, 24 new ids each (EOS fed on): the compiled loop
  samples exactly the ids of the byte-by-byte host loop (same seed: same samples)."""
  model = word_model(family)
  ids = [hbytes.encode(p, add_bos=True) for p in PROMPTS]
  from hnet.models import hat
  with hat.word_tracker(4, model.max_words_per_step, model.max_word_len) as handle:
    got = hgenerate._sample_ids(model, ids, max_new_bytes=24, seed=3,
                                sampling=hgenerate.Sampling(temperature), eos_id=-1,
                                host=hgenerate.HostInput(hat._push_words, model.max_words_per_step),
                                host_handle=handle)
  want = host_loop_reference(model, PROMPTS, 24, temperature)
  for row, (a, b) in enumerate(zip(got, want)):
    np.testing.assert_array_equal(a, b, err_msg=f"row {row}")


@pytest.mark.parametrize("family", ["hat", "byte2word"])
def test_word_model_second_call_does_not_compile(family):
  from hnet.models import hat
  model = word_model(family)
  first = hat.generate(model, PROMPTS, max_new_bytes=40, temperature=1.0, stop_at_eos=False,
                       max_word_size=model.max_word_len)
  COMPILES.count, COMPILES.active = 0, True
  try:
    second = hat.generate(model, [b"JULIET. O Romeo, Romeo! wherefore art thou", b"What light",
                                  b"Friends, Romans, countrymen, lend me your ears"],
                          max_new_bytes=50, temperature=1.0, seed=1, stop_at_eos=False,
                          max_word_size=model.max_word_len)
  finally:
    COMPILES.active = False
  assert COMPILES.count == 0, f"{COMPILES.count} compilation(s) in the second call"
  assert [len(x) for x in first] == [40] * 3 and [len(x) for x in second] == [50] * 3
  assert not hat._TRACKERS, "a finished call left its tracker registered"
