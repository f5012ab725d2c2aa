"""Fate probabilities summarised per cluster, and log-odds over experimental time (CellRank's signatures)."""

from __future__ import annotations

import types
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cellfate_gpu import _keys
from cellfate_gpu.pl._embedding import embedding, finish, grid
from cellfate_gpu.pl._fate import resolve_fate_probabilities

__all__ = ["aggregate_fate_probabilities", "log_odds"]

_MODES = ("bar", "paga", "paga_pie", "violin", "heatmap", "clustermap")


def _cluster_means(adata, probs, cluster_key: str, clusters: Any) -> tuple[pd.DataFrame, pd.Series]:
    if cluster_key not in adata.obs:
        raise KeyError(f"cluster_key {cluster_key!r} is not a column of adata.obs.")
    col = adata.obs[cluster_key].astype("category")
    cats = list(col.cat.categories)
    if clusters is not None:
        clusters = [clusters] if isinstance(clusters, str) else list(clusters)
        bad = [c for c in clusters if c not in cats]
        if bad:
            raise KeyError(f"Clusters {bad} not in adata.obs[{cluster_key!r}]; available: {cats}.")
        cats = clusters
    df = pd.DataFrame(probs.X, columns=probs.names, index=adata.obs_names).groupby(col.to_numpy()).mean()
    return df.loc[cats], col


