"""hnet's MrT5 in PyTorch: ByT5 (T5 v1.1 over bytes) with a delete gate (remote code of
an hnet export; needs only torch and transformers).

Module and tensor names are T5's (shared, encoder.block.i.layer.0.SelfAttention.q, ...,
lm_head), so every weight MrT5 shares with ByT5 has ByT5's name; the gate's are new:
encoder.delete_gate.{layer_norm.weight, weight, bias [1]}. Differences from transformers'
T5 v1.1 (as in hnet's ByT5): attention logits are scaled by 1/sqrt(d_kv) before the
relative position bias is added; lm_head is untied and unscaled.

Encoder: shared embedding -> blocks 0..gate_layer-1 -> delete gate
  G_i = gate_k * sigmoid(w . RMSNorm(h_i) + b)   (optionally standardised over the row)
  soft deletion (training path): G_i is added to the logit of key i in every later
    encoder self-attention and in every decoder cross-attention;
  hard deletion (inference): bytes with G_i < gate_k / 2 are dropped; the kept ones are
    gathered to the front of each row (order and original positions kept, for the
    relative position bias) and the later layers run on them only; kept bytes still add
    their G_i. The memory is then [B, C] with C = the largest kept count.
-> final RMSNorm. Decoder: T5 decoder blocks (causal self-attention with relative bias,
cross-attention over the memory, gated-GELU FFN) -> final RMSNorm -> lm_head.

The output carries deletion_ratio [B]: per row, the share of its real encoder bytes with
G < gate_k / 2 (the bytes hard deletion drops; the same for both modes). Each row is one
document (attention_mask marks its ids). generate() is transformers' loop: the encoder
runs once, the decoder recomputes its prefix at every step (no KV cache in this export).
forward(hard_deletion=True) / generate(..., hard_deletion=True) select hard deletion
(default: config.hard_deletion).
"""
from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.utils import ModelOutput

from .configuration_hnet_mrt5 import HnetMrT5Config

NEG_INF = -1e30


@dataclasses.dataclass
class MrT5EncoderOutput(ModelOutput):
  last_hidden_state: torch.Tensor | None = None   # [B, C, D] memory (C = L when soft)
  attention_mask: torch.Tensor | None = None      # [B, C] real memory slots
  gate: torch.Tensor | None = None                # [B, C] G of each memory slot
  deletion_ratio: torch.Tensor | None = None      # [B]


@dataclasses.dataclass
class MrT5Seq2SeqLMOutput(ModelOutput):
  loss: torch.Tensor | None = None
  logits: torch.Tensor | None = None              # [B, Ld, V] float32
  encoder_last_hidden_state: torch.Tensor | None = None
  encoder_attention_mask: torch.Tensor | None = None
  gate: torch.Tensor | None = None
  deletion_ratio: torch.Tensor | None = None      # [B]


# ------------------------------------------------------------------------- layers

class RMSNorm(nn.Module):
  def __init__(self, dim: int, eps: float):
    super().__init__()
    self.weight = nn.Parameter(torch.ones(dim))
    self.eps = eps

  def forward(self, x):
    x32 = x.float()
    y = x32 * torch.rsqrt(torch.mean(x32 * x32, dim=-1, keepdim=True) + self.eps)
    return (y * self.weight.float()).to(x.dtype)


def relative_position_bucket(relative_position, *, bidirectional: bool, num_buckets: int,
                             max_distance: int):
  """key position - query position -> T5 bucket (hnet/layers/relative_position.py)."""
  relative_position = relative_position.long()
  bucket = torch.zeros_like(relative_position)
  if bidirectional:
    num_buckets //= 2
    bucket = bucket + (relative_position > 0).long() * num_buckets
    distance = relative_position.abs()
  else:
    distance = torch.clamp(-relative_position, min=0)
  max_exact = num_buckets // 2
  scaled = (torch.log(torch.clamp(distance, min=1).float() / max_exact)
            / math.log(max_distance / max_exact) * (num_buckets - max_exact))
  log_bucket = torch.clamp(max_exact + scaled.long(), max=num_buckets - 1)
  return bucket + torch.where(distance < max_exact, distance, log_bucket)


def attend(q, k, v, mask, bias, softmax1: bool):
  """q [B, H, L, Dh], k/v [B, H, S, Dh], mask [B, 1, L, S] bool, bias [B, H|1, L|1, S] ->
  [B, H, L, Dh]. Logits scaled by Dh^-0.5, then the bias; softmax (or softmax1) in float32."""
  logits = torch.einsum("bhld,bhsd->bhls", q, k).float() * (q.shape[-1] ** -0.5)
  if bias is not None:
    logits = logits + bias.float()
  logits = logits.masked_fill(~mask, NEG_INF)
  if softmax1:
    shift = torch.clamp(logits.amax(dim=-1, keepdim=True), min=0.0)
    scaled = torch.exp(logits - shift)
    weights = scaled / (torch.exp(-shift) + scaled.sum(dim=-1, keepdim=True))
  else:
    weights = torch.softmax(logits, dim=-1)
  return torch.einsum("bhls,bhsd->bhld", weights.to(v.dtype), v)


