#!/usr/bin/env bash
# The README's test command: install everything, lint, run the serial suite, then the MPI suite on 2 ranks.
#
# Budget on a fresh 2-core machine: the PETSc/SLEPc build takes 35-45 minutes (once; pip's wheel
# cache makes later runs take seconds), the suites well under 30.  Each stage prints its duration,
# and pytest prints its slowest tests, so a stage that grows is seen before it breaks the budget.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
t0=$(date +%s)
stage() { echo "== $1 ($(( $(date +%s) - t0 ))s so far)"; }

# pytest exits with 5 when it collects no test: for a stage that must run tests, that is a
# failure (the tests vanished, e.g. a marker was renamed), and it says so instead of a bare "5".
run_pytest() {
    local status=0
    "$PY" -m pytest "$@" || status=$?
    if [ "$status" -eq 5 ]; then
        echo "pytest collected no tests for: $*" >&2
    fi
    return "$status"
}

stage "install"
bash ci/install.sh
stage "ruff"
"$PY" -m ruff check cellfate_gpu tests benchmarks
stage "serial test suite"
MPLBACKEND=Agg run_pytest tests -q -p no:cacheprovider --durations=15
if "$PY" -c "import petsc4py, slepc4py, mpi4py" 2>/dev/null && command -v mpiexec >/dev/null 2>&1; then
    stage "MPI test suite (mpiexec -n 2)"
    bash ci/test_mpi.sh
else
    echo "petsc4py/slepc4py/mpi4py or mpiexec missing: the MPI suite cannot run" >&2
    exit 1
fi
stage "done"
