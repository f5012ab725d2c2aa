"""The backend contract, run against scipy, jax and cupy (under the strict CuPy double).

Every backend must give SciPy's answers for transfers, CSR components, segment reductions and sparse
algebra, and agree with the scipy backend on solves and partial Schur forms. Under the double any
implicit device->host conversion raises, and the Krylov methods' host reads are counted and bounded.
"""

from __future__ import annotations

import importlib.util
import math

import numpy as np
import pytest
import scipy.linalg as sla
import scipy.sparse as sp

from cellfate_gpu import settings
from cellfate_gpu.backends import available_backends, get_backend

try:  # tests/ on sys.path (rootdir mode) or tests as a package
    from conftest import knn_chain, random_stochastic
except ImportError:
    from tests.conftest import knn_chain, random_stochastic
try:  # tests/ on sys.path (rootdir mode) or tests as a package
    from cupy_double import install
except ImportError:
    from tests.cupy_double import install

_HAS_GENERIC = importlib.util.find_spec("cellfate_gpu.linalg.krylov_schur") is not None
needs_generic = pytest.mark.skipif(not _HAS_GENERIC, reason="generic Krylov code (linalg.krylov_schur) not there yet")


@pytest.fixture(params=["scipy", "jax", "cupy-double"])
def bk(request, monkeypatch):
    """A backend instance; ``cupy-double`` is the cupy backend over the strict CuPy double."""
    if request.param == "cupy-double":
        with install(monkeypatch):
            yield get_backend("cupy")
        return
    reason = available_backends().get(request.param)
    if reason is not None:
        pytest.skip(f"backend {request.param!r} unavailable: {reason}")
    yield get_backend(request.param)


def transfers(bk):
    """The double's transfer counter (``None`` for other backends)."""
    if bk.name != "cupy":
        return None
    import cupy

    return cupy.TRANSFERS if getattr(cupy, "IS_DOUBLE", False) else None


def random_csr(n: int, m: int, seed: int, empty_rows=(0, 3, -1, -2)) -> sp.csr_matrix:
    """Random CSR with negative values and empty rows, including the first and the last two."""
    rng = np.random.default_rng(seed)
    A = sp.random(n, m, density=0.3, random_state=rng, format="lil")
    A[A.nonzero()] = rng.standard_normal(A.nnz)  # negative values matter for the maxima
    for r in empty_rows:
        A[r % n, :] = 0
    A = sp.csr_matrix(A)
    A.eliminate_zeros()
    A.sort_indices()
    return A


def dense(bk, M) -> np.ndarray:
    return bk.to_scipy_csr(M).toarray()


# ---------------------------------------------------------------------------------------- transfers
def test_array_round_trip(bk):
    x = np.random.default_rng(0).standard_normal((7, 3))
    d = bk.asarray(x)
    np.testing.assert_array_equal(bk.to_host(d), x)
    np.testing.assert_array_equal(bk.to_host(bk.asarray(x[:, 0], dtype=np.float32)), x[:, 0].astype(np.float32))


def test_csr_round_trip_and_components(bk):
    A = random_csr(12, 9, seed=1)
    M = bk.from_scipy_csr(A, dtype=np.float64)
    assert bk.is_native(M)
    B = bk.to_scipy_csr(M)
    assert B.shape == A.shape
    np.testing.assert_array_equal(B.toarray(), A.toarray())
    data, indices, indptr = (bk.to_host(c) for c in bk.csr_components(M))
    np.testing.assert_array_equal(data, A.data)
    np.testing.assert_array_equal(indices, A.indices)
    np.testing.assert_array_equal(indptr, A.indptr)
    rebuilt = bk.csr_from_components(*bk.csr_components(M), shape=A.shape)
    np.testing.assert_array_equal(dense(bk, rebuilt), A.toarray())


def test_duplicates_are_summed_on_the_way_in(bk):
    A = sp.csr_matrix((np.array([1.0, 2.0, 3.0]), np.array([1, 1, 0]), np.array([0, 2, 3])), shape=(2, 2))
    np.testing.assert_array_equal(dense(bk, bk.from_scipy_csr(A, dtype=np.float64)), [[0, 3], [3, 0]])


