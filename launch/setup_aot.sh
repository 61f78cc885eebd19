#!/usr/bin/env bash
# Creates .venv-aot (if missing) with requirements-aot.txt: the project's requirements
# plus libtpu and the CUDA 13 PJRT plugin, for compiling the train step and the Pallas
# kernels for TPU topologies and GPUs on this CPU machine (tools/aot_check.py).
# About 1 minute and 2.2 GB on a machine whose pip cache already holds requirements.txt.
# Kept out of .venv: the accelerator plugins are heavy and change nothing on the CPU.
# The GPU target needs ptxas (CUDA 13, /usr/local/cuda/bin, on this machine's image).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv-aot/bin/python ]; then
  "$PYTHON" -m venv .venv-aot
fi
# A stamp of the requirements it was installed from: when they have not changed, pip is
# not run again (tests/test_aot.py calls this script before its compiles).
stamp=$(cat requirements-aot.txt requirements.txt | sha256sum | cut -d' ' -f1)
if [ "$(cat .venv-aot/.requirements-stamp 2>/dev/null)" = "$stamp" ]; then
  exit 0
fi
.venv-aot/bin/python -m pip install -q --upgrade pip
.venv-aot/bin/python -m pip install -q -r requirements-aot.txt
echo "$stamp" > .venv-aot/.requirements-stamp
