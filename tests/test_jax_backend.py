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


# ---------------------------------------------------------------------------------------- x64 and compilation
def test_x64_is_required_not_switched_on(tmp_path):
    """Without 64-bit mode the backend is unavailable and says how to enable it; the flag stays off."""
    import os
    import subprocess
    import sys

    code = (
        "import jax\n"
        "from cellfate_gpu.backends import available_backends, get_backend, BackendUnavailableError\n"
        "reason = available_backends()['jax']\n"
        "assert reason is not None and 'JAX_ENABLE_X64=1' in reason and 'jax_enable_x64' in reason, reason\n"
        "try:\n"
        "    get_backend('jax')\n"
        "except BackendUnavailableError as err:\n"
        "    assert 'JAX_ENABLE_X64' in str(err)\n"
        "else:\n"
        "    raise SystemExit('get_backend did not raise')\n"
        "assert not jax.config.jax_enable_x64  # nobody flipped the process-wide flag\n"
        "jax.config.update('jax_enable_x64', True)\n"
        "assert available_backends()['jax'] is None and get_backend('jax').name == 'jax'\n"
        "print('ok')\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "JAX_ENABLE_X64"}
    env["JAX_PLATFORMS"] = "cpu"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


_COMPILES: list[str] = []
_LISTENING: list[bool] = []


def _count_compiles():
    """Start counting XLA compilations (``jax.monitoring`` backend-compile events); returns the list."""
    import jax

    if not _LISTENING:
        jax.monitoring.register_event_duration_secs_listener(
            lambda name, *args, **kwargs: _COMPILES.append(name) if "backend_compile" in name else None
        )
        _LISTENING.append(True)
    _COMPILES.clear()
    return _COMPILES


def test_krylov_schur_compiles_once_per_size(jbk):
    """The Arnoldi sweep is one fixed-shape XLA program: one Krylov-Schur run compiles at most 40
    programs (the eager generic loop compiled 248 at n = 2000), a second call none, and a new size
    one more sweep program, however many restarts and basis sizes the runs go through."""
    from cellfate_gpu.backends._jax import _sweep_kernels
    from cellfate_gpu.linalg.krylov_schur import _krylov_schur

    extend = _sweep_kernels()[0]
    P = knn_chain(700, seed=11)
    M = jbk.from_scipy_csr(P)
    compiles = _count_compiles()
    before = extend._cache_size()
    res = _krylov_schur(jbk, M, 5, which="LR", tol=1e-10, maxiter=None, ncv=None, v0=None, seed=0)
    assert res.converged and res.iterations > 3  # several restarts, several start columns p
    assert len(compiles) <= 40, len(compiles)
    assert extend._cache_size() == before + 1
    compiles.clear()
    again = _krylov_schur(jbk, M, 5, which="LR", tol=1e-10, maxiter=None, ncv=None, v0=None, seed=0)
    assert len(compiles) == 0, compiles
    np.testing.assert_allclose(again.eigenvalues, res.eigenvalues)
    M2 = jbk.from_scipy_csr(knn_chain(900, seed=12))
    _krylov_schur(jbk, M2, 5, which="LR", tol=1e-10, maxiter=None, ncv=None, v0=None, seed=0)
    assert extend._cache_size() == before + 2  # one sweep program per (n, m), not per step


def test_public_partial_schur_compiles_at_most_40_programs(jbk):
    """The whole public call -- the stochastic-matrix classification, the ELLPACK copy, the unit
    eigenspace deflation and the sweeps -- compiles at most 40 XLA programs at a new size (the
    eager row-id, segment-sum and ELLPACK set-up alone compiled 43 before they were jitted), and
    the row primitives are one program each."""
    from cellfate_gpu.backends._jax import _ell_builders, _row_kernels

    P = knn_chain(1100, seed=21)
    M = jbk.from_scipy_csr(P)
    compiles = _count_compiles()
    res = jbk.partial_schur(M, 5, which="LR", tol=1e-10)
    assert res.converged
    assert len(compiles) <= 40, len(compiles)
    np.testing.assert_allclose(
        np.linalg.norm(P @ jbk.to_host(res.Q) - jbk.to_host(res.Q) @ res.R, axis=0), 0.0, atol=1e-8
    )
    data, _, indptr = jbk.csr_components(M)

    def primitives():
        return jbk.segment_sum(data, indptr), jbk.segment_max(data, indptr), jbk.row_ids(indptr, int(data.shape[0]))

    compiles.clear()
    primitives()
    assert len(compiles) <= 3, compiles  # at most one program each (segment_sum ran in the call already)
    kernels = (*_row_kernels(), *_ell_builders())
    cached = [f._cache_size() for f in kernels]
    compiles.clear()
    for _ in range(3):  # the same shapes again: no new program
        primitives()
    assert len(compiles) == 0, compiles
    assert [f._cache_size() for f in kernels] == cached
    np.testing.assert_allclose(jbk.to_host(jbk.segment_sum(data, indptr)), np.asarray(P.sum(axis=1)).ravel())
    np.testing.assert_array_equal(jbk.to_host(jbk.segment_max(data, indptr)), P.max(axis=1).toarray().ravel())


def test_compiled_sweep_matches_the_generic_loop(jbk):
    """The hook changes where the work is compiled, not the answer: same Schur form as the scipy backend."""
    import scipy.linalg as sla

    P = knn_chain(500, seed=13)
    res = jbk.partial_schur(jbk.from_scipy_csr(P), 4, which="LR", tol=1e-10)
    ref = get_backend("scipy").partial_schur(P, 4, which="LR", tol=1e-10)
    Q = jbk.to_host(res.Q)
    assert res.converged
    np.testing.assert_allclose(np.sort_complex(res.eigenvalues), np.sort_complex(ref.eigenvalues), atol=1e-9)
    assert np.linalg.norm(P @ Q - Q @ res.R, 2) <= 1e-9
    np.testing.assert_allclose(Q.T @ Q, np.eye(Q.shape[1]), atol=1e-12)
    assert np.max(sla.subspace_angles(Q, ref.Q)) < 1e-6


@pytest.mark.parametrize("preconditioner", [None, "jacobi"])
def test_block_gmres_compiles_once_per_size(jbk, preconditioner):
    """One GMRES cycle is one compiled sweep and the cycle's start, packing and residual are fused
    (``backend.fuse``): a first solve at a new size compiles at most 40 programs (measured 25 without
    and 38 with Jacobi; the eager loop compiled 318 at n = 2000, 4 right-hand sides), a second solve
    none, and the answer is the dense one."""
    import scipy.sparse as sp_

    from cellfate_gpu.backends._jax import _gmres_kernels

    extend = _gmres_kernels()[0]
    n = 400
    A = sp_.csr_matrix(sp_.identity(n) - 0.95 * knn_chain(n, seed=14))
    B = np.random.default_rng(3).standard_normal((n, 3))
    Aj, Bj = jbk.from_scipy_csr(A), jbk.asarray(B)
    compiles = _count_compiles()
    res = jbk.solve(Aj, Bj, tol=1e-10, restart=15, preconditioner=preconditioner)
    assert res.converged and res.iterations > 15  # several cycles
    assert len(compiles) <= 40, len(compiles)  # incl. one-off set-up (ELL copy, Jacobi diagonal, fingerprint)
    cached = extend._cache_size()
    compiles.clear()
    again = jbk.solve(Aj, Bj, tol=1e-10, restart=15, preconditioner=preconditioner)
    assert len(compiles) == 0, compiles
    assert extend._cache_size() == cached
    np.testing.assert_allclose(jbk.to_host(again.X), np.linalg.solve(A.toarray(), B), rtol=1e-7, atol=1e-8)
