#!/usr/bin/env bash
# Creates .venv (if missing), installs the requirements and the embedded corpus. Idempotent.
#   bash launch/setup.sh         the runtime (requirements.txt): train, evaluate, sample, export
#   bash launch/setup.sh --dev   also torch, transformers and the test tools
#                                (requirements-dev.txt; launch/test.sh runs this)
set -euo pipefail
cd "$(dirname "$0")/.."
dev=0
case "${1:-}" in
  --dev) dev=1 ;;
  "") ;;
  *) echo "usage: bash launch/setup.sh [--dev]" >&2; exit 2 ;;
esac
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
if [ "$dev" = 1 ]; then
  # torch: the CPU build when the PyTorch CPU index is reachable (a few seconds' try), else
  # PyPI's wheel of the same version (requirements-dev.txt explains the pin).
  TORCH_PIN=$(grep -E '^torch==' requirements-dev.txt)
  if ! .venv/bin/python -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '${TORCH_PIN#torch==}')" 2>/dev/null; then
    .venv/bin/python -m pip install -q --timeout 15 --retries 0 "$TORCH_PIN" \
        --index-url https://download.pytorch.org/whl/cpu 2>/dev/null \
      || .venv/bin/python -m pip install -q "$TORCH_PIN"
  fi
  .venv/bin/python -m pip install -q -r requirements-dev.txt
else
  .venv/bin/python -m pip install -q -r requirements.txt
fi
.venv/bin/python tools/install_corpus.py
