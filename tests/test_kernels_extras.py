"""Kernel extras in CellRank's signatures: RealTimeKernel.from_moscot (duck-typed moscot problem),
plot_single_flow (flow against a hand-computed example), VelocityKernel model="stochastic" /
"monte_carlo" (against a dense per-cell reference with a finite-difference Hessian)."""

import anndata as ad
import matplotlib
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from _time_course import SIZES, cells_of_day, random_couplings, time_course_adata

from cellfate_gpu.backends import get_backend
from cellfate_gpu.kernels._realtime import RealTimeKernel
from cellfate_gpu.kernels._velocity import VelocityKernel, velocity_transition_data
from cellfate_gpu.kernels._velocity_models import (
    knn_velocity_moments,
    monte_carlo_transition_data,
    stochastic_transition_data,
)
from cellfate_gpu.pl._flow import single_flow_table

matplotlib.use("Agg")


# =========================================================================== moscot
@pytest.fixture
def tdata():
    return time_course_adata(clusters=True)


class SequentialPolicy:  # named as moscot's policy classes; matched by class name
    pass


class TriangularPolicy:
    pass


class FakeSolution:
    def __init__(self, tmap):
        self.transport_matrix = tmap
        self.sparsify_calls = []

    def sparsify(self, mode, **kwargs):
        self.sparsify_calls.append((mode, kwargs))
        T = sp.csr_matrix(self.transport_matrix, copy=True)
        T.data[T.data < kwargs.get("value", 0.0)] = 0
        T.eliminate_zeros()
        return FakeSolution(T)


class _Sub:
    def __init__(self, src, tgt):
        self.adata_src, self.adata_tgt = src, tgt


class FakeProblem:
    """What CellRank reads from a moscot TemporalProblem; sub-problems list cells in a shuffled order."""

    def __init__(self, adata, couplings, policy=None, seed=0):
        rng = np.random.default_rng(seed)
        self.adata, self.temporal_key = adata, "day"
        self._policy = SequentialPolicy() if policy is None else policy
        self.solutions, self._subs = {}, {}
        for (a, b), C in couplings.items():
            ra, rb = rng.permutation(SIZES[a]), rng.permutation(SIZES[b])
            src, tgt = adata[cells_of_day(adata, a)[ra]], adata[cells_of_day(adata, b)[rb]]
            tmap = C[ra][:, rb]
            self.solutions[a, b] = FakeSolution(tmap)
            self._subs[a, b] = _Sub(src, tgt)

    def __getitem__(self, key):
        return self._subs[key]


@pytest.mark.parametrize("sparse", [False, True])
def test_from_moscot_equals_kernel_from_the_same_couplings(tdata, backend, sparse):
    couplings = random_couplings(sparse=sparse)
    problem = FakeProblem(tdata, couplings)
    k = RealTimeKernel.from_moscot(problem).compute_transition_matrix(
        threshold=None, self_transitions="diagonal", backend=backend
    )
    ref = RealTimeKernel(tdata, "day", couplings=couplings).compute_transition_matrix(
        threshold=None, self_transitions="diagonal", backend="scipy"
    )
    np.testing.assert_allclose(k.transition_matrix.toarray(), ref.transition_matrix.toarray(), atol=1e-14)
    # and the default threshold / self transitions agree too
    k2 = RealTimeKernel.from_moscot(problem).compute_transition_matrix(backend="scipy")
    ref2 = RealTimeKernel(tdata, "day", couplings=couplings).compute_transition_matrix(backend="scipy")
    np.testing.assert_allclose(k2.transition_matrix.toarray(), ref2.transition_matrix.toarray(), atol=1e-14)


