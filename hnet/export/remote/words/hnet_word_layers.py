"""Shared PyTorch pieces of hnet's word models (HAT, Learn Your Tokens, Byte2Word):
remote code of an hnet export, needing only torch, transformers and the word splitter
shipped beside it (splitter.py: hnet/text/splitter.py, copied by the export).

  word_layout(ids, mask, ...)   rows of ids -> the word layout of hnet/data/words.py
                                (one document per row; BOS/EOS words of their own)
  RMSNorm, apply_rope, attend, LlamaBlock   the Llama-style layers of hnet/layers
  QueryPooling, ClsPooling, MeanPooling     hnet/layers/pooling.py

Shapes: B rows, L bytes, W words, Lw bytes per word slot, D width, H heads, Dh head dim.
"""
from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from .splitter import WordStream, split

NUM_BYTES = 256   # ids 0..255 are bytes; ids >= 256 are specials (a word each)
PAD_ID = 256
NEG_INF = -1e30


# ------------------------------------------------------------------------- word layout

@dataclasses.dataclass
class WordLayout:
  """The word layout of a batch (padding: segment 0, word slot W, slot 0)."""
  ids: torch.Tensor             # [B, L] the real ids of each row, moved to the front
  real: torch.Tensor            # [B, L] bool
  positions: torch.Tensor       # [B, L] position in the row's document
  word_index: torch.Tensor      # [B, L] word of each byte (W for padding)
  byte_in_word: torch.Tensor    # [B, L]
  open_word_index: torch.Tensor  # [B, L] the word open after reading ids[:t+1]
  word_real: torch.Tensor       # [B, W] bool
  word_positions: torch.Tensor  # [B, W]
  word_lengths: torch.Tensor    # [B, W]
  word_bytes: torch.Tensor      # [B, W, Lw] ids of each word, PAD-filled
  source_index: torch.Tensor    # [B, L] column of the input each packed position came from


def _row_words(ids: list[int], max_word_size: int):
  """One document's ids -> (word_index, byte_in_word, open_word, words [(start, length)]).

  A special id is a word by itself; each run of bytes between specials is split by the
  splitter; the open word after byte t is the last word of split(run[:t+1]) (its
  WordStream), as hnet/data/words.py and hnet.models.hat.WordBoundaryTracker do."""
  n = len(ids)
  word_index, byte_in_word, open_word, words = [0] * n, [0] * n, [0] * n, []
  t = 0
  while t < n:
    if ids[t] >= NUM_BYTES:
      word_index[t] = open_word[t] = len(words)
      words.append((t, 1))
      t += 1
      continue
    end = t
    while end < n and ids[end] < NUM_BYTES:
      end += 1
    first, start = len(words), t
    for piece in split(bytes(ids[t:end]), max_word_size):
      for k in range(len(piece)):
        word_index[start + k], byte_in_word[start + k] = len(words), k
      words.append((start, len(piece)))
      start += len(piece)
    stream = WordStream(max_word_size)
    for k in range(t, end):
      stream.push(ids[k])
      open_word[k] = first + len(stream.finished)
    t = end
  return word_index, byte_in_word, open_word, words


def word_layout(input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                max_word_size: int) -> WordLayout:
  """input_ids [B, L], attention_mask [B, L] (1 real, 0 padding, either side; the real
  ids of a row are one document) -> WordLayout, real ids packed to the front."""
  B, L = input_ids.shape
  if attention_mask is None:
    attention_mask = torch.ones_like(input_ids)
  ids_cpu, mask_cpu = input_ids.detach().cpu().tolist(), attention_mask.detach().cpu().tolist()
  rows = []
  for ids, mask in zip(ids_cpu, mask_cpu):
    columns = [t for t in range(L) if mask[t]]
    real_ids = [ids[t] for t in columns]
    rows.append((columns, real_ids) + _row_words(real_ids, max_word_size))
  W = max(1, max(len(r[5]) for r in rows))
  Lw = max_word_size
  out = {name: torch.zeros((B, L), dtype=torch.long) for name in
         ("ids", "positions", "word_index", "byte_in_word", "open_word_index", "source_index")}
  out["ids"].fill_(PAD_ID)
  out["word_index"].fill_(W)
  out["open_word_index"].fill_(W)
  real = torch.zeros((B, L), dtype=torch.bool)
  word_real = torch.zeros((B, W), dtype=torch.bool)
  word_lengths = torch.zeros((B, W), dtype=torch.long)
  word_bytes = torch.full((B, W, Lw), PAD_ID, dtype=torch.long)
  for b, (columns, real_ids, word_index, byte_in_word, open_word, words) in enumerate(rows):
    n = len(real_ids)
    if n == 0:
      continue
    out["ids"][b, :n] = torch.tensor(real_ids)
    out["positions"][b, :n] = torch.arange(n)
    out["word_index"][b, :n] = torch.tensor(word_index)
    out["byte_in_word"][b, :n] = torch.tensor(byte_in_word)
    out["open_word_index"][b, :n] = torch.tensor(open_word)
    out["source_index"][b, :n] = torch.tensor(columns)
    real[b, :n] = True
    for w, (start, length) in enumerate(words):
      word_real[b, w], word_lengths[b, w] = True, length
      word_bytes[b, w, :length] = torch.tensor(real_ids[start:start + length])
  device = input_ids.device
  word_positions = torch.arange(W).expand(B, W).clone()
  return WordLayout(real=real.to(device), word_real=word_real.to(device),
                    word_positions=word_positions.to(device), word_lengths=word_lengths.to(device),
                    word_bytes=word_bytes.to(device),
                    **{k: v.to(device) for k, v in out.items()})


