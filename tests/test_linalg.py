"""Krylov-Schur, block GMRES and partial eig against dense references (scipy backend)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from _matrices import knn_transition, random_stochastic, sorted_eigenvalues

from cellfate_gpu.backends import Status
from cellfate_gpu.linalg import SolveError, partial_eig, partial_schur, solve

CASES = [
    pytest.param(dict(n=500, seed=0, kind="branch", directed=0.0), id="branch-reversible-500"),
    pytest.param(dict(n=900, seed=1, kind="branch", directed=0.0), id="branch-reversible-900"),
    pytest.param(dict(n=600, seed=2, kind="cycle", directed=1.0), id="cycle-directed-600"),
    pytest.param(dict(n=1200, seed=3, kind="cycle", directed=1.0), id="cycle-directed-1200"),
    pytest.param(dict(n=500, seed=4, kind="cycle", directed=3.0), id="cycle-strong-500"),
]


@pytest.fixture(scope="module", params=CASES)
def chain(request):
    A = knn_transition(**request.param)
    return A


@pytest.mark.parametrize("which", ["LR", "LM"])
def test_partial_schur_invariants(chain, which):
    A = chain
    k = 6
    res = partial_schur(A, k, which=which, tol=1e-10, backend="scipy")
    assert res.status is Status.CONVERGED
    Q, R = res.Q, res.R
    kk = Q.shape[1]
    assert kk in (k, k + 1)
    anorm = np.linalg.norm(A.toarray(), 2)
    # per column residual bound of the algorithm, and the whole block within sqrt(k')
    assert np.linalg.norm(A @ Q - Q @ R, axis=0).max() <= 1e-10 * anorm
    assert np.linalg.norm(A @ Q - Q @ R) <= np.sqrt(kk) * 1e-10 * anorm
    assert np.abs(Q.T @ Q - np.eye(kk)).max() <= 1e-12
    assert np.allclose(np.tril(R, -2), 0)
    ref = sorted_eigenvalues(A, which)[:kk]
    np.testing.assert_allclose(res.eigenvalues, ref, atol=1e-10)
    # no conjugate pair split: a returned complex eigenvalue has its conjugate among those returned
    lam = np.asarray(res.eigenvalues)
    for z in lam[np.abs(lam.imag) > 1e-12]:
        assert np.min(np.abs(lam - np.conj(z))) <= 1e-8, (z, lam)
    if kk == k + 1:  # one more was returned only to keep the k-th's partner
        assert abs(lam[k - 1].imag) > 1e-12 and np.isclose(lam[k], np.conj(lam[k - 1]))


@pytest.mark.parametrize("which", ["SR", "LI"])
def test_partial_schur_other_which(which):
    A = knn_transition(400, seed=5, kind="cycle", directed=1.0)
    k = 3
    # shift-free Krylov finds extremal eigenvalues; SM needs a small k and enough restarts
    res = partial_schur(A, k, which=which, tol=1e-10, backend="scipy", maxiter=3000, ncv=40, throw=False)
    assert res.status is Status.CONVERGED, f"{which} did not converge: {res.status} after {res.iterations} restarts"
    kk = res.Q.shape[1]
    ref = sorted_eigenvalues(A, which)[:kk]
    np.testing.assert_allclose(np.sort_complex(res.eigenvalues), np.sort_complex(ref), atol=1e-9)


def test_conjugate_pair_not_split():
    A = knn_transition(600, seed=2, kind="cycle", directed=1.0)
    ref = sorted_eigenvalues(A, "LR")
    # first k whose k-th and (k+1)-th eigenvalues are a conjugate pair
    k = next(i for i in range(1, 10) if ref[i - 1].imag != 0 and np.isclose(ref[i], np.conj(ref[i - 1])))
    res = partial_schur(A, k, which="LR", backend="scipy")
    assert res.Q.shape[1] == k + 1
    assert res.R.shape == (k + 1, k + 1)
    np.testing.assert_allclose(res.eigenvalues, ref[: k + 1], atol=1e-10)


def test_deterministic():
    A = knn_transition(500, seed=0, kind="cycle", directed=1.0)
    r1 = partial_schur(A, 4, backend="scipy")
    r2 = partial_schur(A, 4, backend="scipy")
    np.testing.assert_array_equal(r1.Q, r2.Q)
    assert r1.matvecs == r2.matvecs


def test_schur_max_iter():
    A = knn_transition(500, seed=4, kind="cycle", directed=3.0)
    res = partial_schur(A, 6, which="LM", tol=1e-14, maxiter=2, backend="scipy", throw=False)
    assert res.status is Status.MAX_ITER
    assert res.iterations == 2


def test_partial_eig_right_left():
    A = knn_transition(600, seed=2, kind="cycle", directed=1.0)
    res = partial_eig(A, 5, which="LR", left=True, backend="scipy")
    lam, V, W = res.eigenvalues, res.vectors, res.left_vectors
    assert np.iscomplexobj(lam)
    assert np.linalg.norm(A @ V - V * lam) <= 1e-8
    assert np.linalg.norm(W.conj().T @ A - lam[:, None] * W.conj().T) <= 1e-8
    np.testing.assert_allclose(lam, sorted_eigenvalues(A, "LR")[: lam.size], atol=1e-10)


def test_partial_eig_real():
    A = knn_transition(500, seed=0, kind="branch", directed=0.0)
    res = partial_eig(A, 4, backend="scipy")
    assert not np.iscomplexobj(res.eigenvalues) and not np.iscomplexobj(res.vectors)
    assert np.linalg.norm(A @ res.vectors - res.vectors * res.eigenvalues) <= 1e-8


# ----------------------------------------------------------------------------- solves
def _system(n, seed):
    A = knn_transition(n, seed=seed, kind="cycle", directed=1.0)
    return sp.csr_matrix(sp.eye(n) - 0.95 * A)


@pytest.mark.parametrize("m", [1, 8])
@pytest.mark.parametrize(
    ("method", "pc"),
    [("gmres", None), ("gmres", "jacobi"), ("gmres", "ilu"), ("direct", None)],
    ids=["gmres", "gmres-jacobi", "gmres-ilu", "direct"],
)
@pytest.mark.parametrize("seed", [0, 1])
def test_solve_matches_dense(seed, method, pc, m):
    n = 500 + 300 * seed
    M = _system(n, seed) if seed == 0 else sp.csr_matrix(sp.eye(n) * 1.5 - random_stochastic(n, seed=seed))
    rng = np.random.default_rng(seed)
    B = rng.standard_normal(n) if m == 1 else rng.standard_normal((n, m))
    res = solve(M, B, method=method, preconditioner=pc, tol=1e-12, backend="scipy")
    assert res.status is Status.CONVERGED
    assert res.X.shape == B.shape
    assert np.all(res.residual_norms <= 1e-12 * 10 if method == "direct" else res.residual_norms <= 1e-12)
    np.testing.assert_allclose(res.X, np.linalg.solve(M.toarray(), B), atol=1e-8)


def test_solve_zero_columns():
    M = _system(400, 0)
    B = np.random.default_rng(0).standard_normal((400, 3))
    B[:, 1] = 0
    res = solve(M, B, method="gmres", tol=1e-10, backend="scipy")
    assert np.all(res.X[:, 1] == 0) and res.residual_norms[1] == 0


def test_solve_max_iter():
    M = _system(500, 0)
    B = np.random.default_rng(3).standard_normal((500, 2))
    res = solve(M, B, method="gmres", tol=1e-12, maxiter=3, throw=False, backend="scipy")
    assert res.status is Status.MAX_ITER and res.iterations == 3
    with pytest.raises(SolveError, match=r"did not converge.*maxiter"):
        solve(M, B, method="gmres", tol=1e-12, maxiter=3, backend="scipy")


def test_bad_input():
    A = knn_transition(100, seed=0)
    with pytest.raises(ValueError, match="square"):
        partial_schur(sp.csr_matrix(np.ones((3, 4))), 1)
    bad = A.copy()
    bad.data[0] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        partial_schur(bad, 2)
    with pytest.raises(ValueError, match="non-finite"):
        solve(bad, np.ones(100))
    with pytest.raises(ValueError, match="B must"):
        solve(A, np.ones(99))
    with pytest.raises(ValueError, match="k must"):
        partial_schur(A, 100)
    with pytest.raises(ValueError, match="tol"):
        partial_schur(A, 2, tol=0)
    with pytest.raises(ValueError, match="tol"):
        solve(A, np.ones(100), tol=-1)
    with pytest.raises(ValueError, match="which"):
        partial_schur(A, 2, which="XX")
    with pytest.raises(ValueError, match="method"):
        solve(A, np.ones(100), method="cg")
    with pytest.raises(ValueError, match="backend"):
        partial_schur(A, 2, backend="nope")
    with pytest.raises(ValueError, match="B contains non-finite"):
        solve(sp.csr_matrix(sp.eye(100)) - 0.5 * A, np.full(100, np.nan), method="gmres", backend="scipy")


def test_direct_solve_reuses_the_factorisation_through_the_result():
    from cellfate_gpu.backends import _scipy
    from cellfate_gpu.linalg import Direct, Prepared

    assert not hasattr(_scipy, "_LAST_LU")  # no module-level cache: the factors travel in the result
    rng = np.random.default_rng(0)
    A = sp.csr_matrix(sp.random(300, 300, density=0.05, random_state=rng) + sp.identity(300) * 5.0)
    B = rng.standard_normal((300, 3))
    first = solve(A, B, method="direct", backend="scipy")
    assert isinstance(first.prepared, Prepared) and first.prepared.solver == Direct()
    run = first.prepared.run
    second = solve(A.copy(), 2.0 * B, solver=first.prepared, backend="scipy")  # an equal copy: same factors
    assert second.prepared is first.prepared and second.prepared.run is run
    np.testing.assert_allclose(second.X, 2.0 * first.X, rtol=1e-12, atol=1e-12)
    A2 = A.copy()
    A2.data[0] += 1.0  # a different matrix is refused by the prepared solver ...
    with pytest.raises(ValueError, match="another matrix"):
        solve(A2, B, solver=first.prepared, backend="scipy")
    third = solve(A2, B, method="direct", backend="scipy")  # ... and factorised afresh by the value
    assert third.prepared is not first.prepared
    np.testing.assert_allclose(third.X, np.linalg.solve(A2.toarray(), B), rtol=1e-9, atol=1e-12)


def test_direct_solve_of_a_singular_system_is_not_converged():
    # Issue 13.6: a random 50-state chain, I - P is singular (P 1 = 1); the residual decides, on every method
    P = sp.csr_matrix(np.random.default_rng(0).dirichlet(np.ones(50), size=50))
    A = sp.csr_matrix(sp.identity(50) - P)
    b = np.random.default_rng(1).standard_normal(50)
    for method in ("direct", "gmres"):
        res = solve(A, b, method=method, backend="scipy", throw=False, maxiter=200)
        assert res.status is not Status.CONVERGED, (method, res.residual_norms)
        with pytest.raises(SolveError, match="did not converge"):
            solve(A, b, method=method, backend="scipy", maxiter=200)


def test_sparse_rhs_and_bad_restart_are_refused():
    A = _system(100, 0)
    with pytest.raises(TypeError, match="B must be a dense array"):
        solve(A, sp.csr_matrix(np.ones((100, 2))))
    for bad in (-3, 0, 2.5, True):
        with pytest.raises(ValueError, match="restart must be a positive integer"):
            solve(A, np.ones(100), method="gmres", restart=bad)
