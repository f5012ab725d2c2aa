r"""RealTimeKernel: transport couplings between experimental time points (CellRank 2.3.3 semantics).

Cells are grouped by the categories :math:`t_1 < \dots < t_m` of ``obs[time_key]``. A coupling
:math:`\pi^{(a,b)}` (cells at :math:`t_a` × cells at :math:`t_b`, e.g. from Waddington-OT or moscot)
fills block :math:`(a, b)` of

.. math::

    M = \begin{pmatrix}
        S_1 & \pi^{(1,2)} & & \\
            & S_2 & \pi^{(2,3)} & \\
            & & \ddots & \\
            & & & S_m
    \end{pmatrix}, \qquad T = \operatorname{diag}(M \mathbf 1)^{-1} M,

(``policy="triu"``: every pair :math:`a < b`), where the diagonal blocks :math:`S_a` are zero except
for the last time point (the *reference*), which gets self transitions (``"uniform"``,
``"diagonal"``, ``"connectivities"``), or — with ``"all"`` or a list of source time points — every
listed source :math:`a` gets :math:`S_a = w\,T^{\mathrm{conn}}_a` and
:math:`(1-w)\,\operatorname{rownorm}(\pi^{(a,b)})` in place of :math:`\pi^{(a,b)}`.

Sparse couplings stay sparse end to end: blocks are thresholded and stitched as CSR on the host
(:func:`scipy.sparse.bmat`), permuted into ``adata`` order, moved once to the backend and
row-normalised there.
"""

from __future__ import annotations

import pathlib
from collections.abc import Mapping, Sequence
from typing import Any, final

import numpy as np
import pandas as pd
import scipy.sparse as sp

from cellfate_gpu._logging import debug, info, timed, warning
from cellfate_gpu.kernels._base import UnidirectionalKernel, _format_value
from cellfate_gpu.kernels._graph import read_connectivities
from cellfate_gpu.kernels._rowwise import row_normalize
from cellfate_gpu.kernels._validation import check_no_options

__all__ = ["RealTimeKernel", "threshold_couplings"]

SELF_TRANSITIONS = ("uniform", "diagonal", "connectivities", "all")


# --------------------------------------------------------------------------- thresholding
def _row_maxima(C: Any) -> tuple[np.ndarray, np.ndarray]:
    """Row maxima of a non-negative block and whether each row has a positive entry."""
    if sp.issparse(C):
        C = sp.csr_matrix(C)
        nonempty = np.diff(C.indptr) > 0
        out = np.zeros(C.shape[0])
        if C.nnz:
            out[nonempty] = np.maximum.reduceat(C.data, C.indptr[:-1][nonempty])
    else:
        out = C.max(axis=1) if C.shape[1] else np.zeros(C.shape[0])
    return out, out > 0


def _apply_threshold(C: Any, thresh: float) -> sp.csr_matrix:
    C = sp.csr_matrix(C, dtype=np.float64, copy=True)
    C.data[C.data < thresh] = 0.0
    C.eliminate_zeros()
    return C