def unpack_logits(logits: torch.Tensor, layout: WordLayout, length: int) -> torch.Tensor:
  """Packed logits [B, L, V] -> the input's columns (padding columns get zeros)."""
  out = torch.zeros((logits.shape[0], length, logits.shape[-1]), dtype=logits.dtype,
                    device=logits.device)
  index = torch.where(layout.real, layout.source_index, torch.full_like(layout.source_index, length))
  padded = torch.cat([out, out[:, :1]], dim=1)  # a spare column for padding
  padded.scatter_(1, index[..., None].expand_as(logits), logits)
  return padded[:, :length]


def to_word_grid(x: torch.Tensor, word_index: torch.Tensor, slot: torch.Tensor, num_words: int,
                 word_len: int) -> torch.Tensor:
  """x [B, L, ...] -> grid [B, W, Lw, ...]: byte t at (word_index[t], slot[t]); bytes
  outside the grid (padding: word W) are dropped, empty slots are zero."""
  B, L = word_index.shape
  grid = torch.zeros((B, (num_words + 1) * word_len) + tuple(x.shape[2:]), dtype=x.dtype,
                     device=x.device)
  flat = word_index.clamp(max=num_words) * word_len + slot.clamp(max=word_len - 1)
  flat = torch.where(slot < word_len, flat, torch.full_like(flat, num_words * word_len))
  index = flat.reshape(B, L, *([1] * (x.dim() - 2))).expand_as(x)
  grid.scatter_(1, index, x)
  return grid[:, :num_words * word_len].reshape(B, num_words, word_len, *x.shape[2:])


def from_word_grid(grid: torch.Tensor, word_index: torch.Tensor, slot: torch.Tensor) -> torch.Tensor:
  """grid [B, W, Lw, D] -> [B, L, D]: the slot of each byte (indices clamped)."""
  B, W, Lw, D = grid.shape
  flat = grid.reshape(B, W * Lw, D)
  index = word_index.clamp(0, W - 1) * Lw + slot.clamp(0, Lw - 1)
  return torch.gather(flat, 1, index[..., None].expand(B, index.shape[1], D))


