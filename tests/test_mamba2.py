"""Mamba-2: SSD forms agree (chunked, sequential, step), the layer's fast path equals its
reference, packed documents are isolated, decoding equals the forward pass, causality."""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from hnet.layers import ssd
from hnet.layers.mamba2 import Mamba2Block, causal_conv, segment_resets

TOL = dict(rtol=1e-5, atol=1e-5)
DIM, D_STATE, HEADDIM, CHUNK = 16, 8, 8, 8  # -> d_inner 32, 4 heads


ssd_sequential = jax.jit(ssd.ssd_sequential, static_argnames="checkpoint_block")
ssd_chunked = jax.jit(ssd.ssd_chunked, static_argnums=5)
ssd_step = jax.jit(ssd.ssd_step)


def ssd_inputs(key, batch=2, length=29, heads=4, headdim=3, groups=2, d_state=5):
  k = jax.random.split(key, 6)
  x = jax.random.normal(k[0], (batch, length, heads, headdim))
  dt = jax.nn.softplus(jax.random.normal(k[1], (batch, length, heads)) - 1.0)
  A = -jnp.exp(jax.random.normal(k[2], (heads,)))
  B = jax.random.normal(k[3], (batch, length, groups, d_state))
  C = jax.random.normal(k[4], (batch, length, groups, d_state))
  h0 = jax.random.normal(k[5], (batch, heads, headdim, d_state))
  return x, dt, A, B, C, h0


def packed_segments(batch, length, starts):
  """segment_ids [batch, length]: documents 1, 2, ... starting at `starts`."""
  seg = np.zeros((batch, length), np.int32)
  for s in starts:
    seg[:, s:] += 1
  return jnp.asarray(seg + 1)


@nnx.jit
def forward(block, x, segment_ids=None):
  return block(x, None, segment_ids)


@nnx.jit
def decode(block, x, cache, index, valid=None):
  return block.decode(x, cache, index, valid)


def make_block(implementation="chunked", seed=0, **kw):
  return Mamba2Block(DIM, rngs=nnx.Rngs(seed), d_state=D_STATE, headdim=HEADDIM,
                     chunk_size=CHUNK, implementation=implementation, **kw)


# ------------------------------------------------------------------------ ssd math


# L = 29: not a multiple of the chunk; 64 > L; 1 is the degenerate chunk.
@pytest.mark.parametrize("chunk_size,with_reset", [(1, True), (4, True), (8, False), (64, True)])
def test_chunked_equals_sequential(with_reset, chunk_size):
  x, dt, A, B, C, h0 = ssd_inputs(jax.random.key(0))
  reset = (jax.random.uniform(jax.random.key(1), dt.shape[:2]) < 0.15) if with_reset else None
  y_seq, s_seq = ssd_sequential(x, dt, A, B, C, initial_state=h0, reset=reset)
  y_chk, s_chk = ssd_chunked(x, dt, A, B, C, chunk_size, initial_state=h0, reset=reset)
  np.testing.assert_allclose(y_chk, y_seq, **TOL)
  np.testing.assert_allclose(s_chk, s_seq, **TOL)
  y_blk, s_blk = ssd_sequential(x, dt, A, B, C, initial_state=h0, reset=reset,
                                    checkpoint_block=6)
  np.testing.assert_allclose(y_blk, y_seq, **TOL)
  np.testing.assert_allclose(s_blk, s_seq, **TOL)


def test_chunked_gradients_equal_sequential():
  x, dt, A, B, C, h0 = ssd_inputs(jax.random.key(2))
  reset = jax.random.uniform(jax.random.key(3), dt.shape[:2]) < 0.15
  w = jax.random.normal(jax.random.key(4), x.shape)
  ws = jax.random.normal(jax.random.key(5), h0.shape)

  def loss(fn):
    def f(*args):
      y, s = fn(*args)
      return jnp.sum(y * w) + jnp.sum(s * ws)
    return jax.jit(jax.grad(f, argnums=tuple(range(6))))

  grads_seq = loss(lambda x, dt, A, B, C, h0: ssd.ssd_sequential(
      x, dt, A, B, C, initial_state=h0, reset=reset))(x, dt, A, B, C, h0)
  grads_chk = loss(lambda x, dt, A, B, C, h0: ssd.ssd_chunked(
      x, dt, A, B, C, 8, initial_state=h0, reset=reset))(x, dt, A, B, C, h0)
  grads_blk = loss(lambda x, dt, A, B, C, h0: ssd.ssd_sequential(
      x, dt, A, B, C, initial_state=h0, reset=reset, checkpoint_block=5))(x, dt, A, B, C, h0)
  for name, g_seq, g_chk, g_blk in zip("x dt A B C h0".split(), grads_seq, grads_chk, grads_blk):
    assert np.all(np.isfinite(g_chk)), name
    # Each gradient entry sums O(L) terms of both signs (O(B*L*P) for A) whose order
    # differs between the forms; an entry that nearly cancels keeps the absolute error
    # of the others, so atol is 1e-5 of the largest entry (observed max error ~2e-7 of it).
    atol = 1e-5 * float(np.abs(g_seq).max())
    np.testing.assert_allclose(g_chk, g_seq, rtol=1e-5, atol=atol, err_msg=name)
    np.testing.assert_allclose(g_blk, g_seq, rtol=1e-5, atol=atol, err_msg=name)


