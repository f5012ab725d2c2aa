"""The terminal state identification (TSI) curve of a GPCCA estimator (CellRank's ``plot_tsi``)."""

from __future__ import annotations

from typing import Any

import numpy as np

from cellfate_gpu._logging import info
from cellfate_gpu.pl._embedding import finish

__all__ = ["tsi"]

#: ``seaborn.lineplot`` keywords (CellRank passes kwargs there) without a meaning for two step curves.
_SEABORN_ONLY = {"hue", "hue_order", "hue_norm", "sizes", "size_order", "style_order", "dashes", "markers",
                 "units", "estimator", "errorbar", "n_boot", "seed", "orient", "sort", "err_style", "err_kws",
                 "legend", "style", "size", "ci"}  # fmt: skip


def _method_label(estimator) -> str:
    kernel = estimator.kernel
    if kernel.expression is None:
        return type(kernel).__name__
    return " + ".join(dict.fromkeys(type(k).__name__ for k in kernel.kernels))


def tsi(
    estimator,
    n_macrostates: int | None = None,
    x_offset: tuple[float, float] = (0.2, 0.2),
    y_offset: tuple[float, float] = (0.1, 0.1),
    figsize: tuple[float, float] = (6, 4),
    dpi: int | None = None,
    save: Any = None,
    **kwargs: Any,
):
    r"""Identified terminal states :math:`I_n` against the number of macrostates :math:`n` (steps).

    Drawn with the optimal identification :math:`\min(n, K)` (dashed), from the table that
    ``estimator.tsi(...)`` computed; the area between the curves is what the TSI score measures.
    The legend sits below the axes, outside the data (as CellRank's). ``kwargs`` go to
    :meth:`~matplotlib.axes.Axes.step` of the estimator's curve (``label=`` names it; default the
    kernel's class); seaborn's ``palette`` (a dict by label, a list or a colormap name) sets its
    colour, and seaborn-only keywords are logged and not used.

    Parameters
    ----------
    n_macrostates
        Show :math:`n \le` ``n_macrostates`` only (default: all computed).
    x_offset, y_offset
        Margins added below/above the data range on each axis.

    Returns
    -------
    matplotlib.axes.Axes

    Raises
    ------
    RuntimeError
        :meth:`~cellfate_gpu.estimators.GPCCA.tsi` has not been called.
    """
    import matplotlib.pyplot as plt

    table = getattr(estimator, "_tsi", None)
    if table is None:
        raise RuntimeError("Compute the TSI first: estimator.tsi(n_macrostates, terminal_states, cluster_key).")
    if n_macrostates is not None:
        table = table[table["number_of_macrostates"] <= n_macrostates]
        if table.empty:
            raise ValueError(f"n_macrostates={n_macrostates!r} leaves no row of the TSI table.")
    table = table.sort_values("number_of_macrostates")
    n = table["number_of_macrostates"].to_numpy(dtype=float)
    found = table["identified_terminal_states"].to_numpy(dtype=float)
    optimal = table["optimal_identification"].to_numpy(dtype=float)
    label = kwargs.pop("label", _method_label(estimator))
    palette = kwargs.pop("palette", None)
    if palette is not None and "color" not in kwargs:
        if isinstance(palette, dict):
            if label in palette:
                kwargs["color"] = palette[label]
        elif isinstance(palette, str):
            kwargs["color"] = plt.get_cmap(palette)(0)
        else:
            kwargs["color"] = next(iter(palette))
    unused = sorted(k for k in kwargs if k in _SEABORN_ONLY)
    if unused:
        info("plot_tsi: seaborn keyword(s) %s are not used (the curves are drawn with matplotlib)", unused)
        for k in unused:
            kwargs.pop(k)
    fig, ax = plt.subplots(figsize=figsize, dpi=dpi)
    ax.step(n, found, where="post", label=label, **kwargs)
    ax.step(n, optimal, where="post", ls="--", color="black", alpha=0.7, label="Optimal identification")
    ax.set_xticks(n.astype(int))
    # at most about 10 labelled ticks: the first, the last and every 5th from the last
    if len(n) > 10:
        for i, lab in enumerate(ax.xaxis.get_ticklabels()[::-1]):
            lab.set_visible(i == 0 or (i + 1) % 5 == 0 or i == len(n) - 1)
    ax.set_yticks(np.unique(np.r_[found, optimal]))
    both = np.r_[found, optimal]
    ax.set_xlim(n.min() - x_offset[0], n.max() + x_offset[1])
    ax.set_ylim(both.min() - y_offset[0], both.max() + y_offset[1])
    ax.set_xlabel("Number of macrostates")
    ax.set_ylabel("Identified terminal states")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=2, frameon=False)
    fig.tight_layout()
    finish(fig, save)
    return ax