def test_from_moscot_keeps_sparse_couplings_sparse_and_shares_them(tdata):
    problem = FakeProblem(tdata, random_couplings(sparse=True))
    k = RealTimeKernel.from_moscot(problem)
    for key, coupling in k.couplings.items():
        assert isinstance(coupling, ad.AnnData)
        assert sp.issparse(coupling.X)
        tmap = problem.solutions[key].transport_matrix
        assert np.shares_memory(coupling.X.data, tmap.data)  # copy=False references the solution
        assert list(coupling.obs_names) == list(problem[key].adata_src.obs_names)
    copied = RealTimeKernel.from_moscot(problem, copy=True)
    for key, coupling in copied.couplings.items():
        assert sp.issparse(coupling.X)
        assert not np.shares_memory(coupling.X.data, problem.solutions[key].transport_matrix.data)
    assert k.reference == 2


def test_from_moscot_converts_foreign_arrays_and_sparsifies(tdata):
    class Foreign:  # e.g. a JAX array: only __array__
        def __init__(self, a):
            self._a, self.shape = a, a.shape

        def __array__(self, dtype=None, copy=None):
            return self._a

    couplings = random_couplings(sparse=False)
    problem = FakeProblem(tdata, couplings)
    for sol in problem.solutions.values():
        sol.transport_matrix = Foreign(sol.transport_matrix)
    k = RealTimeKernel.from_moscot(problem)
    for key, coupling in k.couplings.items():
        assert isinstance(coupling.X, np.ndarray)
        assert not np.shares_memory(coupling.X, problem.solutions[key].transport_matrix._a)

    problem = FakeProblem(tdata, couplings)
    k = RealTimeKernel.from_moscot(problem, sparse_mode="threshold", sparsify_kwargs={"value": 0.5})
    for key, sol in problem.solutions.items():
        assert sol.sparsify_calls == [("threshold", {"value": 0.5})]
        X = k.couplings[key].X
        assert sp.issparse(X) and X.data.min() >= 0.5


def test_from_moscot_policy_and_errors(tdata):
    problem = FakeProblem(tdata, {(0, 2): np.random.default_rng(0).random((12, 10))}, policy=TriangularPolicy())
    # (0, 2) alone under a triangular policy: time point 1 has no outgoing coupling and is not the reference
    with pytest.raises(ValueError, match="no outgoing coupling"):
        RealTimeKernel.from_moscot(problem).compute_transition_matrix(threshold=None)
    problem = FakeProblem(tdata, random_couplings(sparse=False), policy=TriangularPolicy())
    assert RealTimeKernel.from_moscot(problem)._policy == "triu"
    problem.solutions = {}
    with pytest.raises(RuntimeError, match="no solutions"):
        RealTimeKernel.from_moscot(problem)
    problem = FakeProblem(tdata, random_couplings(sparse=False), policy=object())
    with pytest.raises(NotImplementedError, match="policy 'object'"):
        RealTimeKernel.from_moscot(problem)
    problem = FakeProblem(tdata, random_couplings(sparse=False))
    with pytest.raises(ValueError, match="sparse_mode"):
        RealTimeKernel.from_moscot(problem, sparse_mode="top_k")
    with pytest.raises(TypeError, match="temporal_key"):
        RealTimeKernel.from_moscot(type("P", (), {"adata": tdata, "solutions": {}})())


# =========================================================================== single flow
def _flow_example():
    """6 cells: t=0: c0 (A), c1 (A), c2 (B); t=1: c3 (A), c4 (B), c5 (C).

    T rows of the A cells at t=0 (to cells c3, c4, c5): c0 -> (0.5, 0.25, 0.25), c1 -> (0, 0.5, 0.3)
    (0.2 stays on c2, t=0, which is not a t -> t+1 flow). Outgoing flow of A at t=0:
    A: 0.5, B: 0.75, C: 0.55, total 1.8 -> (0.5, 0.75, 0.55) / 1.8.
    """
    T = np.zeros((6, 6))
    T[0, [3, 4, 5]] = [0.5, 0.25, 0.25]
    T[1, [2, 4, 5]] = [0.2, 0.5, 0.3]
    T[2, 4] = 1.0
    T[3:, 3:] = np.eye(3)
    clusters = pd.Series(pd.Categorical(["A", "A", "B", "A", "B", "C"], categories=["A", "B", "C"]))
    time = pd.Series(pd.Categorical([0, 0, 0, 1, 1, 1]))
    return T, clusters, time


