#!/usr/bin/env bash
# One-GPU check, under 8 minutes: the fast recurrence/transformer/bench tests on the GPU, then
# the training-step bench of the paper's 4096-d mLSTM at 256 x 256 per device in bfloat16 and
# float16 (hand-written backward in the GPU's batch-major loops; plain autodiff, float32 gate factors,
# the CPU's feature-major loops and remat segments as A/B), and of the
# 12-layer transformer (configs/transformer_amazon.py, the seed's 32 x 64 per device) in
# bfloat16 and float16.
#
#     bash benchmarks/gpu_check.sh            # from the repository root, JAX with CUDA installed
#     GPU_CHECK_SMOKE=1 bash benchmarks/gpu_check.sh   # the same stages, tiny shapes, on the CPU
#     GPU_CHECK_PART=profile bash benchmarks/gpu_check.sh  # where the headline step's time goes
#     GPU_CHECK_PART=ab GPU_CHECK_AB="base:;flag:XLA_FLAGS=--x" bash benchmarks/gpu_check.sh
#                                          # the headline bench under each environment
#
# The profile part (instead of the check's stages): the headline step's kernels by HLO
# operation and the device's idle time between them (benchmarks/op_profile.py, the compiled
# program's HLO beside it), then the headline bench with XLA's command buffers (CUDA graphs)
# extended to the loops (+WHILE, +CONDITIONAL) and with them off, unroll 1, and the scan floor's
# one-GEMM measure.
#
# Python: $PYTHON, else .venv/bin/python, else python3 (on the lent H200 image, the one with
# JAX and CUDA). Wheels in .whl/ (benchmarks/gpu_wheels.sh fetches what that image lacks) are
# installed into a temporary folder first; a requirement still missing stops the script before
# any GPU work, naming it. From a session with a device: `bash benchmarks/gpu_wheels.sh` here,
# then run `bash benchmarks/gpu_check.sh` there with .whl carried (benchmarks/README.md).
#
# JSON lines (one per bench, see lmscale.bench) go to $OUT/gpu_check.jsonl (or
# benchmarks/gpu_check.jsonl when $OUT is unset), the log beside them. The stages run most
# important first, each under its own time limit and all under one deadline
# (GPU_CHECK_BUDGET seconds, default 460), so the script ends within 8 minutes and a slow
# stage costs only the ones after it. The smoke run checks the script itself (flags, configs,
# paths) where no GPU is lent; its numbers mean nothing.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
DEST=${OUT:-benchmarks}
SMOKE=${GPU_CHECK_SMOKE:-0}
mkdir -p "$DEST"
JSONL="$DEST/gpu_check.jsonl"
LOG="$DEST/gpu_check.log"
BENCH_LOG="$DEST/gpu_bench.log"  # every bench's whole output
START=$(date +%s)
DEADLINE=$(( START + ${GPU_CHECK_BUDGET:-460} ))
say() { echo "[gpu_check +$(( $(date +%s) - START ))s] $*" | tee -a "$LOG"; }
# Seconds a stage may run: its own limit, or what is left before the deadline.
limit() { local left=$(( DEADLINE - $(date +%s) )); echo $(( left < $1 ? left : $1 )); }

# 0. Packages: carried wheels first, then what is still missing stops the check.
if compgen -G ".whl/*.whl" > /dev/null; then
  SITE=$(mktemp -d)
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" \
    .whl/*.whl 2>&1 | tail -3 | tee -a "$LOG"
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
  say "installed $(cd .whl && ls *.whl | tr '\n' ' ')into $SITE"
fi
MISSING=$("$PY" benchmarks/missing_requirements.py --also pytest 2>&1) || MISSING="(check failed) $MISSING"
# Fallback wheels (.whl/fallback/: newer versions of packages the image has, e.g. flax and
# orbax-checkpoint) are installed only when the image's own are missing or too old.
if [ -n "$MISSING" ] && compgen -G ".whl/fallback/*.whl" > /dev/null; then
  say "the image lacks: $MISSING; installing .whl/fallback/"
  SITE2=$(mktemp -d)
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE2" \
    .whl/fallback/*.whl 2>&1 | tail -3 | tee -a "$LOG"
  export PYTHONPATH="$SITE2:$PYTHONPATH"
  MISSING=$("$PY" benchmarks/missing_requirements.py --also pytest 2>&1) || MISSING="(check failed) $MISSING"
