"""JAX-specific behaviour: the ELLPACK fast path and its fallback agree with SciPy, products are
float64, and the matrix pytree survives jax.jit."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from cellfate_gpu.backends import available_backends, get_backend

try:  # tests/ on sys.path (rootdir mode) or tests as a package
    from conftest import knn_chain
except ImportError:
    from tests.conftest import knn_chain

pytestmark = pytest.mark.skipif(available_backends().get("jax") is not None, reason="JAX not installed")


@pytest.fixture
def jbk():
    return get_backend("jax")


def test_ell_path_for_knn_rows(jbk):
    from cellfate_gpu.backends._jax import _ell_of

    P = knn_chain(300, k=10, seed=0)
    M = jbk.from_scipy_csr(P)
    ell = _ell_of(M)
    assert ell is not None and ell[0].shape[0] == 300
    X = np.random.default_rng(0).standard_normal((300, 6))
    Y = jbk.to_host(jbk.spmm(M, jbk.asarray(X)))
    assert Y.dtype == np.float64
    np.testing.assert_allclose(Y, P @ X, rtol=1e-13, atol=1e-15)


def test_segment_sum_path_for_uneven_rows(jbk):
    from cellfate_gpu.backends._jax import _ell_of

    A = sp.lil_matrix((200, 200))
    A[0, :] = np.arange(1.0, 201.0)  # one dense row: ELL would pad 200x
    A.setdiag(1.0)
    A = sp.csr_matrix(A)
    M = jbk.from_scipy_csr(A)
    assert _ell_of(M) is None
    x = np.random.default_rng(1).standard_normal(200)
    np.testing.assert_allclose(jbk.to_host(jbk.spmm(M, jbk.asarray(x))), A @ x, rtol=1e-13)


def test_matrix_is_a_pytree(jbk):
    import jax

    P = knn_chain(50, seed=1)
    M = jbk.from_scipy_csr(P)
    leaves, treedef = jax.tree_util.tree_flatten(M)
    assert len(leaves) == 4
    rebuilt = jax.tree_util.tree_unflatten(treedef, leaves)
    x = np.ones(50)
    np.testing.assert_allclose(jbk.to_host(jbk.spmm(rebuilt, jbk.asarray(x))), P @ x)
