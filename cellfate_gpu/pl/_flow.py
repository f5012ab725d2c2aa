r"""Outgoing flow of one cluster across experimental time points (CellRank's ``plot_single_flow``).

For consecutive time points :math:`t_k < t_{k+1}`, a source cluster :math:`c` and the transition
matrix :math:`T` (restricted to the selected clusters and time points, not renormalised), the
flow into cluster :math:`c'` is the mass that the cells of :math:`c` at :math:`t_k` send to the
cells of :math:`c'` at :math:`t_{k+1}`, normalised over the target clusters:

.. math::

    \tilde F_k(c') = \sum_{i \in c,\, t(i) = t_k} \; \sum_{j \in c',\, t(j) = t_{k+1}} T_{ij},
    \qquad F_k(c') = \frac{\tilde F_k(c')}{\sum_{c''} \tilde F_k(c'')}

(:math:`F_k = 0` when the denominator is 0). The figure (after Mittnenzweig et al. 2021, Fig. 4a,
as CellRank draws it) shows every cluster as a band around its own baseline whose half-width is the
cluster's share of the cells at each time point,

.. math::

    P(c, t) = \frac{|\{i : \text{cluster}(i) = c,\ t(i) = t\}|}{|\{i : t(i) = t\}|},

smoothed over time, and a ribbon of width :math:`F_k(c')` from the source band at :math:`t_k` to the
band of :math:`c'` at :math:`t_{k+1}` for every flow above ``min_flow``.

Time points are the numeric values of ``obs[time_key]`` (as CellRank converts them) or, for
non-numeric times, the order of the categories. On the x axis they are rescaled so that the closest
two are one unit apart (room for the ribbons), labelled with the original values.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from cellfate_gpu._logging import info

__all__ = ["contingency_matrix", "flow_time_points", "single_flow", "single_flow_table"]


# --------------------------------------------------------------------------- computation
def flow_time_points(time: Any) -> tuple[np.ndarray, list[Any], np.ndarray]:
    """Per-cell time codes, the ordered time points and their numeric positions.

    Numeric (or numeric-string) times are sorted by value; other categorical times keep the order of
    their categories (positions ``0, 1, ...``).
    """
    s = pd.Series(time)
    if s.isna().any():
        raise ValueError(f"The experimental time has {int(s.isna().sum())} missing value(s).")
    try:
        values = np.asarray(s, dtype=np.float64)
    except (TypeError, ValueError):
        values = None
    if values is not None:
        points = np.unique(values)
        codes = np.searchsorted(points, values)
        if isinstance(s.dtype, pd.CategoricalDtype):  # keep the category labels (e.g. 2 vs 2.0)
            labels = {float(c): c for c in s.cat.categories}
            return codes, [labels.get(float(p), p) for p in points], points
        return codes, [p.item() for p in points], points
    cat = s.astype("category")
    cat = cat.cat.remove_unused_categories()
    labels = list(cat.cat.categories)
    return cat.cat.codes.to_numpy(), labels, np.arange(len(labels), dtype=np.float64)


def _unique(seq: Sequence[Any]) -> list[Any]:
    out: list[Any] = []
    for x in seq:
        if x not in out:
            out.append(x)
    return out


def _select(
    clusters: pd.Series, time: Any, cluster: Any, subset: Sequence[Any] | None, time_points: Sequence[Any] | None
) -> tuple[np.ndarray, list[Any], np.ndarray, list[Any], np.ndarray]:
    """Kept cells, kept clusters (in order), per-cell time codes, time labels and positions."""
    if not isinstance(clusters.dtype, pd.CategoricalDtype):
        raise TypeError(f"The clusters must be categorical, found dtype {clusters.dtype}.")
    cats = list(clusters.cat.categories)
    if cluster not in cats:
        raise ValueError(f"Invalid source cluster {cluster!r}; valid: {cats}.")
    kept = cats if subset is None else [c for c in _unique([cluster, *subset]) if c in cats]
    if len(kept) < 2:
        raise ValueError(f"Expected at least 2 clusters, found {len(kept)}: {kept}.")
    codes, labels, positions = flow_time_points(time)
    mask = np.asarray(clusters.isin(kept))
    if time_points is not None:
        wanted = _unique(list(time_points))
        if len(wanted) < 2:
            raise ValueError(f"Expected at least 2 time points, found {len(wanted)}.")
        idx = []
        for t in wanted:
            hit = [k for k, lab in enumerate(labels) if lab == t or str(lab) == str(t)]
            if not hit:
                raise ValueError(f"Time point {t!r} is not among {labels}.")
            idx.append(hit[0])
        mask &= np.isin(codes, idx)
    cells = np.flatnonzero(mask)
    if cells.size == 0:
        raise ValueError("No cells are left after selecting the clusters and time points.")
    present = np.unique(codes[cells])
    if present.size < 2:
        raise ValueError(f"Expected cells at 2 or more time points, found {present.size}.")
    remap = np.full(len(labels), -1)
    remap[present] = np.arange(present.size)
    return cells, kept, remap[codes[cells]], [labels[k] for k in present], positions[present]


def single_flow_table(
    T: Any,
    clusters: Any,
    time: Any,
    cluster: Any,
    clusters_subset: Sequence[Any] | None = None,
    time_points: Sequence[Any] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    r"""The normalised outgoing flow :math:`F_k(c')` of ``cluster`` and the contingency matrix.

    Parameters
    ----------
    T
        ``(n_cells, n_cells)`` transition matrix (SciPy sparse or dense).
    clusters
        Categorical cluster labels (``n_cells``).
    time
        Experimental time (``n_cells``), see :func:`flow_time_points`.
    cluster
        The source cluster :math:`c`.
    clusters_subset
        Keep only these clusters (and ``cluster``); default all.
    time_points
        Keep only these time points; default all.

    Returns
    -------
    flow, cmat
        ``flow``: index the source time points :math:`t_0, \dots, t_{m-2}`, columns the kept
        clusters, rows summing to 1 (or 0). ``cmat``: :math:`P(c, t)` of the kept cells, index the
        kept clusters, columns the time points; see :func:`contingency_matrix`.
    """
    clusters = pd.Series(clusters).reset_index(drop=True)
    n = len(clusters)
    if tuple(np.shape(T)) != (n, n):
        raise ValueError(f"T has shape {tuple(np.shape(T))}, expected ({n}, {n}) for {n} cells.")
    time = pd.Series(time).reset_index(drop=True)
    cells, kept, tcodes, labels, _ = _select(clusters, time, cluster, clusters_subset, time_points)
    T = sp.csr_matrix(T) if sp.issparse(T) else np.asarray(T, dtype=np.float64)
    ccodes = pd.Categorical(clusters.iloc[cells], categories=kept).codes
    src_cluster = ccodes == kept.index(cluster)
    rows_out = []
    for k in range(len(labels) - 1):
        rows = cells[src_cluster & (tcodes == k)]
        cols = np.flatnonzero(tcodes == k + 1)
        block = T[rows][:, cells[cols]]
        mass = np.asarray(block.sum(axis=0)).ravel()
        rows_out.append(np.bincount(ccodes[cols], weights=mass, minlength=len(kept)))
    raw = np.vstack(rows_out)
    tot = raw.sum(axis=1, keepdims=True)
    flow = np.divide(raw, tot, out=np.zeros_like(raw), where=tot > 0)
    flow = pd.DataFrame(flow, index=pd.Index(labels[:-1], name="time"), columns=pd.Index(kept, name="cluster"))
    return flow, contingency_matrix(clusters.iloc[cells], tcodes, kept, labels)


def contingency_matrix(clusters: pd.Series, time_codes: np.ndarray, kept: list[Any], labels: list[Any]) -> pd.DataFrame:
    """:math:`P(c, t)`: the share of each cluster among the cells of each time point."""
    ccodes = pd.Categorical(clusters, categories=kept).codes
    counts = np.zeros((len(kept), len(labels)))
    np.add.at(counts, (ccodes, np.asarray(time_codes)), 1.0)
    tot = counts.sum(axis=0, keepdims=True)
    return pd.DataFrame(
        np.divide(counts, tot, out=np.zeros_like(counts), where=tot > 0),
        index=pd.Index(kept, name="cluster"),
        columns=pd.Index(labels, name="time"),
    )


# --------------------------------------------------------------------------- drawing helpers
def _smooth(x: np.ndarray, y: np.ndarray, frac: float = 0.3) -> np.ndarray:
    """LOWESS without robustness iterations, evaluated at ``x``.

    Local linear regression with tricube weights over the nearest ``frac`` of the points.
    """
    n = x.size
    r = max(2, int(np.ceil(frac * n)))
    out = np.empty(n)
    for i in range(n):
        d = np.abs(x - x[i])
        h = np.partition(d, r - 1)[r - 1]
        h = h if h > 0 else 1.0
        w = np.clip(1 - (d / (h * 1.0000001)) ** 3, 0, None) ** 3
        sw = w.sum()
        mx, my = (w * x).sum() / sw, (w * y).sum() / sw
        var = (w * (x - mx) ** 2).sum()
        slope = (w * (x - mx) * (y - my)).sum() / var if var > 0 else 0.0
        out[i] = my + slope * (x[i] - mx)
    return out


def _logistic_ramp(r: np.ndarray) -> np.ndarray:
    """An S-shaped ramp from 0 to 1 on :math:`[0, 1]` (a rescaled logistic CDF, centre 0.5, scale 0.2)."""

    def cdf(z):
        return 1.0 / (1.0 + np.exp(-(z - 0.5) / 0.2))

    return (cdf(r) - cdf(0.0)) / (cdf(1.0) - cdf(0.0))


def _ribbon(ax, start: tuple, end: tuple, c0: Any, c1: Any, alpha: float, gid: str, n: int = 20) -> None:
    """A ribbon between two S-curves from ``start = (x_a, y_a, x_b, y_b)`` to ``end`` (same layout).

    Coloured from ``c0`` to ``c1``, with alpha from ``min(0.2, alpha)`` to ``max(0.2, alpha)``.
    """
    import matplotlib.colors as mcolors
    from matplotlib.collections import PolyCollection

    r = np.linspace(0.0, 1.0, n + 1)
    b = _logistic_ramp(r)
    xa = start[0] + r * (end[0] - start[0])
    ya = start[1] + b * (end[1] - start[1])
    xb = start[2] + r * (end[2] - start[2])
    yb = start[3] + b * (end[3] - start[3])
    quads = [
        np.array([[xa[k], ya[k]], [xa[k + 1], ya[k + 1]], [xb[k + 1], yb[k + 1]], [xb[k], yb[k]]]) for k in range(n)
    ]
    rm = (r[:-1] + r[1:]) / 2
    col0, col1 = np.asarray(mcolors.to_rgb(c0)), np.asarray(mcolors.to_rgb(c1))
    a0, a1 = sorted((0.2, float(alpha)))
    faces = np.c_[col0 * (1 - rm[:, None]) + col1 * rm[:, None], a0 + (a1 - a0) * rm]
    ax.add_collection(PolyCollection(quads, facecolors=faces, edgecolors="none", linewidths=0, gid=gid))


def _order(flow: pd.DataFrame, cluster: Any, kept: list[Any], ascending: bool | None) -> tuple[list, list]:
    """Clusters below and above the source.

    By total inflow (largest next to the source), alternating sides; or in the given order, split in
    halves, when ``ascending`` is ``None``.
    """
    others = [c for c in flow.columns if c != cluster]
    if ascending is None:
        rest = [c for c in kept if c in others]
        return rest[: len(rest) // 2], rest[len(rest) // 2 :]
    total = flow[others].sum(axis=0).sort_values(ascending=ascending, kind="stable")
    bottom, top = [], []
    for i, c in enumerate(total.index):
        (bottom if i % 2 == 0 else top).append(c)
    return bottom[::-1], top


def single_flow(
    kernel: Any,
    cluster: Any,
    cluster_key: str,
    time_key: str,
    clusters: Sequence[Any] | None = None,
    time_points: Sequence[Any] | None = None,
    min_flow: float = 0,
    remove_empty_clusters: bool = True,
    ascending: bool | None = False,
    legend_loc: str | None = "upper right out",
    alpha: float | None = 0.8,
    xticks_step_size: int | None = 1,
    figsize: tuple[float, float] | None = None,
    dpi: int | None = None,
    save: str | Path | None = None,
    show: bool = True,
):
    r"""Plot the outgoing flow of ``cluster`` over time from ``kernel.transition_matrix``.

    Parameters
    ----------
    kernel
        Anything with ``.adata`` and a computed ``.transition_matrix``.
    cluster
        The source cluster.
    cluster_key, time_key
        Categorical clusters and experimental time in ``adata.obs``.
    clusters, time_points
        Restrict to these clusters (the source is always kept) and time points.
    min_flow
        Draw only flows :math:`F_k(c') >` ``min_flow`` (flows are in :math:`[0, 1]`).
    remove_empty_clusters
        Drop the clusters that receive no flow above ``min_flow`` at any time point.
    ascending
        Order the target clusters by total inflow, ascending or descending (largest next to the
        source), alternating below and above it; ``None``: the order of ``clusters``.
    legend_loc
        ``"upper right out"`` (CellRank's default, outside on the right), any
        ``"<vertical> <horizontal> out"``, a matplotlib location, or ``None``
        (:func:`cellfate_gpu.pl._legend.position_legend`).
    alpha
        Opacity of the cluster bands (ribbons fade in from 0.2 to it).
    xticks_step_size
        Label every n-th time point; ``None``: no ticks.
    figsize, dpi
        Figure size and resolution.
    save
        Path to save the figure to.
    show
        ``False``: return the axes.

    Returns
    -------
    matplotlib.axes.Axes or None
        The axes when ``show=False``.
    """
    import matplotlib.pyplot as plt

    from cellfate_gpu.pl._embedding import categorical_colors, finish
    from cellfate_gpu.pl._legend import position_legend

    adata = kernel.adata
    for key, what in ((cluster_key, "clusters"), (time_key, "experimental time")):
        if key not in adata.obs:
            raise KeyError(f"No {what} in adata.obs[{key!r}]; available: {list(adata.obs.columns)}.")
    labels_all = adata.obs[cluster_key]
    if not isinstance(labels_all.dtype, pd.CategoricalDtype):
        raise TypeError(f"adata.obs[{cluster_key!r}] must be categorical, found dtype {labels_all.dtype}.")
    alpha = 0.8 if alpha is None else float(alpha)
    flow, cmat = single_flow_table(
        kernel.transition_matrix, labels_all, adata.obs[time_key], cluster, clusters, time_points
    )
    kept = list(cmat.index)
    times = list(cmat.columns)
    # positions of the kept time points, rescaled so that the closest two are one unit apart
    _, all_labels, all_pos = flow_time_points(adata.obs[time_key])
    x = np.array([all_pos[all_labels.index(t)] for t in times], dtype=np.float64)
    x = (x - x.min()) / (x.max() - x.min())
    x = x / np.min(np.diff(x))

    if remove_empty_clusters:
        keep = (flow > min_flow).any(axis=0)
        keep[cluster] = True  # the source stays (its band is drawn)
        if not keep.drop(cluster).any():
            raise ValueError(f"After removing clusters with no incoming flow above min_flow={min_flow}, none remain.")
        flow = flow.loc[:, keep[keep].index]
    info("Plotting flow from %r into %d cluster(s) in %d time points", cluster, flow.shape[1] - 1, len(times) - 1)
    bottom, top = _order(flow, cluster, kept, ascending)
    order = [*bottom, cluster, *top]

    cats = [str(c) for c in labels_all.cat.categories]
    pal = list(adata.uns.get(f"{cluster_key}_colors", []))
    if len(pal) < len(cats):  # scanpy's default: tab10 up to 10 categories, then tab20
        name, m = ("tab10", 10) if len(cats) <= 10 else ("tab20", 20)
        pal = [plt.get_cmap(name)(i % m) for i in range(len(cats))]
    pal = categorical_colors(pal[: len(cats)])
    cmap = {c: pal[cats.index(str(c))] for c in order}

    grid = np.linspace(x[0], x[-1], int(1 + round((x[-1] - x[0]) * 100)))
    prop = {c: np.clip(_smooth(grid, np.interp(grid, x, cmat.loc[c].to_numpy())), 0.0, None) for c in order}
    offset, y = {}, 0.0
    for i, c in enumerate(order):
        if i:
            y += 0.2 + float(np.max(cmat.loc[c].to_numpy() + cmat.loc[order[i - 1]].to_numpy()))
        offset[c] = y

    def at(c, xv):
        return float(np.interp(xv, grid, prop[c]))

    fig, ax = plt.subplots(figsize=figsize, dpi=dpi)
    handles = {}
    for c in order:
        handles[c] = ax.fill_between(
            grid, offset[c] - prop[c], offset[c] + prop[c], color=cmap[c], alpha=alpha, linewidth=0, label=str(c)
        )
    src = offset[cluster]
    for k in range(len(times) - 1):
        x0, x1 = x[k], x[k + 1]
        for c in [*bottom, *top]:
            f = float(flow.iloc[k][c]) if c in flow.columns else 0.0
            if not f > min_flow:
                continue
            w = min(f, 0.95) * (x1 - x0)
            below = c in bottom
            sgn = -1.0 if below else 1.0  # leave the source on the side facing the target
            start = (x0, src + sgn * at(cluster, x0), x0 + w, src + sgn * at(cluster, x0 + w))
            end = (x1 - w, offset[c] - sgn * at(c, x1 - w), x1, offset[c] - sgn * at(c, x1))
            _ribbon(ax, start, end, cmap[cluster], cmap[c], alpha, gid=f"flow:{times[k]}:{c}")
    ax.margins(0.025)
    ax.autoscale_view()
    ax.set_title(str(cluster))
    ax.set_xlabel(time_key)
    ax.set_ylabel(cluster_key)
    ax.set_yticks([])
    if xticks_step_size is None:
        ax.set_xticks([])
    else:
        step = max(1, int(xticks_step_size))
        ax.set_xticks(x[::step])
        ax.set_xticklabels([str(t) for t in times[::step]])
    position_legend(ax, legend_loc, handles=[handles[c] for c in order[::-1]])
    fig.tight_layout()  # room for a legend outside the axes
    finish(fig, save)
    if not show:
        return ax
    return None
