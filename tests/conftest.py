"""Test setup: 8 simulated CPU devices, set before JAX is imported anywhere.

XLA compiles are most of the suite's time, and many tests compile the same programs (the
tiny configs' train steps, in this process and in the tools' subprocesses). One
persistent compilation cache per pytest run, a fresh temporary directory, serves them all:
each run starts cold, so its time is what a clean clone takes. The environment variables
reach the subprocesses; pytest-xdist workers share the controller's directory.
HNET_TEST_JAX_CACHE=<dir> keeps the cache across runs instead.
"""
import atexit
import gc
import os
import resource
import shutil
import sys
import tempfile

_xla_flags = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
# HNET_TEST_FAST_COMPILE=1 compiles for compile speed: XLA:CPU's backend (LLVM) at
# optimisation level 0 and its classic fused-loop emitters instead of the MLIR fusion
# emitters. The tests' programs are tiny and compile-bound: level 0 takes ~1.8x less CPU
# (tests/test_mrt5.py 167 -> 92 CPU s, tests/test_kernels.py 123 -> 65), the classic
# emitters another ~1.6x (tests/test_mrt5.py 105 -> 64 CPU s, tests/test_hat.py 74 -> 55;
# 50 random normals in one program compile in 3.1 s instead of 5.1, and model init is
# mostly those). Float32 results move by ~1e-5 (unvectorised sums), which the checks
# against torch allow for (tests/test_export_hnet.py). launch/test.sh sets it; a plain
# `pytest` compiles as XLA does by default. Subprocesses get the same flags
# (hnet.testing.subprocess_xla_flags).
if os.environ.get("HNET_TEST_FAST_COMPILE") == "1":
  for _flag in ("--xla_backend_optimization_level=0", "--xla_cpu_use_fusion_emitters=false"):
    if _flag.split("=")[0] not in _xla_flags:
      _xla_flags += " " + _flag
os.environ["XLA_FLAGS"] = _xla_flags.strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  if os.environ.get("HNET_TEST_JAX_CACHE"):
    os.environ["JAX_COMPILATION_CACHE_DIR"] = os.environ["HNET_TEST_JAX_CACHE"]
  else:
    _cache_dir = tempfile.mkdtemp(prefix="hnet-test-jax-cache-")
    atexit.register(shutil.rmtree, _cache_dir, ignore_errors=True)
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache_dir
# every compile is cached, however short or small
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")


def pytest_configure(config):
  config.addinivalue_line(
      "markers", "slow: the slow tier (bash launch/test.sh --slow; CI runs both tiers): "
      "trained fixtures exported to transformers, AOT compiles, SLURM, GCS, several processes")


def pytest_collection_modifyitems(config, items):
  """Heaviest files first: pytest-xdist (`--dist loadfile --no-loadscope-reorder`, as
  launch/test.sh runs it) then hands each worker the longest file left, and no long file
  starts last while the other worker idles. Weights: tests/file_seconds.json
  (tools/suite_file_seconds.py); the order within a file is kept. Without xdist the order
  does not matter."""
  from tools.suite_file_seconds import file_weight, load_table
  table = load_table()
  items.sort(key=lambda item: -file_weight(table, item.nodeid))  # stable within a file


def pytest_collection_finish(session):
  """Everything imported so far (jax, flax, orbax, grain, the test modules) lives until the
  end: moved out of the collector's reach, the suite's many tracing passes collect over a
  smaller heap (gc.freeze; about 5% off one compile-bound test, within a suite run's noise)."""
  gc.freeze()


def _cpu_seconds() -> float:
  """User + system CPU seconds of this process and its finished subprocesses."""
  own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
  return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


_phase_start_cpu = [0.0]


def pytest_runtest_logstart(nodeid, location):
  _phase_start_cpu[0] = _cpu_seconds()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
  """Each phase's report carries the CPU seconds it took (all threads, subprocesses
  included): unlike wall time, about the same on a loaded machine."""
  outcome = yield
  now = _cpu_seconds()
  outcome.get_result().user_properties.append(("cpu_seconds", now - _phase_start_cpu[0]))
  _phase_start_cpu[0] = now


def pytest_runtest_logreport(report):
  """HNET_TEST_TIMES=<file>: append "<wall s> <CPU s> <phase> <outcome> <worker> <test id>"
  as each phase ends, so
  a run that is stopped early still says where its time went (under xdist the controller
  writes every worker's reports; `report.node` is the worker, "-" without xdist)."""
  path = os.environ.get("HNET_TEST_TIMES")
  if path and not os.environ.get("PYTEST_XDIST_WORKER"):  # xdist: the controller writes
    with open(path, "a") as f:
      worker = getattr(getattr(report, "node", None), "gateway", None)
      worker = worker.id if worker else "-"
      cpu = dict(report.user_properties).get("cpu_seconds", float("nan"))
      f.write(f"{report.duration:9.2f} {cpu:9.2f} {report.when:8s} {report.outcome:7s} "
              f"{worker:3s} {report.nodeid}\n")
