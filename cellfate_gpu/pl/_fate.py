"""Fate probabilities on an embedding (host side)."""

from __future__ import annotations

from typing import Any

import numpy as np

from cellfate_gpu import _keys
from cellfate_gpu.lineage import Lineage
from cellfate_gpu.pl._embedding import embedding, finish, grid

__all__ = ["fate_probabilities", "resolve_fate_probabilities"]


def resolve_fate_probabilities(adata_or_estimator: Any, backward: bool = False) -> tuple[Any, Lineage]:
    """``(adata, Lineage)`` from an estimator (its result) or an AnnData (``obsm['lineages_fwd']``)."""
    obj = adata_or_estimator
    if hasattr(obj, "adata") and hasattr(obj, "fate_probabilities"):
        probs = obj.fate_probabilities
        if probs is None:
            raise RuntimeError("No fate probabilities; call compute_fate_probabilities first.")
        return obj.adata, probs
    key = _keys.fate_probabilities(backward)
    if not hasattr(obj, "obsm") or key not in obj.obsm:
        raise KeyError(f"No fate probabilities in adata.obsm[{key!r}]; compute them first.")
    return obj, Lineage.from_adata(obj, key)


def fate_probabilities(
    adata_or_estimator: Any,
    lineages: list[str] | None = None,
    basis: str = "umap",
    same_plot: bool = True,
    backward: bool = False,
    cmap: str = "viridis",
    size: float = 4,
    ncols: int = 3,
    save: Any = None,
    figsize: tuple[float, float] | None = None,
    dpi: int | None = None,
    **kwargs: Any,
):
    r"""Draw fate probabilities on an embedding.

    Parameters
    ----------
    adata_or_estimator
        An estimator with computed fate probabilities, or an AnnData holding them in
        ``obsm['lineages_fwd']`` (``_bwd`` with ``backward=True``).
    lineages
        Lineages to show (``"A, B"`` merges); default all.
    basis
        Embedding, ``obsm['X_<basis>']``.
    same_plot
        One panel: each cell takes its most likely lineage's colour with opacity equal to that
        probability (CellRank's ``same_plot`` view). Otherwise one panel per lineage coloured by
        :math:`p_{il}` on ``cmap`` over :math:`[0, 1]`.
    save
        Path to save the figure to.

    Returns
    -------
    matplotlib.figure.Figure
    """
    import matplotlib.colors as mcolors

    adata, probs = resolve_fate_probabilities(adata_or_estimator, backward)
    probs = probs if lineages is None else probs[list(lineages)]
    emb = embedding(adata, basis)
    if same_plot:
        fig, (ax,) = grid(1, figsize=figsize, dpi=dpi, panel=5)
        best = np.argmax(probs.X, axis=1)
        rgba = np.array([mcolors.to_rgba(c) for c in probs.colors])[best]
        rgba[:, 3] = np.clip(probs.X[np.arange(best.size), best], 0.05, 1.0)
        ax.scatter(emb[:, 0], emb[:, 1], c=rgba, s=size, linewidths=0, rasterized=True, **kwargs)
        for name, color in zip(probs.names, probs.colors, strict=True):
            ax.scatter([], [], c=color, label=name)
        ax.legend(loc="best", fontsize="small", frameon=False)
        ax.set_title("fate probabilities")
        ax.set_axis_off()
        return finish(fig, save)
    fig, axes = grid(len(probs.names), ncols=ncols, figsize=figsize, dpi=dpi)
    sc = None
    for j, ax in enumerate(axes):
        sc = ax.scatter(
            emb[:, 0],
            emb[:, 1],
            c=probs.X[:, j],
            cmap=cmap,
            vmin=0,
            vmax=1,
            s=size,
            linewidths=0,
            rasterized=True,
            **kwargs,
        )
        ax.set_title(probs.names[j])
        ax.set_axis_off()
    fig.colorbar(sc, ax=axes, shrink=0.6, label="probability")
    return finish(fig, save)