@pytest.mark.parametrize("sparse", [False, True])
def test_single_flow_table_hand_computed(sparse):
    T, clusters, time = _flow_example()
    flow, cmat = single_flow_table(sp.csr_matrix(T) if sparse else T, clusters, time, "A")
    np.testing.assert_allclose(flow.loc[0].to_numpy(), np.array([0.5, 0.75, 0.55]) / 1.8, atol=1e-15)
    assert list(flow.columns) == ["A", "B", "C"] and list(flow.index) == [0]
    # contingency: shares of the cells per time point
    np.testing.assert_allclose(cmat.to_numpy(), [[2 / 3, 1 / 3], [1 / 3, 1 / 3], [0, 1 / 3]])
    # the flow of B at t=0 goes to B only
    flow_b, _ = single_flow_table(T, clusters, time, "B")
    np.testing.assert_allclose(flow_b.loc[0].to_numpy(), [0, 1, 0])
    # restricting the clusters drops C's cells (no renormalisation of T): A -> A 0.5, B 0.75
    flow_ab, cmat_ab = single_flow_table(T, clusters, time, "A", clusters_subset=["B"])
    np.testing.assert_allclose(flow_ab.loc[0].to_numpy(), np.array([0.5, 0.75]) / 1.25)
    assert list(cmat_ab.index) == ["A", "B"]


def test_single_flow_table_time_order_and_subsets():
    rng = np.random.default_rng(0)
    n = 40
    T = sp.csr_matrix(rng.random((n, n)) * (rng.random((n, n)) < 0.5) + 1e-3 * (rng.random((n, n)) < 0.9))
    clusters = pd.Series(pd.Categorical(rng.choice(["x", "y", "z"], n)))
    time = pd.Series(pd.Categorical(rng.choice(["2", "10", "4"], n), categories=["2", "4", "10"]))
    flow, cmat = single_flow_table(T, clusters, time, "x")
    assert list(cmat.columns) == ["2", "4", "10"]  # numeric order, not lexicographic
    Td = T.toarray()
    t = np.asarray(time.astype(str))
    c = np.asarray(clusters)
    for t0, t1 in [("2", "4"), ("4", "10")]:
        raw = np.array([Td[np.ix_((t == t0) & (c == "x"), (t == t1) & (c == k))].sum() for k in "xyz"])
        np.testing.assert_allclose(flow.loc[t0].to_numpy(), raw / raw.sum(), atol=1e-14)
    flow, _ = single_flow_table(T, clusters, time, "x", time_points=["2", "10"])
    raw = np.array([Td[np.ix_((t == "2") & (c == "x"), (t == "10") & (c == k))].sum() for k in "xyz"])
    np.testing.assert_allclose(flow.loc["2"].to_numpy(), raw / raw.sum(), atol=1e-14)
    with pytest.raises(ValueError, match="source cluster"):
        single_flow_table(T, clusters, time, "w")
    with pytest.raises(ValueError, match="at least 2 time points"):
        single_flow_table(T, clusters, time, "x", time_points=["2"])
    with pytest.raises(ValueError, match="shape"):
        single_flow_table(T[:5, :5], clusters, time, "x")


def test_plot_single_flow_draws_one_ribbon_per_flow(tdata, tmp_path):
    import matplotlib.pyplot as plt

    k = RealTimeKernel(tdata, "day", couplings=random_couplings(sparse=True)).compute_transition_matrix(backend="scipy")
    flow, _ = single_flow_table(k.transition_matrix, tdata.obs["ct"], tdata.obs["day"], "a")
    ax = k.plot_single_flow(cluster="a", cluster_key="ct", min_flow=0.1, show=False, save=tmp_path / "flow.png")
    assert (tmp_path / "flow.png").is_file()
    ribbons = [c.get_gid() for c in ax.collections if (c.get_gid() or "").startswith("flow:")]
    expected = [f"flow:{t}:{c}" for t in flow.index for c in ("b", "c") if flow.loc[t, c] > 0.1]
    assert sorted(ribbons) == sorted(expected) and expected
    assert ax.get_title() == "a"
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0", "1", "2"]
    legend = ax.get_legend()
    assert legend is not None and sorted(t.get_text() for t in legend.get_texts()) == ["a", "b", "c"]
    assert k.plot_single_flow("a", "ct", show=True) is None
    ax = k.plot_single_flow("a", "ct", xticks_step_size=None, legend_loc=None, show=False)
    assert ax.get_legend() is None and len(ax.get_xticks()) == 0
    # a threshold above every flow leaves no target cluster
    with pytest.raises(ValueError, match="none remain"):
        k.plot_single_flow("a", "ct", min_flow=1.0, show=False)
    with pytest.raises(KeyError, match="nope"):
        k.plot_single_flow("a", "nope", show=False)
    plt.close("all")