def test_step_equals_sequential_and_chunked_prefill_continues():
  x, dt, A, B, C, h0 = ssd_inputs(jax.random.key(6))
  y_seq, s_seq = ssd_sequential(x, dt, A, B, C, initial_state=h0)
  # Chunked prefill of the first 13 positions, then recurrent steps.
  y_pre, state = ssd_chunked(x[:, :13], dt[:, :13], A, B[:, :13], C[:, :13], 4,
                                 initial_state=h0)
  ys = [y_pre]
  for t in range(13, x.shape[1]):
    y_t, state = ssd_step(state, x[:, t], dt[:, t], A, B[:, t], C[:, t])
    ys.append(y_t[:, None])
  np.testing.assert_allclose(jnp.concatenate(ys, 1), y_seq, **TOL)
  np.testing.assert_allclose(state, s_seq, **TOL)


def test_reset_isolates_documents_in_ssd():
  x, dt, A, B, C, h0 = ssd_inputs(jax.random.key(7), length=20)
  reset = jnp.zeros(dt.shape[:2], bool).at[:, 11].set(True)
  for fn in (ssd_sequential, lambda *a, **k: ssd_chunked(*a, 8, **k)):
    y, s = fn(x, dt, A, B, C, initial_state=h0, reset=reset)
    y2, s2 = fn(x[:, 11:], dt[:, 11:], A, B[:, 11:], C[:, 11:])
    np.testing.assert_allclose(y[:, 11:], y2, **TOL)
    np.testing.assert_allclose(s, s2, **TOL)


def test_benchmark_ssd_runs():
  out = ssd.benchmark_ssd(batch=1, length=32, dim=16, headdim=8, d_state=4, chunk_size=8,
                          repeats=1)
  assert set(out) >= {"chunked_s", "sequential_s", "speedup"}
  assert all(v > 0 for v in out.values())


# ---------------------------------------------------------------------------- layer


def test_init_shapes_and_ranges():
  block = Mamba2Block(DIM, rngs=nnx.Rngs(0), d_state=D_STATE, headdim=HEADDIM,
                      num_layers_for_init=4)
  mixer = block.mixer
  H, E, conv_dim = 4, 2 * DIM, 2 * DIM + 2 * D_STATE
  assert mixer.in_proj.kernel.shape == (DIM, E + conv_dim + H)
  assert mixer.in_proj.bias is None and mixer.out_proj.bias is None
  assert mixer.out_proj.kernel.shape == (E, DIM)
  assert mixer.conv_weight.shape == (4, conv_dim) and mixer.conv_bias.shape == (conv_dim,)
  assert mixer.dt_bias.shape == mixer.A_log.shape == mixer.D.shape == (H,)
  assert mixer.norm.scale.shape == (E,)
  assert mixer.in_proj.kernel.get_metadata()["axes"] == ("embed", "mlp")
  assert mixer.A_log.get_metadata()["axes"] == ("heads",)
  # Larger sample of heads for the distribution checks.
  wide = Mamba2Block(512, rngs=nnx.Rngs(1), d_state=4, headdim=2).mixer  # 512 heads
  dt = np.asarray(jax.nn.softplus(wide.dt_bias[...]))
  assert dt.min() >= 1e-3 * (1 - 1e-5) and dt.max() <= 1e-1 * (1 + 1e-5)
  log_dt = np.log(dt)  # log-uniform: the mean of log dt is mid-range
  assert abs(log_dt.mean() - 0.5 * (math.log(1e-3) + math.log(1e-1))) < 0.3
  A = np.exp(np.asarray(wide.A_log[...]))
  assert A.min() >= 1.0 and A.max() <= 16.0
  np.testing.assert_array_equal(wide.D[...], 1.0)
  # Residual output projection scaled by 1/sqrt(num_layers).
  assert abs(float(jnp.std(mixer.out_proj.kernel[...])) - 0.01) < 0.003


def test_layer_chunked_equals_sequential_values_and_grads():
  chunked, sequential = make_block("chunked"), make_block("sequential")
  x = jax.random.normal(jax.random.key(0), (2, 21, DIM))  # 21 % CHUNK != 0
  seg = packed_segments(2, 21, [9, 17])
  np.testing.assert_allclose(forward(chunked, x, seg), forward(sequential, x, seg), **TOL)

  w = jax.random.normal(jax.random.key(1), x.shape)

  def loss(block, x):
    return jnp.sum(block(x, None, seg) * w)

  grad = nnx.jit(nnx.grad(loss, argnums=(0, 1)))
  g_chk, g_seq = grad(chunked, x), grad(sequential, x)
  np.testing.assert_allclose(g_chk[1], g_seq[1], **TOL)
  flat_chk = dict(nnx.to_flat_state(nnx.state(g_chk[0])))
  flat_seq = dict(nnx.to_flat_state(nnx.state(g_seq[0])))
  assert flat_chk.keys() == flat_seq.keys()
  for path in flat_chk:
    a, b = np.asarray(flat_chk[path][...]), np.asarray(flat_seq[path][...])
    # Parameter gradients sum over batch and length (and A_log/dt_bias over heads' P*N
    # terms): compare at the scale of the largest entry.
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * np.abs(b).max(), err_msg=str(path))


