"""Macrostates (and terminal/initial states) on an embedding or in time, and the coarse-grained transition matrix."""

from __future__ import annotations

import types
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from cellfate_gpu._logging import warning
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
from cellfate_gpu.pl._fate import _titles, plot_lineage_values

__all__ = ["coarse_T", "macrostates"]

_TITLES = {"all": "macrostates", "terminal": "terminal states", "initial": "initial states"}


def _states(estimator, which: str) -> tuple[pd.Series, list[str], pd.Series | None]:
    if which == "all":
        mem = estimator.macrostates_memberships
        return estimator.macrostates, (mem.colors if mem is not None else None), None
    if which == "terminal":
        return (
            estimator.terminal_states,
            estimator._term_colors,
            getattr(estimator, "terminal_states_probabilities", None),
        )
    if which == "initial":
        return (
            estimator.initial_states,
            estimator._init_colors,
            getattr(estimator, "initial_states_probabilities", None),
        )
    raise ValueError(f"which must be 'all', 'terminal' or 'initial', got {which!r}.")


def _memberships(estimator, states: pd.Series, colors: list[str], probs: pd.Series | None) -> Lineage:
    """Per-state continuous values: macrostate memberships for the named states, else the state probability."""
    names = [str(c) for c in states.cat.categories]
    mem = getattr(estimator, "macrostates_memberships", None)
    if mem is not None and all(n in mem.names for n in names):
        return Lineage(mem[names].X, names=names, colors=colors)
    if probs is None:
        raise RuntimeError("No memberships to draw with discrete=False; compute macrostates first.")
    codes = states.cat.codes.to_numpy()
    X = np.zeros((codes.size, len(names)))
    p = np.asarray(probs, dtype=float)
    for j in range(len(names)):
        X[codes == j, j] = p[codes == j]
    return Lineage(X, names=names, colors=colors)


