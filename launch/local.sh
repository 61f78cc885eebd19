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
# On a CPU host, split each batch over HNET_CPU_DEVICES simulated devices (default 2, one
# per core here): XLA runs the halves' ops side by side (README, "Training speed"). Same
# global batch and data order; the gradient is summed over the halves (float rounding
# only). The flag only adds CPU devices; a GPU / TPU stays the default backend.
CPU_DEVICES=${HNET_CPU_DEVICES:-2}
export XLA_FLAGS="${XLA_FLAGS:-} --xla_force_host_platform_device_count=${CPU_DEVICES}"
.venv/bin/python -m hnet.main --config="$CONFIG" --workdir="$WORKDIR" "$@"
if grep -q '"name": "hnet"' "$WORKDIR/config.json"; then
  .venv/bin/python tools/visualize_chunks.py --workdir="$WORKDIR" --out="$WORKDIR/chunks" \
      --text="ROMEO. But soft, what light through yonder window breaks? It is the east, and Juliet is the sun."
fi
