"""Fate probabilities on an embedding."""

from __future__ import annotations

from typing import Any

import numpy as np

from cellfate_gpu.pl._embedding import embedding, finish, grid

__all__ = ["fate_probabilities"]


def fate_probabilities(
    estimator,
    lineages: list[str] | None = None,
    basis: str = "umap",
    same_plot: bool = True,
    cmap: str = "viridis",
    size: float = 4,
    save: Any = None,
    figsize=None,
    dpi=None,
    **kwargs: Any,
):
    """Draw fate probabilities: one panel per lineage, or one panel coloured by the most likely fate.

    With ``same_plot=True`` each cell takes its most likely lineage's colour, with alpha equal to that
    probability (CellRank's ``same_plot`` view).
    """
    import matplotlib.colors as mcolors

    probs = estimator.fate_probabilities
    if probs is None:
        raise RuntimeError("No fate probabilities; call compute_fate_probabilities first.")
    probs = probs if lineages is None else probs[list(lineages)]
    emb = embedding(estimator.adata, basis)
    if same_plot:
        fig, (ax,) = grid(1, figsize=figsize, dpi=dpi, panel=5)
        best = np.argmax(probs.X, axis=1)
        rgba = np.array([mcolors.to_rgba(probs.colors[b]) for b in best])
        rgba[:, 3] = np.clip(probs.X[np.arange(len(best)), best], 0.05, 1.0)
        ax.scatter(emb[:, 0], emb[:, 1], c=rgba, s=size, linewidths=0, rasterized=True)
        for name, color in zip(probs.names, probs.colors, strict=True):
            ax.scatter([], [], c=color, label=name)
        ax.legend(loc="best", fontsize="small", frameon=False)
        ax.set_title("fate probabilities")
        ax.set_axis_off()
        return finish(fig, save)
    fig, axes = grid(len(probs.names), figsize=figsize, dpi=dpi)
    for ax, j in zip(axes, range(len(probs.names)), strict=True):
        sc = ax.scatter(
            emb[:, 0], emb[:, 1], c=probs.X[:, j], cmap=cmap, vmin=0, vmax=1, s=size, linewidths=0, rasterized=True
        )
        ax.set_title(probs.names[j])
        ax.set_axis_off()
    fig.colorbar(sc, ax=axes, shrink=0.6)
    return finish(fig, save)
