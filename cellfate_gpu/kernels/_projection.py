r"""The transition matrix projected onto an embedding (CellRank's ``compute_projection`` / ``plot_projection``).

For cell :math:`i` with kNN neighbours :math:`N(i)` (the connectivity graph) and unit displacements
:math:`\hat d_{ij} = (x_j - x_i) / \lVert x_j - x_i \rVert` in the embedding,

.. math::

    v_i = \sum_{j \in N(i)} T_{ij}\, \hat d_{ij} \;-\; \frac{1}{|N(i)|} \sum_{j \in N(i)} \hat d_{ij},

the expected direction of a step minus that of a uniform step to a neighbour (scVelo's
``velocity_embedding`` with :math:`T` in place of the velocity graph), then scaled by
:math:`1 / (3 s)` with :math:`s` matplotlib's quiver autoscale of the embedding, as CellRank does.
All rows are computed at once from the CSR arrays (:math:`O(\mathrm{nnz})`). The result is
``adata.obsm['T_fwd_<basis>']`` (``T_bwd`` for a backward kernel, or ``key_added``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp

from cellfate_gpu import _keys
from cellfate_gpu._logging import info, timed
from cellfate_gpu.backends._base import host_csr

__all__ = ["compute_projection", "plot_projection", "quiver_autoscale"]


def quiver_autoscale(X: np.ndarray, V: np.ndarray) -> float:
    """Matplotlib's automatic quiver scale for arrows ``V`` at ``X`` (rescaled to the unit box)."""
    import matplotlib.pyplot as plt

    scale = float(np.abs(X).max()) or 1.0
    fig, ax = plt.subplots()
    try:
        q = ax.quiver(X[:, 0] / scale, X[:, 1] / scale, V[:, 0], V[:, 1], angles="xy", scale_units="xy", scale=None)
        q._init()  # computes q.scale (matplotlib's autoscale); there is no public call for it
        return float(q.scale) / scale
    finally:
        plt.close(fig)


def compute_projection(
    kernel: Any,
    basis: str = "umap",
    key_added: str | None = None,
    recompute: bool = False,
    connectivities: Any = None,
) -> np.ndarray:
    """Project ``kernel.transition_matrix`` onto ``adata.obsm['X_<basis>']``; store and return it.

    ``connectivities`` default: the kernel's own (``kernel.connectivities``) or
    ``adata.obsp['connectivities']``.
    """
    adata = kernel.adata
    name = basis[2:] if basis.startswith("X_") else basis
    emb_key = basis if basis in adata.obsm else f"X_{name}"
    if emb_key not in adata.obsm:
        raise KeyError(f"No embedding adata.obsm[{emb_key!r}]; available: {list(adata.obsm.keys())}.")
    key = f"{key_added or _keys.transition_matrix(getattr(kernel, 'backward', False))}_{name}"
    if not recompute and key in adata.obsm:
        info("Using precomputed projection adata.obsm[%r]", key)
        return np.asarray(adata.obsm[key])
    if connectivities is None:
        connectivities = getattr(kernel, "connectivities", None)
        if connectivities is None:
            if "connectivities" not in adata.obsp:
                raise RuntimeError("No connectivities: pass connectivities=... or compute neighbours first.")
            connectivities = adata.obsp["connectivities"]
    C = sp.csr_matrix(connectivities)
    T = sp.csr_matrix(host_csr(kernel.transition_matrix))
    if C.shape != T.shape:
        raise ValueError(f"connectivities have shape {C.shape}, the transition matrix {T.shape}.")
    X = np.asarray(adata.obsm[emb_key], dtype=np.float64)[:, :2]
    with timed("Projecting the transition matrix onto %r", name):
        C.sort_indices()
        rows = np.repeat(np.arange(C.shape[0]), np.diff(C.indptr))
        cols = C.indices
        d = X[cols] - X[rows]
        with np.errstate(divide="ignore", invalid="ignore"):
            d /= np.linalg.norm(d, axis=1)[:, None]
        bad = np.isnan(X).any(1)
        d = np.nan_to_num(d)
        # T_ij on the connectivity pattern (zero where T has no entry)
        t = np.asarray(T[rows, cols]).ravel()
        counts = np.maximum(np.diff(C.indptr), 1)
        V = np.zeros_like(X)
        for k in range(2):
            V[:, k] = (
                np.bincount(rows, weights=t * d[:, k], minlength=X.shape[0])
                - np.bincount(rows, weights=d[:, k], minlength=X.shape[0]) / counts
            )
        V[bad] = np.nan
        V /= 3 * quiver_autoscale(np.nan_to_num(X), V)
    adata.obsm[key] = V
    params = f"{key_added or _keys.transition_matrix(getattr(kernel, 'backward', False))}_params"
    embs = list(adata.uns.get(params, {}).get("embeddings", []))
    if name not in embs:
        adata.uns.setdefault(params, {})
        adata.uns[params]["embeddings"] = [*embs, name]
    return V