def threshold_couplings(
    blocks: Mapping[tuple[Any, Any], Any], threshold: str | float | None
) -> dict[tuple[Any, Any], sp.csr_matrix]:
    r"""Remove small entries from every coupling block; the result is CSR.

    ``"auto"``: :math:`\tau = \min_{\text{blocks}} \min_i \max_j \pi_{ij}`, the largest threshold
    that leaves a non-zero in every row of every coupling (CellRank's rule); ``"auto_local"``: the
    same per block; a number :math:`q \in [0, 100]`: the :math:`q`-th percentile of the block's
    entries (all entries of a dense block, the stored ones of a sparse block). Entries
    :math:`< \tau` are dropped. Rows that are empty before thresholding do not enter the minimum
    (CellRank's minimum would be 0 then, switching thresholding off for every block).

    CellRank leaves sparse couplings untouched; here every block is thresholded the same way.
    """
    if threshold is None:
        return {k: sp.csr_matrix(v, dtype=np.float64) for k, v in blocks.items()}
    if isinstance(threshold, str):
        if threshold not in ("auto", "auto_local"):
            raise ValueError(
                f"threshold must be 'auto', 'auto_local', a percentile in [0, 100] or None, got {threshold!r}."
            )
    elif not (isinstance(threshold, int | float | np.integer | np.floating) and 0 <= threshold <= 100):
        raise ValueError(
            f"threshold must be 'auto', 'auto_local', a percentile in [0, 100] or None, got {threshold!r}."
        )

    def local_min(C) -> float:
        maxima, nonempty = _row_maxima(C)
        return float(maxima[nonempty].min()) if nonempty.any() else 0.0

    if threshold == "auto":
        thresh = min((local_min(C) for C in blocks.values()), default=0.0)
        info("Using automatic `threshold=%g`", thresh)
    out = {}
    for key, C in blocks.items():
        if threshold == "auto_local":
            thresh = local_min(C)
            debug("Using `threshold=%g` at %r", thresh, key)
        elif not isinstance(threshold, str):
            values = sp.csr_matrix(C).data if sp.issparse(C) else np.asarray(C).ravel()
            thresh = float(np.percentile(values, threshold)) if values.size else 0.0
            debug("Using `threshold=%g` at %r", thresh, key)
        out[key] = _apply_threshold(C, thresh)
    return out


def _fill_empty_rows(key, C: sp.csr_matrix) -> sp.csr_matrix:
    empty = np.flatnonzero(np.diff(C.indptr) == 0)
    if empty.size == 0:
        return C
    warning(
        "Coupling at %r contains %d empty row(s), e.g. due to unbalancedness, zeros in the source marginals "
        "or thresholding; using a uniform distribution for them.",
        key,
        empty.size,
    )
    n_tgt = C.shape[1]
    fill = sp.csr_matrix(
        (np.full(empty.size * n_tgt, 1.0 / n_tgt), (np.repeat(empty, n_tgt), np.tile(np.arange(n_tgt), empty.size))),
        shape=C.shape,
    )
    return sp.csr_matrix(C + fill)


def _row_normalise_host(C: sp.csr_matrix) -> sp.csr_matrix:
    s = np.asarray(C.sum(axis=1)).ravel()
    return sp.csr_matrix(sp.diags(np.where(s > 0, 1.0 / np.where(s > 0, s, 1.0), 0.0)) @ C)


