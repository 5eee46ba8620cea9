#!/usr/bin/env bash
# Train on one machine (all its devices), resuming if the workdir already holds a run.
#
#   launch/single_host.sh CONFIG WORKDIR [--config.x.y=V ...]
#
# Output goes to WORKDIR/train.log as well as the terminal. SIGTERM or Ctrl-C (e.g. a job
# scheduler's time limit) is passed on to the trainer; this script waits while it
# checkpoints and exits with its status (0); running the same line again continues the run.
# The trainer runs in a session of its own, so a signal sent to this script's process group
# (as terminals send Ctrl-C) reaches it once, through this script: Ctrl-C twice then stops it
# at once, without a checkpoint (the first goes on as SIGTERM, the second as SIGINT). A
# SIGTERM that reaches the trainer directly as well (a scheduler signalling every process of
# the job) is the same request to it. tee ignores the signals and ends with the trainer's
# output, so the trainer never writes into a closed pipe; the script exits once tee has
# written the last lines (a scheduler kills what is left of the job when the script ends),
# signals or not, or after 10 s.
set -euo pipefail
if [[ $# -lt 2 ]]; then
  echo "usage: $0 CONFIG WORKDIR [--config.x.y=V ...]" >&2
  exit 2
fi
config=$1 workdir=$2
shift 2
mkdir -p "$workdir"
PYTHON=${PYTHON:-python}
# tee is this script's child (one started in the trainer's redirection was the trainer's, and
# the script could end before it); its pid is $! (a bash that leaves $! unset: no wait for it).
exec 3> >(trap '' TERM INT; exec tee -a "$workdir/train.log")
tee_pid=${!:-}
# setsid(1) is util-linux's: where there is none (macOS), Python's os.setsid starts the session.
if command -v setsid >/dev/null 2>&1; then session=(setsid)
else session=("$PYTHON" -c 'import os, sys; os.setsid(); os.execvp(sys.argv[1], sys.argv[1:])')
fi
"${session[@]}" "$PYTHON" -m lmscale.train --config="$config" --workdir="$workdir" "$@" \
  >&3 2>&1 3>&- &
pid=$!
exec 3>&-  # the trainer holds the pipe alone: tee ends with its output
# The first signal goes on as SIGTERM (a trainer started in the background by a script
# inherits SIGINT ignored until it installs its handlers); a later Ctrl-C as SIGINT: stop now.
interrupted=0 status= forwarded=0
forward() {
  interrupted=1
  if (( forwarded++ == 0 )); then kill -TERM "$pid" 2>/dev/null || true
  else kill "-$1" "$pid" 2>/dev/null || true; fi
}
trap 'forward TERM' TERM
trap 'forward INT' INT
while true; do  # a trapped signal interrupts wait: then wait again, for the trainer's status
  interrupted=0
  if wait "$pid"; then got=0; else got=$?; fi
  # A signal trapped just after wait returned the trainer's status: waiting again finds no
  # such child (127; 255 seen too): the status already got is the trainer's.
  if [[ -n $status ]] && (( got == 127 || got == 255 )); then break; fi
  status=$got
  [[ $interrupted == 1 ]] || break
done
for (( i = 0; i < 100; i++ )); do  # tee writing the last lines
  [[ -n $tee_pid ]] && kill -0 "$tee_pid" 2>/dev/null || break
  sleep 0.1 || true  # a Ctrl-C ends the sleep, not the wait
done
exit "$status"