class MrT5Attention(nn.Module):
  def __init__(self, config: HnetMrT5Config, *, has_relative_attention_bias: bool):
    super().__init__()
    self.num_heads, self.d_kv = config.num_heads, config.d_kv
    inner = config.num_heads * config.d_kv
    self.q = nn.Linear(config.d_model, inner, bias=False)
    self.k = nn.Linear(config.d_model, inner, bias=False)
    self.v = nn.Linear(config.d_model, inner, bias=False)
    self.o = nn.Linear(inner, config.d_model, bias=False)
    if has_relative_attention_bias:
      self.relative_attention_bias = nn.Embedding(config.relative_attention_num_buckets,
                                                  config.num_heads)

  def _heads(self, x):
    B, L, _ = x.shape
    return x.view(B, L, self.num_heads, self.d_kv).transpose(1, 2)

  def forward(self, x, memory, mask, bias, softmax1: bool = False):
    out = attend(self._heads(self.q(x)), self._heads(self.k(memory)), self._heads(self.v(memory)),
                 mask, bias, softmax1)
    B, H, L, Dh = out.shape
    return self.o(out.transpose(1, 2).reshape(B, L, H * Dh))


class MrT5DenseGatedGelu(nn.Module):
  def __init__(self, config: HnetMrT5Config):
    super().__init__()
    self.wi_0 = nn.Linear(config.d_model, config.d_ff, bias=False)
    self.wi_1 = nn.Linear(config.d_model, config.d_ff, bias=False)
    self.wo = nn.Linear(config.d_ff, config.d_model, bias=False)

  def forward(self, x):
    return self.wo(F.gelu(self.wi_0(x), approximate="tanh") * self.wi_1(x))


class MrT5LayerSelfAttention(nn.Module):
  def __init__(self, config, has_relative_attention_bias: bool):
    super().__init__()
    self.SelfAttention = MrT5Attention(config, has_relative_attention_bias=has_relative_attention_bias)
    self.layer_norm = RMSNorm(config.d_model, config.layer_norm_epsilon)


class MrT5LayerCrossAttention(nn.Module):
  def __init__(self, config):
    super().__init__()
    self.EncDecAttention = MrT5Attention(config, has_relative_attention_bias=False)
    self.layer_norm = RMSNorm(config.d_model, config.layer_norm_epsilon)


class MrT5LayerFF(nn.Module):
  def __init__(self, config):
    super().__init__()
    self.DenseReluDense = MrT5DenseGatedGelu(config)
    self.layer_norm = RMSNorm(config.d_model, config.layer_norm_epsilon)

  def forward(self, x):
    return x + self.DenseReluDense(self.layer_norm(x))


class MrT5Block(nn.Module):
  def __init__(self, config, *, is_decoder: bool, has_relative_attention_bias: bool):
    super().__init__()
    layers = [MrT5LayerSelfAttention(config, has_relative_attention_bias)]
    if is_decoder:
      layers.append(MrT5LayerCrossAttention(config))
    layers.append(MrT5LayerFF(config))
    self.layer = nn.ModuleList(layers)

  def forward(self, x, mask, bias, softmax1: bool = False, memory=None, memory_mask=None,
              memory_bias=None, cross_softmax1: bool = False):
    attn = self.layer[0]
    h = attn.layer_norm(x)
    x = x + attn.SelfAttention(h, h, mask, bias, softmax1)
    if memory is not None:
      cross = self.layer[1]
      x = x + cross.EncDecAttention(cross.layer_norm(x), memory, memory_mask, memory_bias,
                                    cross_softmax1)
    return self.layer[-1](x)


