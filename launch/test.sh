#!/usr/bin/env bash
# Quickstart test command: set up, then run the test suite (8 simulated CPU devices per
# process). Two tiers:
#   bash launch/test.sh          the default tier: every model's causality, sharded =
#                                single-device, fast-path parity and overfit tests, the
#                                kernels, data, training loop and checkpoints (pytest -m
#                                "not slow")
#   bash launch/test.sh --slow   the slow tier (-m slow): trained fixtures exported to
#                                transformers, TPU/GPU AOT compiles, SLURM, the GCS
#                                emulator, multi-process runs
#   bash launch/test.sh --all    both in one pytest run (what CI runs)
# Other arguments go to pytest. Every tier compiles for compile speed (HNET_TEST_FAST_COMPILE,
# tests/conftest.py: XLA:CPU backend level 0 and the classic emitters; these tiny programs
# are compile-bound) and runs on 2 pytest-xdist workers (one per core, up to 2; --dist
# loadfile: a file runs on one worker and builds its fixtures once; the heaviest files
# start first, tests/file_seconds.json). HNET_TEST_WORKERS=N sets the number of workers.
set -euo pipefail
cd "$(dirname "$0")/.."
tier=default
case "${1:-}" in
  --slow) tier=slow; shift ;;
  --all) tier=all; shift ;;
esac
bash launch/setup.sh --dev
if [ "$tier" != default ]; then
  # tests/test_aot.py's compile-only venv (libtpu, the CUDA PJRT plugin): set up here, not
  # inside the timed test run; if it fails, test_aot.py runs it again and reports why.
  bash launch/setup_aot.sh || echo "launch/setup_aot.sh failed: tests/test_aot.py will say why" >&2
fi
workers=${HNET_TEST_WORKERS:-$(( $(nproc) >= 2 ? 2 : 1 ))}
xdist=()
if [ "$workers" -gt 1 ]; then xdist=(-n "$workers" --dist loadfile --no-loadscope-reorder); fi
case "$tier" in
  default) marks=(-m "not slow") ;;
  slow) marks=(-m slow) ;;
  all) marks=() ;;
esac
echo "== pytest ${marks[*]} on $workers worker(s)" >&2
export HNET_TEST_FAST_COMPILE=${HNET_TEST_FAST_COMPILE:-1}
exec .venv/bin/python -m pytest -q "${xdist[@]}" "${marks[@]}" tests "$@"
