"""Gene trends along lineages: line plots, heatmaps and trend clusters (CellRank's signatures).

All three fit their trends through :func:`cellfate_gpu.models.fit_trends`: with a
:class:`~cellfate_gpu.models.GAM` every gene of a lineage is fitted in one batched solve (the same
curves as CellRank's per-gene pygam fits), any other model gene by gene.
"""

from __future__ import annotations

import types
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cellfate_gpu import _keys
from cellfate_gpu.lineage import Lineage
from cellfate_gpu.pl._embedding import finish, grid

__all__ = ["cluster_trends", "gene_trends", "heatmap"]

_PREPARE_KEYS = ("data_key", "use_raw", "threshold", "weight_threshold", "filter_cells", "n_test_points")


def _as_list(x: Any) -> list:
    return [x] if isinstance(x, str) or x is None else list(x)


def _lineages(adata: Any, lineages: Any, backward: bool) -> tuple[list, Lineage]:
    key = _keys.fate_probabilities(backward)
    if key not in adata.obsm:
        raise KeyError(f"No fate probabilities in adata.obsm[{key!r}]; compute them first.")
    probs = Lineage.from_adata(adata, key)
    names = probs.names if lineages is None else _as_list(lineages)
    unknown = [n for n in names if n is not None and n not in probs.names]
    if unknown:
        raise KeyError(f"Unknown lineages {unknown}; available: {probs.names}.")
    return list(dict.fromkeys(names)), probs


def _fit(adata, model, genes, lineages, time_key, backward, time_range, conf_int, show_progress_bar, kwargs):
    from cellfate_gpu.models import fit_trends

    unknown = set(kwargs) - set(_PREPARE_KEYS)
    if unknown:
        raise TypeError(f"Unexpected keyword arguments {sorted(unknown)}; prepare() accepts {list(_PREPARE_KEYS)}.")
    return fit_trends(
        adata,
        model,
        genes,
        lineages,
        time_key,
        backward=backward,
        time_range=time_range,
        conf_int=conf_int,
        show_progress_bar=show_progress_bar,
        **kwargs,
    )


def _done(fig, save, return_figure: bool, extra: Any = None):
    finish(fig, save)
    if return_figure:
        return fig if extra is None else (fig, extra)
    return extra


