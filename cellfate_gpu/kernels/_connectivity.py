"""ConnectivityKernel: a direction-less random walk on the kNN graph."""

from __future__ import annotations

from typing import Any, final

from cellfate_gpu._logging import timed, warning
from cellfate_gpu.kernels._base import UnidirectionalKernel
from cellfate_gpu.kernels._graph import host_data, read_connectivities
from cellfate_gpu.kernels._rowwise import edge_rows, row_normalize

__all__ = ["ConnectivityKernel", "check_graph"]


def check_graph(conn, key: str, *, connectivity: bool, symmetric: bool) -> None:
    """Warn (as CellRank does) when the host kNN graph is not connected or not symmetric."""
    if connectivity:
        from scipy.sparse.csgraph import connected_components

        n_comp, _ = connected_components(host_data(conn, f"adata.obsp[{key!r}]"), directed=False)
        if n_comp > 1:
            warning("kNN graph adata.obsp[%r] is not connected: %d connected components.", key, n_comp)
    if symmetric:
        diff = abs(conn - conn.T)
        if diff.nnz and diff.max() > 1e-8:
            warning("kNN graph adata.obsp[%r] is not symmetric.", key)


@final
class ConnectivityKernel(UnidirectionalKernel):
    r"""Transition matrix from kNN connectivities :math:`K` (CellRank 2.3.3 semantics).

    With density normalisation (default), :math:`\tilde K = Q^{-1} K Q^{-1}` with
    :math:`Q = \mathrm{diag}(q)`, :math:`q_j = \sum_i K_{ij}` (column sums), which removes the bias
    towards densely sampled regions; then :math:`T_{ij} = \tilde K_{ij} / \sum_k \tilde K_{ik}`.
    The left factor cancels in the row normalisation, so the kernel computes
    :math:`T_{ij} \propto K_{ij} / q_j` with one gather over the stored entries.

    Parameters
    ----------
    adata
        Annotated data with ``obsp[conn_key]``.
    conn_key
        Key of the connectivities in ``adata.obsp``.
    check_connectivity
        Warn if the graph is not connected.
    check_symmetric
        Warn if the graph is not symmetric.
    """

    def __init__(
        self,
        adata,
        conn_key: str = "connectivities",
        check_connectivity: bool = False,
        check_symmetric: bool = True,
    ):
        super().__init__(adata, backward=None)
        self._conn_key = conn_key
        self._check_connectivity = bool(check_connectivity)
        self._conn = read_connectivities(adata, conn_key)
        check_graph(self._conn, conn_key, connectivity=check_connectivity, symmetric=check_symmetric)

    @property
    def connectivities(self):
        """The kNN connectivities (host SciPy CSR, float64)."""
        return self._conn

    def _init_kwargs(self) -> dict[str, Any]:
        return {"conn_key": self._conn_key, "check_connectivity": self._check_connectivity}

    def compute_transition_matrix(self, density_normalize: bool = True, *, backend: Any = None) -> ConnectivityKernel:
        """Compute T on ``backend`` (name or instance; default ``settings.backend``); returns ``self``.

        Parameters
        ----------
        density_normalize
            Divide every edge weight by the target's degree :math:`q_j` before row normalisation.
        backend
            Where to build and keep T.
        """
        be = self._resolve_backend(backend)
        with timed("Computing transition matrix based on `adata.obsp[%r]` (backend=%r)", self._conn_key, be.name):
            K = be.from_scipy_csr(self._conn)
            if density_normalize:
                xp = be.xp
                data, indices, indptr = be.csr_components(K)
                q = be.row_sums(be.transpose(K))  # column sums
                one = xp.ones_like(q)
                inv_q = xp.where(q > 0, one / xp.where(q > 0, q, one), xp.zeros_like(q))
                # the 1/q_i of Q^-1 K Q^-1 cancels in the row normalisation; keep it for CellRank's rounding
                scaled = data * xp.take(inv_q, indices) * xp.take(inv_q, edge_rows(be, indptr))
                K = be.csr_from_components(scaled, indices, indptr, tuple(K.shape))
            T = row_normalize(be, K, what=f"connectivities adata.obsp[{self._conn_key!r}]")
            self._set_native(T, be, {"dnorm": bool(density_normalize), "key": self._conn_key})
        return self
