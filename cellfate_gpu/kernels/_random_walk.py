"""Random walks on a transition matrix: all walks step together, each step costs O(row nnz)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from cellfate_gpu._logging import progress, timed

__all__ = ["resolve_cells", "simulate_random_walks", "plot_random_walks"]


def resolve_cells(adata, selector: Any, *, what: str) -> np.ndarray:
    """Integer indices of the cells a CellRank-style selector names.

    ``None`` → all cells; ``{"clusters": ["HSC_1"]}`` → cells whose ``obs["clusters"]`` is listed;
    a sequence of obs names, integer indices, or a boolean mask.
    """
    n = adata.n_obs
    if selector is None:
        return np.arange(n)
    if isinstance(selector, dict):
        if len(selector) != 1:
            raise ValueError(f"{what} as a dict must have exactly one obs key, got {list(selector)}.")
        ((key, values),) = selector.items()
        if key not in adata.obs:
            raise KeyError(f"{what}: no column adata.obs[{key!r}].")
        values = [values] if isinstance(values, str) else list(values)
        col = adata.obs[key].astype(str)
        unknown = sorted(set(map(str, values)) - set(col.unique()))
        if unknown:
            raise ValueError(f"{what}: values {unknown} not found in adata.obs[{key!r}].")
        ixs = np.flatnonzero(col.isin(list(map(str, values))).to_numpy())
    else:
        arr = np.asarray(selector)
        if arr.dtype == bool:
            if arr.shape != (n,):
                raise ValueError(f"{what}: boolean mask has shape {arr.shape}, expected ({n},).")
            ixs = np.flatnonzero(arr)
        elif arr.dtype.kind in "iu":
            if arr.size and (arr.min() < 0 or arr.max() >= n):
                raise ValueError(f"{what}: indices must be in [0, {n}), got range [{arr.min()}, {arr.max()}].")
            ixs = arr.astype(np.int64).ravel()
        else:
            names = adata.obs_names.get_indexer(arr.astype(str).ravel())
            if np.any(names < 0):
                missing = list(arr.astype(str).ravel()[names < 0][:5])
                raise ValueError(f"{what}: {int(np.sum(names < 0))} obs names not found, e.g. {missing}.")
            ixs = names
    if ixs.size == 0:
        raise ValueError(f"{what} selects no cells.")
    return ixs


def simulate_random_walks(
    kernel,
    n_sims: int = 100,
    max_iter: int | float = 0.25,
    seed: int | None = None,
    successive_hits: int = 0,
    start_ixs: Any = None,
    stop_ixs: Any = None,
) -> list[np.ndarray]:
    """Simulate ``n_sims`` walks on ``kernel.transition_matrix``.

    Parameters
    ----------
    max_iter
        Maximum steps; a float in (0, 1] is a fraction of the number of cells.
    successive_hits
        A walk stops after ``successive_hits + 1`` consecutive visits to ``stop_ixs`` cells.
    start_ixs, stop_ixs
        CellRank selectors (see :func:`resolve_cells`); start cells are drawn uniformly.

    Returns
    -------
    list of numpy.ndarray
        The visited cell indices of each walk, start included.
    """
    T = kernel.transition_matrix
    n = T.shape[0]
    if isinstance(max_iter, float):
        if not 0 < max_iter <= 1:
            raise ValueError(f"max_iter as a float must be in (0, 1], got {max_iter}.")
        max_iter = int(np.ceil(max_iter * n))
    if max_iter < 1 or n_sims < 1 or successive_hits < 0:
        raise ValueError(
            f"Need max_iter >= 1, n_sims >= 1, successive_hits >= 0; got {max_iter}, {n_sims}, {successive_hits}."
        )
    rng = np.random.default_rng(seed)
    starts = resolve_cells(kernel.adata, start_ixs, what="start_ixs")
    stop_mask = np.zeros(n, dtype=bool)
    if stop_ixs is not None:
        stop_mask[resolve_cells(kernel.adata, stop_ixs, what="stop_ixs")] = True
    cumulative = np.cumsum(T.data)  # per-row cumulative sums from one global cumsum
    row_offset = np.r_[0.0, cumulative][T.indptr[:-1]]
    current = rng.choice(starts, size=n_sims)
    paths = [[int(c)] for c in current]
    hits = np.where(stop_mask[current], 1, 0)
    active = hits <= successive_hits
    with timed("Simulating %d random walks of at most %d steps", n_sims, max_iter):
        for _ in progress(range(max_iter), desc="random walks", unit="step"):
            idx = np.flatnonzero(active)
            if idx.size == 0:
                break
            c = current[idx]
            u = row_offset[c] + rng.random(idx.size) * (cumulative[T.indptr[c + 1] - 1] - row_offset[c])
            pos = np.searchsorted(cumulative, u, side="right")
            pos = np.minimum(np.maximum(pos, T.indptr[c]), T.indptr[c + 1] - 1)
            nxt = T.indices[pos]
            current[idx] = nxt
            for i, cell in zip(idx, nxt, strict=True):
                paths[i].append(int(cell))
            hits[idx] = np.where(stop_mask[nxt], hits[idx] + 1, 0)
            active[idx] = hits[idx] <= successive_hits
    return [np.asarray(p) for p in paths]


def plot_random_walks(
    kernel,
    n_sims: int = 100,
    max_iter: int | float = 0.25,
    seed: int | None = None,
    successive_hits: int = 0,
    start_ixs: Any = None,
    stop_ixs: Any = None,
    basis: str = "umap",
    cmap: str = "gnuplot",
    linewidth: float = 1.0,
    linealpha: float = 0.3,
    ixs_legend_loc: Any = None,
    figsize: tuple[float, float] | None = None,
    dpi: int | None = None,
    save: str | Path | None = None,
    ax: Any = None,
    **kwargs: Any,
):
    """Draw simulated walks on ``obsm[f"X_{basis}"]``: grey cells, coloured paths, black starts, yellow ends."""
    import matplotlib.pyplot as plt

    key = basis if basis in kernel.adata.obsm else f"X_{basis}"
    if key not in kernel.adata.obsm:
        raise KeyError(f"No embedding adata.obsm[{key!r}]; available: {list(kernel.adata.obsm.keys())}.")
    emb = np.asarray(kernel.adata.obsm[key])[:, :2]
    walks = simulate_random_walks(
        kernel,
        n_sims=n_sims,
        max_iter=max_iter,
        seed=seed,
        successive_hits=successive_hits,
        start_ixs=start_ixs,
        stop_ixs=stop_ixs,
    )
    fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=figsize, dpi=dpi)
    ax.scatter(emb[:, 0], emb[:, 1], s=kwargs.pop("size", 3), c="#d3d3d3", linewidths=0, rasterized=True)
    colors = plt.get_cmap(cmap)(np.linspace(0, 1, len(walks)))
    for walk, color in zip(walks, colors, strict=True):
        ax.plot(emb[walk, 0], emb[walk, 1], color=color, lw=linewidth, alpha=linealpha)
    ax.scatter(emb[[w[0] for w in walks], 0], emb[[w[0] for w in walks], 1], c="black", s=20, label="start", zorder=3)
    ax.scatter(
        emb[[w[-1] for w in walks], 0],
        emb[[w[-1] for w in walks], 1],
        c="yellow",
        edgecolors="black",
        s=20,
        label="end",
        zorder=3,
    )
    if ixs_legend_loc is not None:
        ax.legend(loc=ixs_legend_loc)
    ax.set_axis_off()
    ax.set_title(f"{len(walks)} random walks")
    if save is not None:
        fig.savefig(save, bbox_inches="tight")
    return fig
