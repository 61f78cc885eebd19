"""The hand-written attention backward, fused projections, the transposed-key decode
cache and the standard FLOPs count."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import transformer_tiny
from hnet.layers import attention, linear
from hnet.perf import compiled_flops, transformer_model_flops


def reference_attend(q, k, v, mask, logit_bias=None, use_softmax1=False):
  """The attention as plain jnp (autodiff gives its gradient): q [B, L, H, Dh], k/v [B, S, K, Dh]."""
  B, L, H, Dh = q.shape
  K = k.shape[2]
  q = q.reshape(B, L, K, H // K, Dh)
  logits = jnp.einsum("blkgd,bskd->bkgls", q, k) * Dh ** -0.5
  logits = logits.reshape(B, H, L, -1)
  if logit_bias is not None:
    logits = logits + logit_bias
  logits = jnp.where(mask, logits, attention.NEG_INF)
  weights = (attention.softmax1 if use_softmax1 else jax.nn.softmax)(logits, axis=-1)
  out = jnp.einsum("bkgls,bskd->blkgd", weights.reshape(B, K, H // K, L, -1), v)
  return out.reshape(B, L, H, Dh)


def _mask(kind, B, L, S, rng):
  if kind == "packed_causal":
    seg = jnp.asarray(np.sort(rng.integers(0, 3, (B, S)), axis=1))
    index = jnp.broadcast_to(jnp.arange(S), (B, S))
    return attention.make_mask(seg[:, :L], seg, index[:, :L], index)
  if kind == "window":
    seg = jnp.ones((B, S), jnp.int32)
    index = jnp.broadcast_to(jnp.arange(S), (B, S))
    return attention.make_mask(seg[:, :L], seg, index[:, :L], index, window=3)
  if kind == "keys_only":  # [B, 1, 1, S], as the per-row decoding of H-Net / HAT passes it
    return jnp.asarray(rng.random((B, 1, 1, S)) < 0.6).at[..., 0].set(True)
  return jnp.zeros((B, 1, L, S), bool).at[:, :, :2].set(True)  # rows 2.. fully masked


@pytest.mark.parametrize("kind", ["packed_causal", "window", "keys_only", "fully_masked_rows"])
@pytest.mark.parametrize("kv_heads", [4, 2])
@pytest.mark.parametrize("bias_shape,use_softmax1", [
    (None, False), (None, True), ("heads", False), ("keys", True)])
def test_hand_written_backward_matches_autodiff(kind, kv_heads, bias_shape, use_softmax1):
  """Outputs and gradients (q, k, v and the logit bias) equal autodiff of the plain jnp
  attention: grouped-query heads, packed documents, windows, [B, 1, 1, S] masks, rows
  with every key masked, MrT5's softmax1 and biases of shape [1, H, L, S] / [B, 1, 1, S]."""
  rng = np.random.default_rng(0)
  B, L, S, H, Dh = 2, 12, 12, 4, 8
  q = jnp.asarray(rng.normal(size=(B, L, H, Dh)), jnp.float32)
  k = jnp.asarray(rng.normal(size=(B, S, kv_heads, Dh)), jnp.float32)
  v = jnp.asarray(rng.normal(size=(B, S, kv_heads, Dh)), jnp.float32)
  bias = {None: None, "heads": (1, H, L, S), "keys": (B, 1, 1, S)}[bias_shape]
  bias = None if bias is None else jnp.asarray(rng.normal(size=bias) * 2, jnp.float32)
  mask = _mask(kind, B, L, S, rng)
  cotangent = jnp.asarray(rng.normal(size=(B, L, H, Dh)), jnp.float32)

  def loss(fn):
    return lambda q, k, v, bias: jnp.sum(fn(q, k, v, mask, bias, use_softmax1=use_softmax1) * cotangent)
  argnums = (0, 1, 2) if bias is None else (0, 1, 2, 3)
  got = attention.attend(q, k, v, mask, bias, use_softmax1=use_softmax1)
  want = reference_attend(q, k, v, mask, bias, use_softmax1=use_softmax1)
  np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)
  grads = jax.grad(loss(attention.attend), argnums)(q, k, v, bias)
  want_grads = jax.grad(loss(reference_attend), argnums)(q, k, v, bias)
  for name, g, w in zip("qkvb", grads, want_grads):
    assert g.shape == w.shape, name
    np.testing.assert_allclose(g, w, atol=1e-5, rtol=1e-5, err_msg=f"d{name}")
  assert float(jnp.max(jnp.abs(grads[0]))) > 0  # the cotangent reaches q


@pytest.mark.parametrize("kv_heads", [4, 2])
@pytest.mark.parametrize("bias_shape,use_softmax1", [(None, False), ("keys", True)])
def test_accelerator_form_matches_reference(kv_heads, bias_shape, use_softmax1):
  """Traced for a TPU or GPU (`backend.compiling_for`; run here on the CPU), attend() is
  the grouped-query form with autodiff, not the CPU's heads-major custom VJP, and
  project_together keeps the layers apart: same values and gradients as the reference."""
  from hnet.kernels import backend
  rng = np.random.default_rng(1)
  B, L, H, Dh = 2, 10, 4, 8
  q = jnp.asarray(rng.normal(size=(B, L, H, Dh)), jnp.float32)
  k, v = (jnp.asarray(rng.normal(size=(B, L, kv_heads, Dh)), jnp.float32) for _ in range(2))
  bias = None if bias_shape is None else jnp.asarray(rng.normal(size=(B, 1, 1, L)), jnp.float32)
  mask = _mask("packed_causal", B, L, L, rng)
  loss = lambda fn: lambda q, k, v: jnp.sum(jnp.sin(fn(q, k, v, mask, bias, use_softmax1=use_softmax1)))
  want = jax.value_and_grad(loss(reference_attend), (0, 1, 2))(q, k, v)
  for platform in ("tpu", "gpu"):
    with backend.compiling_for(platform):
      jaxpr = str(jax.make_jaxpr(loss(attention.attend))(q, k, v))
      got = jax.value_and_grad(loss(attention.attend), (0, 1, 2))(q, k, v)
      layers = [linear.Dense(8, n, rngs=nnx.Rngs(0)) for n in (8, 4)]
      projections = str(jax.make_jaxpr(lambda x: linear.project_together(x, layers))(q[..., 0, :]))
    assert "custom_vjp" not in jaxpr and "concatenate" not in projections, platform
    np.testing.assert_allclose(got[0], want[0], rtol=1e-5)
    for g, w in zip(got[1], want[1]):
      np.testing.assert_allclose(g, w, atol=1e-5, rtol=1e-5)
  cpu_jaxpr = str(jax.make_jaxpr(loss(attention.attend))(q, k, v))
  assert "custom_vjp" in cpu_jaxpr  # the CPU's own form, outside the block