# =========================================================================== velocity models
def _p_row(u, D, similarity, lam):
    """Deterministic transition probabilities of one cell at velocity u (CellRank's masking)."""
    if similarity == "correlation":
        u = u - u.mean()
        D = D - D.mean(axis=1, keepdims=True)
    dot = D @ u
    if similarity == "dot_product":
        e = np.exp(lam * dot - np.max(lam * dot))
        return e / e.sum()
    denom = np.linalg.norm(u) * np.linalg.norm(D, axis=1)
    mask = denom == 0
    if mask.all():
        return np.full(len(D), 1.0 / len(D))
    s = lam * dot / np.where(mask, 1.0, denom)
    e = np.where(mask, 0.0, np.exp(s - np.max(s[~mask])))
    return e / e.sum()


def dense_moments(C, V):
    B = (np.asarray(C.toarray()) > 0).astype(float)
    np.fill_diagonal(B, 1.0)
    W = B / B.sum(axis=1, keepdims=True)
    mean = W @ V
    return mean, W @ (V * V) - mean * mean


def reference_stochastic(X, mean, var, C, similarity, lam, h=1e-4):
    """Second-order expansion with the Hessian diagonal by central differences, CellRank's post-processing."""
    C = sp.csr_matrix(C)
    n = C.shape[0]
    T = np.zeros((n, n))
    for i in range(n):
        nb = C.indices[C.indptr[i] : C.indptr[i + 1]]
        if np.all(mean[i] == 0):
            T[i, nb] = 1.0 / len(nb)
            continue
        D = X[nb] - X[i]
        u = mean[i]
        p0 = _p_row(u, D, similarity, lam)
        q = np.zeros(len(nb))
        for g in range(len(u)):
            e = np.zeros(len(u))
            e[g] = h
            hgg = (_p_row(u + e, D, similarity, lam) - 2 * p0 + _p_row(u - e, D, similarity, lam)) / h**2
            q += 0.5 * var[i, g] * hgg
        p = np.clip(p0 + q, 0, 1)
        T[i, nb] = np.full(len(nb), 1.0 / len(nb)) if np.all(p == 0) else p / p.sum()
    return T


@pytest.fixture(scope="module")
def vdata():
    """60 cells on a curve, 6 genes, a 6-NN graph, velocities along the curve plus noise."""
    from scipy.spatial import cKDTree

    rng = np.random.default_rng(7)
    n, G = 60, 6
    t = np.sort(rng.random(n))
    basis = rng.normal(size=(2, G))
    X = np.c_[np.cos(3 * t), np.sin(3 * t)] @ basis + 0.05 * rng.normal(size=(n, G))
    V = np.c_[-np.sin(3 * t), np.cos(3 * t)] @ basis + 0.3 * rng.normal(size=(n, G))
    _, idx = cKDTree(X).query(X, 7)
    rows = np.repeat(np.arange(n), 6)
    C = sp.csr_matrix((np.ones(n * 6), (rows, idx[:, 1:].ravel())), shape=(n, n))
    C = sp.csr_matrix(C.maximum(C.T))
    adata = ad.AnnData(X=X.astype(np.float32), layers={"Ms": X, "velocity": V})
    adata.obsp["connectivities"] = C
    return adata


