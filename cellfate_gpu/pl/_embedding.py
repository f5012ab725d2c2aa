"""Shared helpers for drawing cells on a 2-D embedding (host side)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["embedding", "grid", "finish"]


def embedding(adata, basis: str) -> np.ndarray:
    """``obsm['X_<basis>']`` (or ``obsm[basis]``), first two columns."""
    key = basis if basis in adata.obsm else f"X_{basis}"
    if key not in adata.obsm:
        raise KeyError(f"No embedding adata.obsm[{key!r}]; available: {list(adata.obsm.keys())}.")
    return np.asarray(adata.obsm[key])[:, :2]


def grid(
    n: int, ncols: int = 3, panel: float = 3.5, figsize: tuple[float, float] | None = None, dpi: int | None = None
):
    """A figure with ``n`` axes on a grid; unused axes hidden."""
    import matplotlib.pyplot as plt

    ncols = max(1, min(ncols, n))
    nrows = int(np.ceil(n / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=figsize or (panel * ncols, panel * nrows), dpi=dpi, squeeze=False)
    axes = axes.ravel()
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, list(axes[:n])


def finish(fig, save: str | Path | None) -> Any:
    """Save if asked; return the figure."""
    if save is not None:
        fig.savefig(save, bbox_inches="tight")
    return fig
