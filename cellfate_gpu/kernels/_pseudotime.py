"""PseudotimeKernel: bias the kNN graph towards increasing pseudotime (Palantir / VIA style)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, final

import numpy as np
import scipy.sparse as sp

from cellfate_gpu._logging import progress, timed, warning
from cellfate_gpu.kernels._base import BidirectionalKernel
from cellfate_gpu.kernels._connectivity import check_graph
from cellfate_gpu.kernels._graph import host_data, read_connectivities, read_obs_vector
from cellfate_gpu.kernels._rowwise import edge_rows, rank_within_rows, row_normalize
from cellfate_gpu.kernels._validation import check_no_options

__all__ = ["PseudotimeKernel", "hard_threshold_weights", "soft_threshold_weights"]


def hard_threshold_weights(backend, conn_data, indptr, t_cell, t_neigh, frac_to_keep: float):
    r"""Hard scheme (Palantir-like), as CellRank 2.3.3's ``HardThresholdScheme``, for all rows at once.

    Row :math:`i` with :math:`k_i` stored neighbours keeps

    - the :math:`m_i = \min(30, \lfloor k_i \cdot \mathrm{frac\_to\_keep} \rfloor)` neighbours with the
      *largest connectivity* (CellRank's "closest"), whatever their pseudotime — this keeps the graph
      connected; note the cap of 30 is CellRank's and applies to every row;
    - every other neighbour :math:`j` with :math:`t_j \ge t_i` (not in the pseudotime past).

    Kept edges keep their connectivity, the others become zero. Ties in connectivity are ranked as
    ``numpy.flip(numpy.argsort(conn, kind="stable"))`` ranks them (the later stored neighbour
    first). CellRank uses NumPy's default, unstable sort, so for long rows with tied weights its
    choice is platform dependent; this one is deterministic.

    Parameters
    ----------
    backend
        Backend the arrays live on.
    conn_data, indptr
        ``data`` and ``indptr`` of the connectivities.
    t_cell, t_neigh
        Pseudotime of the row cell and of the neighbour, one value per stored entry.
    frac_to_keep
        Fraction in :math:`[0, 1]`.

    Returns
    -------
    The biased connectivities, aligned with ``conn_data``.
    """
    xp = backend.xp
    counts = xp.astype(indptr[1:] - indptr[:-1], xp.float64)
    k_keep = xp.clip(xp.floor(counts * frac_to_keep), 0.0, 30.0)
    rank = rank_within_rows(backend, conn_data, indptr)
    close = xp.astype(rank, xp.float64) < xp.take(k_keep, edge_rows(backend, indptr))
    keep = close | (t_neigh >= t_cell)
    return xp.where(keep, conn_data, xp.zeros_like(conn_data))


def soft_threshold_weights(backend, conn_data, t_cell, t_neigh, b: float, nu: float):
    r"""Soft scheme (VIA-like), as CellRank 2.3.3's ``SoftThresholdScheme``, for all edges at once.

    An edge to an earlier cell (:math:`\Delta t = t_i - t_j > 0`) is multiplied by the generalised
    logistic function :math:`2 / (1 + e^{b\,\Delta t})^{1/\nu}` (which is 1 at :math:`\Delta t = 0`
    and decays with :math:`\Delta t`); other edges keep their connectivity.
    """
    xp = backend.xp
    dt = t_cell - t_neigh
    past = dt > 0
    weight = 2.0 / (1.0 + xp.exp(b * xp.where(past, dt, xp.zeros_like(dt)))) ** (1.0 / nu)
    return conn_data * xp.where(past, weight, xp.ones_like(weight))


def _custom_scheme_host(scheme: Callable, conn: sp.csr_matrix, t: np.ndarray, **kwargs: Any) -> np.ndarray:
    """CellRank's contract for a custom scheme: ``scheme(t_i, t[neighbours], conn_row, **kwargs)`` per row."""
    out = np.empty_like(conn.data)
    for i in progress(range(conn.shape[0]), desc="custom threshold scheme", unit="cell"):
        lo, hi = conn.indptr[i], conn.indptr[i + 1]
        row = np.asarray(scheme(t[i], t[conn.indices[lo:hi]], conn.data[lo:hi], **kwargs), dtype=np.float64)
        if row.shape != (hi - lo,):
            raise ValueError(f"Custom threshold scheme returned shape {row.shape} for cell {i}, expected ({hi - lo},).")
        out[lo:hi] = row
    return out


@final
class PseudotimeKernel(BidirectionalKernel):
    r"""Transition matrix from the kNN graph biased towards increasing pseudotime (CellRank 2.3.3).

    The connectivities :math:`K` are re-weighted edge by edge with a thresholding scheme (see
    :meth:`compute_transition_matrix`) and row-normalised:
    :math:`T_{ij} = w(t_i, t_j, K_{ij}) / \sum_k w(t_i, t_k, K_{ik})`. The backward kernel uses the
    reversed pseudotime :math:`\max_k t_k - t`.

    Parameters
    ----------
    adata
        Annotated data with ``obs[time_key]`` and ``obsp[conn_key]``.
    time_key
        Key of the pseudotime in ``adata.obs`` (finite values).
    backward
        Direction of the process.
    conn_key
        Key of the kNN connectivities in ``adata.obsp``.
    check_connectivity, check_symmetric
        Warn if the kNN graph is not connected / not symmetric (as CellRank).

    Raises
    ------
    KeyError
        ``obs[time_key]`` or ``obsp[conn_key]`` is missing.
    ValueError
        The pseudotime has NaN or infinite values (the message gives how many) or is constant
        (a constant pseudotime directs nothing: T would silently be the undirected connectivity walk).
    TypeError
        The pseudotime is not numeric.
    """

    def __init__(
        self,
        adata,
        time_key: str = "dpt_pseudotime",
        backward: bool = False,
        conn_key: str = "connectivities",
        check_connectivity: bool = False,
        check_symmetric: bool = True,
    ):
        if not isinstance(backward, bool | np.bool_):
            raise TypeError(f"Expected `backward` to be a bool, got {type(backward).__name__}.")
        super().__init__(adata, backward=bool(backward))
        self._time_key, self._conn_key = time_key, conn_key
        pt = read_obs_vector(adata, time_key, what="pseudotime")
        if pt.size and pt.min() == pt.max():
            # Every edge would point "forward": T would be the undirected ConnectivityKernel's, silently.
            raise ValueError(
                f"adata.obs[{time_key!r}] is constant ({pt[0]:g} in all {pt.size} cells), so it cannot direct the "
                "kNN graph; check the pseudotime, or use ConnectivityKernel for an undirected walk."
            )
        self._pseudotime = (pt.max() - pt) if backward else pt
        self._conn = read_connectivities(adata, conn_key)
        check_graph(self._conn, conn_key, connectivity=check_connectivity, symmetric=check_symmetric)

    @property
    def pseudotime(self) -> np.ndarray:
        r"""The pseudotime used (reversed, :math:`\max t - t`, when backward)."""
        return self._pseudotime

    @property
    def connectivities(self) -> sp.csr_matrix:
        """The kNN connectivities (host SciPy CSR, float64)."""
        return self._conn

    def _init_kwargs(self) -> dict[str, Any]:
        return {"time_key": self._time_key, "backward": bool(self.backward), "conn_key": self._conn_key}

    def _reversed(self) -> PseudotimeKernel:
        out = self.copy()
        out._backward = not self._backward
        out._pseudotime = self._pseudotime.max() - self._pseudotime
        return out

    def compute_transition_matrix(
        self,
        threshold_scheme: str | Callable = "hard",
        frac_to_keep: float = 0.3,
        b: float = 10.0,
        nu: float = 0.5,
        check_irreducibility: bool = False,
        *,
        backend: Any = None,
        **kwargs: Any,
    ) -> PseudotimeKernel:
        r"""Compute T on ``backend`` with a thresholding scheme; returns ``self``.

        Parameters
        ----------
        threshold_scheme
            ``"hard"`` (Palantir-like, :func:`hard_threshold_weights`): keep the
            :math:`\min(30, \lfloor k_i\,\mathrm{frac\_to\_keep} \rfloor)` strongest edges of every
            row plus all edges to cells with :math:`t_j \ge t_i`. ``"soft"`` (VIA-like,
            :func:`soft_threshold_weights`): multiply edges to earlier cells by
            :math:`2 / (1 + e^{b (t_i - t_j)})^{1/\nu}`. A callable follows CellRank's contract
            ``scheme(cell_pseudotime, neighbour_pseudotimes, neighbour_connectivities, **kwargs)``
            and is called once per cell on the host (so it is as slow as in CellRank).
        frac_to_keep
            Hard scheme: fraction of the strongest neighbours always kept, in :math:`[0, 1]`.
        b, nu
            Soft scheme: growth rate and shape of the logistic function (``nu > 0``).
        check_irreducibility
            Warn if the biased graph is not strongly connected.
        backend
            Where to build and keep T (name or instance; default ``settings.backend``).
        kwargs
            Passed to a callable scheme; with ``"hard"``/``"soft"`` any keyword is refused (``TypeError``
            naming it), so a misspelt option (``frac_to_kep``) never goes unnoticed.

        Raises
        ------
        ValueError
            Bad parameters, or thresholding left rows without any edge (the message gives how many).
        """
        if isinstance(threshold_scheme, str):
            if threshold_scheme not in ("hard", "soft"):
                raise ValueError(f"threshold_scheme must be 'hard', 'soft' or a callable, got {threshold_scheme!r}.")
        elif not callable(threshold_scheme):
            raise TypeError(f"threshold_scheme must be 'hard', 'soft' or a callable, got {type(threshold_scheme)}.")
        if not callable(threshold_scheme):  # kwargs go to a custom scheme only; refuse them otherwise
            check_no_options(
                f"PseudotimeKernel.compute_transition_matrix(threshold_scheme={threshold_scheme!r})", kwargs
            )
        if threshold_scheme == "hard" and not 0 <= frac_to_keep <= 1:
            raise ValueError(f"Expected frac_to_keep to be in [0, 1], got {frac_to_keep!r}.")
        if threshold_scheme == "soft" and not (nu > 0 and np.isfinite(b)):
            raise ValueError(f"Soft scheme needs nu > 0 and a finite b, got b={b!r}, nu={nu!r}.")
        be = self._resolve_backend(backend)
        scheme_name = threshold_scheme if isinstance(threshold_scheme, str) else "custom"
        with timed("Computing transition matrix based on pseudotime (scheme=%r, backend=%r)", scheme_name, be.name):
            xp = be.xp
            C = be.from_scipy_csr(self._conn)
            data, indices, indptr = be.csr_components(C)
            if callable(threshold_scheme):
                graph = host_data(self._conn, "the kNN graph")  # a custom scheme runs on the host
                weights = be.asarray(_custom_scheme_host(threshold_scheme, graph, self._pseudotime, **kwargs))
                params = {
                    "dnorm": False,
                    "scheme": getattr(threshold_scheme, "__name__", type(threshold_scheme).__name__),
                    **kwargs,
                }
            else:
                t = be.asarray(self._pseudotime)
                t_cell = xp.take(t, edge_rows(be, indptr))
                t_neigh = xp.take(t, indices)
                if threshold_scheme == "hard":
                    weights = hard_threshold_weights(be, data, indptr, t_cell, t_neigh, frac_to_keep)
                    params = {"dnorm": False, "scheme": "hard", "frac_to_keep": frac_to_keep}
                else:
                    weights = soft_threshold_weights(be, data, t_cell, t_neigh, b, nu)
                    params = {"dnorm": False, "scheme": "soft", "b": b, "nu": nu}
            biased = be.csr_from_components(weights, indices, indptr, tuple(C.shape))
            T = row_normalize(be, biased, what="pseudotime-biased kNN graph")
            recompute = {
                "threshold_scheme": threshold_scheme,
                "frac_to_keep": frac_to_keep,
                "b": b,
                "nu": nu,
                "check_irreducibility": check_irreducibility,
                "backend": backend,
                **kwargs,
            }
            self._set_native(T, be, params, recompute=recompute)
        if check_irreducibility:
            _warn_if_reducible(self.transition_matrix)
        return self


def _warn_if_reducible(T: sp.csr_matrix) -> None:
    from scipy.sparse.csgraph import connected_components

    T = T.copy()
    T.eliminate_zeros()
    n_comp, _ = connected_components(T, directed=True, connection="strong")
    if n_comp > 1:
        warning("Biased kNN graph is disconnected: %d strongly connected components.", n_comp)
