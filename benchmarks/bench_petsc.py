"""PETSc/SLEPc vs the generic Krylov code on a kNN chain (pytest-benchmark).

Run: ``pytest benchmarks/bench_petsc.py --benchmark-only`` (10k cells), with ``CELLFATE_BENCH_LARGE=1``
(100k cells) or ``CELLFATE_BENCH_PETSC_N=1000000`` (any size); ``CELLFATE_BENCH_ROUNDS`` sets the
rounds (default 3). Under MPI, select the PETSc benchmarks (the SciPy ones would only repeat
themselves on every rank):
``mpiexec -n 2 python -m pytest benchmarks/bench_petsc.py --benchmark-only -k "slepc or ksp"``.
Each benchmark stores matvecs, iterations and the status in ``extra_info``; no timing asserts.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import scipy.sparse as sp

pytest.importorskip("pytest_benchmark", reason="pytest-benchmark not installed (extra 'bench')")

from cellfate_gpu.backends._petsc import PetscBackend

N_CELLS = int(
    os.environ.get("CELLFATE_BENCH_PETSC_N", 100_000 if os.environ.get("CELLFATE_BENCH_LARGE") == "1" else 10_000)
)
K_SCHUR = 10
ROUNDS = int(os.environ.get("CELLFATE_BENCH_ROUNDS", 3))
N_RHS = 8

needs_petsc = pytest.mark.skipif(
    PetscBackend.why_unavailable() is not None, reason=f"petsc backend unavailable: {PetscBackend.why_unavailable()}"
)


def knn_chain(n: int, k: int = 15, seed: int = 0) -> sp.csr_matrix:
    """Row-stochastic kNN transition matrix of cells along a 1-D trajectory with a forward drift.

    Cells sit at sorted pseudotimes; neighbours are the ``k`` nearest in pseudotime (a band, found
    without an O(n^2) distance matrix); weights are Gaussian in distance, doubled towards later cells.
    """
    rng = np.random.default_rng(seed)
    t = np.sort(rng.uniform(0.0, 1.0, n))
    offsets = np.concatenate([np.arange(-k, 0), np.arange(1, k + 1)])
    rows = np.repeat(np.arange(n), offsets.size)
    cols = np.clip(rows + np.tile(offsets, n), 0, n - 1)
    keep = cols != rows
    rows, cols = rows[keep], cols[keep]
    d = np.abs(t[cols] - t[rows])
    w = np.exp(-((d / (np.median(d) + 1e-12)) ** 2)) * np.where(cols > rows, 2.0, 1.0)
    T = sp.csr_matrix((w, (rows, cols)), shape=(n, n))
    T.sum_duplicates()
    return sp.csr_matrix(sp.diags(1.0 / np.asarray(T.sum(axis=1)).ravel()) @ T)


@pytest.fixture(scope="module")
def chain() -> sp.csr_matrix:
    return knn_chain(N_CELLS)


@pytest.fixture(scope="module")
def system(chain) -> tuple[sp.csr_matrix, np.ndarray]:
    """An absorption-like system ``(I - 0.99 T) X = B`` with ``N_RHS`` right-hand sides."""
    A = sp.csr_matrix(sp.identity(chain.shape[0]) - 0.99 * chain)
    B = np.zeros((chain.shape[0], N_RHS))
    B[np.arange(N_RHS) * (chain.shape[0] // N_RHS), np.arange(N_RHS)] = 1.0
    return A, B


def _record(benchmark, result) -> None:
    benchmark.extra_info.update(
        n_cells=N_CELLS,
        status=result.status.value,
        matvecs=int(result.matvecs),
        iterations=int(result.iterations),
        method=getattr(result, "method", "") or getattr(result, "backend", ""),
    )


@needs_petsc
def test_schur_slepc(benchmark, chain):
    be = PetscBackend()
    result = benchmark.pedantic(
        lambda: be.partial_schur(chain, K_SCHUR, which="LR", tol=1e-8), rounds=ROUNDS, iterations=1
    )
    _record(benchmark, result)


def test_schur_generic_krylov_schur(benchmark, chain):
    pytest.importorskip("cellfate_gpu.linalg.krylov_schur", reason="generic Krylov-Schur not in this tree yet")
    from cellfate_gpu.backends import get_backend

    be = get_backend("scipy")
    result = benchmark.pedantic(
        lambda: be.partial_schur(chain, K_SCHUR, which="LR", tol=1e-8), rounds=ROUNDS, iterations=1
    )
    _record(benchmark, result)


@needs_petsc
@pytest.mark.parametrize("preconditioner", ["jacobi", "ilu"])
def test_solve_ksp_gmres(benchmark, system, preconditioner):
    A, B = system
    be = PetscBackend()
    result = benchmark.pedantic(
        lambda: be.solve(A, B, method="gmres", tol=1e-8, preconditioner=preconditioner), rounds=ROUNDS, iterations=1
    )
    _record(benchmark, result)


def test_solve_block_gmres(benchmark, system):
    pytest.importorskip("cellfate_gpu.linalg.gmres", reason="generic block GMRES not in this tree yet")
    from cellfate_gpu.backends import get_backend

    A, B = system
    be = get_backend("scipy")
    result = benchmark.pedantic(
        lambda: be.solve(A, B, method="gmres", tol=1e-8, preconditioner="jacobi"), rounds=ROUNDS, iterations=1
    )
    _record(benchmark, result)
