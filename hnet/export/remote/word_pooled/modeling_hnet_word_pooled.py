"""hnet's word-pooled byte LMs in PyTorch: Learn Your Tokens and Byte2Word (remote code
of an hnet export; needs only torch, transformers and the files beside it).

  word bytes [B, W, Lw] -> byte embeddings -> pooling per word               [B, W, D]
  backbone (causal Llama blocks over words)                                  [B, W, D]
  pred[w] = h[w-1], pred[0] = the learned first-word vector (words < w only)
  in-word decoder, every word in parallel: [proj(pred[w]), e(b_0), ..., e(b_{Lw-1})]
  through causal Llama blocks restricted to the word; the output at the slot of b_k
  predicts the byte after b_k; final RMSNorm; byte head.

Byte t is decoded in the sequence of the word that is open after reading bytes 0..t:
where the splitter places a boundary late (an incomplete multi-byte character,
" ab" + b"\xc3\x97" -> " ab", "×") the late bytes are read at padding slots of the open
word's sequence (hnet/models/word_pooled.py explains the choice).

Each row of input_ids is one document (attention_mask marks its ids; padding on either
side). generate() is transformers' own loop recomputing the forward over the prefix at
every step (no KV cache in this export); words are closed by the splitter.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutput

from .configuration_hnet_word_pooled import HnetWordPooledConfig
from .hnet_word_layers import (LlamaBlock, RMSNorm, from_word_grid, init_weights, make_pooling,
                               sequence_mask, shift_words, unpack_logits, word_layout)


def _blocks(dim: int, config: dict, eps: float, rope_theta: float) -> nn.ModuleList:
  heads = config["num_attention_heads"]
  return nn.ModuleList([
      LlamaBlock(dim, heads, config.get("num_key_value_heads") or heads,
                 config["intermediate_size"], eps, rope_theta)
      for _ in range(config["num_hidden_layers"])])


class WordPooledBackbone(nn.Module):
  def __init__(self, config: HnetWordPooledConfig):
    super().__init__()
    bb = config.backbone_config
    self.layers = _blocks(bb["hidden_size"], bb, config.rms_norm_eps, config.rope_theta)
    self.first_word = nn.Parameter(torch.zeros(bb["hidden_size"]))


class WordPooledDecoder(nn.Module):
  def __init__(self, config: HnetWordPooledConfig):
    super().__init__()
    Db = config.byte_hidden_size
    self.input_projection = nn.Linear(config.backbone_config["hidden_size"], Db, bias=False)
    self.layers = _blocks(Db, config.decoder_config, config.rms_norm_eps, config.rope_theta)
    self.norm = RMSNorm(Db, config.rms_norm_eps)


class HnetWordPooledPreTrainedModel(PreTrainedModel):
  config_class = HnetWordPooledConfig
  base_model_prefix = "word_pooled"
  _no_split_modules = ["LlamaBlock"]

  @torch.no_grad()
  def _init_weights(self, module):
    init_weights(module, self.config.initializer_range)


class HnetWordPooledForCausalLM(HnetWordPooledPreTrainedModel, GenerationMixin):
  def __init__(self, config: HnetWordPooledConfig):
    super().__init__(config)
    self.embed_tokens = nn.Embedding(config.vocab_size, config.byte_hidden_size)
    self.pooling = make_pooling(config.pooling, config.byte_hidden_size,
                                config.backbone_config["hidden_size"],
                                num_heads=config.pooling_heads, num_cls=config.num_cls,
                                num_layers=config.pooling_layers,
                                mlp_dim=config.pooling_intermediate_size, eps=config.rms_norm_eps,
                                rope_theta=config.rope_theta)
    self.backbone = WordPooledBackbone(config)
    self.decoder = WordPooledDecoder(config)
    self.lm_head = nn.Linear(config.byte_hidden_size, config.vocab_size, bias=False)
    self.post_init()

  @classmethod
  def _supports_default_dynamic_cache(cls) -> bool:
    return False  # no KV cache: every step recomputes the prefix

  def get_input_embeddings(self):
    return self.embed_tokens

  def set_input_embeddings(self, value):
    self.embed_tokens = value

  def get_output_embeddings(self):
    return self.lm_head

  def prepare_inputs_for_generation(self, input_ids, attention_mask=None, **kwargs):
    return {"input_ids": input_ids, "attention_mask": attention_mask}

  def _decode_words(self, pred, word_ids, byte_mask):
    """pred [B, W, D], word_ids / byte_mask [B, W, Lw] -> [B, W, Lw, Db]: the output at
    each byte's slot of [proj(pred), e(b_0), ..., e(b_{Lw-1})]."""
    B, W, Lw = word_ids.shape
    e = self.embed_tokens(word_ids)                                               # [B, W, Lw, Db]
    seq = torch.cat([self.decoder.input_projection(pred)[:, :, None], e], dim=2)
    seq = seq.reshape(B * W, Lw + 1, -1)
    real = torch.cat([torch.ones((B, W, 1), dtype=torch.bool, device=e.device), byte_mask], dim=2)
    real = real.reshape(B * W, Lw + 1)
    positions = torch.arange(Lw + 1, device=e.device).expand(B * W, Lw + 1)
    mask = sequence_mask(real, causal=True)
    for layer in self.decoder.layers:
      seq = layer(seq, positions, mask)
    return seq.reshape(B, W, Lw + 1, -1)[:, :, 1:]

  @staticmethod
  def _decoder_slots(layout, Lw: int):
    """-> (word, slot) [B, L]: where each byte is decoded: its own (word_index,
    byte_in_word), or for a late byte (open word < its word) (open word o, t - start(o))."""
    B, L = layout.word_index.shape
    W = layout.word_real.shape[1]
    t = torch.arange(L, device=layout.ids.device).expand(B, L)
    first = torch.where(layout.real & (layout.byte_in_word == 0), t, torch.full_like(t, L))
    start = torch.full((B, W + 1), L, dtype=torch.long, device=t.device)
    start = start.scatter_reduce(1, layout.word_index.clamp(max=W), first, reduce="amin")[:, :W]
    open_start = torch.gather(start, 1, layout.open_word_index.clamp(0, W - 1))
    open_slot = t - open_start
    late = (layout.real & (layout.open_word_index < layout.word_index) & (open_slot >= 0)
            & (open_slot < Lw))
    return (torch.where(late, layout.open_word_index, layout.word_index),
            torch.where(late, open_slot, layout.byte_in_word), late)

  def forward(self, input_ids: torch.LongTensor | None = None,
              attention_mask: torch.Tensor | None = None, labels: torch.LongTensor | None = None,
              return_dict: bool | None = None, **kwargs) -> CausalLMOutput:
    """input_ids [B, L] -> logits [B, L, V] float32 (padding columns: zeros).
    labels [B, L] (-100 ignored): mean cross-entropy of logits[:, :-1] vs labels[:, 1:]."""
    if input_ids is None:
      raise ValueError("this model reads byte ids: pass input_ids [batch, length]")
    config = self.config
    Lw = config.max_word_size
    layout = word_layout(input_ids, attention_mask, Lw)
    B, W, _ = layout.word_bytes.shape
    in_word = torch.arange(Lw, device=input_ids.device)
    byte_mask = in_word[None, None] < layout.word_lengths[..., None]               # [B, W, Lw]
    e = self.embed_tokens(layout.word_bytes)                                      # [B, W, Lw, Db]
    h = self.pooling(e, byte_mask, in_word.expand(B, W, Lw), layout.word_positions)  # [B, W, D]
    word_mask = sequence_mask(layout.word_real, causal=True)
    for layer in self.backbone.layers:
      h = layer(h, layout.word_positions, word_mask)
    pred = shift_words(h, self.backbone.first_word)                               # [B, W, D]
    word, slot, late = self._decoder_slots(layout, Lw)                            # [B, L]
    flat = torch.where(late, word * Lw + slot, torch.full_like(word, W * Lw))     # late -> spare
    dec_ids = torch.cat([layout.word_bytes.reshape(B, W * Lw),
                         torch.zeros((B, 1), dtype=torch.long, device=e.device)], dim=1)
    dec_ids = dec_ids.scatter(1, flat, layout.ids)[:, :W * Lw].reshape(B, W, Lw)
    dec_mask = torch.cat([byte_mask.reshape(B, W * Lw),
                          torch.zeros((B, 1), dtype=torch.bool, device=e.device)], dim=1)
    dec_mask = dec_mask.scatter(1, flat, torch.ones_like(late))[:, :W * Lw].reshape(B, W, Lw)
    out = self._decode_words(pred, dec_ids, dec_mask)                             # [B, W, Lw, Db]
    y = from_word_grid(out, word, slot)                                           # [B, L, Db]
    logits = self.lm_head(self.decoder.norm(y)).float()
    logits = unpack_logits(logits, layout, input_ids.shape[1])
    loss = None
    if labels is not None:
      loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                             labels[:, 1:].reshape(-1).to(logits.device), ignore_index=-100)
    return CausalLMOutput(loss=loss, logits=logits)


__all__ = ["HnetWordPooledForCausalLM", "HnetWordPooledPreTrainedModel"]
