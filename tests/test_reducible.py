"""Reducible chains: closed classes, the eigenvalue 1 once per closed class, GPCCA and fate probabilities.

Dense references: ``numpy.linalg.eigvals`` (top-k spectrum), the Schur relation and orthonormality,
``numpy.linalg.solve`` for absorption probabilities. Random chains come from :func:`reducible_chain`.
"""

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cellfate_gpu.backends import Status, get_backend
from cellfate_gpu.estimators import GPCCA
from cellfate_gpu.kernels import PrecomputedKernel
from cellfate_gpu.linalg import SchurError, partial_eig, partial_schur
from cellfate_gpu.linalg._classes import ReducibleChainError, chain_classes
from cellfate_gpu.linalg._schur_sort import dense_sorted_schur


def reducible_chain(sizes, n_transient, seed, *, leak=0.3):
    """Random row-stochastic chain with closed classes of ``sizes`` and ``n_transient`` transient states.

    Each class is irreducible and aperiodic (a cycle plus random edges and self-loops); each
    transient state moves to a random closed state with weight ``leak`` (so it is transient) and to
    random transient states otherwise. The states are randomly permuted.

    Returns ``T`` (CSR), the closed classes (sorted index arrays) and the transient states.
    """
    rng = np.random.default_rng(seed)
    n = sum(sizes) + n_transient
    rows, cols, vals = [], [], []
    start = 0
    for s in sizes:
        idx = np.arange(start, start + s)
        for i in range(s):
            targets = {idx[i], idx[(i + 1) % s]} | set(rng.choice(idx, size=min(s, 3)).tolist())
            for j in targets:
                rows.append(idx[i])
                cols.append(j)
                vals.append(rng.uniform(0.2, 1.0))
        start += s
    closed_all = np.arange(sum(sizes))
    trans = np.arange(sum(sizes), n)
    for i in trans:
        rows.append(i)
        cols.append(int(rng.choice(closed_all)))
        vals.append(leak)
        for j in rng.choice(trans, size=min(n_transient, 3)):
            rows.append(i)
            cols.append(int(j))
            vals.append(rng.uniform(0.2, 1.0))
    A = sp.csr_matrix((vals, (rows, cols)), shape=(n, n))
    A.sum_duplicates()
    A = sp.csr_matrix(sp.diags(1.0 / np.asarray(A.sum(axis=1)).ravel()) @ A)
    perm = rng.permutation(n)  # new index of old state i is inv[i]
    inv = np.argsort(perm)
    T = sp.csr_matrix(A[perm][:, perm])
    bounds = np.cumsum([0, *sizes])
    closed = [np.sort(inv[bounds[c] : bounds[c + 1]]) for c in range(len(sizes))]
    return T, closed, np.sort(inv[trans])


def _host(res, backend):
    return get_backend(backend).to_host(res.Q)


def _check_schur(T, res, backend, k, r, *, tol=1e-8):
    Q, R = _host(res, backend), np.asarray(res.R)
    kk = Q.shape[1]
    assert kk in (k, k + 1)
    assert res.status is Status.CONVERGED
    np.testing.assert_allclose(Q.T @ Q, np.eye(kk), atol=1e-10)
    assert np.linalg.norm(T @ Q - Q @ R) <= 1e-8
    assert np.allclose(np.tril(R, -2), 0)
    ev = np.linalg.eigvals(T.toarray())
    ref = np.sort(ev.real)[::-1][:kk]
    np.testing.assert_allclose(np.sort(np.real(res.eigenvalues))[::-1], ref, atol=tol)
    assert int(np.sum(np.abs(res.eigenvalues - 1) < 1e-10)) == r


# ------------------------------------------------------------------------------------------ classes
def test_chain_classes_matches_the_construction():
    T, closed, transient = reducible_chain([7, 1, 12, 4], 9, seed=0)
    cls = chain_classes(T)
    assert cls.n_closed == 4
    assert sorted(map(tuple, cls.closed)) == sorted(map(tuple, closed))
    np.testing.assert_array_equal(cls.transient, transient)
    assert cls.sizes == [12, 7, 4, 1]
    assert "4 closed communicating classes of sizes [12, 7, 4, 1] and 9 transient states" in cls.describe()


