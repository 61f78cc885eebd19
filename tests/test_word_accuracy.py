"""hnet/eval/words.py: next-word exact match of byte-stream logits on the words layout."""
import types

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from configs import hat_tiny, transformer_tiny
from hnet.eval.words import next_word_metrics


class Oracle(nnx.Module):
  """Logits that put all mass on the target byte (shift=0) or on the next id (shift=1)."""

  def __init__(self, shift: int):
    self.shift = shift

  def __call__(self, batch):
    return types.SimpleNamespace(logits=10.0 * jax.nn.one_hot(batch["targets"] + self.shift, 264))


def test_next_word_metrics_on_planted_logits():
  data = hat_tiny.get_config().data
  right = next_word_metrics(Oracle(0), data, split=data.eval_split, batch_size=4, max_batches=2)
  wrong = next_word_metrics(Oracle(1), data, split=data.eval_split, batch_size=4, max_batches=2)
  assert right["next_word_accuracy"] == 1.0 and wrong["next_word_accuracy"] == 0.0
  assert 3.0 < right["bytes_per_word"] < 6.0


def test_next_word_metrics_needs_a_words_layout():
  with pytest.raises(ValueError, match="words-layout"):
    next_word_metrics(Oracle(0), transformer_tiny.get_config().data, split="validation")