# ---------------------------------------------------------------------------------------- segments
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_segment_sum_max_row_ids(bk, seed):
    A = random_csr(15, 11, seed=seed)
    data, _, indptr = bk.csr_components(bk.from_scipy_csr(A, dtype=np.float64))
    counts = np.diff(A.indptr)
    assert counts[0] == 0 and counts[-1] == 0 and counts[-2] == 0
    expected_sum = np.array([A.data[a:b].sum() for a, b in zip(A.indptr[:-1], A.indptr[1:], strict=True)])
    expected_max = np.array(
        [A.data[a:b].max() if b > a else -np.inf for a, b in zip(A.indptr[:-1], A.indptr[1:], strict=True)]
    )
    np.testing.assert_allclose(bk.to_host(bk.segment_sum(data, indptr)), expected_sum, rtol=1e-14, atol=1e-14)
    np.testing.assert_array_equal(bk.to_host(bk.segment_max(data, indptr)), expected_max)
    np.testing.assert_array_equal(bk.to_host(bk.row_ids(indptr)), np.repeat(np.arange(15), counts))
    np.testing.assert_allclose(bk.to_host(bk.row_sums(bk.from_scipy_csr(A, dtype=np.float64))), expected_sum)


def test_segment_reductions_all_empty(bk):
    indptr = bk.asarray(np.zeros(4, dtype=np.int64))
    values = bk.asarray(np.zeros(0))
    np.testing.assert_array_equal(bk.to_host(bk.segment_sum(values, indptr)), np.zeros(3))
    np.testing.assert_array_equal(bk.to_host(bk.segment_max(values, indptr)), np.full(3, -np.inf))


# ---------------------------------------------------------------------------------------- algebra
def test_spmm_vector_and_block(bk):
    A = random_stochastic(40, 0.15, seed=3)
    M = bk.from_scipy_csr(A, dtype=np.float64)
    X = np.random.default_rng(4).standard_normal((40, 5))
    np.testing.assert_allclose(bk.to_host(bk.spmm(M, bk.asarray(X))), A @ X, rtol=1e-13, atol=1e-14)
    np.testing.assert_allclose(bk.to_host(bk.spmm(M, bk.asarray(X[:, 1]))), A @ X[:, 1], rtol=1e-13, atol=1e-14)


def test_spmm_uneven_rows(bk):
    """A matrix with one long row (not ELL-friendly on jax) still multiplies exactly."""
    A = sp.random(50, 50, density=0.02, random_state=5, format="lil")
    A[7, :] = np.arange(1.0, 51.0)
    A = sp.csr_matrix(A)
    X = np.random.default_rng(6).standard_normal((50, 3))
    np.testing.assert_allclose(bk.to_host(bk.spmm(bk.from_scipy_csr(A, dtype=np.float64), bk.asarray(X))), A @ X)


def test_structural_operations(bk):
    A, B = random_csr(10, 10, seed=7), random_csr(10, 10, seed=8, empty_rows=(5,))
    MA, MB = bk.from_scipy_csr(A, dtype=np.float64), bk.from_scipy_csr(B, dtype=np.float64)
    np.testing.assert_allclose(dense(bk, bk.transpose(MA)), A.T.toarray())
    np.testing.assert_allclose(
        dense(bk, bk.linear_combination([2.0, -0.5], [MA, MB])), 2 * A.toarray() - 0.5 * B.toarray()
    )
    np.testing.assert_allclose(dense(bk, bk.multiply(MA, MB)), A.toarray() * B.toarray())
    rows, cols = np.array([9, 2, 4]), np.array([0, 8, 3, 3])
    np.testing.assert_allclose(dense(bk, bk.submatrix(MA, rows, cols)), A.toarray()[rows][:, cols])
    np.testing.assert_array_equal(dense(bk, bk.eye(4)), np.eye(4))
    d = np.arange(1.0, 11.0)
    np.testing.assert_allclose(dense(bk, bk.scale_rows(MA, bk.asarray(d))), d[:, None] * A.toarray())
    # results are canonical: sorted indices, no duplicates
    for M in (bk.transpose(MA), bk.linear_combination([1.0, 1.0], [MA, MB]), bk.multiply(MA, MB)):
        S = bk.to_scipy_csr(M)
        assert S.has_sorted_indices
        summed = S.copy()
        summed.sum_duplicates()
        assert summed.nnz == S.nnz