# --------------------------------------------------------------------------- the kernel
@final
class RealTimeKernel(UnidirectionalKernel):
    r"""Transition matrix from optimal-transport couplings between experimental time points.

    Parameters
    ----------
    adata
        Annotated data with a categorical ``obs[time_key]`` (categories in time order).
    time_key
        Key of the experimental time in ``adata.obs``.
    couplings
        ``{(t_a, t_b): coupling}``, a coupling being a dense array, a SciPy sparse matrix or an
        AnnData (``obs_names`` = cells at :math:`t_a`, ``var_names`` = cells at :math:`t_b`, in any
        order); arrays are indexed by the cells of each time point in ``adata`` order. ``None``
        values (or ``couplings=None``) must be provided by overriding :meth:`compute_coupling`.
    policy
        Keys made when ``couplings`` is ``None``: ``"sequential"`` (consecutive time points) or
        ``"triu"`` (every pair :math:`a < b`).
    conn_key
        ``adata.obsp`` key of the kNN connectivities (for ``self_transitions`` using connectivities).
    """

    def __init__(
        self,
        adata,
        time_key: str,
        couplings: Mapping[tuple[Any, Any], Any] | None = None,
        policy: str = "sequential",
        conn_key: str = "connectivities",
    ):
        super().__init__(adata, backward=None)
        if time_key not in adata.obs:
            raise KeyError(f"No experimental time in adata.obs[{time_key!r}]; available: {list(adata.obs.columns)}.")
        time = adata.obs[time_key]
        if not isinstance(time.dtype, pd.CategoricalDtype):
            raise TypeError(
                f"adata.obs[{time_key!r}] must be categorical (time points as ordered categories), "
                f"found dtype {time.dtype}."
            )
        time = time.cat.remove_unused_categories()
        if time.isna().any():
            raise ValueError(f"adata.obs[{time_key!r}] has {int(time.isna().sum())} cells without a time point.")
        self._time_key, self._conn_key = time_key, conn_key
        self._time = time
        self._cats = list(time.cat.categories)
        self._time_to_ix = {c: i for i, c in enumerate(self._cats)}
        codes = time.cat.codes.to_numpy()
        self._cells = [np.flatnonzero(codes == i) for i in range(len(self._cats))]
        if policy not in ("sequential", "triu"):
            raise ValueError(f"policy must be 'sequential' or 'triu', got {policy!r}.")
        if couplings is None:
            pairs = (
                zip(self._cats[:-1], self._cats[1:], strict=True)
                if policy == "sequential"
                else ((a, b) for i, a in enumerate(self._cats) for b in self._cats[i + 1 :])
            )
            couplings = dict.fromkeys(pairs)
        couplings = dict(couplings)
        for key in couplings:
            if not (isinstance(key, tuple) and len(key) == 2):
                raise ValueError(f"Coupling keys must be (source, target) time points, got {key!r}.")
            for t in key:
                if t not in self._time_to_ix:
                    raise ValueError(f"Time point {t!r} of coupling {key!r} is not in {self._cats}.")
            if self._time_to_ix[key[0]] >= self._time_to_ix[key[1]]:
                raise ValueError(f"Coupling {key!r} must go forward in time (source before target).")
        if not couplings:
            raise ValueError("No couplings given.")
        for (src, tgt), coupling in couplings.items():  # shapes are checked early, values at compute time
            if coupling is not None:
                shape = tuple(coupling.X.shape if hasattr(coupling, "obs_names") else np.shape(coupling))
                _check_shape(
                    (src, tgt),
                    shape,
                    (self._cells[self._time_to_ix[src]].size, self._cells[self._time_to_ix[tgt]].size),
                )
        self._policy = policy
        self._couplings: dict[tuple[Any, Any], Any] = couplings
        # The reference (last time point) gets the self transitions.
        self._reference = max((t for key in couplings for t in key), key=self._time_to_ix.__getitem__)

    # ---------------------------------------------------------------- accessors
    @property
    def time(self) -> pd.Series:
        """The experimental time (categorical)."""
        return self._time

    @property
    def couplings(self) -> dict[tuple[Any, Any], Any]:
        """The couplings, keyed by ``(source, target)`` time points."""
        return self._couplings

    @property
    def reference(self) -> Any:
        """The last time point, whose block holds the self transitions."""
        return self._reference

    def compute_coupling(self, src: Any, tgt: Any, **kwargs: Any) -> Any:
        """The coupling for ``(src, tgt)``; override to compute couplings on demand."""
        del kwargs
        if (src, tgt) not in self._couplings:
            raise KeyError(f"No coupling for {(src, tgt)!r}; available: {list(self._couplings)}.")
        coupling = self._couplings[src, tgt]
        if coupling is None:
            raise ValueError(f"Coupling for {(src, tgt)!r} is not given; pass it or override compute_coupling.")
        return coupling

    # ---------------------------------------------------------------- blocks
    def _block(self, src: Any, tgt: Any, coupling: Any) -> Any:
        """The coupling as a host CSR matrix or float64 array, rows/cols in ``adata`` order of each time point."""
        rows, cols = self._cells[self._time_to_ix[src]], self._cells[self._time_to_ix[tgt]]
        expected = (rows.size, cols.size)
        if hasattr(coupling, "obs_names") and hasattr(coupling, "X"):  # AnnData
            X = coupling.X
            _check_shape((src, tgt), tuple(X.shape), expected)
            names = np.asarray(self.adata.obs_names)
            r = pd.Index(coupling.obs_names).get_indexer(names[rows])
            c = pd.Index(coupling.var_names).get_indexer(names[cols])
            if (r < 0).any() or (c < 0).any():
                raise ValueError(
                    f"Coupling {(src, tgt)!r}: {int((r < 0).sum())} cell(s) of time point {src!r} are missing from its "
                    f"obs_names and {int((c < 0).sum())} of {tgt!r} from its var_names."
                )
            X = X[r][:, c] if sp.issparse(X) else np.asarray(X)[np.ix_(r, c)]
        else:
            X = coupling
            _check_shape((src, tgt), tuple(np.shape(X)), expected)
        X = sp.csr_matrix(X, dtype=np.float64) if sp.issparse(X) else np.asarray(X, dtype=np.float64)
        values = X.data if sp.issparse(X) else X
        bad = int(np.sum(~np.isfinite(values)))
        neg = int(np.sum(values < 0))
        if bad or neg:
            raise ValueError(f"Coupling {(src, tgt)!r} has {bad} non-finite and {neg} negative entries.")
        return X

    def _connectivity_tmat(self, cells: np.ndarray, *, density_normalize: bool = True) -> sp.csr_matrix:
        """ConnectivityKernel-style T on the kNN subgraph of ``cells`` (host CSR)."""
        C = read_connectivities(self.adata, self._conn_key)[cells][:, cells]
        C = sp.csr_matrix(C)
        if density_normalize:
            q = np.asarray(C.sum(axis=0)).ravel()
            inv = np.where(q > 0, 1.0 / np.where(q > 0, q, 1.0), 0.0)
            C = sp.csr_matrix(sp.diags(inv) @ C @ sp.diags(inv))
        C.eliminate_zeros()
        isolated = np.flatnonzero(np.diff(C.indptr) == 0)
        if isolated.size:
            warning(
                "%d cell(s) have no kNN neighbour within their time point; giving them a self transition.",
                isolated.size,
            )
            C = sp.csr_matrix(C + sp.csr_matrix((np.ones(isolated.size), (isolated, isolated)), shape=C.shape))
        return _row_normalise_host(C)

    # ---------------------------------------------------------------- computation
    def compute_transition_matrix(
        self,
        threshold: str | float | None = "auto",
        self_transitions: str | Sequence[Any] = "connectivities",
        conn_weight: float | None = None,
        conn_kwargs: Mapping[str, Any] | None = None,
        *,
        backend: Any = None,
        **kwargs: Any,
    ) -> RealTimeKernel:
        r"""Stitch the couplings into one row-stochastic matrix on ``backend``.

        Parameters
        ----------
        threshold
            ``"auto"``, ``"auto_local"``, a percentile in :math:`[0, 100]` or ``None``; see
            :func:`threshold_couplings`. Rows left empty become uniform (with a warning).
        self_transitions
            ``"uniform"`` (:math:`1/n` everywhere), ``"diagonal"`` (identity) or ``"connectivities"``
            (ConnectivityKernel on the kNN graph restricted to the reference cells) for the last time
            point; ``"all"`` or a sequence of source time points: those sources also get
            ``conn_weight`` times their connectivity transitions, their couplings
            ``1 - conn_weight`` (the reference block uses connectivities).
        conn_weight
            Weight in :math:`(0, 1)` for ``"all"`` or a sequence.
        conn_kwargs
            ``density_normalize`` (default ``True``) for the connectivity self transitions. CellRank
            recomputes a kNN graph per time point with :func:`scanpy.pp.neighbors`; we restrict
            ``obsp[conn_key]`` to the time point's cells instead.
        backend
            Backend name or instance (default ``settings.backend``).
        kwargs
            Passed to :meth:`compute_coupling`.
        """
        if kwargs and type(self).compute_coupling is RealTimeKernel.compute_coupling:
            check_no_options(
                "RealTimeKernel.compute_transition_matrix (kwargs go to an overridden compute_coupling)", kwargs
            )
        conn_kwargs = dict(conn_kwargs or {})
        density_normalize = bool(conn_kwargs.pop("density_normalize", True))
        if conn_kwargs:  # CellRank passes these to scanpy.pp.neighbors; we restrict obsp[conn_key] instead
            debug("Ignoring conn_kwargs %s (no neighbour recomputation here)", sorted(conn_kwargs))
        if isinstance(self_transitions, str):
            if self_transitions not in SELF_TRANSITIONS:
                raise ValueError(
                    f"self_transitions must be one of {SELF_TRANSITIONS} or a sequence of time points, "
                    f"got {self_transitions!r}."
                )
            weighted = tuple(src for src, _ in self._couplings) if self_transitions == "all" else None
        else:
            weighted = tuple(self_transitions)
            unknown = [t for t in weighted if t not in self._time_to_ix]
            if unknown:
                raise ValueError(f"self_transitions names unknown time point(s) {unknown}; valid: {self._cats}.")
        if weighted is not None and (conn_weight is None or not 0 < conn_weight < 1):
            raise ValueError(
                f"conn_weight must be in (0, 1) with self_transitions={self_transitions!r}, got {conn_weight!r}."
            )

        be = self._resolve_backend(backend)
        with timed("Computing transition matrix from %d coupling(s) (backend=%r)", len(self._couplings), be.name):
            raw = {(s, t): self._block(s, t, self.compute_coupling(s, t, **kwargs)) for s, t in self._couplings}
            blocks = threshold_couplings(raw, threshold)
            blocks = {key: _fill_empty_rows(key, C) for key, C in blocks.items()}
            M = self._stitch(blocks, self_transitions, weighted, conn_weight, density_normalize)
            T = row_normalize(be, be.from_scipy_csr(M), what="stitched transport couplings")
            params = dict(kwargs)
            params["threshold"] = threshold
            params["self_transitions"] = str(self_transitions)  # CellRank stores str() of what was passed
            self._set_native(T, be, params)
        return self

    def _stitch(self, blocks, self_transitions, weighted, conn_weight, density_normalize) -> sp.csr_matrix:
        m = len(self._cats)
        grid: list[list[Any]] = [[None] * m for _ in range(m)]
        sources = set()
        for (src, tgt), C in blocks.items():
            a, b = self._time_to_ix[src], self._time_to_ix[tgt]
            grid[a][b] = C
            sources.add(a)
            n = self._cells[a].size
            if grid[a][a] is None:
                grid[a][a] = sp.csr_matrix((n, n))  # keeps the block row/column in place
        ref = self._time_to_ix[self._reference]
        cells_ref = self._cells[ref]
        n_ref = cells_ref.size
        if weighted is None and self_transitions == "diagonal":
            grid[ref][ref] = sp.identity(n_ref, format="csr")
        elif weighted is None and self_transitions == "uniform":
            grid[ref][ref] = sp.csr_matrix(np.full((n_ref, n_ref), 1.0 / n_ref))
        else:
            grid[ref][ref] = self._connectivity_tmat(cells_ref, density_normalize=density_normalize)
        if weighted is not None:
            for (src, tgt), C in blocks.items():
                if src not in weighted:
                    continue
                a, b = self._time_to_ix[src], self._time_to_ix[tgt]
                grid[a][a] = conn_weight * self._connectivity_tmat(self._cells[a], density_normalize=density_normalize)
                grid[a][b] = (1.0 - conn_weight) * _row_normalise_host(C)
        missing = [self._cats[a] for a in range(m) if a not in sources and a != ref]
        if missing:
            raise ValueError(
                f"Time point(s) {missing} have no outgoing coupling and are not the last time point "
                f"{self._reference!r}; their cells would have no transitions."
            )
        M = sp.csr_matrix(sp.bmat(grid, format="csr"), dtype=np.float64)
        order = np.concatenate(self._cells)  # block position k holds adata cell order[k]
        inv = np.empty_like(order)
        inv[order] = np.arange(order.size)
        M = M[inv][:, inv]
        M.sort_indices()
        M.sum_duplicates()
        return M

    # ---------------------------------------------------------------- WOT
    @classmethod
    def from_wot(cls, adata, path: str | pathlib.Path, time_key: str, **kwargs: Any) -> RealTimeKernel:
        """Kernel from Waddington-OT transport maps ``<prefix>_<t1>_<t2>.h5ad`` in directory ``path``.

        Every ``*.h5ad`` file is read with :func:`anndata.read_h5ad`; the last two ``_``-separated parts of
        its name are matched to the categories of ``obs[time_key]`` (by string, then numerically, so
        ``day_2.0_4.0`` matches integer categories 2 and 4). ``policy="sequential"``.
        """
        import anndata as ad

        path = pathlib.Path(path)
        if not path.is_dir():
            raise FileNotFoundError(f"No directory {str(path)!r} with WOT transport maps.")
        if time_key not in adata.obs:
            raise KeyError(f"No experimental time in adata.obs[{time_key!r}].")
        cats = list(pd.Series(adata.obs[time_key]).astype("category").cat.categories)
        couplings = {}
        for fname in sorted(path.glob("*h5ad")):
            parts = fname.stem.split("_")
            if len(parts) < 3:
                raise ValueError(f"WOT file name {fname.name!r} is not of the form '<prefix>_<t1>_<t2>.h5ad'.")
            src, tgt = (_match_category(p, cats, fname.name) for p in parts[-2:])
            couplings[src, tgt] = ad.read_h5ad(fname)
        if not couplings:
            raise FileNotFoundError(f"No '*.h5ad' transport maps in {str(path)!r}.")
        return cls(adata, time_key=time_key, couplings=couplings, policy="sequential", **kwargs)

    # ---------------------------------------------------------------- plots
    def plot_single_flow(self, cluster: Any, cluster_key: str, time_key: str | None = None, *args: Any, **kwargs: Any):
        r"""Outgoing flow of ``cluster`` between consecutive time points, as CellRank draws it.

        ``time_key`` defaults to the kernel's time key; every other argument (``clusters``,
        ``time_points``, ``min_flow``, ``remove_empty_clusters``, ``ascending``, ``legend_loc``,
        ``alpha``, ``xticks_step_size``, ``figsize``, ``dpi``, ``save``, ``show``, in CellRank's order)
        is :func:`cellfate_gpu.pl._flow.single_flow`'s, which documents them and the flow
        :math:`F_k(c') \propto \sum_{i \in c, t_k} \sum_{j \in c', t_{k+1}} T_{ij}`; returns the axes
        when ``show=False``.
        """
        from cellfate_gpu.pl._flow import single_flow

        time_key = self._time_key if time_key is None else time_key
        return single_flow(self, cluster, cluster_key, time_key, *args, **kwargs)

    @classmethod
    def from_moscot(
        cls,
        problem: Any,
        sparse_mode: str | None = None,
        sparsify_kwargs: Mapping[str, Any] | None = None,
        copy: bool = False,
        **kwargs: Any,
    ) -> RealTimeKernel:
        r"""Kernel from a solved :mod:`moscot` problem (``TemporalProblem``, ``LineageProblem``, ...).

        The problem is read through the attributes CellRank reads (no moscot import is needed):
        ``problem.adata``, ``problem.temporal_key`` (the time key), ``problem.solutions``
        (``{(t_a, t_b): solution}``), ``problem[t_a, t_b].adata_src`` / ``.adata_tgt`` (whose
        ``obs_names`` label the coupling's rows and columns, in any order) and ``problem._policy``
        (moscot's ``SequentialPolicy`` → ``"sequential"``, ``TriangularPolicy`` → ``"triu"``).
        Each coupling :math:`\pi^{(a,b)}` is ``solution.transport_matrix``; a SciPy sparse or NumPy
        coupling is kept as it is (never densified, copied only with ``copy=True``), any other
        array (e.g. JAX) is converted with ``numpy.array(..., copy=True)``.

        Parameters
        ----------
        problem
            The solved moscot problem.
        sparse_mode
            ``"threshold"``, ``"percentile"`` or ``"min_row"``: each solution is first replaced by
            ``solution.sparsify(mode=sparse_mode, **sparsify_kwargs)`` (moscot's sparsification);
            ``None`` keeps the solutions. :meth:`compute_transition_matrix` thresholds again
            (``threshold=``).
        sparsify_kwargs
            Keyword arguments of ``solution.sparsify``.
        copy
            Copy NumPy/SciPy couplings instead of referencing them.
        kwargs
            Passed to :class:`RealTimeKernel` (e.g. ``conn_key``).

        Returns
        -------
        RealTimeKernel
            With ``couplings`` as AnnData objects (rows: source cells, columns: target cells), as
            CellRank stores them.
        """
        import anndata as ad

        sparsify_kwargs = dict(sparsify_kwargs or {})
        if "policy" in kwargs or "couplings" in kwargs or "time_key" in kwargs:
            raise TypeError("from_moscot takes policy, couplings and time_key from the problem; do not pass them.")
        for attr in ("adata", "solutions", "temporal_key"):
            if not hasattr(problem, attr):
                raise TypeError(
                    f"from_moscot expects a moscot problem with `.{attr}`; {type(problem).__name__} has none."
                )
        solutions = problem.solutions
        if not solutions:
            raise RuntimeError("Problem contains no solutions. Please run `problem.solve(...)` first.")
        policy = _moscot_policy(getattr(problem, "_policy", None))
        if sparse_mode is not None and sparse_mode not in ("threshold", "percentile", "min_row"):
            raise ValueError(f"sparse_mode must be 'threshold', 'percentile', 'min_row' or None, got {sparse_mode!r}.")

        couplings = {}
        for key, solution in solutions.items():
            if not (isinstance(key, tuple) and len(key) == 2):
                raise ValueError(f"moscot solution keys must be (source, target) time points, got {key!r}.")
            sub = problem[key]
            src_obs, tgt_obs = sub.adata_src.obs, sub.adata_tgt.obs
            if sparse_mode is not None:
                if not hasattr(solution, "sparsify"):
                    raise TypeError(
                        f"Solution {key!r} ({type(solution).__name__}) has no `sparsify`; use sparse_mode=None."
                    )
                solution = solution.sparsify(mode=sparse_mode, **sparsify_kwargs)
            coupling = solution.transport_matrix
            if isinstance(coupling, np.ndarray) or sp.issparse(coupling):
                if copy:
                    coupling = coupling.copy()
            else:  # e.g. a read-only JAX array: always an own, writable copy
                coupling = np.array(np.asarray(coupling), copy=True)
            if tuple(coupling.shape) != (len(src_obs), len(tgt_obs)):
                raise ValueError(
                    f"Coupling {key!r} has shape {tuple(coupling.shape)}, but its source/target AnnData have "
                    f"{len(src_obs)} and {len(tgt_obs)} cells."
                )
            couplings[key] = ad.AnnData(X=coupling, obs=src_obs.copy(), var=tgt_obs.copy())
        debug("Read %d coupling(s) from %s (policy=%r)", len(couplings), type(problem).__name__, policy)
        return cls(problem.adata, time_key=problem.temporal_key, couplings=couplings, policy=policy, **kwargs)

    def _repr_params(self) -> str:
        return ", ".join(f"{k}={_format_value(v)}" for k, v in self._params.items())