def aggregate_fate_probabilities(
    adata: Any,
    mode: str = "paga_pie",
    backward: bool = False,
    lineages: str | Sequence[str] | None = None,
    cluster_key: str | None = "clusters",
    clusters: str | Sequence[str] | None = None,
    basis: str | None = None,
    cbar: bool = True,
    ncols: int | None = None,
    sharey: bool = False,
    fmt: str = "0.2f",
    xrot: float = 90,
    legend_kwargs: Mapping[str, Any] = types.MappingProxyType({"loc": "best"}),
    figsize: tuple[float, float] | None = None,
    dpi: int | None = None,
    save: str | Path | None = None,
    return_figure: bool = False,
    **kwargs: Any,
):
    r"""Mean fate probability of each lineage per cluster (CellRank's ``pl.aggregate_fate_probabilities``).

    Modes: ``"bar"`` (one panel per lineage, a bar per cluster in the cluster colours), ``"violin"``
    (the per-cell distribution per cluster), ``"heatmap"`` / ``"clustermap"`` (clusters × lineages
    annotated with ``fmt``; clustermap reorders both axes by average-linkage clustering), ``"paga"``
    (one panel per lineage: cluster nodes coloured by their mean probability, with a colour bar) and
    ``"paga_pie"`` (each cluster a pie of its mean probabilities). The PAGA modes place nodes at
    ``adata.uns['paga']['pos']`` when present, else at the cluster centroids on ``basis``, and draw
    ``uns['paga']['connectivities']`` edges when present.
    """
    import matplotlib.pyplot as plt
    from matplotlib import colors as mcolors

    if mode not in _MODES:
        raise ValueError(f"mode must be one of {list(_MODES)}, got {mode!r}.")
    adata, probs = resolve_fate_probabilities(adata, backward)
    if lineages is not None:
        probs = probs[[lineages] if isinstance(lineages, str) else list(lineages)]
    df, col = _cluster_means(adata, probs, cluster_key, clusters)
    pal = list(adata.uns.get(_keys.colors(cluster_key), plt.get_cmap("tab20").colors))
    all_cats = list(col.cat.categories)
    ccolors = [pal[all_cats.index(c) % len(pal)] for c in df.index]
    legend_kwargs = dict(legend_kwargs)
    if mode in ("bar", "violin", "paga"):
        fig, axes = grid(probs.nlin, ncols=ncols or min(3, probs.nlin), figsize=figsize, dpi=dpi, panel=4)
    if mode == "bar":
        for ax, lin in zip(axes, probs.names, strict=True):
            ax.bar(range(len(df)), df[lin].to_numpy(), color=ccolors)
            ax.set_xticks(range(len(df)), df.index, rotation=xrot)
            ax.set_title(lin)
            ax.set_ylabel("mean fate probability")
            if not sharey:
                ax.set_ylim(0, max(1e-9, df[lin].max()) * 1.05)
            else:
                ax.set_ylim(0, 1)
    elif mode == "violin":
        codes = col.to_numpy()
        for ax, lin in zip(axes, probs.names, strict=True):
            vals = [probs[lin].X.ravel()[codes == c] for c in df.index]
            keep = [i for i, v in enumerate(vals) if v.size]
            parts = ax.violinplot([vals[i] for i in keep], positions=keep, showmedians=True)
            for body, i in zip(parts["bodies"], keep, strict=True):
                body.set_facecolor(ccolors[i])
                body.set_alpha(0.8)
            ax.set_xticks(range(len(df)), df.index, rotation=xrot)
            ax.set_title(lin)
            ax.set_ylim(0, 1)
            ax.set_ylabel("fate probability")
    elif mode in ("heatmap", "clustermap"):
        D = df.to_numpy()
        rows, colsx = np.arange(D.shape[0]), np.arange(D.shape[1])
        if mode == "clustermap" and min(D.shape) > 1:
            from scipy.cluster.hierarchy import leaves_list, linkage

            rows, colsx = leaves_list(linkage(D, "average")), leaves_list(linkage(D.T, "average"))
        D = D[rows][:, colsx]
        fig, (ax,) = grid(1, figsize=figsize or (1.5 + 0.9 * D.shape[1], 1 + 0.45 * D.shape[0]), dpi=dpi)
        im = ax.imshow(D, cmap=kwargs.pop("cmap", "viridis"), vmin=0, vmax=1, aspect="auto")
        ax.set_xticks(range(D.shape[1]), [probs.names[i] for i in colsx], rotation=xrot)
        ax.set_yticks(range(D.shape[0]), [df.index[i] for i in rows])
        for i in range(D.shape[0]):
            for j in range(D.shape[1]):
                ax.text(
                    j,
                    i,
                    format(D[i, j], fmt),
                    ha="center",
                    va="center",
                    fontsize="x-small",
                    color="white" if D[i, j] < 0.5 else "black",
                )
        if cbar:
            fig.colorbar(im, ax=ax, label="mean fate probability")
    else:  # paga, paga_pie
        cats = list(df.index)
        pos = None
        if "paga" in adata.uns and "pos" in adata.uns["paga"]:
            P = np.asarray(adata.uns["paga"]["pos"])
            pos = P[[all_cats.index(c) for c in cats]] if len(P) == len(all_cats) else None
        if pos is None:
            emb = embedding(adata, basis or "umap")
            codes = col.to_numpy()
            pos = np.vstack([np.median(emb[codes == c], axis=0) for c in cats])
        conn = None
        if "paga" in adata.uns and "connectivities" in adata.uns["paga"]:
            C = adata.uns["paga"]["connectivities"]
            C = np.asarray(C.toarray() if hasattr(C, "toarray") else C)
            if C.shape[0] == len(all_cats):
                ix = [all_cats.index(c) for c in cats]
                conn = C[np.ix_(ix, ix)]
        span = np.ptp(pos, axis=0).max() or 1.0
        radius = 0.04 * span

        def edges(ax):
            if conn is None:
                return
            for i in range(len(cats)):
                for j in range(i + 1, len(cats)):
                    if conn[i, j] > 0.05:
                        ax.plot(*pos[[i, j]].T, color="#aaaaaa", lw=3 * conn[i, j], zorder=1)

        if mode == "paga_pie":
            fig, (ax,) = grid(1, figsize=figsize, dpi=dpi, panel=6)
            edges(ax)
            for (x, y), c in zip(pos, cats, strict=True):
                fr = np.clip(df.loc[c].to_numpy(), 0, None)
                fr = fr / fr.sum() if fr.sum() > 0 else np.full(fr.size, 1 / fr.size)
                ax.pie(
                    fr,
                    colors=probs.colors,
                    center=(x, y),
                    radius=radius,
                    frame=True,
                    wedgeprops={"linewidth": 0.5, "edgecolor": "white"},
                )
                ax.annotate(c, (x, y + radius * 1.15), ha="center", va="bottom", fontsize="x-small")
            ax.set_xlim(pos[:, 0].min() - 3 * radius, pos[:, 0].max() + 3 * radius)
            ax.set_ylim(pos[:, 1].min() - 3 * radius, pos[:, 1].max() + 3 * radius)
            ax.set_aspect("equal")
            ax.set_axis_off()
            handles = [
                plt.Line2D([], [], marker="o", ls="", color=c, label=n)
                for n, c in zip(probs.names, probs.colors, strict=True)
            ]
            legend_kwargs.pop("loc", None)
            ax.legend(handles=handles, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False, **legend_kwargs)
        else:
            for ax, lin in zip(axes, probs.names, strict=True):
                edges(ax)
                sc = ax.scatter(
                    pos[:, 0],
                    pos[:, 1],
                    c=df[lin].to_numpy(),
                    cmap="viridis",
                    vmin=0,
                    vmax=1,
                    s=300,
                    edgecolors="black",
                    zorder=2,
                )
                for (x, y), c in zip(pos, cats, strict=True):
                    ax.annotate(c, (x, y), ha="center", va="center", fontsize="xx-small", zorder=3)
                ax.set_title(lin)
                ax.set_axis_off()
                if cbar:
                    fig.colorbar(sc, ax=ax, shrink=0.7, label="mean fate probability")
    del mcolors
    finish(fig, save)
    return fig if return_figure else None


