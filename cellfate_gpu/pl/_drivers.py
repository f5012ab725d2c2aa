"""Expression of a lineage's top driver genes on an embedding."""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp

from cellfate_gpu.pl._embedding import embedding, finish, grid

__all__ = ["lineage_drivers"]


def lineage_drivers(
    estimator,
    lineage: str,
    n_genes: int = 8,
    basis: str = "umap",
    ascending: bool = False,
    cmap: str = "viridis",
    size: float = 4,
    save: Any = None,
    figsize=None,
    dpi=None,
    **kwargs: Any,
):
    """Top ``n_genes`` drivers of ``lineage`` (by correlation), coloured by expression."""
    df = estimator.lineage_drivers
    col = f"{lineage}_corr"
    if df is None or col not in df:
        raise RuntimeError(f"No drivers for lineage {lineage!r}; call compute_lineage_drivers(lineages=[{lineage!r}]).")
    genes = list(df.sort_values(col, ascending=ascending).index[:n_genes])
    adata = estimator.adata
    emb = embedding(adata, basis)
    fig, axes = grid(len(genes), ncols=4, figsize=figsize, dpi=dpi, panel=3)
    for ax, gene in zip(axes, genes, strict=True):
        x = adata[:, gene].X
        x = np.asarray(x.toarray() if sp.issparse(x) else x).ravel()
        ax.scatter(emb[:, 0], emb[:, 1], c=x, cmap=cmap, s=size, linewidths=0, rasterized=True)
        ax.set_title(f"{gene}  r={df.loc[gene, col]:.2f}", fontsize="small")
        ax.set_axis_off()
    return finish(fig, save)
