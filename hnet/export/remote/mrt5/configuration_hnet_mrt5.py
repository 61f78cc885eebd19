"""Configuration of hnet's MrT5 (ByT5 with a delete gate), for
`AutoConfig.from_pretrained(dir, trust_remote_code=True)`. Needs only transformers.

The T5 fields keep T5's names (vocab_size, d_model, d_kv, d_ff, num_layers,
num_decoder_layers, num_heads, relative_attention_num_buckets,
relative_attention_max_distance, layer_norm_epsilon, feed_forward_proj "gated-gelu").
The delete gate's:
  gate_layer        the gate reads the encoder after this many layers (1-based)
  gate_k            G = gate_k * sigmoid(w . RMSNorm(h) + b) in (gate_k, 0); a byte is
                    deleted where G < gate_k / 2
  gate_standardise  RMSNorm(h) is standardised over the bytes of its row first
  softmax1          the encoder layers after the gate and the cross-attention use
                    softmax1 (an extra key of logit 0 and value 0)
  hard_deletion     the default of forward(hard_deletion=...): False = soft deletion (the
                    training path: G added to the attention logits), True = the deleted
                    bytes are dropped and the later layers run on the kept ones only
"""
from __future__ import annotations

from transformers import PretrainedConfig


class HnetMrT5Config(PretrainedConfig):
  model_type = "hnet_mrt5"

  vocab_size: int = 264
  d_model: int = 128
  d_kv: int = 32
  d_ff: int = 256
  num_layers: int = 4
  num_decoder_layers: int = 1
  num_heads: int = 4
  relative_attention_num_buckets: int = 32
  relative_attention_max_distance: int = 128
  layer_norm_epsilon: float = 1e-6
  feed_forward_proj: str = "gated-gelu"
  gate_layer: int = 3
  gate_k: float = -30.0
  gate_standardise: bool = False
  softmax1: bool = False
  hard_deletion: bool = False
  initializer_range: float = 0.02
  is_encoder_decoder: bool = True
  use_cache: bool = False
  tie_word_embeddings: bool = False
  pad_token_id: int | None = 256
  bos_token_id: int | None = 257
  eos_token_id: int | None = 258
  decoder_start_token_id: int | None = 257

  def __post_init__(self, **kwargs):
    if not 1 <= self.gate_layer <= self.num_layers:
      raise ValueError(f"gate_layer={self.gate_layer} must lie in [1, num_layers={self.num_layers}]")
    if self.feed_forward_proj != "gated-gelu":
      raise ValueError("hnet's MrT5 uses the gated-GELU feed-forward (feed_forward_proj 'gated-gelu')")
    super().__post_init__(**kwargs)


__all__ = ["HnetMrT5Config"]
