"""Which Pallas backend the kernels lower to on each platform.

jax >= 0.7 lowers a `pallas_call` without compiler parameters to Mosaic GPU on NVIDIA
GPUs. Mosaic GPU cannot lower these kernels (reductions over one axis of a block raise
"No support for axes yet"), while Triton can, so on GPU every kernel asks for Triton.
On CPU the kernels run in interpret mode and need no parameters. TPU is not supported
yet: Mosaic TPU wants the last two block dimensions to be multiples of (8, 128) or whole,
and the [B, L] blocks of these kernels are (1, block) slices; the jnp path runs there.
tests/test_kernels.py lowers every kernel for CUDA on this CPU-only machine (jax.export)
so a GPU lowering failure shows up without a GPU.
"""
import jax
from jax.experimental.pallas import triton as pltriton


def target_platform() -> str:
  """The platform the kernels are lowered for: the default backend ("cpu", "gpu", "tpu")."""
  return jax.default_backend()


def compiler_params(num_warps: int = 4, num_stages: int = 2):
  """Compiler parameters for a pallas_call: Triton's on GPU, None (default) elsewhere."""
  platform = target_platform()
  if platform == "gpu":
    return pltriton.CompilerParams(num_warps=num_warps, num_stages=num_stages)
  if platform == "tpu":
    raise NotImplementedError(
        "the Pallas routing kernels lower for GPU (Triton) and run in interpret mode on "
        "CPU, not for TPU yet; on TPU use the jnp path: --config.model.implementation=jnp")
  return None
