"""CellRank's circular projection of fate probabilities (host side)."""

from __future__ import annotations

from typing import Any

import numpy as np

from cellfate_gpu import _keys
from cellfate_gpu.pl._embedding import finish, grid
from cellfate_gpu.pl._fate import resolve_fate_probabilities

__all__ = ["circular_projection", "circular_coordinates"]


def circular_coordinates(P: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    r"""Lineage anchors on the unit circle and cell positions inside it.

    Anchors :math:`a_l = (\cos\theta_l, \sin\theta_l)`, :math:`\theta_l = 2\pi l / L`; cell positions
    :math:`x_i = \sum_l \tilde p_{il} a_l` with :math:`\tilde p_i = p_i / \sum_l p_{il}`.
    """
    P = np.asarray(P, dtype=np.float64)
    L = P.shape[1]
    theta = np.linspace(0, 2 * np.pi, L, endpoint=False)
    anchors = np.c_[np.cos(theta), np.sin(theta)]
    sums = P.sum(axis=1, keepdims=True)
    return anchors, (P / np.where(sums > 0, sums, 1.0)) @ anchors


def circular_projection(
    adata: Any,
    keys: str | list[str],
    lineages: list[str] | None = None,
    backward: bool = False,
    size: float = 4,
    cmap: str = "viridis",
    ncols: int = 3,
    save: Any = None,
    figsize: tuple[float, float] | None = None,
    dpi: int | None = None,
    **kwargs: Any,
):
    r"""Place lineages on the unit circle and every cell at the fate-weighted mean of their anchors.

    With :math:`L` lineages at :math:`a_l = (\cos\theta_l, \sin\theta_l)`, cell :math:`i` is drawn at
    :math:`\sum_l p_{il} a_l` (rows renormalised over the shown ``lineages``): committed cells sit
    at their lineage's anchor, undecided ones near the centre. The coordinates are stored in
    ``adata.obsm['X_fate_simplex_fwd']`` (``_bwd``), as in CellRank.

    Parameters
    ----------
    adata
        AnnData with ``obsm['lineages_fwd']`` (or an estimator with fate probabilities).
    keys
        One panel per key: a column of ``adata.obs`` (categorical → its colours, numeric → ``cmap``),
        a lineage name (its probability), or ``"kl_divergence"``/``"entropy"`` (priming degree).
    lineages
        Lineages to place on the circle (``"A, B"`` merges); default all, at least 2.

    Returns
    -------
    matplotlib.figure.Figure
    """
    adata, probs = resolve_fate_probabilities(adata, backward)
    if lineages is not None:
        probs = probs[list(lineages)]
    if probs.shape[1] < 2:
        raise ValueError(f"Need at least 2 lineages for a circular projection, got {probs.names}.")
    anchors, xy = circular_coordinates(probs.X)
    adata.obsm[f"X_fate_simplex_{_keys.direction(backward)}"] = xy
    keys = [keys] if isinstance(keys, str) else list(keys)
    fig, axes = grid(len(keys), ncols=ncols, figsize=figsize, dpi=dpi, panel=4.5)
    circle = np.linspace(0, 2 * np.pi, 200)
    for ax, k in zip(axes, keys, strict=True):
        if k in adata.obs and hasattr(adata.obs[k], "cat"):
            col = adata.obs[k]
            palette = list(adata.uns.get(_keys.colors(k), []))
            ncat = len(col.cat.categories)
            colors = [palette[i] if i < len(palette) else "#888888" for i in range(ncat)] + ["#dddddd"]
            c = np.array(colors, dtype=object)[col.cat.codes.to_numpy()]  # code -1 → NaN colour
            ax.scatter(xy[:, 0], xy[:, 1], c=list(c), s=size, linewidths=0, rasterized=True, **kwargs)
        else:
            if k in adata.obs:
                values = np.asarray(adata.obs[k], dtype=float)
            elif k in probs.names:
                values = probs[k].X.ravel()
            elif k in ("kl_divergence", "entropy"):
                values = probs.priming_degree(method=k)
            else:
                raise KeyError(
                    f"{k!r} is neither a column of adata.obs, a lineage {probs.names}, nor 'kl_divergence'/'entropy'."
                )
            sc = ax.scatter(xy[:, 0], xy[:, 1], c=values, cmap=cmap, s=size, linewidths=0, rasterized=True, **kwargs)
            fig.colorbar(sc, ax=ax, shrink=0.6)
        ax.plot(np.cos(circle), np.sin(circle), color="#bbbbbb", lw=0.8)
        for (x, y), name, color in zip(anchors, probs.names, probs.colors, strict=True):
            ax.scatter([x], [y], c=color, s=60, edgecolors="black", zorder=3)
            ax.annotate(name, (x * 1.12, y * 1.12), ha="center", va="center", fontsize="small")
        ax.set_title(k)
        ax.set_aspect("equal")
        ax.set_axis_off()
    return finish(fig, save)