fi
if [ -n "$MISSING" ]; then
  say "$PY lacks: $MISSING; fetch wheels with benchmarks/gpu_wheels.sh and carry .whl/"; exit 3
fi
say "python: $("$PY" -c 'import sys, jax, flax, optax; print(sys.version.split()[0], "jax", jax.__version__, "flax", flax.__version__, "optax", optax.__version__)' 2>&1 | tail -1)"

MLSTM=(--config=configs/mlstm4096.py --config.train.batch_size=256 --config.train.seq_len=256)
TRANSFORMER=(--config=configs/transformer_amazon.py)
BENCH=(--steps=10 --warmup=2)
REMAT_STEPS=32  # segments of the remat A/B (8 of 256 steps)
FLOOR=()  # benchmarks/gpu_scan_floor.py at its defaults: 4096, 256 x 256, bfloat16
if [ "$SMOKE" = 1 ]; then
  export JAX_PLATFORMS=cpu
  MLSTM+=(--config.model.hidden=64 --config.train.batch_size=4 --config.train.seq_len=16)
  TRANSFORMER+=(--config.model.layers=2 --config.model.d_model=32 --config.model.d_ff=64
                --config.model.heads=2 --config.train.per_device_batch_size=2
                --config.train.seq_len=16)
  BENCH=(--steps=2 --warmup=1 --matmul_n=256)
  REMAT_STEPS=4
  FLOOR=(--hidden=64 --batch=4 --seq=16 --reps=2)
  say "smoke run: tiny shapes on the CPU"
else
  say "devices: $("$PY" -c 'import jax; print(jax.devices())' 2>&1 | tail -1)"
  if ! "$PY" -c 'import jax, sys; sys.exit(jax.devices()[0].platform != "gpu")'; then
    say "no GPU visible to JAX; stopping"; exit 2
  fi
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | tee -a "$LOG"
fi

