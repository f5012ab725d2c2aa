"""Estimator plots in CellRank's signatures: the keywords mean what they mean in CellRank/scanpy."""

from __future__ import annotations

import itertools

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pytest

import cellfate_gpu as cr
from cellfate_gpu.pl._circular import circular_coordinates, optimal_lineage_order
from cellfate_gpu.pl._embedding import categorical_colors


@pytest.fixture(scope="module")
def g():
    from cellfate_gpu.datasets import synthetic_atlas
    from cellfate_gpu.estimators import GPCCA
    from cellfate_gpu.kernels import ConnectivityKernel, PseudotimeKernel

    adata = synthetic_atlas(n_cells=800, n_lineages=4, n_genes=30, seed=0)
    k = 0.8 * PseudotimeKernel(adata, time_key="pseudotime").compute_transition_matrix()
    k = k + 0.2 * ConnectivityKernel(adata).compute_transition_matrix()
    est = GPCCA(k)
    est.fit(n_states=8, cluster_key="clusters")
    est.predict_terminal_states(method="top_n", n_states=4)
    est.compute_fate_probabilities()
    return est


def _panels(fig):
    return [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]


def _n_cbars(fig):
    return sum(ax.get_label() == "<colorbar>" for ax in fig.axes)


def _legend_outside(ax) -> bool:
    fig = ax.figure
    fig.canvas.draw()
    leg = ax.get_legend()
    return leg is not None and leg.get_window_extent().x0 >= ax.get_window_extent().x1 - 1


def test_fate_probabilities_keywords(g):
    assert g.plot_fate_probabilities(legend_loc="right", s=10) is None
    fig = g.plot_fate_probabilities(same_plot=False, color="clusters", s=5, legend_loc="right", return_fig=True)
    names = list(g.fate_probabilities.names)
    assert len(_panels(fig)) == 1 + len(names) and _n_cbars(fig) == len(names)
    assert _legend_outside(_panels(fig)[0])
    assert _panels(fig)[1].collections[-1].get_sizes()[0] == 5
    fig = g.plot_fate_probabilities(states=names[:2], same_plot=False, return_fig=True)
    assert [ax.get_title() for ax in _panels(fig)] == [f"fate probabilities {n}" for n in names[:2]]
    fig = g.plot_fate_probabilities(mode="time", time_key="pseudotime", return_fig=True)
    ax = _panels(fig)[0]
    np.testing.assert_allclose(ax.collections[0].get_offsets()[:, 0], g.adata.obs["pseudotime"])
    np.testing.assert_allclose(ax.collections[0].get_offsets()[:, 1], g.fate_probabilities.X[:, 0])
    fig = g.plot_fate_probabilities(same_plot=True, return_fig=True)
    assert _legend_outside(fig.axes[0])
    with pytest.raises(KeyError, match="time_key"):
        g.plot_fate_probabilities(mode="time")
    g.plot_fate_probabilities(unknown_keyword=1)  # logged, not an error (scanpy would ignore it too)
    plt.close("all")


def test_macrostates_distinct_colors_and_modes(g):
    fig = g.plot_macrostates(which="all", s=20, return_fig=True)
    (ax,) = _panels(fig)
    handles = ax.get_legend().legend_handles
    colors = [matplotlib.colors.to_hex(h.get_color()) for h in handles]
    assert len(set(colors)) == len(colors) == len(g.macrostates.cat.categories)
    assert _legend_outside(ax)
    fig = g.plot_macrostates(which="terminal", discrete=False, same_plot=False, return_fig=True)
    assert _n_cbars(fig) == len(g.terminal_states.cat.categories)
    fig = g.plot_macrostates(which="terminal", mode="time", time_key="pseudotime", return_fig=True)
    assert all(ax.get_xlabel() == "pseudotime" for ax in _panels(fig))
    first = str(g.terminal_states.cat.categories[0])
    fig = g.plot_macrostates(which="terminal", states=[first], return_fig=True)
    assert [t.get_text() for t in _panels(fig)[0].get_legend().get_texts()] == [first]
    fig = g.plot_macrostates(which="all", same_plot=False, legend_loc="on data", return_fig=True)
    assert len(_panels(fig)) == len(g.macrostates.cat.categories)
    with pytest.raises(ValueError, match="Unknown states"):
        g.plot_macrostates(which="all", states=["nope"])
    plt.close("all")


