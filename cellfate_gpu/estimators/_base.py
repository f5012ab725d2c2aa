"""What every estimator shares.

The kernel and its backend, terminal/initial states, and the downstream results (fate
probabilities, absorption times, priming, drivers) under CellRank's keys.

Results are computed completely before anything is written to the AnnData, so a failing step
leaves no half-written state behind.
"""

from __future__ import annotations

import abc
from contextlib import nullcontext
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from cellfate_gpu import _keys
from cellfate_gpu._logging import info, timed
from cellfate_gpu._settings import settings
from cellfate_gpu.backends import get_backend
from cellfate_gpu.estimators._absorption import _absorption_times, fate_probabilities
from cellfate_gpu.estimators._drivers import lineage_drivers
from cellfate_gpu.kernels import Kernel, PrecomputedKernel
from cellfate_gpu.kernels._base import check_no_options
from cellfate_gpu.lineage import Lineage, default_colors

__all__ = ["BaseEstimator", "check_positive_int", "short_kernel_repr"]


def short_kernel_repr(kernel: Kernel) -> str:
    """``PseudotimeKernel[n=5780]`` or ``(0.8 * PseudotimeKernel[n=..] + 0.2 * ...)``, as CellRank prints it."""
    node = kernel.expression
    if node is None:
        return f"{'~' if kernel.backward else ''}{type(kernel).__name__}[n={len(kernel)}]"
    if node.operation == "scale":
        return f"{node.constant:g} * {short_kernel_repr(node.operands[0])}"
    sep = " + " if node.operation == "sum" else " * "
    return "(" + sep.join(short_kernel_repr(op) for op in node.operands) + ")"


def _as_kernel(obj: Any, backward: bool, obsp_key: str | None) -> Kernel:
    import anndata as ad

    if isinstance(obj, Kernel):
        return obj
    if isinstance(obj, ad.AnnData):
        return Kernel.from_adata(obj, obsp_key or _keys.transition_matrix(backward))
    if sp.issparse(obj) or isinstance(obj, np.ndarray):
        return PrecomputedKernel(obj, backward=backward)
    raise TypeError(f"Expected a kernel, an AnnData or a matrix, got {type(obj).__name__}.")


def check_positive_int(name: str, value: Any, *, upper: int | None = None, upper_what: str = "") -> int:
    """``value`` as an ``int`` in ``[1, upper]``; estimators check their counts with it before any work.

    Booleans, non-integral floats (``2.7``), NaN and non-numbers are refused, as are values below 1
    or above ``upper``.

    Parameters
    ----------
    name
        The argument's name, for the message.
    value
        What the caller passed.
    upper
        Largest allowed value (``None``: no bound).
    upper_what
        What the bound is, for the message (e.g. ``"the number of cells"``).

    Raises
    ------
    TypeError
        ``value`` is not an integer.
    ValueError
        ``value`` is out of range (the message gives the range).
    """
    if isinstance(value, bool | np.bool_) or not isinstance(value, int | np.integer | float | np.floating):
        raise TypeError(f"{name} must be a positive integer, got {value!r} ({type(value).__name__}).")
    if isinstance(value, float | np.floating) and not (np.isfinite(value) and float(value).is_integer()):
        raise TypeError(f"{name} must be a positive integer, got {value!r}.")
    v = int(value)
    if v < 1:
        raise ValueError(f"{name} must be at least 1, got {value!r}.")
    if upper is not None and v > upper:
        what = f" ({upper_what})" if upper_what else ""
        raise ValueError(f"{name}={v} exceeds {upper}{what}.")
    return v


def _check_disjoint(members: dict[str, np.ndarray]) -> None:
    """Refuse states that share cells (a cell can be in one state only), naming the pairs and counts."""
    names = list(members)
    clashes = []
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            both = np.intersect1d(members[a], members[b], assume_unique=True).size
            if both:
                clashes.append(f"{a!r} and {b!r} share {both} cell(s)")
    if clashes:
        raise ValueError(f"States overlap: {'; '.join(clashes)}. Give every cell to one state only.")