def _moscot_policy(policy: Any) -> str:
    """``"sequential"`` / ``"triu"`` from a moscot subset policy (matched by class name, or a string)."""
    if isinstance(policy, str) and policy in ("sequential", "triu"):
        return policy
    name = type(policy).__name__
    if name == "SequentialPolicy":
        return "sequential"
    if name == "TriangularPolicy":
        return "triu"
    raise NotImplementedError(
        f"Handling moscot policy {name!r} is not implemented; only SequentialPolicy and TriangularPolicy are."
    )


def _check_shape(key: tuple[Any, Any], shape: tuple[int, ...], expected: tuple[int, int]) -> None:
    if shape != expected:
        raise ValueError(
            f"Coupling {key!r} has shape {shape}, but time points {key[0]!r} and {key[1]!r} have "
            f"{expected[0]} and {expected[1]} cells: expected shape {expected}."
        )


def _match_category(token: str, cats: list[Any], fname: str) -> Any:
    for c in cats:
        if str(c) == token:
            return c
    try:
        value = float(token)
    except ValueError:
        value = None
    if value is not None:
        for c in cats:
            try:
                if float(c) == value:
                    return c
            except (TypeError, ValueError):
                continue
    raise ValueError(f"Time point {token!r} in WOT file {fname!r} is not among the categories {cats}.")
