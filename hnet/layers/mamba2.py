"""Mamba-2 mixer and its pre-norm residual block (the H-Net encoder/decoder layer).

Shapes: B batch, L length, D model width, E = expand*D inner width, H = E/headdim
heads of size P = headdim, G groups of state size N, W conv width,
conv_dim = E + 2*G*N (the channels of [x, B, C] that go through the causal conv).
"""
from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from hnet.layers import ssd
from hnet.layers.linear import DEFAULT_STD, Dense
from hnet.layers.norm import RMSNorm
from hnet.layers.remat import rematerialisable
from hnet.sharding import shard


def _inverse_softplus(y: jax.Array) -> jax.Array:
  return y + jnp.log(-jnp.expm1(-y))


def segment_resets(segment_ids: jax.Array) -> jax.Array:
  """[B, L] -> [B, L] bool: True where a new document starts (never at position 0)."""
  changed = segment_ids[:, 1:] != segment_ids[:, :-1]
  return jnp.pad(changed, ((0, 0), (1, 0)))


def causal_conv(inputs: jax.Array, weight: jax.Array, bias: jax.Array,
                segment_ids: jax.Array | None = None,
                history: jax.Array | None = None) -> jax.Array:
  """Depthwise causal conv: out_t = bias + sum_s weight[W-1-s] * in_{t-s}.

  inputs [B, L, C], weight [W, C], bias [C]; `history` [B, W-1, C] holds the inputs
  before position 0 (zeros by default). With `segment_ids` [B, L], in_{t-s} only
  counts when it is in the same document as t (history counts as the document of
  position 0).
  """
  Bsz, L, _ = inputs.shape
  W = weight.shape[0]
  if history is None:
    history = jnp.zeros((Bsz, W - 1, inputs.shape[-1]), inputs.dtype)
  padded = jnp.concatenate([history.astype(inputs.dtype), inputs], axis=1)  # [B, W-1+L, C]
  if segment_ids is not None:
    seg_padded = jnp.concatenate([jnp.repeat(segment_ids[:, :1], W - 1, axis=1), segment_ids], 1)
  out = bias.astype(inputs.dtype)
  for shift in range(W):
    shifted = padded[:, W - 1 - shift: W - 1 - shift + L]
    if segment_ids is not None and shift > 0:
      same = seg_padded[:, W - 1 - shift: W - 1 - shift + L] == segment_ids
      shifted = jnp.where(same[..., None], shifted, 0)
    out = out + weight[W - 1 - shift].astype(inputs.dtype) * shifted
  return out


