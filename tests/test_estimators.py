"""Estimators: absorbing chains with known answers, drivers vs SciPy/statsmodels, GPCCA/CFLARE on the
generated atlas, AnnData round trips and error paths."""

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import scipy.stats as st
from conftest import random_stochastic

from cellfate_gpu.backends import get_backend
from cellfate_gpu.estimators import CFLARE, GPCCA
from cellfate_gpu.estimators import _gpcca_core as core
from cellfate_gpu.estimators._absorption import absorption_times, fate_probabilities
from cellfate_gpu.estimators._drivers import lineage_drivers
from cellfate_gpu.kernels import ConnectivityKernel, PrecomputedKernel, PseudotimeKernel
from cellfate_gpu.lineage import Lineage


def _gamblers_ruin(n=12, p=0.4):
    """States 0..n-1; 0 and n-1 absorbing; step right with p, left with 1-p."""
    T = np.zeros((n, n))
    T[0, 0] = T[-1, -1] = 1.0
    for i in range(1, n - 1):
        T[i, i + 1], T[i, i - 1] = p, 1 - p
    return sp.csr_matrix(T)


def _terminal(n, groups):
    labels = np.full(n, None, dtype=object)
    for name, idx in groups.items():
        labels[idx] = name
    return pd.Series(pd.Categorical(labels, categories=list(groups)), index=[f"c{i}" for i in range(n)])


@pytest.mark.parametrize("method", ["direct", "gmres"])
def test_gamblers_ruin_fate_and_times_are_analytic(method):
    n, p = 12, 0.4
    T = _gamblers_ruin(n, p)
    term = _terminal(n, {"ruin": [0], "win": [n - 1]})
    be = get_backend("scipy")
    lin, _ = fate_probabilities(be, T, term, method=method, tol=1e-12)
    r, N = (1 - p) / p, n - 1
    win = np.array([(1 - r**i) / (1 - r**N) for i in range(n)])
    np.testing.assert_allclose(lin["win"].X.ravel(), win, atol=1e-10)
    np.testing.assert_allclose(lin["ruin"].X.ravel(), 1 - win, atol=1e-10)
    # absorption into {0, n-1}: dense textbook formulas m = N 1, v = (2N - I) m - m∘m
    both = _terminal(n, {"ends": [0, n - 1]})
    df = absorption_times(be, T, both, calculate_variance=True, method=method, tol=1e-12)
    Q = T.toarray()[1:-1, 1:-1]
    Nf = np.linalg.inv(np.eye(n - 2) - Q)
    m = Nf @ np.ones(n - 2)
    v = (2 * Nf - np.eye(n - 2)) @ m - m * m
    np.testing.assert_allclose(df["ends_mean"].to_numpy()[1:-1], m, rtol=1e-9)
    np.testing.assert_allclose(df["ends_var"].to_numpy()[1:-1], v, rtol=1e-8)
    assert df["ends_mean"].iloc[0] == 0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fate_probabilities_equal_dense_solve(seed):
    n = 300
    T = random_stochastic(n, 0.03, seed)
    rng = np.random.default_rng(seed)
    cells = rng.permutation(n)[:12]
    groups = {"A": cells[:4], "B": cells[4:9], "C": cells[9:]}
    lin, _ = fate_probabilities(get_backend("scipy"), T, _terminal(n, groups), method="gmres", tol=1e-12)
    absorbing = np.concatenate(list(groups.values()))
    trans = np.setdiff1d(np.arange(n), absorbing)
    Td = T.toarray()
    S = np.stack([Td[np.ix_(trans, g)].sum(axis=1) for g in groups.values()], axis=1)
    ref = np.linalg.solve(np.eye(trans.size) - Td[np.ix_(trans, trans)], S)
    np.testing.assert_allclose(lin.X[trans], ref, atol=1e-8)
    assert np.all((lin.X >= 0) & (lin.X <= 1)) and np.allclose(lin.X.sum(axis=1), 1)
    merged = lin[["A, B"]]
    np.testing.assert_allclose(merged.X.ravel(), lin.X[:, 0] + lin.X[:, 1])
    assert merged.names == ["A, B"]


