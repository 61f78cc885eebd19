"""Configuration of hnet's HAT (Hierarchical Autoregressive Transformer), for
`AutoConfig.from_pretrained(dir, trust_remote_code=True)`. Needs only transformers.

The field names follow the published TFree-HAT checkpoints' config
(`hierarchical_autoregressive_transformer`: encoder_config / backbone_config /
decoder_config, each Llama-style, with a cross_attention_config in the encoder (word
pooling) and the decoder (word -> byte conditioning); max_word_size, sliding_window,
special_token_dict at the top). Where hnet's HAT has a quantity of its own, the field
is prefixed `hnet_`:
  hnet_pooling             "query" (one learned query per head, RoPE: word position on
                           the query, byte positions on the keys), "cls" or "mean"
  hnet_decoder_input_proj  True when the decoder is narrower or wider than the encoder
                           (a projection of the encoder's byte outputs)
The nested configs are plain dicts (as in config.json).
"""
from __future__ import annotations

from transformers import PretrainedConfig


class HnetHATConfig(PretrainedConfig):
  model_type = "hnet_hat"

  vocab_size: int = 264
  encoder_config: dict | None = None
  backbone_config: dict | None = None
  decoder_config: dict | None = None
  max_word_size: int = 100
  sliding_window: int | None = None
  max_position_embeddings: int = 262144
  special_token_dict: dict | None = None
  hnet_pooling: str = "query"
  hnet_decoder_input_proj: bool = False
  initializer_range: float = 0.02
  use_cache: bool = False
  tie_word_embeddings: bool = False
  pad_token_id: int | None = 256
  bos_token_id: int | None = 257
  eos_token_id: int | None = 258

  def __post_init__(self, **kwargs):
    for name in ("encoder_config", "backbone_config", "decoder_config"):
      if getattr(self, name) is None:
        setattr(self, name, {"hidden_size": 64, "num_hidden_layers": 1, "num_attention_heads": 4,
                             "num_key_value_heads": 4, "intermediate_size": 128,
                             "rms_norm_eps": 1e-6, "rope_theta": 10000.0})
    if self.max_word_size < 4:
      raise ValueError(f"max_word_size must be >= 4 (one UTF-8 character), got {self.max_word_size}")
    super().__post_init__(**kwargs)


__all__ = ["HnetHATConfig"]
