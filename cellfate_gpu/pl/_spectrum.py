"""The eigen/Schur spectrum of a transition matrix, as an estimator stores it."""

from __future__ import annotations

from typing import Any

import numpy as np

from cellfate_gpu.pl._embedding import done, grid

__all__ = ["spectrum"]


def spectrum(
    estimator,
    n: int | None = None,
    real_only: bool | None = None,
    show_eigengap: bool = True,
    show_all_xticks: bool = True,
    legend_loc: str | None = None,
    title: str | None = None,
    marker: str = ".",
    figsize: tuple[float, float] | None = (5, 5),
    dpi: int = 100,
    save: Any = None,
    **kwargs: Any,
):
    r"""The top ``n`` eigenvalues (CellRank's ``plot_spectrum``).

    ``real_only=True``: :math:`\mathrm{Re}\,\lambda_k` against the index :math:`k` (every index
    labelled with ``show_all_xticks``), the eigengap as a dashed line with ``show_eigengap``;
    ``False``: the complex plane with the unit circle. ``real_only=None`` picks the real view when all
    shown eigenvalues are real — as CellRank documents it (its code does the opposite).
    Other keywords go to ``Axes.scatter``.
    """
    eig = estimator.eigendecomposition
    if eig is None:
        raise RuntimeError("No eigenvalues; call compute_schur or compute_eigendecomposition first.")
    return_fig = bool(kwargs.pop("return_fig", False) or kwargs.pop("return_figure", False))
    show = kwargs.pop("show", None)
    D = np.asarray(eig["D"])
    n = len(D) if n is None else int(n)
    if n <= 0:
        raise ValueError(f"n must be > 0, got {n}.")
    D = D[:n]
    if real_only is None:
        real_only = not np.any(np.abs(np.imag(D)) > 0)
    fig, (ax,) = grid(1, figsize=figsize, dpi=dpi, panel=4.5)
    kwargs.setdefault("s", 40)
    if real_only:
        k = np.arange(len(D))
        ax.scatter(k, D.real, c="black", marker=marker, label="eigenvalue", **kwargs)
        gap = eig.get("eigengap")
        if show_eigengap and gap is not None and int(gap) < len(D):
            ax.axvline(int(gap) + 0.5, color="red", ls="--", lw=1, label="eigengap")
        if show_all_xticks:
            ax.set_xticks(k)
        ax.set_xlabel("index")
        ax.set_ylabel(r"Re($\lambda$)")
    else:
        t = np.linspace(0, 2 * np.pi, 200)
        ax.plot(np.cos(t), np.sin(t), color="#bbbbbb", lw=0.8, label="unit circle")
        ax.scatter(D.real, D.imag, c="black", marker=marker, label="eigenvalue", **kwargs)
        ax.set_aspect("equal")
        ax.set_xlabel(r"Re($\lambda$)")
        ax.set_ylabel(r"Im($\lambda$)")
    if legend_loc not in (None, "none"):
        ax.legend(loc=legend_loc, frameon=False)
    ax.set_title(title if title is not None else ("real part of eigenvalues" if real_only else "eigenvalues"))
    return done(fig, save, return_fig=return_fig, show=show)
