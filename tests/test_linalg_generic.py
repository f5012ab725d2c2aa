"""Generic Krylov-Schur and batched GMRES against dense references, on every host backend."""

import numpy as np
import pytest
import scipy.linalg as sla
import scipy.sparse as sp
from conftest import knn_chain, random_stochastic

from cellfate_gpu.backends import Status
from cellfate_gpu.linalg import SchurError, SolveError, partial_eig, partial_schur, solve
from cellfate_gpu.linalg.krylov_schur import sort_key


def _reference_eigs(A, which, k):
    """Top-k eigenvalues by `which` and their condition numbers 1/|w^H v| (unit left/right vectors)."""
    ev, W, V = sla.eig(A.toarray(), left=True, right=True)
    order = np.argsort(-sort_key(which)(ev), kind="stable")[:k]
    W, V = W[:, order] / np.linalg.norm(W[:, order], axis=0), V[:, order] / np.linalg.norm(V[:, order], axis=0)
    return ev[order], 1.0 / np.abs(np.sum(W.conj() * V, axis=0))


def _host(x, backend):
    """A result array on the host through the backend's named transfer (device arrays refuse ``np.asarray``)."""
    from cellfate_gpu.backends import get_backend

    return get_backend(backend).to_host(x)


MATRICES = {
    "random-800-s1": lambda: random_stochastic(800, 0.02, 1),
    "random-1200-s2": lambda: random_stochastic(1200, 0.01, 2),
    "knn-1500": lambda: knn_chain(1500, seed=3),
}


@pytest.mark.parametrize("name", list(MATRICES))
@pytest.mark.parametrize(("which", "k"), [("LR", 6), ("LM", 10), ("SR", 5)])
def test_partial_schur_is_a_schur_form(name, which, k, backend):
    A = MATRICES[name]()
    res = partial_schur(A, k, which=which, tol=1e-10, backend=backend)
    Q, R = _host(res.Q, backend), res.R
    kk = Q.shape[1]
    assert kk in (k, k + 1)
    assert res.status is Status.CONVERGED and res.matvecs > 0
    normA = sla.norm(A.toarray(), 2)
    assert np.linalg.norm(A @ Q - Q @ R, 2) <= 1e-10 * normA
    np.testing.assert_allclose(Q.T @ Q, np.eye(kk), atol=1e-12)
    assert np.allclose(np.tril(R, -2), 0)  # quasi-upper-triangular
    ref, cond = _reference_eigs(A, which, kk)
    # First-order perturbation bound: |dλ| <= κ(λ) ||AQ - QR||; 1e-10 for well-conditioned eigenvalues.
    for lam, kappa in zip(ref, cond, strict=True):
        assert np.min(np.abs(res.eigenvalues - lam)) <= max(1e-10, 10 * kappa * 1e-10 * normA)
    # ordered by `which`, conjugate pairs together
    scores = sort_key(which)(res.eigenvalues)
    assert np.all(np.diff(scores) <= 1e-10)
    complex_ev = res.eigenvalues[np.abs(res.eigenvalues.imag) > 1e-12]
    assert np.allclose(np.sort_complex(complex_ev), np.sort_complex(complex_ev.conj()))


def test_partial_schur_keeps_conjugate_pair_together():
    # A block-diagonal matrix with a rotation block: eigenvalues 0.9 and 0.8 ± 0.3i, then small ones.
    blocks = [np.array([[0.9]]), np.array([[0.8, 0.3], [-0.3, 0.8]])] + [np.array([[0.1 * i / 50]]) for i in range(50)]
    A = sp.csr_matrix(sla.block_diag(*blocks))
    res = partial_schur(A, 2, which="LR")
    assert res.Q.shape[1] == 3
    np.testing.assert_allclose(
        np.sort_complex(res.eigenvalues), np.sort_complex([0.9, 0.8 + 0.3j, 0.8 - 0.3j]), atol=1e-10
    )


