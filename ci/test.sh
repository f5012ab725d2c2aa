#!/usr/bin/env bash
# The README's test command: install everything, lint, run the serial suite, then the MPI suite on 2 ranks.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
bash ci/install.sh
echo "== ruff"
"$PY" -m ruff check cellfate_gpu tests benchmarks
echo "== serial test suite"
MPLBACKEND=Agg "$PY" -m pytest tests -q -p no:cacheprovider
if "$PY" -c "import petsc4py, mpi4py" 2>/dev/null; then
    echo "== MPI test suite (mpiexec -n 2)"
    bash ci/test_mpi.sh
else
    echo "petsc4py/mpi4py missing: the MPI suite cannot run" >&2
    exit 1
fi