class BaseEstimator(abc.ABC):  # noqa: B024 - abstract by intent: only GPCCA and CFLARE are concrete
    """Abstract base of :class:`GPCCA` and :class:`CFLARE`.

    Parameters
    ----------
    object
        A computed kernel, an AnnData with ``obsp[obsp_key]`` (default ``T_fwd``/``T_bwd``), or a
        row-stochastic matrix.
    backward
        Direction (for AnnData or matrix input).
    obsp_key
        Key of T in ``adata.obsp`` for AnnData input.
    """

    def __init__(self, object: Any, *, backward: bool = False, obsp_key: str | None = None):
        self._kernel = _as_kernel(object, backward, obsp_key)
        self._T = self._kernel.native_transition_matrix
        self._backend = self._kernel.backend
        self._terminal_states: pd.Series | None = None
        self._terminal_probs: pd.Series | None = None
        self._term_colors: list[str] | None = None
        self._initial_states: pd.Series | None = None
        self._initial_probs: pd.Series | None = None
        self._init_colors: list[str] | None = None
        self._fate_probabilities: Lineage | None = None
        self._absorption_times: pd.DataFrame | None = None
        self._priming_degree: np.ndarray | None = None
        self._lineage_drivers: pd.DataFrame | None = None

    # ---------------------------------------------------------------- basic properties
    @property
    def kernel(self) -> Kernel:
        """The kernel whose transition matrix is analysed."""
        return self._kernel

    @property
    def adata(self):
        """The annotated data."""
        return self._kernel.adata

    @property
    def backward(self) -> bool:
        """Direction of the process."""
        return bool(self._kernel.backward)

    @property
    def backend(self):
        """Backend where T lives (where the heavy operations run)."""
        return self._backend

    @property
    def transition_matrix(self) -> sp.csr_matrix:
        """Host copy of T."""
        return self._kernel.transition_matrix

    @property
    def terminal_states(self) -> pd.Series | None:
        """Categorical terminal-state assignment (NaN for other cells)."""
        return self._terminal_states

    @property
    def terminal_states_probabilities(self) -> pd.Series | None:
        """Per-cell terminal-state probabilities (memberships scaled to max 1 per state)."""
        return self._terminal_probs

    @property
    def initial_states(self) -> pd.Series | None:
        """Categorical initial-state assignment (NaN for other cells)."""
        return self._initial_states

    @property
    def fate_probabilities(self) -> Lineage | None:
        """Fate probabilities from :meth:`compute_fate_probabilities`."""
        return self._fate_probabilities

    @property
    def absorption_times(self) -> pd.DataFrame | None:
        """Absorption times from :meth:`compute_absorption_times`."""
        return self._absorption_times

    @property
    def priming_degree(self) -> np.ndarray | None:
        """Lineage priming from :meth:`compute_lineage_priming`."""
        return self._priming_degree

    @property
    def lineage_drivers(self) -> pd.DataFrame | None:
        """Drivers from :meth:`compute_lineage_drivers`."""
        return self._lineage_drivers

    def _key(self, fn) -> str:
        return fn(self.backward)

    # ---------------------------------------------------------------- setting states
    def _states_from(
        self, states: Any, cluster_key: str | None, n_cells: int | None
    ) -> tuple[pd.Series, pd.Series, list[str]]:
        """Normalise list / dict / Series input to (categorical assignment, probabilities, colours)."""
        obs_names = self.adata.obs_names
        n = self.adata.n_obs
        if isinstance(states, pd.Series):
            if not isinstance(states.dtype, pd.CategoricalDtype):
                raise TypeError("A Series of states must be categorical (NaN for unassigned cells).")
            if len(states) != n:
                raise ValueError(f"States Series has {len(states)} entries, expected {n} cells.")
            if states.index.equals(obs_names):
                cats = states
            elif states.index.isin(obs_names).all() and states.index.is_unique:
                cats = states.reindex(obs_names)
            else:
                raise ValueError(
                    "The index of the states Series is neither adata.obs_names nor a reordering of them "
                    f"({int((~states.index.isin(obs_names)).sum())} entries name unknown cells)."
                )
            assignment = pd.Series(
                pd.Categorical(np.asarray(cats.astype(object)), categories=[str(c) for c in states.cat.categories]),
                index=obs_names,
            )
        elif isinstance(states, dict):
            if not states:
                raise ValueError(
                    "Got an empty dict of states; give at least one state (to drop the states, make a new estimator)."
                )
            members = {str(name): self._cells_of(str(name), cells) for name, cells in states.items()}
            if len(members) != len(states):
                raise ValueError(f"State names must be unique as strings, got {list(states)}.")
            _check_disjoint(members)
            labels = np.full(n, None, dtype=object)
            for name, idx in members.items():
                labels[idx] = name
            assignment = pd.Series(pd.Categorical(labels, categories=list(members)), index=obs_names)
        elif isinstance(states, list | tuple | str):
            names = [states] if isinstance(states, str) else list(states)
            return self._states_from_names(names, cluster_key, n_cells)
        else:
            raise TypeError(
                f"States must be a list of names, a dict or a categorical Series, got {type(states).__name__}."
            )
        empty = [c for c in assignment.cat.categories if (assignment == c).sum() == 0]
        if empty:
            raise ValueError(f"State(s) {empty} contain no cells.")
        probs = pd.Series(np.where(assignment.isna(), 0.0, 1.0), index=obs_names)
        colors = self._colors_for(list(assignment.cat.categories), cluster_key, assignment)
        return assignment, probs, colors

    def _cells_of(self, name: str, cells: Any) -> np.ndarray:
        """Integer indices of the cells of state ``name`` (obs names, integer indices or a boolean mask)."""
        n = self.adata.n_obs
        arr = np.asarray(cells)
        if arr.ndim == 0:
            arr = arr[None]
        if arr.size == 0:
            raise ValueError(f"State(s) [{name!r}] contain no cells.")
        if arr.ndim != 1:
            raise ValueError(f"State {name!r}: cells must be 1-D (names, indices or a mask), got shape {arr.shape}.")
        if arr.dtype == bool:
            if arr.shape != (n,):
                raise ValueError(f"State {name!r}: boolean mask has shape {arr.shape}, expected ({n},).")
            idx = np.flatnonzero(arr)
        elif arr.dtype.kind in "iu":
            if arr.size and (arr.min() < -n or arr.max() >= n):
                raise IndexError(
                    f"State {name!r}: cell indices must be in [-{n}, {n}), got range [{arr.min()}, {arr.max()}]."
                )
            idx = np.where(arr < 0, arr + n, arr).astype(np.int64)
        elif arr.dtype.kind in "OUS":
            idx = self.adata.obs_names.get_indexer(arr.astype(str))
            if np.any(idx < 0):
                missing = list(arr.astype(str)[idx < 0][:5])
                raise KeyError(
                    f"State {name!r}: {int(np.sum(idx < 0))} cell names not found in adata.obs_names, e.g. {missing}."
                )
        else:
            raise TypeError(
                f"State {name!r}: cells must be obs names, integer indices or a boolean mask, got dtype {arr.dtype}."
            )
        idx = np.unique(idx)
        if idx.size == 0:
            raise ValueError(f"State(s) [{name!r}] contain no cells.")
        return idx

    def _states_from_names(self, names: list[str], cluster_key: str | None, n_cells: int | None):
        """States named by clusters of ``adata.obs[cluster_key]`` (estimators with macrostates override)."""
        if cluster_key is None:
            raise ValueError("Give cluster_key to select states by cluster name, or pass a dict of cells.")
        if cluster_key not in self.adata.obs:
            raise KeyError(
                f"No cluster annotation adata.obs[{cluster_key!r}]; available: {list(self.adata.obs.columns)}."
            )
        if not names:
            raise ValueError("Got an empty list of states; name at least one cluster.")
        col = self.adata.obs[cluster_key].astype(str).to_numpy()
        unknown = [nm for nm in names if not np.any(col == str(nm))]
        if unknown:
            raise ValueError(
                f"Cluster(s) {unknown} not found in adata.obs[{cluster_key!r}]; "
                f"available: {sorted(set(col.tolist()))[:20]}."
            )
        return self._states_from({nm: np.flatnonzero(col == str(nm)) for nm in names}, cluster_key, n_cells)

    def _colors_for(self, names: list[str], cluster_key: str | None, assignment: pd.Series | None = None) -> list[str]:
        colors = default_colors(len(names))
        if cluster_key is not None and _keys.colors(cluster_key) in self.adata.uns and cluster_key in self.adata.obs:
            cats = [str(c) for c in self.adata.obs[cluster_key].cat.categories]
            palette = list(self.adata.uns[_keys.colors(cluster_key)])
            for i, nm in enumerate(names):
                base = nm.rsplit("_", 1)[0] if nm not in cats and "_" in nm else nm
                if base in cats and cats.index(base) < len(palette):
                    colors[i] = str(palette[cats.index(base)])
        return colors

    def _write_states(self, key: str, assignment: pd.Series, probs: pd.Series, colors: list[str]) -> None:
        """Write a state assignment under ``obs[key]``, ``obs[f"{key}_probs"]``, ``uns[f"{key}_colors"]``.

        Every value is built first, then assigned, so a conversion error cannot leave a partial write.
        A state without cells is refused here too (a last line of defence for every caller).
        """
        counts = assignment.value_counts()
        empty = [str(c) for c in assignment.cat.categories if counts.get(c, 0) == 0]
        if empty:
            raise ValueError(f"State(s) {empty} contain no cells; nothing was written to adata.obs[{key!r}].")
        values, pvalues = assignment.values, np.asarray(probs.values, dtype=np.float64)
        cols = np.array(colors, dtype=object)
        self.adata.obs[key] = values
        self.adata.obs[_keys.probs(key)] = pvalues
        self.adata.uns[_keys.colors(key)] = cols

    def _checked_states(self, where: str, states: Any, cluster_key: str | None, n_cells: Any, options: dict):
        """Check a setter's arguments and build (assignment, probabilities, colours); nothing is written."""
        check_no_options(where, options)
        if n_cells is not None:
            n_cells = check_positive_int("n_cells", n_cells, upper=self.adata.n_obs, upper_what="the number of cells")
        return self._states_from(states, cluster_key, n_cells)

    def set_terminal_states(
        self,
        states: Any,
        cluster_key: str | None = None,
        allow_overlap: bool = False,
        n_cells: int | None = 30,
        **kwargs: Any,
    ) -> BaseEstimator:
        """Set terminal states from macrostate/cluster names, a dict of cells, or a categorical Series.

        Parameters
        ----------
        states
            Names (of macrostates, or of clusters in ``adata.obs[cluster_key]``), a dict
            ``{state: cells}`` (obs names, integer indices or a boolean mask; the sets must be
            disjoint), or a categorical Series over the cells (NaN: no state).
        cluster_key
            Cluster annotation for names and colours.
        allow_overlap
            Allow cells that are also initial states.
        n_cells
            Cells per macrostate when states are named by macrostate (a positive integer).

        Raises
        ------
        ValueError
            An empty selection, a state without cells, states that overlap ("overlap", naming the
            states and the number of shared cells), or cells shared with the initial states.
        KeyError, IndexError, TypeError
            Unknown cell names or cluster key, indices out of range, unknown options.

        Nothing is changed (estimator or AnnData) when an error is raised.
        """
        assignment, probs, colors = self._checked_states("set_terminal_states", states, cluster_key, n_cells, kwargs)
        self._check_overlap(assignment, self._initial_states, allow_overlap, "initial")
        self._write_states(_keys.terminal_states(self.backward), assignment, probs, colors)
        self._terminal_states, self._terminal_probs, self._term_colors = assignment, probs, colors
        self._fate_probabilities = self._absorption_times = None
        info("Setting terminal states %s", list(assignment.cat.categories))
        return self

    def set_initial_states(
        self,
        states: Any,
        cluster_key: str | None = None,
        allow_overlap: bool = False,
        n_cells: int | None = 30,
        **kwargs: Any,
    ) -> BaseEstimator:
        """Set initial states (same input forms and checks as :meth:`set_terminal_states`)."""
        assignment, probs, colors = self._checked_states("set_initial_states", states, cluster_key, n_cells, kwargs)
        self._check_overlap(assignment, self._terminal_states, allow_overlap, "terminal")
        self._write_states(_keys.initial_states(self.backward), assignment, probs, colors)
        self._initial_states, self._initial_probs, self._init_colors = assignment, probs, colors
        info("Setting initial states %s", list(assignment.cat.categories))
        return self

    @staticmethod
    def _check_overlap(new: pd.Series, other: pd.Series | None, allow: bool, what: str) -> None:
        if other is None or allow:
            return
        both = int((new.notna().to_numpy() & other.notna().to_numpy()).sum())
        if both:
            raise ValueError(f"{both} cells would be both {what} and the new states; pass allow_overlap=True.")

    def rename_terminal_states(self, new_names: dict[str, str]) -> BaseEstimator:
        """Rename terminal states (``{old: new}``); fate probabilities follow."""
        if self._terminal_states is None:
            raise RuntimeError("No terminal states to rename; call predict_terminal_states or set_terminal_states.")
        cats = [str(c) for c in self._terminal_states.cat.categories]
        unknown = [k for k in new_names if k not in cats]
        if unknown:
            raise KeyError(f"Unknown terminal state(s) {unknown}; available: {cats}.")
        renamed = [new_names.get(c, c) for c in cats]
        if len(set(renamed)) != len(renamed):
            raise ValueError(f"Renaming would create duplicate names: {renamed}.")
        self._terminal_states = self._terminal_states.cat.rename_categories(renamed)
        self._write_states(
            _keys.terminal_states(self.backward), self._terminal_states, self._terminal_probs, self._term_colors
        )
        if self._fate_probabilities is not None:
            self._fate_probabilities = Lineage(
                self._fate_probabilities.X,
                names=[new_names.get(n, n) for n in self._fate_probabilities.names],
                colors=self._fate_probabilities.colors,
            )
            self._fate_probabilities.to_adata(self.adata, _keys.fate_probabilities(self.backward))
        return self

    # ---------------------------------------------------------------- downstream
    def _require_terminal(self, what: str) -> pd.Series:
        if self._terminal_states is None:
            raise RuntimeError(
                f"{what} needs terminal states; call predict_terminal_states(...) or set_terminal_states(...) first."
            )
        return self._terminal_states

    #: CellRank's joblib backends, accepted as ``backend=`` by the absorption methods and ignored here.
    _JOBLIB_BACKENDS = ("loky", "multiprocessing", "threading")

    def _solve_backend_and_T(self, backend: Any, use_petsc: bool | None = None):
        if isinstance(backend, str) and backend.lower() in self._JOBLIB_BACKENDS:
            info("    backend=%r is CellRank's joblib backend; no worker processes are used here (ignored)", backend)
            backend = None
        if use_petsc:
            if backend is not None and get_backend(backend).name != "petsc":
                raise ValueError(f"use_petsc=True contradicts backend={backend!r}; pass one of them.")
            info("    use_petsc=True: solving on the 'petsc' backend")
            backend = "petsc"  # unavailable -> BackendUnavailableError saying why (never a silent fallback)
        if backend is None or get_backend(backend) is self._backend:
            return self._backend, self._T
        be = get_backend(backend)
        info("Moving T from backend %r to %r for this computation", self._backend.name, be.name)
        return be, be.from_scipy_csr(self.transition_matrix)

    @staticmethod
    def _log_cellrank_options(n_jobs: Any, show_progress_bar: bool | None) -> None:
        if n_jobs not in (None, 1):
            info(
                "    n_jobs=%r: all lineages are solved together in one block solve (one SpMM per step for every "
                "column), so no worker processes are started; threads come from BLAS and the backend",
                n_jobs,
            )
        if show_progress_bar is False:
            info("    show_progress_bar=False: the solver's progress bar and progress lines are hidden")

    def _kept_solver(self, solver: Any, method: str | None, preconditioner: Any) -> Any:
        """The prepared solver of the last absorption solve, if the caller did not ask for another."""
        kept = getattr(self, "_absorption_prepared", None)
        if kept is not None and solver is None and method is None and preconditioner is None:
            return kept
        return solver

    def compute_fate_probabilities(
        self,
        keys: list[str] | None = None,
        solver: Any = None,
        tol: float = 1e-10,
        preconditioner: Any = None,
        backend: Any = None,
        check_sum_tol: float = 1e-3,
        maxiter: int | None = None,
        method: str | None = None,
        use_petsc: bool | None = None,
        n_jobs: int | None = None,
        show_progress_bar: bool | None = None,
        restart: int | None = None,
        **kwargs: Any,
    ) -> Lineage:
        """Absorption probabilities into each terminal state, all lineages in one block solve.

        ``solver`` is a value of :mod:`cellfate_gpu.linalg.solvers` (default ``Auto()``, which logs
        its choice) or one of CellRank's names ``"gmres"``, ``"lgmres"``, ``"bicgstab"``,
        ``"gcrotmk"``, ``"direct"`` (``method`` is an older alias). ``use_petsc=True`` means the
        ``petsc`` backend; ``n_jobs`` and ``show_progress_bar`` are accepted as in CellRank (logged:
        the block solve needs no worker processes). The prepared solver (factorisation or AMG
        hierarchy) is kept, so :meth:`compute_absorption_times` on the same terminal states reuses it.
        """
        terminal = self._require_terminal("compute_fate_probabilities")
        be, T = self._solve_backend_and_T(backend, use_petsc)
        self._log_cellrank_options(n_jobs, show_progress_bar)
        quiet = settings.using(verbosity=min(settings.verbosity, 1)) if show_progress_bar is False else nullcontext()
        with timed("Computing fate probabilities (backend=%r)", be.name), quiet:
            cats = [str(c) for c in terminal.cat.categories]
            colors = None
            if keys is None and self._term_colors is not None:
                colors = list(self._term_colors)
            lin, result = fate_probabilities(
                be,
                T,
                terminal,
                keys=keys,
                solver=solver,
                method=method,
                tol=tol,
                preconditioner=preconditioner,
                maxiter=maxiter,
                restart=restart,
                check_sum_tol=check_sum_tol,
                colors=colors if colors and len(colors) == len(cats) else None,
            )
        self._absorption_prepared = result.prepared
        self._fate_probabilities = lin
        lin.to_adata(self.adata, _keys.fate_probabilities(self.backward))
        return lin

    def compute_absorption_times(
        self,
        keys: list[str] | None = None,
        calculate_variance: bool = False,
        solver: Any = None,
        tol: float = 1e-10,
        preconditioner: Any = None,
        backend: Any = None,
        maxiter: int | None = None,
        method: str | None = None,
        use_petsc: bool | None = None,
        n_jobs: int | None = None,
        show_progress_bar: bool | None = None,
        restart: int | None = None,
        **kwargs: Any,
    ) -> pd.DataFrame:
        """Mean (and variance of) the number of steps until absorption, per lineage.

        Solver arguments as in :meth:`compute_fate_probabilities`; without them the solver prepared
        there is reused when the system is the same (same terminal states and keys). A system whose
        fate probabilities are not distributions is refused here too, with the same message.
        """
        terminal = self._require_terminal("compute_absorption_times")
        be, T = self._solve_backend_and_T(backend, use_petsc)
        self._log_cellrank_options(n_jobs, show_progress_bar)
        quiet = settings.using(verbosity=min(settings.verbosity, 1)) if show_progress_bar is False else nullcontext()
        with timed("Computing absorption times (backend=%r)", be.name), quiet:
            df, result = _absorption_times(
                be,
                T,
                terminal,
                keys=keys,
                calculate_variance=calculate_variance,
                solver=self._kept_solver(solver, method, preconditioner),
                method=method,
                tol=tol,
                preconditioner=preconditioner,
                maxiter=maxiter,
                restart=restart,
                index=self.adata.obs_names,
            )
        self._absorption_prepared = result.prepared
        self._absorption_times = df
        self.adata.obsm[_keys.absorption_times(self.backward)] = df
        return df

    def compute_lineage_priming(self, method: str = "kl_divergence", early_cells: Any = None) -> np.ndarray:
        """Degree of lineage priming of every cell (see :meth:`Lineage.priming_degree`)."""
        if self._fate_probabilities is None:
            raise RuntimeError(
                "compute_lineage_priming needs fate probabilities; call compute_fate_probabilities first."
            )
        if isinstance(early_cells, dict):
            from cellfate_gpu.kernels._random_walk import resolve_cells

            early_cells = resolve_cells(self.adata, early_cells, what="early_cells")
        values = self._fate_probabilities.priming_degree(method=method, early_cells=early_cells)
        self._priming_degree = values
        self.adata.obs[_keys.priming_degree(self.backward)] = values
        return values

    def compute_lineage_drivers(
        self,
        lineages: list[str] | str | None = None,
        method: str = "fisher",
        cluster_key: str | None = None,
        clusters: list[str] | None = None,
        layer: str | None = None,
        use_raw: bool = False,
        confidence_level: float = 0.95,
        n_perms: int = 1000,
        seed: int | None = None,
        **kwargs: Any,
    ) -> pd.DataFrame:
        """Correlate gene expression with fate probabilities (CellRank's lineage drivers)."""
        if self._fate_probabilities is None:
            raise RuntimeError(
                "compute_lineage_drivers needs fate probabilities; call compute_fate_probabilities first."
            )
        # CellRank passes these to its parallel correlation test; here the test is one block product.
        check_no_options("compute_lineage_drivers", kwargs, allowed=("n_jobs", "backend", "show_progress_bar"))
        probs = self._fate_probabilities
        names = probs.names if lineages is None else ([lineages] if isinstance(lineages, str) else list(lineages))
        if not names:
            raise ValueError("lineages selects no lineage.")
        probs = probs[names]
        source = self.adata.raw if use_raw else self.adata
        if use_raw and source is None:
            raise ValueError("use_raw=True but adata.raw is None.")
        if layer is not None:
            if use_raw:
                raise ValueError(f"layer={layer!r} cannot be used with use_raw=True (adata.raw has no layers).")
            if layer not in source.layers:
                raise KeyError(f"No expression in adata.layers[{layer!r}]; available: {list(source.layers.keys())}.")
            X = source.layers[layer]
        else:
            X = source.X
        if X is None:
            raise ValueError("adata.X is None; give the expression with layer=... (a key of adata.layers).")
        cells = np.arange(self.adata.n_obs)
        if clusters is not None:
            if cluster_key is None:
                raise ValueError("clusters needs cluster_key.")
            if cluster_key not in self.adata.obs:
                raise KeyError(
                    f"No cluster annotation adata.obs[{cluster_key!r}]; available: {list(self.adata.obs.columns)}."
                )
            clusters = [clusters] if isinstance(clusters, str) else list(clusters)
            col = self.adata.obs[cluster_key].astype(str)
            unknown = sorted(set(map(str, clusters)) - set(col.unique()))
            if unknown:
                raise ValueError(f"Cluster(s) {unknown} not found in adata.obs[{cluster_key!r}].")
            cells = np.flatnonzero(col.isin([str(c) for c in clusters]).to_numpy())
        with timed("Computing lineage drivers for %s (%d genes)", names, X.shape[1]):
            df = lineage_drivers(
                X[cells],
                probs.X[cells],
                list(source.var_names),
                probs.names,
                method=method,
                confidence_level=confidence_level,
                n_perms=n_perms,
                seed=seed,
            )
        self._lineage_drivers = df
        if not use_raw:
            self.adata.varm[_keys.lineage_drivers(self.backward)] = df.reindex(self.adata.var_names)
        return df

    # ---------------------------------------------------------------- plots
    def plot_fate_probabilities(self, **kwargs: Any):
        """Fate probabilities on an embedding (see :func:`cellfate_gpu.pl.fate_probabilities`)."""
        from cellfate_gpu.pl import fate_probabilities as plot

        return plot(self, **kwargs)

    def plot_lineage_drivers(self, lineage: str, n_genes: int = 8, **kwargs: Any):
        """Expression of the top drivers of ``lineage`` on an embedding."""
        from cellfate_gpu.pl import lineage_drivers as plot

        return plot(self, lineage, n_genes=n_genes, **kwargs)

    def _states_repr(self, s: pd.Series | None) -> str:
        return "None" if s is None else repr([str(c) for c in s.cat.categories])

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}[kernel={short_kernel_repr(self._kernel)}, "
            f"initial_states={self._states_repr(self._initial_states)}, "
            f"terminal_states={self._states_repr(self._terminal_states)}]"
        )
