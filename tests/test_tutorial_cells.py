"""CellRank tutorial cells, verbatim, with ``import cellfate_gpu as cr``.

Each cell is the code of a CellRank 2 tutorial cell (getting started, pseudotime, velocity,
initial and terminal states, fate probabilities and drivers, gene trends) with only the data names
adapted; each runs unchanged here and must write what CellRank writes under CellRank's keys.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
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
