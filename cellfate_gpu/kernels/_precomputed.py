"""The kernel of a given matrix: ``adata.obsp[key]``, a SciPy/dense matrix or another kernel's matrix.

:class:`PrecomputedKernel` is also what :meth:`Kernel.from_adata <cellfate_gpu.kernels.Kernel.from_adata>`
returns when the stored kernel cannot be rebuilt as its own class.
"""

from __future__ import annotations

from typing import Any, final

from cellfate_gpu._logging import info
from cellfate_gpu.backends import get_backend
from cellfate_gpu.kernels._base import Kernel, UnidirectionalKernel
from cellfate_gpu.kernels._validation import check_no_options, host_transition_csr

__all__ = ["PrecomputedKernel"]


@final
class PrecomputedKernel(UnidirectionalKernel):
    """Wrap a row-stochastic matrix, ``adata.obsp[obsp_key]``, or another kernel's matrix (CellRank 2.3.3).

    Unlike CellRank, the matrix is not silently row-normalised: it must already be row-stochastic
    (rows summing to one within ``1e-6``), else a ``ValueError`` names the number of bad rows.

    Parameters
    ----------
    object
        A SciPy sparse or dense matrix, a computed :class:`Kernel` (its matrix, direction and
        parameters are taken), an :class:`~anndata.AnnData` (read ``obsp[obsp_key]``), an
        ``obsp`` key (with ``adata``), or ``None`` to read ``adata.obsp[obsp_key]``.
    adata
        Annotated data (an empty one with matching ``n_obs`` is made for a bare matrix).
    obsp_key
        Key in ``adata.obsp``; default ``T_bwd`` if ``backward`` else ``T_fwd``.
    backward
        Direction of the process the matrix describes (``None``: no direction).
    backend
        Where the matrix is stored (default ``settings.backend``).

    Notes
    -----
    ``params['origin']`` records where the matrix came from (``'array'``,
    ``"adata.obsp['T_fwd']"`` or the source kernel's repr), as in CellRank.
    """

    def __init__(
        self,
        object: Any = None,
        adata=None,
        obsp_key: str | None = None,
        backward: bool | None = False,
        *,
        backend: Any = None,
    ):
        import anndata as ad

        params: dict[str, Any] = {}
        if isinstance(object, ad.AnnData):
            object, adata = None, object
        if isinstance(object, str):
            object, obsp_key = None, object
        if isinstance(object, Kernel):
            adata = adata if adata is not None else object.adata
            backward = object.backward
            matrix = object.transition_matrix
            params = {**object.params, "origin": repr(object)}
        elif object is None:
            if adata is None:
                raise ValueError("Give a matrix, a kernel, or adata with obsp_key.")
            obsp_key = obsp_key or ("T_bwd" if backward else "T_fwd")
            if obsp_key not in adata.obsp:
                raise KeyError(
                    f"No transition matrix in adata.obsp[{obsp_key!r}]; available: {list(adata.obsp.keys())}."
                )
            matrix = adata.obsp[obsp_key]
            params = {"origin": f"adata.obsp[{obsp_key!r}]"}
        else:
            matrix = object
            params = {"origin": "array"}
        host = host_transition_csr(matrix)
        placeholder = adata is None
        if adata is None:
            adata = ad.AnnData(shape=(host.shape[0], 0))
        elif adata.n_obs != host.shape[0]:
            raise ValueError(f"Transition matrix has shape {host.shape} but adata has {adata.n_obs} cells.")
        super().__init__(adata, backward=None)
        self._placeholder_adata = placeholder
        self._direction = None if backward is None else bool(backward)
        self._obsp_key = obsp_key
        self._stored_repr: str | None = None
        be = get_backend(backend)
        self._set_native(be.ensure_native(host), be, params)
        info("Using a precomputed transition matrix (%d cells) on backend %r", host.shape[0], be.name)

    @property
    def backward(self) -> bool | None:
        """Direction of the process the matrix describes."""
        return self._direction

    def _init_kwargs(self) -> dict[str, Any]:
        return {} if self._direction is None else {"backward": self._direction}

    def compute_transition_matrix(self, *args: Any, backend: Any = None, **kwargs: Any) -> PrecomputedKernel:
        """Nothing to compute; moves T to ``backend`` if one is given. Returns ``self``.

        Raises
        ------
        TypeError
            For any other argument (a precomputed matrix has no parameters).
        """
        if args:
            raise TypeError(
                f"PrecomputedKernel.compute_transition_matrix takes no positional arguments, got {len(args)}."
            )
        check_no_options("PrecomputedKernel.compute_transition_matrix", kwargs)
        if backend is not None:
            be = self._resolve_backend(backend)
            if be is not self._backend:
                self._set_native(be.from_scipy_csr(self.transition_matrix), be, self._params)
        return self
