#!/usr/bin/env bash
# GPU smoke run for one NVIDIA GPU (sized for one H200, < 8 minutes with CuPy installed from wheels):
#   1. the `gpu` tests (the real CuPy: tests/test_gpu.py and the cupy case of every backend test);
#   2. the pipeline steps at 200k and 1M cells on cupy against scipy: T (max |T_cupy - T_scipy| <= 1e-10),
#      partial Schur (residual ||T Q - Q R|| / ||T||_1, eigenvalues), fate probabilities (<= 1e-6 apart),
#      wall time per step and peak device memory (CuPy pool high-water mark and driver-reported use).
# Everything is written under $OUT (default ./gpu_smoke_out): pytest log + junit XML, one JSON per size,
# summary.md.
#
# Usage:   OUT=/path benchmarks/gpu_smoke.sh
# CPU dry run (no GPU: the CuPy test double stands in for CuPy, tiny sizes):
#          GPU_SMOKE_DRY=1 benchmarks/gpu_smoke.sh
# Knobs:   GPU_SMOKE_SIZES="200000 1000000"  GPU_SMOKE_K=6 (Schur vectors)  GPU_SMOKE_TEST_TIMEOUT=180
#          PY=python3 (interpreter)  CELLFATE_GPU_SMOKE_STEP_TIMEOUT=200 (seconds per size)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
PY="${PY:-python}"
OUT="${OUT:-$ROOT/gpu_smoke_out}"
DRY="${GPU_SMOKE_DRY:-0}"
ORIG_PYTHONPATH="${PYTHONPATH:-}"
mkdir -p "$OUT"
cd "$ROOT"
export JAX_ENABLE_X64=1  # the jax backend requires 64-bit mode at start-up
export MPLBACKEND=Agg

if [[ "$DRY" == "1" ]]; then
    SIZES="${GPU_SMOKE_SIZES:-2000 5000}"
    export PYTHONPATH="$ROOT/tests/cupy_double${PYTHONPATH:+:$PYTHONPATH}"  # `import cupy` loads the double
else
    SIZES="${GPU_SMOKE_SIZES:-200000 1000000}"
fi
STEP_TIMEOUT="${CELLFATE_GPU_SMOKE_STEP_TIMEOUT:-200}"

{
    echo "date: $(date -u +%FT%TZ)"
    echo "dry run: $DRY"
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
    "$PY" -c "import cupy, sys; print('cupy', cupy.__version__, 'double' if getattr(cupy, 'IS_DOUBLE', False) else '')" || true
    "$PY" -m cellfate_gpu.cli info || true
} > "$OUT/environment.txt" 2>&1

# ---- 1. the gpu tests (real CuPy); in a dry run the cupy cases of the backend tests on the double
status=0
if [[ "$DRY" == "1" ]]; then
    PYTHONPATH="$ORIG_PYTHONPATH" timeout "${GPU_SMOKE_TEST_TIMEOUT:-180}" \
        "$PY" -m pytest tests/test_cupy_double.py -q -p no:cacheprovider -x --junitxml="$OUT/tests.xml" \
        > "$OUT/tests.log" 2>&1 || status=$?
else
    timeout "${GPU_SMOKE_TEST_TIMEOUT:-180}" \
        "$PY" -m pytest tests -m gpu -q -p no:cacheprovider --junitxml="$OUT/tests.xml" \
        > "$OUT/tests.log" 2>&1 || status=$?
fi
echo "tests: exit $status ($(tail -n 1 "$OUT/tests.log"))"

# ---- 2. pipeline steps on cupy vs scipy, one process per size (a failure at 1M keeps the 200k figures)
for n in $SIZES; do
    timeout "$STEP_TIMEOUT" "$PY" - "$n" "$OUT" "${GPU_SMOKE_K:-6}" <<'PYEOF' || echo "size $n: exit $? (see $OUT/pipeline_$n.log)"
import json
import sys
import time
import traceback

import numpy as np
import scipy.sparse as sp

n, out, k = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
log = open(f"{out}/pipeline_{n}.log", "w")
result = {"n_cells": n, "k": k, "steps": {}, "checks": {}, "errors": []}


def note(msg):
    print(msg, file=log, flush=True)


def graph(n, k_nn=15, seed=0):
    """A branching 2-D point cloud: symmetric kNN connectivities and a pseudotime (no gene matrix)."""
    from scipy.spatial import cKDTree

    rng = np.random.default_rng(seed)
    t = np.sort(rng.random(n))
    side = np.where(rng.random(n) > 0.5, 1.0, -1.0)
    X = np.c_[t, 0.02 * rng.standard_normal(n) + (t > 0.4) * (t - 0.4) * side]
    d, idx = cKDTree(X).query(X, k_nn, workers=-1)
    rows = np.repeat(np.arange(n), k_nn)
    w = np.exp(-(d.ravel() ** 2) / np.median(d[:, 1:]) ** 2)
    C = sp.csr_matrix((w, (rows, idx.ravel())), shape=(n, n))
    C = sp.csr_matrix(C.maximum(C.T))
    C.setdiag(0)
    C.eliminate_zeros()
    return C, t


