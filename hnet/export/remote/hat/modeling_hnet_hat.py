"""hnet's HAT in PyTorch (remote code of an hnet export; needs only torch, transformers
and the files beside it).

  bytes [B, L] -> embed -> encoder (causal Llama blocks, sliding window)    [B, L, De]
  word pooling per word (the words of splitter.py)                      [B, W, D]
  backbone (causal Llama blocks over words, no final norm)                  [B, W, D]
  pred[w] = h[w-1], pred[0] = the learned first-word vector (words < w only)
  decoder: x = encoder output (projected if the widths differ); per layer
    x += o_proj(v_proj(RMSNorm(pred[open word of t])))  -- cross-attention to the one
    word vector that predicts the current word (one key: a projection) -- then a causal
    Llama block (sliding window); final RMSNorm; byte head.

Byte t reads the word that is *open* after reading bytes 0..t (the splitter's
WordStream): the words that the splitter has finished on the prefix condition it, never
a word whose end depends on byte t+1 (hnet/models/hat.py explains the choice).

Each row of input_ids is one document (attention_mask marks its ids; padding on either
side). generate() is transformers' own loop; every step recomputes the forward over the
whole prefix (there is no KV cache in this export), so the words are closed by the
splitter exactly as hnet's cached decoding closes them.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutput

from .configuration_hnet_hat import HnetHATConfig
from .hnet_word_layers import (LlamaBlock, RMSNorm, gather_words, init_weights, make_pooling,
                               sequence_mask, shift_words, to_word_grid, unpack_logits,
                               word_layout)


def _blocks(config: dict) -> nn.ModuleList:
  return nn.ModuleList([
      LlamaBlock(config["hidden_size"], config["num_attention_heads"],
                 config.get("num_key_value_heads") or config["num_attention_heads"],
                 config["intermediate_size"], config.get("rms_norm_eps", 1e-6),
                 config.get("rope_theta", 10000.0))
      for _ in range(config["num_hidden_layers"])])


class HATEncoder(nn.Module):
  def __init__(self, config: HnetHATConfig):
    super().__init__()
    enc, pool = config.encoder_config, config.encoder_config["cross_attention_config"]
    self.embed_tokens = nn.Embedding(config.vocab_size, enc["hidden_size"])
    self.layers = _blocks(enc)
    self.pooling = make_pooling(config.hnet_pooling, enc["hidden_size"], pool["hidden_size_q"],
                                num_heads=pool["num_attention_heads"],
                                num_cls=pool.get("hnet_num_cls", 4),
                                num_layers=pool.get("hnet_num_layers", 2),
                                mlp_dim=pool.get("hnet_intermediate_size", enc["intermediate_size"]),
                                eps=enc.get("rms_norm_eps", 1e-6),
                                rope_theta=enc.get("rope_theta", 10000.0))


class HATBackbone(nn.Module):
  def __init__(self, config: HnetHATConfig):
    super().__init__()
    self.layers = _blocks(config.backbone_config)
    self.first_word = nn.Parameter(torch.zeros(config.backbone_config["hidden_size"]))


class HATWordCrossAttention(nn.Module):
  """Cross-attention with a single key (the word vector): o_proj(v_proj(RMSNorm(word)))."""

  def __init__(self, word_dim: int, dim: int, inner: int, eps: float):
    super().__init__()
    self.norm = RMSNorm(word_dim, eps)
    self.v_proj = nn.Linear(word_dim, inner, bias=False)
    self.o_proj = nn.Linear(inner, dim, bias=False)

  def forward(self, words: torch.Tensor) -> torch.Tensor:
    return self.o_proj(self.v_proj(self.norm(words)))


class HATDecoderLayer(nn.Module):
  def __init__(self, config: HnetHATConfig):
    super().__init__()
    dec = config.decoder_config
    cross = dec["cross_attention_config"]
    self.cross_attention = HATWordCrossAttention(config.backbone_config["hidden_size"],
                                                 dec["hidden_size"], cross["hidden_size"],
                                                 dec.get("rms_norm_eps", 1e-6))
    self.block = _blocks({**dec, "num_hidden_layers": 1})[0]


class HATDecoder(nn.Module):
  def __init__(self, config: HnetHATConfig):
    super().__init__()
    enc, dec = config.encoder_config, config.decoder_config
    self.input_projection = (nn.Linear(enc["hidden_size"], dec["hidden_size"], bias=False)
                             if config.hnet_decoder_input_proj else None)
    self.layers = nn.ModuleList([HATDecoderLayer(config) for _ in range(dec["num_hidden_layers"])])
    self.norm = RMSNorm(dec["hidden_size"], dec.get("rms_norm_eps", 1e-6))


class HnetHATPreTrainedModel(PreTrainedModel):
  config_class = HnetHATConfig
  base_model_prefix = "hat"
  _no_split_modules = ["LlamaBlock", "HATDecoderLayer"]

  @torch.no_grad()
  def _init_weights(self, module):
    init_weights(module, self.config.initializer_range)


class HnetHATForCausalLM(HnetHATPreTrainedModel, GenerationMixin):
  def __init__(self, config: HnetHATConfig):
    super().__init__(config)
    self.encoder = HATEncoder(config)
    self.backbone = HATBackbone(config)
    self.decoder = HATDecoder(config)
    self.lm_head = nn.Linear(config.decoder_config["hidden_size"], config.vocab_size, bias=False)
    self.post_init()

  @classmethod
  def _supports_default_dynamic_cache(cls) -> bool:
    return False  # no KV cache: every step recomputes the prefix

  def get_input_embeddings(self):
    return self.encoder.embed_tokens

  def set_input_embeddings(self, value):
    self.encoder.embed_tokens = value

  def get_output_embeddings(self):
    return self.lm_head

  def prepare_inputs_for_generation(self, input_ids, attention_mask=None, **kwargs):
    return {"input_ids": input_ids, "attention_mask": attention_mask}

  def forward(self, input_ids: torch.LongTensor | None = None,
              attention_mask: torch.Tensor | None = None, labels: torch.LongTensor | None = None,
              return_dict: bool | None = None, **kwargs) -> CausalLMOutput:
    """input_ids [B, L] -> logits [B, L, V] float32 (padding columns: zeros).
    labels [B, L] (-100 ignored): mean cross-entropy of logits[:, :-1] vs labels[:, 1:]."""
    if input_ids is None:
      raise ValueError("HAT reads byte ids: pass input_ids [batch, length]")
    config = self.config
    enc, dec = config.encoder_config, config.decoder_config
    layout = word_layout(input_ids, attention_mask, config.max_word_size)
    W, Lw = layout.word_real.shape[1], config.max_word_size
    x = self.encoder.embed_tokens(layout.ids)                                      # [B, L, De]
    mask = sequence_mask(layout.real, causal=True, window=enc.get("sliding_window"))
    for layer in self.encoder.layers:
      x = layer(x, layout.positions, mask)
    grid = to_word_grid(x, layout.word_index, layout.byte_in_word, W, Lw)          # [B, W, Lw, De]
    grid_real = to_word_grid(layout.real.long(), layout.word_index, layout.byte_in_word, W, Lw) > 0
    grid_pos = to_word_grid(layout.positions, layout.word_index, layout.byte_in_word, W, Lw)
    h = self.encoder.pooling(grid, grid_real, grid_pos, layout.word_positions)     # [B, W, D]
    word_mask = sequence_mask(layout.word_real, causal=True)
    for layer in self.backbone.layers:
      h = layer(h, layout.word_positions, word_mask)
    pred = shift_words(h, self.backbone.first_word)                                # [B, W, D]
    y = x if self.decoder.input_projection is None else self.decoder.input_projection(x)
    mask = sequence_mask(layout.real, causal=True, window=dec.get("sliding_window"))
    for layer in self.decoder.layers:
      y = y + gather_words(layer.cross_attention(pred), layout.open_word_index)
      y = layer.block(y, layout.positions, mask)
    logits = self.lm_head(self.decoder.norm(y)).float()                            # [B, L, V]
    logits = unpack_logits(logits, layout, input_ids.shape[1])
    loss = None
    if labels is not None:
      loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                             labels[:, 1:].reshape(-1).to(logits.device), ignore_index=-100)
    return CausalLMOutput(loss=loss, logits=logits)


__all__ = ["HnetHATForCausalLM", "HnetHATPreTrainedModel"]
