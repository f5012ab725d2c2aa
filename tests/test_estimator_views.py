"""Estimator views of CellRank 2's tutorials: state memberships, the coarse initial distribution,
renaming initial states, the TSI score and its plot, macrostate composition, the Schur matrix and
driver-correlation plots, and copy / to_adata / write / read."""

import anndata as ad
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from cellfate_gpu.estimators import CFLARE, GPCCA
from cellfate_gpu.estimators._base import UnknownStateError
from cellfate_gpu.estimators._gpcca import tsi_table
from cellfate_gpu.kernels import ConnectivityKernel, PrecomputedKernel, PseudotimeKernel
from cellfate_gpu.pl._composition import macrostate_composition_table

LINEAGES = ["Lineage_A", "Lineage_B", "Lineage_C"]


@pytest.fixture(scope="module")
def fitted(atlas):
    """GPCCA on the 600-cell atlas with macrostates, states, fates, times and drivers (copy before changing)."""
    adata = atlas.copy()
    pk = PseudotimeKernel(adata, time_key="pseudotime").compute_transition_matrix()
    ck = ConnectivityKernel(adata).compute_transition_matrix()
    g = GPCCA(0.8 * pk + 0.2 * ck)
    g.fit(n_states=5, cluster_key="clusters")
    g.predict_terminal_states(method="top_n", n_states=3)
    g.predict_initial_states(allow_overlap=True)
    g.compute_fate_probabilities()
    g.compute_absorption_times()
    g.compute_lineage_drivers()
    return g


@pytest.fixture
def g(fitted):
    return fitted.copy(deep=True)


def _tiny_chain():
    """30 cells: Root (0-9) sends 0.3 of its mass to A (10-19) and 0.2 to B (20-29); A and B leak 0.01 back.

    A and B are the metastable sets; A holds more stationary mass than B (it receives more).
    """
    m = 10
    R, A, B = np.arange(m), np.arange(m, 2 * m), np.arange(2 * m, 3 * m)
    T = np.zeros((3 * m, 3 * m))
    T[np.ix_(R, R)], T[np.ix_(R, A)], T[np.ix_(R, B)] = 0.5 / m, 0.3 / m, 0.2 / m
    T[np.ix_(A, A)], T[np.ix_(A, R)] = 0.99 / m, 0.01 / m
    T[np.ix_(B, B)], T[np.ix_(B, R)] = 0.99 / m, 0.01 / m
    adata = ad.AnnData(np.zeros((3 * m, 2)))
    adata.obs["clusters"] = pd.Categorical(["Root"] * m + ["A"] * m + ["B"] * m)
    adata.obsp["T_fwd"] = sp.csr_matrix(T)
    return adata


# --------------------------------------------------------------------------------------- memberships
@pytest.mark.parametrize("which", ["terminal", "initial"])
def test_state_memberships_are_the_chosen_macrostates_columns(fitted, which):
    states = getattr(fitted, f"{which}_states")
    mem = getattr(fitted, f"{which}_states_memberships")
    names = [str(c) for c in states.cat.categories]
    assert mem.names == names
    macro = fitted.macrostates_memberships
    np.testing.assert_array_equal(mem.X, macro.X[:, [macro.names.index(n) for n in names]])
    assert mem.colors == [macro.colors[macro.names.index(n)] for n in names]
    key = "term_states_fwd" if which == "terminal" else "init_states_fwd"
    np.testing.assert_array_equal(fitted.adata.obsm[f"{key}_memberships"], mem.X)
    assert list(fitted.adata.uns[f"{key}_memberships_names"]) == names


def test_memberships_follow_how_states_are_set(g):
    g.set_terminal_states(["Lineage_A", "Lineage_C"])  # macrostate names: memberships of those columns
    assert g.terminal_states_memberships.names == ["Lineage_A", "Lineage_C"]
    np.testing.assert_array_equal(
        g.terminal_states_memberships.X, g.macrostates_memberships[["Lineage_A", "Lineage_C"]].X
    )
    g.set_terminal_states({"x": [0, 1, 2]})  # cells: no memberships, and the AnnData entry goes too (CellRank)
    assert g.terminal_states_memberships is None
    assert "term_states_fwd_memberships" not in g.adata.obsm
    g.set_terminal_states(LINEAGES, cluster_key="clusters")  # clusters: no memberships
    assert g.terminal_states_memberships is None