def test_chain_classes_irreducible_and_absorbing():
    ring = sp.csr_matrix(np.roll(np.eye(5), 1, axis=1))
    assert chain_classes(ring).n_closed == 1 and chain_classes(ring).transient.size == 0
    # 0 -> 1 -> 2 (absorbing)
    P = sp.csr_matrix(np.array([[0.5, 0.5, 0], [0, 0.5, 0.5], [0, 0, 1.0]]))
    cls = chain_classes(P)
    assert [c.tolist() for c in cls.closed] == [[2]]
    assert cls.transient.tolist() == [0, 1]


# ------------------------------------------------------------------------------------------ Schur
@pytest.mark.parametrize(
    ("sizes", "n_transient"),
    [([40, 30], 0), ([25, 20, 15], 20), ([30, 1, 12, 8], 25)],
    ids=["2-classes", "3-classes+transient", "4-classes+absorbing"],
)
def test_partial_schur_has_eigenvalue_one_per_closed_class(sizes, n_transient, backend):
    T, _, _ = reducible_chain(sizes, n_transient, seed=len(sizes))
    k = len(sizes) + 4
    res = partial_schur(T, k, which="LR", tol=1e-12, backend=backend)
    _check_schur(T, res, backend, k, len(sizes))
    # the span holds the constant vector and the absorption probabilities of every class
    Q = _host(res, backend)
    one = np.ones(T.shape[0]) / np.sqrt(T.shape[0])
    assert np.linalg.norm(one - Q @ (Q.T @ one)) <= 1e-10


def test_partial_schur_agrees_with_dense_schur():
    T, _, _ = reducible_chain([20, 15, 10], 15, seed=7)
    res = partial_schur(T, 7, which="LR", tol=1e-12)
    Qd, _, evd = dense_sorted_schur(T, 7, "LR")
    np.testing.assert_allclose(np.sort(res.eigenvalues.real), np.sort(evd.real), atol=1e-8)
    # same invariant subspace (the leading 7 eigenvalues are separated from the 8th)
    assert np.max(np.abs(np.linalg.svd(Qd.T @ res.Q, compute_uv=False) - 1)) <= 1e-8


def test_fewer_vectors_than_closed_classes_is_a_valid_schur_form(backend):
    T, _, _ = reducible_chain([10, 10, 10, 10], 6, seed=3)
    res = partial_schur(T, 2, backend=backend)
    Q = _host(res, backend)
    np.testing.assert_allclose(res.eigenvalues, 1.0)
    assert np.linalg.norm(T @ Q - Q) <= 1e-10
    np.testing.assert_allclose(np.abs(Q[:, 0]), 1 / np.sqrt(T.shape[0]))  # the constant vector first


def test_issue_repro_two_connectivity_components(backend):
    """issue 13.1: block_diag of two ConnectivityKernel matrices; eigenvalue 1 twice, top six to 1e-8."""
    from cellfate_gpu.datasets import synthetic_atlas
    from cellfate_gpu.kernels import ConnectivityKernel

    mats = [
        ConnectivityKernel(synthetic_atlas(n_cells=n, seed=s)).compute_transition_matrix().transition_matrix
        for n, s in ((330, 0), (390, 1))
    ]
    T = sp.csr_matrix(sp.block_diag(mats))
    res = partial_schur(T, 6, backend=backend)
    _check_schur(T, res, backend, 6, 2)


def nearly_reducible_chain(sizes, link, seed):
    """Irreducible chain of dense random blocks joined by transitions of weight ``link`` (eigenvalues ~ 1 - link)."""
    rng = np.random.default_rng(seed)
    n = sum(sizes)
    D = sp.block_diag([rng.uniform(0.1, 1.0, (s, s)) for s in sizes]).toarray()
    starts = np.cumsum([0, *sizes])[:-1]
    for a in range(len(sizes)):
        b = (a + 1) % len(sizes)
        D[starts[a], starts[b]] = D[starts[b], starts[a]] = link
    D /= D.sum(axis=1, keepdims=True)
    perm = rng.permutation(n)
    return sp.csr_matrix(D[perm][:, perm])


def test_near_multiple_unit_eigenvalue_is_resolved(backend):
    """issue 13.12: an irreducible T with eigenvalue 1 four times to 1e-14 (metastable branches).

    A single-vector Krylov run sees the cluster as one eigenvalue; every member must be found.
    """
    T = nearly_reducible_chain([60, 50, 45, 40], 1e-14, seed=1)
    assert chain_classes(T).n_closed == 1
    ev = np.linalg.eigvals(T.toarray())
    assert int(np.sum(np.abs(ev - 1) < 1e-10)) == 4
    res = partial_schur(T, 7, which="LR", tol=1e-12, backend=backend)
    _check_schur(T, res, backend, 7, 4)