def gene_trends(
    adata: Any,
    model: Any,
    genes: str | Sequence[str],
    time_key: str,
    lineages: str | Sequence[str] | None = None,
    backward: bool = False,
    data_key: str = "X",
    time_range: Any = None,
    transpose: bool = False,
    callback: Any = None,
    conf_int: bool | float = True,
    same_plot: bool = False,
    hide_cells: bool = False,
    perc: tuple[float, float] | None = None,
    lineage_cmap: Any = None,
    fate_prob_cmap: Any = "viridis",
    cell_color: str | None = None,
    cell_alpha: float = 0.6,
    lineage_alpha: float = 0.2,
    size: float = 15,
    lw: float = 2,
    cbar: bool = True,
    margins: float = 0.015,
    sharex: str | bool | None = None,
    sharey: str | bool | None = None,
    gene_as_title: bool | None = None,
    legend_loc: str | None = "best",
    obs_legend_loc: str | None = "best",
    ncols: int = 2,
    suptitle: str | None = None,
    return_models: bool = False,
    n_jobs: int | None = 1,
    backend: Any = None,
    show_progress_bar: bool = True,
    figsize: tuple[float, float] | None = None,
    dpi: int | None = None,
    save: str | Path | None = None,
    return_figure: bool = False,
    plot_kwargs: Mapping[str, Any] = types.MappingProxyType({}),
    **kwargs: Any,
):
    r"""Expression trends of ``genes`` along ``lineages`` (CellRank's ``pl.gene_trends``).

    Each trend is ``model`` fitted with the lineage's fate probabilities as weights (see
    :func:`cellfate_gpu.models.lineage_design` for which cells and which time range). With
    ``same_plot=False`` there is one panel per gene (rows) and lineage (columns; swapped by
    ``transpose``), the cells coloured by their fate probability with a colour bar; with
    ``same_plot=True`` one panel per gene (per lineage with ``transpose``) with every lineage's
    curve in its colour and a legend outside the data.

    Parameters
    ----------
    model
        A :class:`~cellfate_gpu.models.GAM` (batched fit of all genes), any
        :class:`~cellfate_gpu.models.BaseModel`, or ``{gene: {lineage: model}}``.
    conf_int
        Draw the confidence band (a float in (0, 1): its width).
    callback, n_jobs, backend
        Accepted for CellRank compatibility: ``callback`` is not supported (raises if given);
        ``n_jobs``/``backend`` are not needed (the GAM fits all genes at once).
    kwargs
        Passed to ``prepare`` (``data_key``, ``weight_threshold``, ``n_test_points``, ...).

    Returns
    -------
    ``{gene: {lineage: model}}`` with ``return_models=True`` (GAM fits: :class:`LineageTrends`
    per lineage instead), the figure with ``return_figure=True``, else ``None``.
    """
    import matplotlib.pyplot as plt

    if callback is not None:
        raise NotImplementedError("callback= is not supported; prepare the models yourself and pass a mapping.")
    genes = list(dict.fromkeys(_as_list(genes)))
    lineages, probs = _lineages(adata, lineages, backward)
    kwargs["data_key"] = data_key
    trends = _fit(adata, model, genes, lineages, time_key, backward, time_range, conf_int, show_progress_bar, kwargs)
    colors = dict(zip(probs.names, probs.colors, strict=True))
    if lineage_cmap is not None:
        cm = plt.get_cmap(lineage_cmap) if isinstance(lineage_cmap, str) else lineage_cmap
        colors = {ln: cm(i % cm.N) for i, ln in enumerate(lineages)}
    t_all = np.asarray(adata.obs[time_key], dtype=np.float64)
    from cellfate_gpu.models._base import expression

    Y = expression(adata, genes, data_key=data_key, use_raw=kwargs.get("use_raw", False))
    Y = np.asarray(Y.toarray() if hasattr(Y, "toarray") else Y, dtype=np.float64)

    def draw(ax, gene, lin, *, cells: bool, color):
        tr = trends[lin]
        j = genes.index(gene)
        if cells:
            w = np.ones_like(t_all) if lin is None else probs[lin].X.ravel()
            if cell_color is not None and cell_color in adata.obs:
                c, cmap, vmin, vmax = (
                    np.asarray(adata.obs[cell_color].astype("category").cat.codes),
                    "tab20",
                    None,
                    None,
                )
            else:
                c, cmap = w, fate_prob_cmap
                vmin, vmax = (0.0, 1.0) if perc is None else tuple(np.percentile(w, perc))
            sc = ax.scatter(
                t_all,
                Y[:, j],
                c=c,
                cmap=cmap,
                vmin=vmin,
                vmax=vmax,
                s=size,
                alpha=cell_alpha,
                linewidths=0,
                rasterized=True,
            )
            if cbar and lin is not None and not (cell_color is not None and cell_color in adata.obs):
                ax.figure.colorbar(sc, ax=ax, pad=0.02, fraction=0.05, label="fate probability")
        ax.plot(tr.x_test, tr.mean[gene].to_numpy(), color=color, lw=lw, label=str(lin))
        if conf_int and tr.conf_int is not None:
            ax.fill_between(tr.x_test, tr.conf_int[:, j, 0], tr.conf_int[:, j, 1], color=color, alpha=lineage_alpha)
        ax.margins(margins)

    if same_plot:
        panels = lineages if transpose else genes
        fig, axes = grid(len(panels), ncols=ncols, figsize=figsize, dpi=dpi, panel=4)
        for ax, p in zip(axes, panels, strict=True):
            inner = genes if transpose else lineages
            tab = plt.get_cmap("tab10")
            for i, q in enumerate(inner):
                gene, lin = (q, p) if transpose else (p, q)
                draw(
                    ax,
                    gene,
                    lin,
                    cells=not (hide_cells or transpose) and i == 0 and len(inner) == 1,
                    color=tab(i % 10) if transpose else colors.get(lin, "black"),
                )
            ax.set_title(str(p))
            ax.set_xlabel(time_key)
            ax.set_ylabel("expression")
            if legend_loc not in (None, "none"):
                ax.legend(loc="center left", bbox_to_anchor=(1.02, 0.5), frameon=False, fontsize="small")
    else:
        rows, cols = (lineages, genes) if transpose else (genes, lineages)
        panel = figsize or (4.2 * len(cols), 3.2 * len(rows))
        fig, axes = plt.subplots(
            len(rows), len(cols), figsize=panel, dpi=dpi, squeeze=False, sharex=sharex or False, sharey=sharey or False
        )
        for r, rv in enumerate(rows):
            for c, cv in enumerate(cols):
                gene, lin = (cv, rv) if transpose else (rv, cv)
                ax = axes[r, c]
                draw(ax, gene, lin, cells=not hide_cells, color="black")
                ax.set_title(
                    f"{gene} — {lin}" if gene_as_title or gene_as_title is None else str(lin), fontsize="small"
                )
                if c == 0:
                    ax.set_ylabel(str(gene) if gene_as_title is False else "expression")
                if r == len(rows) - 1:
                    ax.set_xlabel(time_key)
        fig.tight_layout()
    if suptitle is not None:
        fig.suptitle(suptitle)
    extra = None
    if return_models:
        extra = {g: {ln: (trends[ln].models or {}).get(g, trends[ln]) for ln in lineages} for g in genes}
    return _done(fig, save, return_figure, extra)


