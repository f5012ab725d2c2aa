"""Genes' correlations with two lineages against each other (CellRank's ``plot_lineage_drivers_correlation``)."""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from cellfate_gpu import _keys
from cellfate_gpu._logging import warning
from cellfate_gpu.lineage import default_colors
from cellfate_gpu.pl._embedding import categorical_colors, finish, scanpy_kwargs
from cellfate_gpu.pl._legend import position_legend

__all__ = ["lineage_drivers_correlation"]


def _drivers(estimator, cols: list[str], use_raw: bool) -> pd.DataFrame:
    """The drivers table holding ``cols``: the estimator's, else ``varm['terminal_lineage_drivers']``."""
    df = getattr(estimator, "lineage_drivers", None)
    if df is not None and all(c in df for c in cols):
        return df
    key = _keys.lineage_drivers(estimator.backward)
    adata = estimator.adata
    if not use_raw and key in adata.varm:
        stored = pd.DataFrame(adata.varm[key], index=adata.var_names)
        if all(c in stored for c in cols):
            return stored
    lx, ly = (c[: -len("_corr")] for c in cols)
    raise RuntimeError(
        f"No correlations {cols} for lineages {lx!r} and {ly!r}; compute them first with "
        f"compute_lineage_drivers(lineages=[{lx!r}, {ly!r}], use_raw={use_raw})."
    )


