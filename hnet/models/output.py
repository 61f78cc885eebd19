"""The one output every model family returns, and the generation interface."""
from __future__ import annotations

from typing import Any, Protocol

import flax.struct
import jax


@flax.struct.dataclass
class ModelOutput:
  """What a model returns for a batch.

  logits:     [B, L, V] float, aligned with batch["targets"] (position t predicts
              targets[t]); the train loop applies cross-entropy with batch["loss_mask"].
  aux_losses: name -> scalar, already multiplied by its weight; the train loop adds
              their sum to the loss (H-Net ratio loss, MrT5 gate regulariser).
  metrics:    name -> scalar to log (bytes per chunk, deletion ratio, ...).
  """
  logits: jax.Array
  aux_losses: dict[str, jax.Array] = flax.struct.field(default_factory=dict)
  metrics: dict[str, jax.Array] = flax.struct.field(default_factory=dict)


class Generator(Protocol):
  """Batched incremental decoding, the same for every family.

  cache = model.init_cache(batch_size, max_len)
  logits [B, V], cache = model.decode_step(cache, ids [B])
  Feeding ids x_0..x_t one step at a time gives the logits that the full forward
  pass gives at position t (tests check this for every family).

  Optional: cache = model.prefill(cache, ids [B, W], length) leaves the cache that
  `length` (a traced scalar <= W, the same for every row) decode_steps feeding
  ids[:, :length] leave, in one pass over the W positions; no logits. hnet/generate.py uses it for the part of the prompts every row has and
  steps through the rest; a family without it is stepped through the whole prompt.
  tests/test_generate.py checks prefill + decode == decode alone for every family.
  """

  def init_cache(self, batch_size: int, max_len: int) -> Any: ...

  def decode_step(self, cache: Any, ids: jax.Array) -> tuple[jax.Array, Any]: ...

  def prefill(self, cache: Any, ids: jax.Array, length: jax.Array) -> Any: ...