# Benches and tests, most important first: the headline bench, then the tests, then the A/Bs.
bench() {  # label, seconds, flags...
  local label=$1 seconds
  seconds=$(limit "$2"); shift 2
  if (( seconds < 20 )); then say "bench $label skipped: ${seconds}s left"; return; fi
  say "bench $label (limit ${seconds}s)"
  timeout "$seconds" "$PY" -m lmscale.bench "$@" "${BENCH[@]}" --label="gpu_check:$label" \
    --out="$JSONL" 2>&1 | tee -a "$BENCH_LOG" | grep -v '^{' | tail -3 | tee -a "$LOG"
  say "bench $label exit ${PIPESTATUS[0]}"
}
if [ "${GPU_CHECK_PART:-check}" = ab ]; then
  # The headline bench once per variant of GPU_CHECK_AB: "label:VAR=value VAR2=value;label2:..."
  # (environment settings, e.g. XLA_FLAGS, read by the step when it is traced).
  IFS=';' read -ra VARIANTS <<< "${GPU_CHECK_AB:-base:}"
  for v in "${VARIANTS[@]}"; do
    ( for assignment in ${v#*:}; do export "${assignment?}"; done
      say "variant ${v%%:*}: ${v#*:}"
      bench "mlstm-bf16-ab-${v%%:*}" 100 "${MLSTM[@]}" --config.precision.compute=bfloat16 --grad=custom )
  done
  say "done (A/B part); JSON lines in $JSONL"
  exit 0
fi
if [ "${GPU_CHECK_PART:-check}" = profile ]; then
  seconds=$(limit 150)
  say "profile mlstm-bf16-custom (limit ${seconds}s)"
  PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" timeout "$seconds" "$PY" benchmarks/op_profile.py \
    "${MLSTM[@]}" --config.precision.compute=bfloat16 --steps=3 --top=45 --hlo="$DEST/step.hlo" \
    2>&1 | grep -v "^I[0-9]\{4\} " | tee "$DEST/gpu_profile.txt" | tail -52 | tee -a "$LOG"
  say "profile exit ${PIPESTATUS[0]}"
  XLA_FLAGS="${XLA_FLAGS:-} --xla_gpu_enable_command_buffer=+WHILE,+CONDITIONAL" \
    bench mlstm-bf16-graph-loops 60 "${MLSTM[@]}" --config.precision.compute=bfloat16 --grad=custom
  XLA_FLAGS="${XLA_FLAGS:-} --xla_gpu_enable_command_buffer=" \
    bench mlstm-bf16-no-graphs 60 "${MLSTM[@]}" --config.precision.compute=bfloat16 --grad=custom
  bench mlstm-bf16-unroll1 70 "${MLSTM[@]}" --config.precision.compute=bfloat16 \
    --grad=custom --unroll=1
  seconds=$(limit 80)
  say "scan floor, one GEMM (limit ${seconds}s)"
  PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" timeout "$seconds" "$PY" benchmarks/gpu_scan_floor.py \
    "${FLOOR[@]}" --only="one GEMM" 2>&1 | tee "$DEST/gpu_floor_gemm.jsonl" | tail -2 | tee -a "$LOG"
  say "done (profile part); JSON lines in $JSONL"
  exit 0
fi
bench mlstm-bf16-custom 150 "${MLSTM[@]}" --config.precision.compute=bfloat16 --grad=custom --pipeline

# Fast tests on the GPU (conftest defaults JAX_PLATFORMS to cpu, so set it). float32
# matmuls at full precision: the gradient checks compare to 1e-5, TF32 would not. The
# smoke run only collects them.
TESTS=(tests/models/test_recurrent_vjp.py tests/models/test_recurrent.py
       tests/models/test_transformer.py tests/test_bench.py)
# GPU_CHECK_TESTS="tests/models/test_recurrent_vjp.py -k batch": another selection (pytest args).
[ -n "${GPU_CHECK_TESTS:-}" ] && read -ra TESTS <<< "$GPU_CHECK_TESTS"
say "tests"
if [ "$SMOKE" = 1 ]; then
  timeout "$(limit 60)" "$PY" -m pytest -q --collect-only "${TESTS[@]}" 2>&1 | tail -1 | tee -a "$LOG"
else
  JAX_PLATFORMS=cuda JAX_DEFAULT_MATMUL_PRECISION=highest timeout "$(limit 150)" "$PY" -m pytest \
    -q -x -m "not slow" "${TESTS[@]}" 2>&1 | tee "$DEST/gpu_tests.log" | tail -5 | tee -a "$LOG"
fi
say "tests exit ${PIPESTATUS[0]}"

bench mlstm-fp16-custom 70 "${MLSTM[@]}" --config.precision.compute=float16 --grad=custom
bench mlstm-bf16-f32-factors 70 "${MLSTM[@]}" --config.precision.compute=bfloat16 --grad=custom \
  --layout=batch --factors=float32
bench transformer-bf16 60 "${TRANSFORMER[@]}" --config.precision.compute=bfloat16
# Where the mLSTM step's time goes: its recurrence against the GEMM floor.
seconds=$(limit 60)
say "scan floor (limit ${seconds}s)"
PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" timeout "$seconds" "$PY" benchmarks/gpu_scan_floor.py \
  "${FLOOR[@]}" 2>&1 | tee "$DEST/gpu_floor.jsonl" | tail -4 | tee -a "$LOG"
say "scan floor exit ${PIPESTATUS[0]}"
bench mlstm-bf16-autodiff 70 "${MLSTM[@]}" --config.precision.compute=bfloat16 --grad=autodiff
bench transformer-fp16 50 "${TRANSFORMER[@]}" --config.precision.compute=float16
bench mlstm-bf16-feature-layout 70 "${MLSTM[@]}" --config.precision.compute=bfloat16 --grad=custom \
  --layout=feature --unroll=1
bench mlstm-bf16-remat 70 "${MLSTM[@]}" --config.precision.compute=bfloat16 --grad=custom \
  --config.model.remat=segments --config.model.remat_steps="$REMAT_STEPS"

say "done; JSON lines in $JSONL"
tail -6 "$JSONL" 2>/dev/null
