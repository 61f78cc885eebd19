"""Ahead-of-time compilation for TPU topologies and GPUs on this CPU machine
(tools/aot_check.py, hnet/aot.py, hnet/kernel_aot.py), with the real libtpu and CUDA
PJRT plugin of requirements-aot.txt in their own venv, .venv-aot (created or updated by
launch/setup_aot.sh). Each check runs as its own process of
tools/aot_check.py, the command a user runs before renting a pod.
"""
import json
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
AOT_PYTHON = ROOT / ".venv-aot" / "bin" / "python"

@pytest.fixture(scope="module")
def aot_python() -> pathlib.Path:
  """.venv-aot, created or brought up to requirements-aot.txt (idempotent; about a minute
  the first time, seconds after)."""
  subprocess.run(["bash", str(ROOT / "launch" / "setup_aot.sh")], check=True, cwd=ROOT)
  return AOT_PYTHON


def run_aot_check(aot_python, tmp_path, *args) -> tuple[int, str, dict]:
  """Runs tools/aot_check.py; returns (exit status, stdout, its --json figures)."""
  out = tmp_path / "aot.json"
  env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_PLATFORMS")}
  proc = subprocess.run([str(aot_python), str(ROOT / "tools" / "aot_check.py"), *args,
                         f"--json={out}"], cwd=ROOT, env=env, capture_output=True, text=True,
                        timeout=1800)
  sys.stdout.write(proc.stdout)
  figures = json.loads(out.read_text()) if out.exists() else {}
  assert proc.returncode in (0, 2), proc.stderr[-4000:]
  return proc.returncode, proc.stdout, figures


def _check_kernels(aot_python, tmp_path, topology, platform, backend):
  code, stdout, figures = run_aot_check(aot_python, tmp_path, "--kernels",
                                        f"--topology={topology}")
  assert code == 0, stdout
  results = figures["kernels"]
  cases = {(r["kernel"], r["pass"], r["dtype"]) for r in results}
  assert cases == {(k, p, d) for k in ("routing", "chunk", "dechunk")
                   for p in ("forward", "backward") for d in ("float32", "bfloat16")}
  for r in results:
    assert r["platform"] == platform and r["backend"] == backend, r
    # The kernels themselves are in the device code, not replaced or dropped.
    expected = {"routing": "hnet_routing", "chunk": "hnet_match_matmul",
                "dechunk": "hnet_ema_scan"}[r["kernel"]]
    assert any(k.startswith(expected) for k in r["device_kernels"]), r


@pytest.mark.slow
def test_pallas_kernels_compile_for_tpu(aot_python, tmp_path):
  _check_kernels(aot_python, tmp_path, "v5e:2x2", "tpu", "Mosaic TPU")


@pytest.mark.slow
def test_pallas_kernels_compile_to_ptx_for_gpu(aot_python, tmp_path):
  _check_kernels(aot_python, tmp_path, "h100:1", "gpu", "Triton -> PTX")
