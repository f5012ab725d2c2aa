r"""Drawing cells on a 2-D embedding the way ``scanpy.pl.embedding`` does (host side).

Decision: we draw with matplotlib ourselves, always, instead of delegating to scanpy (which is not a
dependency and often absent). CellRank passes its plot keywords through to ``scanpy.pl.embedding``,
so :func:`scanpy_kwargs` accepts scanpy's names with scanpy's meaning — ``size``/``s``,
``legend_loc`` (``"right margin"``, ``"on data"``, ``"none"``, or a matplotlib location),
``legend_fontsize``, ``frameon``, ``vmin``/``vmax``, ``na_color``, ``add_outline``, ``alpha``,
``ncols``, ``wspace``/``hspace``, ``title``, ``show``, ``return_fig``, ``ax`` — and logs any other
keyword it does not use instead of failing. Defaults follow scanpy: point size
:math:`120000 / n_\text{cells}`, categorical legends in the right margin, a colour bar beside every
continuous colouring, axes without ticks labelled ``UMAP1``/``UMAP2``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["categorical_colors", "color_values", "done", "draw_cells", "embedding", "finish", "grid", "scanpy_kwargs"]

_SCANPY_KEYS = {
    "size",
    "s",
    "legend_loc",
    "legend_fontsize",
    "legend_fontweight",
    "frameon",
    "vmin",
    "vmax",
    "na_color",
    "add_outline",
    "alpha",
    "ncols",
    "wspace",
    "hspace",
    "title",
    "show",
    "return_fig",
    "ax",
    "na_in_legend",
    "color_map",
    "sort_order",
    "components",
    "projection",
    "palette",
    "edges",
}


def embedding(adata, basis: str) -> np.ndarray:
    """``obsm['X_<basis>']`` (or ``obsm[basis]``), first two columns."""
    key = basis if basis in adata.obsm else f"X_{basis}"
    if key not in adata.obsm:
        raise KeyError(f"No embedding adata.obsm[{key!r}]; available: {list(adata.obsm.keys())}.")
    return np.asarray(adata.obsm[key])[:, :2]


def grid(
    n: int,
    ncols: int = 3,
    panel: float = 3.5,
    figsize: tuple[float, float] | None = None,
    dpi: int | None = None,
    wspace: float | None = None,
    hspace: float | None = None,
):
    """A figure with ``n`` axes on a grid; unused grid cells removed."""
    import matplotlib.pyplot as plt

    ncols = max(1, min(ncols, n))
    nrows = int(np.ceil(n / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=figsize or (panel * ncols, panel * nrows), dpi=dpi, squeeze=False)
    if wspace is not None or hspace is not None:
        fig.subplots_adjust(wspace=wspace, hspace=hspace)
    axes = axes.ravel()
    for ax in axes[n:]:
        ax.remove()
    return fig, list(axes[:n])


def finish(fig, save: str | Path | None) -> Any:
    """Save if asked; return the figure."""
    if save is not None:
        fig.savefig(save, bbox_inches="tight")
    return fig


def scanpy_kwargs(kwargs: dict[str, Any], n_obs: int, *, where: str) -> dict[str, Any]:
    """Pop scanpy-style keywords from ``kwargs`` into a normalised dict; log what is ignored.

    ``s`` is an alias of ``size``; ``legend_loc="right"`` means ``"right margin"`` (as CellRank maps it).
    """
    from cellfate_gpu._logging import info

    out = {k: kwargs.pop(k) for k in list(kwargs) if k in _SCANPY_KEYS}
    if "s" in out:
        out.setdefault("size", out.pop("s"))
    out.setdefault("size", 120_000 / max(n_obs, 1))
    if out.get("legend_loc") == "right":
        out["legend_loc"] = "right margin"
    if "color_map" in out:
        out.setdefault("cmap", out.pop("color_map"))
    for k in ("sort_order", "components", "projection", "palette", "edges", "legend_fontweight", "na_in_legend"):
        if k in out:
            info("%s: scanpy keyword %s=%r is accepted but not used by this renderer", where, k, out.pop(k))
    if kwargs:
        info("%s: ignoring keywords %s (not scanpy.pl.embedding arguments we draw)", where, sorted(kwargs))
        kwargs.clear()
    return out


def categorical_colors(colors: list[str]) -> list[str]:
    """The given colours with repeats made distinct (lighter/darker shades of the repeated one).

    States named after the same cluster (``Root_1``, ``Root_2``) inherit the cluster's colour; on a
    plot they must still be told apart.
    """
    import matplotlib.colors as mcolors

    out, seen = [], {}
    for c in colors:
        h = mcolors.to_hex(c)
        k = seen.get(h, 0)
        seen[h] = k + 1
        if k == 0:
            out.append(h)
            continue
        r, g, b = mcolors.to_rgb(h)
        hh, s, v = mcolors.rgb_to_hsv((r, g, b))
        step = (k + 1) // 2 * 0.3 * (1 if k % 2 else -1)
        v2 = float(np.clip(v - step, 0.15, 1.0))
        s2 = float(np.clip(s + (0.25 if step < 0 else -0.3) * abs(step) / 0.3, 0.1, 1.0))
        out.append(mcolors.to_hex(mcolors.hsv_to_rgb((hh, s2, v2))))
    if len(set(out)) < len(out):  # still clashing: fall back to tab20 for the clashes
        import matplotlib.pyplot as plt

        tab = [mcolors.to_hex(c) for c in plt.get_cmap("tab20").colors]
        used = set()
        for i, c in enumerate(out):
            if c in used:
                out[i] = next(t for t in tab if t not in used and t not in out)
            used.add(out[i])
    return out


def _legend(ax, handles_labels, loc, fontsize) -> None:
    if loc in (None, "none"):
        return
    handles, labels = handles_labels
    if loc == "right margin":
        ax.legend(
            handles,
            labels,
            loc="center left",
            bbox_to_anchor=(1.0, 0.5),
            frameon=False,
            fontsize=fontsize or "small",
            markerscale=1.0,
        )
    else:
        ax.legend(handles, labels, loc=loc, frameon=False, fontsize=fontsize or "small")


def draw_cells(
    ax,
    xy: np.ndarray,
    values: Any,
    *,
    categorical: bool,
    names: list[str] | None = None,
    colors: list[str] | None = None,
    cmap: Any = "viridis",
    opts: dict[str, Any],
    title: str | None = None,
    basis: str = "umap",
    cbar_label: str | None = None,
) -> None:
    """Scatter ``xy`` coloured by ``values`` (category codes with ``names``/``colors``, or numbers).

    Categorical: ``NaN`` (code -1) cells first in ``na_color``, then each category; legend per
    ``legend_loc`` (default the right margin; ``"on data"`` writes names at category medians).
    Continuous: a colour bar beside the axes.
    """
    import matplotlib.colors as mcolors
    import matplotlib.pyplot as plt

    size = opts.get("size")
    alpha = opts.get("alpha")
    na_color = opts.get("na_color", "lightgray")
    loc = opts.get("legend_loc", "right margin")
    fs = opts.get("legend_fontsize")
    outline = opts.get("add_outline", False)
    if categorical:
        codes = np.asarray(values)
        rest = codes < 0
        ax.scatter(xy[rest, 0], xy[rest, 1], c=na_color, s=size, linewidths=0, rasterized=True)
        handles = []
        for j, (nm, col) in enumerate(zip(names, colors, strict=True)):
            m = codes == j
            if outline:
                ax.scatter(xy[m, 0], xy[m, 1], c="black", s=size * 2.2, linewidths=0, rasterized=True)
                ax.scatter(xy[m, 0], xy[m, 1], c="white", s=size * 1.6, linewidths=0, rasterized=True)
            ax.scatter(xy[m, 0], xy[m, 1], c=[mcolors.to_rgba(col)], s=size, alpha=alpha, linewidths=0, rasterized=True)
            handles.append(plt.Line2D([], [], marker="o", ls="", color=col, label=str(nm)))
            if loc == "on data" and m.any():
                med = np.median(xy[m], axis=0)
                ax.text(med[0], med[1], str(nm), ha="center", va="center", fontsize=fs or "small", fontweight="bold")
        if loc != "on data":
            _legend(ax, (handles, [str(n) for n in names]), loc, fs)
    else:
        v = np.asarray(values, dtype=float)
        order = np.argsort(np.where(np.isnan(v), -np.inf, v), kind="stable")  # high values on top, as scanpy
        sc = ax.scatter(
            xy[order, 0],
            xy[order, 1],
            c=v[order],
            cmap=opts.get("cmap", cmap),
            s=size,
            alpha=alpha,
            vmin=opts.get("vmin"),
            vmax=opts.get("vmax"),
            linewidths=0,
            rasterized=True,
            plotnonfinite=True,
        )
        ax.figure.colorbar(sc, ax=ax, pad=0.01, fraction=0.05, label=cbar_label)
    if title is not None:
        ax.set_title(title)
    ax.set_xticks([])
    ax.set_yticks([])
    name = basis[2:] if basis.startswith("X_") else basis
    ax.set_xlabel(f"{name.upper()}1")
    ax.set_ylabel(f"{name.upper()}2")
    if not opts.get("frameon", True):
        ax.set_frame_on(False)


def color_values(adata, key: str) -> tuple[np.ndarray, bool, list[str] | None, list[str] | None]:
    """``(values, categorical, names, colors)`` of ``adata.obs[key]`` or of gene ``key`` (from ``X``).

    Categorical colours come from ``uns[f"{key}_colors"]`` (tab20 when absent), repeats made distinct.
    """
    import pandas as pd
    import scipy.sparse as sp

    if key in adata.obs:
        col = adata.obs[key]
        if isinstance(col.dtype, pd.CategoricalDtype) or not pd.api.types.is_numeric_dtype(col):
            col = col.astype("category")
            names = [str(c) for c in col.cat.categories]
            pal = list(adata.uns.get(f"{key}_colors", []))
            if len(pal) < len(names):
                import matplotlib.pyplot as plt

                pal = [plt.get_cmap("tab20")(i % 20) for i in range(len(names))]
            return col.cat.codes.to_numpy(), True, names, categorical_colors(pal[: len(names)])
        return np.asarray(col, dtype=float), False, None, None
    if key in adata.var_names:
        x = adata[:, key].X
        return np.asarray(x.toarray() if sp.issparse(x) else x, dtype=float).ravel(), False, None, None
    raise KeyError(f"color={key!r} is neither a column of adata.obs nor a gene in adata.var_names.")


def done(
    fig, save: str | Path | None, *, return_fig: bool = False, show: bool | None = None, tight: bool = False
) -> Any:
    """End a CellRank-style plot: save if asked; return the figure only with ``return_fig``.

    CellRank's plots return ``None`` (the figure shows in a notebook); a saved, unreturned figure is
    closed so that scripts calling many plots do not keep them all open. ``tight`` lays out panels
    so that legends in the right margin and colour bars do not overlap the next panel.
    """
    import warnings

    import matplotlib.pyplot as plt

    if tight:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # axes that tight_layout cannot fit keep their place
            fig.tight_layout()
    finish(fig, save)
    if return_fig:
        return fig
    if show:
        plt.show()
    elif save is not None:
        plt.close(fig)
    return None
