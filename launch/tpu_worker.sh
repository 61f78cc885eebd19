#!/usr/bin/env bash
# The worker side of launch/tpu.py, which runs it on every TPU VM worker over
# `gcloud compute tpus tpu-vm ssh --worker=...`:
#   bash launch/tpu_worker.sh start CONFIG WORKDIR [--config.x=y ...]  # train in the background
#   bash launch/tpu_worker.sh status  # one line: hnet-worker HOST running|finished|stopped|exit N|vanished|idle
#   bash launch/tpu_worker.sh stop    # kill this worker's run (before a relaunch)
#   bash launch/tpu_worker.sh log     # follow this worker's training log
# "stopped": exited 0 before the last step (a SIGTERM saved a checkpoint); "vanished": the
# process is gone without an exit status (the VM restarted).
set -uo pipefail
cd "$(dirname "$0")/.."
STATE=.launch
mkdir -p "$STATE"
case "${1:-}" in
  start)
    shift
    [ -f "$STATE/pid" ] && kill -0 "$(cat "$STATE/pid")" 2>/dev/null && {
      echo "a run is already going on $(hostname) (pid $(cat "$STATE/pid")): stop it first" >&2; exit 1; }
    rm -f "$STATE/rc"
    echo "$2" > "$STATE/workdir"
    setsid bash -c '.venv/bin/python -m hnet.main --config="$0" --workdir="$1" "${@:2}"
                    echo $? > .launch/rc.tmp && mv .launch/rc.tmp .launch/rc' "$@" \
      > "$STATE/train.log" 2>&1 < /dev/null &
    echo $! > "$STATE/pid"
    ;;
  status)
    if [ -f "$STATE/rc" ]; then
      rc=$(cat "$STATE/rc")
      if [ "$rc" != 0 ]; then state="exit $rc"
      elif .venv/bin/python -c 'import sys; from hnet.runs import training_finished
sys.exit(0 if training_finished(sys.argv[1]) else 1)' "$(cat "$STATE/workdir")"; then state=finished
      else state=stopped; fi
    elif [ -f "$STATE/pid" ] && kill -0 "$(cat "$STATE/pid")" 2>/dev/null; then state=running
    elif [ -f "$STATE/pid" ]; then state=vanished
    else state=idle; fi
    echo "hnet-worker $(hostname) $state"
    ;;
  stop)
    if [ -f "$STATE/pid" ]; then
      kill -KILL -- "-$(cat "$STATE/pid")" 2>/dev/null
      rm -f "$STATE/pid"
    fi
    ;;
  log)
    exec tail -n +1 -F "$STATE/train.log"
    ;;
  *)
    echo "usage: bash launch/tpu_worker.sh start CONFIG WORKDIR [overrides] | status | stop | log" >&2
    exit 2
    ;;
esac