def lineage_drivers_correlation(
    estimator,
    lineage_x: str,
    lineage_y: str,
    color: str | None = None,
    gene_sym: str | None = None,
    gene_sets: Mapping[str, Sequence[str]] | None = None,
    gene_sets_colors: Sequence[str] | None = None,
    use_raw: bool = False,
    cmap: str = "RdYlBu_r",
    fontsize: int = 12,
    adjust_text: bool = False,
    legend_loc: str | None = "upper right out",
    figsize: tuple[float, float] | None = (4, 4),
    dpi: int | None = None,
    save: Any = None,
    show: bool = True,
    **kwargs: Any,
):
    r"""Scatter of every gene's correlation with ``lineage_x`` (x) and with ``lineage_y`` (y).

    The coordinates are the ``{lineage}_corr`` columns of the lineage drivers
    (``compute_lineage_drivers``): :math:`x_g = \mathrm{corr}(e_g, p_x)`,
    :math:`y_g = \mathrm{corr}(e_g, p_y)` for expression :math:`e_g` and fate probabilities
    :math:`p`. Grey lines mark :math:`x = 0` and :math:`y = 0`; genes driving one lineage against
    the other lie in the off-diagonal quadrants.

    Parameters
    ----------
    lineage_x, lineage_y
        Lineages on the axes.
    color
        Colour the genes by a column of ``adata.var`` or of the drivers table (e.g. ``"A_qval"``):
        numbers with a colour bar (``cmap``), categories with a legend.
    gene_sym
        Column of ``adata.var`` with gene symbols: ``gene_sets`` name genes by it and the
        annotations show it (CellRank 1's argument).
    gene_sets
        ``{set name: genes}`` to annotate, one colour per set, with a legend of the sets.
    gene_sets_colors
        One colour per set; default the lineage colours when the set names are lineages, else a
        default palette.
    use_raw
        Genes of ``adata.raw`` (as the drivers were computed with ``use_raw=True``).
    fontsize
        Size of the annotations.
    adjust_text
        Move annotations apart with the ``adjustText`` package (without it: a logged warning, the
        labels stay put).
    legend_loc
        Legend of the sets / categories (``None``: none). Default outside the axes; CellRank's
        default ``"best"`` (inside, over the data) is still accepted.
    figsize, dpi, save
        Figure size, resolution, and a path to save to.
    show
        ``False``: return the axes.
    kwargs
        scanpy scatter keywords: ``size``/``s``, ``alpha``, ``title``, ``vmin``/``vmax``, ...

    Returns
    -------
    matplotlib.axes.Axes or None
        The axes when ``show=False``.
    """
    import matplotlib.patheffects as pe
    import matplotlib.pyplot as plt

    adata = estimator.adata
    if use_raw and adata.raw is None:
        warning("plot_lineage_drivers_correlation: adata.raw is None; using use_raw=False")
        use_raw = False
    var = adata.raw.var if use_raw else adata.var
    cols = [f"{lineage_x}_corr", f"{lineage_y}_corr"]
    df = _drivers(estimator, cols, use_raw)
    genes = df.index[df.index.isin(var.index)]
    df = df.loc[genes]
    x, y = df[cols[0]].to_numpy(dtype=float), df[cols[1]].to_numpy(dtype=float)
    if color is not None and not isinstance(color, str):
        raise TypeError(f"color must be a column name or None, got {type(color).__name__}.")
    if color is not None and color not in var and color not in df:
        raise KeyError(
            f"color={color!r} is neither a column of adata{'.raw' if use_raw else ''}.var nor of the drivers table."
        )
    user_size = "size" in kwargs or "s" in kwargs
    opts = scanpy_kwargs(kwargs, len(genes), where="plot_lineage_drivers_correlation")
    size = opts["size"] if user_size else float(np.clip(6000 / max(len(genes), 1), 4, 40))
    fig, ax = plt.subplots(figsize=figsize, dpi=dpi)
    handles_from_sets = False
    if color is None:
        ax.scatter(x, y, s=size, c="#7f7f7f", alpha=opts.get("alpha"), linewidths=0)
    else:
        values = (var[color] if color in var else df[color]).reindex(genes)
        if isinstance(values.dtype, pd.CategoricalDtype) or not pd.api.types.is_numeric_dtype(values):
            values = values.astype("category")
            cats = [str(c) for c in values.cat.categories]
            palette = list(adata.uns.get(f"{color}_colors", [])) if not use_raw else []
            palette = categorical_colors(
                palette[: len(cats)] if len(palette) >= len(cats) else default_colors(len(cats))
            )
            codes = values.cat.codes.to_numpy()
            ax.scatter(x[codes < 0], y[codes < 0], s=size, c="lightgray", linewidths=0)
            for j, (cat, col) in enumerate(zip(cats, palette, strict=True)):
                m = codes == j
                ax.scatter(x[m], y[m], s=size, c=[col], alpha=opts.get("alpha"), linewidths=0, label=cat)
            handles_from_sets = True
        else:
            v = values.to_numpy(dtype=float)
            order = np.argsort(np.where(np.isnan(v), -np.inf, v), kind="stable")
            sc = ax.scatter(
                x[order],
                y[order],
                c=v[order],
                s=size,
                cmap=opts.get("cmap", cmap),
                alpha=opts.get("alpha"),
                vmin=opts.get("vmin"),
                vmax=opts.get("vmax"),
                linewidths=0,
                plotnonfinite=True,
            )
            # below the axes when a legend of gene sets takes the right side, else beside
            below = gene_sets is not None and legend_loc not in (None, "none")
            fig.colorbar(
                sc,
                ax=ax,
                label=color,
                orientation="horizontal" if below else "vertical",
                pad=0.2 if below else 0.02,
                fraction=0.05,
            )
    if len(genes):
        ax.hlines(0, np.nanmin(x), np.nanmax(x), color="grey", alpha=0.5, zorder=-1)
        ax.vlines(0, np.nanmin(y), np.nanmax(y), color="grey", alpha=0.5, zorder=-1)
    ax.set_xlabel(cols[0])
    ax.set_ylabel(cols[1])
    ax.set_title(opts.get("title", color))
    if gene_sets is not None:
        sets = list(gene_sets)
        if gene_sets_colors is None:
            fates = getattr(estimator, "fate_probabilities", None)
            if fates is not None and all(s in fates.names for s in sets):
                gene_sets_colors = [fates.colors[fates.names.index(s)] for s in sets]
            else:
                gene_sets_colors = default_colors(len(sets))
        if len(gene_sets_colors) != len(sets):
            raise ValueError(f"gene_sets_colors has {len(gene_sets_colors)} colours for {len(sets)} gene sets.")
        if gene_sym is not None and gene_sym not in var:
            raise KeyError(f"gene_sym={gene_sym!r} is not a column of adata{'.raw' if use_raw else ''}.var.")
        symbols = pd.Series(var[gene_sym].astype(str).to_numpy() if gene_sym else var.index.to_numpy(), index=var.index)
        symbols = symbols.reindex(genes)
        stroke = [pe.Stroke(linewidth=2, foreground="w", alpha=0.8), pe.Normal()]
        texts = []
        for name, col in zip(sets, gene_sets_colors, strict=True):
            wanted = {str(g) for g in gene_sets[name]}
            hit = np.flatnonzero(symbols.isin(wanted).to_numpy())
            for i in hit:
                texts.append(
                    ax.annotate(
                        symbols.iloc[i],
                        xy=(x[i], y[i]),
                        xytext=(4, -2),
                        textcoords="offset points",
                        va="top",
                        ha="left",
                        size=fontsize,
                        color=col,
                        path_effects=stroke,
                        arrowprops={"arrowstyle": "-", "color": col, "lw": 0.5, "shrinkA": 0, "shrinkB": 2},
                    )
                )
            if hit.size:
                ax.scatter(x[hit], y[hit], s=size * 1.5, c=[col], edgecolors="black", linewidths=0.5, label=name)
                handles_from_sets = True
        if adjust_text and texts:
            if importlib.util.find_spec("adjustText") is None:
                warning(
                    "plot_lineage_drivers_correlation: adjust_text=True needs the adjustText package "
                    "(pip install adjustText); the labels are left where they are"
                )
            else:
                import adjustText

                adjustText.adjust_text(texts, x=x, y=y, ax=ax)
                texts = []
        _stack_labels(ax, texts, fontsize)
    if handles_from_sets:
        position_legend(ax, legend_loc)
    fig.tight_layout()
    finish(fig, save)
    return None if show else ax


def _stack_labels(ax, texts: list, fontsize: float) -> None:
    """Keep gene labels inside the axes and off each other (what ``adjustText`` does, simply).

    A label whose point lies in the right half of the axes is drawn to the left of it; labels on the
    same side whose points lie within one line height of each other (in display space) are stacked,
    each one line (``1.2 * fontsize`` points) below the previous; the annotation's leader line joins
    a moved label to its point.
    """
    if not texts:
        return
    fig = ax.figure
    fig.canvas.draw()
    to_px = fig.dpi / 72.0
    line = 1.2 * float(fontsize)
    mid = float(np.mean(ax.get_xlim()))
    pts = np.array([ax.transData.transform(t.xy) for t in texts])
    for right in (False, True):
        idx = [k for k, t in enumerate(texts) if bool(t.xy[0] > mid) is right]
        idx.sort(key=lambda k: -pts[k, 1])  # top to bottom
        last_y = None  # display y (pixels) of the previous label's top
        for k in idx:
            t = texts[k]
            dx = -4.0 if right else 4.0
            t.set_ha("right" if right else "left")
            top = pts[k, 1] - 2 * to_px
            if last_y is not None and top > last_y - line * to_px:
                top = last_y - line * to_px
            dy = (top - pts[k, 1]) / to_px
            t.set_position((dx, dy))
            last_y = top