def test_project_together_equals_separate_layers():
  """One matmul over concatenated kernels gives each layer's own output."""
  rngs = nnx.Rngs(0)
  layers = [linear.Dense(16, n, rngs=rngs) for n in (24, 8, 8)]
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 5, 16)), jnp.float32)
  for got, layer in zip(linear.project_together(x, layers), layers):
    np.testing.assert_allclose(got, layer(x), atol=1e-6, rtol=1e-6)


def test_unfused_projections_give_the_fused_values():
  """Within linear.unfused_projections() project_together runs one matmul per layer
  (what the decode loops trace into conditionals): the same outputs as fused."""
  rngs = nnx.Rngs(0)
  layers = [linear.Dense(16, n, rngs=rngs) for n in (24, 8, 8)]
  x = jnp.asarray(np.random.default_rng(1).normal(size=(3, 16)), jnp.float32)
  fused = linear.project_together(x, layers)
  with linear.unfused_projections():
    unfused = linear.project_together(x, layers)
    traced = jax.make_jaxpr(lambda x: linear.project_together(x, layers))(x)
  assert "concatenate" not in str(traced)
  assert "concatenate" in str(jax.make_jaxpr(lambda x: linear.project_together(x, layers))(x))
  for got, want in zip(unfused, fused):
    np.testing.assert_allclose(got, want, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("window,kv_heads,use_softmax1", [
    (None, 4, False), (3, 2, False), (None, 2, True)])
def test_transposed_key_cache_steps_equal_the_plain_cache(batch, window, kv_heads, use_softmax1):
  """Attention.decode with keys_transposed (a prefill of 4 positions, then one position
  per step through attend_cache_and_new: the cache before the update plus the new key)
  gives the outputs of the plain [B, K, S, Dh] cache, and the same cache contents."""
  attn = attention.Attention(32, 4, rngs=nnx.Rngs(0), num_kv_heads=kv_heads, window=window,
                             use_softmax1=use_softmax1)
  x = jnp.asarray(np.random.default_rng(2).normal(size=(batch, 9, 32)), jnp.float32)
  outputs = {}
  decode = nnx.jit(lambda attn, x, cache, index: attn.decode(x, cache, index))
  for transposed in (False, True):
    cache = attn.init_cache(batch, 12, keys_transposed=transposed)
    out, cache = decode(attn, x[:, :4], cache, jnp.asarray(0))
    steps = [out]
    for t in range(4, 9):
      out, cache = decode(attn, x[:, t:t + 1], cache, jnp.asarray(t))
      steps.append(out)
    keys = jnp.swapaxes(cache["k_transposed"], 2, 3) if transposed else cache["k"]
    outputs[transposed] = (jnp.concatenate(steps, axis=1), keys, cache["v"])
  for got, want in zip(outputs[True], outputs[False]):
    np.testing.assert_allclose(got, want, atol=2e-6, rtol=2e-5)
  full = nnx.jit(lambda attn, x, positions, segment_ids: attn(x, positions, segment_ids))(
      attn, x, jnp.broadcast_to(jnp.arange(9), (batch, 9)), jnp.ones((batch, 9), jnp.int32))
  np.testing.assert_allclose(outputs[True][0], full, atol=2e-5, rtol=2e-4)


def test_standard_model_flops_count():
  """6 x (parameters but the input embedding) x tokens + 12 x layers x dim x seq_len x
  tokens, and within 5% of XLA's own count of the compiled train step."""
  from hnet import sharding
  from hnet.testing import packed_byte_batch
  from hnet.train import jit_train_step, make_setup
  c = transformer_tiny.get_config()
  c.model.dim, c.model.mlp_dim, c.model.num_layers, c.data.seq_len = 64, 192, 2, 128
  c.train.batch_size, c.mesh.data = 4, 1
  D, F, V, layers, T = 64, 192, c.model.vocab_size, 2, 128
  tokens = 4 * T
  mesh = sharding.make_mesh(1, 1, 1, devices=jax.devices()[:1])
  setup = make_setup(c, mesh)
  params = setup.abstract_state["params"]
  weights = layers * (4 * D * D + 3 * D * F + 2 * D) + D + D * V  # blocks, norms, head
  standard = transformer_model_flops(params, num_layers=layers, dim=D, seq_len=T, tokens=tokens)
  assert standard == 6 * weights * tokens + 12 * layers * D * T * tokens
  batch = packed_byte_batch(0, 4, T)
  with jax.set_mesh(mesh):
    compiled = jit_train_step(setup, batch).lower(setup.abstract_state, batch).compile()
  assert abs(compiled_flops(compiled) / standard - 1) < 0.05, (compiled_flops(compiled), standard)