@pytest.mark.parametrize("similarity", ["correlation", "cosine", "dot_product"])
def test_stochastic_matches_dense_second_order_reference(vdata, backend, similarity):
    X, V = vdata.layers["Ms"], vdata.layers["velocity"]
    C = vdata.obsp["connectivities"]
    lam = 2.0 if similarity == "dot_product" else 3.0
    k = VelocityKernel(vdata).compute_transition_matrix(
        model="stochastic", similarity=similarity, softmax_scale=lam, backend=backend
    )
    mean, var = dense_moments(C, V)
    ref = reference_stochastic(X, mean, np.maximum(var, 0), C, similarity, lam)
    T = k.transition_matrix
    np.testing.assert_allclose(T.toarray(), ref, atol=2e-6)
    np.testing.assert_allclose(np.asarray(T.sum(axis=1)).ravel(), 1.0, atol=1e-12)
    assert T.data.min() >= 0 and T.nnz <= C.nnz
    # the correction matters: the stochastic T is not the deterministic T at the mean velocity
    det = reference_stochastic(X, mean, np.zeros_like(var), C, similarity, lam)
    assert np.abs(ref - det).max() > 1e-3
    assert k.params["model"] == "stochastic"


def test_knn_moments_match_dense(vdata, backend):
    be = get_backend(backend)
    V = vdata.layers["velocity"]
    C = vdata.obsp["connectivities"].copy()
    C.setdiag(1.0)  # a graph that has some self loops already: W keeps one per row
    C = sp.csr_matrix(C)
    C.sort_indices()
    mean, var = knn_velocity_moments(be, be.from_scipy_csr(C), be.asarray(V))
    rm, rv = dense_moments(C, V)
    np.testing.assert_allclose(be.to_host(mean), rm, atol=1e-12)
    np.testing.assert_allclose(be.to_host(var), np.maximum(rv, 0), atol=1e-12)


@pytest.mark.parametrize("similarity", ["correlation", "cosine", "dot_product"])
def test_zero_variance_is_the_deterministic_model(vdata, similarity):
    be = get_backend("scipy")
    X, V = vdata.layers["Ms"], vdata.layers["velocity"]
    C = be.from_scipy_csr(vdata.obsp["connectivities"].copy())
    _, indices, indptr = be.csr_components(C)
    mean, _ = knn_velocity_moments(be, C, be.asarray(V))
    zero = np.zeros_like(mean)
    det, _ = velocity_transition_data(
        be, be.asarray(X), mean, indices, indptr, similarity=similarity, softmax_scale=2.0
    )
    sto = stochastic_transition_data(
        be, be.asarray(X), mean, zero, indices, indptr, similarity=similarity, softmax_scale=2.0
    )
    mc = monte_carlo_transition_data(
        be, be.asarray(X), mean, zero, indices, indptr, similarity=similarity, softmax_scale=2.0, n_samples=3, seed=0
    )
    np.testing.assert_allclose(sto, det, atol=1e-14)
    np.testing.assert_allclose(mc, det, atol=1e-14)


def test_constant_velocity_field_kernel_equals_deterministic(vdata):
    a = vdata.copy()
    a.layers["velocity"] = np.tile(np.array([1.0, -0.5, 0.2, 0.0, 0.7, 0.3]), (a.n_obs, 1))
    det = VelocityKernel(a).compute_transition_matrix(softmax_scale=3.0, backend="scipy").transition_matrix
    sto = VelocityKernel(a).compute_transition_matrix(model="stochastic", softmax_scale=3.0, backend="scipy")
    mc = VelocityKernel(a).compute_transition_matrix(model="monte_carlo", n_samples=4, seed=1, softmax_scale=3.0)
    np.testing.assert_allclose(sto.transition_matrix.toarray(), det.toarray(), atol=1e-10)
    np.testing.assert_allclose(mc.transition_matrix.toarray(), det.toarray(), atol=1e-10)
    assert mc.params["n_samples"] == 4 and mc.params["seed"] == 1