def log_odds(
    adata: Any,
    lineage_1: str,
    lineage_2: str | None = None,
    time_key: str = "exp_time",
    backward: bool = False,
    keys: str | Sequence[str] | None = None,
    threshold: float | Sequence | None = None,
    threshold_color: str = "red",
    layer: str | None = None,
    use_raw: bool = False,
    size: float = 2.0,
    cmap: str = "viridis",
    alpha: float | None = 0.8,
    ncols: int | None = None,
    fontsize: float | str | None = None,
    xticks_step_size: int | None = 1,
    legend_loc: str | None = "best",
    jitter: bool | float = True,
    seed: int | None = None,
    figsize: tuple[float, float] | None = None,
    dpi: int | None = None,
    save: str | Path | None = None,
    show: bool = True,
    **kwargs: Any,
):
    r"""Log-odds of fate per cell against (experimental) time (CellRank's ``pl.log_odds``).

    :math:`\log\frac{p_1}{p_2}` (or :math:`\log\frac{p_1}{1 - p_1}` without ``lineage_2``), cells
    with a zero probability left out, drawn as a jittered strip per time point. ``keys`` (genes,
    from ``layer``/``raw``/``X``, or ``adata.obs`` columns) colour the cells, one panel each, with a
    colour bar (continuous) or a legend (categorical); a gene ``threshold`` instead colours cells above
    it in ``threshold_color``.

    Returns
    -------
    The axes (a list for several ``keys``) when ``show=False``, else ``None``.
    """
    import matplotlib.pyplot as plt

    adata, probs = resolve_fate_probabilities(adata, backward)
    if time_key not in adata.obs:
        raise KeyError(f"time_key {time_key!r} is not a column of adata.obs.")
    p1 = probs[lineage_1].X.ravel()
    p2 = 1.0 - p1 if lineage_2 is None else probs[lineage_2].X.ravel()
    ok = (p1 > 0) & (p2 > 0)
    lo = np.full(p1.size, np.nan)
    lo[ok] = np.log(p1[ok] / p2[ok])
    t = adata.obs[time_key]
    cats = t.cat.categories if hasattr(t, "cat") else np.unique(np.asarray(t))
    codes = pd.Categorical(np.asarray(t), categories=cats).codes
    rng = np.random.default_rng(seed)
    width = 0.0 if jitter is False else (0.25 if jitter is True else float(jitter))
    xpos = codes + rng.uniform(-width, width, codes.size)
    keys_l = [None] if keys is None else ([keys] if isinstance(keys, str) else list(keys))
    thr = threshold if isinstance(threshold, (list, tuple, np.ndarray)) else [threshold] * len(keys_l)
    fig, axes = grid(len(keys_l), ncols=ncols or min(3, len(keys_l)), figsize=figsize, dpi=dpi, panel=4.5)
    for ax, key, th in zip(axes, keys_l, thr, strict=True):
        sel = ok & (codes >= 0)
        if key is None:
            ax.scatter(xpos[sel], lo[sel], s=size, c="black", alpha=alpha, linewidths=0, rasterized=True)
        elif key in adata.obs and not pd.api.types.is_numeric_dtype(adata.obs[key]):
            col = adata.obs[key].astype("category")
            pal = list(adata.uns.get(_keys.colors(key), plt.get_cmap("tab20").colors))
            for i, c in enumerate(col.cat.categories):
                m = sel & (col.cat.codes.to_numpy() == i)
                ax.scatter(
                    xpos[m],
                    lo[m],
                    s=size,
                    color=pal[i % len(pal)],
                    alpha=alpha,
                    label=str(c),
                    linewidths=0,
                    rasterized=True,
                )
            if legend_loc not in (None, "none"):
                ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False, markerscale=4, fontsize="small")
        else:
            if key in adata.obs:
                v = np.asarray(adata.obs[key], dtype=float)
            else:
                from cellfate_gpu.models._base import expression

                M = expression(adata, [key], data_key=layer or "X", use_raw=use_raw)
                v = np.asarray(M.toarray() if hasattr(M, "toarray") else M, dtype=float).ravel()
            if th is not None:
                above = sel & (v > th)
                ax.scatter(xpos[sel & ~above], lo[sel & ~above], s=size, c="#bbbbbb", alpha=alpha, linewidths=0)
                ax.scatter(
                    xpos[above], lo[above], s=size, c=threshold_color, alpha=alpha, linewidths=0, label=f"{key} > {th}"
                )
                ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False, markerscale=4)
            else:
                sc = ax.scatter(
                    xpos[sel], lo[sel], s=size, c=v[sel], cmap=cmap, alpha=alpha, linewidths=0, rasterized=True
                )
                fig.colorbar(sc, ax=ax, pad=0.02, label=key)
        step = xticks_step_size or 1
        ax.set_xticks(range(0, len(cats), step), [str(c) for c in list(cats)[::step]], rotation=90)
        ax.set_xlabel(time_key)
        ax.set_ylabel(f"log odds {lineage_1} vs {lineage_2 or 'rest'}")
        ax.set_title("" if key is None else str(key), fontsize=fontsize)
    finish(fig, save)
    if show:
        return None
    return axes[0] if len(axes) == 1 else axes
