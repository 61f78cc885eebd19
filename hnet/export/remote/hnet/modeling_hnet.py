"""PyTorch H-Net (dynamic chunking), exported from the hnet project as remote code.

Self-contained: imports only torch, transformers and the standard library. Loads with
`AutoModelForCausalLM.from_pretrained(dir, trust_remote_code=True)`; runs on CPU in
float32; on CUDA it uses `mamba_ssm`'s chunked-scan kernel for the Mamba-2 layers when
that package imports, and this file's plain-PyTorch chunked SSD otherwise.

  bytes [B, L] -> embed -> stages[0].encoder -> route + chunk (L -> C_1)
     -> [stages[1]: the same, recursively] -> stages[S].main (innermost, on C_S)
     -> EMA dechunk (C_1 -> L) * STE(c) + residual(h) -> stages[0].decoder -> head

Semantics follow the hnet JAX model exactly (hnet/models/hnet.py,
hnet/models/dynamic_chunking.py): routing p_t = clamp((1 - cos(W_q h_{t-1}, W_k h_t))/2,
0, 1), forced to 1 at every document start, boundary b_t = p_t > 0.5; padding never
starts a chunk except where a padding run begins (so it forms one chunk of its own);
chunks are the kept positions in order (static capacity only when config.capacity_factor
> 0: later boundaries are dropped and those bytes read the last kept chunk); inner
positions are chunk ordinals within the document; the EMA z_bar_k = P_k z_k + (1 - P_k)
z_bar_{k-1} with P clamped to [1e-4, 1 - 1e-4], reset at document starts; byte t reads
z_bar[cumsum(b)_t - 1], times STE(c) (forward value c + (1 - c)), plus a linear residual
of the encoder output. Mamba-2 state and convolution never cross a document start.

Padding: `attention_mask` rows become documents (segment ids): a run of padding is a
document of its own, so left padding does not change the real rows' logits. For
generation pad on the left (the tokenizer's padding_side="left").

Generation: `HNetCache` keeps, per stage, every block's cache (Mamba-2 conv window and
SSM state; attention keys/values in per-row slots), the per-row slot count, the RoPE
position of the next element, h_{t-1} for routing and the EMA value z_bar. A step feeds
stage s + 1 only for the rows whose boundary fires; every row computes, only the rows
that advance commit. Cached decoding equals the full forward (exact semantics).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from .configuration_hnet import HNetConfig, parse_layout

try:  # optional fast path: the Mamba-2 chunked scan of mamba_ssm (CUDA, triton)
  from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined as _kernel_chunk_scan
except Exception:  # noqa: BLE001 -- not installed, or its CUDA / triton parts are missing
  _kernel_chunk_scan = None

PROB_CLAMP = 1e-4   # EMA weights P clamped to [1e-4, 1 - 1e-4]
COSINE_EPS = 1e-8   # norms floored at this value in the routing cosine


# ------------------------------------------------------------------- stream bookkeeping

class Stream:
  """Per-position bookkeeping of one stage's sequence, [B, L] each. `length` [B] (only
  while building a cache): the live slots of each row (the rest are empty chunk slots)."""

  def __init__(self, positions, segment_ids, is_start, real, length=None):
    self.positions, self.segment_ids, self.is_start, self.real = positions, segment_ids, is_start, real
    self.length = length


def segment_starts(segment_ids: torch.Tensor) -> torch.Tensor:
  """[B, L] -> [B, L] bool: position 0 and every position whose segment id changes."""
  changed = segment_ids[:, 1:] != segment_ids[:, :-1]
  return F.pad(changed, (1, 0), value=True)


def positions_within_document(is_start: torch.Tensor) -> torch.Tensor:
  """is_start [B, L] bool (True at 0) -> [B, L] long ordinal since the last start."""
  index = torch.arange(is_start.shape[1], device=is_start.device).expand(is_start.shape)
  last_start = torch.cummax(torch.where(is_start, index, torch.zeros_like(index)), dim=1).values
  return index - last_start


def stream_from_mask(attention_mask: torch.Tensor) -> Stream:
  """attention_mask [B, L] (1 real, 0 padding) -> Stream: each run of real bytes is a
  document (segment 1, 2, ...), padding is segment 0."""
  real = attention_mask.bool()
  run_start = real & ~F.pad(real[:, :-1], (1, 0), value=False)
  segment_ids = torch.cumsum(run_start.long(), dim=1) * real.long()
  is_start = segment_starts(segment_ids)
  return Stream(positions_within_document(is_start), segment_ids, is_start, real)


def capacity_for(length: int, target_ratio: float, capacity_factor: float) -> int:
  """Static chunk slots of the training-time forward (capacity_factor <= 0: length)."""
  if capacity_factor <= 0:
    return length
  wanted = math.ceil(length * capacity_factor / target_ratio)
  return max(1, min(length, -(-wanted // 8) * 8))


def gather_rows(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
  """x [B, N, ...], index [B, M] (-1 = none) -> [B, M, ...], zeros for none."""
  safe = index.clamp(min=0)
  shape = safe.shape + x.shape[2:]
  gathered = torch.gather(x, 1, safe.reshape(safe.shape + (1,) * (x.ndim - 2)).expand(shape))
  keep = (index >= 0).reshape(index.shape + (1,) * (x.ndim - 2))
  return torch.where(keep, gathered, torch.zeros((), dtype=x.dtype, device=x.device))


# ------------------------------------------------------------------- small layers

class HNetRMSNorm(nn.Module):
  """RMSNorm in float32."""

  def __init__(self, dim: int, eps: float):
    super().__init__()
    self.weight = nn.Parameter(torch.ones(dim))
    self.eps = eps

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    x32 = x.float()
    y = x32 * torch.rsqrt(torch.mean(x32 * x32, dim=-1, keepdim=True) + self.eps)
    return (y * self.weight.float()).to(x.dtype)


def apply_rope(x: torch.Tensor, positions: torch.Tensor, base: float) -> torch.Tensor:
  """Half-split rotary embedding. x [B, L, H, Dh], positions [B, L]."""
  half = x.shape[-1] // 2
  freq = base ** (-torch.arange(half, dtype=torch.float32, device=x.device) / half)  # [Dh/2]
  angle = positions.float()[..., None, None] * freq  # [B, L, 1, Dh/2]
  sin, cos = torch.sin(angle), torch.cos(angle)
  x1, x2 = x.float().chunk(2, dim=-1)
  return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).to(x.dtype)


class StepContext:
  """What a block needs for one cached step of its stage: slot [B] (the stream index
  the new element takes), rope_pos [B], commit [B] bool (rows that advance), valid
  [B, S] bool (slots holding elements of the row's current document)."""

  def __init__(self, slot, rope_pos, commit, valid):
    self.slot, self.rope_pos, self.commit, self.valid = slot, rope_pos, commit, valid


# ------------------------------------------------------------------- Mamba-2

def _segsum(a: torch.Tensor) -> torch.Tensor:
  """a [..., T] -> [..., T, T]: S[i, j] = sum_{j < k <= i} a_k for i >= j, -inf above."""
  T = a.shape[-1]
  k_idx = torch.arange(T, device=a.device)[:, None]
  j_idx = torch.arange(T, device=a.device)[None, :]
  terms = torch.where(k_idx > j_idx, a[..., :, None], torch.zeros((), dtype=a.dtype, device=a.device))
  sums = torch.cumsum(terms, dim=-2)
  return sums.masked_fill(k_idx < j_idx, float("-inf"))


def _chunk_decays(a: torch.Tensor, doc: torch.Tensor):
  """a [B, K, T, H] log-decays, doc [B, K, T] documents started so far in the chunk ->
  intra [B, K, H, T, T], from_start / to_end [B, K, T, H], through [B, K, H]."""
  zero = torch.zeros((), dtype=a.dtype, device=a.device)
  seg = _segsum(a.movedim(-1, 2))  # [B, K, H, T, T]
  same_doc = (doc[..., :, None] == doc[..., None, :])[:, :, None]
  intra = torch.exp(torch.where(same_doc, seg, torch.full((), float("-inf"), device=a.device)))
  cum = torch.cumsum(a, dim=2)  # [B, K, T, H]
  from_start = torch.where((doc == 0)[..., None], torch.exp(cum), zero)
  after = torch.flip(torch.cumsum(torch.flip(a, [2]), dim=2), [2])
  after = torch.cat([after[:, :, 1:], torch.zeros_like(after[:, :, :1])], dim=2)
  to_end = torch.where((doc == doc[..., -1:])[..., None], torch.exp(after), zero)
  through = torch.where(doc[..., -1:] == 0, torch.exp(cum[:, :, -1]), zero)
  return intra, from_start, to_end, through


def ssd_chunked(x, dt, A, B, C, chunk_size: int, reset=None):
  """Chunkwise SSD scan in float32.

  x [b, L, H, P], dt [b, L, H] (softplus'ed), A [H] (< 0), B/C [b, L, G, N], reset
  [b, L] bool (state zeroed before position t is added). Returns (y [b, L, H, P],
  final state [b, H, P, N]). Quadratic form inside chunks of `chunk_size`, a loop
  carrying the state across chunks.
  """
  bsz, L, H, P = x.shape
  G, N = B.shape[-2:]
  T = chunk_size
  pad = -L % T
  K = (L + pad) // T
  if reset is None:
    reset = torch.zeros((bsz, L), dtype=torch.bool, device=x.device)
  if pad:  # dt = 0 and zero inputs after the end: the state is unchanged
    x, dt, B, C = (F.pad(t, (0, 0) * (t.ndim - 2) + (0, pad)) for t in (x, dt, B, C))
    reset = F.pad(reset, (0, pad), value=False)
  x = x.reshape(bsz, K, T, G, H // G, P)
  dt = dt.reshape(bsz, K, T, H)
  B = B.reshape(bsz, K, T, G, N)
  C = C.reshape(bsz, K, T, G, N)
  doc = torch.cumsum(reset.reshape(bsz, K, T).long(), dim=-1)  # [b, K, T]
  a = dt * A  # [b, K, T, H]
  intra, from_start, to_end, through = _chunk_decays(a, doc)
  x_dt = x * dt.reshape(bsz, K, T, G, H // G)[..., None]  # [b, K, T, G, Hg, P]
  # Within chunks: y_i = sum_j (C_i . B_j) decay(j -> i) dt_j x_j.
  cb = torch.einsum("bkign,bkjgn->bkgij", C, B)  # [b, K, G, T, T]
  scores = cb[:, :, :, None] * intra.reshape(bsz, K, G, H // G, T, T)
  y = torch.einsum("bkghij,bkjghp->bkighp", scores, x_dt)
  # Each chunk's own contribution to the state at its end, then carried across chunks.
  to_end = to_end.reshape(bsz, K, T, G, H // G)
  chunk_states = torch.einsum("bkjgn,bkjgh,bkjghp->bkghpn", B, to_end, x_dt)
  through = through.reshape(bsz, K, G, H // G)
  state = x.new_zeros((bsz, G, H // G, P, N))
  incoming = []
  for k in range(K):
    incoming.append(state)
    state = through[:, k, :, :, None, None] * state + chunk_states[:, k]
  incoming = torch.stack(incoming, dim=1)  # [b, K, G, Hg, P, N]
  from_start = from_start.reshape(bsz, K, T, G, H // G)
  y = y + torch.einsum("bkign,bkghpn,bkigh->bkighp", C, incoming, from_start)
  return y.reshape(bsz, K * T, H, P)[:, :L], state.reshape(bsz, H, P, N)


def ssd_step(state, x, dt, A, B, C):
  """One recurrent step: state [b, H, P, N], x [b, H, P], dt [b, H], B/C [b, G, N]."""
  H = x.shape[1]
  B_h = B.repeat_interleave(H // B.shape[1], dim=1)  # [b, H, N]
  C_h = C.repeat_interleave(H // C.shape[1], dim=1)
  decay = torch.exp(dt * A)  # [b, H]
  state = decay[..., None, None] * state + (x * dt[..., None])[..., None] * B_h[:, :, None, :]
  return torch.einsum("bhpn,bhn->bhp", state, C_h), state


class HNetMamba2(nn.Module):
  """in_proj -> [z, x, B, C, dt]; causal depthwise conv + SiLU on [x, B, C]; SSD;
  + D x; RMSNorm((y) * silu(z)) per group; out_proj. No projection biases."""

  def __init__(self, config: HNetConfig, dim: int):
    super().__init__()
    self.d_inner = config.expand * dim
    if self.d_inner % config.headdim:
      raise ValueError(f"expand * d_model = {self.d_inner} is not a multiple of headdim {config.headdim}")
    self.num_heads = self.d_inner // config.headdim
    self.headdim, self.d_state, self.ngroups = config.headdim, config.d_state, config.ngroups
    self.d_conv, self.chunk_size = config.d_conv, config.ssd_chunk_size
    self.use_kernels = config.use_mamba_kernels
    self.conv_dim = self.d_inner + 2 * self.ngroups * self.d_state
    self.in_proj = nn.Linear(dim, self.d_inner + self.conv_dim + self.num_heads, bias=False)
    self.conv1d = nn.Conv1d(self.conv_dim, self.conv_dim, self.d_conv, groups=self.conv_dim,
                            padding=self.d_conv - 1, bias=True)
    self.dt_bias = nn.Parameter(torch.zeros(self.num_heads))
    self.A_log = nn.Parameter(torch.zeros(self.num_heads))
    self.D = nn.Parameter(torch.ones(self.num_heads))
    self.norm = HNetRMSNorm(self.d_inner // self.ngroups, config.mamba_norm_eps)
    self.out_proj = nn.Linear(self.d_inner, dim, bias=False)

  def _split(self, proj):
    z = proj[..., :self.d_inner]
    xbc = proj[..., self.d_inner:self.d_inner + self.conv_dim]
    return z, xbc, proj[..., self.d_inner + self.conv_dim:]

  def _ssm_inputs(self, xbc, dt_raw):
    """Post-conv xBC [..., conv_dim], dt_raw [..., H] -> x [..., H, P], dt [..., H],
    A [H], B/C [..., G, N] (float32)."""
    GN = self.ngroups * self.d_state
    lead = xbc.shape[:-1]
    x = xbc[..., :self.d_inner].reshape(*lead, self.num_heads, self.headdim)
    B = xbc[..., self.d_inner:self.d_inner + GN].reshape(*lead, self.ngroups, self.d_state)
    C = xbc[..., self.d_inner + GN:].reshape(*lead, self.ngroups, self.d_state)
    dt = F.softplus(dt_raw.float() + self.dt_bias.float())
    return x, dt, -torch.exp(self.A_log.float()), B, C

  def _output(self, y, x, z):
    """y, x [..., H, P], z [..., E] -> out_proj(RMSNorm((y + D x) * silu(z)))."""
    y = y + self.D.float()[:, None] * x
    y = y.reshape(*y.shape[:-2], self.d_inner) * F.silu(z.float())
    grouped = y.reshape(*y.shape[:-1], self.ngroups, self.d_inner // self.ngroups)
    return self.out_proj(self.norm(grouped).reshape(y.shape))

  def _conv(self, xbc, segment_ids):
    """Causal depthwise conv that never reads across a document start. xbc [B, L, C]."""
    L, W = xbc.shape[1], self.d_conv
    weight = self.conv1d.weight[:, 0, :].t().float()  # [W, C]
    padded = F.pad(xbc, (0, 0, W - 1, 0))
    seg_padded = torch.cat([segment_ids[:, :1].expand(-1, W - 1), segment_ids], dim=1)
    out = self.conv1d.bias.float()
    for shift in range(W):
      shifted = padded[:, W - 1 - shift:W - 1 - shift + L]
      if shift > 0:
        same = seg_padded[:, W - 1 - shift:W - 1 - shift + L] == segment_ids
        shifted = torch.where(same[..., None], shifted, torch.zeros((), device=xbc.device))
      out = out + weight[W - 1 - shift] * shifted
    return out

  def _scan(self, x, dt, A, B, C, reset):
    if self.use_kernels and _kernel_chunk_scan is not None and x.is_cuda:
      seq_idx = torch.cumsum(reset.int(), dim=1).int().contiguous()
      y, state = _kernel_chunk_scan(x.contiguous(), dt.contiguous(), A, B.contiguous(),
                                    C.contiguous(), self.chunk_size, seq_idx=seq_idx,
                                    return_final_states=True)
      return y.float(), state.float()
    return ssd_chunked(x, dt, A, B, C, self.chunk_size, reset)

  def forward(self, x: torch.Tensor, stream: Stream, cache_out: list | None = None):
    """x [B, L, D] -> [B, L, D]. With `cache_out`, appends {"conv", "ssm"}: the state
    after each row's last live slot (stream.length)."""
    z, xbc, dt_raw = self._split(self.in_proj(x))
    conv_in = xbc.float()
    xs, dt, A, B, C = self._ssm_inputs(F.silu(self._conv(conv_in, stream.segment_ids)), dt_raw)
    reset = segment_starts(stream.segment_ids)
    reset[:, 0] = False
    if cache_out is not None:  # empty slots after the live ones leave the state unchanged
      tail = torch.arange(x.shape[1], device=x.device)[None, :] >= stream.length[:, None]
      dt = torch.where(tail[..., None], torch.zeros((), device=x.device), dt)
      reset = reset & ~tail
    y, state = self._scan(xs, dt, A, B, C, reset)
    if cache_out is not None:
      cache_out.append({"conv": self._conv_state(conv_in, stream), "ssm": state})
    return self._output(y, xs, z)

  def _conv_state(self, conv_in, stream):
    """The last W-1 conv inputs before each row's end, zero where from another document."""
    W = self.d_conv
    index = stream.length[:, None] - (W - 1) + torch.arange(W - 1, device=conv_in.device)  # [B, W-1]
    last_segment = stream.segment_ids.gather(1, (stream.length - 1)[:, None])
    keep = (index >= 0) & (stream.segment_ids.gather(1, index.clamp(min=0)) == last_segment)
    return gather_rows(conv_in, torch.where(keep, index, torch.full_like(index, -1)))

  def step(self, x, cache: dict, ctx: StepContext):
    """x [B, D] -> [B, D]; commits the new state for rows with ctx.commit."""
    z, xbc, dt_raw = self._split(self.in_proj(x))
    window = torch.cat([cache["conv"], xbc.float()[:, None]], dim=1)  # [B, W, conv_dim]
    weight = self.conv1d.weight[:, 0, :].t().float()  # [W, C]
    conv_out = torch.einsum("bwc,wc->bc", window, weight) + self.conv1d.bias.float()
    xs, dt, A, B, C = self._ssm_inputs(F.silu(conv_out), dt_raw)
    y, state = ssd_step(cache["ssm"], xs, dt, A, B, C)
    keep = ctx.commit
    cache["conv"] = torch.where(keep[:, None, None], window[:, 1:], cache["conv"])
    cache["ssm"] = torch.where(keep[:, None, None, None], state, cache["ssm"])
    return self._output(y, xs, z)


class HNetMamba2Block(nn.Module):
  """x + Mamba2(RMSNorm(x))."""

  def __init__(self, config: HNetConfig, dim: int):
    super().__init__()
    self.norm = HNetRMSNorm(dim, config.norm_eps)
    self.mixer = HNetMamba2(config, dim)

  def forward(self, x, stream, cache_out=None):
    return x + self.mixer(self.norm(x), stream, cache_out)

  def step(self, x, cache, ctx):
    return x + self.mixer.step(self.norm(x), cache, ctx)


# ------------------------------------------------------------------- Transformer

class HNetAttention(nn.Module):
  """Causal self-attention with RoPE (positions within the document), document mask
  and an optional sliding window counted in stream slots."""

  def __init__(self, dim: int, num_heads: int, window: int, rope_base: float):
    super().__init__()
    self.num_heads, self.head_dim = num_heads, dim // num_heads
    self.window, self.rope_base = window, rope_base
    inner = num_heads * self.head_dim
    self.query = nn.Linear(dim, inner, bias=False)
    self.key = nn.Linear(dim, inner, bias=False)
    self.value = nn.Linear(dim, inner, bias=False)
    self.out = nn.Linear(inner, dim, bias=False)

  def _project(self, x, positions):
    shape = x.shape[:-1] + (self.num_heads, self.head_dim)
    q = apply_rope(self.query(x).view(shape), positions, self.rope_base)
    k = apply_rope(self.key(x).view(shape), positions, self.rope_base)
    return q, k, self.value(x).view(shape)

  def forward(self, x, stream: Stream, cache_out: list | None = None):
    """x [B, L, D] -> [B, L, D]; with `cache_out` appends {"k", "v"} [B, L, H, Dh]."""
    bsz, L, _ = x.shape
    q, k, v = self._project(x, stream.positions)
    index = torch.arange(L, device=x.device)
    delta = index[:, None] - index[None, :]  # [L, L]
    mask = (stream.segment_ids[:, :, None] == stream.segment_ids[:, None, :]) & (delta >= 0)
    if self.window:
      mask &= delta.abs() < self.window
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                         attn_mask=mask[:, None])  # [B, H, L, Dh]
    if cache_out is not None:
      cache_out.append({"k": k, "v": v})
    return self.out(out.transpose(1, 2).reshape(bsz, L, -1))

  def step(self, x, cache, ctx: StepContext):
    """x [B, D] at slot ctx.slot -> [B, D]; writes the key/value for committing rows."""
    bsz = x.shape[0]
    q, k, v = self._project(x[:, None], ctx.rope_pos[:, None])  # [B, 1, H, Dh]
    S = cache["k"].shape[1]
    slots = torch.arange(S, device=x.device)
    here = slots[None, :] == ctx.slot[:, None]  # [B, S]
    k_all = torch.where(here[..., None, None], k, cache["k"])
    v_all = torch.where(here[..., None, None], v, cache["v"])
    delta = ctx.slot[:, None] - slots[None, :]
    mask = (ctx.valid | here) & (delta >= 0)
    if self.window:
      mask &= delta < self.window
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k_all.transpose(1, 2),
                                         v_all.transpose(1, 2), attn_mask=mask[:, None, None, :])
    keep = (here & ctx.commit[:, None])[..., None, None]
    cache["k"] = torch.where(keep, k_all, cache["k"])
    cache["v"] = torch.where(keep, v_all, cache["v"])
    return self.out(out.reshape(bsz, -1))


class HNetSwiGLU(nn.Module):
  def __init__(self, dim: int, hidden: int):
    super().__init__()
    self.gate = nn.Linear(dim, hidden, bias=False)
    self.up = nn.Linear(dim, hidden, bias=False)
    self.down = nn.Linear(hidden, dim, bias=False)

  def forward(self, x):
    return self.down(F.silu(self.gate(x)) * self.up(x))


class HNetTransformerBlock(nn.Module):
  """x + Attn(RMSNorm(x)), then x + SwiGLU(RMSNorm(x))."""

  def __init__(self, config: HNetConfig, dim: int, num_heads: int, mlp_dim: int, window: int):
    super().__init__()
    self.attn_norm = HNetRMSNorm(dim, config.norm_eps)
    self.attn = HNetAttention(dim, num_heads, window, config.rope_base)
    self.mlp_norm = HNetRMSNorm(dim, config.norm_eps)
    self.mlp = HNetSwiGLU(dim, mlp_dim)

  def forward(self, x, stream, cache_out=None):
    x = x + self.attn(self.attn_norm(x), stream, cache_out)
    return x + self.mlp(self.mlp_norm(x))

  def step(self, x, cache, ctx):
    x = x + self.attn.step(self.attn_norm(x), cache, ctx)
    return x + self.mlp(self.mlp_norm(x))


class HNetStack(nn.Module):
  """The blocks of one layout string at one width, then an RMSNorm."""

  def __init__(self, config: HNetConfig, kinds, dim: int, num_heads: int, mlp_dim: int, window: int):
    super().__init__()
    self.layers = nn.ModuleList([
        HNetTransformerBlock(config, dim, num_heads, mlp_dim, window) if kind == "T"
        else HNetMamba2Block(config, dim) for kind in kinds])
    self.norm = HNetRMSNorm(dim, config.norm_eps)

  def forward(self, x, stream, cache_out=None):
    for layer in self.layers:
      x = layer(x, stream, cache_out)
    return self.norm(x)

  def step(self, x, caches, ctx):
    for layer, cache in zip(self.layers, caches):
      x = layer.step(x, cache, ctx)
    return self.norm(x)


# ------------------------------------------------------------------- dynamic chunking

class HNetRouterProjection(nn.Linear):
  """W_q or W_k of the router: square, no bias, initialised to the identity."""


class HNetResidual(nn.Linear):
  """Linear(h) added after dechunking, in float32, initialised to zero."""


def boundary_probs(q, k, is_start):
  """q, k [..., D], is_start [...] -> (p [...] float32, b [...] bool)."""
  q32, k32 = q.float(), k.float()
  eps_sq = COSINE_EPS ** 2
  q_norm = torch.sqrt(torch.clamp(torch.sum(q32 * q32, dim=-1), min=eps_sq))
  k_norm = torch.sqrt(torch.clamp(torch.sum(k32 * k32, dim=-1), min=eps_sq))
  cosine = torch.sum(q32 * k32, dim=-1) / (q_norm * k_norm)
  prob = torch.clamp((1.0 - cosine) * 0.5, 0.0, 1.0)
  prob = torch.where(is_start, torch.ones((), device=prob.device), prob)
  return prob, prob > 0.5


class HNetRouter(nn.Module):
  def __init__(self, dim: int):
    super().__init__()
    self.query = HNetRouterProjection(dim, dim, bias=False)
    self.key = HNetRouterProjection(dim, dim, bias=False)

  def forward(self, h, stream: Stream):
    """h [B, L, D] -> (p [B, L], b [B, L])."""
    h_previous = F.pad(h, (0, 0, 1, 0))[:, :-1]
    prob, mask = boundary_probs(self.query(h_previous), self.key(h), stream.is_start)
    return prob, mask & (stream.real | stream.is_start)

  def step(self, h_previous, h, is_start):
    return boundary_probs(self.query(h_previous), self.key(h), is_start)


def ste_confidence(prob, mask):
  """STE(c), c = b ? p : 1 - p: the forward value c + (1 - c), gradient of c."""
  confidence = torch.where(mask, prob, 1.0 - prob)
  return confidence + (1.0 - confidence).detach()


def ema_scan(decay, value, block: int = 64):
  """y_k = decay_k y_{k-1} + value_k along dim 1; decay [B, C], value [B, C, D]
  float32. Blocks of `block`: a matrix of decay products inside, a loop across."""
  bsz, length, dim = value.shape
  state = value.new_zeros((bsz, dim))
  out = []
  for start in range(0, length, block):
    a = decay[:, start:start + block]  # [B, T]
    x = value[:, start:start + block]
    T = a.shape[1]
    row = torch.arange(T, device=a.device)[:, None]
    col = torch.arange(T, device=a.device)[None, :]
    factors = torch.where(row > col, a[:, :, None], torch.ones((), device=a.device))  # [B, m, j]
    transfer = torch.where(row >= col, torch.cumprod(factors, dim=1), torch.zeros((), device=a.device))
    y = transfer @ x + torch.cumprod(a, dim=1)[..., None] * state[:, None]
    state = y[:, -1]
    out.append(y)
  return torch.cat(out, dim=1)


class HNetOuterStage(nn.Module):
  """Stage s < S: encoder, router, residual projection, decoder, width pad."""

  def __init__(self, config: HNetConfig, layout, s: int):
    super().__init__()
    dim, inner_dim = config.d_model[s], config.d_model[s + 1]
    args = (config.d_model[s], config.num_heads[s], config.mlp_dim[s], config.window[s])
    self.encoder = HNetStack(config, layout["encoder"], *args)
    self.router = HNetRouter(dim)
    self.residual = HNetResidual(dim, dim, bias=False)
    self.decoder = HNetStack(config, layout["decoder"], *args)
    self.pad = nn.Parameter(torch.zeros(inner_dim - dim)) if inner_dim > dim else None
    self.dim = dim

  def widen(self, x):
    """[..., D_s] -> [..., D_{s+1}] with the learned pad vector."""
    if self.pad is None:
      return x
    return torch.cat([x, self.pad.to(x.dtype).expand(x.shape[:-1] + self.pad.shape)], dim=-1)


class HNetInnerStage(nn.Module):
  def __init__(self, config: HNetConfig, layout, s: int):
    super().__init__()
    self.main = HNetStack(config, layout["main"], config.d_model[s], config.num_heads[s],
                          config.mlp_dim[s], config.window[s])


# ------------------------------------------------------------------- cache

class HNetCache:
  """Generation state of every stage (see the module docstring). stages[s]: {"count"
  [B], "next_pos" [B], "valid" [B, S_s], the block caches of "encoder" / "decoder" or
  "main", and for s < S "h_previous", "z_bar" [B, D_s]}."""

  is_compileable = False
  is_croppable = False

  def __init__(self, stages: list[dict]):
    self.stages = stages

  @property
  def is_linear(self) -> list[bool]:
    return [False]

  def get_seq_length(self, layer_idx: int = 0) -> int:
    return int(self.stages[0]["count"].max())

  def _map(self, fn):
    def visit(value):
      if isinstance(value, torch.Tensor):
        return fn(value)
      if isinstance(value, dict):
        return {k: visit(v) for k, v in value.items()}
      if isinstance(value, list):
        return [visit(v) for v in value]
      return value
    self.stages = visit(self.stages)

  def reorder_cache(self, beam_idx: torch.Tensor) -> None:
    self._map(lambda t: t.index_select(0, beam_idx.to(t.device)))

  def ensure_slots(self, s: int, needed: int) -> None:
    """Grows stage s's attention slots (and `valid`) to at least `needed`."""
    stage = self.stages[s]
    size = stage["valid"].shape[1]
    if needed <= size:
      return
    grow = max(needed, 2 * size, 16) - size
    stage["valid"] = F.pad(stage["valid"], (0, grow), value=False)
    for key in ("encoder", "decoder", "main"):
      for layer in stage.get(key, []):
        if "k" in layer:
          layer["k"] = F.pad(layer["k"], (0, 0, 0, 0, 0, grow))
          layer["v"] = F.pad(layer["v"], (0, 0, 0, 0, 0, grow))


def _stage_cache(stream: Stream, blocks: dict) -> dict:
  rows = torch.arange(stream.length.shape[0], device=stream.length.device)
  last = stream.length - 1
  slots = torch.arange(stream.segment_ids.shape[1], device=last.device)
  valid = (slots[None, :] < stream.length[:, None]) & (
      stream.segment_ids == stream.segment_ids[rows, last][:, None])
  return {"count": stream.length.clone(), "next_pos": stream.positions[rows, last] + 1,
          "valid": valid, **blocks}


# ------------------------------------------------------------------- model

class HNetPreTrainedModel(PreTrainedModel):
  config_class = HNetConfig
  base_model_prefix = "hnet"
  _no_split_modules = ["HNetOuterStage", "HNetInnerStage"]

  @torch.no_grad()
  def _init_weights(self, module):
    std = self.config.initializer_range
    if isinstance(module, HNetRouterProjection):
      nn.init.eye_(module.weight)
    elif isinstance(module, HNetResidual):
      nn.init.zeros_(module.weight)
    elif isinstance(module, nn.Linear):
      nn.init.normal_(module.weight, std=std)
    elif isinstance(module, nn.Embedding):
      nn.init.normal_(module.weight, std=std)
    elif isinstance(module, nn.Conv1d):
      bound = 1.0 / math.sqrt(module.kernel_size[0])
      nn.init.uniform_(module.weight, -bound, bound)
      nn.init.uniform_(module.bias, -bound, bound)
    elif isinstance(module, HNetRMSNorm):
      nn.init.ones_(module.weight)
    elif isinstance(module, HNetMamba2):
      # dt = softplus(dt_bias) log-uniform in [1e-3, 1e-1]; A uniform in [1, 16].
      dt = torch.exp(torch.empty_like(module.dt_bias).uniform_(math.log(1e-3), math.log(1e-1)))
      dt = dt.clamp(min=1e-4)
      module.dt_bias.copy_(dt + torch.log(-torch.expm1(-dt)))
      module.A_log.copy_(torch.log(torch.empty_like(module.A_log).uniform_(1.0, 16.0)))
      nn.init.ones_(module.D)
    elif isinstance(module, HNetOuterStage) and module.pad is not None:
      nn.init.zeros_(module.pad)


class HNetForCausalLM(HNetPreTrainedModel, GenerationMixin):
  _is_stateful = True  # the cache cannot be cropped back (no assisted decoding)

  def __init__(self, config: HNetConfig):
    super().__init__(config)
    layouts = parse_layout(config.layout)
    self.num_stages = len(layouts) - 1
    self.embed = nn.Embedding(config.vocab_size, config.d_model[0])
    self.stages = nn.ModuleList([
        HNetOuterStage(config, layout, s) if s < self.num_stages else HNetInnerStage(config, layout, s)
        for s, layout in enumerate(layouts)])
    self.head = nn.Linear(config.d_model[0], config.vocab_size, bias=False)
    self.post_init()

  @classmethod
  def _supports_default_dynamic_cache(cls) -> bool:
    return False  # HNetCache is built by the prefill forward, not by generate

  def get_input_embeddings(self):
    return self.embed

  def set_input_embeddings(self, value):
    self.embed = value

  def get_output_embeddings(self):
    return self.head

  # ----------------------------------------------------------------- full forward

  def _run_stage(self, s: int, x, stream: Stream, caches: list | None):
    """x [B, L_s, D_s] -> [B, L_s, D_s]. With `caches` (a list), fills caches[s:]."""
    stage = self.stages[s]
    build = caches is not None
    if s == self.num_stages:
      blocks = [] if build else None
      out = stage.main(x, stream, blocks)
      if build:
        caches[s] = _stage_cache(stream, {"main": blocks})
      return out
    encoder_blocks, decoder_blocks = ([], []) if build else (None, None)
    h = stage.encoder(x, stream, encoder_blocks)  # [B, L, D]
    bsz, length, dim = h.shape
    capacity = length if build else capacity_for(
        length, float(self.config.target_ratio[s]), float(self.config.capacity_factor[s]))
    prob, mask = stage.router(h, stream)  # [B, L]
    # Chunk: the first `capacity` kept positions of each row, in order.
    kept = torch.cumsum(mask.long(), dim=1)  # [B, L]
    destination = torch.where(mask, kept - 1, torch.full_like(kept, capacity)).clamp(max=capacity)
    byte_index = torch.full((bsz, capacity + 1), -1, dtype=torch.long, device=h.device)
    byte_index.scatter_(1, destination, torch.arange(length, device=h.device).expand(bsz, length))
    byte_index = byte_index[:, :capacity]  # [B, C] position of each chunk, -1 empty
    valid = byte_index >= 0
    index_of_byte = (kept - 1).clamp(0, capacity - 1)  # [B, L] chunk each byte reads
    chunk_prob = gather_rows(prob, byte_index)
    is_start = gather_rows(stream.is_start, byte_index) & valid
    inner = Stream(positions_within_document(is_start), gather_rows(stream.segment_ids, byte_index),
                   is_start, gather_rows(stream.real, byte_index) & valid,
                   torch.clamp(kept[:, -1], max=capacity) if build else None)
    chunks = stage.widen(gather_rows(h, byte_index))  # [B, C, D_{s+1}]
    z = self._run_stage(s + 1, chunks, inner, caches)[..., :dim]  # [B, C, D]
    # Dechunk: EMA over the chunks (reset at document starts), upsample, STE, residual.
    p = chunk_prob.float().clamp(PROB_CLAMP, 1.0 - PROB_CLAMP)
    z_bar = ema_scan((1.0 - p) * (1.0 - is_start.float()), p[..., None] * z.float())  # [B, C, D]
    upsampled = gather_rows(z_bar, index_of_byte)  # [B, L, D]
    y = (upsampled * ste_confidence(prob, mask)[..., None] + stage.residual(h.float())).to(z.dtype)
    out = stage.decoder(y, stream, decoder_blocks)
    if build:
      rows = torch.arange(bsz, device=h.device)
      last = stream.length - 1
      caches[s] = _stage_cache(stream, {
          "encoder": encoder_blocks, "decoder": decoder_blocks, "h_previous": h[rows, last].float(),
          "z_bar": z_bar[rows, index_of_byte[rows, last]]})
    return out

  # ----------------------------------------------------------------- cached step

  def _step_stage(self, s: int, x, cache: HNetCache, commit):
    """x [B, D_s] (meaningful where `commit` [B]) -> [B, D_s]; advances cache.stages[s:]."""
    stage, state = self.stages[s], cache.stages[s]
    cache.ensure_slots(s, int(state["count"].max()) + 1)
    ctx = StepContext(state["count"], state["next_pos"], commit, state["valid"])
    if s == self.num_stages:
      out = stage.main.step(x, state["main"], ctx)
    else:
      h = stage.encoder.step(x, state["encoder"], ctx)  # [B, D]
      prob, mask = stage.router.step(state["h_previous"].to(h.dtype), h, state["next_pos"] == 0)
      emit = commit & mask
      if bool(emit.any()):
        z = self._step_stage(s + 1, stage.widen(h), cache, emit)[:, :stage.dim]
      else:  # no row reads z (a row's z is used only where it emits)
        z = torch.zeros_like(h)
      p = prob.float().clamp(PROB_CLAMP, 1.0 - PROB_CLAMP)[:, None]
      updated = p * z.float() + (1.0 - p) * state["z_bar"]
      z_bar = torch.where(mask[:, None], updated, state["z_bar"])
      y = (z_bar * ste_confidence(prob, mask)[:, None] + stage.residual(h.float())).to(h.dtype)
      out = stage.decoder.step(y, state["decoder"], ctx)
      keep = commit[:, None]
      state["h_previous"] = torch.where(keep, h.float(), state["h_previous"])
      state["z_bar"] = torch.where(keep, z_bar, state["z_bar"])
    slots = torch.arange(state["valid"].shape[1], device=x.device)
    state["valid"] = state["valid"] | ((slots[None, :] == state["count"][:, None]) & commit[:, None])
    state["count"] = state["count"] + commit.long()
    state["next_pos"] = state["next_pos"] + commit.long()
    return out

  def _step(self, ids, cache: HNetCache):
    """ids [B] -> logits [B, V]."""
    x = self.embed(ids)
    y = self._step_stage(0, x, cache, torch.ones(ids.shape, dtype=torch.bool, device=ids.device))
    return self.head(y).float()

  # ----------------------------------------------------------------- forward

  def forward(self, input_ids: torch.LongTensor | None = None,
              attention_mask: torch.Tensor | None = None, cache: HNetCache | None = None,
              past_key_values: HNetCache | None = None, use_cache: bool | None = None,
              labels: torch.LongTensor | None = None, return_dict: bool | None = None,
              **kwargs) -> CausalLMOutputWithPast:
    """input_ids [B, L] -> logits [B, L, V] (float32).

    Without a cache: the full forward over the rows (attention_mask: 1 real, 0 padding;
    every run of real bytes is a document). use_cache=True also returns an HNetCache
    (rows must end with a real byte: pad on the left). With a cache (`cache`, or
    `past_key_values`): input_ids are the next bytes of every row, fed step by step.
    labels [B, L] (-100 ignored): mean next-byte cross-entropy of logits[:, :-1] vs
    labels[:, 1:].
    """
    if kwargs.get("inputs_embeds") is not None:
      raise ValueError("H-Net reads byte ids: pass input_ids, not inputs_embeds")
    if input_ids is None:
      raise ValueError("pass input_ids [batch, length] (byte ids)")
    cache = cache if cache is not None else past_key_values
    use_cache = (cache is not None) if use_cache is None else use_cache
    if cache is not None:
      if not isinstance(cache, HNetCache):
        raise TypeError(f"the H-Net cache is an HNetCache, got {type(cache).__name__}; let the "
                        "model build it (use_cache=True on the first call)")
      logits = torch.stack([self._step(input_ids[:, t], cache) for t in range(input_ids.shape[1])], 1)
    else:
      if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
      stream = stream_from_mask(attention_mask)
      caches = None
      if use_cache:
        if not bool(stream.real[:, -1].all()):
          raise ValueError("use_cache=True needs every row to end with a real byte: pad on the left "
                           "(tokenizer.padding_side = 'left')")
        stream.length = torch.full((input_ids.shape[0],), input_ids.shape[1], dtype=torch.long,
                                   device=input_ids.device)
        caches = [None] * (self.num_stages + 1)
      y = self._run_stage(0, self.embed(input_ids), stream, caches)
      logits = self.head(y).float()
      cache = HNetCache(caches) if use_cache else None
    loss = None
    if labels is not None:
      loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                             labels[:, 1:].reshape(-1).to(logits.device), ignore_index=-100)
    return CausalLMOutputWithPast(loss=loss, logits=logits, cache=cache if use_cache else None)