def test_partial_eig_left_and_right():
    A = knn_chain(800, seed=5)
    res = partial_eig(A, 4, which="LR", left=True)
    V, W = np.asarray(res.vectors), np.asarray(res.left_vectors)
    for j, lam in enumerate(res.eigenvalues):
        assert np.linalg.norm(A @ V[:, j] - lam * V[:, j]) <= 1e-8
        assert np.linalg.norm(W[:, j].conj() @ A - lam * W[:, j].conj()) <= 1e-8  # w^H A = lambda w^H
    pi = np.abs(W[:, 0]) / np.abs(W[:, 0]).sum()
    np.testing.assert_allclose(pi @ A, pi, atol=1e-10)


def _absorbing_system(n=1200, seed=0, m=8):
    T = knn_chain(n, seed=seed)
    rng = np.random.default_rng(seed)
    trans = np.arange(n - n // 10)
    A = sp.identity(trans.size, format="csr") - T[trans][:, trans]
    B = rng.random((trans.size, m))
    return sp.csr_matrix(A), B


@pytest.mark.parametrize("nrhs", [1, 8])
@pytest.mark.parametrize(("method", "pc"), [("gmres", None), ("gmres", "jacobi"), ("direct", None)])
def test_solve_matches_dense(nrhs, method, pc, backend):
    if method == "direct" and backend != "scipy":
        pytest.skip("direct solves are offered by the scipy backend")
    A, B = _absorbing_system(m=nrhs)
    B = B[:, 0] if nrhs == 1 else B
    res = solve(A, B, method=method, preconditioner=pc, tol=1e-12, backend=backend)
    X = _host(res.X, backend)
    assert X.shape == B.shape
    ref = np.linalg.solve(A.toarray(), B)
    np.testing.assert_allclose(X, ref, atol=1e-8, rtol=1e-8)
    assert np.all(res.residual_norms <= 1e-12)
    assert res.status is Status.CONVERGED


def test_ilu_preconditioner_on_scipy():
    A, B = _absorbing_system(m=6)
    res = solve(A, B, method="gmres", preconditioner="ilu", tol=1e-11, backend="scipy")
    np.testing.assert_allclose(res.X, np.linalg.solve(A.toarray(), B), atol=1e-8)
    plain = solve(A, B, method="gmres", tol=1e-11, backend="scipy")
    assert res.matvecs < plain.matvecs  # the preconditioner does its job


def test_too_few_iterations_reports_max_iter():
    A, B = _absorbing_system(m=3)
    res = solve(A, B, method="gmres", maxiter=3, tol=1e-12, throw=False)
    assert res.status is Status.MAX_ITER
    assert np.any(res.residual_norms > 1e-12)
    with pytest.raises(SolveError, match=r"did not converge.*maxiter"):
        solve(A, B, method="gmres", maxiter=3, tol=1e-12)


def test_schur_max_iter_raises():
    A = random_stochastic(600, 0.02, 4)
    with pytest.raises(SchurError, match="did not converge"):
        partial_schur(A, 10, which="SM", maxiter=1, tol=1e-14)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda A, B: partial_schur(sp.random(5, 6, format="csr"), 2), "square"),
        (lambda A, B: partial_schur(A, A.shape[0]), "k must be"),
        (lambda A, B: partial_schur(A, 3, which="XX"), "which must be"),
        (lambda A, B: partial_schur(A, 3, tol=0), "tol must be"),
        (lambda A, B: solve(A, B[:-1]), "B must have shape"),
        (lambda A, B: solve(A, B, method="magic"), "method must be"),
        (lambda A, B: solve(A, B, backend="nope"), "Unknown backend 'nope'"),
        (lambda A, B: solve(A, B, maxiter=0), "maxiter must be"),
    ],
)
def test_bad_input_names_the_argument(call, match):
    A, B = _absorbing_system(n=200, m=2)
    with pytest.raises(ValueError, match=match):
        call(A, B)


def test_nonfinite_matrix_is_rejected():
    A, B = _absorbing_system(n=200, m=2)
    A = A.copy()
    A.data[0] = np.nan
    with pytest.raises(ValueError, match="1 non-finite"):
        solve(A, B)
