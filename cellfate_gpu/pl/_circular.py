"""CellRank's circular projection of fate probabilities."""

from __future__ import annotations

from typing import Any

import numpy as np

from cellfate_gpu import _keys
from cellfate_gpu.lineage import Lineage
from cellfate_gpu.pl._embedding import finish, grid

__all__ = ["circular_projection"]


def circular_projection(
    adata,
    keys: str | list[str],
    lineages: list[str] | None = None,
    backward: bool = False,
    size: float = 4,
    save: Any = None,
    figsize=None,
    dpi=None,
    **kwargs: Any,
):
    r"""Place lineages on the unit circle and each cell at the fate-weighted mean of their positions.

    With anchors :math:`a_l = (\cos\theta_l, \sin\theta_l)`, cell :math:`i` is drawn at
    :math:`\sum_l p_{il} a_l`: committed cells sit near their lineage's anchor, undecided ones near
    the centre. One panel per key of ``adata.obs`` (colour), as in CellRank. The coordinates are stored
    in ``obsm['X_fate_simplex_fwd']``.
    """
    key = _keys.fate_probabilities(backward)
    probs = Lineage.from_adata(adata, key)
    if lineages is not None:
        probs = probs[list(lineages)]
    L = len(probs.names)
    theta = np.linspace(0, 2 * np.pi, L, endpoint=False)
    anchors = np.c_[np.cos(theta), np.sin(theta)]
    P = probs.X / probs.X.sum(axis=1, keepdims=True)
    xy = P @ anchors
    adata.obsm[f"X_fate_simplex_{_keys.direction(backward)}"] = xy
    keys = [keys] if isinstance(keys, str) else list(keys)
    fig, axes = grid(len(keys), figsize=figsize, dpi=dpi, panel=4.5)
    for ax, k in zip(axes, keys, strict=True):
        if k not in adata.obs:
            raise KeyError(f"No column adata.obs[{k!r}] to colour by.")
        col = adata.obs[k]
        if hasattr(col, "cat"):
            palette = list(adata.uns.get(_keys.colors(k), []))
            cats = list(col.cat.categories)
            colors = [palette[i] if i < len(palette) else "#888888" for i in range(len(cats))]
            codes = col.cat.codes.to_numpy()
            c = np.array([colors[ci] if ci >= 0 else "#dddddd" for ci in codes])
            ax.scatter(xy[:, 0], xy[:, 1], c=c, s=size, linewidths=0, rasterized=True)
        else:
            ax.scatter(xy[:, 0], xy[:, 1], c=np.asarray(col, dtype=float), s=size, linewidths=0, rasterized=True)
        circle = np.linspace(0, 2 * np.pi, 200)
        ax.plot(np.cos(circle), np.sin(circle), color="#bbbbbb", lw=0.8)
        for (x, y), name, color in zip(anchors, probs.names, probs.colors, strict=True):
            ax.scatter([x], [y], c=color, s=60, edgecolors="black", zorder=3)
            ax.annotate(name, (x * 1.08, y * 1.08), ha="center", va="center", fontsize="small")
        ax.set_title(k)
        ax.set_aspect("equal")
        ax.set_axis_off()
    return finish(fig, save)