def gather_words(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
  """x [B, W, D], index [B, L] (clamped) -> [B, L, D]."""
  index = index.clamp(0, x.shape[1] - 1)
  return torch.gather(x, 1, index[..., None].expand(index.shape[0], index.shape[1], x.shape[-1]))


def shift_words(h: torch.Tensor, first: torch.Tensor) -> torch.Tensor:
  """h [B, W, D] -> pred [B, W, D]: pred[w] = h[w-1], pred[0] = first (one document per row)."""
  return torch.cat([first.to(h.dtype).expand(h.shape[0], 1, h.shape[-1]), h[:, :-1]], dim=1)


# ------------------------------------------------------------------------- layers

class RMSNorm(nn.Module):
  """x * rsqrt(mean(x^2) + eps) * weight, in float32 (hnet/layers/norm.py)."""

  def __init__(self, dim: int, eps: float = 1e-6):
    super().__init__()
    self.weight = nn.Parameter(torch.ones(dim))
    self.eps = eps

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    x32 = x.float()
    y = x32 * torch.rsqrt(torch.mean(x32 * x32, dim=-1, keepdim=True) + self.eps)
    return (y * self.weight.float()).to(x.dtype)


def apply_rope(x: torch.Tensor, positions: torch.Tensor, base: float) -> torch.Tensor:
  """x [B, L, H, Dh], positions [B, L] -> rotated x, half-split ("rotate-half") pairs."""
  half = x.shape[-1] // 2
  freq = base ** (-torch.arange(half, dtype=torch.float32, device=x.device) / half)  # [Dh/2]
  angle = positions.float()[..., None, None] * freq
  sin, cos = torch.sin(angle), torch.cos(angle)
  x1, x2 = x.float().chunk(2, dim=-1)
  return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).to(x.dtype)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
  """q [B, L, H, Dh], k/v [B, S, K, Dh], mask [B, 1, L, S] bool -> [B, L, H, Dh].
  Softmax in float32 over logits scaled by Dh^-0.5; grouped-query heads (query head h
  reads kv head h // (H/K))."""
  B, L, H, Dh = q.shape
  K = k.shape[2]
  if K != H:
    k = k.repeat_interleave(H // K, dim=2)
    v = v.repeat_interleave(H // K, dim=2)
  logits = torch.einsum("blhd,bshd->bhls", q, k).float() * (Dh ** -0.5)
  logits = logits.masked_fill(~mask, NEG_INF)
  weights = torch.softmax(logits, dim=-1).to(v.dtype)
  return torch.einsum("bhls,bshd->blhd", weights, v)


def sequence_mask(real: torch.Tensor, *, causal: bool, window: int | None = None) -> torch.Tensor:
  """real [B, L] -> [B, 1, L, L]: real positions see real ones (causal, within `window`),
  padding sees padding (as hnet/layers/attention.py make_mask with segment ids)."""
  L = real.shape[1]
  index = torch.arange(L, device=real.device)
  delta = index[:, None] - index[None, :]
  allowed = torch.ones((L, L), dtype=torch.bool, device=real.device)
  if causal:
    allowed &= delta >= 0
  if window:
    allowed &= delta.abs() < window
  same = real[:, :, None] == real[:, None, :]
  return (same & allowed)[:, None]


class Attention(nn.Module):
  def __init__(self, dim: int, num_heads: int, num_kv_heads: int, rope_theta: float):
    super().__init__()
    self.num_heads, self.num_kv_heads = num_heads, num_kv_heads
    self.head_dim, self.rope_theta = dim // num_heads, rope_theta
    self.q_proj = nn.Linear(dim, num_heads * self.head_dim, bias=False)
    self.k_proj = nn.Linear(dim, num_kv_heads * self.head_dim, bias=False)
    self.v_proj = nn.Linear(dim, num_kv_heads * self.head_dim, bias=False)
    self.o_proj = nn.Linear(num_heads * self.head_dim, dim, bias=False)

  def forward(self, x, positions, mask):
    B, L, _ = x.shape
    q = self.q_proj(x).view(B, L, self.num_heads, self.head_dim)
    k = self.k_proj(x).view(B, L, self.num_kv_heads, self.head_dim)
    v = self.v_proj(x).view(B, L, self.num_kv_heads, self.head_dim)
    q, k = apply_rope(q, positions, self.rope_theta), apply_rope(k, positions, self.rope_theta)
    return self.o_proj(attend(q, k, v, mask).reshape(B, L, -1))


class SwiGLU(nn.Module):
  def __init__(self, dim: int, hidden: int):
    super().__init__()
    self.gate_proj = nn.Linear(dim, hidden, bias=False)
    self.up_proj = nn.Linear(dim, hidden, bias=False)
    self.down_proj = nn.Linear(hidden, dim, bias=False)

  def forward(self, x):
    return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class LlamaBlock(nn.Module):
  """x + Attn(RMSNorm(x)), then x + SwiGLU(RMSNorm(x)) (Llama's layer names)."""

  def __init__(self, dim: int, num_heads: int, num_kv_heads: int, mlp_dim: int, eps: float,
               rope_theta: float):
    super().__init__()
    self.input_layernorm = RMSNorm(dim, eps)
    self.self_attn = Attention(dim, num_heads, num_kv_heads, rope_theta)
    self.post_attention_layernorm = RMSNorm(dim, eps)
    self.mlp = SwiGLU(dim, mlp_dim)

  def forward(self, x, positions, mask):
    x = x + self.self_attn(self.input_layernorm(x), positions, mask)
    return x + self.mlp(self.post_attention_layernorm(x))


# ------------------------------------------------------------------------- pooling

class QueryPooling(nn.Module):
  """One learned query per head attends to the word's (normed) bytes; RoPE: the word
  position on the query, the byte positions on the keys (HAT, Byte2Word)."""

  def __init__(self, in_dim: int, out_dim: int, num_heads: int, eps: float, rope_theta: float):
    super().__init__()
    self.num_heads, self.head_dim, self.rope_theta = num_heads, in_dim // num_heads, rope_theta
    self.norm = RMSNorm(in_dim, eps)
    self.query = nn.Parameter(torch.zeros(num_heads, self.head_dim))
    self.k_proj = nn.Linear(in_dim, num_heads * self.head_dim, bias=False)
    self.v_proj = nn.Linear(in_dim, num_heads * self.head_dim, bias=False)
    self.o_proj = nn.Linear(num_heads * self.head_dim, out_dim, bias=False)

  def forward(self, x, mask, byte_positions, word_positions):
    """x [B, W, Lw, D], mask/byte_positions [B, W, Lw], word_positions [B, W] -> [B, W, Do]."""
    B, W, Lw, _ = x.shape
    H, Dh = self.num_heads, self.head_dim
    h = self.norm(x).reshape(B * W, Lw, -1)
    k = self.k_proj(h).view(B * W, Lw, H, Dh)
    v = self.v_proj(h).view(B * W, Lw, H, Dh)
    q = self.query.to(x.dtype).expand(B * W, 1, H, Dh)
    q = apply_rope(q, word_positions.reshape(B * W, 1), self.rope_theta)
    k = apply_rope(k, byte_positions.reshape(B * W, Lw), self.rope_theta)
    out = attend(q, k, v, mask.reshape(B * W, 1, 1, Lw))
    return self.o_proj(out.reshape(B, W, -1))


class ClsPooling(nn.Module):
  """Learn Your Tokens: `num_cls` learned vectors before the word's bytes, a small
  bidirectional Transformer inside the word (positions 0.. from the first CLS), the
  normed CLS outputs concatenated and projected."""

  def __init__(self, in_dim: int, out_dim: int, num_heads: int, num_cls: int, num_layers: int,
               mlp_dim: int, eps: float, rope_theta: float):
    super().__init__()
    self.num_cls = num_cls
    self.cls = nn.Parameter(torch.zeros(num_cls, in_dim))
    self.layers = nn.ModuleList([LlamaBlock(in_dim, num_heads, num_heads, mlp_dim, eps, rope_theta)
                                 for _ in range(num_layers)])
    self.norm = RMSNorm(in_dim, eps)
    self.o_proj = nn.Linear(num_cls * in_dim, out_dim, bias=False)

  def forward(self, x, mask, byte_positions=None, word_positions=None):
    B, W, Lw, D = x.shape
    C = self.num_cls
    h = torch.cat([self.cls.to(x.dtype).expand(B * W, C, D), x.reshape(B * W, Lw, D)], dim=1)
    real = torch.cat([torch.ones((B * W, C), dtype=torch.bool, device=x.device),
                      mask.reshape(B * W, Lw)], dim=1)
    positions = torch.arange(C + Lw, device=x.device).expand(B * W, C + Lw)
    attn_mask = sequence_mask(real, causal=False)
    for layer in self.layers:
      h = layer(h, positions, attn_mask)
    return self.o_proj(self.norm(h[:, :C]).reshape(B, W, C * D))


class MeanPooling(nn.Module):
  def __init__(self, in_dim: int, out_dim: int, eps: float):
    super().__init__()
    self.norm = RMSNorm(in_dim, eps)
    self.o_proj = nn.Linear(in_dim, out_dim, bias=False)

  def forward(self, x, mask, byte_positions=None, word_positions=None):
    m = mask.float()[..., None]
    mean = torch.sum(x.float() * m, dim=2) / torch.clamp(torch.sum(m, dim=2), min=1.0)
    return self.o_proj(self.norm(mean.to(x.dtype)))


def make_pooling(kind: str, in_dim: int, out_dim: int, *, num_heads: int, num_cls: int,
                 num_layers: int, mlp_dim: int, eps: float, rope_theta: float) -> nn.Module:
  if kind == "query":
    return QueryPooling(in_dim, out_dim, num_heads, eps, rope_theta)
  if kind == "cls":
    return ClsPooling(in_dim, out_dim, num_heads, num_cls, num_layers, mlp_dim, eps, rope_theta)
  if kind == "mean":
    return MeanPooling(in_dim, out_dim, eps)
  raise ValueError(f"unknown pooling {kind!r}: this export knows query, cls and mean")


def init_weights(module: nn.Module, std: float) -> None:
  """Normal(0, std) for projections and learned vectors, ones for norms (fresh models;
  from_pretrained overwrites them)."""
  for name, param in module.named_parameters(recurse=False):
    if isinstance(module, RMSNorm):
      nn.init.ones_(param)
    else:
      nn.init.normal_(param, std=std)


