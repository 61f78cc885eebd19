"""ByT5 tiny: the MrT5 encoder-decoder without the delete gate (CPU-trainable baseline).

Same shapes and data as configs/mrt5_tiny.py so the two compare directly.
"""
import ml_collections

from configs import mrt5_tiny


def get_config() -> ml_collections.ConfigDict:
  c = mrt5_tiny.get_config()
  c.model.name = "byt5"
  c.model.gate_layer = 0  # no delete gate (build() also ignores it for "byt5")
  c.model.softmax1 = False  # plain softmax attention everywhere, as in ByT5
  c.train.lr_multipliers = ml_collections.ConfigDict()  # MrT5's are for its gate
  return c
