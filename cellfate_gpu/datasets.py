"""Data sets: the generated branching atlas (the embedded default) and CellRank's public data sets.

:func:`synthetic_atlas` needs no download: it generates a branching differentiation with
everything the kernels and estimators read. :func:`load` fetches CellRank's real data sets into a
local cache (see :mod:`cellfate_gpu._remote_datasets`).
"""

from __future__ import annotations

import hashlib
import string

import numpy as np
import pandas as pd
import scipy.sparse as sp

from cellfate_gpu._logging import info, timed
from cellfate_gpu._remote_datasets import (
    REMOTE_DATASETS,
    bone_marrow,
    cache_dir,
    load,
    lung,
    pancreas,
    reprogramming_morris,
    reprogramming_schiebinger,
    zebrafish,
)

__all__ = [
    "synthetic_atlas",
    "user_like_atlas",
    "load",
    "REMOTE_DATASETS",
    "lineage_names",
    "bone_marrow",
    "lung",
    "pancreas",
    "reprogramming_morris",
    "reprogramming_schiebinger",
    "zebrafish",
]

_TRUNK_END = 0.3  # pseudotime where the trunk branches
_BLOCK = 65_536  # cells per block of generated expression
_CACHE_MIN_CELLS = 100_000  # atlases at least this large are cached on disk
_PALETTE = [
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
    "#aec7e8",
    "#ffbb78",
    "#98df8a",
    "#ff9896",
    "#c5b0d5",
    "#c49c94",
]


def lineage_names(n_lineages: int) -> list[str]:
    """Names of the terminal clusters: ``Lineage_A``, ``Lineage_B``, ..."""
    letters = string.ascii_uppercase
    return [f"Lineage_{letters[i % 26]}{'' if i < 26 else i // 26}" for i in range(n_lineages)]


def _knn_graph(latent: np.ndarray, n_neighbors: int) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """KNN distances and UMAP-style fuzzy-union connectivities (vectorised, both cores)."""
    from scipy.spatial import cKDTree

    n = latent.shape[0]
    dist, idx = cKDTree(latent).query(latent, k=n_neighbors + 1, workers=-1)
    dist, idx = dist[:, 1:], idx[:, 1:]  # drop the cell itself
    rows = np.repeat(np.arange(n), n_neighbors)
    distances = sp.csr_matrix((dist.ravel(), (rows, idx.ravel())), shape=(n, n))
    rho = dist[:, :1]
    sigma = np.maximum(dist.mean(axis=1, keepdims=True) - rho, 1e-12)
    w = np.exp(-np.maximum(dist - rho, 0.0) / sigma)
    W = sp.csr_matrix((w.ravel(), (rows, idx.ravel())), shape=(n, n))
    conn = W + W.T - W.multiply(W.T)  # fuzzy union, symmetric
    conn = sp.csr_matrix(conn)
    conn.sum_duplicates()
    conn.eliminate_zeros()
    return distances, conn


def _cache_path(params: dict) -> "Path":  # noqa: F821, UP037
    digest = hashlib.sha1(repr(sorted(params.items())).encode()).hexdigest()[:12]
    return cache_dir() / f"synthetic_atlas_{params['n_cells']}_{digest}.h5ad"