class MrT5DeleteGate(nn.Module):
  """G = gate_k * sigmoid(w . RMSNorm(h) + b): [B, L, D] -> [B, L] float32."""

  def __init__(self, config: HnetMrT5Config):
    super().__init__()
    self.layer_norm = RMSNorm(config.d_model, config.layer_norm_epsilon)
    self.weight = nn.Parameter(torch.zeros(config.d_model))
    self.bias = nn.Parameter(torch.zeros(1))  # a scalar, [1] as in the safetensors file
    self.k, self.standardise = config.gate_k, config.gate_standardise

  def forward(self, h, real):
    features = self.layer_norm(h).float()                                       # [B, L, D]
    if self.standardise:  # over the real bytes of each row (one document per row)
      m = real.float()[..., None]
      count = torch.clamp(m.sum(dim=1), min=1.0)                                # [B, 1]
      mean = (features * m).sum(dim=1) / count                                  # [B, D]
      centred = (features - mean[:, None]) * m
      variance = (centred ** 2).sum(dim=(1, 2)) / (count[:, 0] * features.shape[-1])
      features = centred * torch.rsqrt(variance + 1e-6)[:, None, None]
    logits = torch.einsum("bld,d->bl", features, self.weight.float()) + self.bias.float()
    return self.k * torch.sigmoid(logits)


class MrT5Stack(nn.Module):
  def __init__(self, config: HnetMrT5Config, *, is_decoder: bool):
    super().__init__()
    count = config.num_decoder_layers if is_decoder else config.num_layers
    self.block = nn.ModuleList([
        MrT5Block(config, is_decoder=is_decoder, has_relative_attention_bias=i == 0)
        for i in range(count)])
    self.final_layer_norm = RMSNorm(config.d_model, config.layer_norm_epsilon)
    if not is_decoder:
      self.delete_gate = MrT5DeleteGate(config)
    self.is_decoder = is_decoder
    self.main_input_name = "input_ids"  # generate() reads it from model.encoder
    self.num_buckets = config.relative_attention_num_buckets
    self.max_distance = config.relative_attention_max_distance

  def position_bias(self, q_positions, k_positions):
    """[B, L], [B, S] -> [B, H, L, S] from block 0's table."""
    buckets = relative_position_bucket(k_positions[:, None, :] - q_positions[:, :, None],
                                       bidirectional=not self.is_decoder,
                                       num_buckets=self.num_buckets, max_distance=self.max_distance)
    table = self.block[0].layer[0].SelfAttention.relative_attention_bias
    return table(buckets).permute(0, 3, 1, 2).float()


def _positions(mask):
  """[B, L] 0/1 -> position of each real id in its row (0 for padding)."""
  return torch.clamp(torch.cumsum(mask.long(), dim=1) - 1, min=0) * mask.long()


def _same(a, b):
  """[B, L], [B, S] bool -> [B, 1, L, S]: real sees real, padding sees padding."""
  return (a[:, :, None] == b[:, None, :])[:, None]


def _compact(kept, hidden, positions, gate):
  """Kept positions to the front of each row (order kept), C = the largest kept count."""
  count = kept.long().sum(dim=1)                                                # [B]
  C = max(int(count.max()), 1)
  order = torch.sort((~kept).long(), dim=1, stable=True).indices[:, :C]        # [B, C]
  used = torch.arange(C, device=kept.device)[None] < count[:, None]
  hidden = torch.gather(hidden, 1, order[..., None].expand(-1, -1, hidden.shape[-1]))
  positions = torch.where(used, torch.gather(positions, 1, order), torch.zeros_like(order))
  gate = torch.where(used, torch.gather(gate, 1, order), torch.zeros_like(gate[:, :C]))
  return hidden, positions, gate, used


# ------------------------------------------------------------------------- model

class HnetMrT5PreTrainedModel(PreTrainedModel):
  config_class = HnetMrT5Config
  base_model_prefix = "mrt5"
  _no_split_modules = ["MrT5Block"]

  @torch.no_grad()
  def _init_weights(self, module):
    std = self.config.initializer_range
    if isinstance(module, RMSNorm):
      nn.init.ones_(module.weight)
    elif isinstance(module, (nn.Linear, nn.Embedding)):
      nn.init.normal_(module.weight, std=std)
    elif isinstance(module, MrT5DeleteGate):
      nn.init.normal_(module.weight, std=std)
      nn.init.constant_(module.bias, -10.0)  # nearly nothing deleted at first


class _EncoderCall:
  """What generate() runs once per call: model.encode (not a module: no weights of its own)."""

  def __init__(self, model):
    self.model = model
    self.main_input_name = "input_ids"

  def forward(self, input_ids=None, attention_mask=None, hard_deletion=None, **kwargs):
    return self.model.encode(input_ids, attention_mask, hard_deletion)

  __call__ = forward