def macrostates(
    estimator,
    which: str = "all",
    states: str | list[str] | None = None,
    color: str | list[str] | None = None,
    discrete: bool = True,
    mode: str = "embedding",
    time_key: str = "latent_time",
    basis: str = "umap",
    same_plot: bool = True,
    title: str | list[str] | None = None,
    cmap: str = "viridis",
    *,
    ncols: int | None = None,
    save: Any = None,
    figsize: tuple[float, float] | None = None,
    dpi: int | None = None,
    **kwargs: Any,
):
    """Macrostates (``which="all"``), terminal or initial states (CellRank's ``plot_macrostates``).

    ``discrete=True`` draws the state assignment: one panel (``same_plot``) with a distinct colour per
    state (states sharing a cluster colour, e.g. ``Root_1``/``Root_2``, get distinct shades), other
    cells grey, the legend in the right margin (``legend_loc`` as in scanpy; ``"on data"`` writes the
    names at the states' medians); or one panel per state. ``discrete=False`` (or ``mode="time"``)
    draws each state's membership (macrostate memberships; for terminal/initial states without
    memberships, the state probability) like :func:`fate_probabilities`, with colour bars.
    ``color`` adds panels of ``adata.obs`` columns or genes before the states.
    """
    assignment, colors, probs = _states(estimator, which)
    if assignment is None:
        raise RuntimeError(f"No {_TITLES.get(which, which)} to plot; compute them first.")
    adata = estimator.adata
    names = [str(c) for c in assignment.cat.categories]
    colors = categorical_colors(
        list(colors) if colors is not None and len(colors) == len(names) else [f"C{i % 10}" for i in range(len(names))]
    )
    sel = names if states is None else ([states] if isinstance(states, str) else list(dict.fromkeys(states)))
    bad = [s for s in sel if s not in names]
    if bad:
        raise ValueError(f"Unknown states {bad}; available: {names}.")
    if not discrete or mode == "time":
        if discrete and mode == "time":
            warning("plot_macrostates: mode='time' draws memberships (discrete=False)")
        mem = _memberships(estimator, assignment, colors, probs)
        return plot_lineage_values(
            adata,
            mem,
            what=_TITLES[which],
            states=sel,
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
    if mode != "embedding":
        raise ValueError(f"mode must be 'embedding' or 'time', got {mode!r}.")
    return_fig = bool(kwargs.pop("return_fig", False) or kwargs.pop("return_figure", False))
    show = kwargs.pop("show", None)
    ncols = kwargs.pop("ncols", ncols) or 4
    opts = scanpy_kwargs(kwargs, adata.n_obs, where="plot_macrostates")
    extra = [] if color is None else ([color] if isinstance(color, str) else list(dict.fromkeys(color)))
    xy = embedding(adata, basis)
    codes_all = assignment.cat.codes.to_numpy()
    groups = [sel] if (same_plot or len(sel) == 1) else [[s] for s in sel]
    default_titles = extra + ([_TITLES[which]] if len(groups) == 1 else [f"{_TITLES[which]} {g[0]}" for g in groups])
    titles = _titles(title, default_titles)
    fig, axes = grid(
        len(extra) + len(groups),
        ncols=ncols,
        figsize=figsize,
        dpi=dpi,
        panel=5 if same_plot else 4,
        wspace=opts.get("wspace"),
        hspace=opts.get("hspace"),
    )
    for ax, key, ttl in zip(axes[: len(extra)], extra, titles, strict=False):
        v, cat, cn, cc = color_values(adata, key)
        draw_cells(ax, xy, v, categorical=cat, names=cn, colors=cc, cmap=cmap, opts=opts, title=ttl, basis=basis)
    for ax, group, ttl in zip(axes[len(extra) :], groups, titles[len(extra) :], strict=True):
        idx = [names.index(g) for g in group]
        remap = np.full(len(names) + 1, -1)
        remap[idx] = np.arange(len(idx))
        codes = remap[codes_all]  # -1 (NaN) stays -1 via the last slot
        o = dict(opts)
        o.setdefault("size", opts["size"])
        # state cells drawn larger, as CellRank overlays them with an outline
        draw_cells(
            ax,
            xy,
            codes,
            categorical=True,
            names=group,
            colors=[colors[i] for i in idx],
            opts=o,
            title=ttl,
            basis=basis,
        )
    return done(fig, save, return_fig=return_fig, show=show, tight=len(fig.axes) > 1)


def coarse_T(
    estimator,
    show_stationary_dist: bool = True,
    show_initial_dist: bool = False,
    order: str | None = "stability",
    cmap: str = "viridis",
    xtick_rotation: float = 45,
    annotate: bool = True,
    show_cbar: bool = True,
    title: str | None = None,
    figsize: tuple[float, float] = (8, 8),
    dpi: int = 80,
    save: Any = None,
    text_kwargs: Mapping[str, Any] = types.MappingProxyType({}),
    **kwargs: Any,
):
    r"""Heatmap of the coarse-grained transition matrix (CellRank's ``plot_coarse_T``).

    ``order``: ``"stability"`` (ascending diagonal), ``"incoming"`` / ``"outgoing"`` (ascending
    off-diagonal column / row mass), ``"stat_dist"`` (ascending coarse stationary distribution;
    ``"stability"`` if there is none) or ``None`` (as computed). ``annotate`` writes each entry;
    ``show_stationary_dist`` / ``show_initial_dist`` add bars of :math:`\pi` (right) and the coarse
    initial distribution (top); ``show_cbar`` adds a colour bar.
    """
    import matplotlib.pyplot as plt

    df = estimator.coarse_T
    if df is None:
        raise RuntimeError("No coarse T; compute macrostates first.")
    return_fig = bool(kwargs.pop("return_fig", False) or kwargs.pop("return_figure", False))
    show = kwargs.pop("show", None)
    stat = getattr(estimator, "coarse_stationary_distribution", None)
    init = getattr(estimator, "coarse_initial_distribution", None)
    if order is not None:
        if order not in ("stability", "incoming", "outgoing", "stat_dist"):
            raise ValueError(f"order must be 'stability', 'incoming', 'outgoing', 'stat_dist' or None, got {order!r}.")
        if order == "stat_dist" and stat is None:
            warning("plot_coarse_T: no coarse stationary distribution; ordering by 'stability'")
            order = "stability"
        M = df.to_numpy()
        key = {
            "stability": np.diag(M),
            "incoming": M.sum(0) - np.diag(M),
            "outgoing": M.sum(1) - np.diag(M),
            "stat_dist": None if stat is None else np.asarray(stat, dtype=float),
        }[order]
        names = list(df.index[np.argsort(key, kind="stable")])
        df = df.loc[names, names]
        stat = None if stat is None else stat.loc[names]
        init = None if init is None else init.loc[names]
    n = len(df)
    fig = plt.figure(figsize=figsize, dpi=dpi)
    top = 1 if (show_initial_dist and init is not None) else 0
    right = 1 if (show_stationary_dist and stat is not None) else 0
    gs = fig.add_gridspec(
        1 + top,
        2 + right,
        height_ratios=([1] if top else []) + [n],
        width_ratios=[n] + ([1] if right else []) + [0.35],
        wspace=0.05,
        hspace=0.05,
    )
    ax = fig.add_subplot(gs[top, 0])
    im = ax.imshow(df.to_numpy(), cmap=cmap, vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(range(n), df.columns, rotation=xtick_rotation, ha="right" if xtick_rotation % 90 else "center")
    ax.set_yticks(range(n), df.index)
    if annotate:
        tk = {"fontsize": "small", **dict(text_kwargs)}
        for i in range(n):
            for j in range(n):
                v = df.iat[i, j]
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", color="white" if v < 0.5 else "black", **tk)
    if right:
        axs = fig.add_subplot(gs[top, 1], sharey=ax)
        axs.imshow(np.asarray(stat, dtype=float)[:, None], cmap=cmap, vmin=0, vmax=1, aspect="auto")
        axs.set_xticks([0], ["π"])
        axs.tick_params(labelleft=False)
        if annotate:
            for i, v in enumerate(np.asarray(stat, dtype=float)):
                axs.text(
                    0,
                    i,
                    f"{v:.2f}",
                    ha="center",
                    va="center",
                    fontsize="x-small",
                    color="white" if v < 0.5 else "black",
                )
    if top:
        axi = fig.add_subplot(gs[0, 0], sharex=ax)
        axi.imshow(np.asarray(init, dtype=float)[None, :], cmap=cmap, vmin=0, vmax=1, aspect="auto")
        axi.set_yticks([0], ["initial"])
        axi.tick_params(labelbottom=False)
    if show_cbar:
        fig.colorbar(im, cax=fig.add_subplot(gs[top, 1 + right]), label="transition probability")
    (fig.axes[0] if not top else axi).set_title(title if title is not None else "coarse-grained transition matrix")
    return done(fig, save, return_fig=return_fig, show=show, tight=len(fig.axes) > 1)