class Mamba2(nnx.Module):
  """in_proj -> [z, x, B, C, dt]; causal conv + SiLU on [x, B, C]; SSD; + D*x;
  RMSNorm(y * silu(z)); out_proj. No biases on the projections."""

  def __init__(self, dim: int, *, rngs: nnx.Rngs, d_state: int = 128, headdim: int = 64,
               expand: int = 2, ngroups: int = 1, d_conv: int = 4, chunk_size: int = 64,
               dt_min: float = 1e-3, dt_max: float = 1e-1, dt_init_floor: float = 1e-4,
               A_init_range: tuple[float, float] = (1.0, 16.0), out_std: float = DEFAULT_STD,
               implementation: str = "chunked", dtype=jnp.float32):
    if implementation not in ("chunked", "sequential"):
      raise ValueError(f"implementation must be 'chunked' or 'sequential', got {implementation!r}")
    self.d_inner = expand * dim
    if self.d_inner % headdim:
      raise ValueError(f"expand*dim = {self.d_inner} is not a multiple of headdim {headdim}")
    self.num_heads = self.d_inner // headdim
    if self.num_heads % ngroups:
      raise ValueError(f"{self.num_heads} heads do not split into {ngroups} groups")
    self.headdim, self.d_state, self.ngroups, self.d_conv = headdim, d_state, ngroups, d_conv
    self.chunk_size, self.implementation, self.dtype = chunk_size, implementation, dtype
    self.conv_dim = self.d_inner + 2 * ngroups * d_state
    proj_dim = self.d_inner + self.conv_dim + self.num_heads  # [z, x, B, C, dt]
    self.in_proj = Dense(dim, proj_dim, rngs=rngs, axes=("embed", "mlp"), dtype=dtype)
    # Depthwise conv, PyTorch Conv1d default init: U(-1/sqrt(fan_in), +) with fan_in = W.
    bound = 1.0 / math.sqrt(d_conv)
    self.conv_weight = nnx.Param(jax.random.uniform(
        rngs.params(), (d_conv, self.conv_dim), jnp.float32, -bound, bound), axes=("conv", "mlp"))
    self.conv_bias = nnx.Param(jax.random.uniform(
        rngs.params(), (self.conv_dim,), jnp.float32, -bound, bound), axes=("mlp",))
    # dt = softplus(dt_raw + dt_bias) starts log-uniform in [dt_min, dt_max].
    log_dt = jax.random.uniform(rngs.params(), (self.num_heads,), jnp.float32,
                                math.log(dt_min), math.log(dt_max))
    dt = jnp.maximum(jnp.exp(log_dt), dt_init_floor)
    self.dt_bias = nnx.Param(_inverse_softplus(dt), axes=("heads",))
    A = jax.random.uniform(rngs.params(), (self.num_heads,), jnp.float32, *A_init_range)
    self.A_log = nnx.Param(jnp.log(A), axes=("heads",))
    self.D = nnx.Param(jnp.ones((self.num_heads,), jnp.float32), axes=("heads",))
    self.norm = RMSNorm(self.d_inner // ngroups, eps=1e-5)
    self.out_proj = Dense(self.d_inner, dim, rngs=rngs, axes=("mlp", "embed"), std=out_std,
                          dtype=dtype)

  # -- pieces shared by the full forward and the recurrent step ---------------------

  def _split_projection(self, proj: jax.Array):
    """[..., proj_dim] -> z [..., E], xBC [..., conv_dim], dt_raw [..., H].

    One split rather than three slices: the gradient of a split is one concatenation,
    where three slices' gradients are three zero-padded copies of the projection summed."""
    z, xbc, dt_raw = jnp.split(proj, [self.d_inner, self.d_inner + self.conv_dim], axis=-1)
    return z, xbc, dt_raw

  def _ssm_inputs(self, xbc: jax.Array, dt_raw: jax.Array):
    """Post-conv xBC [..., conv_dim], dt_raw [..., H] -> x [..., H, P], dt [..., H],
    A [H], B/C [..., G, N] (all float32)."""
    GN = self.ngroups * self.d_state
    xbc = xbc.astype(jnp.float32)
    x, B, C = jnp.split(xbc, [self.d_inner, self.d_inner + GN], axis=-1)  # one split: see above
    x = x.reshape(*xbc.shape[:-1], self.num_heads, self.headdim)
    B = B.reshape(*xbc.shape[:-1], self.ngroups, self.d_state)
    C = C.reshape(*xbc.shape[:-1], self.ngroups, self.d_state)
    dt = jax.nn.softplus(dt_raw.astype(jnp.float32) + self.dt_bias[...])
    A = -jnp.exp(self.A_log[...])
    return x, dt, A, B, C

  def _output(self, y: jax.Array, x: jax.Array, z: jax.Array) -> jax.Array:
    """y, x [..., H, P] (float32), z [..., E] -> out_proj(RMSNorm((y + D x) * silu(z)))."""
    y = y + self.D[...][:, None] * x
    y = y.reshape(*y.shape[:-2], self.d_inner) * jax.nn.silu(z.astype(jnp.float32))
    grouped = y.reshape(*y.shape[:-1], self.ngroups, self.d_inner // self.ngroups)
    y = self.norm(grouped).reshape(y.shape)
    return self.out_proj(y.astype(self.dtype))

  # -- full forward -----------------------------------------------------------------

  def __call__(self, x: jax.Array, segment_ids: jax.Array | None = None,
               initial_state: dict[str, jax.Array] | None = None,
               return_state: bool = False):
    """x [B, L, D], segment_ids [B, L] (None: one document) -> [B, L, D].

    `initial_state` {"conv", "ssm"} (a cache) continues a stream; with
    return_state=True also returns the cache after position L-1.
    """
    Bsz, L, _ = x.shape
    z, xbc, dt_raw = self._split_projection(self.in_proj(x))
    history = None if initial_state is None else initial_state["conv"]
    conv_in = xbc.astype(jnp.float32)
    xbc = jax.nn.silu(causal_conv(conv_in, self.conv_weight[...], self.conv_bias[...],
                                  segment_ids, history))
    xbc = shard(xbc, ("batch", "length", "act_mlp"))
    xs, dt, A, B, C = self._ssm_inputs(xbc, dt_raw)
    reset = None if segment_ids is None else segment_resets(segment_ids)
    ssm0 = None if initial_state is None else initial_state["ssm"]
    if self.implementation == "chunked":
      y, ssm_state = ssd.ssd_chunked(xs, dt, A, B, C, self.chunk_size, initial_state=ssm0,
                                     reset=reset)
    else:
      y, ssm_state = ssd.ssd_sequential(xs, dt, A, B, C, initial_state=ssm0, reset=reset,
                                        checkpoint_block=self.chunk_size)
    out = self._output(y, xs, z)
    if not return_state:
      return out
    if history is None:
      history = jnp.zeros((Bsz, self.d_conv - 1, self.conv_dim), jnp.float32)
    conv_state = jnp.concatenate([history.astype(jnp.float32), conv_in], axis=1)
    return out, {"conv": conv_state[:, -(self.d_conv - 1):], "ssm": ssm_state}

  # -- generation -------------------------------------------------------------------

  def init_cache(self, batch_size: int, dtype=jnp.float32) -> dict[str, jax.Array]:
    return {"conv": jnp.zeros((batch_size, self.d_conv - 1, self.conv_dim), dtype),
            "ssm": jnp.zeros((batch_size, self.num_heads, self.headdim, self.d_state), dtype)}

  def step(self, x_t: jax.Array, cache: dict[str, jax.Array],
           advance: jax.Array | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
    """One position: x_t [B, D] -> ([B, D], cache). Rows with advance=False keep
    their cache unchanged (their output is computed but meaningless)."""
    z, xbc, dt_raw = self._split_projection(self.in_proj(x_t))
    window = jnp.concatenate([cache["conv"].astype(jnp.float32),
                              xbc.astype(jnp.float32)[:, None]], axis=1)  # [B, W, conv_dim]
    conv_out = jnp.einsum("bwc,wc->bc", window, self.conv_weight[...]) + self.conv_bias[...]
    xs, dt, A, B, C = self._ssm_inputs(jax.nn.silu(conv_out), dt_raw)
    y, ssm_state = ssd.ssd_step(cache["ssm"], xs, dt, A, B, C)
    new_cache = {"conv": window[:, 1:], "ssm": ssm_state}
    if advance is not None:
      new_cache = jax.tree.map(
          lambda new, old: jnp.where(advance.reshape(-1, *([1] * (new.ndim - 1))), new, old),
          new_cache, {k: v.astype(jnp.float32) for k, v in cache.items()})
    new_cache = {k: v.astype(cache[k].dtype) for k, v in new_cache.items()}
    return self._output(y, xs, z), new_cache


class Mamba2Block(nnx.Module):
  """Pre-norm residual Mamba-2 layer: x + Mamba2(RMSNorm(x)). Same call/cache
  signature as TransformerBlock so that layouts can mix them."""

  def __init__(self, dim: int, *, rngs: nnx.Rngs, d_state: int = 128, headdim: int = 64,
               expand: int = 2, ngroups: int = 1, d_conv: int = 4, chunk_size: int = 64,
               num_layers_for_init: int = 1, implementation: str = "chunked",
               dtype=jnp.float32):
    # One residual branch per layer (no MLP): out_proj std 0.02 / sqrt(n_layers).
    out_std = DEFAULT_STD / num_layers_for_init ** 0.5
    self.norm = RMSNorm(dim)
    self.mixer = Mamba2(dim, rngs=rngs, d_state=d_state, headdim=headdim, expand=expand,
                        ngroups=ngroups, d_conv=d_conv, chunk_size=chunk_size, out_std=out_std,
                        implementation=implementation, dtype=dtype)

  @rematerialisable
  def __call__(self, x: jax.Array, positions: jax.Array | None = None,
               segment_ids: jax.Array | None = None) -> jax.Array:
    """x [B, L, D]; positions unused (accepted for the shared signature); segment_ids
    [B, L]: the state and the conv never cross a document boundary."""
    del positions
    x = x + self.mixer(self.norm(x), segment_ids).astype(x.dtype)
    return shard(x, ("batch", "length", "act_embed"))

  def init_cache(self, batch_size: int, max_len: int, dtype=jnp.float32) -> dict[str, Any]:
    """{"conv": [B, W-1, conv_dim], "ssm": [B, H, P, N]}; max_len is not needed."""
    del max_len
    return self.mixer.init_cache(batch_size, dtype)

  def decode(self, x: jax.Array, cache: dict[str, Any], index: jax.Array,
             valid: jax.Array | None = None) -> tuple[jax.Array, dict[str, Any]]:
    """T new positions index .. index+T-1, recurrently: x [B, T, D] -> ([B, T, D], cache).

    `valid` [B, S] (the attention cache's convention: which slots hold real tokens):
    a row whose slot index+t is not valid does not advance its state at step t.
    """
    T = x.shape[1]
    if valid is None:
      advance = None
    else:
      advance = jax.lax.dynamic_slice_in_dim(valid, index, T, axis=1)  # [B, T]

    def one_step(cache, inputs):
      x_t, advance_t = inputs
      h, cache = self.mixer.step(self.norm(x_t), cache, advance_t)
      return cache, x_t + h.astype(x_t.dtype)

    adv = jnp.ones(x.shape[:2], bool) if advance is None else advance.astype(bool)
    if T == 1:
      cache, y = one_step(cache, (x[:, 0], None if advance is None else adv[:, 0]))
      return y[:, None], cache
    cache, ys = jax.lax.scan(one_step, cache, (jnp.moveaxis(x, 1, 0), jnp.moveaxis(adv, 1, 0)))
    return jnp.moveaxis(ys, 0, 1), cache
