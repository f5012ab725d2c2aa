r"""Pie chart of a lineage reduction over cells (CellRank's ``Lineage.plot_pie``, host side).

For a ``cells x lineages`` array :math:`X` and a reduction :math:`f` (default the mean), wedge
:math:`l` covers the share

.. math::

    \frac{a_l}{\sum_k a_k}, \qquad a = f(X, \text{axis}=0),

of the pie, in the lineage's colour, and is annotated with :math:`a_l` itself (not the percentage)
unless ``autopct`` is given.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

__all__ = ["lineage_pie", "pie_values"]


def pie_values(lineage: Any, reduction: Callable = np.mean) -> np.ndarray:
    r""":math:`a = f(X, \text{axis}=0)` as a finite, non-negative ``(n_lineages,)`` vector."""
    X = np.asarray(lineage.X if hasattr(lineage, "X") else lineage)
    a = np.asarray(reduction(X, axis=0), dtype=np.float64).ravel()
    if a.shape != (X.shape[1],):
        raise ValueError(f"reduction(X, axis=0) has shape {a.shape}, expected ({X.shape[1]},) (one per lineage).")
    if not np.isfinite(a).all() or (a < 0).any() or a.sum() <= 0:
        raise ValueError(f"A pie needs finite, non-negative values with a positive sum; reduction gave {a}.")
    return a


def _text_color(color: Any) -> str:
    """Black or white, whichever reads better on ``color`` (relative luminance)."""
    import matplotlib.colors as mcolors

    r, g, b = mcolors.to_rgb(color)
    return "black" if 0.2126 * r + 0.7152 * g + 0.0722 * b > 0.5 else "white"


def lineage_pie(
    lineage: Any,
    reduction: Callable = np.mean,
    title: str | None = None,
    legend_loc: str | None = "on data",
    legend_kwargs: Mapping[str, Any] | None = None,
    figsize: tuple[float, float] | None = None,
    dpi: float | None = None,
    save: Any = None,
    **kwargs: Any,
) -> None:
    """Draw the pie chart of :func:`pie_values`.

    Parameters
    ----------
    lineage
        A :class:`~cellfate_gpu.lineage.Lineage` with at least two lineages.
    reduction
        Called as ``reduction(X, axis=0)``; the default title is its ``__name__``.
    title
        Figure title.
    legend_loc
        ``"on data"`` (names next to the wedges, CellRank's default), a matplotlib location for a
        legend titled ``"lineages"``, or ``None``/``"none"``.
    legend_kwargs
        Keyword arguments of :meth:`matplotlib.axes.Axes.legend`.
    figsize, dpi
        Figure size and resolution.
    save
        Path to save the figure to.
    kwargs
        Keyword arguments of :meth:`matplotlib.axes.Axes.pie` (``autopct`` replaces the value labels).
    """
    import matplotlib.pyplot as plt

    from cellfate_gpu.pl._embedding import finish

    names, colors = list(lineage.names), list(lineage.colors)
    if len(names) < 2:
        raise ValueError("Cannot plot pie chart for only 1 lineage.")
    a = pie_values(lineage, reduction)
    if title is None:
        title = getattr(reduction, "__name__", None)
    own_pct = "autopct" not in kwargs
    autopct = kwargs.pop("autopct", "%1.1f%%")
    fig, ax = plt.subplots(figsize=figsize, dpi=dpi)
    out = ax.pie(
        a / a.sum(),
        labels=names if legend_loc == "on data" else None,
        autopct=autopct,
        wedgeprops={"edgecolor": "w"},
        colors=colors,
        **kwargs,
    )
    if hasattr(out, "wedges"):  # matplotlib >= 3.11: a PieContainer
        wedges, autotexts = out.wedges, out.texts[1] if len(out.texts) > 1 else []
    else:  # (wedges, texts[, autotexts])
        wedges, autotexts = out[0], out[2] if len(out) > 2 else []
    if autotexts:
        for value, color, text in zip(a, colors, autotexts, strict=True):
            text.set_color(_text_color(color))
            if own_pct:
                text.set_text(f"{value:.4f}")
    if legend_loc not in (None, "none", "on data"):
        ax.legend(wedges, names, title="lineages", loc=legend_loc, **dict(legend_kwargs or {}))
    ax.set_title(title)
    ax.set_aspect("equal")
    finish(fig, save)