def synthetic_atlas(
    n_cells: int = 3000,
    n_lineages: int = 3,
    n_genes: int = 100,
    n_neighbors: int = 15,
    seed: int = 0,
    cache: bool = True,
):
    r"""A branching differentiation: a root and a progenitor trunk, then ``n_lineages`` branches.

    Every cell gets a true pseudotime :math:`t \in [0, 1]`. The trunk covers :math:`t < 0.3`
    (clusters ``Root``, ``Progenitor``); branch ``b`` covers :math:`t \ge 0.3` (clusters
    ``Lineage_X_early`` for :math:`t < 0.7` and the terminal ``Lineage_X``). Gene programmes:
    stemness genes :math:`\mu = a\,e^{-3t}` (expressed early, so the number of expressed genes
    falls with :math:`t`, as CytoTRACE assumes), branch genes
    :math:`\mu = a\,\sigma(10 (t - 0.55))` on their branch only, and housekeeping genes. Velocity is
    the analytic :math:`d\mu/dt` plus noise; ``Mu = Ms + velocity`` (steady-state model with
    :math:`\gamma = 1`).

    Parameters
    ----------
    n_cells, n_lineages, n_genes, n_neighbors
        Sizes; ``n_neighbors`` of the kNN graph.
    seed
        Everything is deterministic given the seed.
    cache
        For ``n_cells >= 100_000``, read/write the result under ``cache_dir()``.

    Returns
    -------
    anndata.AnnData
        ``X`` (counts, sparse float32), layers ``spliced``, ``unspliced``, ``Ms``, ``Mu``, ``velocity``;
        ``obs``: ``clusters`` (categorical, with ``uns['clusters_colors']``), ``pseudotime`` and
        ``dpt_pseudotime`` (same), ``lineage``, ``is_terminal``; ``var['velocity_genes']``;
        ``obsm``: ``X_umap``, ``X_pca``; ``obsp``: ``connectivities``, ``distances``; ``uns['neighbors']``.
    """
    import anndata as ad

    if n_cells < 10 * (n_lineages + 2) or n_lineages < 1 or n_genes < 3 or n_neighbors < 2:
        raise ValueError(
            f"synthetic_atlas needs n_cells >= 10 * (n_lineages + 2), n_lineages >= 1, n_genes >= 3, "
            f"n_neighbors >= 2; got n_cells={n_cells}, n_lineages={n_lineages}, n_genes={n_genes}, "
            f"n_neighbors={n_neighbors}."
        )
    params = dict(n_cells=n_cells, n_lineages=n_lineages, n_genes=n_genes, n_neighbors=n_neighbors, seed=seed)
    path = _cache_path(params)
    if cache and n_cells >= _CACHE_MIN_CELLS and path.is_file():
        info("Loading the generated atlas from %s", path)
        return ad.read_h5ad(path)

    with timed("Generating a branching atlas with %d cells, %d lineages, %d genes", n_cells, n_lineages, n_genes):
        rng = np.random.default_rng(seed)
        names = lineage_names(n_lineages)
        n_trunk = round(n_cells * _TRUNK_END)
        branch = np.concatenate([np.full(n_trunk, -1), rng.integers(0, n_lineages, n_cells - n_trunk)])
        t = np.where(branch < 0, rng.uniform(0, _TRUNK_END, n_cells), rng.uniform(_TRUNK_END, 1.0, n_cells))
        order = np.argsort(t, kind="stable")
        t, branch = t[order], branch[order]

        # 2-D embedding: trunk along x, branches fanning out over +-70 degrees.
        angles = np.linspace(-70, 70, n_lineages) if n_lineages > 1 else np.array([0.0])
        directions = np.c_[np.cos(np.deg2rad(angles)), np.sin(np.deg2rad(angles))]
        trunk_len = 3.0
        umap = np.zeros((n_cells, 2))
        umap[:, 0] = np.minimum(t, _TRUNK_END) / _TRUNK_END * trunk_len
        on_branch = branch >= 0
        umap[on_branch] += (t[on_branch, None] - _TRUNK_END) / (1 - _TRUNK_END) * 8.0 * directions[branch[on_branch]]
        umap += rng.normal(scale=0.12, size=umap.shape)
        latent = np.c_[umap, rng.normal(scale=0.05, size=(n_cells, 3))]

        # Gene programmes, generated in blocks of cells so that memory stays O(block x genes) beyond
        # the float32 layers; the random streams are drawn in the same order as one big draw would be.
        kinds = rng.choice(3, size=n_genes, p=[0.3, 0.6, 0.1])  # stemness, branch, housekeeping
        kinds[: min(3, n_genes)] = [0, 1, 2][: min(3, n_genes)]
        gene_branch = rng.integers(0, n_lineages, n_genes)
        amplitude = rng.lognormal(mean=1.5, sigma=0.5, size=n_genes)
        blocks = [slice(a, min(a + _BLOCK, n_cells)) for a in range(0, n_cells, _BLOCK)]

        def programme(block: slice) -> tuple[np.ndarray, np.ndarray]:
            tb = t[block, None]
            s = 1.0 / (1.0 + np.exp(-10.0 * (tb - 0.55)))
            on = (kinds == 1) & (branch[block, None] == gene_branch[None, :])
            stem = np.where(kinds == 0, np.exp(-3.0 * tb), 0.0)
            mu = stem + np.where(on, s, 0.0) + np.where(kinds == 2, 0.5, 0.0)
            dmu = -3.0 * stem + np.where(on, 10.0 * s * (1.0 - s), 0.0)
            return mu * amplitude, dmu * amplitude

        Ms = np.empty((n_cells, n_genes), dtype=np.float32)
        velocity = np.empty((n_cells, n_genes), dtype=np.float32)
        for block in blocks:
            mu, _ = programme(block)
            Ms[block] = mu * rng.lognormal(sigma=0.05, size=mu.shape)
        for block in blocks:
            _, dmu = programme(block)
            velocity[block] = dmu * 0.1 + rng.normal(scale=0.02, size=dmu.shape) * amplitude
        Mu = np.maximum(Ms + velocity, 0).astype(np.float32)
        spliced = sp.vstack([sp.csr_matrix(rng.poisson(Ms[b]).astype(np.float32)) for b in blocks], format="csr")
        unspliced = sp.vstack([sp.csr_matrix(rng.poisson(Mu[b]).astype(np.float32)) for b in blocks], format="csr")

        distances, conn = _knn_graph(latent, n_neighbors)
        clusters = np.where(
            branch < 0,
            np.where(t < _TRUNK_END / 2, "Root", "Progenitor"),
            np.where(t < 0.7, np.array([f"{n}_early" for n in names] + [""])[branch], np.array([*names, ""])[branch]),
        )
        categories = ["Root", "Progenitor"] + [f"{n}_early" for n in names] + names
        obs = pd.DataFrame(
            {
                "clusters": pd.Categorical(clusters, categories=categories),
                "pseudotime": t,
                "dpt_pseudotime": t,
                "lineage": pd.Categorical(
                    np.where(branch < 0, "Root", np.array([*names, ""])[branch]), categories=["Root", *names]
                ),
                "is_terminal": (branch >= 0) & (t >= 0.9),
            },
            index=[f"cell_{i}" for i in range(n_cells)],
        )
        kind_names = np.array(["stemness", "branch", "housekeeping"])[kinds]
        var = pd.DataFrame(
            {
                "program": kind_names,
                "branch": np.where(kinds == 1, np.array(names)[gene_branch], ""),
                "velocity_genes": kinds != 2,
            },
            index=[f"gene_{g}" for g in range(n_genes)],
        )
        adata = ad.AnnData(X=spliced.copy(), obs=obs, var=var)
        adata.layers["spliced"] = spliced
        adata.layers["unspliced"] = unspliced
        adata.layers["Ms"] = Ms
        adata.layers["Mu"] = Mu
        adata.layers["velocity"] = velocity
        adata.obsm["X_umap"] = umap.astype(np.float32)
        adata.obsm["X_pca"] = latent.astype(np.float32)
        adata.obsp["connectivities"] = conn
        adata.obsp["distances"] = distances
        adata.uns["neighbors"] = {
            "connectivities_key": "connectivities",
            "distances_key": "distances",
            "params": {"n_neighbors": n_neighbors, "method": "umap", "metric": "euclidean"},
        }
        adata.uns["clusters_colors"] = np.array([_PALETTE[i % len(_PALETTE)] for i in range(len(categories))])
        adata.uns["synthetic_atlas"] = {k: v for k, v in params.items()}
    if cache and n_cells >= _CACHE_MIN_CELLS:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.h5ad")
        adata.write_h5ad(tmp)
        tmp.replace(path)
        info("Cached the generated atlas at %s", path)
    return adata