def test_initial_states_probabilities_mirror_the_terminal_ones(fitted):
    for which, key in (("initial", "init_states_fwd"), ("terminal", "term_states_fwd")):
        p = getattr(fitted, f"{which}_states_probabilities")
        states = getattr(fitted, f"{which}_states")
        np.testing.assert_array_equal(p.to_numpy(), fitted.adata.obs[f"{key}_probs"].to_numpy())
        assert p.between(0, 1).all() and (p[states.isna()] == 0).all()
        for c in states.cat.categories:  # memberships scaled to max 1 per state
            assert p[states == c].max() == pytest.approx(1.0)


def test_coarse_initial_distribution_is_chi_transpose_eta(fitted):
    d = fitted.coarse_initial_distribution
    assert isinstance(d, pd.Series) and list(d.index) == list(fitted.coarse_T.index)
    chi = fitted.macrostates_memberships.X
    np.testing.assert_allclose(d.to_numpy(), chi.mean(axis=0), rtol=1e-12)
    assert d.sum() == pytest.approx(1.0)
    np.testing.assert_allclose(fitted.adata.uns["coarse_fwd"]["init_dist"], d.to_numpy())


# --------------------------------------------------------------------------------------- renaming
def test_rename_initial_states(g):
    old = str(g.initial_states.cat.categories[0])
    probs, colors = g.initial_states_probabilities.copy(), list(g._init_colors)
    cells = g.initial_states.notna().to_numpy()
    g.rename_initial_states({old: "Start"})
    assert list(g.initial_states.cat.categories) == ["Start"]
    assert list(g.adata.obs["init_states_fwd"].cat.categories) == ["Start"]
    np.testing.assert_array_equal(g.adata.obs["init_states_fwd"].notna().to_numpy(), cells)
    pd.testing.assert_series_equal(g.initial_states_probabilities, probs)
    assert list(g.adata.uns["init_states_fwd_colors"]) == colors
    assert g.initial_states_memberships.names == ["Start"]
    assert list(g.adata.uns["init_states_fwd_memberships_names"]) == ["Start"]
    assert g.rename_initial_states({}) is g
    for bad, exc in (({"nope": "x"}, KeyError), ({"nope": "x"}, ValueError), (["Start"], TypeError)):
        with pytest.raises(exc):
            g.rename_initial_states(bad)


def test_rename_terminal_states_renames_every_result(g):
    g.rename_terminal_states(new_names={"Lineage_A": "A"})  # the old keyword still works
    assert "A" in g.terminal_states.cat.categories and "A" in g.fate_probabilities.names
    assert list(g.adata.uns["lineages_fwd_names"]) == g.fate_probabilities.names
    assert "A_mean" in g.absorption_times and "A_corr" in g.lineage_drivers
    assert "A_corr" in g.adata.varm["terminal_lineage_drivers"]
    assert "A" in g.terminal_states_memberships.names
    with pytest.raises(UnknownStateError, match="Lineage_A"):
        g.rename_terminal_states({"Lineage_A": "again"})
    with pytest.raises(ValueError, match="duplicate"):
        g.rename_terminal_states({"A": "Lineage_B"})


def test_rename_without_states_is_refused(atlas_copy):
    g = GPCCA(PseudotimeKernel(atlas_copy, time_key="pseudotime").compute_transition_matrix())
    with pytest.raises(RuntimeError, match="initial states"):
        g.rename_initial_states({"a": "b"})


# --------------------------------------------------------------------------------------- TSI
def test_tsi_table_by_hand():
    names = {1: ["Root"], 2: None, 3: ["A", "B_1", "B_2"], 4: ["A", "B_1", "B_2", "Root"]}
    df = tsi_table(names, ["A", "B"], ["Root", "A", "B"])
    # n=2 failed: it takes n=1's count; B_1, B_2 are one cluster
    assert df["identified_terminal_states"].tolist() == [0, 0, 2, 2]
    assert df["optimal_identification"].tolist() == [1, 2, 2, 2]
    df = tsi_table({1: None, 2: ["Lineage_A_1", "Lineage_A_2"]}, ["Lineage_A"], ["Lineage_A", "Root"])
    assert df["identified_terminal_states"].tolist() == [0, 1]  # names with "_" count (CellRank's cut does not)


