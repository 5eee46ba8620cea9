#!/usr/bin/env bash
# Train on one machine (all its devices), resuming if the workdir already holds a run.
#
#   launch/single_host.sh CONFIG WORKDIR [--config.x.y=V ...]
#
# Output goes to WORKDIR/train.log as well as the terminal. SIGTERM (e.g. from a job
# scheduler's time limit) is passed to the trainer, which checkpoints and exits 0; running
# the same line again continues the run.
set -euo pipefail
if [[ $# -lt 2 ]]; then
  echo "usage: $0 CONFIG WORKDIR [--config.x.y=V ...]" >&2
  exit 2
fi
config=$1 workdir=$2
shift 2
mkdir -p "$workdir"
python -m lmscale.train --config="$config" --workdir="$workdir" "$@" 2>&1 | tee -a "$workdir/train.log" &
pid=$!
trap 'kill -TERM $(pgrep -P $$ -f lmscale.train) 2>/dev/null || true' TERM INT
wait $pid