def test_unreachable_and_reducible_chains_are_errors():
    T = sp.csr_matrix(np.array([[0.5, 0.5, 0, 0], [0.5, 0.5, 0, 0], [0, 0, 1.0, 0], [0, 0, 0, 1.0]]))
    be = get_backend("scipy")
    with pytest.raises(ValueError, match=r"\['B'\] cannot be reached"):
        fate_probabilities(be, T, _terminal(4, {"A": [1], "B": [3]}))
    T2 = sp.csr_matrix(np.array([[0.5, 0.5, 0, 0], [0.5, 0.5, 0, 0], [0, 0, 0.5, 0.5], [0, 0, 0, 1.0]]))
    with pytest.raises(ValueError, match="reach no terminal state"):
        fate_probabilities(be, T2, _terminal(4, {"A": [3]}), method="direct")
    with pytest.raises(ValueError, match="No terminal states"):
        fate_probabilities(be, T, _terminal(4, {}))


@pytest.mark.parametrize("sparse", [False, True])
def test_drivers_equal_pearsonr_and_bh(sparse):
    from statsmodels.stats.multitest import multipletests

    rng = np.random.default_rng(0)
    n, g = 200, 30
    probs = rng.dirichlet(np.ones(2), size=n)
    X = rng.poisson(3, size=(n, g)).astype(float)
    X[:, :5] += 10 * probs[:, [0]]  # five real drivers of lineage A
    Xin = sp.csr_matrix(X) if sparse else X
    df = lineage_drivers(Xin, probs, [f"g{i}" for i in range(g)], ["A", "B"])
    for gene in ["g0", "g7", "g20"]:
        j = int(gene[1:])
        r, _ = st.pearsonr(X[:, j], probs[:, 0])
        assert df.loc[gene, "A_corr"] == pytest.approx(r, abs=1e-12)
        z, se = np.arctanh(r), 1 / np.sqrt(n - 3)
        assert df.loc[gene, "A_pval"] == pytest.approx(2 * st.norm.sf(abs(z) / se), rel=1e-9)
        assert df.loc[gene, "A_ci_low"] < r < df.loc[gene, "A_ci_high"]
    qref = multipletests(df["A_pval"].to_numpy(), method="fdr_bh")[1]
    np.testing.assert_allclose(df["A_qval"].to_numpy(), qref, rtol=1e-12)
    assert set(df.index[:5]) == {f"g{i}" for i in range(5)}
    assert df["A_corr"].is_monotonic_decreasing


def test_perm_test_is_seeded():
    rng = np.random.default_rng(1)
    X, probs = rng.random((60, 5)), rng.dirichlet(np.ones(2), size=60)
    a = lineage_drivers(X, probs, list("abcde"), ["A", "B"], method="perm_test", n_perms=50, seed=3)
    b = lineage_drivers(X, probs, list("abcde"), ["A", "B"], method="perm_test", n_perms=50, seed=3)
    pd.testing.assert_frame_equal(a, b)
    assert a["A_pval"].between(1 / 51, 1).all()


@pytest.fixture(scope="module")
def fitted():
    from cellfate_gpu.datasets import synthetic_atlas

    adata = synthetic_atlas(n_cells=1500, n_lineages=3, n_genes=40, seed=1)
    pk = PseudotimeKernel(adata, time_key="pseudotime").compute_transition_matrix()
    ck = ConnectivityKernel(adata).compute_transition_matrix()
    g = GPCCA(0.8 * pk + 0.2 * ck)
    g.fit(n_states=6, cluster_key="clusters")
    g.predict_terminal_states(method="top_n", n_states=3)
    return adata, g


def test_gpcca_finds_every_true_terminal_branch(fitted):
    adata, g = fitted
    term = g.terminal_states
    lineages = adata.obs["lineage"].astype(str).to_numpy()
    found = set()
    for state in term.cat.categories:
        cells = term.to_numpy() == state
        counts = pd.Series(lineages[cells]).value_counts()
        assert counts.iloc[0] / cells.sum() >= 0.9  # each terminal state is one true lineage
        found.add(counts.index[0])
    assert found == {"Lineage_A", "Lineage_B", "Lineage_C"}


