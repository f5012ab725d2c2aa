"""Fate probabilities on an embedding (host side)."""

from __future__ import annotations

from typing import Any

import numpy as np

from cellfate_gpu import _keys
from cellfate_gpu._logging import info
from cellfate_gpu.lineage import Lineage
from cellfate_gpu.pl._embedding import (
    categorical_colors,
    color_values,
    done,
    draw_cells,
    embedding,
    grid,
    scanpy_kwargs,
)

__all__ = ["fate_probabilities", "plot_lineage_values", "resolve_fate_probabilities"]


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


def plot_lineage_values(
    adata: Any,
    probs: Lineage,
    *,
    what: str,
    states: Any = None,
    color: str | list[str] | None = None,
    mode: str = "embedding",
    time_key: str | None = None,
    basis: str = "umap",
    same_plot: bool = True,
    title: str | list[str] | None = None,
    cmap: str = "viridis",
    ncols: int | None = None,
    figsize: tuple[float, float] | None = None,
    dpi: int | None = None,
    save: Any = None,
    kwargs: dict[str, Any],
):
    """Continuous per-lineage values (fate probabilities, memberships) on an embedding or against time."""
    import matplotlib.colors as mcolors

    if mode not in ("embedding", "time"):
        raise ValueError(f"mode must be 'embedding' or 'time', got {mode!r}.")
    names = probs.names if states is None else ([states] if isinstance(states, str) else list(states))
    if not names:
        raise ValueError("No lineages selected (states=[]).")
    probs = probs[names]
    colors = categorical_colors(probs.colors)
    extra = [] if color is None else ([color] if isinstance(color, str) else list(dict.fromkeys(color)))
    return_fig = bool(kwargs.pop("return_fig", False) or kwargs.pop("return_figure", False))
    show = kwargs.pop("show", None)
    ncols = kwargs.pop("ncols", ncols)
    opts = scanpy_kwargs(kwargs, adata.n_obs, where=what)
    ncols = ncols or 4
    if mode == "time":
        if time_key is None or time_key not in adata.obs:
            raise KeyError(f"mode='time' needs time_key, a column of adata.obs; got {time_key!r}.")
        t = np.asarray(adata.obs[time_key], dtype=float)
        titles = _titles(title, [f"{what} {n}" for n in probs.names])
        fig, axes = grid(probs.nlin, ncols=ncols, figsize=figsize, dpi=dpi, panel=4)
        for j, ax in enumerate(axes):
            y = probs.X[:, j]
            key = extra[j] if len(extra) == probs.nlin else (extra[0] if extra else None)
            if key is None:
                ax.scatter(
                    t, y, s=opts["size"] / 4, c=colors[j], alpha=opts.get("alpha"), linewidths=0, rasterized=True
                )
            else:
                v, cat, cnames, ccols = color_values(adata, key)
                if cat:
                    for i, (nm, c) in enumerate(zip(cnames, ccols, strict=True)):
                        m = v == i
                        ax.scatter(t[m], y[m], s=opts["size"] / 4, c=c, label=nm, linewidths=0, rasterized=True)
                    ax.legend(
                        loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False, fontsize="small", markerscale=3
                    )
                else:
                    sc = ax.scatter(t, y, s=opts["size"] / 4, c=v, cmap=cmap, linewidths=0, rasterized=True)
                    fig.colorbar(sc, ax=ax, pad=0.01, label=key)
            ax.set_xlabel(time_key)
            ax.set_ylabel("probability")
            ax.set_ylim(-0.02, 1.02)
            ax.set_title(titles[j])
        return done(fig, save, return_fig=return_fig, show=show, tight=len(fig.axes) > 1)
    xy = embedding(adata, basis)
    if same_plot and probs.nlin > 1:
        if extra:
            info("%s: ignoring color=%r with same_plot=True (as CellRank)", what, extra)
        fig, (ax,) = grid(1, figsize=figsize, dpi=dpi, panel=5)
        best = np.argmax(probs.X, axis=1)
        rgba = np.array([mcolors.to_rgba(c) for c in colors])[best]
        rgba[:, 3] = np.clip(probs.X[np.arange(best.size), best], 0.05, 1.0)
        order = np.argsort(rgba[:, 3], kind="stable")
        ax.scatter(xy[order, 0], xy[order, 1], c=rgba[order], s=opts["size"], linewidths=0, rasterized=True)
        import matplotlib.pyplot as plt

        handles = [
            plt.Line2D([], [], marker="o", ls="", color=c, label=n) for n, c in zip(probs.names, colors, strict=True)
        ]
        loc = opts.get("legend_loc", "right margin")
        if loc not in (None, "none"):
            if loc in ("right margin", "on data"):
                ax.legend(
                    handles=handles,
                    loc="center left",
                    bbox_to_anchor=(1.0, 0.5),
                    frameon=False,
                    fontsize=opts.get("legend_fontsize") or "small",
                )
            else:
                ax.legend(handles=handles, loc=loc, frameon=False, fontsize=opts.get("legend_fontsize") or "small")
        ax.set_title(_titles(title, [what])[0])
        ax.set_xticks([])
        ax.set_yticks([])
        nm = basis[2:] if basis.startswith("X_") else basis
        ax.set_xlabel(f"{nm.upper()}1")
        ax.set_ylabel(f"{nm.upper()}2")
        return done(fig, save, return_fig=return_fig, show=show, tight=len(fig.axes) > 1)
    titles = _titles(title, extra + [f"{what} {n}" for n in probs.names])
    fig, axes = grid(
        len(extra) + probs.nlin,
        ncols=ncols,
        figsize=figsize,
        dpi=dpi,
        panel=4,
        wspace=opts.get("wspace"),
        hspace=opts.get("hspace"),
    )
    for ax, key, ttl in zip(axes[: len(extra)], extra, titles, strict=False):
        v, cat, cnames, ccols = color_values(adata, key)
        draw_cells(ax, xy, v, categorical=cat, names=cnames, colors=ccols, cmap=cmap, opts=opts, title=ttl, basis=basis)
    cont = dict(opts)
    cont.setdefault("vmin", 0.0)
    cont.setdefault("vmax", 1.0)
    for j, ax in enumerate(axes[len(extra) :]):
        draw_cells(
            ax,
            xy,
            probs.X[:, j],
            categorical=False,
            cmap=cmap,
            opts=cont,
            title=titles[len(extra) + j],
            basis=basis,
            cbar_label="probability",
        )
    return done(fig, save, return_fig=return_fig, show=show, tight=len(fig.axes) > 1)