def test_coarse_T_order_and_annotate(g):
    fig = g.plot_coarse_T(order="stability", annotate=True, return_fig=True)
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_yticklabels()]
    diag = np.diag(g.coarse_T.loc[labels, labels].to_numpy())
    assert np.all(np.diff(diag) >= 0)
    assert len(ax.texts) == len(labels) ** 2
    fig = g.plot_coarse_T(annotate=False, order=None, show_cbar=False, return_fig=True)
    assert len(fig.axes[0].texts) == 0 and [t.get_text() for t in fig.axes[0].get_yticklabels()] == list(
        g.coarse_T.index
    )
    assert _n_cbars(fig) == 0
    plt.close("all")


def test_spectrum_n_and_ticks(g):
    fig = g.plot_spectrum(n=5, real_only=True, show_all_xticks=True, return_fig=True)
    ax = fig.axes[0]
    assert ax.collections[0].get_offsets().shape[0] == 5
    np.testing.assert_array_equal(ax.get_xticks(), np.arange(5))
    fig = g.plot_spectrum(real_only=False, legend_loc="upper left", return_fig=True)
    assert fig.axes[0].get_legend() is not None
    plt.close("all")


def _tour(D, p) -> float:
    return sum(D[p[i], p[(i + 1) % len(p)]] for i in range(len(p)))


def test_optimal_lineage_order_is_the_shortest_tour():
    rng = np.random.default_rng(0)
    for n in (3, 4, 5, 6):
        D = rng.uniform(size=(n, n))
        D = D + D.T
        cost, order = optimal_lineage_order(D)
        assert order[0] == 0 and sorted(order) == list(range(n))
        best = min(_tour(D, (0, *p)) for p in itertools.permutations(range(1, n)))
        assert cost == pytest.approx(best) and _tour(D, order) == pytest.approx(best)


def test_circular_projection_coordinates_and_labels(g):
    adata = g.adata
    P = g.fate_probabilities
    fig = cr.pl.circular_projection(adata, keys=["clusters", "kl_divergence"], return_fig=True)
    xy = adata.obsm["X_fate_simplex_fwd"]
    # CellRank's meaning: normalise columns by their mean, rows to one, order lineages by the shortest tour
    X = P.X / P.X.mean(0)
    X = X / X.sum(1, keepdims=True)
    from scipy.spatial.distance import cdist

    _, order = optimal_lineage_order(cdist(X.T, X.T, "correlation"))
    theta = np.linspace(0, 2 * np.pi, P.shape[1], endpoint=False)
    np.testing.assert_allclose(xy, X[:, order] @ np.c_[np.cos(theta), np.sin(theta)], atol=1e-12)
    for ax in _panels(fig):
        labelled = {t.get_text() for t in ax.texts}
        assert set(P.names) <= labelled  # every corner has its label
    assert "lineages_fwd_kl_divergence" in adata.obs
    _, xy_raw = circular_coordinates(P.X[:, :3], normalize_by_mean=False)
    np.testing.assert_allclose(xy_raw, P.X[:, :3] @ np.c_[np.cos(theta[:3] * 4 / 3), np.sin(theta[:3] * 4 / 3)])
    with pytest.raises(ValueError, match="at least 3"):
        cr.pl.circular_projection(adata, keys="clusters", lineages=list(P.names[:2]))
    plt.close("all")


def test_categorical_colors_are_distinct():
    out = categorical_colors(["#1f77b4", "#1f77b4", "#ff7f0e", "#1f77b4", "#1f77b4"])
    assert len(set(out)) == 5 and out[0] == "#1f77b4" and out[2] == "#ff7f0e"
