"""Reading and checking the kNN graph that kernels are built on."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from cellfate_gpu._logging import debug

__all__ = ["count_isolated", "host_data", "read_connectivities", "read_obs_vector"]


def read_connectivities(adata, key: str = "connectivities") -> Any:
    """``adata.obsp[key]`` as canonical float64 CSR, checked (square, finite, non-negative).

    Also accepts a scanpy neighbours key (``"neighbors"`` → ``connectivities``, ``"foo"`` → ``foo_connectivities``).

    Host input gives a SciPy CSR matrix. A backend's native matrix (a ``cupyx`` CSR after
    :func:`cellfate_gpu.device.anndata_to_device`) stays on its device: it is checked there
    (:func:`_check_native`; one read of three counts through the backend's ``to_host``) and
    returned as that backend's canonical float64 CSR, a copy, so the caller's matrix is never
    modified. Kernels then build ``T`` from it without a host round trip.
    """
    candidates = [key, f"{key}_connectivities", "connectivities" if key == "neighbors" else None]
    found = next((k for k in candidates if k is not None and k in adata.obsp), None)
    if found is None:
        raise KeyError(f"No kNN connectivities in adata.obsp[{key!r}]; available: {list(adata.obsp.keys())}.")
    _refuse_distances(adata, found)
    value = adata.obsp[found]
    if not sp.issparse(value) and not isinstance(value, np.ndarray):
        from cellfate_gpu.backends import backend_of

        owner = backend_of(value)
        if owner is None:
            raise TypeError(
                f"adata.obsp[{found!r}] is a {type(value).__module__}.{type(value).__name__}; expected a SciPy "
                "sparse matrix, a NumPy array or a backend's native sparse matrix (e.g. cupyx CSR)."
            )
        return _check_native(owner, owner.from_scipy_csr(value, dtype=np.float64), found, adata.n_obs)
    C = sp.csr_matrix(value, dtype=np.float64)
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


def _check_native(backend, C: Any, key: str, n_obs: int) -> Any:
    """The host checks of :func:`read_connectivities` on the backend, for a native float64 CSR copy ``C``.

    The non-finite, negative and zero entries are counted on the device and read in one transfer;
    explicit zeros are then dropped (on the device, from the backend's components).
    """
    if tuple(C.shape) != (n_obs, n_obs):
        raise ValueError(f"adata.obsp[{key!r}] has shape {tuple(C.shape)}, expected ({n_obs}, {n_obs}).")
    xp = backend.xp
    data = backend.csr_components(C)[0]
    counts = xp.stack(
        [
            xp.sum(xp.astype(~xp.isfinite(data), xp.int64)),
            xp.sum(xp.astype(data < 0, xp.int64)),
            xp.sum(xp.astype(data == 0, xp.int64)),
        ]
    )
    bad, neg, zeros = (int(c) for c in backend.to_host(counts))
    if bad:
        raise ValueError(f"adata.obsp[{key!r}] has {bad} non-finite entries.")
    if neg:
        raise ValueError(f"adata.obsp[{key!r}] has {neg} negative entries; connectivities must be non-negative.")
    if zeros:
        C.eliminate_zeros()  # C is the backend's own copy (from_scipy_csr), not the caller's matrix
    return C


def count_isolated(C: Any) -> int:
    """Number of rows without a stored entry, for a SciPy or a backend's native CSR matrix.

    On a device this is one count read through the owning backend's ``to_host``.
    """
    if sp.issparse(C):
        return int(np.sum(np.diff(sp.csr_matrix(C).indptr) == 0))
    from cellfate_gpu.backends import backend_of

    backend = backend_of(C)
    xp = backend.xp
    _, _, indptr = backend.csr_components(C)
    empty = xp.sum(xp.astype((indptr[1:] - indptr[:-1]) == 0, xp.int64))
    return int(backend.to_host(xp.reshape(empty, (1,)))[0])


def host_data(value: Any, where: str) -> Any:
    """``value`` (a layer, ``obsm`` entry or ``X``) on the host, moved by its backend's named transfer.

    NumPy arrays and SciPy matrices are returned as they are; a device array (CuPy, after
    :func:`cellfate_gpu.device.anndata_to_device`) comes through its backend's ``to_host``, a
    device sparse matrix through its ``to_scipy_csr``: logged transfers, never an implicit
    conversion. Other objects (lists, pandas frames) are returned for ``numpy.asarray``.
    """
    if sp.issparse(value) or isinstance(value, np.ndarray):
        return value
    from cellfate_gpu.backends import array_backend_of, backend_of

    owner = backend_of(value) or array_backend_of(value)
    if owner is None:
        return value
    debug("Reading %s from the %r device to the host", where, owner.name)
    return owner.to_scipy_csr(value) if hasattr(value, "tocsr") else owner.to_host(value)


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
