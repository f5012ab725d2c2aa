"""CellRank's circular projection of fate probabilities (host side)."""

from __future__ import annotations

import types
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from cellfate_gpu import _keys
from cellfate_gpu._logging import info
from cellfate_gpu.pl._embedding import color_values, done, draw_cells, grid, scanpy_kwargs
from cellfate_gpu.pl._fate import resolve_fate_probabilities

__all__ = ["circular_coordinates", "circular_projection", "optimal_lineage_order"]


def optimal_lineage_order(D: np.ndarray) -> tuple[float, np.ndarray]:
    r"""Shortest closed tour through all lineages (Held–Karp dynamic programme), starting at lineage 0.

    :math:`C(S, k) = \min_{m \in S \setminus \{k\}} C(S \setminus \{k\}, m) + D_{mk}` over subsets
    :math:`S` of lineages :math:`1..L-1`; ties go to the smaller predecessor index, the tour is
    returned from lineage 0 in the direction the backtracking yields (CellRank's convention, so the
    same matrix gives the same order). :math:`O(2^L L^2)`: fine up to ~15 lineages.

    Returns
    -------
    ``(cost, order)``.
    """
    D = np.asarray(D, dtype=np.float64)
    n = D.shape[0]
    if n < 2:
        return 0.0, np.arange(n)
    full = 1 << n
    cost = np.full((full, n), np.inf)
    parent = np.full((full, n), -1, dtype=np.int64)
    for k in range(1, n):
        cost[1 << k, k] = D[0, k]
        parent[1 << k, k] = 0
    for mask in range(2, full, 2):  # subsets of 1..n-1 (bit 0 never set)
        members = [b for b in range(1, n) if mask >> b & 1]
        if len(members) < 2:
            continue
        for k in members:
            prev = mask & ~(1 << k)
            ms = np.array([m for m in members if m != k])
            cand = cost[prev, ms] + D[ms, k]
            j = int(np.argmin(cand))  # first minimum = smallest m among ties (ms is increasing)
            cost[mask, k], parent[mask, k] = cand[j], ms[j]
    mask = full - 2
    ends = np.arange(1, n)
    total = cost[mask, ends] + D[ends, 0]
    j = int(np.argmin(total))
    opt, k = float(total[j]), int(ends[j])
    path = []
    for _ in range(n - 1):
        path.append(k)
        k, mask = int(parent[mask, k]), mask & ~(1 << k)
    path.append(0)
    return opt, np.array(path[::-1])


def circular_coordinates(P: np.ndarray, *, normalize_by_mean: bool = True) -> tuple[np.ndarray, np.ndarray]:
    r"""Lineage anchors on the unit circle and cell positions.

    With ``normalize_by_mean`` (Velten et al. 2017, CellRank's default) each lineage column is divided
    by its mean and each row renormalised to sum to one (rows that cannot be: :math:`1/L`); cell
    :math:`i` sits at :math:`x_i = \sum_l \tilde p_{il} a_l`, :math:`a_l = (\cos\theta_l, \sin\theta_l)`,
    :math:`\theta_l = 2\pi l / L`. Without it the raw probabilities are used.
    """
    X = np.array(P, dtype=np.float64)
    L = X.shape[1]
    if normalize_by_mean:
        with np.errstate(divide="ignore", invalid="ignore"):
            X /= np.mean(X, axis=0)[None, :]
            X /= X.sum(1)[:, None]
        X = np.nan_to_num(X, nan=1.0 / L, copy=False)
    theta = np.linspace(0, 2 * np.pi, L, endpoint=False)
    anchors = np.c_[np.cos(theta), np.sin(theta)]
    return anchors, X @ anchors


def _distances(X: np.ndarray, metric: Any) -> np.ndarray:
    L = X.shape[1]
    if isinstance(metric, str) or callable(metric):
        from scipy.spatial.distance import cdist

        return cdist(X.T, X.T, metric=metric)
    D = np.asarray(metric, dtype=np.float64)
    if D.shape != (L, L):
        raise ValueError(f"metric as a distance matrix must have shape {(L, L)}, got {D.shape}.")
    return D


