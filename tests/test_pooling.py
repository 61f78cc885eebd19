"""Word pooling: shapes, masking (a word sees only its own bytes), stream <-> grid moves."""
import functools
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from hnet.layers import pooling

B, W, LW, D = 2, 3, 5, 8


def _inputs(seed=0):
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.normal(size=(B, W, LW, D)), jnp.float32)
  lengths = np.array([[5, 2, 1], [3, 4, 0]])
  mask = jnp.asarray(np.arange(LW)[None, None] < lengths[..., None])
  byte_pos = jnp.asarray(np.arange(W * LW).reshape(1, W, LW).repeat(B, 0))
  word_pos = jnp.asarray(np.arange(W)[None].repeat(B, 0))
  return x, mask, byte_pos, word_pos


@pytest.mark.parametrize("kind", pooling.POOLING_KINDS)
def test_shapes_and_masking(kind):
  pool = pooling.make_pooling(kind, D, 12, num_heads=2, rngs=nnx.Rngs(0), num_layers=1)
  x, mask, byte_pos, word_pos = _inputs()
  pool = functools.partial(nnx.jit(lambda pool, *args: pool(*args)), pool)  # one program
  out = pool(x, mask, byte_pos, word_pos)
  assert out.shape == (B, W, 12) and np.isfinite(np.asarray(out)).all()
  # Changing masked-out slots (other words' padding) changes nothing.
  noise = jnp.asarray(np.random.default_rng(5).normal(size=x.shape), jnp.float32)
  changed = pool(jnp.where(mask[..., None], x, noise), mask, byte_pos, word_pos)
  np.testing.assert_allclose(np.asarray(changed)[np.asarray(mask.any(-1))],
                             np.asarray(out)[np.asarray(mask.any(-1))], atol=1e-6)
  # Changing a real byte of word (0, 1) changes that word only.
  bumped = pool(x.at[0, 1, 0].add(1.0), mask, byte_pos, word_pos)
  diff = np.abs(np.asarray(bumped) - np.asarray(out)).max(-1)
  assert diff[0, 1] > 1e-4 and np.delete(diff.reshape(-1), 1).max() == 0.0


def test_mean_pooling_value():
  pool = pooling.MeanPooling(D, D, rngs=nnx.Rngs(0))
  x, mask, _, _ = _inputs()
  mean = np.asarray(x[0, 1, :2]).mean(0)
  expected = pool.out(pool.norm(jnp.asarray(mean)))
  np.testing.assert_allclose(np.asarray(pool(x, mask))[0, 1], np.asarray(expected), atol=1e-6)


def test_query_pooling_rope_is_relative():
  """RoPE with the word position on the query and byte positions on the keys: shifting
  both by the same offset leaves the pooled vector unchanged."""
  pool = pooling.QueryPooling(D, D, 2, rngs=nnx.Rngs(0))
  x, mask, byte_pos, word_pos = _inputs()
  out = pool(x, mask, byte_pos, word_pos)
  shifted = pool(x, mask, byte_pos + 7, word_pos + 7)
  np.testing.assert_allclose(np.asarray(shifted), np.asarray(out), atol=1e-5)
  moved = pool(x, mask, byte_pos + 3, word_pos)
  assert not np.allclose(np.asarray(moved), np.asarray(out), atol=1e-5)


def test_cls_pooling_is_bidirectional():
  """LYT's in-word encoder sees the whole word: the last byte changes the word vector,
  and so does the first."""
  pool = pooling.ClsPooling(D, D, 2, rngs=nnx.Rngs(0), num_layers=1)
  x, mask, _, _ = _inputs()
  out = np.asarray(pool(x, mask))
  for k in (0, 4):
    assert not np.allclose(np.asarray(pool(x.at[0, 0, k].add(1.0), mask))[0, 0], out[0, 0])


def test_stream_grid_round_trip():
  word_index = jnp.asarray([[0, 0, 1, 1, 1, 2, 3, 3]])
  byte_in_word = jnp.asarray([[0, 1, 0, 1, 2, 0, 0, 1]])
  x = jnp.arange(8.0).reshape(1, 8, 1) + 1
  grid = pooling.stream_to_words(x, word_index, byte_in_word, 3, 2)   # word 3 and byte 2 of word 1 overflow
  np.testing.assert_array_equal(np.asarray(grid)[0, :, :, 0], [[1, 2], [3, 4], [6, 0]])
  back = pooling.words_to_stream(grid, jnp.asarray([[0, 0, 1, 1, 2]]), jnp.asarray([[0, 1, 0, 1, 0]]))
  np.testing.assert_array_equal(np.asarray(back)[0, :, 0], [1, 2, 3, 4, 6])
  words = jnp.arange(6.0).reshape(1, 3, 2)
  np.testing.assert_array_equal(np.asarray(pooling.gather_words(words, jnp.asarray([[2, 0, 5]])))[0],
                                [[4, 5], [0, 1], [4, 5]])