class HnetMrT5ForConditionalGeneration(HnetMrT5PreTrainedModel, GenerationMixin):
  def __init__(self, config: HnetMrT5Config):
    super().__init__(config)
    self.shared = nn.Embedding(config.vocab_size, config.d_model)
    self.encoder = MrT5Stack(config, is_decoder=False)
    self.decoder = MrT5Stack(config, is_decoder=True)
    self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
    self.post_init()

  @classmethod
  def _supports_default_dynamic_cache(cls) -> bool:
    return False  # no KV cache: the decoder recomputes its prefix at every step

  def get_input_embeddings(self):
    return self.shared

  def set_input_embeddings(self, value):
    self.shared = value

  def get_output_embeddings(self):
    return self.lm_head

  def get_encoder(self, modality=None):
    return _EncoderCall(self)

  def encode(self, input_ids, attention_mask=None, hard_deletion=None) -> MrT5EncoderOutput:
    """input_ids [B, L] -> MrT5EncoderOutput (soft or hard deletion)."""
    config, stack = self.config, self.encoder
    hard = config.hard_deletion if hard_deletion is None else bool(hard_deletion)
    if attention_mask is None:
      attention_mask = torch.ones_like(input_ids)
    real = attention_mask.bool()
    positions = _positions(attention_mask)
    x = self.shared(input_ids)
    bias = stack.position_bias(positions, positions)
    mask = _same(real, real)
    for block in stack.block[:config.gate_layer]:
      x = block(x, mask, bias)
    gate = stack.delete_gate(x, real)                                           # [B, L]
    kept = real & (gate >= config.gate_k / 2)
    ratio = 1.0 - kept.sum(dim=1).float() / torch.clamp(real.sum(dim=1).float(), min=1.0)
    if hard:
      x, positions, gate, real = _compact(kept, x, positions, gate)
      mask = _same(real, real)
    bias = stack.position_bias(positions, positions) + gate[:, None, None, :]
    for block in stack.block[config.gate_layer:]:
      x = block(x, mask, bias, softmax1=config.softmax1)
    return MrT5EncoderOutput(last_hidden_state=stack.final_layer_norm(x),
                             attention_mask=real.long(), gate=gate, deletion_ratio=ratio)

  def prepare_inputs_for_generation(self, input_ids, encoder_outputs=None, attention_mask=None,
                                    hard_deletion=None, **kwargs):
    return {"decoder_input_ids": input_ids, "encoder_outputs": encoder_outputs,
            "attention_mask": attention_mask, "hard_deletion": hard_deletion}

  def forward(self, input_ids=None, attention_mask=None, decoder_input_ids=None,
              decoder_attention_mask=None, encoder_outputs: MrT5EncoderOutput | None = None,
              labels=None, hard_deletion: bool | None = None, return_dict=None,
              **kwargs) -> MrT5Seq2SeqLMOutput:
    """Sources input_ids [B, L] (or encoder_outputs from encode()), decoder_input_ids
    [B, Ld] -> logits [B, Ld, V]. labels [B, Ld] (-100 ignored): mean cross-entropy of the
    logits against them (decoder_input_ids then default to BOS + labels[:, :-1])."""
    config = self.config
    if encoder_outputs is None:
      if input_ids is None:
        raise ValueError("pass input_ids (the source bytes) or encoder_outputs")
      encoder_outputs = self.encode(input_ids, attention_mask, hard_deletion)
    if decoder_input_ids is None:
      if labels is None:
        raise ValueError("pass decoder_input_ids (start with decoder_start_token_id) or labels")
      start = torch.full_like(labels[:, :1], config.decoder_start_token_id)
      decoder_input_ids = torch.cat([start, labels[:, :-1].clamp(min=0)], dim=1)
    if decoder_attention_mask is None:
      decoder_attention_mask = torch.ones_like(decoder_input_ids)
    stack = self.decoder
    real = decoder_attention_mask.bool()
    positions = _positions(decoder_attention_mask)
    L = decoder_input_ids.shape[1]
    causal = torch.tril(torch.ones((L, L), dtype=torch.bool, device=real.device))
    mask = _same(real, real) & causal
    bias = stack.position_bias(positions, positions)
    memory = encoder_outputs.last_hidden_state
    memory_real = encoder_outputs.attention_mask.bool()
    memory_mask = _same(real, memory_real)
    memory_bias = encoder_outputs.gate[:, None, None, :]
    x = self.shared(decoder_input_ids)
    for block in stack.block:
      x = block(x, mask, bias, memory=memory, memory_mask=memory_mask, memory_bias=memory_bias,
                cross_softmax1=config.softmax1)
    logits = self.lm_head(stack.final_layer_norm(x)).float()
    loss = None
    if labels is not None:
      loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1),
                             ignore_index=-100)
    return MrT5Seq2SeqLMOutput(loss=loss, logits=logits, encoder_last_hidden_state=memory,
                               encoder_attention_mask=encoder_outputs.attention_mask,
                               gate=encoder_outputs.gate,
                               deletion_ratio=encoder_outputs.deletion_ratio)


__all__ = ["HnetMrT5ForConditionalGeneration", "HnetMrT5PreTrainedModel"]