def test_a_failed_cluster_search_is_said_not_silent(log_messages):
    """A search on the complement that does not converge ends the completion with a warning.

    The first run (a single-vector run on the chain) holds some members of the four-fold
    eigenvalue 1, so it shows a cluster; the search is made to fail, so the result keeps what it
    had, counts the search's matvecs, and the log says so.
    """
    from cellfate_gpu.backends import SchurResult
    from cellfate_gpu.linalg.krylov_schur import _krylov_schur, complete_clusters

    T = nearly_reducible_chain([60, 50, 45, 40], 1e-14, seed=1)
    be = get_backend("scipy")
    first = _krylov_schur(be, T, 6, which="LR", tol=1e-12, maxiter=None, ncv=None, v0=None, seed=0)
    assert first.status is Status.CONVERGED
    assert int(np.sum(np.abs(np.asarray(first.eigenvalues) - 1) < 1e-10)) >= 2  # a cluster to complete

    def failing(locked, p, attempt, scout):
        return SchurResult(status=Status.MAX_ITER, iterations=1, matvecs=7, seconds=0.0, backend="scipy", which="LR")

    done = complete_clusters(be, T, 6, first, failing, which="LR", exact=0)
    assert np.array_equal(np.asarray(done.eigenvalues), np.asarray(first.eigenvalues))
    assert done.matvecs == first.matvecs + 7
    assert any("near-multiple eigenvalue" in m and "MAX_ITER" in m for m in log_messages)


def test_left_eigenvectors_of_a_reducible_chain_are_the_stationary_distributions():
    T, closed, _ = reducible_chain([20, 12, 9], 10, seed=11)
    res = partial_eig(T, 5, which="LR", left=True)
    W = np.asarray(res.left_vectors)
    unit = np.flatnonzero(np.abs(res.eigenvalues - 1) < 1e-10)
    assert unit.size == 3
    Wu = np.real(W[:, unit])
    np.testing.assert_allclose(Wu.T @ T.toarray(), Wu.T, atol=1e-9)
    assert np.linalg.matrix_rank(Wu, tol=1e-6) == 3
    # each stationary distribution lives on its class: W's span equals span{pi_c}
    pis = []
    for c in closed:
        P = T[c][:, c].toarray()
        w, V = np.linalg.eig(P.T)
        v = np.zeros(T.shape[0])
        v[c] = np.abs(np.real(V[:, np.argmin(np.abs(w - 1))]))
        pis.append(v / np.linalg.norm(v))
    Pi = np.column_stack(pis)
    Qw, _ = np.linalg.qr(Wu)
    assert np.linalg.norm(Pi - Qw @ (Qw.T @ Pi)) <= 1e-8


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    sizes=st.lists(st.integers(1, 12), min_size=2, max_size=4),
    n_transient=st.integers(0, 12),
    seed=st.integers(0, 2**16),
    extra=st.integers(1, 4),
)
def test_property_random_reducible_chains(sizes, n_transient, seed, extra, backend):
    T, _, _ = reducible_chain(sizes, n_transient, seed)
    n, r = T.shape[0], len(sizes)
    k = min(r + extra, n - 1)
    res = partial_schur(T, k, which="LR", tol=1e-12, backend=backend)
    Q, R = _host(res, backend), np.asarray(res.R)
    kk = Q.shape[1]
    assert res.status is Status.CONVERGED
    np.testing.assert_allclose(Q.T @ Q, np.eye(kk), atol=1e-10)
    assert np.linalg.norm(T @ Q - Q @ R) <= 1e-9
    ev = np.linalg.eigvals(T.toarray())
    n_unit = int(np.sum(np.abs(ev - 1) < 1e-8))
    assert n_unit == r  # the construction: 1 is an eigenvalue once per closed class
    assert int(np.sum(np.abs(res.eigenvalues - 1) < 1e-8)) == min(r, kk)


# ------------------------------------------------------------------------------------------ GPCCA
def _estimator(T, backend="scipy"):
    adata = ad.AnnData(np.zeros((T.shape[0], 1)))
    adata.obs_names = [f"c{i}" for i in range(T.shape[0])]
    return GPCCA(PrecomputedKernel(T, adata=adata, backend=backend)), adata


