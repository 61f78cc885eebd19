#!/usr/bin/env bash
# Quickstart main job: set up, then train the default model on the embedded corpus.
#   bash launch/local.sh [--config=configs/....py] [--workdir=runs/...] [--config.x=y ...]
set -euo pipefail
cd "$(dirname "$0")/.."
bash launch/setup.sh
CONFIG=${HNET_CONFIG:-configs/transformer_tiny.py}
WORKDIR=${HNET_WORKDIR:-runs/default}
.venv/bin/python -m hnet.main --config="$CONFIG" --workdir="$WORKDIR" "$@"
