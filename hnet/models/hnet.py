"""H-Net: byte-level hierarchical LM with dynamic chunking (1 or more stages).

  bytes [B, L] -> embed -> stages[0].encoder -> route/chunk (L -> C_1)
     -> [stages[1] ... : the same, recursively] -> stages[S].main (innermost, on C_S)
     -> ... -> dechunk (C_1 -> L) -> stages[0].decoder -> head -> logits [B, L, V]

Layouts, per-stage widths and the lr multipliers: hnet/models/layout.py. Routing,
capacity, dechunking and the ratio loss: hnet/models/dynamic_chunking.py.

Parameter paths (regexes of `train.lr_multipliers`): "embed/...", "head/...",
"stages/s/{encoder,decoder,router,residual,pad}/..." for s < S, "stages/S/main/...".
Each stack of blocks (encoder, main, decoder) ends with an RMSNorm (as in the public
reference); residual output projections are N(0, 0.02 / sqrt(n)) with n the blocks in
the stack (x 2 branches for Transformer blocks), every other matrix N(0, 0.02).

Width growth: the chunks of stage s (width D_s) are padded with a learned vector
(zero-initialised) up to D_{s+1} before the inner stage, and the inner output is
truncated back to D_s.

Attention: stage s uses `window[s]` (0 = full causal); RoPE positions are ordinals
within the document in that stage's stream (bytes, or chunks). The sliding window is
counted in that stage's positions.

Generation (`init_cache` / `decode_step`): every stage keeps its block caches, a
per-row count of elements it has received (its stream position), h_{t-1} for routing
and the EMA value z_bar. A row feeds stage s+1 only when its boundary fires; all rows
compute the step but only the rows that emitted commit (jnp.where on the caches).
Attention caches are indexed per row (the slot of a row is its own count), so the
shared scalar-index Attention.decode is not used: `attention_step` below does the
per-row write and mask with the layer's own projections. Equals the forward pass with
capacity = L (no dropped boundaries).
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from hnet.layers.attention import Attention, attend_cache, write_rows
from hnet.layers import linear
from hnet.layers.linear import DEFAULT_STD, Dense, Embed
from hnet.layers.mamba2 import Mamba2Block
from hnet.layers.norm import RMSNorm
from hnet.layers.rope import apply_rope
from hnet.layers.transformer_block import TransformerBlock
from hnet.kernels.dechunk import ema_scan_reference
from hnet.kernels.dechunk.reference import clamp_chunk_prob
from hnet.models import dynamic_chunking as dc
from hnet.models.layout import parse_layout, per_stage, stage_lr_multipliers  # noqa: F401
from hnet.models.output import ModelOutput
from hnet.sharding import shard


# ---------------------------------------------------------------- per-row decoding

def attention_step(attn: Attention, x: jax.Array, cache: dict[str, jax.Array],
                   position: jax.Array, commit: jax.Array) -> tuple[jax.Array, dict]:
  """One token per row at its own position. x [B, D], position [B] int32 (= the cache
  slot). The key/value go to slot `position` whether or not the row commits: that slot
  is the row's scratch until it commits there (every step writes it before attending,
  and attends to slots <= position only), so `commit` [B] is not needed here.
  Returns ([B, D], cache)."""
  del commit
  B = x.shape[0]
  S = cache["k"].shape[2]
  q = attn.query(x).reshape(B, 1, attn.num_heads, attn.head_dim)
  k = attn.key(x).reshape(B, 1, attn.num_kv_heads, attn.head_dim)
  v = attn.value(x).reshape(B, 1, attn.num_kv_heads, attn.head_dim)
  if attn.rope:
    q = apply_rope(q, position[:, None], attn.rope_base)
    k = apply_rope(k, position[:, None], attn.rope_base)
  new_cache = {"k": write_rows(cache["k"], k, position), "v": write_rows(cache["v"], v, position)}
  delta = position[:, None] - jnp.arange(S, dtype=jnp.int32)[None, :]  # [B, S]
  mask = delta >= 0
  if attn.window is not None:
    mask &= delta < attn.window
  out = attend_cache(q, new_cache["k"].astype(q.dtype), new_cache["v"].astype(q.dtype),
                     mask[:, None, None, :])
  return attn.out(out.reshape(B, -1)), new_cache


def block_step(block, x: jax.Array, cache, position: jax.Array, commit: jax.Array):
  """x [B, D] -> ([B, D], cache) for a TransformerBlock or a Mamba2Block."""
  if isinstance(block, Mamba2Block):
    h, cache = block.mixer.step(block.norm(x), cache, commit)
    return x + h.astype(x.dtype), cache
  h, cache = attention_step(block.attn, block.attn_norm(x), cache, position, commit)
  x = x + h
  return x + block.mlp(block.mlp_norm(x)), cache


def _rows_at(x: jax.Array, index: jax.Array) -> jax.Array:
  """x [B, C, ...], index [B] -> x[b, index[b]] [B, ...]."""
  return jnp.take_along_axis(x, index.reshape(-1, *([1] * (x.ndim - 1))), axis=1)[:, 0]


def _roll_rows(x: jax.Array, shift: jax.Array) -> jax.Array:
  """x [B, C, ...], shift [B] -> out[b, j] = x[b, (j + shift[b]) % C]."""
  C = x.shape[1]
  index = (jnp.arange(C)[None] + shift[:, None]) % C  # [B, C]
  return jnp.take_along_axis(x, index.reshape(*index.shape, *([1] * (x.ndim - 2))), axis=1)


def mamba_prefill(block: Mamba2Block, x: jax.Array, count: jax.Array) -> tuple[jax.Array, dict]:
  """The first count[b] elements of x [B, C, D] (the rest padding) through a Mamba-2
  block from an empty cache -> ([B, C, D] (garbage past count), the cache after
  count[b] steps). Each row is rotated so its elements end at C-1 behind a padding
  document (reset at its first element, conv blind to the padding), so the chunked
  scan's final state is the row's own; the conv window's slots before the row's first
  element are zeroed, as the recurrent step leaves them."""
  C = x.shape[1]
  aligned = _roll_rows(x, count)  # [B, C, D] elements at C-count .. C-1
  segment_ids = (jnp.arange(C)[None] >= C - count[:, None]).astype(jnp.int32)  # [B, C]
  h, state = block.mixer(block.norm(aligned), segment_ids, return_state=True)
  W1 = state["conv"].shape[1]  # d_conv - 1 slots, the last one holds element count-1
  seen = jnp.arange(W1)[None] >= W1 - count[:, None]  # [B, W-1]
  state["conv"] = jnp.where(seen[..., None], state["conv"], 0.0)
  return _roll_rows(aligned + h.astype(x.dtype), -count), state


def stack_prefill(stack, x: jax.Array, count: jax.Array, caches: list) -> tuple[jax.Array, list]:
  """x [B, C, D] (each row's first count[b] elements real, the rest padding) through a
  Stack from empty caches -> (norm output [B, C, D], caches after count[b] steps).
  Attention writes slots 0..C-1; the slots past count[b] are never read (each step
  writes its own slot before attending, and attends to earlier slots only)."""
  new = []
  for layer, cache in zip(stack.layers, caches):
    if isinstance(layer, Mamba2Block):
      x, cache = mamba_prefill(layer, x, count)
    else:
      x, cache = layer.decode(x, cache, jnp.zeros((), jnp.int32))
    new.append(cache)
  return stack.norm(x), new


# ---------------------------------------------------------------- modules

class Stack(nnx.Module):
  """Blocks of a layout string ("m" Mamba-2, "T" Transformer) at one width + RMSNorm."""

  def __init__(self, kinds, dim: int, *, rngs: nnx.Rngs, num_heads: int, mlp_dim: int,
               window: int | None, mamba: dict, dtype=jnp.float32):
    n = max(len(kinds), 1)
    layers = []
    for kind in kinds:
      if kind == "T":
        layers.append(TransformerBlock(dim, num_heads, mlp_dim, rngs=rngs, window=window,
                                       num_layers_for_init=n, dtype=dtype))
      else:
        layers.append(Mamba2Block(dim, rngs=rngs, num_layers_for_init=n, dtype=dtype, **mamba))
    self.layers = nnx.List(layers)
    self.norm = RMSNorm(dim)

  def __call__(self, x: jax.Array, stream: dc.Stream) -> jax.Array:
    for layer in self.layers:
      x = layer(x, stream.positions, stream.segment_ids)
    return self.norm(x)

  def init_cache(self, batch_size: int, max_len: int) -> list:
    return [layer.init_cache(batch_size, max_len) for layer in self.layers]

  def step(self, x, caches, position, commit):
    new = []
    for layer, cache in zip(self.layers, caches):
      x, cache = block_step(layer, x, cache, position, commit)
      new.append(cache)
    return self.norm(x), new


class OuterStage(nnx.Module):
  """Stage s < S: encoder, router, residual projection, decoder (and the width pad)."""

  def __init__(self, layout, dim: int, inner_dim: int, *, rngs: nnx.Rngs, stack_kwargs: dict,
               dtype=jnp.float32):
    self.encoder = Stack(layout.encoder, dim, rngs=rngs, dtype=dtype, **stack_kwargs)
    self.router = dc.Router(dim, dtype=dtype)
    self.residual = dc.ResidualProjection(dim, rngs=rngs)
    self.decoder = Stack(layout.decoder, dim, rngs=rngs, dtype=dtype, **stack_kwargs)
    self.pad = (nnx.Param(jnp.zeros((inner_dim - dim,), jnp.float32), axes=(None,))
                if inner_dim > dim else None)
    self.dim, self.inner_dim = dim, inner_dim

  def widen(self, x: jax.Array) -> jax.Array:
    """[..., D_s] -> [..., D_{s+1}] (learned pad vector)."""
    if self.pad is None:
      return x
    pad = jnp.broadcast_to(self.pad[...].astype(x.dtype), x.shape[:-1] + self.pad.shape)
    return jnp.concatenate([x, pad], axis=-1)


class InnerStage(nnx.Module):
  """Stage S: the main network."""

  def __init__(self, layout, dim: int, *, rngs: nnx.Rngs, stack_kwargs: dict, dtype=jnp.float32):
    self.main = Stack(layout.main, dim, rngs=rngs, dtype=dtype, **stack_kwargs)


class HNet(nnx.Module):
  def __init__(self, cfg, *, rngs: nnx.Rngs):
    layouts = parse_layout(cfg.layout)
    S = len(layouts) - 1
    self.num_stages = S
    widths = [int(w) for w in per_stage(list(cfg.d_model), S + 1, "d_model")]
    heads = per_stage(cfg.num_heads, S + 1, "num_heads")
    mlp = per_stage(cfg.mlp_dim, S + 1, "mlp_dim")
    windows = per_stage(cfg.window, S + 1, "window")
    # tuples, not lists: the model's GraphDef stays hashable (hnet/generate.py keys on it)
    self.target_ratio = tuple(float(r) for r in per_stage(cfg.target_ratio, S, "target_ratio")
                              ) if S else ()
    self.capacity_factor = tuple(float(f) for f in
                                 per_stage(cfg.capacity_factor, S, "capacity_factor")) if S else ()
    self.ratio_loss_weight = float(cfg.ratio_loss_weight)
    self.implementation = cfg.get("implementation", "jnp")
    self.interpret = bool(cfg.get("interpret", False))
    dtype = jnp.dtype(cfg.get("dtype", "float32"))
    mamba = dict(d_state=cfg.d_state, headdim=cfg.headdim, expand=cfg.expand, d_conv=cfg.d_conv,
                 chunk_size=cfg.ssd_chunk_size,
                 implementation=cfg.get("mamba_implementation", "chunked"))
    stages = []
    for s, layout in enumerate(layouts):
      kwargs = dict(num_heads=int(heads[s]), mlp_dim=int(mlp[s]),
                    window=int(windows[s]) or None, mamba=mamba)
      if s < S:
        if widths[s + 1] < widths[s]:
          raise ValueError(f"model.d_model must not shrink inward: {widths}")
        stages.append(OuterStage(layout, widths[s], widths[s + 1], rngs=rngs, stack_kwargs=kwargs,
                                 dtype=dtype))
      else:
        stages.append(InnerStage(layout, widths[s], rngs=rngs, stack_kwargs=kwargs, dtype=dtype))
    self.stages = nnx.List(stages)
    self.embed = Embed(cfg.vocab_size, widths[0], rngs=rngs, dtype=dtype)
    self.head = Dense(widths[0], cfg.vocab_size, rngs=rngs, axes=("embed", "vocab"),
                      std=DEFAULT_STD, dtype=dtype)

  # ---------------------------------------------------------------- forward

  def _run_stage(self, s: int, x: jax.Array, stream: dc.Stream, aux: dict, metrics: dict,
                 real_bytes: jax.Array, trace: dict | None = None) -> jax.Array:
    """x [B, L_s, D_s] -> [B, L_s, D_s]. `trace` (optional) collects each stage's
    boundary_prob / boundary_mask [B, L_s] and chunk_byte_index [B, C]."""
    stage = self.stages[s]
    if s == self.num_stages:
      return stage.main(x, stream)
    impl = dict(implementation=self.implementation, interpret=self.interpret)
    h = stage.encoder(x, stream)  # [B, L_s, D_s]
    capacity = dc.capacity_for(h.shape[1], self.target_ratio[s], self.capacity_factor[s])
    routed = dc.route_and_chunk(stage.router, h, stream, capacity, **impl)  # C = capacity
    inner_x = shard(stage.widen(routed.chunks), ("batch", "length", "act_embed"))  # [B, C, D_s+1]
    if trace is not None:
      trace[s] = {"boundary_prob": routed.boundary_prob, "boundary_mask": routed.boundary_mask,
                  "chunk_byte_index": routed.chunk_byte_index}
    z = self._run_stage(s + 1, inner_x, routed.inner, aux, metrics, real_bytes, trace)
    z = z[..., :stage.dim]  # [B, C, D_s]
    y = dc.dechunk_and_combine(z, routed, stage.residual(h), **impl)  # [B, L_s, D_s]
    y = shard(y, ("batch", "length", "act_embed"))
    # Ratio loss and chunking statistics of this stage.
    loss, selected, mean_prob = dc.ratio_loss(routed.boundary_mask, routed.boundary_prob,
                                              stream.real, self.target_ratio[s])
    aux[f"ratio_s{s}"] = self.ratio_loss_weight * loss
    boundaries = jnp.sum((routed.boundary_mask).astype(jnp.float32))
    kept_real = jnp.sum(routed.inner.real.astype(jnp.float32))
    metrics[f"ratio_loss_s{s}"] = loss
    metrics[f"boundary_fraction_s{s}"] = selected
    metrics[f"boundary_prob_mean_s{s}"] = mean_prob
    metrics[f"bytes_per_chunk_s{s}"] = real_bytes / jnp.maximum(kept_real, 1.0)
    metrics[f"dropped_fraction_s{s}"] = (jnp.sum(routed.num_dropped).astype(jnp.float32)
                                         / jnp.maximum(boundaries, 1.0))
    return stage.decoder(y, stream)

  def __call__(self, batch: dict[str, jax.Array]) -> ModelOutput:
    segment_ids = batch["segment_ids"].astype(jnp.int32)
    stream = dc.Stream(positions=batch["positions"].astype(jnp.int32), segment_ids=segment_ids,
                       is_start=dc.segment_starts(segment_ids), real=segment_ids > 0)
    x = shard(self.embed(batch["inputs"]), ("batch", "length", "act_embed"))  # [B, L, D_0]
    aux, metrics = {}, {}
    real_bytes = jnp.sum(stream.real.astype(jnp.float32))
    y = self._run_stage(0, x, stream, aux, metrics, real_bytes)
    return ModelOutput(logits=self._logits(y), aux_losses=aux, metrics=metrics)

  def chunking(self, batch: dict[str, jax.Array]) -> list[dict[str, jax.Array]]:
    """Per stage s: boundary_prob / boundary_mask [B, L] mapped back to byte positions
    (a stage-s boundary is marked at the byte its element started at; 0 elsewhere)."""
    segment_ids = batch["segment_ids"].astype(jnp.int32)
    stream = dc.Stream(positions=batch["positions"].astype(jnp.int32), segment_ids=segment_ids,
                       is_start=dc.segment_starts(segment_ids), real=segment_ids > 0)
    trace: dict = {}
    x = self.embed(batch["inputs"])
    self._run_stage(0, x, stream, {}, {}, jnp.sum(stream.real.astype(jnp.float32)), trace)
    B, L = segment_ids.shape
    rows = jnp.arange(B)[:, None]
    byte_of = jnp.broadcast_to(jnp.arange(L, dtype=jnp.int32), (B, L))  # stage element -> byte
    out = []
    for s in range(self.num_stages):
      probs = jnp.zeros((B, L), jnp.float32).at[rows, byte_of].set(
          trace[s]["boundary_prob"], mode="drop")
      masks = jnp.zeros((B, L), bool).at[rows, byte_of].set(trace[s]["boundary_mask"], mode="drop")
      out.append({"boundary_prob": probs, "boundary_mask": masks})
      index = trace[s]["chunk_byte_index"]  # [B, C] element of stage s, -1 empty
      byte_of = jnp.where(index >= 0, jnp.take_along_axis(byte_of, jnp.maximum(index, 0), 1), L)
    return out

  def _logits(self, y: jax.Array) -> jax.Array:
    logits = self.head(y).astype(jnp.float32)
    return shard(logits, ("batch",) + ("length",) * (y.ndim - 2) + ("act_vocab",))

  # ---------------------------------------------------------------- generation

  def init_cache(self, batch_size: int, max_len: int) -> list[dict[str, Any]]:
    """One dict per stage; inner stages get max_len slots too (every byte may be a chunk)."""
    caches = []
    for s, stage in enumerate(self.stages):
      count = jnp.zeros((batch_size,), jnp.int32)
      if s == self.num_stages:
        caches.append({"count": count, "main": stage.main.init_cache(batch_size, max_len)})
        continue
      zeros = jnp.zeros((batch_size, stage.dim), jnp.float32)
      caches.append({"count": count, "encoder": stage.encoder.init_cache(batch_size, max_len),
                     "decoder": stage.decoder.init_cache(batch_size, max_len),
                     "h_previous": zeros, "z_bar": zeros})
    return caches

  def _step_stage(self, s: int, x: jax.Array, caches: list, commit: jax.Array) -> jax.Array:
    """x [B, D_s] for rows where `commit` [B] -> [B, D_s]; updates caches[s:] in place."""
    stage, cache = self.stages[s], caches[s]
    position = cache["count"]
    new = {"count": position + commit.astype(jnp.int32)}
    if s == self.num_stages:
      out, new["main"] = stage.main.step(x, cache["main"], position, commit)
      caches[s] = new
      return out
    h, new["encoder"] = stage.encoder.step(x, cache["encoder"], position, commit)
    prob, mask = stage.router.step(cache["h_previous"].astype(h.dtype), h, position == 0)
    emit = commit & mask
    z = self._step_inner(s, stage.widen(h), caches, emit)[:, :stage.dim]
    y, z_bar = dc.dechunk_step(z, cache["z_bar"], prob, mask, stage.residual(h))
    out, new["decoder"] = stage.decoder.step(y, cache["decoder"], position, commit)
    keep = commit[:, None]
    new["h_previous"] = jnp.where(keep, h.astype(jnp.float32), cache["h_previous"])
    new["z_bar"] = jnp.where(keep, z_bar, cache["z_bar"])
    caches[s] = new
    return out

  def _step_inner(self, s: int, x: jax.Array, caches: list, emit: jax.Array) -> jax.Array:
    """_step_stage(s + 1, x [B, D_{s+1}], caches, emit) under one conditional that skips
    the inner stages when no row emits a chunk. Skipping is exact: a row that does not
    emit commits nothing inside, and dechunk_step reads its output only where it emits.
    At batch 1 most bytes (1 - 1/N of them once trained) never run the inner network."""
    def run(inner_caches, x, emit):
      full = caches[:s + 1] + list(inner_caches)
      out = self._step_stage(s + 1, x, full, emit)
      return out, full[s + 1:]

    def skip(inner_caches, x, emit):
      del emit
      return jnp.zeros_like(x), list(inner_caches)

    with linear.unfused_projections():  # traced into the conditional (see there)
      out, caches[s + 1:] = jax.lax.cond(jnp.any(emit), run, skip, caches[s + 1:], x, emit)
    return out

  def _prefill_stage(self, s: int, x: jax.Array, stream: dc.Stream, count: jax.Array,
                     caches: list) -> jax.Array:
    """x [B, C, D_s], each row's first count[b] elements real -> [B, C, D_s]; fills
    caches[s:] (what count[b] steps of _step_stage leave): the forward pass with
    capacity C (no dropped boundaries), keeping each block's state."""
    stage, cache = self.stages[s], caches[s]
    if s == self.num_stages:
      out, main = stack_prefill(stage.main, x, count, cache["main"])
      caches[s] = {"count": count, "main": main}
      return out
    impl = dict(implementation=self.implementation, interpret=self.interpret)
    h, encoder = stack_prefill(stage.encoder, x, count, cache["encoder"])  # [B, C, D_s]
    routed = dc.route_and_chunk(stage.router, h, stream, h.shape[1], **impl)
    inner_count = jnp.sum(routed.inner.real.astype(jnp.int32), axis=1)  # [B]
    z = self._prefill_stage(s + 1, stage.widen(routed.chunks), routed.inner, inner_count,
                            caches)[..., :stage.dim]  # [B, C, D_s]
    y = dc.dechunk_and_combine(z, routed, stage.residual(h), **impl)
    out, decoder = stack_prefill(stage.decoder, y, count, cache["decoder"])
    # z_bar: the EMA value the last real element read (its chunk's; element 0 is a chunk)
    z_bar = ema_scan_reference(z, clamp_chunk_prob(routed.chunk_prob), routed.inner.is_start)
    last_chunk = _rows_at(routed.chunk_index_of_byte, count - 1)  # [B]
    caches[s] = {"count": count, "encoder": encoder, "decoder": decoder,
                 "h_previous": _rows_at(h, count - 1).astype(jnp.float32),
                 "z_bar": _rows_at(z_bar, last_chunk)}
    return out

  def prefill(self, cache: list, ids: jax.Array, length: jax.Array) -> list:
    """ids [B, W] -> the cache that `length` (traced, 1 <= length <= W) decode_steps
    feeding ids[:, :length] leave, from an empty cache (init_cache), in one forward
    pass: the byte stream is a document of `length` bytes followed by padding, every
    stage's stream is its real elements followed by padding (rows emit different
    numbers of chunks), and each block keeps its state after the real elements
    (stack_prefill). Numerically the chunked SSD scan, not the recurrent step."""
    B, W = ids.shape
    segment_ids = (jnp.arange(W)[None] < length).astype(jnp.int32) * jnp.ones((B, 1), jnp.int32)
    stream = dc.Stream(positions=jnp.broadcast_to(jnp.arange(W, dtype=jnp.int32), (B, W)),
                       segment_ids=segment_ids, is_start=dc.segment_starts(segment_ids),
                       real=segment_ids > 0)
    caches = list(cache)
    self._prefill_stage(0, self.embed(ids), stream, jnp.full((B,), length, jnp.int32), caches)
    return caches

  def decode_step(self, cache: list, ids: jax.Array) -> tuple[jax.Array, list]:
    """ids [B] -> logits [B, V] for the next byte; advances every stage's cache."""
    caches = list(cache)
    x = self.embed(ids)  # [B, D_0]
    y = self._step_stage(0, x, caches, jnp.ones(ids.shape, bool))
    return self._logits(y), caches


def build(cfg, rngs: nnx.Rngs) -> HNet:
  return HNet(cfg, rngs=rngs)
