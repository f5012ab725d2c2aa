#!/usr/bin/env bash
# A separate Python 3.12 environment with CellRank 2.3.3 for side-by-side benchmarks and parity runs.
# CellRank >= 2.1 needs Python 3.12 (this machine's default is 3.11). Pins:
#  - scikit-learn<1.9 and pynndescent<0.7: scanpy 1.12.4's sc.pp.neighbors crashes with newer ones;
#  - petsc4py/slepc4py for Python 3.12 (built by the repository's ci/install_petsc.sh; the PETSc and SLEPc wheels are
#    Python-independent and come from pip's cache): CellRank's compute_schur uses SLEPc's Krylov-Schur
#    when slepc4py imports, and densifies T otherwise (brandts: O(n^3), 755 s at 10k cells here).
#    CellRank 2.3.3's PETSc linear-solve path fails with petsc4py 3.26 (`Mat.getVecs` is gone), so the
#    runner calls compute_fate_probabilities(use_petsc=False). Set CELLRANK_WITH_SLEPC=0 to skip.
set -euo pipefail
VENV=${CELLRANK_VENV:-$HOME/.cache/cellfate_gpu/cellrank-venv}
PY312=${PYTHON312:-}
if [ -z "$PY312" ]; then  # pyenv's shim answers `command -v` even when 3.12 is not selected: try each
    for c in "$(pyenv root 2>/dev/null)"/versions/3.12*/bin/python3.12 python3.12; do
        if "$c" -c "import sys; assert sys.version_info[:2] == (3, 12)" 2>/dev/null; then PY312=$c; break; fi
    done
fi
[ -n "$PY312" ] || { echo "Python 3.12 not found (set PYTHON312)" >&2; exit 1; }
if [ ! -x "$VENV/bin/python" ]; then
    "$PY312" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q "cellrank==2.3.3" "scikit-learn<1.9" "pynndescent<0.7" anndata
if [ "${CELLRANK_WITH_SLEPC:-1}" = "1" ]; then
    # the repository's PETSc/SLEPc build script (not in a wheel: there, install petsc4py/slepc4py yourself)
    INSTALL_PETSC="$(dirname "$0")/../../ci/install_petsc.sh"
    if [ -f "$INSTALL_PETSC" ]; then
        PYTHON="$VENV/bin/python" bash "$INSTALL_PETSC"
    else
        echo "ci/install_petsc.sh not found (installed from a wheel?): CellRank runs without SLEPc" >&2
    fi
fi
"$VENV/bin/python" -c "import cellrank; print('cellrank', cellrank.__version__)"
echo "$VENV/bin/python"
