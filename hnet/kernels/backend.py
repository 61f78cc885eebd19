"""Which platform a step is traced for, and the Pallas backend the kernels lower to on each.

`target_platform()` is the platform being compiled for: the default backend, or the one a
`compiling_for` block names (ahead-of-time compiles for devices this machine lacks).
The kernels read it, and so does `hnet.layers.attention.attend`, whose formulation
differs between the CPU and accelerators.

jax >= 0.7 lowers a `pallas_call` without compiler parameters to Mosaic GPU on NVIDIA
GPUs. Mosaic GPU cannot lower these kernels (reductions over one axis of a block raise
"No support for axes yet"), while Triton can, so on GPU every kernel asks for Triton.
On TPU the default, Mosaic TPU, is kept (the kernels' blocks keep their last dimension
whole or a multiple of 128, and per-position values are [n, 1] columns, as its tiling
wants); on CPU the kernels run in interpret mode and need no parameters.
tests/test_kernels.py lowers every kernel for CUDA and TPU on a CPU-only machine
(jax.export), so a lowering fault shows up without an accelerator; hnet/kernel_aot.py
compiles them for a TPU topology and a GPU target, inside `compiling_for(platform)`
(the default backend there is the CPU, which would pick no Triton parameters).
"""
import contextlib
from typing import Iterator

import jax
from jax.experimental.pallas import triton as pltriton

_TARGETS: list[str] = []


@contextlib.contextmanager
def compiling_for(platform: str) -> Iterator[None]:
  """Kernels traced inside the block are for `platform` ("gpu", "tpu" or "cpu"), whatever
  the default backend is (ahead-of-time compilation for devices this machine lacks)."""
  platform = {"cuda": "gpu", "rocm": "gpu"}.get(platform, platform)
  _TARGETS.append(platform)
  try:
    yield
  finally:
    _TARGETS.pop()


def target_platform() -> str:
  """The platform the kernels are lowered for: the one `compiling_for` names, else the
  default backend ("cpu", "gpu", "tpu")."""
  return _TARGETS[-1] if _TARGETS else jax.default_backend()


def compiler_params(num_warps: int = 4, num_stages: int = 2):
  """Compiler parameters for a pallas_call: Triton's on GPU, None (the default) elsewhere."""
  if target_platform() == "gpu":
    return pltriton.CompilerParams(num_warps=num_warps, num_stages=num_stages)
  return None