def _gpcca_chain():
    """Three metastable closed classes (two halves each) and transient cells: 6 clear macrostates."""
    rng = np.random.default_rng(5)
    blocks, n_half = [], 40
    for _ in range(3):
        B = np.zeros((2 * n_half, 2 * n_half))
        for h in range(2):
            sl = slice(h * n_half, (h + 1) * n_half)
            B[sl, sl] = rng.uniform(0.5, 1.0, (n_half, n_half))
        B[0, n_half] = B[n_half, 0] = 0.05  # a weak link: the halves are metastable, the class irreducible
        blocks.append(B)
    n_closed = 6 * n_half
    n_tr = 30
    T = np.zeros((n_closed + n_tr, n_closed + n_tr))
    T[:n_closed, :n_closed] = sp.block_diag(blocks).toarray()
    T[n_closed:, :n_closed] = rng.uniform(0, 1, (n_tr, n_closed)) * (rng.random((n_tr, n_closed)) < 0.05)
    T[n_closed:, n_closed:] = rng.uniform(0, 1, (n_tr, n_tr)) * (rng.random((n_tr, n_tr)) < 0.2)
    T[n_closed:, 0] += 0.1
    T /= T.sum(axis=1, keepdims=True)
    classes = [np.arange(c * 2 * n_half, (c + 1) * 2 * n_half) for c in range(3)]
    return sp.csr_matrix(T), classes


def test_gpcca_macrostates_in_every_closed_class(backend):
    T, classes = _gpcca_chain()
    g, _ = _estimator(T, backend)
    g.compute_macrostates(6, n_cells=10)
    ms = g.macrostates
    where = {nm: {c for c, cl in enumerate(classes) if np.any(ms.to_numpy()[cl] == nm)} for nm in ms.cat.categories}
    hit = set().union(*where.values())
    assert hit == {0, 1, 2}, where
    assert all(len(v) == 1 for v in where.values())  # a macrostate never straddles two closed classes


def test_gpcca_refuses_fewer_states_than_closed_classes():
    T, _ = _gpcca_chain()
    g, adata = _estimator(T)
    before = (set(adata.obsm), set(adata.uns), set(adata.obs))
    with pytest.raises(ReducibleChainError, match=r"3 closed communicating classes of sizes \[80, 80, 80\]"):
        g.fit(n_states=2)
    assert (set(adata.obsm), set(adata.uns), set(adata.obs)) == before
    assert g.schur_vectors is None


def test_fate_probabilities_on_a_reducible_chain_match_a_dense_solve():
    T, classes = _gpcca_chain()
    g, adata = _estimator(T)
    names = adata.obs_names.to_numpy()
    g.set_terminal_states({f"t{c}": names[cl[:5]] for c, cl in enumerate(classes)})
    g.compute_fate_probabilities()
    F = g.fate_probabilities.X
    # dense reference: absorbing terminal cells; the rest of each class still leads only to its terminal cells
    D = T.toarray()
    term = np.concatenate([cl[:5] for cl in classes])
    tr = np.setdiff1d(np.arange(T.shape[0]), term)
    S = np.zeros((term.size, 3))
    for c in range(3):
        S[np.arange(5 * c, 5 * c + 5), c] = 1  # term lists the classes in order
    ref = np.linalg.solve(np.eye(tr.size) - D[np.ix_(tr, tr)], D[np.ix_(tr, term)] @ S)
    np.testing.assert_allclose(F[tr], ref, atol=1e-8)
    for c, cl in enumerate(classes):  # a cell of closed class c is fated to t_c with probability 1
        np.testing.assert_allclose(F[np.setdiff1d(cl, cl[:5]), c], 1.0, atol=1e-8)
    np.testing.assert_allclose(F.sum(axis=1), 1.0, atol=1e-10)


# ------------------------------------------------------------------------------------------ refusals
def _chain(n, seed=0):
    from conftest import knn_chain

    return knn_chain(n, seed=seed)


def _snapshot(adata):
    return (set(adata.obsm), set(adata.uns), set(adata.obs), set(adata.obsp))