def test_tsi_on_a_chain_with_known_macrostates():
    adata = _tiny_chain()
    g = GPCCA(adata)
    before = (set(adata.obs), set(adata.obsm), set(adata.uns))
    # macrostates for n = 1..4 (n_cells=5): [A] (most stationary mass), [A, B], [A, B, Root], [A_1, A_2, B, Root]
    assert g.tsi(4, terminal_states=["Root", "B"], cluster_key="clusters", n_cells=5) == pytest.approx(5 / 7)
    assert (set(adata.obs), set(adata.obsm), set(adata.uns)) == before and g.macrostates is None
    assert g.tsi(4, terminal_states=["B"], cluster_key="clusters", n_cells=5) == pytest.approx(3 / 4)
    assert g.tsi(2, terminal_states=["A", "B"], cluster_key="clusters", n_cells=5) == pytest.approx(1.0)
    # the table is kept: a smaller N (same or omitted states and key) is read from it, not recomputed
    g.tsi(4, terminal_states=["B"], cluster_key="clusters", n_cells=5)

    def fail(*args, **kwargs):
        raise AssertionError("recomputed")

    g._macrostate_values = fail
    assert g.tsi(3) == pytest.approx(2 / 3)
    assert g.tsi(1, terminal_states=["B"]) == 0.0
    with pytest.raises(AssertionError, match="recomputed"):
        g.tsi(3, terminal_states=["A"], cluster_key="clusters")


def test_tsi_on_the_atlas_and_its_plot(fitted):
    g = fitted.copy()
    macro = g.macrostates.copy()
    with pytest.raises(RuntimeError, match="tsi"):
        g.plot_tsi()
    with pytest.raises(RuntimeError, match="terminal_states"):
        g.tsi(3)
    with pytest.raises(ValueError, match="not clusters"):
        g.tsi(3, terminal_states=["Nope"], cluster_key="clusters")
    score = g.tsi(3, terminal_states=LINEAGES, cluster_key="clusters")
    table = g._tsi
    assert 0.0 <= score <= 1.0
    assert table["number_of_macrostates"].tolist() == [1, 2, 3]
    assert table["optimal_identification"].tolist() == [1, 2, 3]
    assert (table["identified_terminal_states"] <= table["optimal_identification"]).all()
    assert score == pytest.approx(table["identified_terminal_states"].sum() / 6)
    pd.testing.assert_series_equal(g.macrostates, macro)  # the estimator's macrostates are untouched
    ax = g.plot_tsi()
    ax.figure.canvas.draw()
    found, optimal = ax.lines[0], ax.lines[1]
    np.testing.assert_array_equal(found.get_xdata(), [1, 2, 3])
    np.testing.assert_array_equal(found.get_ydata(), table["identified_terminal_states"])
    np.testing.assert_array_equal(optimal.get_ydata(), [1, 2, 3])
    legend = ax.get_legend().get_window_extent()
    assert legend.y1 <= ax.get_window_extent().y0  # below the axes, off the data
    plt.close("all")


# --------------------------------------------------------------------------------------- plots
def test_macrostate_composition_equals_crosstab(fitted):
    macro = fitted.macrostates
    clusters = fitted.adata.obs["clusters"]
    ref = pd.crosstab(macro, clusters).reindex(columns=clusters.cat.categories, fill_value=0)
    counts = macrostate_composition_table(fitted, "clusters")
    np.testing.assert_array_equal(counts.to_numpy(), ref.to_numpy())
    fractions = macrostate_composition_table(fitted, "clusters", normalize=True)
    np.testing.assert_allclose(fractions.sum(axis=1), 1.0)
    ref_f = pd.crosstab(macro, clusters, normalize="index").reindex(columns=clusters.cat.categories, fill_value=0)
    np.testing.assert_allclose(fractions.to_numpy(), ref_f.to_numpy())

    ax = fitted.plot_macrostate_composition("clusters", show=False)
    assert [t.get_text() for t in ax.get_xticklabels()] == list(macro.cat.categories)
    present = [c for c in clusters.cat.categories if counts[c].sum() > 0]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == present
    heights = np.array([[p.get_height() for p in c.patches] for c in ax.containers])
    np.testing.assert_array_equal(heights, counts[present].to_numpy().T)
    ax.figure.canvas.draw()
    assert ax.get_legend().get_window_extent().x0 >= ax.get_window_extent().x1  # outside, on the right
    last = str(macro.cat.categories[-1])
    ax = fitted.plot_macrostate_composition("clusters", macrostate=[last], normalize=True, show=False)
    assert sum(p.get_height() for p in ax.patches) == pytest.approx(1.0)
    assert fitted.plot_macrostate_composition("clusters") is None
    with pytest.raises(TypeError, match="categorical"):
        fitted.plot_macrostate_composition("pseudotime")
    with pytest.raises(KeyError, match="nope"):
        fitted.plot_macrostate_composition("nope")
    with pytest.raises(ValueError, match="Unknown macrostate"):
        fitted.plot_macrostate_composition("clusters", macrostate="nope")
    plt.close("all")