# ---------------------------------------------------------------------- a user-like atlas
def _umap_connectivities(dist: np.ndarray, idx: np.ndarray) -> sp.csr_matrix:
    r"""UMAP's fuzzy simplicial set of a kNN graph (McInnes et al. 2018, as ``scanpy.pp.neighbors``).

    Per cell, :math:`\rho_i` is the distance to the nearest neighbour and :math:`\sigma_i` solves
    :math:`\sum_j \exp(-\max(d_{ij} - \rho_i, 0) / \sigma_i) = \log_2 k` (bisection, 64 steps, all
    cells at once); :math:`w_{ij} = \exp(-\max(d_{ij} - \rho_i, 0)/\sigma_i)` and the fuzzy union
    :math:`W + W^T - W \circ W^T`.
    """
    n, k = dist.shape
    rho = dist[:, :1]
    gap = np.maximum(dist - rho, 0.0)
    target = np.log2(k)
    lo, hi = np.zeros((n, 1)), np.full((n, 1), np.inf)
    sigma = np.ones((n, 1))
    for _ in range(64):
        total = np.exp(-gap / sigma).sum(axis=1, keepdims=True)
        high = total > target
        hi = np.where(high, sigma, hi)
        lo = np.where(high, lo, sigma)
        sigma = np.where(np.isinf(hi), sigma * 2.0, 0.5 * (lo + hi))
    mean_d = dist.mean()
    sigma = np.maximum(sigma, 1e-3 * np.where(rho > 0, dist.mean(axis=1, keepdims=True), mean_d))
    w = np.exp(-gap / sigma)
    rows = np.repeat(np.arange(n), k)
    W = sp.csr_matrix((w.ravel(), (rows, idx.ravel())), shape=(n, n))
    conn = sp.csr_matrix(W + W.T - W.multiply(W.T))
    conn.sum_duplicates()
    conn.eliminate_zeros()
    return conn


