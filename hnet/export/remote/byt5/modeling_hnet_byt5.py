"""hnet's ByT5 in PyTorch (remote code of an hnet export; needs only transformers).

The model is transformers' T5 v1.1 with the two differences of
configuration_hnet_byt5.py: every attention (encoder, decoder self and cross) scales
its logits by 1/sqrt(d_kv), and lm_head is its own weight (only the encoder and decoder
input embeddings share `shared`). Generation, caching and the relative position
buckets are T5's.
"""
from transformers import T5ForConditionalGeneration
from transformers.models.t5.modeling_t5 import T5Attention

from .configuration_hnet_byt5 import HnetByT5Config


class HnetByT5ForConditionalGeneration(T5ForConditionalGeneration):
  config_class = HnetByT5Config
  _tied_weights_keys = {
      "encoder.embed_tokens.weight": "shared.weight",
      "decoder.embed_tokens.weight": "shared.weight",
  }

  def __init__(self, config: HnetByT5Config):
    super().__init__(config)
    for module in self.modules():
      if isinstance(module, T5Attention):
        module.scaling = config.d_kv ** -0.5  # difference 1


__all__ = ["HnetByT5ForConditionalGeneration"]