def _titles(title: Any, default: list[str]) -> list[str]:
    if title is None:
        return default
    t = [title] if isinstance(title, str) else list(title)
    return t + default[len(t) :] if len(t) < len(default) else t


def fate_probabilities(
    adata_or_estimator: Any,
    states: str | list[str] | None = None,
    color: str | list[str] | None = None,
    mode: str = "embedding",
    time_key: str | None = None,
    basis: str = "umap",
    same_plot: bool = True,
    title: str | list[str] | None = None,
    cmap: str = "viridis",
    *,
    lineages: list[str] | None = None,
    backward: bool = False,
    ncols: int | None = None,
    save: Any = None,
    figsize: tuple[float, float] | None = None,
    dpi: int | None = None,
    **kwargs: Any,
):
    r"""Fate probabilities on an embedding or along pseudotime (CellRank's ``plot_fate_probabilities``).

    Parameters
    ----------
    adata_or_estimator
        An estimator with computed fate probabilities, or an AnnData holding them in
        ``obsm['lineages_fwd']`` (``_bwd`` with ``backward=True``).
    states
        Lineages to show (``"A, B"`` merges); default all. ``lineages`` is an alias.
    color
        ``adata.obs`` columns or genes drawn first, in their own panels (``same_plot=False``), or
        colouring the cells in ``mode="time"`` (one key, or one per lineage).
    mode
        ``"embedding"`` or ``"time"`` (probability against ``adata.obs[time_key]``, one panel per lineage).
    same_plot
        One panel: each cell takes its most likely lineage's colour with opacity equal to that
        probability (legend in the right margin). Otherwise one panel per lineage coloured by
        :math:`p_{il}` on ``cmap`` over :math:`[0, 1]`, each with a colour bar.
    kwargs
        scanpy.pl.embedding keywords (``size``/``s``, ``legend_loc``, ``frameon``, ``ncols``, ``alpha``,
        ``return_fig``, ``show``, ...); see :mod:`cellfate_gpu.pl._embedding`.

    Returns
    -------
    The figure with ``return_fig=True``, else ``None`` (as CellRank).
    """
    adata, probs = resolve_fate_probabilities(adata_or_estimator, backward)
    return plot_lineage_values(
        adata,
        probs,
        what="fate probabilities",
        states=states if states is not None else lineages,
        color=color,
        mode=mode,
        time_key=time_key,
        basis=basis,
        same_plot=same_plot,
        title=title,
        cmap=cmap,
        ncols=ncols,
        figsize=figsize,
        dpi=dpi,
        save=save,
        kwargs=kwargs,
    )