try:
    import anndata as ad
    import cupy

    from cellfate_gpu import linalg
    from cellfate_gpu.backends import get_backend
    from cellfate_gpu.kernels import PseudotimeKernel

    gpu = get_backend("cupy")
    host = get_backend("scipy")
    pool = cupy.get_default_memory_pool()

    def device_used():
        free, total = cupy.cuda.runtime.memGetInfo()
        return int(total - free)

    def timed(name, backend_name, fn):
        if backend_name == "cupy":
            cupy.cuda.runtime.deviceSynchronize()
        t0 = time.perf_counter()
        value = fn()
        if backend_name == "cupy":
            cupy.cuda.runtime.deviceSynchronize()
        result["steps"].setdefault(name, {})[backend_name] = round(time.perf_counter() - t0, 4)
        note(f"{name} [{backend_name}]: {result['steps'][name][backend_name]:.3f} s")
        return value

    t0 = time.perf_counter()
    C, pt = graph(n)
    adata = ad.AnnData(obs={"dpt_pseudotime": pt}, shape=(n, 1))
    adata.obsp["connectivities"] = C
    result["steps"]["generate graph"] = {"host": round(time.perf_counter() - t0, 3)}
    base_used = device_used()
    pool.free_all_blocks()

    # T on both backends
    kernels = {}
    for name in ("scipy", "cupy"):
        kernels[name] = timed(
            "transition matrix", name, lambda name=name: PseudotimeKernel(adata).compute_transition_matrix(backend=name)
        )
    T_host = kernels["scipy"].transition_matrix
    T_dev = kernels["cupy"].native_transition_matrix
    T_back = gpu.to_scipy_csr(T_dev)
    diff = abs(T_back - T_host)
    result["checks"]["T max abs diff"] = float(diff.max()) if diff.nnz else 0.0
    result["checks"]["T ok (<= 1e-10)"] = bool(result["checks"]["T max abs diff"] <= 1e-10)
    result["nnz"] = int(T_host.nnz)

    # partial Schur on both
    schur = {}
    for name, T in (("scipy", T_host), ("cupy", T_dev)):
        schur[name] = timed(
            "partial Schur", name, lambda T=T, name=name: linalg.partial_schur(T, k, which="LR", tol=1e-10, backend=name)
        )
    Q = gpu.to_host(schur["cupy"].Q)
    resid = np.linalg.norm(T_host @ Q - Q @ schur["cupy"].R) / sp.linalg.norm(T_host, 1)
    result["checks"]["Schur residual ||TQ-QR||_F/||T||_1 (cupy)"] = float(resid)
    ev_gpu, ev_host = schur["cupy"].eigenvalues, schur["scipy"].eigenvalues
    m_ev = min(ev_gpu.size, ev_host.size, k)  # either may keep one more to hold a conjugate pair together
    result["checks"]["Schur eigenvalues max diff"] = float(
        max(np.min(np.abs(ev_gpu - lam)) for lam in ev_host[:m_ev])
    )
    result["checks"]["Schur ok"] = bool(resid <= 1e-8 and result["checks"]["Schur eigenvalues max diff"] <= 1e-8)

    # fate probabilities: absorb in the 1% latest cells of each branch, solve (I - Q) X = R 1_lineage
    order = np.argsort(pt)
    terminal = order[-max(2, n // 100):]
    lineages = [terminal[: terminal.size // 2], terminal[terminal.size // 2:]]
    transient = np.setdiff1d(np.arange(n), terminal)
    S = np.zeros((n, 2))
    for j, cells in enumerate(lineages):
        S[cells, j] = 1.0
    fates = {}
    for name in ("scipy", "cupy"):
        be = gpu if name == "cupy" else host
        Tn = T_dev if name == "cupy" else T_host

        def run(be=be, Tn=Tn, name=name):
            Qtt = be.submatrix(Tn, transient, transient)
            Rta = be.submatrix(Tn, transient, terminal)
            A = be.linear_combination([1.0, -1.0], [be.eye(transient.size), Qtt])
            rhs = be.spmm(Rta, be.asarray(S[terminal]))
            res = linalg.solve(A, rhs, tol=1e-12, backend=name)
            return be.to_host(res.X)

        fates[name] = timed("fate probabilities", name, run)
    fdiff = float(np.max(np.abs(fates["cupy"] - fates["scipy"])))
    result["checks"]["fate probabilities max diff"] = fdiff
    result["checks"]["fates ok (<= 1e-6)"] = bool(fdiff <= 1e-6)
    # CuPy's pool keeps freed blocks cached, so the bytes it holds at the end are its high-water mark
    result["peak device memory (CuPy pool bytes held at end, bytes)"] = int(pool.total_bytes())
    result["device memory used at end (driver, bytes)"] = device_used() - base_used
except Exception:
    result["errors"].append(traceback.format_exc())
    note(traceback.format_exc())
json.dump(result, open(f"{out}/pipeline_{n}.json", "w"), indent=2)
print(json.dumps({"n": n, "checks": result["checks"], "steps": result["steps"], "errors": len(result["errors"])}))
sys.exit(1 if result["errors"] or not all(v for key, v in result["checks"].items() if key.endswith("ok") or "ok (" in key) else 0)
PYEOF
done | tee "$OUT/pipeline.jsonl"

{
    echo "# GPU smoke ($(date -u +%FT%TZ), dry run: $DRY)"
    echo
    echo "tests: exit $status — $(tail -n 1 "$OUT/tests.log")"
    echo
    echo '```'
    cat "$OUT/pipeline.jsonl"
    echo '```'
} > "$OUT/summary.md"
echo "results in $OUT"