def circular_projection(
    adata: Any,
    keys: str | Sequence[str],
    backward: bool = False,
    lineages: str | Sequence[str] | None = None,
    early_cells: Mapping[str, Sequence[str]] | Sequence[str] | None = None,
    lineage_order: str | None = None,
    metric: str | Callable | np.ndarray = "correlation",
    normalize_by_mean: bool = True,
    ncols: int = 4,
    space: float = 0.25,
    use_raw: bool = False,
    text_kwargs: Mapping[str, Any] = types.MappingProxyType({}),
    label_distance: float = 1.25,
    label_rot: str | float = "best",
    show_edges: bool = True,
    key_added: str | None = None,
    figsize: tuple[float, float] | None = None,
    dpi: int | None = None,
    save: Any = None,
    **kwargs: Any,
):
    r"""Lineages evenly on a circle, cells placed by their fate probabilities (CellRank's ``circular_projection``).

    The coordinates (:func:`circular_coordinates`, after ordering the lineages) are written to
    ``adata.obsm[key_added]`` (default ``'X_fate_simplex_fwd'`` / ``_bwd``), as CellRank writes them.
    ``lineage_order="optimal"`` (the default for 4–20 lineages) orders lineages along the shortest
    tour of ``metric`` distances (default ``"correlation"``) between the normalised lineage columns
    (:func:`optimal_lineage_order`), so similar fates are neighbours; ``"default"`` keeps ``lineages``.

    Parameters
    ----------
    keys
        One panel per key: an ``adata.obs`` column or gene (categorical: legend outside the data;
        continuous: a colour bar), a lineage name (its probability), or ``"kl_divergence"`` /
        ``"entropy"`` (priming degree, with ``early_cells``; stored in
        ``adata.obs['lineages_fwd_<method>']``).
    lineages
        Lineages on the circle (``"A, B"`` merges), at least 3.
    label_distance, label_rot, text_kwargs
        Every corner is labelled with its lineage name in its colour at radius ``label_distance``,
        rotated tangentially (``"best"``: kept upright), by a fixed angle (a number) or not
        (``"default"``).
    show_edges
        Draw the circle's edges shaded between neighbouring lineages' colours.
    kwargs
        scanpy.pl.embedding keywords (``size``/``s``, ``legend_loc``, ``cmap``, ...).
    """
    from matplotlib.collections import LineCollection
    from matplotlib.colors import LinearSegmentedColormap

    if label_distance is not None and label_distance < 0:
        raise ValueError(f"label_distance must be non-negative, got {label_distance}.")
    if lineage_order not in (None, "default", "optimal"):
        raise ValueError(f"lineage_order must be None, 'default' or 'optimal', got {lineage_order!r}.")
    adata, probs = resolve_fate_probabilities(adata, backward)
    if lineages is not None:
        probs = probs[[lineages] if isinstance(lineages, str) else list(dict.fromkeys(lineages))]
    if probs.nlin < 3:
        raise ValueError(f"A circular projection needs at least 3 lineages, got {probs.names}.")
    X = probs.X.copy()
    if normalize_by_mean:
        with np.errstate(divide="ignore", invalid="ignore"):
            X /= np.mean(X, axis=0)[None, :]
            X /= X.sum(1)[:, None]
        X = np.nan_to_num(X, nan=1.0 / probs.nlin, copy=False)
    if lineage_order is None:
        lineage_order = "optimal" if 3 < probs.nlin <= 20 else "default"
    if lineage_order == "optimal":
        info("Ordering %d lineages along the shortest tour (%s distances)", probs.nlin, metric)
        _, order = optimal_lineage_order(_distances(X, metric))
    else:
        order = np.arange(probs.nlin)
    probs = probs[:, list(order)]
    X = X[:, order]
    anchors, xy = circular_coordinates(X, normalize_by_mean=False)
    key_added = key_added or f"X_fate_simplex_{_keys.direction(backward)}"
    adata.obsm[key_added] = xy
    return_fig = bool(kwargs.pop("return_fig", False) or kwargs.pop("return_figure", False))
    show = kwargs.pop("show", None)
    cmap = kwargs.pop("cmap", kwargs.pop("color_map", "viridis"))
    opts = scanpy_kwargs(kwargs, adata.n_obs, where="circular_projection")
    keys = list(dict.fromkeys([keys] if isinstance(keys, str) else keys))
    fig, axes = grid(len(keys), ncols=ncols, figsize=figsize, dpi=dpi, panel=5, wspace=space, hspace=space)
    tk = {"ha": "center", "va": "center", "fontsize": "small", **dict(text_kwargs)}
    fate_key = _keys.fate_probabilities(backward)
    for ax, k in zip(axes, keys, strict=True):
        if k in ("kl_divergence", "entropy"):
            vals = probs.priming_degree(method=k, early_cells=early_cells)
            k = f"{fate_key}_{k}"
            adata.obs[k] = vals
            v, cat, names, cols = np.asarray(vals, dtype=float), False, None, None
        elif k in probs.names and k not in adata.obs:
            v, cat, names, cols = probs[k].X.ravel(), False, None, None
        else:
            v, cat, names, cols = color_values(adata if not use_raw else adata.raw.to_adata(), k)
        draw_cells(
            ax,
            xy,
            v,
            categorical=cat,
            names=names,
            colors=cols,
            cmap=cmap,
            opts=opts,
            title=k,
            basis=key_added,
            cbar_label=None,
        )
        ax.set_xlabel("")
        ax.set_ylabel("")
        ax.set_frame_on(False)
        ax.set_aspect("equal")
        r = label_distance if label_distance is not None else 1.25
        for (ax_, ay_), name, color in zip(anchors, probs.names, probs.colors, strict=True):
            deg = np.degrees(np.arctan2(ay_, ax_))
            if isinstance(label_rot, (int, float, np.number)):
                rot = float(label_rot)
            elif label_rot == "best":
                rot = deg - 90 if 0 <= deg % 360 <= 180 else deg + 90  # tangential, never upside down
            elif label_rot == "default":
                rot = 0.0
            else:
                raise ValueError(f"label_rot must be 'best', 'default' or a number, got {label_rot!r}.")
            ax.text(ax_ * r, ay_ * r, name, color=color, rotation=rot, rotation_mode="anchor", **tk)
        lim = max(1.05, r) + 0.15
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
        if show_edges:
            L = probs.nlin
            for i, color in enumerate(probs.colors):
                nxt = (i + 1) % L
                t = np.linspace(0, 1, 200)
                pts = 1.04 * ((1 - t)[:, None] * anchors[i] + t[:, None] * anchors[nxt])
                seg = np.stack([pts[:-1], pts[1:]], axis=1)
                lc = LineCollection(
                    seg,
                    cmap=LinearSegmentedColormap.from_list("edge", [color, probs.colors[nxt]]),
                    zorder=-1,
                    linewidth=2,
                )
                lc.set_array(t[:-1])
                ax.add_collection(lc)
    return done(fig, save, return_fig=return_fig, show=show, tight=len(fig.axes) > 1)
