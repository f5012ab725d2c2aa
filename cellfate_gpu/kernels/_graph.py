"""Reading and checking the kNN graph that kernels are built on."""

from __future__ import annotations

import numpy as np
import pandas as pd
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
    _refuse_distances(adata, found)
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


def _refuse_distances(adata, key: str) -> None:
    """Refuse a kNN *distance* matrix (smaller = closer) where affinities (larger = closer) are needed."""
    distance_keys = {
        str(v.get("distances_key"))
        for v in adata.uns.values()
        if isinstance(v, dict) and "distances_key" in v and "connectivities_key" in v
    }
    if key == "distances" or key.endswith("_distances") or key in distance_keys:
        raise ValueError(
            f"adata.obsp[{key!r}] holds kNN distances (smaller = closer), but kernels need connectivities "
            "(affinities, larger = closer), e.g. adata.obsp['connectivities'] from scanpy.pp.neighbors."
        )


def read_obs_vector(adata, key: str, *, what: str) -> np.ndarray:
    """A finite float64 vector from ``adata.obs[key]`` (errors name the key and the number of bad cells)."""
    if key not in adata.obs:
        raise KeyError(f"No {what} in adata.obs[{key!r}]; available: {list(adata.obs.columns)}.")
    col = adata.obs[key]
    dtype = col.dtype.categories.dtype if isinstance(col.dtype, pd.CategoricalDtype) else col.dtype
    if not pd.api.types.is_numeric_dtype(dtype) or pd.api.types.is_bool_dtype(dtype):
        raise TypeError(f"adata.obs[{key!r}] must be numeric to be used as {what}, found dtype {col.dtype}.")
    values = np.asarray(col, dtype=np.float64)
    bad = int(np.sum(~np.isfinite(values)))
    if bad:
        raise ValueError(f"adata.obs[{key!r}] has {bad} non-finite values (NaN or inf) of {values.size} cells.")
    return values