def test_schur_matrix_plot_shows_the_schur_matrix(fitted):
    ax = fitted.plot_schur_matrix(show=False)
    img = ax.images[0].get_array()
    R = fitted.schur_matrix
    mask = np.tril(np.ones(R.shape, dtype=bool), -1) & np.isclose(R, 0.0)
    np.testing.assert_array_equal(np.ma.getmaskarray(img), mask)
    np.testing.assert_array_equal(img.data[~mask], R[~mask])
    assert len(ax.figure.axes) == 2  # and a colour bar
    assert len(ax.texts) == int((~mask).sum())
    assert ax.get_title() == "schur matrix"
    plt.close("all")
    with pytest.raises(RuntimeError, match="compute_schur"):
        GPCCA(fitted.kernel).plot_schur_matrix()


def test_lineage_drivers_correlation_plot(fitted):
    df = fitted.lineage_drivers
    genes = list(df.index[:2])
    ax = fitted.plot_lineage_drivers_correlation(
        "Lineage_A", "Lineage_B", color="Lineage_A_qval", gene_sets={"Lineage_A": genes}, show=False
    )
    xy = ax.collections[0].get_offsets()
    order = np.argsort(df["Lineage_A_qval"].to_numpy(), kind="stable")
    np.testing.assert_allclose(xy[:, 0], df["Lineage_A_corr"].to_numpy()[order])
    np.testing.assert_allclose(xy[:, 1], df["Lineage_B_corr"].to_numpy()[order])
    assert sorted(t.get_text() for t in ax.texts) == sorted(genes)
    assert len(ax.figure.axes) == 2  # a colour bar for the continuous colouring
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["Lineage_A"]
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("Lineage_A_corr", "Lineage_B_corr")
    fitted.adata.var["symbol"] = [f"SYM{i}" for i in range(fitted.adata.n_vars)]
    ax = fitted.plot_lineage_drivers_correlation(
        "Lineage_A", "Lineage_C", gene_sym="symbol", gene_sets={"set": ["SYM0"]}, show=False
    )
    assert [t.get_text() for t in ax.texts] == ["SYM0"]
    plt.close("all")
    with pytest.raises(RuntimeError, match="compute_lineage_drivers"):
        fitted.plot_lineage_drivers_correlation("Lineage_A", "nope")
    with pytest.raises(KeyError, match="nope"):
        fitted.plot_lineage_drivers_correlation("Lineage_A", "Lineage_B", color="nope")


# --------------------------------------------------------------------------------------- copy and I/O
@pytest.mark.parametrize("deep", [False, True])
def test_copy_is_independent(fitted, deep):
    g = fitted.copy(deep=True)  # a private original for this test
    h = g.copy(deep=deep)
    assert type(h) is GPCCA and h.backend is g.backend
    assert (h.adata is g.adata) is (not deep)
    for attr in ("fate_probabilities", "macrostates_memberships", "schur_vectors"):
        a, b = np.asarray(getattr(g, attr)).view(np.ndarray), np.asarray(getattr(h, attr)).view(np.ndarray)
        np.testing.assert_array_equal(a, b)
        assert not np.shares_memory(np.asarray(a), np.asarray(b))
    h.rename_terminal_states({"Lineage_A": "A"})
    assert "Lineage_A" in g.terminal_states.cat.categories and "Lineage_A" in g.fate_probabilities.names
    h.macrostates_memberships.X[:] = 0  # in place, on the copy's arrays
    h.coarse_T.iloc[0, 0] = -1.0
    h.eigendecomposition["D"][0] = 7.0
    assert g.macrostates_memberships.X.max() > 0 and g.coarse_T.iloc[0, 0] >= 0
    assert g.eigendecomposition["D"][0] != 7.0
    if deep:
        assert "Lineage_A" in g.adata.obs["term_states_fwd"].cat.categories  # its AnnData is its own
    np.testing.assert_allclose(h.compute_fate_probabilities()["A"].X, g.fate_probabilities["Lineage_A"].X)


