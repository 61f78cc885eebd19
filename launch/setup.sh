#!/usr/bin/env bash
# Creates .venv (if missing), installs requirements and the embedded corpus. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
# torch (for the Hugging Face export's tests and snippet): the CPU build when the
# PyTorch CPU index is reachable (a few seconds' try), else PyPI's wheel of the same
# version (requirements.txt explains the pin).
TORCH_PIN=$(grep -E '^torch==' requirements.txt)
if ! .venv/bin/python -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '${TORCH_PIN#torch==}')" 2>/dev/null; then
  .venv/bin/python -m pip install -q --timeout 15 --retries 0 "$TORCH_PIN" \
      --index-url https://download.pytorch.org/whl/cpu 2>/dev/null \
    || .venv/bin/python -m pip install -q "$TORCH_PIN"
fi
.venv/bin/python -m pip install -q -r requirements.txt
.venv/bin/python tools/install_corpus.py