def _pca_blocks(X: sp.csr_matrix, n_comps: int) -> np.ndarray:
    """Exact PCA of ``X`` (cells x genes) from its covariance, accumulated over blocks of cells."""
    n, g = X.shape
    mean = np.asarray(X.mean(axis=0)).ravel()
    gram = np.zeros((g, g))
    for a in range(0, n, _BLOCK):
        block = X[a : a + _BLOCK].toarray().astype(np.float64)
        gram += block.T @ block
    cov = gram / n - np.outer(mean, mean)
    _, vecs = np.linalg.eigh(cov)
    comps = vecs[:, ::-1][:, :n_comps]
    comps *= np.sign(comps[np.argmax(np.abs(comps), axis=0), np.arange(n_comps)])  # deterministic signs
    return np.vstack([X[a : a + _BLOCK] @ comps - mean @ comps for a in range(0, n, _BLOCK)])


def _knn(points: np.ndarray, n_neighbors: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact ``n_neighbors`` nearest neighbours (the cell itself excluded): scikit-learn if installed."""
    try:
        from sklearn.neighbors import NearestNeighbors
    except ImportError:
        from scipy.spatial import cKDTree

        dist, idx = cKDTree(points).query(points, k=n_neighbors + 1, workers=-1)
    else:
        dist, idx = NearestNeighbors(n_neighbors=n_neighbors + 1, n_jobs=-1).fit(points).kneighbors(points)
    return dist[:, 1:], idx[:, 1:]


def user_like_atlas(
    n_cells: int = 20_000,
    n_lineages: int = 6,
    n_genes: int = 2000,
    latent_dim: int = 10,
    n_neighbors: int = 30,
    n_pcs: int = 50,
    seed: int = 0,
    cache: bool = True,
):
    r"""An atlas built the way scanpy users build theirs: counts, log1p, PCA, a 30-neighbour UMAP graph.

    Unlike :func:`synthetic_atlas` (near-one-dimensional branches in a 5-D latent space, the graph
    built on the latent coordinates), the graph here comes from noisy high-dimensional counts, so it
    has the fill and conditioning of real kNN graphs. Cells lie on a branching tree in a
    ``latent_dim``-dimensional space: a trunk for pseudotime :math:`t < 0.3`, then two
    intermediate branches that split into the ``n_lineages`` lineages at :math:`t = 0.6`; each
    segment points in a random direction. A cell at :math:`z` (tree position plus isotropic noise)
    has gene means :math:`\mu = \ell \cdot \mathrm{softmax}(z W)` with random loadings
    :math:`W` (``latent_dim x n_genes``) and library size :math:`\ell`; counts are Poisson.
    Then, as in scanpy: normalise to 10,000 counts per cell, ``log1p``, PCA (``n_pcs``), exact
    kNN with ``n_neighbors`` (scikit-learn, else a k-d tree) and UMAP connectivities.

    Parameters
    ----------
    n_cells, n_lineages, n_genes, latent_dim, n_neighbors, n_pcs
        Sizes (``latent_dim >= 2``, ``n_pcs <= n_genes``).
    seed
        Everything is deterministic given the seed.
    cache
        For ``n_cells >= 100_000``, read/write the result under ``cache_dir()``.

    Returns
    -------
    anndata.AnnData
        ``X`` log1p-normalised (sparse float32), ``layers['counts']``; ``obs``: ``clusters``
        (``Root``, ``Progenitor``, ``Branch_*``, ``Lineage_*_early``, terminal ``Lineage_*``),
        ``pseudotime`` (the true :math:`t`) and ``dpt_pseudotime`` (same), ``lineage``;
        ``obsm['X_pca']``, ``obsm['X_latent']``; ``obsp``: ``connectivities``, ``distances``;
        ``uns['neighbors']``.
    """
    import anndata as ad

    if n_cells < 20 * (n_lineages + 3) or n_lineages < 2 or latent_dim < 2 or n_neighbors < 2 or n_genes < n_pcs:
        raise ValueError(
            "user_like_atlas needs n_cells >= 20 * (n_lineages + 3), n_lineages >= 2, latent_dim >= 2, "
            f"n_neighbors >= 2 and n_genes >= n_pcs; got n_cells={n_cells}, n_lineages={n_lineages}, "
            f"latent_dim={latent_dim}, n_neighbors={n_neighbors}, n_genes={n_genes}, n_pcs={n_pcs}."
        )
    params = dict(
        kind="user_like", n_cells=n_cells, n_lineages=n_lineages, n_genes=n_genes, latent_dim=latent_dim,
        n_neighbors=n_neighbors, n_pcs=n_pcs, seed=seed,
    )  # fmt: skip
    digest = hashlib.sha1(repr(sorted(params.items())).encode()).hexdigest()[:12]
    path = cache_dir() / f"user_like_atlas_{n_cells}_{digest}.h5ad"
    if cache and n_cells >= _CACHE_MIN_CELLS and path.is_file():
        info("Loading the generated atlas from %s", path)
        return ad.read_h5ad(path)

    with timed("Generating a user-like atlas with %d cells, %d lineages, %d genes", n_cells, n_lineages, n_genes):
        rng = np.random.default_rng(seed)
        names = lineage_names(n_lineages)
        # The tree: trunk (t < 0.3) -> 2 branches (0.3 <= t < 0.6) -> lineages (t >= 0.6).
        n_mid = 2
        lineage_mid = np.arange(n_lineages) % n_mid

        def direction() -> np.ndarray:
            d = rng.normal(size=latent_dim)
            return d / np.linalg.norm(d)

        trunk_dir = direction()
        mid_dirs = np.stack([direction() for _ in range(n_mid)])
        leaf_dirs = np.stack([direction() for _ in range(n_lineages)])
        t = rng.uniform(0.0, 1.0, n_cells)
        lineage = rng.integers(0, n_lineages, n_cells)
        order = np.argsort(t, kind="stable")
        t, lineage = t[order], lineage[order]
        scale = 10.0
        z = scale * np.minimum(t, _TRUNK_END)[:, None] * trunk_dir
        z += scale * np.clip(t - _TRUNK_END, 0.0, 0.3)[:, None] * mid_dirs[lineage_mid[lineage]]
        z += scale * np.maximum(t - 0.6, 0.0)[:, None] * leaf_dirs[lineage]
        z += rng.normal(scale=0.35, size=z.shape)
        loadings = rng.normal(scale=1.0, size=(latent_dim, n_genes))
        baseline = rng.normal(scale=1.0, size=n_genes)
        library = rng.lognormal(mean=np.log(3000.0), sigma=0.3, size=n_cells)
        blocks = []
        for a in range(0, n_cells, _BLOCK):
            logits = z[a : a + _BLOCK] @ loadings * 0.4 + baseline
            logits -= logits.max(axis=1, keepdims=True)
            p = np.exp(logits)
            p /= p.sum(axis=1, keepdims=True)
            blocks.append(sp.csr_matrix(rng.poisson(p * library[a : a + _BLOCK, None]).astype(np.float32)))
        counts = sp.vstack(blocks, format="csr")
        total = np.asarray(counts.sum(axis=1)).ravel()
        X = sp.csr_matrix(sp.diags(1e4 / np.maximum(total, 1.0)) @ counts, dtype=np.float32)
        X.data = np.log1p(X.data)
        pcs = _pca_blocks(X, n_pcs)
        dist, idx = _knn(pcs, n_neighbors)
        rows = np.repeat(np.arange(n_cells), n_neighbors)
        distances = sp.csr_matrix((dist.ravel(), (rows, idx.ravel())), shape=(n_cells, n_cells))
        conn = _umap_connectivities(dist, idx)

        mid_names = [f"Branch_{i + 1}" for i in range(n_mid)]
        lin_names = np.array(names)
        clusters = np.where(
            t < _TRUNK_END,
            np.where(t < _TRUNK_END / 2, "Root", "Progenitor"),
            np.where(
                t < 0.6,
                np.array(mid_names)[lineage_mid[lineage]],
                np.where(t < 0.9, np.char.add(lin_names[lineage], "_early"), lin_names[lineage]),
            ),
        )
        categories = ["Root", "Progenitor", *mid_names, *[f"{n}_early" for n in names], *names]
        obs = pd.DataFrame(
            {
                "clusters": pd.Categorical(clusters, categories=categories),
                "pseudotime": t,
                "dpt_pseudotime": t,
                "lineage": pd.Categorical(np.where(t < _TRUNK_END, "Root", lin_names[lineage]), ["Root", *names]),
            },
            index=[f"cell_{i}" for i in range(n_cells)],
        )
        adata = ad.AnnData(X=X, obs=obs, var=pd.DataFrame(index=[f"gene_{g}" for g in range(n_genes)]))
        adata.layers["counts"] = counts
        adata.obsm["X_pca"] = pcs.astype(np.float32)
        adata.obsm["X_latent"] = z.astype(np.float32)
        adata.obsp["connectivities"] = conn
        adata.obsp["distances"] = distances
        adata.uns["neighbors"] = {
            "connectivities_key": "connectivities",
            "distances_key": "distances",
            "params": {"n_neighbors": n_neighbors, "method": "umap", "metric": "euclidean", "n_pcs": n_pcs},
        }
        adata.uns["clusters_colors"] = np.array([_PALETTE[i % len(_PALETTE)] for i in range(len(categories))])
        adata.uns["user_like_atlas"] = {k: v for k, v in params.items()}
    if cache and n_cells >= _CACHE_MIN_CELLS:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.h5ad")
        adata.write_h5ad(tmp)
        tmp.replace(path)
        info("Cached the generated atlas at %s", path)
    return adata
