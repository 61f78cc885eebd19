#!/usr/bin/env bash
# Quickstart main job: set up, train the default model (tiny 1-stage H-Net) on the
# embedded corpus, print held-out bpb and bytes per chunk, write the chunk visualisation.
#   bash launch/local.sh [--config.x=y ...]
#   HNET_CONFIG=configs/transformer_tiny.py HNET_WORKDIR=runs/transformer bash launch/local.sh
set -euo pipefail
cd "$(dirname "$0")/.."
bash launch/setup.sh
CONFIG=${HNET_CONFIG:-configs/hnet_1stage_tiny.py}
WORKDIR=${HNET_WORKDIR:-runs/default}
.venv/bin/python -m hnet.main --config="$CONFIG" --workdir="$WORKDIR" "$@"
if grep -q '"name": "hnet"' "$WORKDIR/config.json"; then
  .venv/bin/python tools/visualize_chunks.py --workdir="$WORKDIR" --out="$WORKDIR/chunks" \
      --text="ROMEO. But soft, what light through yonder window breaks? It is the east, and Juliet is the sun."
fi
