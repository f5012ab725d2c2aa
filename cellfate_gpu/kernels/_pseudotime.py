"""PseudotimeKernel: bias the kNN graph towards increasing pseudotime (Palantir / VIA style)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, final

import numpy as np

from cellfate_gpu._logging import timed
from cellfate_gpu.kernels._base import BidirectionalKernel
from cellfate_gpu.kernels._graph import read_connectivities, read_obs_vector
from cellfate_gpu.kernels._rowwise import rank_within_rows, row_normalize

__all__ = ["PseudotimeKernel", "hard_threshold_weights", "soft_threshold_weights"]


def hard_threshold_weights(backend, conn_data, indptr, t_cell, t_neigh, frac_to_keep: float):
    r"""Hard scheme (Palantir-like, as CellRank 2.3.3).

    Keep every edge to a cell that is not earlier (:math:`t_j \ge t_i`), plus the
    :math:`\min(30, \lfloor k_i \cdot frac\_to\_keep \rfloor)` strongest
    edges of row :math:`i` (:math:`k_i` its number of neighbours) whatever their direction; the kept
    connectivities keep their value, all others become zero.
    """
    xp = backend.xp
    counts = indptr[1:] - indptr[:-1]
    k_thresh = xp.clip(xp.astype(xp.floor(xp.astype(counts, xp.float64) * frac_to_keep), indptr.dtype), 0, 30)
    rank = rank_within_rows(backend, conn_data, indptr)
    keep = (rank < xp.take(k_thresh, backend.row_ids(indptr))) | (t_neigh >= t_cell)
    return xp.where(keep, conn_data, xp.zeros_like(conn_data))


def soft_threshold_weights(backend, conn_data, t_cell, t_neigh, b: float, nu: float):
    r"""Soft scheme (VIA-like, as CellRank 2.3.3).

    An edge to an earlier cell is down-weighted by the generalised logistic function
    :math:`2 / (1 + e^{b\,\Delta t})^{1/\nu}`, :math:`\Delta t = t_i - t_j > 0`.
    """
    xp = backend.xp
    dt = t_cell - t_neigh
    weight = 2.0 / (1.0 + xp.exp(b * xp.where(dt > 0, dt, xp.zeros_like(dt)))) ** (1.0 / nu)
    return conn_data * xp.where(dt > 0, weight, xp.ones_like(weight))


@final
class PseudotimeKernel(BidirectionalKernel):
    r"""Transition matrix from the kNN graph biased by a pseudotime.

    Parameters
    ----------
    adata
        Annotated data with ``obs[time_key]`` and ``obsp['connectivities']``.
    time_key
        Key of the pseudotime in ``adata.obs``.
    backward
        Reverse the direction (uses :math:`\\max t - t`).
    conn_key
        Key of the kNN connectivities in ``adata.obsp``.
    """

    def __init__(
        self, adata, time_key: str = "dpt_pseudotime", backward: bool = False, conn_key: str = "connectivities"
    ):
        super().__init__(adata, backward=backward)
        self._time_key, self._conn_key = time_key, conn_key
        pt = read_obs_vector(adata, time_key, what="pseudotime")
        self._pseudotime = (pt.max() - pt) if backward else pt
        self._conn = read_connectivities(adata, conn_key)

    @property
    def pseudotime(self) -> np.ndarray:
        """The pseudotime used (reversed when backward)."""
        return self._pseudotime

    def __invert__(self) -> PseudotimeKernel:
        return PseudotimeKernel(
            self.adata, time_key=self._time_key, backward=not self.backward, conn_key=self._conn_key
        )

    def compute_transition_matrix(
        self,
        threshold_scheme: str | Callable = "hard",
        frac_to_keep: float = 0.3,
        b: float = 10.0,
        nu: float = 0.5,
        check_irreducibility: bool = False,
        *,
        backend: Any = None,
    ) -> PseudotimeKernel:
        """Compute T on ``backend`` with the ``"hard"``, ``"soft"`` or a custom thresholding scheme.

        A callable scheme is called as ``scheme(cell_pseudotime, neighbour_pseudotime, connectivities)``
        with one entry per stored edge (vectorised over all edges, unlike CellRank's per-row call)
        and must return the new edge weights.
        """
        if not 0 <= frac_to_keep <= 1:
            raise ValueError(f"frac_to_keep must be in [0, 1], got {frac_to_keep!r}.")
        if isinstance(threshold_scheme, str) and threshold_scheme not in ("hard", "soft"):
            raise ValueError(f"threshold_scheme must be 'hard', 'soft' or a callable, got {threshold_scheme!r}.")
        be = self._resolve_backend(backend)
        with timed("Computing transition matrix based on pseudotime (backend=%r)", be.name):
            xp = be.xp
            C = be.from_scipy_csr(self._conn)
            data, indices, indptr = be.csr_components(C)
            t = be.asarray(self._pseudotime)
            t_cell = xp.take(t, be.row_ids(indptr))
            t_neigh = xp.take(t, indices)
            if threshold_scheme == "hard":
                weights = hard_threshold_weights(be, data, indptr, t_cell, t_neigh, frac_to_keep)
                params = {"dnorm": False, "scheme": "hard", "frac_to_keep": frac_to_keep}
            elif threshold_scheme == "soft":
                weights = soft_threshold_weights(be, data, t_cell, t_neigh, b, nu)
                params = {"dnorm": False, "scheme": "soft", "b": b, "nu": nu}
            else:
                weights = xp.asarray(threshold_scheme(t_cell, t_neigh, data))
                params = {"dnorm": False, "scheme": getattr(threshold_scheme, "__name__", "custom")}
            biased = be.csr_from_components(weights, indices, indptr, tuple(C.shape))
            T = row_normalize(be, biased, what="pseudotime-biased kNN graph")
            self._set_native(T, be, params)
        if check_irreducibility:
            _warn_if_reducible(self.transition_matrix)
        return self

    def _repr_params(self) -> str:
        p = self._params
        rest = ", ".join(f"{k}={v!r}" for k, v in p.items() if k not in ("dnorm",))
        return f"dnorm={p['dnorm']}, {rest}"


def _warn_if_reducible(T) -> None:
    from scipy.sparse.csgraph import connected_components

    from cellfate_gpu._logging import warning

    n_comp, _ = connected_components(T, directed=True, connection="strong")
    if n_comp > 1:
        warning("The transition matrix is reducible: %d strongly connected components.", n_comp)
