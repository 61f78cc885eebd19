"""Compile the Pallas chunk-routing kernels for an accelerator this machine does not have.

  results = compile_all(aot.tpu_devices("v5e:2x2")[:1])   # Mosaic TPU -> TPU executable
  results = compile_all(aot.gpu_devices("h100", 1))       # Triton -> PTX -> H100 cubin

Every kernel (routing, chunk, dechunk), forward and backward in one program, float32 and bfloat16, at
C = D = 512 (the shape that once gave the EMA-scan backward a wrong block spec) and an L
that is not a multiple of the blocks. Each is jitted with its inputs placed on the target
device and compiled by that platform's compiler, which runs the kernel's own compiler
(Mosaic for TPU; Triton to PTX and ptxas for CUDA): block shapes, tiling and register /
shared-memory limits that interpret mode never checks. A result names the kernels found
in what the compiler produced: on TPU the Mosaic custom calls of the compiled program,
on GPU the `.entry hnet_*` functions of the PTX that XLA dumps (the Triton kernels,
compiled for sm_90a), so a kernel the compiler had silently dropped would show.
What this cannot show: speed, autotuning choices (num_warps / num_stages, block sizes)
and numerics on the chip; those need the hardware.
"""
from __future__ import annotations

import glob
import os
import re
import tempfile
import time
from typing import Callable

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec

from hnet import aot
from hnet.kernels import backend, boundary_probs, chunk, dechunk

BATCH, LENGTH, DIM, CAPACITY = 2, 1000, 512, 512
PALLAS = dict(implementation="pallas", interpret=False)

KERNEL_BACKENDS = {"tpu": "Mosaic TPU", "gpu": "Triton -> PTX"}


def kernel_cases(dtype) -> dict[str, tuple[Callable, tuple, tuple[int, ...]]]:
  """name -> (scalar loss of the kernel's outputs, abstract arguments, differentiable argnums)."""
  floats = lambda *shape: jax.ShapeDtypeStruct(shape, dtype)
  flags = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.bool_)
  B, L, D, C = BATCH, LENGTH, DIM, CAPACITY
  return {
      "routing": (lambda q, k, s: boundary_probs(q, k, s, **PALLAS)[0].sum(),
                  (floats(B, L, D), floats(B, L, D), flags(B, L)), (0, 1)),
      "chunk": (lambda h, m, s: chunk(h, m, s, C, **PALLAS).chunks.astype(jnp.float32).sum(),
                (floats(B, L, D), flags(B, L), flags(B, L)), (0,)),
      "dechunk": (lambda z, p, r, i: dechunk(z, p, r, i, **PALLAS).astype(jnp.float32).sum(),
                  (floats(B, C, D), floats(B, C), flags(B, C),
                   jax.ShapeDtypeStruct((B, L), jnp.int32)), (0, 1)),
  }


def platform_of(device) -> str:
  return {"cuda": "gpu", "rocm": "gpu"}.get(device.client.platform, device.client.platform)


def compile_kernel(fn: Callable, args: tuple, device) -> tuple[object, float, list[str]]:
  """Compiles fn(*args) with every argument on `device`; returns (compiled, seconds, the
  names of the hnet_* kernels in the device code, one per kernel launch site)."""
  mesh = jax.sharding.Mesh([device], ("one",))
  placed = NamedSharding(mesh, PartitionSpec())
  args = tuple(jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=placed) for a in args)
  platform = platform_of(device)
  with tempfile.TemporaryDirectory() as dump, backend.compiling_for(platform):
    start = time.perf_counter()
    lowered = jax.jit(fn).lower(*args)
    options = {"xla_dump_to": dump} if platform == "gpu" else {}
    compiled = lowered.compile(compiler_options=options)
    seconds = time.perf_counter() - start
    if platform == "gpu":
      ptx = "".join(open(f).read() for f in sorted(glob.glob(os.path.join(dump, "*.ptx"))))
      names = re.findall(r"\.entry (hnet_\w+)\(", ptx)
    else:
      calls = [line for line in compiled.as_text().splitlines() if "tpu_custom_call" in line]
      names = [n.rstrip("_") for n in re.findall(r"(hnet_\w+)", "\n".join(calls))]
  return compiled, seconds, names


def compile_all(devices) -> list[dict]:
  """Compiles every kernel, f32 and bf16, for devices[0]: one program per kernel and dtype
  holding the forward pass and the backward pass (a training step's value and gradient),
  so each kernel's forward and backward device kernels are compiled once, together."""
  device = devices[0]
  platform = platform_of(device)
  results = []
  for dtype in (jnp.float32, jnp.bfloat16):
    for name, (loss, args, argnums) in kernel_cases(dtype).items():
      fn = jax.value_and_grad(loss, argnums=argnums)
      compiled, seconds, kernels = compile_kernel(fn, args, device)
      results.append({"kernel": name, "pass": "forward and backward",
                      "dtype": jnp.dtype(dtype).name,
                      "platform": aot.executable_platform(compiled),
                      "backend": KERNEL_BACKENDS.get(platform, platform),
                      "compile_seconds": seconds, "device_kernels": sorted(set(kernels))})
  return results
