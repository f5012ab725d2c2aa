"""Gene-trend and aggregate plots in CellRank's signatures: they draw the fitted numbers."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import cellfate_gpu as cr
from cellfate_gpu.lineage import Lineage
from cellfate_gpu.models import GAM, fit_trends


@pytest.fixture(scope="module")
def adata():
    import anndata as ad

    rng = np.random.default_rng(0)
    n, g = 400, 8
    t = np.sort(rng.uniform(0, 1, n))
    branch = rng.integers(0, 3, n)
    logits = np.where(np.arange(3)[None, :] == branch[:, None], 4.0 * t[:, None], 0.0)
    P = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    peaks = np.linspace(0.25, 0.8, g)[::-1]  # gene i peaks at peaks[i]: reversed order in the heatmap
    Y = np.exp(-((t[:, None] - peaks[None, :]) ** 2) / 0.02) * 5 + rng.gamma(2, 0.1, (n, g))
    a = ad.AnnData(sp.csr_matrix(Y.astype(np.float32)))
    a.var_names = [f"g{i}" for i in range(g)]
    a.obs["latent_time"] = t
    a.obs["day"] = pd.Categorical(np.floor(t * 4).astype(int).astype(str))
    a.obs["clusters"] = pd.Categorical(np.where(t < 0.3, "early", np.array(["A", "B", "C"])[branch]))
    a.uns["clusters_colors"] = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728"]
    a.obsm["X_umap"] = np.c_[t * np.cos(branch * 2.1), t * np.sin(branch * 2.1)]
    Lineage(P, names=["A", "B", "C"]).to_adata(a, "lineages_fwd")
    return a


def test_gene_trends_draws_the_fitted_curves(adata, tmp_path):
    model = GAM(adata)
    assert cr.pl.gene_trends(adata, model, ["g0", "g3"], time_key="latent_time", show_progress_bar=False) is None
    fig = cr.pl.gene_trends(
        adata,
        model,
        ["g0", "g3"],
        time_key="latent_time",
        return_figure=True,
        show_progress_bar=False,
        save=tmp_path / "trends.png",
    )
    ref = fit_trends(adata, model, ["g0", "g3"], ["A", "B", "C"], "latent_time", show_progress_bar=False)
    panels = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
    assert len(panels) == 6  # genes x lineages
    np.testing.assert_allclose(panels[1].lines[0].get_ydata(), ref["B"].mean["g0"].to_numpy())
    assert sum(ax.get_label() == "<colorbar>" for ax in fig.axes) == 6  # a scale for every coloured panel
    plt.close(fig)
    fig = cr.pl.gene_trends(
        adata,
        model,
        "g2",
        time_key="latent_time",
        same_plot=True,
        hide_cells=True,
        legend_loc="right",
        return_figure=True,
        show_progress_bar=False,
        save=tmp_path / "trends_same.png",
    )
    (ax,) = fig.axes
    assert [ln.get_label() for ln in ax.lines] == ["A", "B", "C"]
    assert [matplotlib.colors.to_hex(ln.get_color()) for ln in ax.lines] == Lineage.from_adata(
        adata, "lineages_fwd"
    ).colors
    plt.close(fig)
    models = cr.pl.gene_trends(
        adata, model, ["g1"], "latent_time", lineages="A", return_models=True, show_progress_bar=False
    )
    assert set(models) == {"g1"} and set(models["g1"]) == {"A"}
    with pytest.raises(TypeError, match="bogus"):
        cr.pl.gene_trends(adata, model, ["g1"], "latent_time", bogus=1, show_progress_bar=False)


def test_heatmap_orders_genes_by_peak(adata, tmp_path):
    genes = list(adata.var_names)
    out = cr.pl.heatmap(
        adata,
        GAM(adata),
        genes,
        "latent_time",
        lineages=["A"],
        return_genes=True,
        show_fate_probabilities=True,
        cluster_key="clusters",
        show_progress_bar=False,
        save=tmp_path / "heat.png",
    )
    assert list(out["A"]) == genes[::-1]  # g7 peaks first
    fig, order = cr.pl.heatmap(
        adata,
        GAM(adata),
        genes,
        "latent_time",
        cluster_genes=True,
        lineages="B",
        return_figure=True,
        show_progress_bar=False,
    )
    assert sorted(order["B"]) == sorted(genes)
    assert any(ax.get_label() == "<colorbar>" or ax.get_ylabel() == "scaled expression" for ax in fig.axes)
    plt.close("all")
    fig = cr.pl.heatmap(
        adata, GAM(adata), genes[:2], "latent_time", mode="genes", return_figure=True, show_progress_bar=False
    )
    assert len([ax for ax in fig.axes if ax.get_title() in genes[:2]]) == 2
    plt.close("all")


def test_cluster_trends_stores_clusters(adata, tmp_path):
    genes = list(adata.var_names)
    cr.pl.cluster_trends(
        adata,
        GAM(adata),
        genes,
        "A",
        "latent_time",
        clustering_kwargs={"n_clusters": 3},
        show_progress_bar=False,
        save=tmp_path / "clusters.png",
    )
    tad = adata.uns["lineage_A_trend"]
    assert list(tad.obs_names) == genes and tad.obs["clusters"].nunique() <= 3
    np.testing.assert_allclose(tad.X.min(1), 0, atol=1e-12)
    np.testing.assert_allclose(tad.X.max(1), 1)
    plt.close("all")


@pytest.mark.parametrize("mode", ["bar", "violin", "heatmap", "clustermap", "paga", "paga_pie"])
def test_aggregate_fate_probabilities(adata, mode, tmp_path):
    fig = cr.pl.aggregate_fate_probabilities(
        adata, mode=mode, cluster_key="clusters", basis="umap", return_figure=True, save=tmp_path / f"agg_{mode}.png"
    )
    if mode == "heatmap":
        ax = fig.axes[0]
        means = (
            pd.DataFrame(adata.obsm["lineages_fwd"], columns=["A", "B", "C"])
            .groupby(adata.obs["clusters"].to_numpy())
            .mean()
        )
        texts = {(round(t.get_position()[1]), round(t.get_position()[0])): t.get_text() for t in ax.texts}
        labels = [t.get_text() for t in ax.get_yticklabels()]
        assert texts[(0, 0)] == format(means.loc[labels[0], "A"], "0.2f")
    plt.close("all")
    with pytest.raises(ValueError, match="mode"):
        cr.pl.aggregate_fate_probabilities(adata, mode="pie")


def test_log_odds_values(adata, tmp_path):
    ax = cr.pl.log_odds(adata, "A", "B", time_key="day", show=False, jitter=False, save=tmp_path / "lo.png")
    y = ax.collections[0].get_offsets()[:, 1]
    P = adata.obsm["lineages_fwd"]
    np.testing.assert_allclose(np.sort(y), np.sort(np.log(P[:, 0] / P[:, 1])))
    axes = cr.pl.log_odds(adata, "A", keys=["g0", "clusters"], time_key="day", show=False)
    assert len(axes) == 2
    plt.close("all")
