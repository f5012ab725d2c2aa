"""Test matrices: row-stochastic kNN transition matrices (reversible and directed) and random ones."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from scipy.spatial import cKDTree

__all__ = ["knn_transition", "random_stochastic", "sorted_eigenvalues"]


def _points(n: int, kind: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Cells in 3-D and a velocity per cell."""
    if kind == "cycle":
        theta = rng.uniform(0, 2 * np.pi, n)
        x = np.c_[np.cos(theta), np.sin(theta), 0.1 * rng.standard_normal(n)]
        x[:, :2] += 0.05 * rng.standard_normal((n, 2))
        v = np.c_[-np.sin(theta), np.cos(theta), np.zeros(n)]
    elif kind == "branch":
        # a stem splitting into three branches: a differentiation tree
        t = rng.uniform(0, 1, n)
        branch = rng.integers(0, 3, n)
        dirs = np.array([[1.0, 1.0, 0.0], [1.0, -1.0, 0.0], [1.0, 0.0, 1.0]])
        stem = t < 0.3
        x = np.where(stem[:, None], np.c_[t, 0 * t, 0 * t], np.c_[0.3 + 0 * t, 0 * t, 0 * t])
        x = x + np.where(stem[:, None], 0.0, (t - 0.3)[:, None] * dirs[branch])
        v = np.where(stem[:, None], np.array([1.0, 0, 0]), dirs[branch] / np.sqrt(2))
        x += 0.03 * rng.standard_normal((n, 3))
    elif kind == "clusters":
        # metastable Gaussian clusters; a random linear flow with a rotation gives directed chains
        centers = rng.standard_normal((5, 3)) * 2.0
        x = centers[rng.integers(0, 5, n)] + 0.4 * rng.standard_normal((n, 3))
        M = rng.standard_normal((3, 3))
        v = x @ (M - M.T).T + 0.3 * x @ M.T
    else:
        raise ValueError(kind)
    return x, v


def knn_transition(
    n: int, *, seed: int = 0, kind: str = "cycle", n_neighbors: int = 15, directed: float = 0.0
) -> sp.csr_matrix:
    """Row-stochastic kNN transition matrix of simulated cells.

    ``directed = 0`` gives a reversible chain (real spectrum); ``directed > 0`` biases transitions
    along the simulated velocity, which on a ``"cycle"`` produces complex eigenvalues near 1.
    """
    rng = np.random.default_rng(seed)
    x, v = _points(n, kind, rng)
    dist, idx = cKDTree(x).query(x, n_neighbors + 1)
    dist, idx = dist[:, 1:], idx[:, 1:]
    sigma = np.median(dist)
    disp = x[idx] - x[:, None, :]
    cos = np.einsum("ijk,ik->ij", disp, v) / (np.linalg.norm(disp, axis=2) * np.linalg.norm(v, axis=1)[:, None] + 1e-12)
    w = np.exp(-((dist / sigma) ** 2)) * np.exp(directed * cos)
    w /= w.sum(axis=1, keepdims=True)
    A = sp.csr_matrix((w.ravel(), idx.ravel(), np.arange(0, n * n_neighbors + 1, n_neighbors)), shape=(n, n))
    A.sum_duplicates()
    A.sort_indices()
    return A


def random_stochastic(n: int, *, seed: int = 0, density: float = 0.02, self_loops: float = 0.0) -> sp.csr_matrix:
    """Sparse random row-stochastic matrix (every row has at least one entry)."""
    rng = np.random.default_rng(seed)
    A = sp.random(n, n, density=density, random_state=rng, format="csr") + sp.eye(n, format="csr") * (self_loops + 1e-3)
    A = sp.csr_matrix(A)
    return sp.csr_matrix(sp.diags(1.0 / np.asarray(A.sum(axis=1)).ravel()) @ A)


def sorted_eigenvalues(A, which: str) -> np.ndarray:
    """All eigenvalues of ``A`` (dense) sorted by ``which``; conjugate pairs ``+`` first."""
    from cellfate_gpu.linalg.krylov_schur import sort_key

    ev = np.linalg.eigvals(A.toarray() if sp.issparse(A) else A)
    return ev[np.lexsort((-ev.imag, -sort_key(which)(ev)))]
