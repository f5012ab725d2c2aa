"""Expression of a lineage's top driver genes on an embedding (host side)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from cellfate_gpu import _keys
from cellfate_gpu.pl._embedding import embedding, finish, grid

__all__ = ["lineage_drivers"]


def _drivers_table(obj: Any, backward: bool) -> tuple[Any, pd.DataFrame | None]:
    if hasattr(obj, "adata") and hasattr(obj, "lineage_drivers"):
        return obj.adata, obj.lineage_drivers
    key = _keys.lineage_drivers(backward)
    df = obj.varm[key] if key in obj.varm else None
    return obj, (None if df is None else pd.DataFrame(df))


def lineage_drivers(
    adata_or_estimator: Any,
    lineage: str,
    n_genes: int = 8,
    basis: str = "umap",
    ascending: bool = False,
    backward: bool = False,
    cmap: str = "viridis",
    size: float = 4,
    ncols: int = 4,
    save: Any = None,
    figsize: tuple[float, float] | None = None,
    dpi: int | None = None,
    **kwargs: Any,
):
    """Top ``n_genes`` drivers of ``lineage`` (by correlation), one panel each coloured by expression.

    Parameters
    ----------
    adata_or_estimator
        An estimator after ``compute_lineage_drivers``, or an AnnData with the drivers table in
        ``varm['terminal_lineage_drivers']`` (``initial_...`` with ``backward=True``).
    lineage
        Lineage whose ``{lineage}_corr`` column ranks the genes.
    n_genes
        Number of genes (panels).
    ascending
        Show the most negatively correlated genes instead.

    Returns
    -------
    matplotlib.figure.Figure
    """
    adata, df = _drivers_table(adata_or_estimator, backward)
    col = f"{lineage}_corr"
    if df is None or col not in df:
        raise RuntimeError(
            f"No drivers for lineage {lineage!r}; call compute_lineage_drivers(lineages=[{lineage!r}]) first."
        )
    if n_genes < 1:
        raise ValueError(f"n_genes must be at least 1, got {n_genes}.")
    genes = list(df[col].dropna().sort_values(ascending=ascending).index[:n_genes])
    emb = embedding(adata, basis)
    fig, axes = grid(len(genes), ncols=ncols, figsize=figsize, dpi=dpi, panel=3)
    for ax, gene in zip(axes, genes, strict=True):
        x = adata[:, gene].X
        x = np.asarray(x.toarray() if sp.issparse(x) else x).ravel()
        order = np.argsort(x, kind="stable")  # expressing cells on top
        sc = ax.scatter(
            emb[order, 0], emb[order, 1], c=x[order], cmap=cmap, s=size, linewidths=0, rasterized=True, **kwargs
        )
        fig.colorbar(sc, ax=ax, pad=0.01, fraction=0.05, label="expression")
        ax.set_title(f"{gene}  r={df.loc[gene, col]:.2f}", fontsize="small")
        ax.set_axis_off()
    fig.tight_layout()
    return finish(fig, save)
