#!/usr/bin/env bash
# The prepared GPU check, one command: correctness on the device, the tokens/s table, then (SCALING=1, about
# 10 more minutes on one large GPU) the scaling table's gpu scale, one budget 100x the cpu table's largest,
# whose best size checks the frontier value the cpu fit predicts there (results/scaling.md, "predicted at").
# Needs the [gpu] extra (triton, faiss-gpu-cu12) on a CUDA machine.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
$PY -m pytest -q -m gpu tests/gpu -p no:cacheprovider
$PY -m benchmarks.gpu "$@"
if [ "${SCALING:-0}" = "1" ]; then
  $PY -m experiments.run_table scaling --scale gpu --results "${OUT:-runs/gpu}"
fi
