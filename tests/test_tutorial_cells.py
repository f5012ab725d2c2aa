"""CellRank tutorial cells, verbatim, with ``import cellfate_gpu as cr``.

Each cell is the code of a CellRank 2 tutorial cell (getting started, pseudotime, velocity,
initial and terminal states, fate probabilities and drivers, gene trends) with only the data names
adapted; each runs unchanged here and must write what CellRank writes under CellRank's keys.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.colors
import matplotlib.patches
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

import cellfate_gpu as cr

TOY = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "cellrank_toy_50.h5ad"

ATLAS_CELLS = [
    'pk = cr.kernels.PseudotimeKernel(adata, time_key="dpt_pseudotime")\npk.compute_transition_matrix()',
    "ck = cr.kernels.ConnectivityKernel(adata).compute_transition_matrix()\ncombined_kernel = 0.8 * pk + 0.2 * ck",
    "g = cr.estimators.GPCCA(combined_kernel)\ng.compute_schur(n_components=20)\ng.plot_spectrum(real_only=True)",
    'g.fit(cluster_key="clusters", n_states=[4, 12])\n'
    'g.plot_macrostates(which="all", discrete=True, legend_loc="right", s=100)',
    'g.predict_terminal_states()\ng.plot_macrostates(which="terminal", legend_loc="right", s=100)',
    'g.plot_macrostates(which="terminal", discrete=False)',
    "g.plot_coarse_T()",
    'g.predict_initial_states(allow_overlap=True)\ng.plot_macrostates(which="initial", legend_loc="right", s=100)',
    "g.compute_fate_probabilities()\ng.plot_fate_probabilities(same_plot=False)",
    "g.plot_fate_probabilities(same_plot=True)",
    'cr.pl.circular_projection(adata, keys=["clusters", "kl_divergence"], legend_loc="right")',
    "model = cr.models.GAM(adata)",
    'cr.pl.gene_trends(adata, model=model, data_key="magic_imputed_data", genes=list(adata.var_names[:4]), '
    'same_plot=True, ncols=2, time_key="dpt_pseudotime", hide_cells=True, weight_threshold=(1e-3, 1e-3))',
    'cr.pl.heatmap(adata, model=model, data_key="magic_imputed_data", genes=list(adata.var_names[:20]), '
    'lineages=lineage, cluster_key="clusters", show_fate_probabilities=True, show_all_genes=True, '
    'time_key="dpt_pseudotime", figsize=(12, 10), weight_threshold=(1e-3, 1e-3))',
    'cr.pl.aggregate_fate_probabilities(adata, mode="violin", lineages=[lineage], cluster_key="clusters")',
    'df = g.compute_lineage_drivers(cluster_key="clusters")\ng.plot_lineage_drivers(lineage, n_genes=5)',
]

TOY_CELLS = [
    "vk = cr.kernels.VelocityKernel(adata)\nvk.compute_transition_matrix()",
    "ck = cr.kernels.ConnectivityKernel(adata).compute_transition_matrix()\ncombined_kernel = 0.8 * vk + 0.2 * ck",
    "g = cr.estimators.GPCCA(combined_kernel)\ng.compute_schur(n_components=6)\n"
    "g.plot_spectrum(real_only=True, n=6, show_all_xticks=True)",
    'g.fit(n_states=3, cluster_key="clusters")\ng.plot_macrostates(which="all", legend_loc="right", s=100)',
    'g.predict_terminal_states(method="top_n", n_states=2)\ng.plot_macrostates(which="terminal", discrete=False)',
    "g.plot_coarse_T(annotate=True, order=None)",
    'g.compute_fate_probabilities()\ng.plot_fate_probabilities(same_plot=False, basis="umap", legend_loc="right")',
    'g.plot_fate_probabilities(mode="time", time_key="latent_time")',
    'cr.pl.aggregate_fate_probabilities(adata, mode="paga_pie", cluster_key="clusters", basis="umap")',
    'cr.pl.gene_trends(adata, model=cr.models.GAM(adata), genes=list(adata.var_names[:3]), time_key="latent_time", '
    'data_key="Ms", same_plot=False)',
    'cr.pl.heatmap(adata, model=cr.models.GAM(adata), genes=list(adata.var_names[:10]), time_key="latent_time", '
    'data_key="Ms", show_fate_probabilities=True)',
]


def _atlas():
    from cellfate_gpu.datasets import synthetic_atlas

    adata = synthetic_atlas(n_cells=800, n_lineages=3, n_genes=40, seed=0)
    adata.layers["magic_imputed_data"] = adata.layers["Ms"]
    return adata


def _toy():
    import anndata as ad

    if not TOY.is_file():
        pytest.skip(f"{TOY} not present")
    return ad.read_h5ad(TOY)


@pytest.mark.parametrize(("load", "cells"), [(_atlas, ATLAS_CELLS), (_toy, TOY_CELLS)], ids=["atlas", "toy_50"])
def test_tutorial_cells_run_unchanged(load, cells, tmp_path):
    adata = load()
    ns = {"cr": cr, "adata": adata, "np": np}
    for cell in cells:
        if "lineage" in cell and "lineage" not in ns and "g" in ns and ns["g"].terminal_states is not None:
            ns["lineage"] = str(ns["g"].terminal_states.cat.categories[0])
        exec(compile(cell, f"<cell {cell.splitlines()[0][:40]}>", "exec"), ns)
        plt.close("all")
    # what CellRank writes, under CellRank's keys
    assert "term_states_fwd" in adata.obs and "macrostates_fwd" in adata.obs
    P = adata.obsm["lineages_fwd"]
    np.testing.assert_allclose(np.asarray(P).sum(1), 1.0, atol=1e-6)
    if "X_fate_simplex_fwd" in adata.obsm:
        assert adata.obsm["X_fate_simplex_fwd"].shape == (adata.n_obs, 2)


# --------------------------------------------------------------------------------------- the views
# Cells of CellRank 2's "initial and terminal states", "fate probabilities and drivers", "velocity",
# "real-time" and "CytoTRACE" tutorials that reach the estimator views, Lineage.reduce / plot_pie,
# the random-velocity models, RealTimeKernel.from_moscot and plot_single_flow. After each cell the
# figures it drew are saved (to $CELLFATE_TUTORIAL_FIGS if set, to look at them, else tmp_path).
def _run_cells(cells, ns, figdir):
    import os

    out = Path(os.environ.get("CELLFATE_TUTORIAL_FIGS", figdir))
    out.mkdir(parents=True, exist_ok=True)
    drawn = {}
    for i, cell in enumerate(cells):
        exec(compile(cell, f"<cell {cell.splitlines()[0][:40]}>", "exec"), ns)
        for num in plt.get_fignums():
            fname = out / f"{ns.get('_dataset', 'data')}_{i:02d}_{num}.png"
            plt.figure(num).savefig(fname, dpi=60)
            drawn.setdefault(i, []).append(plt.figure(num))
        plt.close("all")
    return drawn


STATES_CELLS = {
    "atlas": [
        'pk = cr.kernels.PseudotimeKernel(adata, time_key="dpt_pseudotime")\npk.compute_transition_matrix()\n'
        "ck = cr.kernels.ConnectivityKernel(adata).compute_transition_matrix()\n"
        "combined_kernel = 0.8 * pk + 0.2 * ck",
        'g = cr.estimators.GPCCA(combined_kernel)\nprint(g)\ng.fit(n_states=5, cluster_key="clusters")\n'
        'g.plot_macrostates(which="all", discrete=True, legend_loc="right", s=100)',
    ],
    "toy_50": [
        "vk = cr.kernels.VelocityKernel(adata)\n"
        'vk.compute_transition_matrix(model="monte_carlo", n_samples=200, seed=0)\n'
        "ck = cr.kernels.ConnectivityKernel(adata).compute_transition_matrix()\n"
        "combined_kernel = 0.8 * vk + 0.2 * ck",
        'g = cr.estimators.GPCCA(combined_kernel)\nprint(g)\ng.fit(n_states=3, cluster_key="clusters")\n'
        'g.plot_macrostates(which="all", discrete=True, legend_loc="right", s=100)',
    ],
}
VIEW_CELLS = [
    'g.plot_macrostate_composition(key="clusters", figsize=(7, 4))',  # 0
    "g.plot_coarse_T(show_initial_dist=True)",  # 1
    "g.plot_schur_matrix()",  # 2
    'g.predict_terminal_states(method="top_n", n_states=n_terminal)\n'
    'g.plot_macrostates(which="terminal", legend_loc="right", s=100)\n'
    "memberships = g.terminal_states_memberships",  # 3
    'g.predict_initial_states(allow_overlap=True)\ng.plot_macrostates(which="initial", legend_loc="right", s=100)\n'
    'g.rename_initial_states({g.initial_states.cat.categories[0]: "Progenitor"})\n'
    "init_probs = g.initial_states_probabilities\ninit_dist = g.coarse_initial_distribution",  # 4
    'cluster_key = "clusters"\n'
    "tsi_score = g.tsi(n_macrostates=n_tsi, terminal_states=terminal_states, cluster_key=cluster_key)\n"
    'print(f"TSI score: {tsi_score:.2f}")\n'
    'palette = {"PseudotimeKernel + ConnectivityKernel": "#DE8F05", "Optimal identification": "#000000"}\n'
    "g.plot_tsi(palette=palette, save=None)\nplt.show()",  # 5
    "g.compute_fate_probabilities()\ng.plot_fate_probabilities(same_plot=False)",  # 6
    "lineage = g.fate_probabilities\nlineage.plot_pie(np.mean)\n"
    "reduced = lineage.reduce(*lineage.names[:2], mode='dist', dist_measure='cosine_sim')\n"
    "merged = lineage.reduce(', '.join(lineage.names[:2]), *lineage.names[2:])",  # 7
    'drivers = g.compute_lineage_drivers(cluster_key="clusters")\n'
    "g.plot_lineage_drivers_correlation(lineage_x=lineage.names[0], lineage_y=lineage.names[1], adjust_text=True, "
    "gene_sets={lineage.names[0]: list(drivers.index[:3])}, color=f'{lineage.names[0]}_qval', legend_loc='none', "
    "figsize=(5, 5), dpi=150, fontsize=9, size=50)",  # 8
    'g2 = g.copy()\ng.write(str(tmp_path / "gpcca.pickle"))\n'
    'g3 = cr.estimators.GPCCA.read(str(tmp_path / "gpcca.pickle"))\nbdata = g.to_adata()',  # 9
]
VIEW_DATA = {
    # dataset: (loader, number of terminal states, n_macrostates of the TSI, the terminal clusters)
    "atlas": (_atlas, 3, 5, ["Lineage_A", "Lineage_B", "Lineage_C"]),
    "toy_50": (_toy, 2, 3, ["Granule mature"]),
}


@pytest.mark.parametrize("dataset", list(VIEW_DATA))
def test_estimator_view_cells(dataset, tmp_path):
    load, n_terminal, n_tsi, terminal_states = VIEW_DATA[dataset]
    adata = load()
    ns = {"cr": cr, "adata": adata, "np": np, "plt": plt, "tmp_path": tmp_path, "_dataset": dataset}
    ns.update(n_terminal=n_terminal, n_tsi=n_tsi, terminal_states=terminal_states)
    _run_cells(STATES_CELLS[dataset], ns, tmp_path)
    macro = adata.obs["macrostates_fwd"].copy()
    drawn = _run_cells(VIEW_CELLS, ns, tmp_path)
    g = ns["g"]
    T = g.transition_matrix.toarray()

    # macrostate composition: bar heights are the cross-tabulation of macrostates and clusters
    ax = drawn[0][0].axes[0]
    ref = pd.crosstab(macro, adata.obs["clusters"])
    heights = {(b.get_label() if hasattr(b, "get_label") else None) for b in ax.containers}
    assert heights <= {str(c) for c in ref.columns}
    stacked = np.sum([[p.get_height() for p in c.patches] for c in ax.containers], axis=0)
    np.testing.assert_array_equal(stacked, ref.sum(axis=1).reindex(macro.cat.categories).to_numpy())

    # Schur matrix and vectors under CellRank's keys: T X = X R, R quasi upper triangular
    X, R = adata.obsm["schur_vectors_fwd"], np.asarray(adata.uns["schur_matrix_fwd"])
    np.testing.assert_allclose(T @ X, X @ R, atol=1e-6)
    assert np.allclose(np.tril(R, -2), 0.0)
    img = drawn[2][0].axes[0].images[0].get_array()
    np.testing.assert_allclose(np.ma.filled(img, 0.0), np.where(np.ma.getmaskarray(img), 0.0, R))

    # terminal states memberships: the chosen macrostates' columns, written beside term_states_fwd
    mem, chi = ns["memberships"], g.macrostates_memberships
    names = [str(c) for c in adata.obs["term_states_fwd"].cat.categories]
    assert mem.names == names and len(names) == n_terminal
    np.testing.assert_array_equal(mem.X, chi.X[:, [chi.names.index(n) for n in names]])
    np.testing.assert_array_equal(adata.obsm["term_states_fwd_memberships"], mem.X)

    # initial states renamed everywhere; probabilities and coarse initial distribution (chi^T eta, uniform eta)
    assert list(adata.obs["init_states_fwd"].cat.categories) == ["Progenitor"]
    assert list(adata.uns["init_states_fwd_memberships_names"]) == ["Progenitor"]
    np.testing.assert_array_equal(ns["init_probs"].to_numpy(), adata.obs["init_states_fwd_probs"].to_numpy())
    np.testing.assert_allclose(ns["init_dist"].to_numpy(), chi.X.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(adata.uns["coarse_fwd"]["init_dist"], ns["init_dist"].to_numpy())

    # TSI: identified / optimal over n = 1..n_tsi; the estimator's macrostates are left alone
    table = g._tsi
    assert table["number_of_macrostates"].tolist() == list(range(1, n_tsi + 1))
    assert ns["tsi_score"] == pytest.approx(
        table["identified_terminal_states"].sum() / table["optimal_identification"].sum()
    )
    assert 0.0 <= ns["tsi_score"] <= 1.0
    pd.testing.assert_series_equal(adata.obs["macrostates_fwd"], macro)
    tsi_ax = drawn[5][0].axes[0]
    np.testing.assert_array_equal(tsi_ax.lines[0].get_ydata(), table["identified_terminal_states"])
    if dataset == "atlas":  # the palette's colour for the kernel's label
        assert matplotlib.colors.to_hex(tsi_ax.lines[0].get_color()) == "#de8f05"

    # fate probabilities, the pie of their means, and the reductions
    P = adata.obsm["lineages_fwd"]
    np.testing.assert_allclose(np.asarray(P).sum(1), 1.0, atol=1e-6)
    wedges = [p for p in drawn[7][0].axes[0].patches if isinstance(p, matplotlib.patches.Wedge)]
    share = np.array([w.theta2 - w.theta1 for w in wedges]) / 360
    np.testing.assert_allclose(share, P.mean(0) / P.mean(0).sum(), atol=1e-6)
    lin, red, merged = ns["lineage"], ns["reduced"], ns["merged"]
    assert red.names == lin.names[:2] and merged.names[0] == ", ".join(lin.names[:2])
    np.testing.assert_allclose(red.X.sum(1), 1.0, atol=1e-10)
    assert (red.X >= lin.X[:, :2] - 1e-12).all()  # the other lineages' mass is handed out, none taken
    np.testing.assert_allclose(merged.X[:, 0], lin.X[:, :2].sum(1), atol=1e-12)  # "A, B" is A + B

    # drivers: CellRank's Pearson correlation of expression with the fate probabilities, in varm
    drivers = adata.varm["terminal_lineage_drivers"]
    first = lin.names[0]
    gene = ns["drivers"].index[0]
    x = np.asarray(adata[:, gene].X.toarray() if hasattr(adata.X, "toarray") else adata[:, gene].X).ravel()
    assert drivers.loc[gene, f"{first}_corr"] == pytest.approx(np.corrcoef(x, lin[first].X.ravel())[0, 1], abs=1e-8)
    corr_ax = drawn[8][0].axes[0]
    assert len(drawn[8][0].axes) == 2  # a colour bar for the q-values
    assert sorted(t.get_text() for t in corr_ax.texts) == sorted(ns["drivers"].index[:3])

    # copy / write / read / to_adata
    for other in (ns["g2"], ns["g3"]):
        np.testing.assert_array_equal(other.fate_probabilities.X, g.fate_probabilities.X)
        pd.testing.assert_series_equal(other.terminal_states, g.terminal_states)
    assert ns["g2"].adata is adata and ns["g3"].adata is not adata
    np.testing.assert_array_equal(ns["bdata"].obsm["lineages_fwd"], P)
    assert list(ns["bdata"].obs["init_states_fwd"].cat.categories) == ["Progenitor"]


# --------------------------------------------------------------------------------------- velocity models
VELOCITY_CELLS = [
    'vk = cr.kernels.VelocityKernel(adata)\nvk.compute_transition_matrix(model="stochastic")\nvk.write_to_adata()\n'
    'T_stochastic = adata.obsp["T_fwd"].copy()',
    'vk.compute_transition_matrix(model="monte_carlo", n_samples=300, seed=0)\nvk.write_to_adata()\n'
    'T_mc = adata.obsp["T_fwd"].copy()',
    "vk.compute_transition_matrix()\nvk.plot_projection(basis='umap', color='clusters', legend_loc='right')",
]


def test_velocity_model_cells(tmp_path):
    import scipy.sparse as sp

    adata = _toy()
    ns = {"cr": cr, "adata": adata, "np": np, "_dataset": "toy_velocity"}
    drawn = _run_cells(VELOCITY_CELLS, ns, tmp_path)
    det = ns["vk"].transition_matrix
    assert adata.uns["T_fwd_params"]["params"]["model"] == "monte_carlo"
    assert adata.uns["T_fwd_params"]["params"]["n_samples"] == 300
    for T in (ns["T_stochastic"], ns["T_mc"]):
        T = sp.csr_matrix(T)
        np.testing.assert_allclose(np.asarray(T.sum(1)).ravel(), 1.0, atol=1e-10)
        assert T.min() >= 0
        # the same kNN edges as the deterministic model, no new ones
        assert (det.toarray()[T.toarray() > 0] > 0).all()
        assert abs(T - det).max() > 1e-6  # the velocity's spread changes the probabilities
    assert "T_fwd_umap" in adata.obsm and drawn[2]  # the projection drawn


# --------------------------------------------------------------------------------------- real time
class _Solution:
    def __init__(self, tmap):
        self.transport_matrix = tmap


class _TemporalProblem:
    """What CellRank reads from a solved moscot ``TemporalProblem`` (duck-typed; moscot is not needed)."""

    def __init__(self, adata, time_key):
        self.adata, self.temporal_key = adata, time_key
        self._policy = type("SequentialPolicy", (), {})()
        self.solutions, self._subs = {}, {}
        days = sorted(adata.obs[time_key].cat.categories)
        X = adata.obsm["X_pca"][:, :5]
        for a, b in itertools.pairwise(days):
            src, tgt = adata[adata.obs[time_key] == a], adata[adata.obs[time_key] == b]
            xa, xb = X[(adata.obs[time_key] == a).to_numpy()], X[(adata.obs[time_key] == b).to_numpy()]
            d = ((xa[:, None] - xb[None]) ** 2).sum(-1)
            self.solutions[a, b] = _Solution(np.exp(-d / np.median(d)))
            self._subs[a, b] = type("Sub", (), {"adata_src": src, "adata_tgt": tgt})()

    def __getitem__(self, key):
        return self._subs[key]


REALTIME_CELLS = [
    "tmk = cr.kernels.RealTimeKernel.from_moscot(tp)\n"
    'tmk.compute_transition_matrix(self_transitions="all", conn_weight=0.2, threshold="auto")\ntmk.write_to_adata()',
    'tmk.plot_single_flow(cluster_key="clusters", time_key="day", cluster="Root", min_flow=0.1, xticks_step_size=1)',
    'g = cr.estimators.GPCCA(tmk)\ng.compute_macrostates(n_states=4, cluster_key="clusters")\n'
    'g.plot_macrostate_composition(key="day", figsize=(6, 4))',
]


def test_real_time_cells(tmp_path):
    from cellfate_gpu.pl._flow import single_flow_table

    adata = _atlas()
    adata.obs["day"] = pd.Categorical(pd.cut(adata.obs["pseudotime"], 4, labels=[0, 1, 2, 3]).astype(int))
    ns = {"cr": cr, "adata": adata, "np": np, "tp": _TemporalProblem(adata, "day"), "_dataset": "atlas_realtime"}
    drawn = _run_cells(REALTIME_CELLS, ns, tmp_path)
    T = adata.obsp["T_fwd"]
    np.testing.assert_allclose(np.asarray(T.sum(1)).ravel(), 1.0, atol=1e-10)
    day = adata.obs["day"].cat.codes.to_numpy()
    rows, cols = T.nonzero()
    step = day[cols] - day[rows]
    assert set(np.unique(step)) <= {0, 1}  # sequential: to the same or the next time point only
    last = day[rows] == day.max()
    assert (step[last] == 0).all()
    flow, _ = single_flow_table(T, adata.obs["clusters"], adata.obs["day"], "Root")
    np.testing.assert_allclose(flow.sum(1)[flow.sum(1) > 0], 1.0, atol=1e-10)
    ax = drawn[1][0].axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == [str(d) for d in range(4)]
    assert "macrostates_fwd" in adata.obs and adata.obs["macrostates_fwd"].cat.categories.size == 4


# --------------------------------------------------------------------------------------- CytoTRACE
CYTOTRACE_CELLS = [
    "ctk = cr.kernels.CytoTRACEKernel(adata).compute_cytotrace()",
    'ctk.compute_transition_matrix(threshold_scheme="soft", nu=0.5)\nctk.write_to_adata()',
    'ctk.plot_random_walks(n_sims=15, max_iter=0.25, seed=0, dpi=150, start_ixs={"clusters": "nIPC"})',
]


def test_cytotrace_cells(tmp_path):
    adata = _toy()
    ns = {"cr": cr, "adata": adata, "np": np, "_dataset": "toy_cytotrace"}
    _run_cells(CYTOTRACE_CELLS, ns, tmp_path)
    for key in ("ct_score", "ct_pseudotime", "ct_num_exp_genes"):
        assert key in adata.obs
    for key in ("ct_gene_corr", "ct_correlates"):
        assert key in adata.var
    # CellRank: genes expressed per cell, each gene's correlation with that count, pseudotime = 1 - score
    X = adata.X.toarray() if hasattr(adata.X, "toarray") else np.asarray(adata.X)
    counts = (X > 0).sum(1)
    np.testing.assert_array_equal(adata.obs["ct_num_exp_genes"].to_numpy(), counts)
    gene = int(np.nanargmax(adata.var["ct_gene_corr"].to_numpy()))
    assert adata.var["ct_gene_corr"].iloc[gene] == pytest.approx(np.corrcoef(X[:, gene], counts)[0, 1], rel=1e-5)
    s = adata.obs["ct_score"].to_numpy()
    assert s.min() == 0.0 and s.max() == pytest.approx(1.0)
    np.testing.assert_allclose(adata.obs["ct_pseudotime"].to_numpy(), 1.0 - s, atol=1e-12)
    T = adata.obsp["T_fwd"]
    np.testing.assert_allclose(np.asarray(T.sum(1)).ravel(), 1.0, atol=1e-10)


# --------------------------------------------------------------------------------------- random walks
# The CytoTRACE tutorial colours the cells by an obs column; the real-time tutorial starts the walks at
# one time point given as a number ({"day": 0.0}) and keeps plot_single_flow's axes (show=False).
WALK_CELLS = [
    "tmk = RealTimeKernel.from_moscot(tp)\n"
    'tmk.compute_transition_matrix(self_transitions="all", conn_weight=0.2, threshold="auto")',
    'tmk.plot_random_walks(max_iter=500, start_ixs={"day": 0.0}, basis="force_directed", seed=0, dpi=150, size=30)',
    'ctk = CytoTRACEKernel(adata).compute_cytotrace()\nctk.compute_transition_matrix(threshold_scheme="soft", nu=0.5)\n'
    'ctk.plot_random_walks(n_sims=100, start_ixs={"Stage": "Root"}, basis="force_directed", color="Stage", '
    'legend_loc="right", seed=1)',
    'ctk.plot_random_walks(n_sims=20, start_ixs={"Stage": "Root"}, basis="force_directed", color="dpt_pseudotime", '
    "seed=1)",
    'ax = tmk.plot_single_flow(cluster_key="clusters", time_key="day", cluster="Root", min_flow=0.1, '
    'xticks_step_size=4, show=False, clusters=["Root", "Progenitor", "Lineage_A_early"])\n'
    "_ = ax.set_xticklabels(ax.get_xticklabels(), rotation=90)",
]


def test_random_walk_cells(tmp_path):
    from cellfate_gpu.kernels import CytoTRACEKernel, RealTimeKernel

    adata = _atlas()
    adata.obs["day"] = pd.Categorical(pd.cut(adata.obs["pseudotime"], 4, labels=[0, 1, 2, 3]).astype(float))
    adata.obs["Stage"] = adata.obs["clusters"]
    adata.obsm["X_force_directed"] = adata.obsm["X_umap"]
    ns = {"cr": cr, "adata": adata, "np": np, "tp": _TemporalProblem(adata, "day"), "_dataset": "atlas_walks"}
    ns.update(RealTimeKernel=RealTimeKernel, CytoTRACEKernel=CytoTRACEKernel)
    drawn = _run_cells(WALK_CELLS, ns, tmp_path)

    # walks from day 0.0 start there: the start marks sit on day-0 cells only
    ax = drawn[1][0].axes[0]
    xy = adata.obsm["X_force_directed"][:, :2]
    starts = ax.collections[-2].get_offsets()
    on = (np.abs(xy[None] - np.asarray(starts)[:, None]).sum(-1) < 1e-9).any(0)
    assert on.any() and set(adata.obs["day"][on].astype(float)) == {0.0}

    # color="Stage": the cells drawn in the Stage colours, a legend entry per stage
    ax = drawn[2][0].axes[0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == [str(c) for c in adata.obs["Stage"].cat.categories]
    drawn_colors = {
        matplotlib.colors.to_hex(c.get_facecolor()[0])
        for c in ax.collections
        if len(c.get_facecolor()) and len(c.get_offsets())
    }
    legend_colors = [matplotlib.colors.to_hex(h.get_color()) for h in ax.get_legend().legend_handles]
    assert len(set(legend_colors)) == len(labels) and set(legend_colors) <= drawn_colors
    assert "#d3d3d3" not in drawn_colors  # not the grey background of an uncoloured plot
    # a continuous colouring gets a colour bar
    assert len(drawn[3][0].axes) == 2
    # show=False returns the axes, whose tick labels the cell rotates
    assert all(t.get_rotation() == 90 for t in ns["ax"].get_xticklabels())


def test_print_versions_cell(capsys):
    """The last cell of every CellRank tutorial: ``cr.logging.print_versions()``."""
    import numpy

    import cellfate_gpu as cr

    cr.logging.print_versions()
    out = capsys.readouterr().out
    assert f"numpy=={numpy.__version__}" in out and "cellfate_gpu==" in out and out.startswith("python==")
