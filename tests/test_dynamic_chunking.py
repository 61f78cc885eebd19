"""H-Net dynamic chunking: routing + chunk + dechunk vs a numpy variable-length loop,
capacity overflow, ratio loss, STE, per-byte dechunk step, layouts and lr multipliers."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from hnet.models import dynamic_chunking as dc
from hnet.models import layout as hl


def _stream(segment_ids):
  segment_ids = jnp.asarray(segment_ids, jnp.int32)
  start = dc.segment_starts(segment_ids)
  return dc.Stream(positions=dc.positions_within_document(start), segment_ids=segment_ids,
                   is_start=start, real=segment_ids > 0)


def _inputs(seed=0, B=3, L=20, D=8):
  rng = np.random.default_rng(seed)
  h = rng.normal(size=(B, L, D)).astype(np.float32)
  segment_ids = np.zeros((B, L), np.int32)
  segment_ids[0] = 1                       # one document
  segment_ids[1, :7], segment_ids[1, 7:] = 1, 2   # two documents
  segment_ids[2, :5], segment_ids[2, 5:15] = 1, 2  # two documents, then padding
  router = dc.Router(D)
  router.query[...] = jnp.asarray(np.eye(D) + 0.5 * rng.normal(size=(D, D)), jnp.float32)
  router.key[...] = jnp.asarray(np.eye(D) + 0.5 * rng.normal(size=(D, D)), jnp.float32)
  residual = rng.normal(size=(B, L, D)).astype(np.float32)
  return h, segment_ids, router, residual


def _inner_fn(chunks, positions):
  """A stand-in inner network: per-chunk, uses the chunk's position in its document."""
  return jnp.tanh(chunks) * (1.0 + 0.1 * positions[..., None].astype(jnp.float32))


def _kept_with_capacity(boundary, start, capacity):
  """One row's boundaries [L] bool and document starts [L] bool -> the kept ones [L]:
  in order, greedily, each boundary inside a document only while a slot is left for
  every document start after it (starts are boundaries; capacity None = keep all)."""
  if capacity is None:
    return boundary.copy()
  kept = np.zeros_like(boundary)
  used = 0
  for t in np.nonzero(boundary)[0]:
    starts_after = int(start[t + 1:].sum())
    if (used < capacity) if start[t] else (used + 1 + starts_after <= capacity):
      kept[t], used = True, used + 1
  return kept


def _numpy_reference(h, segment_ids, w_q, w_k, residual, capacity=None):
  """Exact variable-length semantics, one byte at a time; with a capacity, only the
  boundaries `_kept_with_capacity` keeps start chunks. A byte reads the EMA of its own
  document's kept chunks (zeros if its document has none)."""
  B, L, D = h.shape
  out = np.zeros_like(h)
  probs, masks = np.zeros((B, L)), np.zeros((B, L), bool)
  starts = np.zeros((B, L), bool)
  for b in range(B):
    previous = np.zeros(D)
    for t in range(L):
      start = t == 0 or segment_ids[b, t] != segment_ids[b, t - 1]
      q, k = previous @ w_q, h[b, t] @ w_k
      cos = q @ k / (max(np.linalg.norm(q), 1e-8) * max(np.linalg.norm(k), 1e-8))
      p = 1.0 if start else float(np.clip((1 - cos) / 2, 0, 1))
      probs[b, t], starts[b, t] = p, start
      masks[b, t] = p > 0.5 and (segment_ids[b, t] > 0 or start)
      previous = h[b, t]
    kept = _kept_with_capacity(masks[b], starts[b], capacity)
    z_bar, chunk_ordinal = np.zeros(D), -1
    for t in range(L):
      if starts[b, t]:
        z_bar, chunk_ordinal = np.zeros(D), -1
      if kept[t]:
        chunk_ordinal += 1
        z = np.tanh(h[b, t]) * (1.0 + 0.1 * chunk_ordinal)
        P = np.clip(probs[b, t], 1e-4, 1 - 1e-4)
        z_bar = P * z + (1 - P) * z_bar
      out[b, t] = z_bar + residual[b, t]
  return out, probs, masks


