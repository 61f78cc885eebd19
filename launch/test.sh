#!/usr/bin/env bash
# Quickstart test command: set up, then run the whole test suite (8 simulated CPU devices
# per process) on pytest-xdist workers, one test file per worker at a time (--dist
# loadfile: a file's trained fixtures are built once). HNET_TEST_WORKERS overrides the
# number of workers (default: the CPU count, at least 2 and at most 4; compiles are
# single-threaded and many tests wait on subprocesses, so 2 cores keep 2 workers busy).
set -euo pipefail
cd "$(dirname "$0")/.."
bash launch/setup.sh
# tests/test_aot.py's compile-only venv (libtpu, the CUDA PJRT plugin): set up here, not
# inside the timed test run; if it fails, test_aot.py runs it again and reports why.
bash launch/setup_aot.sh || echo "launch/setup_aot.sh failed: tests/test_aot.py will say why" >&2
cpus=$(nproc)
workers=${HNET_TEST_WORKERS:-$(( cpus < 2 ? 2 : (cpus > 4 ? 4 : cpus) ))}
.venv/bin/python -m pytest -q -n "$workers" --dist loadfile tests "$@"
