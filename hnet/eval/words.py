"""Next-word exact match for any model whose logits follow the byte stream.

HAT and the word-pooled models report next-word accuracy during training
(hnet/models/hat.py `word_metrics`); a byte-level model (Transformer, H-Net) has no word
layout of its own. Here its logits are read on the *words* layout of another config
(e.g. configs/hat_tiny.py): the same packed byte stream (inputs / targets / segment_ids
/ positions / loss_mask) plus the word bookkeeping that `word_metrics` needs, so the
byte model is scored on exactly the words HAT is scored on:

  metrics = next_word_metrics(model, hat_config.data, split="validation")
  # {"next_word_accuracy", "next_word_accuracy_rare", "rare_word_fraction", "bytes_per_word"}

Batches are averaged weighted by their targets, as hnet.loop.evaluate does.
"""
from __future__ import annotations

import jax
import numpy as np
from flax import nnx

from hnet.data.pipeline import make_iterator
from hnet.models.hat import word_metrics


def next_word_metrics(model, words_data_config, *, split: str, batch_size: int = 16,
                      max_batches: int = 0) -> dict[str, float]:
  """`model(batch).logits` [B, L, V] aligned with batch["targets"] -> word metrics."""
  if words_data_config.get("layout") != "words":
    raise ValueError(f"next_word_metrics needs a words-layout data config, got layout "
                     f"{words_data_config.get('layout')!r} (use e.g. configs/hat_tiny.py)")
  num_words = int(words_data_config.words_per_row)
  step = nnx.jit(lambda m, b: word_metrics(m(b).logits, b, num_words))
  totals: dict[str, float] = {}
  weight_sum = 0.0
  for count, batch in enumerate(make_iterator(words_data_config, split,
                                              global_batch_size=batch_size, repeat=False)):
    if max_batches and count >= max_batches:
      break
    metrics = jax.device_get(step(model, {k: np.asarray(v) for k, v in batch.items()}))
    weight = float(np.sum(batch["loss_mask"]))
    for k, v in metrics.items():
      totals[k] = totals.get(k, 0.0) + float(v) * weight
    weight_sum += weight
  if not weight_sum:
    raise ValueError(f"split {split!r} of the words layout produced no targets")
  return {k: v / weight_sum for k, v in totals.items()}
