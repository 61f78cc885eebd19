"""Configuration of hnet's ByT5 (remote code of an hnet export; needs only transformers).

hnet's ByT5 is T5 v1.1 (gated-GELU, no biases, RMSNorm before each sublayer, T5
relative position buckets, untied head) except in two places, which is why it is not
exported as T5ForConditionalGeneration:
  1. attention logits are scaled by 1/sqrt(d_kv) before the relative position bias is
     added (T5 does not scale; it folds the factor into its initialisation);
  2. the output head is never tied to the shared embedding, and the decoder output is
     never scaled by d_model^-0.5 (transformers 5 ties T5's lm_head to `shared`).
"""
from transformers import T5Config


class HnetByT5Config(T5Config):
  model_type = "hnet_byt5"

  def __post_init__(self, **kwargs):
    super().__post_init__(**kwargs)
    self.scale_decoder_outputs = False  # difference 2: never scaled