def _assert_same(a, b):
    np.testing.assert_array_equal(a.schur_vectors, b.schur_vectors)
    np.testing.assert_array_equal(a.schur_matrix, b.schur_matrix)
    np.testing.assert_array_equal(a.macrostates_memberships.X, b.macrostates_memberships.X)
    pd.testing.assert_series_equal(a.macrostates, b.macrostates)
    pd.testing.assert_series_equal(a.terminal_states, b.terminal_states)
    np.testing.assert_array_equal(a.terminal_states_memberships.X, b.terminal_states_memberships.X)
    np.testing.assert_array_equal(a.fate_probabilities.X, b.fate_probabilities.X)
    assert a.fate_probabilities.names == b.fate_probabilities.names
    pd.testing.assert_frame_equal(a.absorption_times, b.absorption_times)
    pd.testing.assert_frame_equal(a.coarse_T, b.coarse_T)
    assert (a.transition_matrix != b.transition_matrix).nnz == 0


def test_write_read_round_trip(fitted, tmp_path):
    fitted.write(tmp_path / "with")
    assert (tmp_path / "with.pickle").is_file()
    r = GPCCA.read(tmp_path / "with.pickle")
    _assert_same(fitted, r)
    assert r.adata is not fitted.adata and r.adata.n_obs == fitted.adata.n_obs
    assert r.backend is fitted.backend  # backends come back as this process's instance
    np.testing.assert_allclose(r.compute_fate_probabilities().X, fitted.fate_probabilities.X, atol=1e-10)

    fitted.write(tmp_path / "bare.pkl", write_adata=False, ext=None)
    assert fitted.adata is not None and fitted.kernel.adata is fitted.adata  # restored after writing
    assert (tmp_path / "bare.pkl").stat().st_size < (tmp_path / "with.pickle").stat().st_size
    with pytest.raises(TypeError, match="adata"):
        GPCCA.read(tmp_path / "bare.pkl")
    with pytest.raises(ValueError, match="cells"):
        GPCCA.read(tmp_path / "bare.pkl", adata=fitted.adata[:10])
    r = GPCCA.read(tmp_path / "bare.pkl", adata=fitted.adata)
    assert r.adata is fitted.adata and all(k.adata is fitted.adata for k in r.kernel.kernels)
    _assert_same(fitted, r)
    assert GPCCA.read(tmp_path / "bare.pkl", adata=fitted.adata, copy=True).adata is not fitted.adata
    with pytest.raises(TypeError, match="not a CFLARE"):
        CFLARE.read(tmp_path / "with.pickle")


def test_to_adata_holds_the_results_under_cellrank_keys(fitted):
    out = fitted.to_adata()
    src = fitted.adata
    assert out is not src and list(out.obs_names) == list(src.obs_names)
    for key in ("macrostates_fwd", "term_states_fwd", "term_states_fwd_probs", "init_states_fwd"):
        assert key in out.obs
    for key in ("schur_vectors_fwd", "macrostates_fwd_memberships", "term_states_fwd_memberships", "lineages_fwd"):
        np.testing.assert_array_equal(out.obsm[key], src.obsm[key])
    assert "absorption_times_fwd" in out.obsm and "terminal_lineage_drivers" in out.varm
    np.testing.assert_array_equal(out.uns["schur_matrix_fwd"], fitted.schur_matrix)
    assert (out.obsp["T_fwd"] != fitted.transition_matrix).nnz == 0 and "T_fwd_params" in out.uns
    assert "clusters" not in out.obs and (out.X != src.X).nnz == 0  # keep=("X", "raw")
    out.obsm["lineages_fwd"][:] = 0  # written from copies
    assert fitted.fate_probabilities.X.max() > 0
    back = GPCCA.from_adata(out)
    pd.testing.assert_series_equal(back.terminal_states, fitted.terminal_states, check_names=False)
    np.testing.assert_array_equal(back.terminal_states_memberships.X, fitted.terminal_states_memberships.X)
    full = fitted.to_adata(keep="all")
    assert "clusters" in full.obs and "X_umap" in full.obsm and "connectivities" in full.obsp
    part = fitted.to_adata(keep={"obs": ["clusters"], "obsm": ["X_umap"]}, copy=False)
    assert "clusters" in part.obs and "X_umap" in part.obsm and "X_pca" not in part.obsm and part.X is None
    with pytest.raises(KeyError, match="nope"):
        fitted.to_adata(keep={"obs": ["nope"]})
    with pytest.raises(ValueError, match="attribute"):
        fitted.to_adata(keep=["Xs"])


