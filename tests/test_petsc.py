"""The ``petsc`` backend (serial): SLEPc partial Schur and PETSc KSP against dense references."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg as sla
import scipy.sparse as sp

from cellfate_gpu.backends._petsc import PetscBackend, sorted_real_schur
from cellfate_gpu.backends._results import Status

pytestmark = pytest.mark.petsc

_REASON = PetscBackend.why_unavailable()
if _REASON is not None:
    pytest.skip(f"petsc backend unavailable: {_REASON}", allow_module_level=True)


# ----------------------------------------------------------------------------- data
def knn_transition(n: int = 300, k: int = 10, seed: int = 0) -> sp.csr_matrix:
    """Row-stochastic kNN transition matrix of a noisy 1-D trajectory with a forward drift."""
    rng = np.random.default_rng(seed)
    t = np.sort(rng.uniform(0.0, 1.0, n))
    X = np.column_stack([t, 0.03 * rng.standard_normal(n)])
    D = np.linalg.norm(X[:, None, :] - X[None, :, :], axis=-1)
    nbrs = np.argsort(D, axis=1)[:, 1 : k + 1]
    rows = np.repeat(np.arange(n), k)
    cols = nbrs.ravel()
    d = D[rows, cols]
    w = np.exp(-((d / np.median(d)) ** 2)) * np.where(t[cols] > t[rows], 2.0, 1.0)  # drift: non-symmetric
    T = sp.csr_matrix((w, (rows, cols)), shape=(n, n))
    return sp.csr_matrix(sp.diags(1.0 / np.asarray(T.sum(axis=1)).ravel()) @ T)


def random_nonsymmetric(n: int = 200, seed: int = 1) -> sp.csr_matrix:
    """Sparse random matrix with plenty of complex-conjugate eigenvalue pairs."""
    A = sp.random(n, n, density=0.05, random_state=np.random.default_rng(seed), format="csr")
    return sp.csr_matrix(A + sp.diags(np.linspace(0.0, 1.0, n)))


def order_by(which: str, ev: np.ndarray) -> np.ndarray:
    key = {"LR": -ev.real, "SR": ev.real, "LM": -np.abs(ev), "SM": np.abs(ev), "LI": -np.abs(ev.imag)}[which]
    return ev[np.lexsort((-ev.imag, key))]


def reference_subspace(A: np.ndarray, ev_wanted: np.ndarray) -> np.ndarray:
    """Orthonormal basis of the span of the (real and imaginary parts of the) wanted eigenvectors."""
    ev, V = np.linalg.eig(A)
    idx = [int(np.argmin(np.abs(ev - lam))) for lam in ev_wanted]
    W = V[:, idx]
    return sla.orth(np.column_stack([W.real, W.imag]))


@pytest.fixture(scope="module")
def backend() -> PetscBackend:
    return PetscBackend()


def assert_schur_invariants(A: sp.csr_matrix, res, tol: float = 1e-9) -> None:
    Q, R = res.Q, res.R
    kk = Q.shape[1]
    assert R.shape == (kk, kk)
    np.testing.assert_allclose(Q.T @ Q, np.eye(kk), atol=1e-12)
    np.testing.assert_allclose(A @ Q, Q @ R, atol=tol)
    assert np.all(np.tril(R, -2) == 0.0), "R is not quasi-upper-triangular"
    sub = np.diag(R, -1)
    assert not np.any((sub[:-1] != 0) & (sub[1:] != 0)), "two consecutive subdiagonal entries: not a real Schur form"
    np.testing.assert_allclose(np.sort_complex(np.linalg.eigvals(R)), np.sort_complex(res.eigenvalues), atol=1e-10)


# ----------------------------------------------------------------------------- partial Schur
@pytest.mark.parametrize("which", ["LR", "LM", "SR"])
def test_schur_matches_dense_reference(backend, which):
    A = knn_transition()
    res = backend.partial_schur(A, 6, which=which, tol=1e-12)
    assert res.status is Status.CONVERGED
    assert res.backend == "petsc" and res.which == which
    assert res.Q.shape[1] in (6, 7) and res.matvecs > 0
    assert_schur_invariants(A, res)
    ref = order_by(which, np.linalg.eigvals(A.toarray()))[: res.Q.shape[1]]
    np.testing.assert_allclose(res.eigenvalues, ref, atol=1e-10)
    angles = sla.subspace_angles(res.Q, reference_subspace(A.toarray(), ref))
    assert np.max(angles) <= 1e-8


def test_schur_eigenvalues_are_sorted_by_which(backend):
    A = knn_transition(seed=3)
    res = backend.partial_schur(A, 5, which="LR", tol=1e-12)
    assert np.all(np.diff(res.eigenvalues.real) <= 1e-12)
    assert abs(res.eigenvalues[0] - 1.0) < 1e-10  # stochastic: the top eigenvalue is 1


def test_schur_keeps_conjugate_pairs_together(backend):
    A = random_nonsymmetric()
    ev = order_by("LM", np.linalg.eigvals(A.toarray()))
    # choose k so that the k-th wanted eigenvalue is the first of a conjugate pair
    k = next(i + 1 for i in range(2, 20) if ev[i].imag > 1e-8)
    res = backend.partial_schur(A, k, which="LM", tol=1e-12)
    assert res.status is Status.CONVERGED
    assert res.Q.shape[1] == k + 1
    assert_schur_invariants(A, res)
    np.testing.assert_allclose(res.eigenvalues, ev[: k + 1], atol=1e-10)


def test_schur_matches_generic_krylov_schur(backend):
    from cellfate_gpu.linalg import partial_schur  # our own module: an ImportError must fail, not skip

    A = knn_transition(seed=5)
    ours = partial_schur(A, 5, which="LR", tol=1e-12, backend=backend)
    generic = partial_schur(A, 5, which="LR", tol=1e-12, backend="scipy")
    assert ours.Q.shape == generic.Q.shape
    np.testing.assert_allclose(ours.eigenvalues, generic.eigenvalues, atol=1e-10)
    assert np.max(sla.subspace_angles(ours.Q, np.asarray(generic.Q))) <= 1e-8


def test_schur_not_converged_is_reported(backend):
    A = knn_transition(n=400, seed=2)
    res = backend.partial_schur(A, 8, which="SM", tol=1e-14, maxiter=1, ncv=10)
    assert res.status is Status.MAX_ITER
    assert not res.converged


def test_schur_rejects_bad_which(backend):
    with pytest.raises(ValueError, match="which must be one of"):
        backend.partial_schur(knn_transition(n=50), 2, which="XX")


def test_sorted_real_schur_orders_blocks():
    R = np.random.default_rng(0).standard_normal((8, 8))
    for which in ("LR", "LM", "SR", "SM", "LI", "SI"):
        T, Z, ev = sorted_real_schur(R, which)
        np.testing.assert_allclose(Z @ T @ Z.T, R, atol=1e-12)
        np.testing.assert_allclose(np.sort_complex(ev), np.sort_complex(np.linalg.eigvals(R)), atol=1e-10)
        key = {
            "LR": -ev.real,
            "SR": ev.real,
            "LM": -np.abs(ev),
            "SM": np.abs(ev),
            "LI": -np.abs(ev.imag),
            "SI": np.abs(ev.imag),
        }[which]
        assert np.all(np.diff(key) >= -1e-12), which
        assert np.all(np.tril(T, -2) == 0.0)


# ----------------------------------------------------------------------------- linear solves
def absorption_like(n: int = 300, seed: int = 0) -> sp.csr_matrix:
    """``I - 0.95 T`` for a kNN transition matrix: a non-symmetric M-matrix."""
    return sp.csr_matrix(sp.identity(n) - 0.95 * knn_transition(n=n, seed=seed))


@pytest.mark.parametrize("nrhs", [1, 6])
@pytest.mark.parametrize("preconditioner", ["jacobi", "bjacobi", "ilu"])
@pytest.mark.parametrize("method", ["gmres", "bcgs"])
def test_solve_matches_dense(backend, method, preconditioner, nrhs):
    A = absorption_like()
    B = np.random.default_rng(nrhs).standard_normal((A.shape[0], nrhs))
    res = backend.solve(A, B, method=method, tol=1e-12, preconditioner=preconditioner)
    assert res.status is Status.CONVERGED, res.message
    assert res.X.shape == B.shape and isinstance(res.X, np.ndarray)
    X_ref = np.linalg.solve(A.toarray(), B)
    np.testing.assert_allclose(res.X, X_ref, rtol=0, atol=1e-9 * np.abs(X_ref).max())
    assert np.all(res.residual_norms <= 1e-11)
    true = np.linalg.norm(B - A @ res.X, axis=0) / np.linalg.norm(B, axis=0)
    np.testing.assert_allclose(res.residual_norms, true, rtol=1e-3, atol=1e-15)
    assert res.method.startswith(f"ksp:{method}+pc:")
    assert res.iterations >= nrhs and res.matvecs > 0


def test_solve_direct_and_vector_rhs(backend):
    A = absorption_like(n=120)
    b = np.arange(120, dtype=float)
    res = backend.solve(A, b, method="direct")
    assert res.status is Status.CONVERGED
    assert res.X.shape == (120,)
    np.testing.assert_allclose(res.X, np.linalg.solve(A.toarray(), b), rtol=1e-10)
    assert res.method == "ksp:preonly+pc:lu"


def test_solve_with_initial_guess(backend):
    A = absorption_like(n=150)
    B = np.ones((150, 2))
    X_ref = np.linalg.solve(A.toarray(), B)
    res = backend.solve(A, B, tol=1e-12, x0=X_ref, preconditioner="none")
    assert res.status is Status.CONVERGED
    assert res.iterations <= 2  # starting from the answer
    np.testing.assert_allclose(res.X, X_ref, rtol=1e-10)


def test_solve_max_iter_status_and_public_error(backend):
    from cellfate_gpu.linalg import SolveError, solve

    A = absorption_like()
    B = np.random.default_rng(0).standard_normal((A.shape[0], 2))
    res = backend.solve(A, B, tol=1e-14, maxiter=2, preconditioner="none")
    assert res.status is Status.MAX_ITER
    assert "DIVERGED" in res.message
    assert np.all(res.residual_norms > 1e-14)
    with pytest.raises(SolveError, match="max_iter"):
        solve(A, B, method="gmres", tol=1e-14, maxiter=2, preconditioner="none", backend=backend)


def test_solve_nonfinite_rhs(backend):
    A = absorption_like(n=50)
    B = np.ones((50, 2))
    B[3, 1] = np.nan
    res = backend.solve(A, B)
    assert res.status is Status.NONFINITE_INPUT


def test_solve_rejects_unknown_method_and_pc(backend):
    A = absorption_like(n=50)
    with pytest.raises(ValueError, match="not offered"):
        backend.solve(A, np.ones(50), method="cg")
    with pytest.raises(ValueError, match="preconditioner"):
        backend.solve(A, np.ones(50), preconditioner="amg")


def test_options_passthrough_changes_solver():
    from petsc4py import PETSc

    A = absorption_like(n=200)
    B = np.ones((200, 2))
    be = PetscBackend(petsc_options={"ksp_type": "bcgs", "-pc_type": "jacobi"})
    res = be.solve(A, B, method="gmres", tol=1e-12)
    assert res.method == "ksp:bcgs+pc:jacobi"
    assert res.status is Status.CONVERGED
    np.testing.assert_allclose(res.X, np.linalg.solve(A.toarray(), B), rtol=1e-8)
    assert not PETSc.Options().hasName("ksp_type")  # the global database is restored
    be.set_options({"ksp_type": "tfqmr", "pc_type": "none"}, replace=True)
    assert be.options == {"ksp_type": "tfqmr", "pc_type": "none"}
    assert be.solve(A, B, tol=1e-12).method == "ksp:tfqmr+pc:none"
    be.set_options({"eps_type": "arnoldi"})
    sch = be.partial_schur(knn_transition(n=200), 3, tol=1e-12)
    assert sch.status is Status.CONVERGED


def test_options_validation():
    with pytest.raises(TypeError, match="mapping"):
        PetscBackend(petsc_options=["ksp_type", "gmres"])
    with pytest.raises(ValueError, match="distribution"):
        PetscBackend(distribution="scatter")


# ----------------------------------------------------------------------------- contract and registry
def test_host_primitives_are_scipy(backend):
    A = knn_transition(n=80)
    X = np.random.default_rng(0).standard_normal((80, 3))
    assert backend.xp.__name__.endswith("numpy")
    np.testing.assert_allclose(backend.spmm(A, X), A @ X)
    np.testing.assert_allclose(backend.row_sums(A), 1.0)
    assert backend.is_native(A) and sp.issparse(backend.transpose(A))
    data, _, indptr = backend.csr_components(A)
    np.testing.assert_allclose(backend.segment_max(data, indptr), A.max(axis=1).toarray().ravel())


def test_registry_gives_petsc():
    from cellfate_gpu.backends import available_backends, get_backend

    assert available_backends()["petsc"] is None
    be = get_backend("petsc")
    assert isinstance(be, PetscBackend) and be.name == "petsc"


def test_public_partial_schur_and_solve_dispatch_to_petsc():
    from cellfate_gpu.linalg import partial_schur, solve

    A = knn_transition(n=150)
    sch = partial_schur(A, 3, backend="petsc", tol=1e-12)
    assert sch.backend == "petsc"
    assert abs(sch.eigenvalues[0] - 1.0) < 1e-10
    M = sp.csr_matrix(sp.identity(150) - 0.9 * A)
    sol = solve(M, np.ones(150), backend="petsc", tol=1e-12)
    np.testing.assert_allclose(sol.X, 10.0 * np.ones(150), rtol=1e-9)  # (I - 0.9 T) 1 = 0.1 * 1


# ----------------------------------------------------------------------------- full pipeline
def three_branch_transition(n_per: int = 60, seed: int = 0) -> sp.csr_matrix:
    """A root cluster feeding three absorbing-ish branches: kNN-like, row-stochastic, metastable."""
    rng = np.random.default_rng(seed)
    n = 4 * n_per
    groups = np.repeat(np.arange(4), n_per)
    W = sp.lil_matrix((n, n))
    for i in range(n):
        same = np.flatnonzero(groups == groups[i])
        for j in rng.choice(same, 8, replace=False):
            W[i, j] = 1.0 + rng.uniform()
        if groups[i] == 0:  # the root leaks into every branch
            for b in (1, 2, 3):
                W[i, rng.choice(np.flatnonzero(groups == b))] = 0.05
    W = sp.csr_matrix(W)
    return sp.csr_matrix(sp.diags(1.0 / np.asarray(W.sum(axis=1)).ravel()) @ W)


def test_gpcca_pipeline_petsc_equals_scipy():
    from cellfate_gpu import estimators, kernels  # our own modules: an ImportError must fail, not skip

    T = three_branch_transition()
    fates = {}
    for name in ("scipy", "petsc"):
        g = estimators.GPCCA(kernels.PrecomputedKernel(T, backend=name))
        g.compute_schur(n_components=6, tol=1e-12)
        g.compute_macrostates(n_states=4)
        g.predict_terminal_states(n_states=3, method="top_n")
        g.compute_fate_probabilities(tol=1e-12, backend=name)
        fates[name] = g.fate_probabilities
    P, S = np.asarray(fates["petsc"].X), np.asarray(fates["scipy"].X)
    assert P.shape == S.shape
    # Macrostate names/order follow the (non-unique) Schur basis: match lineages by their values.
    match = [int(np.argmin(np.abs(S - P[:, [j]]).max(axis=0))) for j in range(P.shape[1])]
    assert sorted(match) == list(range(S.shape[1]))
    S = S[:, match]
    np.testing.assert_allclose(P, S, atol=1e-6)
    assert np.all((P >= -1e-10) & (P <= 1 + 1e-10))
    np.testing.assert_allclose(P.sum(axis=1), 1.0, atol=1e-8)
