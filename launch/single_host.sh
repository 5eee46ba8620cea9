#!/usr/bin/env bash
# Train on one machine (all its devices), resuming if the workdir already holds a run.
#
#   launch/single_host.sh CONFIG WORKDIR [--config.x.y=V ...]
#
# Output goes to WORKDIR/train.log as well as the terminal. SIGTERM or Ctrl-C (e.g. a job
# scheduler's time limit) is passed to the trainer once; this script waits while it
# checkpoints and exits with its status (0); running the same line again continues the run.
# The trainer runs in a session of its own: a signal sent to this script's whole process
# group (as schedulers and terminals send it) would otherwise reach it twice, and a second
# SIGTERM means "stop now, without a checkpoint". tee ignores those signals and ends with the
# trainer's output, so the trainer never writes into a closed pipe.
set -euo pipefail
if [[ $# -lt 2 ]]; then
  echo "usage: $0 CONFIG WORKDIR [--config.x.y=V ...]" >&2
  exit 2
fi
config=$1 workdir=$2
shift 2
mkdir -p "$workdir"
PYTHON=${PYTHON:-python}
setsid "$PYTHON" -m lmscale.train --config="$config" --workdir="$workdir" "$@" \
  > >(trap '' TERM INT; exec tee -a "$workdir/train.log") 2>&1 &
pid=$!
interrupted=0
trap 'interrupted=1; kill -TERM "$pid" 2>/dev/null || true' TERM INT
while true; do  # a trapped signal interrupts wait: then wait again, for the trainer's status
  interrupted=0
  if wait "$pid"; then status=0; else status=$?; fi
  [[ $interrupted == 1 ]] || break
done
exit "$status"