@pytest.mark.parametrize("implementation", ["jnp", "pallas"])
def test_chunk_dechunk_at_full_capacity_is_exact(implementation):
  h, segment_ids, router, residual = _inputs()
  routed, out = _route_dechunk(router, h, segment_ids, residual, h.shape[1], implementation)
  expected, probs, masks = _numpy_reference(h, segment_ids, np.asarray(router.query[...]),
                                            np.asarray(router.key[...]), residual)
  np.testing.assert_array_equal(np.asarray(routed.boundary_mask), masks)
  np.testing.assert_allclose(np.asarray(routed.boundary_prob), probs, atol=1e-5)
  assert 0 < masks.mean() < 1, "the test needs both boundaries and non-boundaries"
  real = segment_ids > 0
  np.testing.assert_allclose(np.asarray(out)[real], expected[real], atol=1e-5, rtol=1e-5)
  assert int(np.sum(routed.num_dropped)) == 0
  # Inner stream: kept count per row, per-document ordinals, padding never real.
  np.testing.assert_array_equal(np.asarray(routed.inner.real).sum(1), (masks & real).sum(1))
  assert not np.asarray(routed.inner.real)[np.asarray(routed.inner.segment_ids) == 0].any()


def _route_dechunk(router, h, segment_ids, residual, capacity, implementation):
  """Jitted route_and_chunk -> stand-in inner network -> dechunk_and_combine."""
  impl = dict(implementation=implementation, interpret=True)
  stream = _stream(segment_ids)

  @jax.jit
  def path(h, residual):
    routed = dc.route_and_chunk(router, h, stream, capacity, **impl)
    z = _inner_fn(routed.chunks, routed.inner.positions)
    return routed, dc.dechunk_and_combine(z, routed, residual, **impl)

  return path(jnp.asarray(h), jnp.asarray(residual))


def test_capacity_overflow_is_counted_and_drops_within_documents():
  h, segment_ids, router, residual = _inputs(seed=1)
  stream = _stream(segment_ids)
  full = dc.route_and_chunk(router, jnp.asarray(h), stream, h.shape[1])
  kept = np.asarray(full.boundary_mask).sum(1)
  capacity = int(kept.min()) - 2
  small, out_small = _route_dechunk(router, h, segment_ids, residual, capacity, "jnp")
  np.testing.assert_array_equal(np.asarray(small.num_dropped), kept - capacity)
  expected, _, _ = _numpy_reference(h, segment_ids, np.asarray(router.query[...]),
                                    np.asarray(router.key[...]), residual, capacity)
  np.testing.assert_allclose(np.asarray(out_small), expected, atol=1e-5, rtol=1e-5)
  # Row 0 (one document) keeps its first C boundaries; its later bytes read the last.
  first = np.nonzero(np.asarray(full.boundary_mask)[0])[0][:capacity]
  np.testing.assert_array_equal(np.asarray(small.chunk_byte_index)[0], first)


def _many_documents(seed, length=128, dim=8):
  """Packed rows at capacity 8 with overflows before later documents: row 0 three
  documents, row 1 thirteen (more than the capacity), row 2 two and padding."""
  h, _, router, _ = _inputs(seed=seed, B=3, L=length, D=dim)
  residual = np.random.default_rng(seed + 100).normal(size=h.shape).astype(np.float32)
  segment_ids = np.zeros((3, length), np.int32)
  for b, starts in enumerate([(0, 30, 70), tuple(range(0, length, 10)), (0, 50)]):
    for number, (begin, end) in enumerate(zip(starts, starts[1:] + (length,))):
      segment_ids[b, begin:end] = number + 1
  segment_ids[2, 100:] = 0  # padding
  return h, segment_ids, router, residual


