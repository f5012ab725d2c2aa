"""Spectrum, macrostates and coarse-T plots of a GPCCA estimator."""

from __future__ import annotations

from typing import Any

import numpy as np

from cellfate_gpu.pl._embedding import embedding, finish, grid

__all__ = ["spectrum", "macrostates", "coarse_T"]


def spectrum(
    estimator,
    real_only: bool = False,
    show_eigengap: bool = True,
    save: Any = None,
    figsize=None,
    dpi=None,
    **kwargs: Any,
):
    """Eigenvalues in the complex plane (unit circle drawn), or real parts by index with the eigengap marked."""
    eig = estimator.eigendecomposition
    if eig is None:
        raise RuntimeError("No eigenvalues; call compute_schur or compute_eigendecomposition first.")
    D = np.asarray(eig["D"])
    fig, (ax,) = grid(1, figsize=figsize, dpi=dpi, panel=4.5)
    if real_only:
        ax.scatter(np.arange(len(D)), D.real, c="black", s=15)
        if show_eigengap:
            ax.axvline(int(eig["eigengap"]) + 0.5, color="red", ls="--", lw=1, label="eigengap")
            ax.legend(frameon=False)
        ax.set_xlabel("index")
        ax.set_ylabel("Re(λ)")
    else:
        t = np.linspace(0, 2 * np.pi, 200)
        ax.plot(np.cos(t), np.sin(t), color="#bbbbbb", lw=0.8)
        ax.scatter(D.real, D.imag, c="black", s=15)
        ax.set_aspect("equal")
        ax.set_xlabel("Re(λ)")
        ax.set_ylabel("Im(λ)")
    ax.set_title("spectrum")
    return finish(fig, save)


def macrostates(
    estimator,
    which: str = "all",
    basis: str = "umap",
    same_plot: bool = True,
    size: float = 4,
    save: Any = None,
    figsize=None,
    dpi=None,
    **kwargs: Any,
):
    """Macrostates (``"all"``), ``"terminal"`` or ``"initial"`` states on an embedding."""
    import matplotlib.colors as mcolors

    if which == "all":
        states, colors = (
            estimator.macrostates,
            estimator.macrostates_memberships.colors if estimator.macrostates_memberships is not None else None,
        )
    elif which == "terminal":
        states, colors = estimator.terminal_states, estimator._term_colors
    elif which == "initial":
        states, colors = estimator.initial_states, estimator._init_colors
    else:
        raise ValueError(f"which must be 'all', 'terminal' or 'initial', got {which!r}.")
    if states is None:
        raise RuntimeError(f"No {which} states to plot.")
    emb = embedding(estimator.adata, basis)
    fig, (ax,) = grid(1, figsize=figsize, dpi=dpi, panel=5)
    ax.scatter(emb[:, 0], emb[:, 1], c="#dddddd", s=size, linewidths=0, rasterized=True)
    codes = states.cat.codes.to_numpy()
    for j, name in enumerate(states.cat.categories):
        mask = codes == j
        ax.scatter(
            emb[mask, 0], emb[mask, 1], c=[mcolors.to_rgba(colors[j])], s=size * 3, label=str(name), linewidths=0
        )
    ax.legend(loc="best", fontsize="small", frameon=False, markerscale=2)
    ax.set_title({"all": "macrostates", "terminal": "terminal states", "initial": "initial states"}[which])
    ax.set_axis_off()
    return finish(fig, save)


def coarse_T(
    estimator,
    show_stationary_dist: bool = True,
    show_initial_dist: bool = False,
    cmap: str = "Reds",
    save: Any = None,
    figsize=None,
    dpi=None,
    **kwargs: Any,
):
    """Heatmap of the coarse-grained transition matrix with its stationary distribution."""
    df = estimator.coarse_T
    if df is None:
        raise RuntimeError("No coarse T; compute macrostates first.")
    fig, (ax,) = grid(1, figsize=figsize or (1 + 0.6 * len(df), 1 + 0.5 * len(df)), dpi=dpi)
    im = ax.imshow(df.to_numpy(), cmap=cmap, vmin=0, vmax=1)
    ax.set_xticks(range(len(df)), df.columns, rotation=90)
    labels = list(df.index)
    if show_stationary_dist and estimator.coarse_stationary_distribution is not None:
        pi = estimator.coarse_stationary_distribution.to_numpy()
        labels = [f"{nm} (π={p:.2f})" for nm, p in zip(labels, pi, strict=True)]
    ax.set_yticks(range(len(df)), labels)
    for i in range(len(df)):
        for j in range(len(df)):
            ax.text(j, i, f"{df.iat[i, j]:.2f}", ha="center", va="center", fontsize="x-small")
    fig.colorbar(im, ax=ax, shrink=0.7)
    ax.set_title("coarse-grained T")
    return finish(fig, save)