def _grid_field(X: np.ndarray, V: np.ndarray, density: float, smooth: float, n_neighbors: int | None):
    """Gaussian-weighted average of ``V`` on a regular grid over ``X`` (scVelo's grid view)."""
    from scipy.spatial import cKDTree

    n = max(int(50 * density), 5)
    lo, hi = X.min(0), X.max(0)
    pad = 0.01 * (hi - lo)
    gx = np.linspace(lo[0] - pad[0], hi[0] + pad[0], n)
    gy = np.linspace(lo[1] - pad[1], hi[1] + pad[1], n)
    G = np.stack(np.meshgrid(gx, gy), -1).reshape(-1, 2)
    k = n_neighbors or max(4, X.shape[0] // 50)
    dist, idx = cKDTree(X).query(G, k=min(k, X.shape[0]))
    step = np.mean([gx[1] - gx[0], gy[1] - gy[0]])
    w = np.exp(-0.5 * (dist / (smooth * step)) ** 2)
    tot = w.sum(1)
    Vg = np.einsum("gk,gkc->gc", w, np.nan_to_num(V)[idx]) / np.maximum(tot, 1e-12)[:, None]
    mask = tot < np.percentile(tot, 99) * 0.1  # grid points far from cells
    Vg[mask] = np.nan
    return gx, gy, Vg.reshape(n, n, 2)


def plot_projection(
    kernel: Any,
    basis: str = "umap",
    key_added: str | None = None,
    recompute: bool = False,
    stream: bool = True,
    connectivities: Any = None,
    color: str | None = None,
    density: float = 1.0,
    smooth: float = 0.5,
    n_neighbors: int | None = None,
    linewidth: float = 1.0,
    arrow_size: float = 1.0,
    arrow_color: str = "black",
    title: str | None = None,
    figsize: tuple[float, float] | None = None,
    dpi: int | None = None,
    save: Any = None,
    ax: Any = None,
    **kwargs: Any,
):
    """Draw the projected transition matrix as streamlines (``stream=True``) or grid arrows.

    The arrows are the projection (:func:`compute_projection`) averaged on a grid with a Gaussian
    kernel of width ``smooth`` grid steps over the ``n_neighbors`` nearest cells; cells are drawn
    under them, coloured by ``color`` (an ``adata.obs`` column or gene; legend in the right margin or
    a colour bar), as scVelo's ``velocity_embedding_stream`` / ``_grid`` do. Other keywords are
    scanpy embedding keywords (``size``/``s``, ``legend_loc``, ``cmap``, ``return_fig``, ...).
    """
    import matplotlib.pyplot as plt

    from cellfate_gpu.pl._embedding import color_values, done, draw_cells, embedding, scanpy_kwargs

    V = compute_projection(kernel, basis=basis, key_added=key_added, recompute=recompute, connectivities=connectivities)
    adata = kernel.adata
    X = embedding(adata, basis)
    return_fig = bool(kwargs.pop("return_fig", False))
    show = kwargs.pop("show", None)
    cmap = kwargs.pop("cmap", "viridis")
    kwargs.setdefault("size", min(120_000 / max(adata.n_obs, 1), 80.0))  # cells under arrows: keep them small
    opts = scanpy_kwargs(kwargs, adata.n_obs, where="plot_projection")
    if ax is None:
        fig, ax = plt.subplots(figsize=figsize or (6, 5), dpi=dpi)
    else:
        fig = ax.figure
    if color is None:
        draw_cells(ax, X, np.full(adata.n_obs, -1), categorical=True, names=[], colors=[], opts=opts, basis=basis)
    else:
        v, cat, names, cols = color_values(adata, color)
        draw_cells(ax, X, v, categorical=cat, names=names, colors=cols, cmap=cmap, opts=opts, basis=basis)
    gx, gy, Vg = _grid_field(X, V, density, smooth, n_neighbors)
    if stream:
        speed = np.sqrt(np.nansum(Vg**2, -1))
        lw = linewidth * (0.5 + 1.5 * speed / max(np.nanmax(speed), 1e-12))
        ax.streamplot(
            gx,
            gy,
            np.ma.masked_invalid(Vg[..., 0]),
            np.ma.masked_invalid(Vg[..., 1]),
            density=2 * density,
            color=arrow_color,
            linewidth=lw,
            arrowsize=arrow_size,
            zorder=3,
        )
    else:
        GX, GY = np.meshgrid(gx, gy)
        ax.quiver(GX, GY, Vg[..., 0], Vg[..., 1], color=arrow_color, angles="xy", zorder=3, width=0.002 * arrow_size)
    ax.set_title(title if title is not None else (color or "projected transition matrix"))
    return done(fig, save, return_fig=return_fig, show=show)
