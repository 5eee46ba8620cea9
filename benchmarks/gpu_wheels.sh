#!/usr/bin/env bash
# Wheels for a GPU machine that cannot reach PyPI: run here, then carry .whl/ with the check.
#
#     bash benchmarks/gpu_wheels.sh [DIST ...]     # default: ml-collections tensorboardX
#
# The lent H200 image (Python 3.12) has JAX with CUDA, flax, optax, orbax-checkpoint, numpy
# and the rest of lmscale's requirements, but not ml-collections or tensorboardX (its package
# list as read on 2026-11-17). This downloads the named distributions as Python 3.12 wheels,
# without their dependencies (theirs, absl-py, PyYAML, protobuf, are on the image), into .whl/
# in the repository root, and keeps .whl/ out of git (.git/info/exclude).
# benchmarks/gpu_check.sh installs whatever lies in .whl/ into a temporary folder first, and
# names any requirement still missing (benchmarks/missing_requirements.py) before any GPU time
# is spent.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
DISTS=("$@")
[ ${#DISTS[@]} -gt 0 ] || DISTS=(ml-collections tensorboardX)
mkdir -p .whl
grep -qxF '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d .whl "${DISTS[@]}"
ls -l .whl
