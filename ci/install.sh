#!/usr/bin/env bash
# Install cellfate_gpu with its test and benchmark extras, then PETSc/SLEPc (built once, cached by pip).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
"$PY" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
"$PY" -m pip install -q -e ".[test,bench]"
# pygam is the reference the batched gene-trend GAM is tested against (tests/test_models.py). pygam 0.12
# pins scipy<1.17 although it runs with 1.17: install it without its pins so SciPy stays where it is.
"$PY" -m pip install -q --no-deps "pygam==0.12.0" "progressbar2>=4" "python-utils>=3"
if [ "${CELLFATE_SKIP_PETSC:-0}" != "1" ]; then
    bash ci/install_petsc.sh
fi
