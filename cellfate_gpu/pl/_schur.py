"""The real Schur matrix of a GPCCA estimator as an annotated heatmap (CellRank's ``plot_schur_matrix``)."""

from __future__ import annotations

from typing import Any

import numpy as np

from cellfate_gpu.pl._embedding import finish

__all__ = ["schur_matrix"]


def schur_matrix(
    estimator,
    title: str | None = "schur matrix",
    cmap: str = "viridis",
    figsize: tuple[float, float] | None = None,
    dpi: int | None = 80,
    save: Any = None,
    show: bool = True,
    *,
    annotate: bool = True,
    fmt: str = "0.2f",
    **kwargs: Any,
):
    r"""Heatmap of the quasi-upper-triangular :math:`R` with :math:`T X = X R` (``estimator.schur_matrix``).

    As CellRank: entries below the diagonal that are zero are masked (blank); those of the
    :math:`2 \times 2` blocks of complex eigenvalue pairs are shown. Colours span the shown
    entries, with a colour bar; each cell is annotated with its value (``annotate``, format
    ``fmt``). ``figsize`` defaults to the matrix size in inches, as CellRank's. Other keywords go to
    :meth:`~matplotlib.axes.Axes.imshow`.

    Returns
    -------
    matplotlib.axes.Axes or None
        The axes when ``show=False``.

    Raises
    ------
    RuntimeError
        No Schur decomposition (call ``compute_schur`` first).
    """
    import matplotlib.pyplot as plt

    R = getattr(estimator, "schur_matrix", None)
    if R is None:
        raise RuntimeError("No Schur matrix; call compute_schur(...) first.")
    R = np.asarray(R, dtype=np.float64)
    k = R.shape[0]
    mask = np.zeros(R.shape, dtype=bool)
    mask[np.tril_indices(k, -1)] = True
    mask &= np.isclose(R, 0.0)
    shown = R[~mask]
    vmin, vmax = float(shown.min()), float(shown.max())
    if vmin == vmax:
        vmin, vmax = vmin - 0.5, vmax + 0.5
    size = max(float(k), 3.0)
    fig, ax = plt.subplots(figsize=(size + 1.0, size) if figsize is None else figsize, dpi=dpi)
    im = ax.imshow(np.ma.masked_array(R, mask), cmap=cmap, vmin=vmin, vmax=vmax, **kwargs)
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)
    if annotate:
        norm, cm = im.norm, im.get_cmap()
        for i, j in zip(*np.nonzero(~mask), strict=True):
            r, g, b, _ = cm(norm(R[i, j]))
            light = 0.299 * r + 0.587 * g + 0.114 * b > 0.5
            ax.text(
                j,
                i,
                format(R[i, j], fmt),
                ha="center",
                va="center",
                fontsize="small",
                color="black" if light else "white",
            )
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, ticks=np.linspace(vmin, vmax, 10), format="%.3f")
    if title is not None:
        ax.set_title(title)
    finish(fig, save)
    return None if show else ax
