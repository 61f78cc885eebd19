"""Configuration of hnet's word-pooled byte LMs, Learn Your Tokens (pooling "cls") and
Byte2Word (pooling "query"), for `AutoConfig.from_pretrained(dir, trust_remote_code=True)`.
Needs only transformers. No published checkpoint format exists for these models; the
nested configs use Llama's field names (hidden_size, num_hidden_layers, ...).

  byte_hidden_size     width of the byte embeddings, the in-word encoder and decoder
  pooling              "cls" (num_cls CLS vectors + pooling_layers bidirectional layers),
                       "query" (one learned query per head) or "mean"
  backbone_config      the causal Transformer over words
  decoder_config       the causal in-word decoder (width byte_hidden_size)
  max_word_size        the splitter's max_word_size = bytes per word slot
"""
from __future__ import annotations

from transformers import PretrainedConfig


class HnetWordPooledConfig(PretrainedConfig):
  model_type = "hnet_word_pooled"

  vocab_size: int = 264
  byte_hidden_size: int = 64
  pooling: str = "cls"
  num_cls: int = 4
  pooling_layers: int = 2
  pooling_heads: int = 4
  pooling_intermediate_size: int = 128
  backbone_config: dict | None = None
  decoder_config: dict | None = None
  max_word_size: int = 24
  rms_norm_eps: float = 1e-6
  rope_theta: float = 10000.0
  initializer_range: float = 0.02
  use_cache: bool = False
  tie_word_embeddings: bool = False
  pad_token_id: int | None = 256
  bos_token_id: int | None = 257
  eos_token_id: int | None = 258

  def __post_init__(self, **kwargs):
    if self.backbone_config is None:
      self.backbone_config = {"hidden_size": 64, "num_hidden_layers": 1, "num_attention_heads": 4,
                              "num_key_value_heads": 4, "intermediate_size": 128}
    if self.decoder_config is None:
      self.decoder_config = {"num_hidden_layers": 1, "num_attention_heads": 4,
                             "intermediate_size": 128}
    if self.max_word_size < 4:
      raise ValueError(f"max_word_size must be >= 4 (one UTF-8 character), got {self.max_word_size}")
    super().__post_init__(**kwargs)


__all__ = ["HnetWordPooledConfig"]
