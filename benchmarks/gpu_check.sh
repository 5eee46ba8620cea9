#!/usr/bin/env bash
# One-GPU check, under 8 minutes: the fast recurrence/bench tests on the GPU, then the
# training-step bench of the paper's 4096-d mLSTM at 256 x 256 per device in bfloat16 and
# float16 (hand-written backward), plus bfloat16 with plain autodiff as the A/B baseline.
#
#     bash benchmarks/gpu_check.sh            # from the repository root, JAX with CUDA installed
#
# JSON lines go to $OUT/gpu_check.jsonl (or benchmarks/gpu_check.jsonl when $OUT is unset);
# each stage has its own time limit so the whole script stays under 8 minutes.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
DEST=${OUT:-benchmarks}
mkdir -p "$DEST"
JSONL="$DEST/gpu_check.jsonl"
LOG="$DEST/gpu_check.log"
START=$(date +%s)
say() { echo "[gpu_check +$(( $(date +%s) - START ))s] $*" | tee -a "$LOG"; }

say "devices: $("$PY" -c 'import jax; print(jax.devices())' 2>&1 | tail -1)"
if ! "$PY" -c 'import jax, sys; sys.exit(jax.devices()[0].platform != "gpu")'; then
  say "no GPU visible to JAX; stopping"; exit 2
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | tee -a "$LOG"

# 1. Fast tests on the GPU (conftest defaults JAX_PLATFORMS to cpu, so set it). float32
#    matmuls at full precision: the gradient checks compare to 1e-5, TF32 would not.
say "tests (GPU)"
JAX_PLATFORMS=cuda JAX_DEFAULT_MATMUL_PRECISION=highest timeout 150 "$PY" -m pytest -q -x \
  -m "not slow" tests/models/test_recurrent_vjp.py tests/models/test_recurrent.py \
  tests/test_bench.py 2>&1 | tail -5 | tee -a "$LOG"
say "tests exit ${PIPESTATUS[0]}"

# 2. The paper's model, one GPU, 256 sequences x 256 characters per device.
bench() {  # label, seconds, extra flags...
  local label=$1 limit=$2; shift 2
  say "bench $label"
  timeout "$limit" "$PY" -m lmscale.bench --config=configs/mlstm4096.py \
    --config.train.batch_size=256 --config.train.seq_len=256 --steps=10 --warmup=2 \
    --label="gpu_check:$label" --out="$JSONL" "$@" 2>&1 | grep -v '^{' | tail -3 | tee -a "$LOG"
  say "bench $label exit ${PIPESTATUS[0]}"
}
bench bf16-custom 100 --config.precision.compute=bfloat16 --grad=custom --pipeline
bench fp16-custom 100 --config.precision.compute=float16 --grad=custom
bench bf16-autodiff 100 --config.precision.compute=bfloat16 --grad=autodiff
bench bf16-custom-unroll2 100 --config.precision.compute=bfloat16 --grad=custom --unroll=2

say "done; JSON lines in $JSONL"
cat "$JSONL" 2>/dev/null | tail -4
