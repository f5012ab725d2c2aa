"""ConnectivityKernel: a direction-less random walk on the kNN graph."""

from __future__ import annotations

from typing import Any, final

from cellfate_gpu._logging import timed
from cellfate_gpu.kernels._base import UnidirectionalKernel
from cellfate_gpu.kernels._graph import read_connectivities
from cellfate_gpu.kernels._rowwise import row_normalize

__all__ = ["ConnectivityKernel"]


@final
class ConnectivityKernel(UnidirectionalKernel):
    r"""Transition matrix from kNN connectivities :math:`K`.

    With density normalisation (default), :math:`\tilde K = D^{-1} K D^{-1}` with
    :math:`D = \mathrm{diag}(\sum_i K_{ij})`, which removes the bias towards densely sampled
    regions; then :math:`T_{ij} = \tilde K_{ij} / \sum_j \tilde K_{ij}`.

    Parameters
    ----------
    adata
        Annotated data with ``obsp[conn_key]``.
    conn_key
        Key of the connectivities in ``adata.obsp``.
    check_connectivity
        Warn if the graph is not connected.
    """

    def __init__(self, adata, conn_key: str = "connectivities", check_connectivity: bool = False):
        super().__init__(adata, backward=None)
        self._conn_key = conn_key
        self._conn = read_connectivities(adata, conn_key)
        if check_connectivity:
            from scipy.sparse.csgraph import connected_components

            from cellfate_gpu._logging import warning

            n_comp, _ = connected_components(self._conn, directed=False)
            if n_comp > 1:
                warning("The kNN graph in adata.obsp[%r] has %d connected components.", conn_key, n_comp)

    def compute_transition_matrix(self, density_normalize: bool = True, *, backend: Any = None) -> ConnectivityKernel:
        """Compute T on ``backend`` (default: ``settings.backend``); returns ``self``."""
        be = self._resolve_backend(backend)
        with timed("Computing transition matrix based on `adata.obsp[%r]` (backend=%r)", self._conn_key, be.name):
            K = be.from_scipy_csr(self._conn)
            if density_normalize:
                xp = be.xp
                q = be.row_sums(be.transpose(K))  # column sums = row sums for a symmetric graph
                one = xp.ones_like(q)
                inv_q = xp.where(q > 0, one / xp.where(q > 0, q, one), xp.zeros_like(q))
                K = be.scale_rows(be.transpose(be.scale_rows(be.transpose(K), inv_q)), inv_q)
            T = row_normalize(be, K, what=f"connectivities adata.obsp[{self._conn_key!r}]")
            self._set_native(T, be, {"dnorm": bool(density_normalize), "key": self._conn_key})
        return self

    def _repr_params(self) -> str:
        return f"dnorm={self._params['dnorm']}, key={self._params['key']!r}"
