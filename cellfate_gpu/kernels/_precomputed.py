"""PrecomputedKernel: a transition matrix the user already has."""

from __future__ import annotations

from typing import Any, final

import numpy as np
import scipy.sparse as sp

from cellfate_gpu._logging import info
from cellfate_gpu.backends import get_backend
from cellfate_gpu.kernels._base import Kernel, UnidirectionalKernel

__all__ = ["PrecomputedKernel"]


@final
class PrecomputedKernel(UnidirectionalKernel):
    """Wrap a row-stochastic matrix, ``adata.obsp[obsp_key]`` or another kernel's matrix.

    Parameters
    ----------
    object
        A sparse/dense matrix, a :class:`Kernel`, or ``None`` to read ``adata.obsp[obsp_key]``.
    adata
        Annotated data (an empty one with matching ``n_obs`` is made if ``None``).
    obsp_key
        Key in ``adata.obsp`` when ``object`` is ``None`` (default ``T_fwd``).
    backward
        Direction of the process the matrix describes.
    backend
        Where the matrix is stored (default: settings).
    """

    def __init__(
        self,
        object: Any = None,
        adata=None,
        obsp_key: str | None = None,
        backward: bool = False,
        *,
        backend: Any = None,
    ):
        if isinstance(object, Kernel):
            adata = adata if adata is not None else object.adata
            backward = bool(object.backward) if object.backward is not None else backward
            matrix = object.transition_matrix
        elif object is None:
            if adata is None:
                raise ValueError("Give a matrix, a kernel, or adata with obsp_key.")
            obsp_key = obsp_key or ("T_bwd" if backward else "T_fwd")
            if obsp_key not in adata.obsp:
                raise KeyError(
                    f"No transition matrix in adata.obsp[{obsp_key!r}]; available: {list(adata.obsp.keys())}."
                )
            matrix = adata.obsp[obsp_key]
        else:
            matrix = object
        if not sp.issparse(matrix):
            matrix = np.asarray(matrix, dtype=np.float64)
            if matrix.ndim != 2:
                raise ValueError(f"Transition matrix must be 2-D, got shape {matrix.shape}.")
        if adata is None:
            import anndata as ad

            adata = ad.AnnData(shape=(matrix.shape[0], 0))
        super().__init__(adata, backward=None)
        self._direction = bool(backward)
        self._origin = obsp_key
        be = get_backend(backend)
        self._set_native(be.ensure_native(sp.csr_matrix(matrix, dtype=np.float64)), be, {})
        info("Using a precomputed transition matrix (%d cells) on backend %r", matrix.shape[0], be.name)

    @property
    def backward(self) -> bool:
        """Direction of the process the matrix describes."""
        return self._direction

    def compute_transition_matrix(self, *args: Any, backend: Any = None, **kwargs: Any) -> PrecomputedKernel:
        """Nothing to compute; moves T to ``backend`` if one is given."""
        if backend is not None:
            be = get_backend(backend)
            if be is not self._backend:
                self._set_native(be.from_scipy_csr(self.transition_matrix), be, self._params)
        return self

    def __repr__(self) -> str:
        return f"{'~' if self._direction else ''}PrecomputedKernel[n={len(self)}]"