def test_gpcca_schur_memberships_and_coarse(fitted):
    adata, g = fitted
    X = g.schur_vectors
    n = X.shape[0]
    np.testing.assert_allclose(X[:, 0], 1.0)
    np.testing.assert_allclose(X.T @ X / n, np.eye(X.shape[1]), atol=1e-8)
    T = g.transition_matrix
    np.testing.assert_allclose(T @ X, X @ g.schur_matrix, atol=1e-7)
    chi = g.macrostates_memberships.X
    assert np.allclose(chi.sum(axis=1), 1) and chi.min() >= 0
    np.testing.assert_allclose(g.coarse_T.to_numpy().sum(axis=1), 1, atol=1e-8)
    assert "schur_vectors_fwd" in adata.obsm and "macrostates_fwd" in adata.obs and "coarse_fwd" in adata.uns


def test_lbfgs_is_at_least_as_crisp_as_nelder_mead(fitted):
    _, g = fitted
    for m in (3, 4, 5):
        X = g.schur_vectors[:, :m]
        _, c_ours = core.optimize_lbfgs(X)
        _, c_nm = core.optimize_nelder_mead(X)
        assert c_ours >= c_nm - 1e-9


def test_active_set_rotation_is_feasible_and_as_crisp(fitted):
    _, g = fitted
    X = g.schur_vectors[:, :5]
    _, c_full = core.optimize_lbfgs(X, active_set_min_rows=10**9)
    A, c = core.optimize_lbfgs(X, active_set_min_rows=50)  # force the active set on this small atlas
    chi = X @ A
    assert chi.min() >= -1e-10 and np.allclose(chi.sum(axis=1), 1)
    # at the result every column maximum over all rows is attained inside the active set, so the
    # objective is the full one: the crispness matches a direct evaluation and a full-row run
    assert c == pytest.approx(core.crispness(core.fill_rotation(A[1:, 1:].ravel(), X)), abs=1e-12)
    assert c >= c_full - 0.02


def test_fate_probabilities_through_estimator_and_h5ad(fitted, tmp_path):
    adata, g = fitted
    lin = g.compute_fate_probabilities()
    assert lin.names == list(g.terminal_states.cat.categories)
    assert np.allclose(lin.X.sum(axis=1), 1) and lin.X.min() >= 0
    root = adata.obs["clusters"].to_numpy() == "Root"
    assert np.all(lin.X[root].max(axis=1) < 0.99)  # root cells are undecided
    g.compute_absorption_times()
    g.compute_lineage_priming()
    drivers = g.compute_lineage_drivers(lineages=[lin.names[0]])
    assert drivers.index[0] in adata.var_names
    path = tmp_path / "g.h5ad"
    g.kernel.write_to_adata()
    adata.write_h5ad(path)
    back = ad.read_h5ad(path)
    g2 = GPCCA.from_adata(back)
    np.testing.assert_allclose(g2.fate_probabilities.X, lin.X)
    assert list(g2.terminal_states.cat.categories) == lin.names
    np.testing.assert_allclose(g2.schur_vectors, g.schur_vectors)
    assert repr(g).startswith("GPCCA[kernel=(0.8 * PseudotimeKernel[n=1500] + 0.2 * ConnectivityKernel[n=1500])")


def test_set_rename_and_errors(atlas_copy):
    pk = PseudotimeKernel(atlas_copy, time_key="pseudotime").compute_transition_matrix()
    g = GPCCA(pk)
    assert repr(g) == "GPCCA[kernel=PseudotimeKernel[n=600], initial_states=None, terminal_states=None]"
    with pytest.raises(RuntimeError, match="set_terminal_states"):
        g.compute_fate_probabilities()
    g.set_terminal_states(["Lineage_A", "Lineage_B", "Lineage_C"], cluster_key="clusters")
    g.rename_terminal_states({"Lineage_A": "A"})
    assert list(g.terminal_states.cat.categories) == ["A", "Lineage_B", "Lineage_C"]
    assert list(atlas_copy.obs["term_states_fwd"].cat.categories) == ["A", "Lineage_B", "Lineage_C"]
    with pytest.raises(KeyError, match="Unknown terminal state"):
        g.rename_terminal_states({"nope": "x"})
    with pytest.raises(KeyError, match="Unknown terminal state"):
        g.compute_fate_probabilities(keys=["nope"])
    with pytest.raises(ValueError, match="n_cells=100000"):
        g.compute_macrostates(3, n_cells=100_000)