@pytest.mark.parametrize(
    ("call", "exc", "match"),
    [
        (lambda g: g.compute_macrostates(n_states=400), ValueError, "n_states=400 is too large for 300 cells"),
        (lambda g: g.fit(n_states=299), ValueError, "n_states=299 is too large"),
        (lambda g: g.fit(n_states=0), ValueError, "n_states must be positive"),
        (lambda g: g.fit(n_states=2.7), TypeError, "n_states must be an integer"),
        (lambda g: g.fit(n_states=True), TypeError, "n_states must be an integer"),
        (lambda g: g.fit(n_states=[5, 3]), ValueError, "2 <= min <= max"),
        (lambda g: g.fit(n_states=3, n_cells=-5), ValueError, "n_cells=-5"),
        (lambda g: g.fit(n_states=3, n_cells=10000), ValueError, "n_cells=10000"),
        (lambda g: g.fit(n_states=3, n_cells=2.5), TypeError, "n_cells must be"),
        (lambda g: g.fit(n_states=3, cluster_key="nope"), KeyError, "nope"),
        (lambda g: g.compute_macrostates(3, optimizer="adam"), ValueError, "optimizer"),
        (lambda g: g.compute_schur(n_components=0), ValueError, "n_components"),
    ],
)
def test_bad_arguments_are_refused_before_any_work_and_leave_adata_untouched(call, exc, match):
    g, adata = _estimator(_chain(300))
    before = _snapshot(adata)
    with pytest.raises(exc, match=match):
        call(g)
    assert _snapshot(adata) == before
    assert g.schur_vectors is None and g.macrostates is None


def test_fit_with_too_many_states_fails_before_the_decomposition(monkeypatch):
    """issue 13.8: fit(n_states=201) on 200 cells must not start a Schur decomposition."""
    import cellfate_gpu.estimators._gpcca as mod

    def boom(*a, **k):
        raise AssertionError("partial_schur was called")

    monkeypatch.setattr(mod, "partial_schur", boom)
    g, _ = _estimator(_chain(200))
    with pytest.raises(ValueError, match="n_states=201"):
        g.fit(n_states=201)


def test_a_failing_macrostate_step_keeps_the_earlier_state():
    g, adata = _estimator(_chain(300))
    g.fit(n_states=3)
    X, ms = g.schur_vectors.copy(), g.macrostates.copy()
    keys = _snapshot(adata)
    with pytest.raises(ValueError):
        g.compute_macrostates(n_states=3, n_cells=301)
    np.testing.assert_array_equal(g.schur_vectors, X)
    pd.testing.assert_series_equal(g.macrostates, ms)
    assert _snapshot(adata) == keys


# ------------------------------------------------------------------------------------------ faults
def test_non_converged_schur_surfaces_through_the_estimator_with_what_to_try():
    g, adata = _estimator(_chain(400, seed=2))
    before = _snapshot(adata)
    with pytest.raises(SchurError, match="Try a larger maxiter"):
        g.compute_schur(n_components=12, tol=1e-14, maxiter=1)
    assert _snapshot(adata) == before and g.schur_vectors is None


def test_nan_in_t_is_refused_by_name():
    T = _chain(100).tolil()
    T[3, 4] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        partial_schur(sp.csr_matrix(T), 4)


def test_chain_classes_leaves_a_matrix_with_stored_zeros_intact():
    """Regression: the classes were found with an in-place eliminate_zeros on the caller's index arrays.

    A hard-threshold PseudotimeKernel stores zeros (36% of its entries on a 2000-cell atlas); after
    ``chain_classes`` its ``indptr`` was corrupted and the partial Schur decomposition ran on another
    matrix (top eigenvalue 0.668 instead of 1) or crashed in the row sums.
    """
    from cellfate_gpu.datasets import synthetic_atlas
    from cellfate_gpu.kernels import PseudotimeKernel

    adata = synthetic_atlas(n_cells=600, n_lineages=3, seed=0)
    A = PseudotimeKernel(adata, time_key="pseudotime").compute_transition_matrix(backend="scipy").transition_matrix
    assert np.sum(A.data == 0) > 0  # the case: stored zeros
    before = (A.data.copy(), A.indices.copy(), A.indptr.copy())
    chain_classes(A)
    for got, want in zip((A.data, A.indices, A.indptr), before, strict=True):
        np.testing.assert_array_equal(got, want)
    dense = np.sort(np.real(np.linalg.eigvals(A.toarray())))[::-1][:4]
    res = partial_schur(A, 4, which="LR", backend="scipy")
    np.testing.assert_allclose(np.sort(np.real(res.eigenvalues))[::-1], dense, atol=1e-8)
