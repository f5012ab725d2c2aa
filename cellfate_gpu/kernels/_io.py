"""Kernels in AnnData and ``.h5ad``: CellRank's layout for a transition matrix and its parameters.

``adata.obsp[key]`` holds T (SciPy CSR) and ``adata.uns[f"{key}_params"]`` a dict
``{"params": ..., "init": ..., "params_order": ..., "repr": ...}``: the parameters of the last
computation, the constructor arguments that rebuild the kernel, the order of the parameters
(h5ad sorts the keys of a mapping) and the kernel's repr. CellRank writes ``params`` and
``init``; the other two are ours and CellRank ignores them.

Plain functions over AnnData and dicts; :meth:`Kernel.write_to_adata
<cellfate_gpu.kernels.Kernel.write_to_adata>` and :meth:`Kernel.from_adata
<cellfate_gpu.kernels.Kernel.from_adata>` call them.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import scipy.sparse as sp

from cellfate_gpu import _keys
from cellfate_gpu._logging import info

__all__ = ["StoredKernel", "read_kernel", "serialisable", "to_plain", "write_kernel"]


def serialisable(params: dict[str, Any]) -> dict[str, Any]:
    """``params`` in a form h5ad can store: ``None`` dropped, callables and other objects stringified."""
    out: dict[str, Any] = {}
    for k, v in params.items():
        if v is None:
            continue
        if isinstance(v, bool | int | float | str | np.bool_ | np.integer | np.floating):
            out[str(k)] = v
        elif isinstance(v, dict):
            out[str(k)] = serialisable(v)
        elif isinstance(v, list | tuple) and v and all(isinstance(x, int | float | str) for x in v):
            if len({type(x) for x in v}) == 1:
                out[str(k)] = list(v)
            else:
                out[str(k)] = str(list(v))
        elif isinstance(v, np.ndarray) and v.dtype.kind in "biuf":
            out[str(k)] = v
        else:
            out[str(k)] = getattr(v, "__name__", None) or str(v)
    return out


def to_plain(d: Any) -> dict[str, Any]:
    """A mapping read back from h5ad (values may be NumPy scalars) as a plain dict."""
    out = {}
    for k, v in dict(d).items():
        if isinstance(v, dict):
            out[k] = to_plain(v)
        elif isinstance(v, np.generic):
            out[k] = v.item()
        else:
            out[k] = v
    return out


def write_kernel(
    adata, key: str, T: sp.csr_matrix, params: dict[str, Any], init: dict[str, Any], repr_: str, *, copy: bool
) -> None:
    """Write host ``T`` to ``adata.obsp[key]`` and the rest to ``adata.uns[f"{key}_params"]``.

    An existing dict under ``uns[f"{key}_params"]`` is updated, not replaced (other tools may
    keep their own entries there).
    """
    pkey = _keys.transition_params(key)
    stored = serialisable(params)
    entry = {
        **dict(adata.uns.get(pkey, {}) or {}),
        "params": stored,
        "params_order": np.array(list(stored), dtype=object) if stored else np.array([], dtype=str),
        "init": serialisable(init),
        "repr": repr_,
    }
    adata.obsp[key] = T.copy() if copy else T
    adata.uns[pkey] = entry
    info("Writing the transition matrix to adata.obsp[%r] and its parameters to adata.uns[%r]", key, pkey)


@dataclasses.dataclass(frozen=True)
class StoredKernel:
    """What :func:`read_kernel` found under ``obsp[key]`` and ``uns[f"{key}_params"]``.

    Attributes
    ----------
    key
        The ``obsp`` key.
    matrix
        ``adata.obsp[key]`` (a copy if asked for).
    params
        The stored parameters, in the order they were written.
    init
        The stored constructor arguments.
    repr
        The stored repr (``None`` if absent).
    backward
        The direction: ``init["backward"]`` if stored, else from the key's ``_fwd``/``_bwd`` suffix,
        else ``None``.
    """

    key: str
    matrix: Any
    params: dict[str, Any]
    init: dict[str, Any]
    repr: str | None
    backward: bool | None


def read_kernel(adata, key: str, *, copy: bool = False) -> StoredKernel:
    """Read a transition matrix written by CellRank or by :func:`write_kernel`.

    Raises
    ------
    KeyError
        ``adata.obsp[key]`` is missing (the message lists the keys there are).
    """
    if key not in adata.obsp:
        raise KeyError(f"No transition matrix in adata.obsp[{key!r}]; available: {list(adata.obsp.keys())}.")
    stored = dict(adata.uns.get(_keys.transition_params(key), {}) or {})
    params = to_plain(stored.get("params", {}) or {})
    order = [str(k) for k in stored.get("params_order", [])]  # h5ad sorts keys; restore the written order
    params = {k: params[k] for k in [*order, *params] if k in params}
    init = to_plain(stored.get("init", {}) or {})
    T = adata.obsp[key]
    backward = init.get("backward", True if key.endswith("_bwd") else False if key.endswith("_fwd") else None)
    return StoredKernel(
        key=key,
        matrix=T.copy() if copy else T,
        params=params,
        init=init,
        repr=stored.get("repr"),
        backward=None if backward is None else bool(backward),
    )