@pytest.mark.parametrize("implementation", ["chunked", "sequential"])
def test_packed_document_equals_document_alone(implementation):
  block = make_block(implementation)
  x = jax.random.normal(jax.random.key(2), (2, 27, DIM))
  seg = packed_segments(2, 27, [10])
  y = forward(block, x, seg)
  y_doc1 = forward(block, x[:, :10], seg[:, :10])
  y_doc2 = forward(block, x[:, 10:], jnp.ones((2, 17), jnp.int32))
  np.testing.assert_allclose(y[:, :10], y_doc1, **TOL)
  np.testing.assert_allclose(y[:, 10:], y_doc2, **TOL)
  # Without segment ids the documents do mix.
  assert not np.allclose(forward(block, x, None)[:, 10:], y_doc2, **TOL)


def test_conv_masks_other_documents():
  inputs = jax.random.normal(jax.random.key(3), (1, 6, 2))
  weight = jax.random.normal(jax.random.key(4), (4, 2))
  bias = jnp.zeros((2,))
  seg = jnp.array([[1, 1, 1, 2, 2, 2]])
  out = causal_conv(inputs, weight, bias, seg)
  np.testing.assert_allclose(out[:, 3:], causal_conv(inputs[:, 3:], weight, bias), **TOL)
  np.testing.assert_array_equal(segment_resets(seg), [[False, False, False, True, False, False]])


def test_causality():
  block = make_block("chunked")
  x = jax.random.normal(jax.random.key(5), (1, 19, DIM))
  jac = nnx.jit(lambda block, x: jax.jacrev(lambda x: block(x)[0])(x))(block, x)  # [L, D, 1, L, D]
  jac = np.abs(np.asarray(jac)).sum(axis=(1, 2, 4))  # [L_out, L_in]
  assert np.all(jac[np.triu_indices(19, k=1)] == 0.0)
  assert np.all(np.diag(jac) > 0)


@pytest.mark.parametrize("implementation", ["chunked", "sequential"])
def test_decode_step_by_step_equals_forward(implementation):
  block = make_block(implementation)
  x = jax.random.normal(jax.random.key(6), (2, 13, DIM))
  y_full = forward(block, x, None)
  cache = block.init_cache(2, 13)
  ys = []
  for t in range(13):
    y_t, cache = decode(block, x[:, t:t + 1], cache, t)
    ys.append(y_t)
  np.testing.assert_allclose(jnp.concatenate(ys, 1), y_full, **TOL)
  # T > 1 at once (prefill) equals the forward pass and leaves the same cache.
  y_multi, cache_multi = decode(block, x, block.init_cache(2, 13), 0)
  np.testing.assert_allclose(y_multi, y_full, **TOL)
  for key in cache:
    np.testing.assert_allclose(cache_multi[key], cache[key], **TOL)


def test_chunked_prefill_then_decode_continues():
  block = make_block("chunked")
  x = jax.random.normal(jax.random.key(7), (2, 20, DIM))
  y_full = forward(block, x, None)
  prefill = nnx.jit(lambda block, x: block.mixer(block.norm(x), None, return_state=True))
  h_pre, cache = prefill(block, x[:, :11])
  np.testing.assert_allclose(x[:, :11] + h_pre, y_full[:, :11], **TOL)
  y_rest, _ = decode(block, x[:, 11:], cache, 11)
  np.testing.assert_allclose(y_rest, y_full[:, 11:], **TOL)


def test_decode_valid_holds_rows_that_do_not_advance():
  block = make_block()
  x = jax.random.normal(jax.random.key(8), (2, 6, DIM))
  valid = jnp.ones((2, 6), bool).at[1, 2].set(False)  # row 1 skips its slot 2
  y, cache = decode(block, x, block.init_cache(2, 6), 0, valid)
  # Row 1 equals the forward pass over its inputs without position 2.
  x1 = jnp.concatenate([x[1:, :2], x[1:, 3:]], axis=1)
  y1 = forward(block, x1, None)
  np.testing.assert_allclose(y[1:, 3:], y1[:, 2:], **TOL)
  np.testing.assert_allclose(y[:1], forward(block, x[:1], None), **TOL)
  _, cache1 = decode(block, x1, block.init_cache(1, 6), 0)
  for key in cache:
    np.testing.assert_allclose(cache[key][1:], cache1[key], **TOL)
