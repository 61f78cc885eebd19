#!/usr/bin/env bash
# Trains every tiny model with one shared step budget, then measures spelling-noise
# robustness of all of them with tools/robustness.py (the README's table and plots).
#
#   tools/robustness_suite.sh                       # STEPS=600, all families present
#   STEPS=5 FAMILIES="transformer bpe" tools/robustness_suite.sh --cloze_examples=8
#
# Environment:
#   STEPS     training steps for every model (default 600, the tiny configs' own budget)
#   ROOT      run directories go to $ROOT/<name> (default runs/robust)
#   OUT       report directory (default $ROOT/report)
#   FAMILIES  names to run, from: transformer bpe hnet hat lyt byte2word mrt5 (default: all
#             whose config exists: configs/{transformer,bpe,hnet_1stage,hat,lyt,byte2word,
#             mrt5}_tiny.py)
#   FRESH=1   delete $ROOT/<name> before training (default: resume / reuse a finished run)
#   PYTHON    interpreter (default: .venv/bin/python if present, else python)
# Extra arguments go to tools/robustness.py (e.g. --levels=0.05,0.1 --hellaswag=x.jsonl).
# Every tiny config reads the embedded corpus (python tools/install_corpus.py).
set -euo pipefail
cd "$(dirname "$0")/.."

STEPS="${STEPS:-600}"
ROOT="${ROOT:-runs/robust}"
OUT="${OUT:-$ROOT/report}"
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python; fi
fi

declare -A CONFIG=(
  [transformer]=configs/transformer_tiny.py
  [bpe]=configs/bpe_tiny.py
  [hnet]=configs/hnet_1stage_tiny.py
  [hat]=configs/hat_tiny.py
  [lyt]=configs/lyt_tiny.py
  [byte2word]=configs/byte2word_tiny.py
  [mrt5]=configs/mrt5_tiny.py
)
ORDER=(transformer bpe hnet hat lyt byte2word mrt5)
FAMILIES="${FAMILIES:-${ORDER[*]}}"

workdirs=() names=()
for name in "${ORDER[@]}"; do
  [[ " $FAMILIES " == *" $name "* ]] || continue
  config="${CONFIG[$name]}"
  if [[ ! -f "$config" ]]; then
    echo "== $name: $config not found, skipped"
    continue
  fi
  workdir="$ROOT/$name"
  [[ "${FRESH:-0}" == 1 ]] && rm -rf "$workdir"
  echo "== $name: $PYTHON -m hnet.main --config=$config --workdir=$workdir --config.train.steps=$STEPS"
  "$PYTHON" -m hnet.main --config="$config" --workdir="$workdir" \
      --config.train.steps="$STEPS" --config.checkpoint.async_save=False
  workdirs+=("$workdir")
  names+=("$name")
done

if [[ ${#workdirs[@]} -eq 0 ]]; then
  echo "no model was trained (FAMILIES=$FAMILIES)" >&2
  exit 1
fi
join() { local IFS=,; echo "$*"; }
echo "== robustness: $PYTHON tools/robustness.py --workdirs=$(join "${workdirs[@]}") --names=$(join "${names[@]}") --out=$OUT $*"
"$PYTHON" tools/robustness.py --workdirs="$(join "${workdirs[@]}")" --names="$(join "${names[@]}")" \
    --out="$OUT" "$@"
echo "== done: $OUT/results.md, $OUT/results.json and $OUT/*.png"
