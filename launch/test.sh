#!/usr/bin/env bash
# Quickstart test command: set up, then run the whole test suite (8 simulated CPU devices
# per process). HNET_TEST_WORKERS=N runs it on N pytest-xdist workers, one test file per
# worker at a time (--dist loadfile: a file's trained fixtures are built once). Off by
# default: workers sharing the cores make the wall-clock check of
# tests/test_train_loop.py::test_throughput_does_not_depend_on_how_often_it_is_logged
# flaky (it failed once in 2 workers on this 2-core machine, and passed alone).
set -euo pipefail
cd "$(dirname "$0")/.."
bash launch/setup.sh
# tests/test_aot.py's compile-only venv (libtpu, the CUDA PJRT plugin): set up here, not
# inside the timed test run; if it fails, test_aot.py runs it again and reports why.
bash launch/setup_aot.sh || echo "launch/setup_aot.sh failed: tests/test_aot.py will say why" >&2
workers=${HNET_TEST_WORKERS:-1}
if [ "$workers" -gt 1 ]; then
  .venv/bin/python -m pytest -q -n "$workers" --dist loadfile tests "$@"
else
  .venv/bin/python -m pytest -q tests "$@"
fi
