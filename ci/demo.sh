#!/usr/bin/env bash
# The README's main job: install cellfate_gpu and run the CellRank "Getting started" pipeline on the
# embedded generated atlas; figures and the driver table land in ${1:-demo_out}.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
"$PY" -m pip install -q -e .
MPLBACKEND=Agg "$PY" -m cellfate_gpu.cli demo --out "${1:-demo_out}"
