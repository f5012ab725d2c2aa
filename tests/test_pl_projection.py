"""Transition matrix projected onto an embedding: CellRank's per-row formula, vectorised."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pytest
import scipy.sparse as sp

from cellfate_gpu.kernels._projection import quiver_autoscale


@pytest.fixture(scope="module")
def kernel():
    from cellfate_gpu.datasets import synthetic_atlas
    from cellfate_gpu.kernels import PseudotimeKernel

    adata = synthetic_atlas(n_cells=300, n_lineages=3, n_genes=20, seed=1)
    return PseudotimeKernel(adata, time_key="pseudotime").compute_transition_matrix()


def _reference(T, C, X):
    """Row by row: sum_j T_ij d_ij - mean_j d_ij over the kNN neighbours j, unit displacements d."""
    T, C = sp.csr_matrix(T), sp.csr_matrix(C)
    V = np.zeros_like(X)
    for i in range(X.shape[0]):
        nb = C[i].indices
        d = X[nb] - X[i]
        with np.errstate(invalid="ignore", divide="ignore"):
            d = np.nan_to_num(d / np.linalg.norm(d, axis=1)[:, None])
        V[i] = T[i, nb].toarray().ravel() @ d - d.sum(0) / len(nb)
    return V / (3 * quiver_autoscale(X, V))


def test_projection_matches_the_row_formula(kernel):
    adata = kernel.adata
    V = kernel.compute_projection(basis="umap")
    assert adata.obsm["T_fwd_umap"] is V and adata.uns["T_fwd_params"]["embeddings"] == ["umap"]
    ref = _reference(kernel.transition_matrix, adata.obsp["connectivities"], adata.obsm["X_umap"][:, :2].astype(float))
    np.testing.assert_allclose(V, ref, rtol=1e-10, atol=1e-12)
    # along a pseudotime kernel the projected flow points to later cells on average
    t = adata.obs["pseudotime"].to_numpy()
    X = adata.obsm["X_umap"][:, :2]
    C = sp.csr_matrix(adata.obsp["connectivities"])
    later = np.array(
        [
            (X[C[i].indices[t[C[i].indices] > t[i]]] - X[i]).mean(0) if (t[C[i].indices] > t[i]).any() else np.zeros(2)
            for i in range(len(t))
        ]
    )
    assert np.mean(np.sum(later * V, 1) > 0) > 0.8
    assert kernel.compute_projection(basis="umap") is V  # cached unless recompute=True
    assert kernel.compute_projection(basis="umap", recompute=True, key_added="custom") is adata.obsm["custom_umap"]


@pytest.mark.parametrize("stream", [True, False])
def test_plot_projection_draws(kernel, stream, tmp_path):
    fig = kernel.plot_projection(
        stream=stream, color="clusters", legend_loc="right", s=5, return_fig=True, save=tmp_path / "p.png"
    )
    ax = fig.axes[0]
    if stream:
        assert any(isinstance(c, matplotlib.collections.LineCollection) for c in ax.collections)
    else:
        assert any(isinstance(c, matplotlib.quiver.Quiver) for c in ax.collections)
    plt.close("all")
    with pytest.raises(KeyError, match="tsne"):
        kernel.compute_projection(basis="tsne")