def test_gpcca_from_matrix_and_conjugate_pair_adjustment(caplog):
    # A 3-cycle block (complex pair) plus slow sticky states: 2 states would split the pair.
    n = 90
    T = np.zeros((n, n))
    for b in range(3):
        idx = np.arange(b * 30, (b + 1) * 30)
        T[np.ix_(idx, idx)] = 0.9 / 30
        T[np.ix_(idx, np.arange(((b + 1) % 3) * 30, ((b + 1) % 3 + 1) * 30))] = 0.1 / 30
    g = GPCCA(PrecomputedKernel(T))
    g.compute_schur(n_components=5)
    ev = g.eigendecomposition["D"]
    assert abs(ev[1].imag) > 1e-6  # the pair exists
    from cellfate_gpu import settings

    with settings.using(verbosity="warning"):
        g.compute_macrostates(n_states=2, n_cells=10)
    assert g.macrostates_memberships.X.shape[1] == 3


def test_cflare_finds_terminal_branches(atlas_copy):
    pk = PseudotimeKernel(atlas_copy, time_key="pseudotime").compute_transition_matrix()
    ck = ConnectivityKernel(atlas_copy).compute_transition_matrix()
    c = CFLARE(0.8 * pk + 0.2 * ck)
    c.compute_eigendecomposition(k=8)
    c.predict(use=3, cluster_key="clusters")
    names = set(c.terminal_states.cat.categories)
    assert {n.split("_")[0] + "_" + n.split("_")[1] for n in names} == {"Lineage_A", "Lineage_B", "Lineage_C"}
    lin = c.compute_fate_probabilities()
    assert np.allclose(lin.X.sum(axis=1), 1)


def test_lineage_indexing_and_adata_round_trip(tmp_path):
    L = Lineage(np.array([[0.2, 0.3, 0.5], [1, 0, 0]]), names=["A", "B", "C"])
    assert L["B"].X.ravel().tolist() == [0.3, 0]
    assert L[["A", "C"]].names == ["A", "C"]
    assert L[0:1].names == ["A", "B", "C"]
    with pytest.raises(KeyError, match="'Z' not found"):
        L["Z"]
    adata = ad.AnnData(np.zeros((2, 1)))
    L.to_adata(adata, "lineages_fwd")
    adata.write_h5ad(tmp_path / "l.h5ad")
    back = Lineage.from_adata(ad.read_h5ad(tmp_path / "l.h5ad"), "lineages_fwd")
    assert back.names == L.names and back.colors == L.colors
    np.testing.assert_array_equal(back.X, L.X)


def test_conditional_absorption_times_against_dense():
    n, p = 10, 0.45
    T = _gamblers_ruin(n, p)
    term = _terminal(n, {"ruin": [0], "win": [n - 1]})
    df = absorption_times(get_backend("scipy"), T, term, calculate_variance=True, method="direct")
    Td = T.toarray()
    N = np.linalg.inv(np.eye(n - 2) - Td[1:-1, 1:-1])
    B = N @ Td[1:-1][:, [0, n - 1]]
    U = N @ B
    W = N @ (2 * U - B)
    np.testing.assert_allclose(df["ruin_mean"].to_numpy()[1:-1], U[:, 0] / B[:, 0], rtol=1e-9)
    np.testing.assert_allclose(df["win_var"].to_numpy()[1:-1], W[:, 1] / B[:, 1] - (U[:, 1] / B[:, 1]) ** 2, rtol=1e-8)
    # conditioning: a walk that wins from near the right end is faster than the average walk
    assert df["win_mean"].iloc[n - 2] < df["ruin_mean"].iloc[n - 2]
