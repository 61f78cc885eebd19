#!/usr/bin/env bash
# Quickstart test command: set up, then run the test suite (8 simulated CPU devices per
# process). Two tiers:
#   bash launch/test.sh          the default tier: every model's causality, sharded =
#                                single-device, fast-path parity and overfit tests, the
#                                kernels, data, training loop and checkpoints (pytest -m
#                                "not slow"), compiled at XLA:CPU backend level 0, which
#                                takes ~1.8x less CPU for these compile-bound programs
#   bash launch/test.sh --slow   the slow tier (-m slow): trained fixtures exported to
#                                transformers, TPU/GPU AOT compiles, SLURM, the GCS
#                                emulator, multi-process runs; default code generation
#   bash launch/test.sh --all    both, one after the other (what CI runs)
# Other arguments go to pytest. The default tier runs on 2 pytest-xdist workers (one per
# core, up to 2; --dist loadfile: a file's fixtures are built once), the slow tier on one,
# since it holds the wall-clock check of test_train_loop.py and multi-process tests that
# want the cores to themselves. HNET_TEST_WORKERS=N sets both.
set -euo pipefail
cd "$(dirname "$0")/.."
tier=default
case "${1:-}" in
  --slow) tier=slow; shift ;;
  --all) tier=all; shift ;;
esac
bash launch/setup.sh
if [ "$tier" != default ]; then
  # tests/test_aot.py's compile-only venv (libtpu, the CUDA PJRT plugin): set up here, not
  # inside the timed test run; if it fails, test_aot.py runs it again and reports why.
  bash launch/setup_aot.sh || echo "launch/setup_aot.sh failed: tests/test_aot.py will say why" >&2
fi
default_workers=$(( $(nproc) >= 2 ? 2 : 1 ))
run_tier() {  # run_tier <marker expression> <XLA backend level or ""> <workers> [pytest args...]
  local marks=$1 level=$2 workers=${HNET_TEST_WORKERS:-$3} xdist=(); shift 3
  if [ "$workers" -gt 1 ]; then xdist=(-n "$workers" --dist loadfile); fi
  echo "== pytest -m \"$marks\"" >&2
  HNET_TEST_XLA_OPT=${HNET_TEST_XLA_OPT:-$level} .venv/bin/python -m pytest -q "${xdist[@]}" -m "$marks" tests "$@"
}
case "$tier" in
  default) run_tier "not slow" 0 "$default_workers" "$@" ;;
  slow) run_tier slow "" 1 "$@" ;;
  all) rc=0
       run_tier "not slow" 0 "$default_workers" "$@" || rc=$?
       run_tier slow "" 1 "$@" || rc=$((rc ? rc : $?))
       exit $rc ;;
esac
