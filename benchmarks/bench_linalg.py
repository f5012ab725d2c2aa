"""Generic Krylov-Schur and block GMRES vs SciPy/ARPACK on kNN transition matrices (pytest-benchmark).

Run: ``pytest benchmarks/bench_linalg.py --benchmark-only`` (10k cells) or with
``CELLFATE_BENCH_LARGE=1`` (100k cells).  Matvecs and statuses go to ``extra_info``; no timing asserts.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import scipy.sparse.linalg as spla

pytest.importorskip("pytest_benchmark", reason="pytest-benchmark not installed (extra 'bench')")

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from _matrices import knn_transition

from cellfate_gpu.linalg import partial_schur, solve

N_CELLS = 100_000 if os.environ.get("CELLFATE_BENCH_LARGE") == "1" else 10_000
K_SCHUR = 20
N_RHS = 6


@pytest.fixture(scope="module")
def T():
    return knn_transition(N_CELLS, seed=0, kind="cycle", directed=1.0)


@pytest.fixture(scope="module")
def system(T):
    A = sp.csr_matrix(sp.identity(N_CELLS) - 0.98 * T)
    B = np.random.default_rng(0).standard_normal((N_CELLS, N_RHS))
    return A, B


def test_partial_schur_krylov_schur(benchmark, T):
    res = benchmark.pedantic(
        lambda: partial_schur(T, K_SCHUR, which="LR", tol=1e-8, backend="scipy", throw=False), rounds=1, iterations=1
    )
    benchmark.extra_info.update(matvecs=res.matvecs, restarts=res.iterations, status=res.status.value, n=N_CELLS)


def test_partial_schur_arpack(benchmark, T):
    counter = {"matvecs": 0}

    def matvec(x):
        counter["matvecs"] += 1
        return T @ x

    op = spla.LinearOperator(T.shape, matvec=matvec, dtype=np.float64)
    benchmark.pedantic(
        lambda: spla.eigs(op, K_SCHUR, which="LR", tol=1e-8, ncv=2 * K_SCHUR + 1), rounds=1, iterations=1
    )
    benchmark.extra_info.update(matvecs=counter["matvecs"], n=N_CELLS)


def test_block_gmres(benchmark, system):
    A, B = system
    res = benchmark.pedantic(
        lambda: solve(A, B, method="gmres", tol=1e-8, backend="scipy", throw=False), rounds=1, iterations=1
    )
    benchmark.extra_info.update(matvecs=res.matvecs, iterations=res.iterations, status=res.status.value, n=N_CELLS)


def test_scipy_gmres_per_column(benchmark, system):
    A, B = system
    counter = {"matvecs": 0}

    def matvec(x):
        counter["matvecs"] += 1
        return A @ x

    op = spla.LinearOperator(A.shape, matvec=matvec, dtype=np.float64)

    def run():
        return [spla.gmres(op, B[:, j], rtol=1e-8, restart=50, maxiter=200)[1] for j in range(N_RHS)]

    infos = benchmark.pedantic(run, rounds=1, iterations=1)
    benchmark.extra_info.update(matvecs=counter["matvecs"], infos=infos, n=N_CELLS)
