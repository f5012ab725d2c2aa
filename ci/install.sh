#!/usr/bin/env bash
# Install cellfate_gpu with its test and benchmark extras, then PETSc/SLEPc (built once, cached by pip).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
"$PY" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
"$PY" -m pip install -q -e ".[test,bench]"
if [ "${CELLFATE_SKIP_PETSC:-0}" != "1" ]; then
    bash ci/install_petsc.sh
fi
