#!/usr/bin/env bash
# Sets the project up on a Cloud TPU VM worker (launch/tpu.py runs it on every worker):
# Python >= 3.11 (numpy 2.4 needs it; where the image's python3 is older, Ubuntu's python3.11
# is installed), then launch/setup.sh (requirements.txt, the corpus), then jax[tpu] (libtpu).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=python3
if ! python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  if ! command -v python3.11 >/dev/null; then
    sudo apt-get update -qq
    sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3.11 python3.11-venv
  fi
  PYTHON=python3.11
fi
PYTHON=$PYTHON bash launch/setup.sh
.venv/bin/python -m pip install -q -r requirements-tpu.txt
