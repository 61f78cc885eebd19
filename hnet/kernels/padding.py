"""Shape helpers shared by the Pallas kernels (power-of-two blocks, padding)."""
import jax
import jax.numpy as jnp


def next_pow2(n: int) -> int:
  """Smallest power of two >= n (1 for n <= 1)."""
  return 1 << max(0, (n - 1).bit_length())


def pad_to(x: jax.Array, axis: int, size: int, value=0) -> jax.Array:
  """Pads `axis` of x at the end with `value` up to `size`."""
  pad = size - x.shape[axis]
  if pad == 0:
    return x
  widths = [(0, 0)] * x.ndim
  widths[axis] = (0, pad)
  return jnp.pad(x, widths, constant_values=value)
