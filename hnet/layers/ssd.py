"""State-space duality (SSD) scan of Mamba-2, as pure jnp functions.

The recurrence, per batch b and head h (state h_t: [P, N]):
  h_t = exp(dt_t * A) * h_{t-1} + dt_t * x_t (outer) B_t
  y_t = h_t @ C_t
Shapes: B batch, L length, H heads, P head dim, G groups (heads share B/C within a
group: head h reads group h // (H // G)), N state size, T chunk size, K chunks.
  x [B, L, H, P], dt [B, L, H] (already softplus'ed, >= 0), A [H] (< 0),
  B/C [B, L, G, N], state [B, H, P, N].
`reset` [B, L] (bool, optional): the carried state is zeroed before position t is
added (packed rows: the first byte of every document but the row's first). All
three forms compute in float32 and return (y [B, L, H, P] in x.dtype, final state
[B, H, P, N] float32).
"""
from __future__ import annotations

import time

import jax
import jax.numpy as jnp

# ----------------------------------------------------------------------------- step


def _group_to_heads(bc: jax.Array, num_heads: int) -> jax.Array:
  """[..., G, N] -> [..., H, N] (head h reads group h // (H // G))."""
  return jnp.repeat(bc, num_heads // bc.shape[-2], axis=-2)


def _step(state, x_t, dt_t, A, B_t, C_t, keep_t):
  """One step in float32. state [B, H, P, N], x_t [B, H, P], dt_t [B, H],
  B_t/C_t [B, G, N], keep_t [B] (0 where the state resets). -> (y_t [B, H, P], state)."""
  H = x_t.shape[1]
  dt_t = dt_t.astype(jnp.float32)
  decay = jnp.exp(dt_t * A.astype(jnp.float32)) * keep_t[:, None]  # [B, H]
  B_h = _group_to_heads(B_t.astype(jnp.float32), H)  # [B, H, N]
  C_h = _group_to_heads(C_t.astype(jnp.float32), H)
  x_dt = x_t.astype(jnp.float32) * dt_t[..., None]  # [B, H, P]
  state = decay[..., None, None] * state + x_dt[..., None] * B_h[:, :, None, :]
  y_t = jnp.einsum("bhpn,bhn->bhp", state, C_h)
  return y_t, state


def ssd_step(state: jax.Array, x_t: jax.Array, dt_t: jax.Array, A: jax.Array, B_t: jax.Array,
             C_t: jax.Array, reset_t: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """One recurrent step for generation.

  state [B, H, P, N], x_t [B, H, P], dt_t [B, H], A [H], B_t/C_t [B, G, N],
  reset_t [B] bool (optional). Returns (y_t [B, H, P] in x_t.dtype, new state float32).
  """
  keep = jnp.ones(x_t.shape[:1], jnp.float32) if reset_t is None else 1.0 - reset_t.astype(jnp.float32)
  y_t, state = _step(state.astype(jnp.float32), x_t, dt_t, A, B_t, C_t, keep)
  return y_t.astype(x_t.dtype), state


def _zeros_state(x: jax.Array, n: int) -> jax.Array:
  Bsz, _, H, P = x.shape
  return jnp.zeros((Bsz, H, P, n), jnp.float32)


def _pad_length(arrays, pad: int):
  """Pads axis 1 of each array with zeros (dt = 0 there: the state is unchanged)."""
  if pad == 0:
    return arrays
  return [jnp.pad(a, [(0, 0), (0, pad)] + [(0, 0)] * (a.ndim - 2)) for a in arrays]


# ----------------------------------------------------------------------- sequential


def ssd_sequential(x: jax.Array, dt: jax.Array, A: jax.Array, B: jax.Array, C: jax.Array, *,
                   initial_state: jax.Array | None = None, reset: jax.Array | None = None,
                   checkpoint_block: int | None = None) -> tuple[jax.Array, jax.Array]:
  """The plain recurrence, a lax.scan over time (the reference).

  checkpoint_block: if set, time is scanned in blocks of that many steps and each
  block is rematerialised in the backward pass, so the saved states are
  O(L / block + block) instead of O(L) (same values; needed at L in the thousands).
  """
  Bsz, L, H, P = x.shape
  state = _zeros_state(x, B.shape[-1]) if initial_state is None else initial_state.astype(jnp.float32)
  reset = jnp.zeros((Bsz, L), jnp.float32) if reset is None else reset.astype(jnp.float32)

  def body(carry, inputs):
    y_t, carry = _step(carry, *inputs[:2], A, *inputs[2:])
    return carry, y_t

  def time_major(a):
    return jnp.moveaxis(a, 1, 0)

  if checkpoint_block is None or checkpoint_block >= L:
    xs = tuple(time_major(a) for a in (x, dt, B, C, 1.0 - reset))
    state, ys = jax.lax.scan(body, state, xs)  # ys [L, B, H, P]
  else:
    pad = -L % checkpoint_block
    arrays = _pad_length([x, dt, B, C, reset], pad)  # padding: dt = 0, no reset
    arrays[-1] = 1.0 - arrays[-1]
    nb = (L + pad) // checkpoint_block
    xs = tuple(time_major(a).reshape(nb, checkpoint_block, *a.shape[:1], *a.shape[2:])
               for a in arrays)

    @jax.checkpoint
    def block(carry, block_inputs):
      return jax.lax.scan(body, carry, block_inputs)

    state, ys = jax.lax.scan(block, state, xs)  # ys [nb, blk, B, H, P]
    ys = ys.reshape(nb * checkpoint_block, Bsz, H, P)[:L]
  return jnp.moveaxis(ys, 0, 1).astype(x.dtype), state


# -------------------------------------------------------------------------- chunked


def _segsum(a: jax.Array) -> jax.Array:
  """a [..., T] -> S [..., T, T] with S[i, j] = sum_{j < k <= i} a_k for i >= j, -inf above.

  Summed directly (a masked cumsum), not as cumsum[i] - cumsum[j], so there is no
  cancellation between two large cumulative sums.
  """
  T = a.shape[-1]
  k_idx = jnp.arange(T)[:, None]
  j_idx = jnp.arange(T)[None, :]
  terms = jnp.where(k_idx > j_idx, a[..., :, None], 0.0)  # [..., k, j]
  sums = jnp.cumsum(terms, axis=-2)  # [..., i, j]
  return jnp.where(k_idx >= j_idx, sums, -jnp.inf)


def _chunk_decays(a: jax.Array, doc: jax.Array):
  """Decay factors inside chunks.

  a [B, K, T, H] log-decays dt*A; doc [B, K, T] documents started so far in the chunk
  (0 = the document the chunk began in). Returns
    intra [B, K, H, T, T]: exp(segsum), zero across documents and above the diagonal;
    from_start [B, K, T, H]: decay from the chunk's incoming state to position i;
    to_end [B, K, T, H]: decay from position j to the chunk's last position;
    through [B, K, H]: decay of the incoming state across the whole chunk.
  """
  seg = _segsum(jnp.moveaxis(a, -1, 2))  # [B, K, H, T, T]
  same_doc = (doc[..., :, None] == doc[..., None, :])[:, :, None]  # [B, K, 1, T, T]
  intra = jnp.exp(jnp.where(same_doc, seg, -jnp.inf))
  cum = jnp.cumsum(a, axis=2)  # [B, K, T, H], inclusive
  first_doc = (doc == 0)[..., None]
  from_start = jnp.where(first_doc, jnp.exp(cum), 0.0)
  # sum_{j < k <= T-1} a_k as a reverse exclusive cumsum (no cancellation).
  after = jnp.flip(jnp.cumsum(jnp.flip(a, axis=2), axis=2), axis=2)
  after = jnp.concatenate([after[:, :, 1:], jnp.zeros_like(after[:, :, :1])], axis=2)
  last_doc = (doc == doc[..., -1:])[..., None]
  to_end = jnp.where(last_doc, jnp.exp(after), 0.0)
  through = jnp.where(doc[..., -1:] == 0, jnp.exp(cum[:, :, -1]), 0.0)
  return intra, from_start, to_end, through


def ssd_chunked(x: jax.Array, dt: jax.Array, A: jax.Array, B: jax.Array, C: jax.Array,
                chunk_size: int, *, initial_state: jax.Array | None = None,
                reset: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """Chunkwise SSD: quadratic (attention-like) form inside chunks of `chunk_size`,
  a scan over chunks carrying the state between them. L is padded up to a multiple of
  chunk_size with dt = 0 (and zero inputs), which leaves the state unchanged."""
  Bsz, L, H, P = x.shape
  G, N = B.shape[-2:]
  T = chunk_size
  out_dtype = x.dtype
  pad = -L % T
  K = (L + pad) // T
  f32 = jnp.float32
  reset = jnp.zeros((Bsz, L), bool) if reset is None else reset
  x, dt, B, C, reset = _pad_length(
      [x.astype(f32), dt.astype(f32), B.astype(f32), C.astype(f32), reset], pad)
  x = x.reshape(Bsz, K, T, G, H // G, P)  # heads split as (group, head in group)
  dt = dt.reshape(Bsz, K, T, H)
  B = B.reshape(Bsz, K, T, G, N)
  C = C.reshape(Bsz, K, T, G, N)
  doc = jnp.cumsum(reset.reshape(Bsz, K, T).astype(jnp.int32), axis=-1)  # [B, K, T]

  a = dt * A.astype(f32)  # [B, K, T, H]
  intra, from_start, to_end, through = _chunk_decays(a, doc)
  x_dt = x * dt.reshape(Bsz, K, T, G, H // G)[..., None]  # [B, K, T, G, Hg, P]

  # 1. Within chunks: y_i = sum_j (C_i . B_j) decay(j -> i) dt_j x_j.
  cb = jnp.einsum("bkign,bkjgn->bkgij", C, B)  # [B, K, G, T, T]
  scores = cb[:, :, :, None] * intra.reshape(Bsz, K, G, H // G, T, T)
  y = jnp.einsum("bkghij,bkjghp->bkighp", scores, x_dt)

  # 2. Each chunk's own contribution to the state at its end: [B, K, G, Hg, P, N].
  to_end = to_end.reshape(Bsz, K, T, G, H // G)
  chunk_states = jnp.einsum("bkjgn,bkjgh,bkjghp->bkghpn", B, to_end, x_dt)

  # 3. Pass states across chunks: incoming[k] = state before chunk k.
  state0 = (jnp.zeros((Bsz, H, P, N), f32) if initial_state is None
            else initial_state.astype(f32)).reshape(Bsz, G, H // G, P, N)
  through = through.reshape(Bsz, K, G, H // G)

  def carry_across(state, inputs):
    chunk_state, chunk_through = inputs
    return chunk_through[..., None, None] * state + chunk_state, state

  final_state, incoming = jax.lax.scan(
      carry_across, state0, (jnp.moveaxis(chunk_states, 1, 0), jnp.moveaxis(through, 1, 0)))
  incoming = jnp.moveaxis(incoming, 0, 1)  # [B, K, G, Hg, P, N]

  # 4. The incoming state's contribution inside each chunk.
  from_start = from_start.reshape(Bsz, K, T, G, H // G)
  y = y + jnp.einsum("bkign,bkghpn,bkigh->bkighp", C, incoming, from_start)

  y = y.reshape(Bsz, K * T, H, P)[:, :L]
  return y.astype(out_dtype), final_state.reshape(Bsz, H, P, N)


# ------------------------------------------------------------------------ benchmark


def benchmark_ssd(batch: int = 8, length: int = 2048, dim: int = 256, *, expand: int = 2,
                  headdim: int = 64, d_state: int = 128, chunk_size: int = 64,
                  repeats: int = 3, seed: int = 0) -> dict[str, float]:
  """Seconds per jitted forward+backward of the SSD scan, chunked vs sequential.

  Shapes follow a Mamba-2 layer of width `dim`: H = expand*dim/headdim heads of size
  headdim, one group of d_state. The gradient is taken wrt x, dt, A, B and C of
  sum(y * w) for a fixed random w. The sequential form uses block checkpointing
  (blocks of chunk_size) so that its saved states fit in memory.
  Returns {"chunked_s", "sequential_s", "speedup", "chunked_compile_s",
  "sequential_compile_s"} (best of `repeats` runs after compilation).
  """
  H = expand * dim // headdim
  keys = jax.random.split(jax.random.key(seed), 6)
  x = jax.random.normal(keys[0], (batch, length, H, headdim), jnp.float32)
  dt = jax.nn.softplus(jax.random.normal(keys[1], (batch, length, H)) - 3.0)
  A = -jnp.exp(jax.random.uniform(keys[2], (H,), minval=0.0, maxval=2.7))
  B = jax.random.normal(keys[3], (batch, length, 1, d_state))
  C = jax.random.normal(keys[4], (batch, length, 1, d_state))
  w = jax.random.normal(keys[5], (batch, length, H, headdim))

  def loss_of(fn):
    def loss(x, dt, A, B, C):
      return jnp.sum(fn(x, dt, A, B, C)[0] * w)
    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3, 4)))

  fns = {
      "chunked": loss_of(lambda *a: ssd_chunked(*a, chunk_size)),
      "sequential": loss_of(lambda *a: ssd_sequential(*a, checkpoint_block=chunk_size)),
  }
  out: dict[str, float] = {}
  for name, fn in fns.items():
    start = time.perf_counter()
    jax.block_until_ready(fn(x, dt, A, B, C))
    out[f"{name}_compile_s"] = time.perf_counter() - start
    best = float("inf")
    for _ in range(repeats):
      start = time.perf_counter()
      jax.block_until_ready(fn(x, dt, A, B, C))
      best = min(best, time.perf_counter() - start)
    out[f"{name}_s"] = best
  out["speedup"] = out["sequential_s"] / out["chunked_s"]
  return out
