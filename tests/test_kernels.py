"""Chunk-routing kernels: Pallas (interpret mode) == jnp reference, forward and
gradients; capacity = L == a numpy loop over variable-length sequences."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hnet.kernels import benchmark_routing
from hnet.kernels.chunk import chunk, chunk_indices
from hnet.kernels.dechunk import dechunk
from hnet.kernels.routing import boundary_probs

F32_TOL = dict(rtol=1e-5, atol=1e-5)
# bfloat16 inputs: both paths compute in float32 but round results (and gradients) to
# bfloat16, whose unit roundoff is 2^-8 ~ 4e-3; one rounding step apart is allowed.
BF16_TOL = dict(rtol=1e-2, atol=1e-2)
PALLAS = dict(implementation="pallas", interpret=True)
JNP = dict(implementation="jnp")


def _jit_grad(loss, impl, *args):
  """Gradients of loss(*args, **impl) wrt every arg, jitted (eager interpret mode is
  slow)."""
  return jax.jit(jax.grad(functools.partial(loss, **impl),
                          argnums=tuple(range(len(args)))))(*args)


def _jit(fn, *args, **kwargs):
  return jax.jit(functools.partial(fn, **kwargs))(*args)


def _close(actual, expected, tol):
  np.testing.assert_allclose(np.asarray(actual, np.float32),
                             np.asarray(expected, np.float32), **tol)


def _segment_start(batch, length, doc_starts=(0,)):
  start = np.zeros((batch, length), bool)
  start[:, list(doc_starts)] = True
  return jnp.asarray(start)


def _routing_inputs(batch, length, dim, dtype=jnp.float32, seed=0):
  key_q, key_k = jax.random.split(jax.random.PRNGKey(seed))
  q = jax.random.normal(key_q, (batch, length, dim))
  # Mix so that cos spans (-1, 1) with a mix of boundaries and non-boundaries.
  mix = jnp.linspace(-0.8, 0.95, length)[None, :, None]
  k = mix * q + (1 - jnp.abs(mix)) * jax.random.normal(key_k, (batch, length, dim))
  return q.astype(dtype), k.astype(dtype)


# ----------------------------------------------------------------------------- routing
@pytest.mark.parametrize("dtype,tol", [(jnp.float32, F32_TOL), (jnp.bfloat16, BF16_TOL)])
@pytest.mark.parametrize("length,dim", [(37, 20), (70, 64)])
def test_routing_pallas_matches_reference(length, dim, dtype, tol):
  q, k = _routing_inputs(2, length, dim, dtype)
  start = _segment_start(2, length, (0, length // 3))
  prob_ref, mask_ref = _jit(boundary_probs, q, k, start, **JNP)
  prob, mask = _jit(boundary_probs, q, k, start, **PALLAS)
  assert prob.dtype == jnp.float32 and mask.dtype == jnp.bool_
  _close(prob, prob_ref, F32_TOL)  # computed in float32 from the same inputs
  np.testing.assert_array_equal(mask, mask_ref)
  assert bool(jnp.all(prob[start] == 1.0)) and 0 < int(mask.sum()) < mask.size

  weight = jnp.linspace(-1.0, 2.0, length)[None, :]
  def loss(q, k, **impl):
    return jnp.sum(boundary_probs(q, k, start, **impl)[0] * weight)
  grads_ref = _jit_grad(loss, JNP, q, k)
  grads = _jit_grad(loss, PALLAS, q, k)
  for grad, grad_ref in zip(grads, grads_ref):
    assert grad.dtype == dtype
    _close(grad, grad_ref, tol)
  assert float(jnp.abs(grads[0][start]).max()) == 0.0  # forced starts carry no gradient


def test_routing_matches_numpy_cosine():
  q, k = _routing_inputs(1, 9, 5)
  q_np, k_np = np.asarray(q, np.float64), np.asarray(k, np.float64)
  cos = (q_np * k_np).sum(-1) / np.linalg.norm(q_np, axis=-1) / np.linalg.norm(k_np, axis=-1)
  expected = np.clip((1 - cos) / 2, 0, 1)
  expected[:, 0] = 1.0
  prob, mask = _jit(boundary_probs, q, k, _segment_start(1, 9), **PALLAS)
  _close(prob, expected, F32_TOL)
  np.testing.assert_array_equal(mask, expected > 0.5)


# ------------------------------------------------------------------------------- chunk
def _boundaries(batch, length, rate, seed=1):
  mask = jax.random.bernoulli(jax.random.PRNGKey(seed), rate, (batch, length))
  return mask.at[:, 0].set(True)


def _numpy_chunk(h, mask):
  """Variable-length chunking of one row: the kept rows, in order."""
  return [np.asarray(h[b])[np.asarray(mask[b])] for b in range(h.shape[0])]


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("capacity", [7, 19, 83])
def test_chunk_pallas_matches_reference(capacity, dtype):
  length, dim = 83, 24
  h = jax.random.normal(jax.random.PRNGKey(0), (2, length, dim)).astype(dtype)
  mask = _boundaries(2, length, 0.3)
  start = _segment_start(2, length, (0, 40))  # two documents: overflows before the second
  prob = jax.random.uniform(jax.random.PRNGKey(2), (2, length))
  extras = {"prob": prob, "position": jnp.broadcast_to(jnp.arange(length), (2, length))}
  ref = _jit(chunk, h, mask, start, capacity=capacity, extras=extras, **JNP)
  out = _jit(chunk, h, mask, start, capacity=capacity, extras=extras, **PALLAS)
  np.testing.assert_array_equal(out.chunks, ref.chunks)  # a gather is exact
  for name in ("chunk_valid", "chunk_byte_index", "chunk_index_of_byte", "num_dropped"):
    np.testing.assert_array_equal(getattr(out, name), getattr(ref, name))
  for name in extras:
    np.testing.assert_array_equal(out.extras[name], ref.extras[name])

  weight = jax.random.normal(jax.random.PRNGKey(3), (2, capacity, dim))
  def loss(h, prob, **impl):
    c = chunk(h, mask, start, capacity, {"prob": prob}, **impl)
    return jnp.sum(c.chunks.astype(jnp.float32) * weight) + jnp.sum(c.extras["prob"] ** 2)
  grads_ref = _jit_grad(loss, JNP, h, prob)
  grads = _jit_grad(loss, PALLAS, h, prob)
  np.testing.assert_array_equal(grads[0], grads_ref[0])  # scatter of one value each
  _close(grads[1], grads_ref[1], F32_TOL)


def test_chunk_capacity_drops_are_counted():
  length = 40
  mask = _boundaries(3, length, 0.5, seed=4)
  kept = np.asarray(mask.sum(axis=1))
  capacity = int(kept.min()) - 2
  start = _segment_start(3, length)  # one document per row
  _, valid, index_of_byte, num_dropped = chunk_indices(mask, start, capacity)
  np.testing.assert_array_equal(num_dropped, kept - capacity)
  assert bool(valid.all())
  assert int(index_of_byte.max()) == capacity - 1 and int(index_of_byte.min()) == 0
  h = jax.random.normal(jax.random.PRNGKey(0), (3, length, 8))
  out = _jit(chunk, h, mask, start, capacity=capacity, **PALLAS)
  for b, rows in enumerate(_numpy_chunk(h, mask)):
    np.testing.assert_array_equal(out.chunks[b], rows[:capacity])  # the first C kept


def test_chunk_full_capacity_is_variable_length():
  length, dim = 45, 16
  h = jax.random.normal(jax.random.PRNGKey(0), (2, length, dim))
  start = _segment_start(2, length, (0, 20))
  mask = _boundaries(2, length, 0.25) | start  # document starts are boundaries
  for impl in (JNP, PALLAS):
    out = _jit(chunk, h, mask, start, capacity=length, **impl)
    assert int(out.num_dropped.sum()) == 0
    for b, rows in enumerate(_numpy_chunk(h, mask)):
      n = len(rows)
      np.testing.assert_array_equal(out.chunks[b, :n], rows)
      np.testing.assert_array_equal(out.chunks[b, n:], 0.0)
      np.testing.assert_array_equal(out.chunk_valid[b], np.arange(length) < n)
      np.testing.assert_array_equal(out.chunk_index_of_byte[b],
                                    np.cumsum(np.asarray(mask[b])) - 1)


def _numpy_kept(mask, start, capacity):
  """One row, in order: a start is kept while a slot is free, a boundary inside a
  document only while a slot is left for it and for every later start."""
  kept, used = np.zeros_like(mask), 0
  for t in np.nonzero(mask | start)[0]:
    if (used < capacity) if start[t] else (used + 1 + start[t + 1:].sum() <= capacity):
      kept[t], used = True, used + 1
  return kept


@pytest.mark.parametrize("impl", [JNP, PALLAS], ids=["jnp", "pallas"])
def test_overflow_keeps_document_starts(impl):
  """Rows of 128 at capacity 8 that overflow before later documents: every document
  start keeps a slot, each byte reads the last kept boundary at or before it (in its
  own document), the documents after the C-th start read nothing (-1)."""
  length, capacity, dim = 128, 8, 16
  doc_starts = [(0, 30, 70), tuple(range(0, length, 10)), (0,)]  # row 1: 13 documents
  start = np.zeros((3, length), bool)
  for b, starts in enumerate(doc_starts):
    start[b, list(starts)] = True
  mask = np.asarray(_boundaries(3, length, 0.5, seed=6))
  h = jax.random.normal(jax.random.PRNGKey(0), (3, length, dim))
  out = _jit(chunk, h, jnp.asarray(mask), jnp.asarray(start), capacity=capacity, **impl)
  document = np.cumsum(start, axis=1)  # [B, L] 1-based document of each byte
  for b in range(3):
    kept = _numpy_kept(mask[b], start[b], capacity)
    n = int(kept.sum())
    np.testing.assert_array_equal(out.chunk_byte_index[b, :n], np.nonzero(kept)[0])
    np.testing.assert_array_equal(out.chunks[b, :n], np.asarray(h[b])[kept])
    reads = document[b] <= capacity
    np.testing.assert_array_equal(out.chunk_index_of_byte[b],
                                  np.where(reads, np.cumsum(kept) - 1, -1))
    source = np.asarray(out.chunk_byte_index[b])[np.asarray(out.chunk_index_of_byte[b])[reads]]
    np.testing.assert_array_equal(document[b][source], document[b][reads])
    assert int(out.num_dropped[b]) == (mask[b] | start[b]).sum() - n
  # Row 0 overflows in its first document, yet documents 2 and 3 start chunks.
  assert set(np.asarray(out.chunk_byte_index[0])) >= {0, 30, 70}
  assert (np.asarray(out.chunk_index_of_byte[1]) < 0).sum() == length - 80


def test_overflow_dechunk_pallas_matches_reference():
  """The chunk -> dechunk path through an overflow and documents without a slot:
  Pallas (interpret) == jnp, forward and gradients; bytes that read nothing get 0."""
  length, capacity, dim = 128, 8, 16
  start = _segment_start(2, length, (0, 30, 70))
  start = start.at[1].set(jnp.arange(length) % 10 == 0)  # 13 documents in row 1
  mask = _boundaries(2, length, 0.5, seed=7) | start
  h = jax.random.normal(jax.random.PRNGKey(1), (2, length, dim))
  prob = jnp.where(mask, 0.75, 0.25) * jax.random.uniform(jax.random.PRNGKey(2), (2, length),
                                                          minval=0.9, maxval=1.1)
  weight = jax.random.normal(jax.random.PRNGKey(3), (2, length, dim))

  def path(h, prob, **impl):
    c = chunk(h, mask, start, capacity, {"prob": prob, "start": start}, **impl)
    return dechunk(c.chunks, c.extras["prob"], c.extras["start"], c.chunk_index_of_byte,
                   **impl)

  out_ref, out = _jit(path, h, prob, **JNP), _jit(path, h, prob, **PALLAS)
  _close(out, out_ref, F32_TOL)
  assert float(jnp.abs(out_ref[1, 80:]).max()) == 0.0 == float(jnp.abs(out[1, 80:]).max())
  assert float(jnp.abs(out_ref[1, :80]).min()) > 0.0

  def loss(h, prob, **impl):
    return jnp.sum(path(h, prob, **impl) * weight)
  grads_ref = _jit_grad(loss, JNP, h, prob)
  grads = _jit_grad(loss, PALLAS, h, prob)
  for grad, grad_ref in zip(grads, grads_ref):
    _close(grad, grad_ref, F32_TOL)
  assert float(jnp.abs(grads_ref[0][1, 80:]).max()) == 0.0  # no slot, no gradient


# ----------------------------------------------------------------------------- dechunk
def _numpy_dechunk(z, prob, reset, index_of_byte):
  """Sequential EMA over the chunks of each row (float64), then byte t reads its chunk."""
  z, prob = np.asarray(z, np.float64), np.clip(np.asarray(prob, np.float64), 1e-4, 1 - 1e-4)
  out = []
  for b in range(z.shape[0]):
    z_bar, previous = np.zeros_like(z[b]), np.zeros(z.shape[2])
    for c in range(z.shape[1]):
      previous = 0 * previous if reset[b, c] else previous
      previous = prob[b, c] * z[b, c] + (1 - prob[b, c]) * previous
      z_bar[c] = previous
    out.append(z_bar[np.asarray(index_of_byte[b])])
  return np.stack(out)


def _dechunk_inputs(length, capacity, dim, dtype=jnp.float32):
  mask = _boundaries(2, length, 0.35)
  _, _, index_of_byte, _ = chunk_indices(mask, _segment_start(2, length), capacity)
  z = jax.random.normal(jax.random.PRNGKey(5), (2, capacity, dim)).astype(dtype)
  prob = jax.random.uniform(jax.random.PRNGKey(6), (2, capacity))
  prob = prob.at[:, 0].set(1.0)  # p = 1 at a document start: clamped to 1 - 1e-4
  reset = np.zeros((2, capacity), bool)
  reset[:, 0] = True
  reset[1, capacity // 2] = True  # a second document in row 1
  return z, prob, jnp.asarray(reset), index_of_byte


@pytest.mark.parametrize("dtype,tol", [(jnp.float32, F32_TOL), (jnp.bfloat16, BF16_TOL)])
@pytest.mark.parametrize("length,capacity,dim", [(61, 17, 24), (50, 50, 70), (80, 64, 64)])
def test_dechunk_pallas_matches_reference(length, capacity, dim, dtype, tol):
  z, prob, reset, index_of_byte = _dechunk_inputs(length, capacity, dim, dtype)
  out_ref = _jit(dechunk, z, prob, reset, index_of_byte, **JNP)
  out = _jit(dechunk, z, prob, reset, index_of_byte, **PALLAS)
  assert out.shape == (2, length, dim) and out.dtype == dtype
  _close(out, out_ref, tol)
  if dtype == jnp.float32:
    _close(out_ref, _numpy_dechunk(z, prob, reset, index_of_byte), F32_TOL)

  weight = jax.random.normal(jax.random.PRNGKey(7), (2, length, dim))
  def loss(z, prob, **impl):
    return jnp.sum(dechunk(z, prob, reset, index_of_byte, **impl).astype(jnp.float32)
                   * weight)
  # prob = 1 at chunk 0 sits in the clamp: its gradient is 0 on both paths.
  grads_ref = _jit_grad(loss, JNP, z, prob)
  grads = _jit_grad(loss, PALLAS, z, prob)
  _close(grads[0], grads_ref[0], tol)
  # dP sums over D and reverse-scans C: a reduction order unlike the associative scan's.
  _close(grads[1], grads_ref[1], tol)


def test_dechunk_reset_forgets_previous_document():
  z, prob, reset, index_of_byte = _dechunk_inputs(40, 12, 8)
  start = 12 // 2
  for impl in (JNP, PALLAS):
    def second_document(z):
      return dechunk(z, prob, reset, jnp.full((2, 1), start), **impl)[1].sum()
    grad = jax.jit(jax.grad(second_document))(z)
    assert float(jnp.abs(grad[1, :start]).max()) == 0.0
    assert float(jnp.abs(grad[1, start]).max()) > 0.0


# ------------------------------------------------------------------------ whole path
def _numpy_hnet_path(h, prob, start):
  """Variable-length H-Net routing core per row: keep p > 0.5, EMA, upsample."""
  outs = []
  for b in range(h.shape[0]):
    kept = np.nonzero(prob[b] > 0.5)[0]
    index_of_byte = (np.cumsum(prob[b] > 0.5) - 1)[None]
    outs.append(_numpy_dechunk(h[b:b + 1, kept], prob[b:b + 1, kept],
                               start[b:b + 1, kept], index_of_byte)[0])
  return np.stack(outs)


@pytest.mark.parametrize("impl", [JNP, PALLAS], ids=["jnp", "pallas"])
def test_full_capacity_path_is_variable_length(impl):
  length, dim = 33, 12
  q, k = _routing_inputs(2, length, dim, seed=3)
  start = _segment_start(2, length, (0, 20))
  @jax.jit
  def path(q, k):
    prob, mask = boundary_probs(q, k, start, **impl)
    chunked = chunk(k, mask, start, length, {"prob": prob, "start": start}, **impl)
    return prob, dechunk(chunked.chunks, chunked.extras["prob"], chunked.extras["start"],
                         chunked.chunk_index_of_byte, **impl)
  prob, out = path(q, k)
  expected = _numpy_hnet_path(np.asarray(k), np.asarray(prob), np.asarray(start))
  _close(out, expected, F32_TOL)


def test_benchmark_routing_runs():
  result = benchmark_routing(batch=1, length=64, dim=16, iters=1)
  assert result["path_s"] > 0 and result["floor_s"] > 0 and result["mean_chunks"] > 0


# ------------------------------------------- jnp backward passes vs plain autodiff
def _plain_path(q, k, start, capacity):
  """The jnp path as plain formulas, differentiated by autodiff: routing, a masked
  take_along_axis gather, an associative-scan EMA, the upsampling gather."""
  q32, k32 = q.astype(jnp.float32), k.astype(jnp.float32)
  norm = lambda x: jnp.sqrt(jnp.maximum(jnp.sum(x * x, -1), 1e-16))
  cosine = jnp.sum(q32 * k32, -1) / (norm(q32) * norm(k32))
  prob = jnp.where(start, 1.0, jnp.clip((1.0 - cosine) * 0.5, 0.0, 1.0))
  byte_index, _, index_of_byte, _ = chunk_indices(prob > 0.5, start, capacity)

  def gather(x, index):
    expand = (slice(None), slice(None)) + (None,) * (x.ndim - 2)
    got = jnp.take_along_axis(x, jnp.clip(index, 0, x.shape[1] - 1)[expand], axis=1)
    return jnp.where((index >= 0)[expand], got, jnp.zeros((), x.dtype))

  z, p, reset = gather(k, byte_index), gather(prob, byte_index), gather(start, byte_index)
  p = jnp.clip(p, 1e-4, 1 - 1e-4)[..., None]
  decay = (1.0 - p) * (1.0 - reset.astype(jnp.float32))[..., None]
  combine = lambda e, l: (e[0] * l[0], l[0] * e[1] + l[1])
  z_bar = jax.lax.associative_scan(combine, (decay, p * z), axis=1)[1]
  return prob, gather(z_bar, index_of_byte)


@pytest.mark.parametrize("capacity", [9, 41])
def test_jnp_path_gradients_match_plain_autodiff(capacity):
  """The hand-written backward passes of the jnp routing, gather, EMA and upsample
  equal autodiff of the plain formulas (capacity 9 < the boundaries kept: drops)."""
  length, dim = 41, 12
  q, k = _routing_inputs(2, length, dim, seed=5)
  start = _segment_start(2, length, (0, 17))
  weight = jax.random.normal(jax.random.PRNGKey(8), (2, length, dim))

  def loss(q, k, plain):
    if plain:
      prob, out = _plain_path(q, k, start, capacity)
    else:
      prob, mask = boundary_probs(q, k, start, **JNP)
      c = chunk(k, mask, start, capacity, {"prob": prob, "start": start}, **JNP)
      out = dechunk(c.chunks, c.extras["prob"], c.extras["start"],
                    c.chunk_index_of_byte, **JNP)
    return jnp.sum(out * weight) + jnp.sum(prob * jnp.linspace(-1, 1, length))

  value, grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)),
                         static_argnums=2)(q, k, False)
  value_plain, grads_plain = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)),
                                     static_argnums=2)(q, k, True)
  _close(value, value_plain, F32_TOL)
  for grad, grad_plain in zip(grads, grads_plain):
    _close(grad, grad_plain, F32_TOL)


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("length,block", [(1, 16), (37, 16), (32, 8), (20, 64)])
def test_blocked_linear_scan_matches_sequential(length, block, reverse):
  from hnet.kernels.dechunk.reference import _linear_scan
  rng = np.random.default_rng(0)
  decay = rng.uniform(0.0, 1.0, (2, length, 1)).astype(np.float32)
  decay[:, ::7] = 0.0  # resets
  value = rng.normal(size=(2, length, 5)).astype(np.float32)
  expected, state = np.zeros_like(value, np.float64), np.zeros((2, 5))
  for t in (reversed(range(length)) if reverse else range(length)):
    state = decay[:, t] * state + value[:, t]
    expected[:, t] = state
  out = jax.jit(_linear_scan, static_argnums=(2, 3))(decay, value, reverse, block)
  _close(out, expected, F32_TOL)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("platform", ["cuda", "tpu"])
def test_pallas_kernels_lower_for_accelerators(monkeypatch, platform, dtype):
  """Every kernel, forward and backward, lowers for CUDA (Triton) and TPU (Mosaic) with
  jax.export from this CPU machine; compiling and running need the accelerator. C = D =
  512 is the shape that once gave the EMA-scan backward a wrong block spec."""
  from hnet.kernels import backend
  monkeypatch.setattr(backend, "target_platform", lambda: "gpu" if platform == "cuda" else platform)
  batch, length, dim, capacity = 2, 1000, 512, 512
  floats = lambda *shape: jax.ShapeDtypeStruct(shape, dtype)
  flags = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.bool_)
  cases = {
      "routing": (lambda q, k, s: boundary_probs(q, k, s, **PALLAS_COMPILED)[0].sum(),
                  (floats(batch, length, dim), floats(batch, length, dim), flags(batch, length)),
                  (0, 1)),
      "chunk": (lambda h, m, s: chunk(h, m, s, capacity, **PALLAS_COMPILED).chunks.astype(jnp.float32).sum(),
                (floats(batch, length, dim), flags(batch, length), flags(batch, length)), (0,)),
      "dechunk": (lambda z, p, r, i: dechunk(z, p, r, i, **PALLAS_COMPILED).astype(jnp.float32).sum(),
                  (floats(batch, capacity, dim), floats(batch, capacity), flags(batch, capacity),
                   jax.ShapeDtypeStruct((batch, length), jnp.int32)), (0, 1)),
  }
  kernel_call = {"cuda": "__gpu$xla.gpu.triton", "tpu": "tpu_custom_call"}[platform]
  allow = [jax.export.DisabledSafetyCheck.custom_call(kernel_call)]
  for name, (loss, args, argnums) in cases.items():
    for fn in (loss, jax.grad(loss, argnums=argnums)):
      exported = jax.export.export(jax.jit(fn), platforms=[platform], disabled_checks=allow)(*args)
      assert kernel_call in exported.mlir_module(), name


PALLAS_COMPILED = dict(implementation="pallas", interpret=False)