def test_cflare_copy_write_read_to_adata(atlas_copy, tmp_path):
    pk = PseudotimeKernel(atlas_copy, time_key="pseudotime").compute_transition_matrix()
    c = CFLARE(0.8 * pk + 0.2 * ConnectivityKernel(atlas_copy).compute_transition_matrix())
    c.set_terminal_states(LINEAGES, cluster_key="clusters")
    c.compute_fate_probabilities()
    h = c.copy()
    h.rename_terminal_states({"Lineage_A": "A"})
    assert c.fate_probabilities.names == LINEAGES
    c.write(tmp_path / "c", write_adata=False)
    r = CFLARE.read(tmp_path / "c.pickle", adata=atlas_copy)
    np.testing.assert_array_equal(r.fate_probabilities.X, c.fate_probabilities.X)
    out = c.to_adata()
    assert list(out.obs["term_states_fwd"].cat.categories) == LINEAGES and "lineages_fwd" in out.obsm


TUTORIAL_CELLS = [
    'g.plot_macrostate_composition(key="clusters", figsize=(7, 4))',
    "g.plot_coarse_T(show_initial_dist=True)",
    "g.plot_schur_matrix()",
    'tsi_score = g.tsi(n_macrostates=3, terminal_states=["Lineage_A", "Lineage_B", "Lineage_C"], '
    'cluster_key="clusters")\ng.plot_tsi(palette={"PseudotimeKernel + ConnectivityKernel": "#1f77b4"})',
    'g.plot_lineage_drivers_correlation(lineage_x="Lineage_A", lineage_y="Lineage_B", adjust_text=True, '
    'gene_sets={"Lineage_A": list(adata.var_names[:3])}, color="Lineage_A_qval", legend_loc="none", '
    "figsize=(5, 5), dpi=150, fontsize=9, size=50)",
    'g.rename_initial_states({g.initial_states.cat.categories[0]: "Root"})\nbdata = g.to_adata()',
    'g.write(str(tmp_path / "g.pickle"))\ng2 = cr.estimators.GPCCA.read(str(tmp_path / "g.pickle"))',
]


def test_tutorial_cells_of_the_estimator_views(fitted, tmp_path):
    """CellRank tutorial cells for these views, run unchanged with ``import cellfate_gpu as cr``."""
    import cellfate_gpu as cr

    g = fitted.copy(deep=True)
    ns = {"cr": cr, "g": g, "adata": g.adata, "tmp_path": tmp_path}
    for cell in TUTORIAL_CELLS:
        exec(cell, ns)  # the cells are the test
        plt.close("all")
    assert 0.0 <= ns["tsi_score"] <= 1.0
    assert "Root" in ns["bdata"].obs["init_states_fwd"].cat.categories
    assert list(ns["g2"].initial_states.cat.categories) == ["Root"]


def test_copy_write_read_on_every_backend(backend, tmp_path):
    """T stays on its backend through copy and pickling; a read estimator solves there again."""
    adata = _tiny_chain()
    k = PrecomputedKernel(adata.obsp["T_fwd"], adata=adata).compute_transition_matrix(backend=backend)
    g = GPCCA(k)
    g.compute_macrostates(n_states=3, n_cells=5, cluster_key="clusters")
    g.set_terminal_states(["A", "B"], n_cells=5)
    g.compute_fate_probabilities()
    h = g.copy(deep=True)
    assert h.backend is g.backend and h.backend.is_native(h._T)
    np.testing.assert_allclose(h.compute_fate_probabilities().X, g.fate_probabilities.X, atol=1e-10)
    g.write(tmp_path / "g")
    r = GPCCA.read(tmp_path / "g.pickle")
    assert r.backend is g.backend and r.backend.name == backend
    assert (r.transition_matrix != g.transition_matrix).nnz == 0
    np.testing.assert_allclose(r.compute_fate_probabilities().X, g.fate_probabilities.X, atol=1e-10)


@pytest.mark.parametrize(
    ("loc", "side"),
    [
        ("upper right out", "right"),
        ("center left out", "left"),
        ("upper center out", "above"),
        ("right margin", "right"),
    ],
)
def test_legends_out_of_the_axes(loc, side):
    from cellfate_gpu.pl._legend import position_legend

    fig, ax = plt.subplots()
    ax.scatter([0, 1], [0, 1], label="cells")
    position_legend(ax, loc)
    fig.canvas.draw()
    box, axes = ax.get_legend().get_window_extent(), ax.get_window_extent()
    assert {"right": box.x0 >= axes.x1, "left": box.x1 <= axes.x0, "above": box.y0 >= axes.y1}[side]
    assert position_legend(ax, None) is None
    with pytest.raises(ValueError, match="legend_loc"):
        position_legend(ax, "middle out")
    plt.close(fig)