def test_monte_carlo_single_sample_is_the_deterministic_model_at_the_draw(vdata, backend):
    X, V = vdata.layers["Ms"], vdata.layers["velocity"]
    C = vdata.obsp["connectivities"]
    k = VelocityKernel(vdata).compute_transition_matrix(
        model="monte_carlo", n_samples=1, seed=42, softmax_scale=3.0, backend=backend
    )
    mean, var = dense_moments(C, V)
    u = mean + np.sqrt(np.maximum(var, 0)) * np.random.default_rng(42).standard_normal(mean.shape)
    Cs = sp.csr_matrix(C)
    ref = np.zeros((C.shape[0],) * 2)
    for i in range(C.shape[0]):
        nb = Cs.indices[Cs.indptr[i] : Cs.indptr[i + 1]]
        ref[i, nb] = _p_row(u[i], X[nb] - X[i], "correlation", 3.0)
    np.testing.assert_allclose(k.transition_matrix.toarray(), ref, atol=1e-12)


def test_monte_carlo_converges_to_the_stochastic_model(vdata):
    """Small variances: E[p] ~ second-order expansion; the MC error falls as samples grow (fixed seed)."""
    be = get_backend("scipy")
    X, V = vdata.layers["Ms"], vdata.layers["velocity"]
    C = be.from_scipy_csr(vdata.obsp["connectivities"].copy())
    _, indices, indptr = be.csr_components(C)
    mean, var = knn_velocity_moments(be, C, be.asarray(V))
    var = 0.05 * var  # second order is accurate, the MC noise is what remains
    x = be.asarray(X)
    sto = stochastic_transition_data(be, x, mean, var, indices, indptr, softmax_scale=3.0)
    det, _ = velocity_transition_data(be, x, mean, indices, indptr, softmax_scale=3.0)
    errs = {}
    for n_samples in (10, 2000):
        mc = monte_carlo_transition_data(
            be, x, mean, var, indices, indptr, softmax_scale=3.0, n_samples=n_samples, seed=0
        )
        errs[n_samples] = np.abs(mc - sto).max()
        np.testing.assert_allclose(be.segment_sum(mc, indptr), 1.0, atol=1e-12)
    assert errs[2000] < 0.25 * errs[10]
    assert errs[2000] < 0.1 * np.abs(sto - det).max() + 5e-3
    # the stochastic correction is in the direction the samples move: closer than the deterministic T
    mc = monte_carlo_transition_data(be, x, mean, var, indices, indptr, softmax_scale=3.0, n_samples=2000, seed=0)
    assert np.abs(mc - sto).mean() < np.abs(mc - det).mean()


def test_velocity_models_scale_backward_and_validation(vdata, log_messages):
    det = VelocityKernel(vdata).compute_transition_matrix(backend="scipy")
    sto = VelocityKernel(vdata).compute_transition_matrix(model="stochastic", backend="scipy")
    # softmax_scale estimated from the deterministic model on the raw velocities, as CellRank does
    assert sto.params["softmax_scale"] == pytest.approx(det.params["softmax_scale"], rel=1e-12)
    bwd = VelocityKernel(vdata, backward=True).compute_transition_matrix(model="stochastic", backend="scipy")
    ref = VelocityKernel(vdata, backward=True).compute_transition_matrix(backend="scipy")
    np.testing.assert_allclose(bwd.transition_matrix.toarray(), ref.transition_matrix.toarray(), atol=1e-15)
    assert any("backward process" in m for m in log_messages)
    with pytest.raises(ValueError, match="n_samples"):
        VelocityKernel(vdata).compute_transition_matrix(model="monte_carlo", n_samples=0)
    # zero velocity: uniform rows (CellRank's early return), for every similarity
    a = vdata.copy()
    a.layers["velocity"] = np.zeros_like(a.layers["velocity"])
    for sim in ("correlation", "dot_product"):
        T = VelocityKernel(a).compute_transition_matrix(model="stochastic", similarity=sim, softmax_scale=1.0)
        Ts = T.transition_matrix
        np.testing.assert_allclose(Ts.data, np.repeat(1.0 / np.diff(Ts.indptr), np.diff(Ts.indptr)))
