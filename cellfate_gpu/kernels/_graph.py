"""Reading and checking the kNN graph that kernels are built on."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

__all__ = ["read_connectivities", "read_obs_vector"]


def read_connectivities(adata, key: str = "connectivities") -> sp.csr_matrix:
    """``adata.obsp[key]`` as canonical float64 CSR, checked (square, finite, non-negative).

    Also accepts a scanpy neighbours key (``"neighbors"`` → ``connectivities``, ``"foo"`` → ``foo_connectivities``).
    """
    candidates = [key, f"{key}_connectivities", "connectivities" if key == "neighbors" else None]
    found = next((k for k in candidates if k is not None and k in adata.obsp), None)
    if found is None:
        raise KeyError(f"No kNN connectivities in adata.obsp[{key!r}]; available: {list(adata.obsp.keys())}.")
    C = sp.csr_matrix(adata.obsp[found], dtype=np.float64)
    if C.shape != (adata.n_obs, adata.n_obs):
        raise ValueError(f"adata.obsp[{found!r}] has shape {C.shape}, expected ({adata.n_obs}, {adata.n_obs}).")
    if not C.has_canonical_format:
        C = C.copy()
        C.sum_duplicates()
    bad = int(np.sum(~np.isfinite(C.data)))
    if bad:
        raise ValueError(f"adata.obsp[{found!r}] has {bad} non-finite entries.")
    neg = int(np.sum(C.data < 0))
    if neg:
        raise ValueError(f"adata.obsp[{found!r}] has {neg} negative entries; connectivities must be non-negative.")
    C.eliminate_zeros()
    return C


def read_obs_vector(adata, key: str, *, what: str) -> np.ndarray:
    """A finite float64 vector from ``adata.obs[key]`` (errors name the key and the number of bad cells)."""
    if key not in adata.obs:
        raise KeyError(f"No {what} in adata.obs[{key!r}]; available: {list(adata.obs.columns)}.")
    values = np.asarray(adata.obs[key], dtype=np.float64)
    bad = int(np.sum(~np.isfinite(values)))
    if bad:
        raise ValueError(f"adata.obs[{key!r}] has {bad} non-finite values (NaN or inf) of {values.size} cells.")
    return values
