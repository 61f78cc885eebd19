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
