#!/usr/bin/env bash
# The prepared GPU check, one command (under 10 minutes on one GPU): correctness on the device, then
# the tokens/s table. Needs the [gpu] extra (triton, faiss-gpu-cu12) on a CUDA machine.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
$PY -m pytest -q -m gpu tests/gpu -p no:cacheprovider
$PY -m benchmarks.gpu "$@"
