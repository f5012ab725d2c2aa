"""A small time-course AnnData and random couplings between its time points (real-time kernel tests)."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

__all__ = ["SIZES", "cells_of_day", "random_couplings", "time_course_adata"]

#: Cells per time point.
SIZES = {0: 12, 1: 15, 2: 10}


def time_course_adata(*, clusters: bool = False) -> ad.AnnData:
    """37 cells with shuffled time points (``obs['day']``) and a symmetric kNN graph.

    With ``clusters``, also a random categorical ``obs['ct']`` with categories ``a``, ``b``, ``c``.
    """
    rng = np.random.default_rng(0)
    t = np.repeat(list(SIZES), list(SIZES.values()))
    rng.shuffle(t)
    n = t.size
    pts = rng.normal(size=(n, 2))
    d = ((pts[:, None] - pts[None]) ** 2).sum(-1)
    W = np.exp(-d) * (d < np.sort(d, axis=1)[:, [6]])
    np.fill_diagonal(W, 0)
    W = np.maximum(W, W.T)
    obs = {"day": pd.Categorical(t)}
    if clusters:
        obs["ct"] = pd.Categorical(rng.choice(["a", "b", "c"], n))
    adata = ad.AnnData(X=np.zeros((n, 2), dtype=np.float32), obs=pd.DataFrame(obs, index=[f"c{i}" for i in range(n)]))
    adata.obsp["connectivities"] = sp.csr_matrix(W)
    return adata


def cells_of_day(adata: ad.AnnData, day) -> np.ndarray:
    """Indices of the cells of time point ``day``."""
    return np.flatnonzero(adata.obs["day"].to_numpy() == day)


def random_couplings(seed: int = 1, sparse: bool = False) -> dict:
    """Positive random couplings for the pairs (0, 1) and (1, 2); every row has an entry."""
    rng = np.random.default_rng(seed)
    out = {}
    for a, b in [(0, 1), (1, 2)]:
        C = rng.random((SIZES[a], SIZES[b])) * (rng.random((SIZES[a], SIZES[b])) < 0.5)
        C[np.arange(SIZES[a]), rng.integers(0, SIZES[b], SIZES[a])] += 0.1  # every row non-empty
        out[a, b] = sp.csr_matrix(C) if sparse else C
    return out