# ---------------------------------------------------------------------------------------- heavy ops
@needs_generic
def test_solve_agrees_with_scipy(bk):
    n = 300
    P = knn_chain(n, seed=1)
    A = sp.csr_matrix(sp.identity(n) - 0.95 * P)
    B = np.random.default_rng(2).standard_normal((n, 3))
    reference = np.linalg.solve(A.toarray(), B)
    counter = transfers(bk)
    if counter is not None:
        counter.clear()
    res = bk.solve(bk.from_scipy_csr(A, dtype=np.float64), bk.asarray(B), tol=1e-10, restart=10)
    assert res.converged, res
    X = bk.to_host(res.X)
    np.testing.assert_allclose(X, reference, rtol=1e-7, atol=1e-8)
    assert np.all(res.residual_norms <= 1e-10)
    if counter is not None:
        cycles = math.ceil(res.iterations / 10)
        # one Hessenberg read per cycle, the final true residual, the explicit read above, and the
        # prepared solver's matrix fingerprint (linalg/solvers.py ``_fingerprint``: three strided
        # samples of at most 4097 entries each, not the matrix)
        assert counter["d2h"] <= cycles + 3 + 3, (dict(counter), res.iterations)
        assert counter["sync"] <= cycles + 2, dict(counter)


@needs_generic
def test_partial_schur_agrees_with_scipy(bk):
    n, k = 400, 4
    P = knn_chain(n, seed=3)
    ref = get_backend("scipy").partial_schur(P, k, which="LR", tol=1e-10)
    counter = transfers(bk)
    if counter is not None:
        counter.clear()
    res = bk.partial_schur(bk.from_scipy_csr(P, dtype=np.float64), k, which="LR", tol=1e-10, ncv=12)
    assert res.converged, res
    if counter is not None:
        # one read of the new Hessenberg columns per restart plus a small constant
        # (+ 5: the constant reads of the eigenvalue-1 classification in linalg/_classes.py)
        assert counter["d2h"] <= res.iterations + 2 + 5, (dict(counter), res.iterations)
        assert counter["sync"] <= 2, dict(counter)
    Q = bk.to_host(res.Q)
    np.testing.assert_allclose(np.sort_complex(res.eigenvalues), np.sort_complex(ref.eigenvalues), atol=1e-8)
    np.testing.assert_allclose(Q.T @ Q, np.eye(Q.shape[1]), atol=1e-10)
    np.testing.assert_allclose(P @ Q, Q @ res.R, atol=1e-8)
    # same invariant subspace as the scipy backend (principal angles ~ 0)
    angles = sla.subspace_angles(Q, ref.to_host().Q)
    assert np.max(angles) < 1e-6


# ---------------------------------------------------------------------------------------- precision
def test_float32_storage_accumulates_in_float64(bk):
    if bk.name != "cupy":
        pytest.skip(f"settings.dtype storage is a cupy-backend option ({bk.name} keeps the input dtype)")
    A = random_stochastic(60, 0.1, seed=9)
    with settings.using(dtype="float32"):
        M = bk.from_scipy_csr(A)
    assert bk.csr_components(M)[0].dtype == np.float32
    X = np.random.default_rng(10).standard_normal((60, 2))
    Y = bk.to_host(bk.spmm(M, bk.asarray(X)))
    assert Y.dtype == np.float64
    exact = A.astype(np.float32).astype(np.float64) @ X
    np.testing.assert_allclose(Y, exact, rtol=1e-12, atol=1e-12)