@pytest.mark.parametrize("implementation", ["jnp", "pallas"])
def test_overflow_never_reads_another_documents_chunk(implementation):
  """Overflow (capacity 8, rows of 128) before later documents of the row: every byte
  reads a chunk of its own document, or none where the row has more documents than
  slots; outputs equal the per-document numpy reference with the same drops."""
  capacity = 8
  h, segment_ids, router, residual = _many_documents(seed=3)
  routed, out = _route_dechunk(router, h, segment_ids, residual, capacity, implementation)
  mask = np.asarray(routed.boundary_mask)
  assert (mask.sum(1) > capacity + 10).all(), "every row must overflow"
  index_of_byte = np.asarray(routed.chunk_index_of_byte)  # [B, L]
  byte_of_chunk = np.asarray(routed.chunk_byte_index)  # [B, C]
  for b in range(3):
    reads = index_of_byte[b] >= 0
    source = byte_of_chunk[b][index_of_byte[b][reads]]  # byte each byte's chunk came from
    np.testing.assert_array_equal(segment_ids[b][source], segment_ids[b][reads])
    # Nothing to read only for the documents after the C-th start (row 1's last five).
    start_rank = np.cumsum(np.asarray(dc.segment_starts(jnp.asarray(segment_ids)))[b])
    np.testing.assert_array_equal(~reads, start_rank > capacity)
  assert (index_of_byte[1] < 0).sum() == 48 and (index_of_byte[[0, 2]] >= 0).all()
  np.testing.assert_array_equal(np.asarray(routed.num_dropped),
                                mask.sum(1) - capacity)  # counted as before
  expected, _, _ = _numpy_reference(h, segment_ids, np.asarray(router.query[...]),
                                    np.asarray(router.key[...]), residual, capacity)
  real = segment_ids > 0
  np.testing.assert_allclose(np.asarray(out)[real], expected[real], atol=1e-5, rtol=1e-5)
  # A document with no slot reads nothing: its output is the residual alone.
  np.testing.assert_array_equal(np.asarray(out)[1, 80:], residual[1, 80:])


def test_capacity_for():
  assert dc.capacity_for(512, 6, 2.0) == 176  # ceil(512 * 2 / 6) = 171 -> 176
  assert dc.capacity_for(512, 6, 0.0) == 512
  assert dc.capacity_for(100, 2, 4.0) == 100  # never above L


def test_ratio_loss_formula():
  rng = np.random.default_rng(0)
  mask = rng.random((2, 30)) < 0.3
  prob = rng.random((2, 30)).astype(np.float32)
  real = np.ones((2, 30), bool)
  real[1, 20:] = False  # padding is excluded
  for n in (2.0, 3.0, 6.0):
    loss, f, g = dc.ratio_loss(jnp.asarray(mask), jnp.asarray(prob), jnp.asarray(real), n)
    F, G = mask[real].mean(), prob[real].mean()
    np.testing.assert_allclose(float(f), F, rtol=1e-6)
    np.testing.assert_allclose(float(g), G, rtol=1e-6)
    np.testing.assert_allclose(float(loss), n / (n - 1) * ((n - 1) * F * G + (1 - F) * (1 - G)),
                               rtol=1e-5)
  # Minimum 1 at F = G = 1/N; gradient only through G: dL/dG = N/(N-1) ((N-1) F - (1 - F)).
  n = 4.0
  mask = np.zeros((1, 8), bool)
  mask[0, :2] = True
  prob = np.full((1, 8), 0.25, np.float32)
  loss, _, _ = dc.ratio_loss(jnp.asarray(mask), jnp.asarray(prob), jnp.ones((1, 8), bool), n)
  np.testing.assert_allclose(float(loss), 1.0, rtol=1e-6)
  grad = jax.grad(lambda p: dc.ratio_loss(jnp.asarray(mask), p, jnp.ones((1, 8), bool), 6.0)[0])(
      jnp.asarray(prob))
  F = 0.25
  np.testing.assert_allclose(np.asarray(grad), np.full((1, 8), 6 / 5 * (5 * F - (1 - F)) / 8),
                             rtol=1e-5)


def test_ste_confidence_forward_one_gradient_of_c():
  prob = jnp.asarray([0.9, 0.2, 0.6, 0.3])
  mask = prob > 0.5
  np.testing.assert_allclose(np.asarray(dc.ste_confidence(prob, mask)), 1.0, atol=1e-7)
  grad = jax.grad(lambda p: jnp.sum(dc.ste_confidence(p, mask) * jnp.arange(1.0, 5.0)))(prob)
  np.testing.assert_allclose(np.asarray(grad), [1.0, -2.0, 3.0, -4.0])


