#!/usr/bin/env bash
# Quickstart test command: set up, then run the whole test suite (8 simulated CPU devices).
set -euo pipefail
cd "$(dirname "$0")/.."
bash launch/setup.sh
.venv/bin/python -m pytest -q tests "$@"