def _minmax(a: np.ndarray, axis: int = 1) -> np.ndarray:
    lo, hi = a.min(axis=axis, keepdims=True), a.max(axis=axis, keepdims=True)
    return (a - lo) / np.where(hi > lo, hi - lo, 1.0)


def heatmap(
    adata: Any,
    model: Any,
    genes: Sequence[str],
    time_key: str,
    lineages: str | Sequence[str] | None = None,
    backward: bool = False,
    mode: str = "lineages",
    time_range: Any = None,
    callback: Any = None,
    cluster_key: str | Sequence[str] | None = None,
    show_fate_probabilities: bool = False,
    cluster_genes: bool = False,
    keep_gene_order: bool = False,
    scale: bool = True,
    n_convolve: int | None = 5,
    show_all_genes: bool = False,
    cbar: bool = True,
    lineage_height: float = 0.33,
    fontsize: float | None = None,
    xlabel: str | None = None,
    title: str | None = None,
    cmap: Any = "viridis",
    dendrogram: bool = True,
    return_genes: bool = False,
    return_models: bool = False,
    return_figure: bool = False,
    n_jobs: int | None = 1,
    backend: Any = None,
    show_progress_bar: bool = True,
    figsize: tuple[float, float] | None = None,
    dpi: int | None = None,
    save: str | Path | None = None,
    gene_order: Sequence[str] | None = None,
    **kwargs: Any,
):
    r"""Smoothed expression of ``genes`` along each lineage as a heatmap (CellRank's ``pl.heatmap``).

    ``mode="lineages"``: one heatmap per lineage, genes (rows) ordered by the pseudotime of their
    peak (``cluster_genes``: by hierarchical clustering, average linkage on correlation, instead;
    ``gene_order`` / ``keep_gene_order`` fix the order), each row min-max scaled to :math:`[0, 1]`
    when ``scale``; above it a bar of the lineage's fate probability along the grid (smoothed over
    ``n_convolve`` cells) with ``show_fate_probabilities`` and bars of ``cluster_key`` categories at
    the grid's nearest cells. ``mode="genes"``: one panel per gene, one row per lineage.

    Returns
    -------
    With ``return_genes`` (``mode="lineages"``) a DataFrame of the gene order per lineage; with
    ``return_figure`` the figure (and the genes); with ``return_models`` the trends as well.
    """
    import matplotlib.pyplot as plt
    from matplotlib import colors as mcolors

    if callback is not None:
        raise NotImplementedError("callback= is not supported.")
    if mode not in ("lineages", "genes"):
        raise ValueError(f"mode must be 'lineages' or 'genes', got {mode!r}.")
    genes = list(dict.fromkeys(_as_list(genes)))
    lineages, probs = _lineages(adata, lineages, backward)
    trends = _fit(adata, model, genes, lineages, time_key, backward, time_range, False, show_progress_bar, kwargs)
    xlabel = time_key if xlabel is None else xlabel
    t_obs = np.asarray(adata.obs[time_key], dtype=np.float64)
    order_t = np.argsort(t_obs, kind="stable")

    def nearest_cells(x: np.ndarray) -> np.ndarray:
        pos = np.clip(np.searchsorted(t_obs[order_t], x), 1, len(order_t) - 1)
        left = t_obs[order_t][pos - 1]
        right = t_obs[order_t][pos]
        return order_t[np.where(np.abs(x - left) <= np.abs(right - x), pos - 1, pos)]

    sorted_genes = pd.DataFrame()
    if mode == "genes":
        fig, axes = grid(len(genes), ncols=1, figsize=figsize, dpi=dpi, panel=1)
        fig.set_size_inches(figsize or (8, max(1.5, len(genes) * (len(lineages) * lineage_height + 0.6))))
        for ax, gene in zip(axes, genes, strict=True):
            M = np.vstack([trends[ln].mean[gene].to_numpy() for ln in lineages])
            if scale:
                M = (M - M.min()) / (np.ptp(M) if np.ptp(M) > 0 else 1.0)
            im = ax.imshow(M, aspect="auto", cmap=cmap, interpolation="nearest")
            ax.set_yticks(range(len(lineages)), [str(ln) for ln in lineages])
            ax.set_xticks([])
            ax.set_title(gene, fontsize=fontsize)
            if cbar:
                fig.colorbar(im, ax=ax, pad=0.01, label="scaled expression" if scale else "expression")
        axes[-1].set_xlabel(xlabel)
        return _done(fig, save, return_figure, trends if return_models else None)

    figs = []
    order = list(gene_order) if gene_order is not None else None
    keys = _as_list(cluster_key) if cluster_key is not None else []
    for lin in lineages:
        tr = trends[lin]
        df = tr.mean.T  # genes x grid
        M = df.to_numpy()
        Ms = _minmax(M) if scale else M
        if cluster_genes and len(genes) > 1:
            from scipy.cluster.hierarchy import leaves_list, linkage

            idx = leaves_list(linkage(Ms, method="average", metric="correlation"))
        elif order is not None:
            idx = [genes.index(g) for g in order if g in genes]
        else:
            idx = np.argsort(np.argmax(_minmax(M), axis=1), kind="stable")
            if keep_gene_order:
                order = [genes[i] for i in idx]
        Ms = Ms[idx]
        names = [genes[i] for i in idx]
        sorted_genes[str(lin)] = pd.Series(names)
        n_bars = len(keys) + int(show_fate_probabilities)
        h = figsize[1] if figsize else min(len(genes) / 8 + 1.5, 10)
        fig = plt.figure(figsize=(figsize[0] if figsize else 10, h + 0.3 * n_bars), dpi=dpi)
        ratios = [0.3] * n_bars + [h]
        gs = fig.add_gridspec(n_bars + 1, 2, height_ratios=ratios, width_ratios=[40, 1], hspace=0.05, wspace=0.02)
        cells = nearest_cells(tr.x_test)
        b = 0
        for key in keys:
            ax = fig.add_subplot(gs[b, 0])
            col = adata.obs[key].astype("category")
            pal = list(adata.uns.get(_keys.colors(key), plt.get_cmap("tab20").colors))
            rgb = np.array(
                [
                    mcolors.to_rgb(pal[c % len(pal)]) if c >= 0 else (0.9, 0.9, 0.9)
                    for c in col.cat.codes.to_numpy()[cells]
                ]
            )
            ax.imshow(rgb[None], aspect="auto", interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([0], [key])
            b += 1
        if show_fate_probabilities:
            ax = fig.add_subplot(gs[b, 0])
            p = probs[lin].X.ravel()[cells]
            if n_convolve:
                from scipy.ndimage import convolve

                p = convolve(p, np.ones(n_convolve) / n_convolve, mode="nearest")
            base = mcolors.to_rgb(probs[lin].colors[0])
            pcmap = mcolors.LinearSegmentedColormap.from_list(str(lin), [(1, 1, 1), base])
            im2 = ax.imshow(p[None], aspect="auto", cmap=pcmap, vmin=0, vmax=1, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([0], ["fate probability"])
            if cbar:
                fig.colorbar(im2, cax=fig.add_subplot(gs[b, 1]))
            b += 1
        ax = fig.add_subplot(gs[b, 0])
        im = ax.imshow(
            Ms, aspect="auto", cmap=cmap, interpolation="nearest", vmin=0 if scale else None, vmax=1 if scale else None
        )
        if show_all_genes or len(names) <= 50:
            ax.set_yticks(range(len(names)), names, fontsize="small")
        ticks = np.linspace(0, Ms.shape[1] - 1, 5)
        ax.set_xticks(ticks, [f"{v:.3g}" for v in np.linspace(tr.x_test[0], tr.x_test[-1], 5)])
        ax.set_xlabel(xlabel)
        if cbar:
            fig.colorbar(im, cax=fig.add_subplot(gs[b, 1]), label="scaled expression" if scale else "expression")
        fig.axes[0].set_title(title if title is not None else str(lin), fontsize=fontsize)
        finish(fig, save if len(lineages) == 1 or save is None else Path(save).with_stem(f"{Path(save).stem}_{lin}"))
        figs.append(fig)
    genes_out = sorted_genes if (return_genes or return_figure) else None
    if return_figure:
        return (figs[0] if len(figs) == 1 else figs), genes_out
    if return_models:
        return trends, genes_out
    return genes_out


def cluster_trends(
    adata: Any,
    model: Any,
    genes: Sequence[str],
    lineage: str,
    time_key: str,
    backward: bool = False,
    time_range: Any = None,
    clusters: Sequence[str] | None = None,
    n_points: int = 200,
    covariate_key: str | Sequence[str] | None = None,
    ratio: float = 0.05,
    cmap: str | None = "viridis",
    norm: bool = True,
    recompute: bool = False,
    callback: Any = None,
    ncols: int = 3,
    sharey: str | bool = False,
    key: str | None = None,
    random_state: int | None = None,
    show_progress_bar: bool = True,
    n_jobs: int | None = 1,
    backend: Any = None,
    figsize: tuple[float, float] | None = None,
    dpi: int | None = None,
    save: str | Path | None = None,
    pca_kwargs: Mapping[str, Any] = types.MappingProxyType({"svd_solver": "arpack"}),
    neighbors_kwargs: Mapping[str, Any] = types.MappingProxyType({"use_rep": "X"}),
    clustering_kwargs: Mapping[str, Any] = types.MappingProxyType({}),
    return_models: bool = False,
    return_figure: bool = False,
    **kwargs: Any,
):
    r"""Cluster the trends of ``genes`` along ``lineage`` and draw each cluster (CellRank's ``pl.cluster_trends``).

    The trends (``n_points`` grid points, min-max scaled per gene when ``norm``) are stored as an
    AnnData (genes × grid) in ``adata.uns[key]`` (default ``f"lineage_{lineage}_trend"``) with the
    cluster of each gene in ``obs['clusters']``, as CellRank does. Clustering: with scanpy installed,
    CellRank's PCA → neighbours → Leiden (``pca_kwargs``, ``neighbors_kwargs``, ``clustering_kwargs``);
    without it, Ward clustering of the PCA coordinates into ``clustering_kwargs.get("n_clusters", 6)``
    groups (there is no Leiden without scanpy; the log says which was used). ``recompute=False`` reuses
    a stored clustering. Each panel shows a cluster's genes (thin) and their mean ± s.d. (thick).
    """
    import anndata as ad

    from cellfate_gpu._logging import info

    if callback is not None:
        raise NotImplementedError("callback= is not supported.")
    key = f"lineage_{lineage}_trend" if key is None else key
    genes = list(dict.fromkeys(_as_list(genes)))
    trend_ad = adata.uns.get(key) if not recompute else None
    if trend_ad is None or "clusters" not in getattr(trend_ad, "obs", {}):
        kwargs["n_test_points"] = n_points
        trends = _fit(adata, model, genes, [lineage], time_key, backward, time_range, False, show_progress_bar, kwargs)
        tr = trends[lineage]
        M = tr.mean.T.to_numpy()
        M = _minmax(M) if norm else M
        trend_ad = ad.AnnData(M)
        trend_ad.obs_names = genes
        trend_ad.var_names = [f"t{i}" for i in range(M.shape[1])]
        trend_ad.var["x_test"] = tr.x_test
        try:
            import scanpy as sc
        except ImportError:
            from scipy.cluster.hierarchy import fcluster, linkage

            n_clusters = int(clustering_kwargs.get("n_clusters", 6))
            Xc = M - M.mean(0)
            U, S, _ = np.linalg.svd(Xc, full_matrices=False)
            n_pc = int(min(50, max(1, M.shape[0] - 1), M.shape[1]))
            pcs = U[:, :n_pc] * S[:n_pc]
            trend_ad.obsm["X_pca"] = pcs
            labels = fcluster(linkage(pcs, method="ward"), t=min(n_clusters, M.shape[0]), criterion="maxclust") - 1
            info("cluster_trends: scanpy not installed; Ward clustering into %d groups", n_clusters)
        else:
            sc.pp.pca(trend_ad, random_state=random_state, **dict(pca_kwargs))
            sc.pp.neighbors(trend_ad, random_state=random_state, **dict(neighbors_kwargs))
            sc.tl.leiden(trend_ad, random_state=random_state, key_added="clusters", **dict(clustering_kwargs))
            labels = trend_ad.obs["clusters"].cat.codes.to_numpy()
        trend_ad.obs["clusters"] = pd.Categorical([str(c) for c in labels])
        adata.uns[key] = trend_ad
    cl = trend_ad.obs["clusters"].astype("category")
    shown = list(cl.cat.categories) if clusters is None else [str(c) for c in clusters]
    x = np.asarray(trend_ad.var["x_test"]) if "x_test" in trend_ad.var else np.arange(trend_ad.n_vars)
    fig, axes = grid(len(shown), ncols=ncols, figsize=figsize, dpi=dpi, panel=3.5)
    Mall = np.asarray(trend_ad.X)
    for ax, c in zip(axes, shown, strict=True):
        sub = Mall[(cl == c).to_numpy()]
        ax.plot(x, sub.T, color="#999999", lw=0.5, alpha=0.5)
        mu, sd = sub.mean(0), sub.std(0)
        ax.plot(x, mu, color="black", lw=2)
        ax.fill_between(x, mu - sd, mu + sd, color="black", alpha=0.15)
        ax.set_title(f"cluster {c} ({sub.shape[0]} genes)", fontsize="small")
        ax.set_xlabel(time_key)
    extra = trends if (return_models and "trends" in locals()) else None
    return _done(fig, save, return_figure, extra)
