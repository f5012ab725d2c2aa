"""Random walks on a kernel's transition matrix, drawn on an embedding (host side)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from cellfate_gpu._logging import info
from cellfate_gpu.pl._embedding import color_values, draw_cells, scanpy_kwargs

__all__ = ["plot_random_walks"]


def plot_random_walks(
    kernel,
    n_sims: int = 100,
    max_iter: int | float = 0.25,
    seed: int | None = None,
    successive_hits: int = 0,
    start_ixs: Any = None,
    stop_ixs: Any = None,
    basis: str = "umap",
    cmap: Any = "gnuplot",
    linewidth: float = 1.0,
    linealpha: float = 0.3,
    ixs_legend_loc: str | None = None,
    figsize: tuple[float, float] | None = None,
    dpi: int | None = None,
    save: str | Path | None = None,
    ax: Any = None,
    **kwargs: Any,
):
    """Simulate random walks and draw them on the embedding ``adata.obsm[f"X_{basis}"]``.

    Cells are drawn grey; every walk is a line whose colour runs along ``cmap`` from its start to
    its end (with the default ``"gnuplot"``: black to yellow); start cells are marked with
    ``cmap(0)`` (black) and end cells with ``cmap(1)`` (yellow), as CellRank does.

    Parameters
    ----------
    kernel, n_sims, max_iter, seed, successive_hits, start_ixs, stop_ixs
        See :func:`~cellfate_gpu.kernels._random_walk.simulate_random_walks` (``kernel.simulate_random_walks``).
    basis
        Embedding key (``"umap"`` → ``obsm["X_umap"]``; an exact ``obsm`` key also works).
    cmap
        Colormap (name or object) of the walks.
    linewidth, linealpha
        Width and alpha of the walk lines.
    ixs_legend_loc
        Where to put a start/stop legend (``None``: no legend).
    figsize, dpi
        Size of a new figure.
    save
        Path to save the figure to.
    ax
        Existing axes to draw into.
    kwargs
        ``color``: an ``obs`` column or gene colouring the cells (legend or colour bar as scanpy
        draws them), or a matplotlib colour (default light grey); scanpy keywords such as
        ``size``/``s``, ``legend_loc``, ``alpha``; others are logged as ignored.

    Returns
    -------
    matplotlib.figure.Figure
    """
    import matplotlib.pyplot as plt
    from matplotlib.collections import LineCollection

    key = basis if basis in kernel.adata.obsm else f"X_{basis}"
    if key not in kernel.adata.obsm:
        raise KeyError(f"No embedding adata.obsm[{key!r}]; available: {list(kernel.adata.obsm.keys())}.")
    emb = np.asarray(kernel.adata.obsm[key])[:, :2]
    walks = kernel.simulate_random_walks(
        n_sims=n_sims,
        max_iter=max_iter,
        seed=seed,
        successive_hits=successive_hits,
        start_ixs=start_ixs,
        stop_ixs=stop_ixs,
    )
    cm = plt.get_cmap(cmap) if isinstance(cmap, str) else cmap
    if ax is None:
        fig, ax = plt.subplots(figsize=figsize, dpi=dpi)
    else:
        fig = ax.figure
    color = kwargs.pop("color", None)
    opts = scanpy_kwargs(kwargs, len(emb), where="plot_random_walks")
    size = opts.get("size", max(120000 / max(len(emb), 1), 0.5) if len(emb) < 120000 else 0.5)
    if isinstance(color, str) and (color in kernel.adata.obs or color in kernel.adata.var_names):
        # CellRank hands ``color`` to scvelo's scatter: cells coloured by an obs column or a gene
        values, categorical, names, colors = color_values(kernel.adata, color)
        draw_cells(ax, emb, values, categorical=categorical, names=names, colors=colors, opts=opts, basis=key)
    else:
        c = "#d3d3d3" if color is None else color
        ax.scatter(emb[:, 0], emb[:, 1], s=size, c=c, linewidths=0, rasterized=True, zorder=1)
    info("Plotting random walks")
    for walk in walks:
        if walk.size < 2:
            continue
        points = emb[walk]
        segments = np.stack([points[:-1], points[1:]], axis=1)
        colors = cm(np.arange(len(segments)) / len(segments))
        ax.add_collection(LineCollection(segments, linewidths=linewidth, colors=colors, alpha=linealpha, zorder=2))
    mark = float(np.clip(float(size) * 2, 10.0, 60.0))  # start/stop marks readable at any size
    firsts = np.array([w[0] for w in walks])
    lasts = np.array([w[-1] for w in walks])
    ax.scatter(*emb[firsts].T, color=cm(0.0), edgecolors="black", s=mark, zorder=4, label="start")
    ax.scatter(*emb[lasts].T, color=cm(1.0), edgecolors="black", s=mark, zorder=4, label="stop")
    if ixs_legend_loc not in (None, "none"):
        ax.legend(loc=ixs_legend_loc)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_xlabel(f"{basis.upper()}1" if basis != key else f"{key}1")
    ax.set_ylabel(f"{basis.upper()}2" if basis != key else f"{key}2")
    ax.set_title(f"{len(walks)} random walks")
    if save is not None:
        fig.savefig(save, bbox_inches="tight")
    return fig
