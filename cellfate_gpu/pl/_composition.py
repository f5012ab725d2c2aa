"""Composition of the macrostates by a categorical annotation (CellRank's ``plot_macrostate_composition``)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from cellfate_gpu.pl._embedding import finish
from cellfate_gpu.pl._legend import position_legend

__all__ = ["macrostate_composition", "macrostate_composition_table"]


def _selected(states: pd.Series, macrostate: str | list[str] | None) -> list[str]:
    names = [str(c) for c in states.cat.categories]
    if macrostate is None:
        return names
    chosen = [macrostate] if isinstance(macrostate, str) else [str(m) for m in macrostate]
    unknown = [m for m in chosen if m not in names]
    if unknown:
        raise ValueError(f"Unknown macrostate(s) {unknown}; available: {names}.")
    if not chosen:
        raise ValueError("macrostate selects no macrostate.")
    return list(dict.fromkeys(chosen))


def macrostate_composition_table(
    estimator, key: str, macrostate: str | list[str] | None = None, *, normalize: bool = False
) -> pd.DataFrame:
    r"""Cells of each category of ``adata.obs[key]`` among each macrostate's assigned cells.

    Entry :math:`(m, c)` is :math:`|\{i : \mathrm{macrostate}_i = m,\ \mathrm{key}_i = c\}|`, over
    the cells assigned to a macrostate (``estimator.macrostates``, NaN elsewhere): the
    ``pandas.crosstab`` of the two, with every category of ``key`` as a column (zeros included).
    ``normalize=True`` divides each row by its total (fractions summing to 1 per macrostate).

    Returns
    -------
    pandas.DataFrame
        Macrostates (rows, in the estimator's order) x categories of ``key`` (columns).

    Raises
    ------
    RuntimeError
        No macrostates.
    KeyError
        ``key`` is not a column of ``adata.obs``.
    TypeError
        ``adata.obs[key]`` is not categorical.
    """
    states = estimator.macrostates
    if states is None:
        raise RuntimeError("No macrostates; compute them first with compute_macrostates(...) or fit(...).")
    adata = estimator.adata
    if key not in adata.obs:
        raise KeyError(f"No annotation adata.obs[{key!r}]; available: {list(adata.obs.columns)}.")
    col = adata.obs[key]
    if not isinstance(col.dtype, pd.CategoricalDtype):
        raise TypeError(f"adata.obs[{key!r}] must be categorical, got dtype {col.dtype}.")
    names = _selected(states, macrostate)
    codes = states.cat.codes.to_numpy()
    cats = list(col.cat.categories)
    ccodes = col.cat.codes.to_numpy()
    counts = np.zeros((len(names), len(cats)), dtype=np.int64)
    all_names = [str(c) for c in states.cat.categories]
    for r, nm in enumerate(names):
        sel = ccodes[(codes == all_names.index(nm)) & (ccodes >= 0)]
        counts[r] = np.bincount(sel, minlength=len(cats))
    df = pd.DataFrame(counts, index=pd.Index(names, name="macrostates"), columns=pd.Index(cats, name=key))
    if normalize:
        totals = df.sum(axis=1).replace(0, np.nan)
        df = df.div(totals, axis=0).fillna(0.0)
    return df


def macrostate_composition(
    estimator,
    key: str,
    macrostate: str | list[str] | None = None,
    width: float = 0.8,
    title: str | None = None,
    labelrot: float = 45,
    legend_loc: str | None = "upper right out",
    figsize: tuple[float, float] | None = None,
    dpi: int | None = None,
    save: Any = None,
    show: bool = True,
    *,
    normalize: bool = False,
):
    """Stacked bars, one per macrostate, of the categories of ``adata.obs[key]`` among its cells.

    As CellRank: bar heights are cell counts (:func:`macrostate_composition_table`), stacked in the
    order of the categories, coloured by ``uns[f"{key}_colors"]`` (a default palette without it);
    categories absent from every shown macrostate are left out of the legend, which sits outside
    the axes (``legend_loc``, see :func:`cellfate_gpu.pl._legend.position_legend`).

    Parameters
    ----------
    estimator
        A GPCCA with macrostates.
    key
        Categorical column of ``adata.obs``.
    macrostate
        Macrostate(s) to show (default: all).
    width
        Bar width, clipped to :math:`[0, 1]`.
    title
        Default ``"distribution over {key}"``.
    labelrot
        Rotation of the macrostate names.
    legend_loc
        Where the legend goes; ``None`` for none.
    figsize, dpi, save
        Figure size, resolution, and a path to save to.
    show
        ``False``: return the axes.
    normalize
        Fractions of each macrostate's cells instead of counts (each bar sums to 1).

    Returns
    -------
    matplotlib.axes.Axes or None
        The axes when ``show=False``.
    """
    import matplotlib.colors as mcolors
    import matplotlib.pyplot as plt

    table = macrostate_composition_table(estimator, key, macrostate, normalize=normalize)
    adata = estimator.adata
    cats = list(table.columns)
    palette = list(adata.uns.get(f"{key}_colors", []))
    if len(palette) < len(cats):
        palette = [mcolors.to_hex(plt.get_cmap("tab20")(i % 20)) for i in range(len(cats))]
    width = min(1.0, max(0.0, float(width)))
    fig, ax = plt.subplots(figsize=figsize, dpi=dpi)
    x = np.arange(len(table))
    bottom = np.zeros(len(table))
    for j, cat in enumerate(cats):
        h = table[cat].to_numpy(dtype=float)
        if h.sum() > 0:  # categories absent here get no bar and no legend entry
            ax.bar(x, h, width, bottom=bottom, label=str(cat), color=palette[j], edgecolor="black", linewidth=0.5)
            bottom += h
    ax.set_xticks(x, list(table.index), rotation=labelrot, ha="center" if labelrot in (0, 90) else "right")
    top = float(bottom.max()) if bottom.size else 1.0
    ax.set_ylim(0, top * 1.05 if top > 0 else 1.0)
    ax.set_xlabel("macrostate")
    ax.set_ylabel("fraction of cells" if normalize else "frequency")
    ax.set_title(f"distribution over {key}" if title is None else title)
    position_legend(ax, legend_loc, title=key)
    fig.tight_layout()
    finish(fig, save)
    return None if show else ax
