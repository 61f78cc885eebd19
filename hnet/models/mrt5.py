"""MrT5: a ByT5-style byte encoder-decoder with a learned delete gate (and ByT5 itself).

Paper: "MrT5: Dynamic Token Merging for Efficient Byte-level Language Models"
(see /work/shared/MODELS.md section 5). Written for this project from the paper's
description; no code copied.

Architecture (T5 v1.1 / ByT5):
  shared byte embedding [V, D] (encoder and decoder inputs), untied output head;
  encoder: N_enc x (pre-RMSNorm bidirectional self-attention + pre-RMSNorm gated-GELU
  FFN), final RMSNorm; decoder: N_dec x (causal self-attention, cross-attention over the
  encoder output, gated-GELU FFN), final RMSNorm -> head. No biases, no RoPE: each stack
  has one T5 relative position bias table (hnet/layers/relative_position.py), shared by
  all its self-attention layers (bidirectional in the encoder, causal in the decoder);
  cross-attention has no position bias. Unlike T5 we keep the usual 1/sqrt(Dh) logit
  scale of the shared `attend` (T5 folds it into the init); the relative bias is added
  after scaling.

Delete gate (MrT5 only; `gate_layer` > 0): after encoder layer `gate_layer` (1-based, the
paper uses 3) G_i = k * sigmoid(w . RMSNorm(h_i) + b), k = -30, so G_i in (-30, 0);
G near 0 = keep. b starts at `gate_bias_init` = -10 (sigmoid(-10) ~ 5e-5, G ~ -1e-3), so
at first nothing is deleted and the model is nearly ByT5.
  Soft deletion (training, default): G_i is added to the attention logit of key i in
  every later encoder self-attention and in every decoder cross-attention.
  Hard deletion (inference, `capacity=C`): positions with G_i < k/2 = -15 (and padding)
  are dropped; the kept ones are compacted to the front of a static buffer of C slots
  (order-preserving gather, original positions kept for the relative bias) and the later
  layers and the cross-attention really run on C positions. Kept positions still add
  their G_i as a logit bias, so hard deletion differs from soft deletion only by the
  keys whose weight was already scaled by exp(G_i) < exp(-15). Kept positions beyond C
  are counted in metrics["deletion_overflow"], never silently dropped. `encode_hard`
  picks C on the host from static fractions of L (one compiled function per bucket).
  Regulariser: aux_losses["gate_reg"] = alpha * mean_i G_i over real encoder positions
  (lower when more is deleted). alpha comes from batch["mrt5_alpha"] (scalar or [B],
  set by the train loop from the PI controller below) or else the static `gate_alpha`.

Batch keys (packed rows; documents in the encoder and decoder streams share segment
ids, 0 = padding; positions restart at 0 per document):
  encoder_inputs, encoder_segment_ids, encoder_positions        [B, Le]
  decoder_inputs (or inputs), targets, segment_ids, positions,
  loss_mask                                                      [B, Ld]
Output logits [B, Ld, V] are aligned with batch["targets"].

Generation (encoder-decoder): encoded = model.encode(batch) (or encode_hard(model,
batch)); cache = model.init_cache(B, max_len, encoded) -- the cache holds the encoder
output, its cross-attention keys/values per decoder layer and the validity/gate bias of
the memory; then logits [B, V], cache = model.decode_step(cache, ids [B]). In cached
decoding each row is one document and attends to every real (segment > 0) encoder slot.
The encoder is the one pass over the source; the decoder has no `prefill`: its prompt
is BOS (and the first sentinel for span corruption), which hnet/generate.py steps.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from hnet.layers.attention import Attention, attend, make_mask
from hnet.layers.linear import DEFAULT_STD, Dense, Embed, normal_param
from hnet.layers.mlp import SwiGLU
from hnet.layers.norm import RMSNorm
from hnet.layers.relative_position import RelativePositionBias
from hnet.layers.remat import rematerialisable
from hnet.models.output import ModelOutput
from hnet.sharding import shard

GATE_K = -30.0
DEFAULT_HARD_DELETE_FRACTIONS = (0.25, 0.5, 0.75, 1.0)


def gelu_tanh(x: jax.Array) -> jax.Array:
  """T5 v1.1 'gelu_new' (tanh approximation) for the gated-GELU FFN."""
  return jax.nn.gelu(x, approximate=True)


# --------------------------------------------------------------------------- controller

def controller_init() -> dict[str, jax.Array]:
  """PI controller state for alpha (save it with the train state)."""
  zero = jnp.zeros((), jnp.float32)
  return {"p": zero, "i": zero, "alpha": zero}


def controller_update(state: dict[str, jax.Array], measured_ratio, target_ratio: float = 0.5,
                      k_i: float = 1e-5, two_sided: bool = True,
                      k_p: float = 0.05) -> dict[str, jax.Array]:
  """One PI step: e = target - measured; p <- 0.9 p + k_p e; i <- i + k_i e;
  alpha = p + i (two-sided, our default) or max(0, p + i) (the paper's). Pure, jit-able.

  Why two-sided: soft deletion adds G_i to attention logits, and a softmax does not
  change when every key gets the same bias, so the task loss does not resist a gate that
  deletes (nearly) everything uniformly. With alpha clipped at 0 nothing then pulls an
  overshooting gate back (our tiny run drifted to 99.6% deleted); a negative alpha
  rewards keeping positions until the measured ratio is back at the target."""
  error = jnp.asarray(target_ratio, jnp.float32) - jnp.asarray(measured_ratio, jnp.float32)
  p = 0.9 * state["p"] + k_p * error
  i = state["i"] + k_i * error
  alpha = p + i if two_sided else jnp.maximum(0.0, p + i)
  return {"p": p, "i": i, "alpha": alpha}


class Controller:
  """The train loop's hook (hnet/models/__init__.py CONTROLLERS["mrt5"]): the PI state
  lives in state["extra"] (saved in checkpoints); alpha of step t is set by the ratio
  measured at steps < t."""

  def __init__(self, model_config):
    self.target_ratio = float(model_config.get("target_deletion_ratio", 0.5))
    self.k_i = float(model_config.get("controller_ki", 1e-5))
    self.k_p = float(model_config.get("controller_kp", 0.05))
    self.two_sided = bool(model_config.get("controller_two_sided", True))
    self.measure = model_config.get("controller_measure", "hard")
    if self.measure not in ("hard", "soft"):
      raise ValueError(f"controller_measure must be 'hard' or 'soft', got {self.measure!r}")
    self.gate_k = float(model_config.get("gate_k", GATE_K))

  def init(self) -> dict[str, jax.Array]:
    return controller_init()

  def batch_inputs(self, extra: dict[str, jax.Array], batch: dict | None = None) -> dict:
    """{"mrt5_alpha": alpha}: a scalar, or [B] when `batch` is given (so that the
    batch can be split into micro-batches along its first axis)."""
    alpha = extra["alpha"]
    if batch is not None:
      alpha = jnp.broadcast_to(alpha, (batch["encoder_inputs"].shape[0],))
    return {"mrt5_alpha": alpha}

  def update(self, extra: dict[str, jax.Array], metrics: dict) -> dict[str, jax.Array]:
    """metrics: the train step's metrics ("model/deletion_ratio") or the model's own."""
    ratio = metrics.get("model/deletion_ratio", metrics.get("deletion_ratio"))
    if ratio is None:  # no gate (gate_layer = 0): nothing to control
      return extra
    if self.measure == "soft":  # mean G / k in [0, 1]: continuous in the gate logits
      ratio = metrics.get("model/gate_mean", metrics.get("gate_mean")) / self.gate_k
    return controller_update(extra, ratio, self.target_ratio, self.k_i, self.two_sided, self.k_p)


# --------------------------------------------------------------------------- layers

def standardise_over_segments(x: jax.Array, segment_ids: jax.Array, eps: float = 1e-6) -> jax.Array:
  """x [B, L, D] minus its mean over the real bytes of the same document (same row, same
  segment id > 0), divided by that document's RMS deviation per feature; padding -> 0."""
  batch, length, dim = x.shape
  ids = (jnp.arange(batch)[:, None] * (length + 1) + segment_ids).reshape(-1)  # one id per document
  real = (segment_ids > 0).reshape(-1).astype(x.dtype)
  num = batch * (length + 1)
  flat = x.reshape(-1, dim) * real[:, None]
  count = jnp.maximum(jax.ops.segment_sum(real, ids, num_segments=num), 1.0)
  mean = jax.ops.segment_sum(flat, ids, num_segments=num) / count[:, None]
  centred = (flat - mean[ids]) * real[:, None]
  variance = jax.ops.segment_sum(jnp.sum(centred ** 2, axis=-1), ids, num_segments=num) / (count * dim)
  return (centred * jax.lax.rsqrt(variance[ids] + eps)[:, None]).reshape(batch, length, dim)


class DeleteGate(nnx.Module):
  """G = k * sigmoid(w . RMSNorm(h) + b): [B, L, D] -> [B, L] float32 in (k, 0).

  `logit_spread` sets the init std of w to logit_spread / sqrt(dim), so that the gate
  logits w . RMSNorm(h) of different bytes start about that far apart: a ratio set by a
  threshold on them then moves smoothly with b instead of jumping from 0 to 1."""

  def __init__(self, dim: int, *, rngs: nnx.Rngs, k: float = GATE_K, bias_init: float = -10.0,
               logit_spread: float = DEFAULT_STD * 16.0, standardise: bool = False):
    self.standardise = standardise
    self.norm = RMSNorm(dim)
    self.weight = normal_param(rngs, (dim,), ("embed",), std=logit_spread / math.sqrt(dim))
    self.bias = nnx.Param(jnp.full((), bias_init, jnp.float32), axes=())
    self.k = k

  def logits(self, h: jax.Array, segment_ids: jax.Array | None = None) -> jax.Array:
    """z = w . RMSNorm(h) + b: [B, L, D] -> [B, L] float32 (deleted where z > 0).

    standardise=True: RMSNorm(h) is first standardised over the bytes of its own
    document (segment_ids [B, L], 0 = padding): a trained encoder's normalised states
    share one dominant direction (measured on the tiny ByT5: |mean| 10.9 of 11.3), so
    w . RMSNorm(h) barely differs between bytes; standardised, the logits of a document's
    bytes spread about logit_spread around b, and b sets the share deleted smoothly."""
    features = self.norm(h).astype(jnp.float32)
    if self.standardise:
      if segment_ids is None:
        raise ValueError("a standardising delete gate needs the segment_ids of its bytes")
      features = standardise_over_segments(features, segment_ids)
    return jnp.einsum("bld,d->bl", features, self.weight[...]) + self.bias[...]

  def __call__(self, h: jax.Array, segment_ids: jax.Array | None = None) -> jax.Array:
    return self.k * jax.nn.sigmoid(self.logits(h, segment_ids))



class CrossAttention(nnx.Module):
  """Decoder queries over encoder memory (no position bias, optional gate logit bias)."""

  def __init__(self, dim: int, num_heads: int, head_dim: int, *, rngs: nnx.Rngs,
               out_std: float = DEFAULT_STD, use_softmax1: bool = False, dtype=jnp.float32):
    self.num_heads, self.head_dim = num_heads, head_dim
    self.use_softmax1 = use_softmax1
    inner = num_heads * head_dim
    self.query = Dense(dim, inner, rngs=rngs, axes=("embed", "heads"), dtype=dtype)
    self.key = Dense(dim, inner, rngs=rngs, axes=("embed", "heads"), dtype=dtype)
    self.value = Dense(dim, inner, rngs=rngs, axes=("embed", "heads"), dtype=dtype)
    self.out = Dense(inner, dim, rngs=rngs, axes=("heads", "embed"), std=out_std, dtype=dtype)

  def project_memory(self, memory: jax.Array) -> dict[str, jax.Array]:
    """memory [B, S, D] -> {"k", "v"} [B, S, H, Dh] (computed once per generation)."""
    B, S, _ = memory.shape
    return {"k": self.key(memory).reshape(B, S, self.num_heads, self.head_dim),
            "v": self.value(memory).reshape(B, S, self.num_heads, self.head_dim)}

  def __call__(self, x: jax.Array, q_segment: jax.Array, memory_kv: dict[str, jax.Array],
               k_segment: jax.Array, logit_bias: jax.Array | None) -> jax.Array:
    """x [B, L, D], q_segment [B, L], k_segment [B, S], logit_bias [B, 1, 1, S] -> [B, L, D]."""
    B, L, _ = x.shape
    q = self.query(x).reshape(B, L, self.num_heads, self.head_dim)
    q = shard(q, ("batch", "length", "act_heads", None))
    zeros_q, zeros_k = jnp.zeros_like(q_segment), jnp.zeros_like(k_segment)
    mask = make_mask(q_segment, k_segment, zeros_q, zeros_k, causal=False)
    out = attend(q, memory_kv["k"].astype(q.dtype), memory_kv["v"].astype(q.dtype), mask,
                 logit_bias, use_softmax1=self.use_softmax1)
    return self.out(out.reshape(B, L, -1))


class EncoderBlock(nnx.Module):
  def __init__(self, dim: int, num_heads: int, head_dim: int, mlp_dim: int, *, rngs: nnx.Rngs,
               out_std: float, use_softmax1: bool = False, dtype=jnp.float32):
    self.attn_norm = RMSNorm(dim)
    self.attn = Attention(dim, num_heads, rngs=rngs, head_dim=head_dim, causal=False, rope=False,
                          out_std=out_std, use_softmax1=use_softmax1, dtype=dtype)
    self.mlp_norm = RMSNorm(dim)
    self.mlp = SwiGLU(dim, mlp_dim, rngs=rngs, out_std=out_std, dtype=dtype, activation=gelu_tanh)

  @rematerialisable
  def __call__(self, x, positions, segment_ids, logit_bias):  # [B, L, D] -> [B, L, D]
    x = x + self.attn(self.attn_norm(x), positions, segment_ids, logit_bias)
    x = x + self.mlp(self.mlp_norm(x))
    return shard(x, ("batch", "length", "act_embed"))


class DecoderBlock(nnx.Module):
  def __init__(self, dim: int, num_heads: int, head_dim: int, mlp_dim: int, *, rngs: nnx.Rngs,
               out_std: float, cross_softmax1: bool = False, dtype=jnp.float32):
    self.self_attn_norm = RMSNorm(dim)
    self.self_attn = Attention(dim, num_heads, rngs=rngs, head_dim=head_dim, causal=True,
                               rope=False, out_std=out_std, dtype=dtype)
    self.cross_attn_norm = RMSNorm(dim)
    self.cross_attn = CrossAttention(dim, num_heads, head_dim, rngs=rngs, out_std=out_std,
                                     use_softmax1=cross_softmax1, dtype=dtype)
    self.mlp_norm = RMSNorm(dim)
    self.mlp = SwiGLU(dim, mlp_dim, rngs=rngs, out_std=out_std, dtype=dtype, activation=gelu_tanh)

  def _cross_and_mlp(self, x, q_segment, memory_kv, memory_segment, memory_bias):
    x = x + self.cross_attn(self.cross_attn_norm(x), q_segment, memory_kv, memory_segment,
                            memory_bias)
    x = x + self.mlp(self.mlp_norm(x))
    return shard(x, ("batch", "length", "act_embed"))

  @rematerialisable
  def __call__(self, x, positions, segment_ids, self_bias, memory_kv, memory_segment,
               memory_bias):
    x = x + self.self_attn(self.self_attn_norm(x), positions, segment_ids, self_bias)
    return self._cross_and_mlp(x, segment_ids, memory_kv, memory_segment, memory_bias)

  def decode(self, x, cache, index, self_bias, memory_kv, memory_segment, memory_bias):
    """x [B, 1, D] at decoder position `index` -> ([B, 1, D], new self-attention cache)."""
    h, cache = self.self_attn.decode(self.self_attn_norm(x), cache, index, logit_bias=self_bias)
    x = x + h
    q_segment = jnp.ones(x.shape[:2], jnp.int32)
    return self._cross_and_mlp(x, q_segment, memory_kv, memory_segment, memory_bias), cache


# --------------------------------------------------------------------------- model

def _compact(kept: jax.Array, capacity: int, hidden, segment_ids, positions, gate):
  """Moves kept positions to the front (order kept) of `capacity` slots.

  kept [B, L] bool; hidden [B, L, D]; segment_ids/positions/gate [B, L]
  -> the same arrays with L -> capacity (empty slots: segment 0, gate 0), overflow count.
  """
  order = jnp.argsort(jnp.logical_not(kept).astype(jnp.int32), axis=1, stable=True)
  order = order[:, :capacity]  # [B, C]
  count = jnp.sum(kept, axis=1)  # [B]
  slot_used = jnp.arange(capacity)[None, :] < count[:, None]  # [B, C]
  take = lambda a: jnp.take_along_axis(a, order, axis=1)
  hidden = jnp.take_along_axis(hidden, order[..., None], axis=1)
  segment_ids = jnp.where(slot_used, take(segment_ids), 0)
  positions = jnp.where(slot_used, take(positions), 0)
  gate = jnp.where(slot_used, take(gate), 0.0)
  overflow = jnp.sum(jnp.maximum(count - capacity, 0))
  return hidden, segment_ids, positions, gate, overflow


class MrT5(nnx.Module):
  def __init__(self, *, vocab_size: int, dim: int, num_encoder_layers: int,
               num_decoder_layers: int, num_heads: int, head_dim: int, mlp_dim: int,
               rngs: nnx.Rngs, gate_layer: int = 0, gate_k: float = GATE_K,
               gate_bias_init: float = -10.0, gate_logit_spread: float = DEFAULT_STD * 16.0,
               gate_alpha: float = 0.0,
               rel_buckets: int = 32, rel_max_distance: int = 128,
               hard_delete_fractions: Sequence[float] = DEFAULT_HARD_DELETE_FRACTIONS,
               softmax1_from: int = 0, gate_into_encoder: bool = True,
               gate_binarize_weight: float = 0.0,
               gate_standardise: bool = False, dtype=jnp.float32):
    if not 0 <= gate_layer <= num_encoder_layers:
      raise ValueError(f"gate_layer={gate_layer} must lie in [0, {num_encoder_layers}] "
                       "(0 = no delete gate, i.e. ByT5)")
    if not 0 <= softmax1_from <= num_encoder_layers:
      raise ValueError(f"softmax1_from={softmax1_from} must lie in [0, {num_encoder_layers}] "
                       "(0 = plain softmax everywhere)")
    self.gate_layer, self.gate_k, self.gate_alpha = gate_layer, gate_k, gate_alpha
    self.gate_into_encoder = gate_into_encoder
    self.gate_binarize_weight = gate_binarize_weight
    self.hard_delete_fractions = tuple(hard_delete_fractions)
    enc_std = DEFAULT_STD / (2 * num_encoder_layers) ** 0.5
    dec_std = DEFAULT_STD / (3 * num_decoder_layers) ** 0.5
    block_args = dict(rngs=rngs, dtype=dtype)
    self.embed = Embed(vocab_size, dim, rngs=rngs, dtype=dtype)
    self.encoder_position_bias = RelativePositionBias(
        num_heads, bidirectional=True, rngs=rngs, num_buckets=rel_buckets,
        max_distance=rel_max_distance)
    self.encoder_layers = nnx.List([
        EncoderBlock(dim, num_heads, head_dim, mlp_dim, out_std=enc_std,
                     use_softmax1=bool(softmax1_from) and index >= softmax1_from, **block_args)
        for index in range(num_encoder_layers)])
    self.gate = (DeleteGate(dim, rngs=rngs, k=gate_k, bias_init=gate_bias_init,
                            logit_spread=gate_logit_spread, standardise=gate_standardise)
                 if gate_layer else None)
    self.encoder_norm = RMSNorm(dim)
    self.decoder_position_bias = RelativePositionBias(
        num_heads, bidirectional=False, rngs=rngs, num_buckets=rel_buckets,
        max_distance=rel_max_distance)
    self.decoder_layers = nnx.List([
        DecoderBlock(dim, num_heads, head_dim, mlp_dim, out_std=dec_std,
                     cross_softmax1=bool(softmax1_from), **block_args)
        for _ in range(num_decoder_layers)])
    self.decoder_norm = RMSNorm(dim)
    self.head = Dense(dim, vocab_size, rngs=rngs, axes=("embed", "vocab"), dtype=dtype)

  # ---- encoder
  def encode_front(self, batch: dict[str, jax.Array]) -> dict[str, Any]:
    """Embedding and the encoder layers before the gate; the gate values.

    Returns hidden [B, L, D], segment_ids/positions [B, L], gate [B, L] (None for ByT5).
    """
    segment_ids, positions = batch["encoder_segment_ids"], batch["encoder_positions"]
    x = shard(self.embed(batch["encoder_inputs"]), ("batch", "length", "act_embed"))
    bias = self.encoder_position_bias(positions, positions)  # [B, H, L, L]
    num_front = self.gate_layer if self.gate is not None else len(self.encoder_layers)
    for layer in self.encoder_layers[:num_front]:
      x = layer(x, positions, segment_ids, bias)
    gate = None
    if self.gate is not None:
      # gate_into_encoder=False: the gate reads the encoder but its gradients (task and
      # regulariser) train only the gate's own parameters, so alpha moves the gate at the
      # gate's learning rate instead of reshaping the whole front encoder.
      logits = self.gate.logits(x if self.gate_into_encoder else jax.lax.stop_gradient(x),
                                segment_ids)
      gate = self.gate_k * jax.nn.sigmoid(logits)
    return {"hidden": x, "segment_ids": segment_ids, "positions": positions, "gate": gate}

  def encode_back(self, front: dict[str, Any], capacity: int | None = None) -> dict[str, Any]:
    """The encoder layers after the gate (soft deletion, or hard into `capacity` slots).

    Returns {"hidden" [B, C, D], "segment_ids" [B, C], "gate" [B, C] | None, "stats"}
    with C = L for soft deletion. stats: gate_mean (differentiable), deletion_ratio,
    deletion_overflow, kept_max (the largest kept count in a row; sizes buckets).
    """
    x, segment_ids, positions, gate = (front["hidden"], front["segment_ids"],
                                       front["positions"], front["gate"])
    stats: dict[str, jax.Array] = {}
    if gate is not None:
      real = segment_ids > 0
      num_real = jnp.maximum(jnp.sum(real), 1)
      deleted = (gate < self.gate_k / 2) & real
      kept = real & jnp.logical_not(deleted)
      stats["gate_mean"] = jnp.sum(jnp.where(real, gate, 0.0)) / num_real
      fraction = gate / self.gate_k  # sigmoid(z) in (0, 1)
      # 4 s (1 - s): 1 at the hard-deletion threshold, 0 for a decided gate
      stats["gate_undecided"] = jnp.sum(jnp.where(real, 4 * fraction * (1 - fraction), 0.0)) / num_real
      stats["deletion_ratio"] = jnp.sum(deleted) / num_real
      stats["kept_max"] = jnp.max(jnp.sum(kept, axis=1))
      if capacity is not None:
        x, segment_ids, positions, gate, overflow = _compact(kept, capacity, x, segment_ids,
                                                             positions, gate)
        stats["deletion_overflow"] = overflow
      bias = (self.encoder_position_bias(positions, positions)
              + gate[:, None, None, :])  # soft deletion: [B, H, C, C]
      for layer in self.encoder_layers[self.gate_layer:]:
        x = layer(x, positions, segment_ids, bias)
    x = self.encoder_norm(x)
    return {"hidden": x, "segment_ids": segment_ids, "gate": gate, "stats": stats}

  def encode(self, batch: dict[str, jax.Array], capacity: int | None = None) -> dict[str, Any]:
    """Full encoder: soft deletion (capacity None) or hard deletion into `capacity` slots."""
    return self.encode_back(self.encode_front(batch), capacity)

  # ---- decoder
  def _logits(self, x: jax.Array) -> jax.Array:
    logits = self.head(self.decoder_norm(x))
    return shard(logits.astype(jnp.float32), ("batch", "length", "act_vocab"))

  @staticmethod
  def _memory_bias(encoded):
    gate = encoded["gate"]
    return None if gate is None else gate[:, None, None, :]  # [B, 1, 1, S]

  def decode(self, batch: dict[str, jax.Array], encoded: dict[str, Any]) -> jax.Array:
    """Teacher-forced decoder over batch["decoder_inputs"] -> logits [B, Ld, V]."""
    ids = batch["decoder_inputs"] if "decoder_inputs" in batch else batch["inputs"]
    segment_ids, positions = batch["segment_ids"], batch["positions"]
    x = shard(self.embed(ids), ("batch", "length", "act_embed"))
    self_bias = self.decoder_position_bias(positions, positions)  # [B, H, Ld, Ld]
    memory_bias = self._memory_bias(encoded)
    for layer in self.decoder_layers:
      memory_kv = layer.cross_attn.project_memory(encoded["hidden"])
      x = layer(x, positions, segment_ids, self_bias, memory_kv, encoded["segment_ids"],
                memory_bias)
    return self._logits(x)

  def __call__(self, batch: dict[str, jax.Array], capacity: int | None = None) -> ModelOutput:
    encoded = self.encode(batch, capacity)
    logits = self.decode(batch, encoded)
    stats = encoded["stats"]
    if self.gate is None:
      return ModelOutput(logits=logits)
    if "mrt5_alpha" in batch:
      alpha = jax.lax.stop_gradient(jnp.mean(jnp.asarray(batch["mrt5_alpha"], jnp.float32)))
    else:
      alpha = jnp.asarray(self.gate_alpha, jnp.float32)
    metrics = {"deletion_ratio": stats["deletion_ratio"], "gate_mean": stats["gate_mean"],
               "mrt5_alpha": alpha}
    if "deletion_overflow" in stats:
      metrics["deletion_overflow"] = stats["deletion_overflow"]
    aux = {"gate_reg": alpha * stats["gate_mean"]}
    if self.gate_binarize_weight:
      aux["gate_binarize"] = self.gate_binarize_weight * stats["gate_undecided"]
    metrics["gate_undecided"] = stats["gate_undecided"]
    return ModelOutput(logits=logits, aux_losses=aux, metrics=metrics)

  # ---- generation
  def init_cache(self, batch_size: int, max_len: int,
                 encoded: dict[str, Any] | None = None) -> dict[str, Any]:
    """Decoder cache over an encoded input (from `encode` or `encode_hard`)."""
    if encoded is None:
      raise ValueError("MrT5/ByT5 is an encoder-decoder: run encoded = model.encode(batch) "
                       "(or encode_hard(model, batch)) and pass init_cache(batch_size, "
                       "max_len, encoded)")
    memory = encoded["hidden"]  # [B, S, D]
    if memory.shape[0] != batch_size:
      raise ValueError(f"encoded batch {memory.shape[0]} != batch_size {batch_size}")
    return {"index": jnp.zeros((), jnp.int32),
            "memory": memory,
            "memory_valid": (encoded["segment_ids"] > 0).astype(jnp.int32),  # [B, S]
            "memory_gate": encoded["gate"],
            "cross": [layer.cross_attn.project_memory(memory) for layer in self.decoder_layers],
            "self": [layer.self_attn.init_cache(batch_size, max_len, memory.dtype)
                     for layer in self.decoder_layers]}

  def decode_step(self, cache: dict[str, Any], ids: jax.Array) -> tuple[jax.Array, dict[str, Any]]:
    """ids [B] at decoder position cache["index"] -> logits [B, V], new cache."""
    index = cache["index"]
    B = ids.shape[0]
    S = cache["self"][0]["k"].shape[2]  # [B, K, S, Dh]
    x = self.embed(ids[:, None])  # [B, 1, D]
    q_positions = jnp.broadcast_to(index, (B, 1))
    k_positions = jnp.broadcast_to(jnp.arange(S), (B, S))
    self_bias = self.decoder_position_bias(q_positions, k_positions)  # [B, H, 1, S]
    gate = cache["memory_gate"]
    memory_bias = None if gate is None else gate[:, None, None, :]
    new_self = []
    for layer, self_cache, memory_kv in zip(self.decoder_layers, cache["self"], cache["cross"]):
      x, self_cache = layer.decode(x, self_cache, index, self_bias, memory_kv,
                                   cache["memory_valid"], memory_bias)
      new_self.append(self_cache)
    return self._logits(x)[:, 0], {**cache, "index": index + 1, "self": new_self}


# --------------------------------------------------------------------------- hard deletion

_TRACE_COUNTS: dict[str, int] = {"front": 0, "back": 0, "decode": 0}  # tests check reuse


@nnx.jit
def _jit_encode_front(model: MrT5, batch):
  _TRACE_COUNTS["front"] += 1
  return model.encode_front(batch)


@nnx.jit(static_argnames="capacity")
def _jit_encode_back(model: MrT5, front, capacity: int):
  _TRACE_COUNTS["back"] += 1
  return model.encode_back(front, capacity)


@nnx.jit
def _jit_decode(model: MrT5, batch, encoded):
  _TRACE_COUNTS["decode"] += 1
  return model.decode(batch, encoded)


def capacity_buckets(length: int, fractions: Sequence[float]) -> list[int]:
  """Static slot counts ceil(f * length), ascending; `length` itself is always included."""
  return sorted({max(1, math.ceil(f * length)) for f in fractions} | {length})


def encode_hard(model: MrT5, batch: dict[str, jax.Array],
                fractions: Sequence[float] | None = None) -> dict[str, Any]:
  """Hard-deletion encoding (inference, eager caller): runs the layers before the gate,
  reads the largest kept count to the host, picks the smallest static bucket that holds
  every row, and runs the later layers on that many positions. One compiled function per
  bucket and batch shape (jit caches them); never an overflow."""
  if model.gate is None:
    return _jit_encode_back(model, _jit_encode_front(model, batch), None)
  front = _jit_encode_front(model, batch)
  real = front["segment_ids"] > 0
  kept = real & (front["gate"] >= model.gate_k / 2)
  kept_max = int(jax.device_get(jnp.max(jnp.sum(kept, axis=1))))
  length = front["segment_ids"].shape[1]
  buckets = capacity_buckets(length, fractions or model.hard_delete_fractions)
  capacity = next(c for c in buckets if c >= kept_max)
  return _jit_encode_back(model, front, capacity)


def hard_deletion_forward(model: MrT5, batch: dict[str, jax.Array],
                          fractions: Sequence[float] | None = None) -> tuple[jax.Array, dict]:
  """Inference forward with hard deletion -> (logits [B, Ld, V], encoded)."""
  encoded = encode_hard(model, batch, fractions)
  return _jit_decode(model, batch, encoded), encoded


# --------------------------------------------------------------------------- build

def build(cfg, rngs: nnx.Rngs) -> MrT5:
  """config.model.name "mrt5" (delete gate after `gate_layer`) or "byt5" (no gate)."""
  gate_layer = 0 if cfg.get("name", "mrt5") == "byt5" else cfg.get("gate_layer", 3)
  return MrT5(vocab_size=cfg.vocab_size, dim=cfg.dim,
              num_encoder_layers=cfg.num_encoder_layers,
              num_decoder_layers=cfg.num_decoder_layers, num_heads=cfg.num_heads,
              head_dim=cfg.get("head_dim") or cfg.dim // cfg.num_heads, mlp_dim=cfg.mlp_dim,
              rngs=rngs, gate_layer=gate_layer, gate_k=cfg.get("gate_k", GATE_K),
              gate_bias_init=cfg.get("gate_bias_init", -10.0),
              gate_logit_spread=cfg.get("gate_logit_spread", DEFAULT_STD * 16.0),
              gate_alpha=cfg.get("gate_alpha", 0.0),
              rel_buckets=cfg.get("rel_buckets", 32),
              rel_max_distance=cfg.get("rel_max_distance", 128),
              hard_delete_fractions=tuple(cfg.get("hard_delete_fractions",
                                                  DEFAULT_HARD_DELETE_FRACTIONS)),
              softmax1_from=cfg.get("gate_layer", 3) if cfg.get("softmax1", False) else 0,
              gate_into_encoder=cfg.get("gate_into_encoder", True),
              gate_binarize_weight=cfg.get("gate_binarize_weight", 0.0),
              gate_standardise=cfg.get("gate_standardise", False),
              dtype=jnp.dtype(cfg.get("dtype", "float32")))
