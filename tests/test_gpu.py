"""The real CuPy on a CUDA device (marker ``gpu``; skipped with the reason where there is none):
contract basics, block GMRES and Krylov-Schur agree with the scipy backend."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg as sla
import scipy.sparse as sp

from cellfate_gpu.backends import get_backend

try:  # tests/ on sys.path (rootdir mode) or tests as a package
    from conftest import knn_chain
except ImportError:
    from tests.conftest import knn_chain


def _why_no_gpu() -> str | None:
    try:
        import cupy
    except ImportError:
        return "CuPy is not installed"
    if getattr(cupy, "IS_DOUBLE", False):
        return "the CuPy test double is on sys.path, not the real CuPy"
    try:
        if cupy.cuda.runtime.getDeviceCount() == 0:
            return "no CUDA device"
    except Exception as err:
        return f"no usable CUDA device ({err})"
    return None


_REASON = _why_no_gpu()
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(_REASON is not None, reason=f"needs a GPU: {_REASON}")]


@pytest.fixture
def gpu():
    return get_backend("cupy")


def test_contract_basics_on_gpu(gpu):
    P = knn_chain(500, seed=0)
    M = gpu.from_scipy_csr(P)
    X = np.random.default_rng(0).standard_normal((500, 6))
    np.testing.assert_allclose(gpu.to_host(gpu.spmm(M, gpu.asarray(X))), P @ X, rtol=1e-12)
    data, _, indptr = gpu.csr_components(M)
    np.testing.assert_allclose(gpu.to_host(gpu.segment_sum(data, indptr)), np.ones(500), rtol=1e-12)
    np.testing.assert_allclose(gpu.to_host(gpu.segment_max(data, indptr)), P.max(axis=1).toarray().ravel())
    np.testing.assert_allclose(gpu.to_scipy_csr(gpu.transpose(M)).toarray(), P.T.toarray())
    rows, cols = np.arange(0, 500, 7), np.arange(3, 500, 5)
    np.testing.assert_allclose(gpu.to_scipy_csr(gpu.submatrix(M, rows, cols)).toarray(), P[rows][:, cols].toarray())


def test_solve_on_gpu_agrees_with_scipy(gpu):
    n = 2000
    A = sp.csr_matrix(sp.identity(n) - 0.95 * knn_chain(n, seed=1))
    B = np.random.default_rng(1).standard_normal((n, 4))
    res = gpu.solve(gpu.from_scipy_csr(A), gpu.asarray(B), tol=1e-10)
    assert res.converged
    ref = get_backend("scipy").solve(A, B, method="direct")
    np.testing.assert_allclose(gpu.to_host(res.X), ref.X, rtol=1e-7, atol=1e-8)


def test_partial_schur_on_gpu_agrees_with_scipy(gpu):
    P = knn_chain(2000, seed=2)
    res = gpu.partial_schur(gpu.from_scipy_csr(P), 4, which="LR", tol=1e-10)
    ref = get_backend("scipy").partial_schur(P, 4, which="LR", tol=1e-10)
    assert res.converged and ref.converged
    np.testing.assert_allclose(np.sort_complex(res.eigenvalues), np.sort_complex(ref.eigenvalues), atol=1e-8)
    assert np.max(sla.subspace_angles(gpu.to_host(res.Q), ref.Q)) < 1e-6