def test_dechunk_step_matches_full_dechunk():
  h, segment_ids, router, residual = _inputs(seed=2)
  segment_ids = np.ones_like(segment_ids)  # decoding is one document per row
  stream = _stream(segment_ids)
  routed = dc.route_and_chunk(router, jnp.asarray(h), stream, h.shape[1])
  z = _inner_fn(routed.chunks, routed.inner.positions)
  full = np.asarray(dc.dechunk_and_combine(z, routed, jnp.asarray(residual)))
  B, L, D = h.shape
  z_bar = jnp.zeros((B, D))
  previous = jnp.zeros((B, D))
  count = np.zeros(B, np.int32)
  for t in range(L):
    prob, mask = router.step(previous, jnp.asarray(h[:, t]), jnp.asarray(t == 0).repeat(B))
    z_t = _inner_fn(jnp.asarray(h[:, t]), jnp.asarray(count))
    out, z_bar = dc.dechunk_step(z_t, z_bar, prob, mask, jnp.asarray(residual[:, t]))
    count += np.asarray(mask)
    previous = jnp.asarray(h[:, t])
    np.testing.assert_allclose(np.asarray(out), full[:, t], atol=1e-5, rtol=1e-5)


def test_positions_within_document():
  start = jnp.asarray([[1, 0, 0, 1, 0, 1, 1, 0]], bool)
  np.testing.assert_array_equal(np.asarray(dc.positions_within_document(start)),
                                [[0, 1, 2, 0, 1, 0, 0, 1]])


def test_layout_parsing():
  assert hl.parse_blocks("T1m4") == ("T", "m", "m", "m", "m")
  one = hl.parse_layout(["m4", "T22", "m4"])
  assert one == hl.parse_layout("[m4, T22, m4]")
  assert len(one) == 2 and one[0].encoder == ("m",) * 4 and one[1].main == ("T",) * 22
  two = hl.parse_layout("[m4, [T1m4, T27, m4T1], m4]")
  assert len(two) == 3 and two[1].encoder == ("T",) + ("m",) * 4
  assert two[1].decoder == ("m",) * 4 + ("T",) and two[2].main == ("T",) * 27
  assert hl.parse_layout(("m4", ["T1m4", ["T27"], "m4T1"], "m4")) == two
  for bad in ("x3", "T", "[m4, T2]", "[m4, T2, m4"):
    with pytest.raises(ValueError):
      hl.parse_layout(bad)


def test_stage_lr_multipliers_formula():
  import ml_collections
  m = ml_collections.ConfigDict({"layout": "[m4, [T1m4, T27, m4T1], m4]",
                                 "d_model": [1024, 1536, 2048], "target_ratio": [3, 3]})
  rules = hl.stage_lr_multipliers(m)
  expected = [math.sqrt(4.6 * 2048 / 1024), math.sqrt(4.6 / 3 * 2048 / 1536), math.sqrt(4.6 / 9)]
  for s, value in enumerate(expected):
    assert rules[f"^stages/{s}/"] == pytest.approx(value)
  assert rules["^(embed|head)/"] == pytest.approx(expected[0])
  assert expected[0] > expected[1] > expected[2]  # outer stages get a larger lr
  assert not any("router" in rule for rule in rules)
  m.router_lr_multiplier = 0.3
  rules = hl.stage_lr_multipliers(m)
  assert rules["^stages/0/router/"] == rules["^stages/1/router/"] == 0.3
  assert "^stages/2/router/" not in rules  # the innermost stage does not route


def test_router_identity_init():
  router = dc.Router(4)
  np.testing.assert_array_equal(np.asarray(router.query[...]), np.eye(4))
  np.testing.assert_array_equal(np.asarray(router.key[...]), np.eye(4))
  h = jnp.asarray(np.random.default_rng(0).normal(size=(1, 5, 4)), jnp.float32)
  # identical consecutive vectors -> p = 0 (no boundary) except at position 0
  h = h.at[:, 2].set(h[:, 1])
  prob, mask = router(h, _stream(np.ones((1, 5), np.int32)))
  assert float(prob[0, 0]) == 1.0 and bool(mask[0, 0])
  assert abs(float(prob[0, 2])) < 1e-6 and not bool(mask[0, 2])


def test_residual_projection_zero_init():
  proj = dc.ResidualProjection(6, rngs=nnx.Rngs(0))
  np.testing.assert_array_equal(np.asarray(proj.kernel[...]), 0.0)
