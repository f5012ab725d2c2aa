"""Explicit moves of an AnnData's arrays between host and GPU (in the rapids-singlecell style).

Every move is a named call and is logged (the backend's DEBUG transfer line plus an INFO summary).
AnnData stores CuPy arrays and ``cupyx.scipy.sparse`` matrices natively, so the moved objects stay
in their slots (``adata.layers``, ``adata.obsp``, ``adata.obsm``, ``adata.X``); other backends'
arrays (JAX) cannot live in an AnnData and are refused with a clear message.

Examples
--------
>>> from cellfate_gpu.device import anndata_to_device, anndata_to_host  # doctest: +SKIP
>>> anndata_to_device(adata, obsp=["connectivities"], layers=["velocity"])  # doctest: +SKIP
>>> ...  # kernels and estimators now read the device copies
>>> anndata_to_host(adata)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import scipy.sparse as sp

from cellfate_gpu._logging import info
from cellfate_gpu.backends import get_backend

__all__ = ["anndata_to_device", "anndata_to_host"]

#: Backends whose arrays AnnData can hold.
_ANNDATA_BACKENDS = {"cupy"}


def _slots(adata: Any, X: bool, layers, obsp, obsm) -> list[tuple[str, Any, str | None]]:
    """``(slot name, mapping, key)`` for every requested entry; ``key=None`` means ``adata.X``."""
    out: list[tuple[str, Any, str | None]] = []
    if X:
        out.append(("X", None, None))
    for slot, keys in (("layers", layers), ("obsp", obsp), ("obsm", obsm)):
        if keys is None:
            continue
        mapping = getattr(adata, slot)
        keys = list(mapping.keys()) if keys == "all" else [keys] if isinstance(keys, str) else list(keys)
        for key in keys:
            if key not in mapping:
                raise KeyError(f"adata.{slot}[{key!r}] not found; available: {sorted(mapping.keys())}.")
            out.append((slot, mapping, key))
    return out


def anndata_to_device(
    adata: Any,
    *,
    X: bool = False,
    layers: str | Iterable[str] | None = None,
    obsp: str | Iterable[str] | None = None,
    obsm: str | Iterable[str] | None = None,
    backend: str = "cupy",
) -> None:
    """Move the named arrays of ``adata`` to the GPU, in place.

    Sparse entries become the backend's native CSR matrix (:meth:`Backend.from_scipy_csr`, stored
    in ``settings.dtype``), dense ones device arrays (:meth:`Backend.asarray`). Entries already on the
    device are left alone.

    Parameters
    ----------
    adata
        The :class:`anndata.AnnData` to modify.
    X
        Whether to move ``adata.X``.
    layers, obsp, obsm
        Keys to move from each slot (a key, a list of keys, or ``"all"``).
    backend
        A backend whose arrays AnnData can hold (``"cupy"``).

    Raises
    ------
    KeyError
        A requested key is missing.
    ValueError
        ``backend`` names a backend whose arrays AnnData cannot store.
    """
    bk = get_backend(backend)
    if bk.name not in _ANNDATA_BACKENDS:
        raise ValueError(
            f"backend={bk.name!r}: AnnData cannot store its arrays; move data per computation instead "
            f"(kernels and estimators accept backend=...), or use one of {sorted(_ANNDATA_BACKENDS)}."
        )
    moved = 0
    for slot, mapping, key in _slots(adata, X, layers, obsp, obsm):
        value = adata.X if key is None else mapping[key]
        name = "X" if key is None else f"{slot}[{key!r}]"
        if sp.issparse(value):
            new = bk.from_scipy_csr(sp.csr_matrix(value))
        elif isinstance(value, np.ndarray):
            new = bk.asarray(value)
        else:  # already on the device (or a type this helper does not move)
            continue
        if key is None:
            adata.X = new
        else:
            mapping[key] = new
        moved += 1
        info("Moved adata.%s to the %r device", name, bk.name)
    info("Moved %d array(s) of the AnnData to %r", moved, bk.name)


def anndata_to_host(adata: Any, *, backend: str = "cupy") -> None:
    """Move every device array of ``adata`` (``X``, layers, obsp, obsm) back to NumPy/SciPy, in place.

    Native sparse matrices become ``scipy.sparse.csr_matrix`` (:meth:`Backend.to_scipy_csr`), device
    arrays NumPy arrays (:meth:`Backend.to_host`).
    """
    bk = get_backend(backend)
    moved = 0
    entries: list[tuple[Any, str | None, Any]] = [(None, None, adata.X)]
    for slot in ("layers", "obsp", "obsm"):
        mapping = getattr(adata, slot)
        entries.extend((mapping, key, mapping[key]) for key in list(mapping.keys()))
    for mapping, key, value in entries:
        if value is None or isinstance(value, np.ndarray) or sp.issparse(value):
            continue
        if bk.is_native(value) or _is_device_sparse(value):
            new = bk.to_scipy_csr(value)
        elif hasattr(value, "get") or hasattr(value, "__dlpack__"):
            new = bk.to_host(value)
        else:
            continue
        if mapping is None:
            adata.X = new
        else:
            mapping[key] = new
        moved += 1
    info("Moved %d array(s) of the AnnData to the host", moved)


def _is_device_sparse(value: Any) -> bool:
    cls = type(value)
    return cls.__module__.startswith("cupyx.scipy.sparse") and hasattr(value, "tocsr")
