"""What every estimator shares.

The kernel and its backend, terminal/initial states, and the downstream results (fate
probabilities, absorption times, priming, drivers) under CellRank's keys.

Results are computed completely before anything is written to the AnnData, so a failing step
leaves no half-written state behind.
"""

from __future__ import annotations

import abc
import copy as _copy
import pickle
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, final

import numpy as np
import pandas as pd
import scipy.sparse as sp

from cellfate_gpu import _keys
from cellfate_gpu._logging import info, timed, warning
from cellfate_gpu._settings import settings
from cellfate_gpu.backends import Backend, get_backend
from cellfate_gpu.estimators._absorption import _absorption_times, fate_probabilities
from cellfate_gpu.estimators._drivers import lineage_drivers
from cellfate_gpu.kernels import Kernel, PrecomputedKernel
from cellfate_gpu.kernels._random_walk import resolve_cells
from cellfate_gpu.kernels._validation import JOBLIB_BACKENDS, check_no_options
from cellfate_gpu.lineage import Lineage, default_colors

__all__ = ["BaseEstimator", "UnknownStateError", "check_positive_int", "short_kernel_repr"]

#: AnnData attributes :meth:`BaseEstimator.to_adata` can keep (CellRank's ``Attr_t``).
_ADATA_ATTRS = ("X", "raw", "layers", "obs", "var", "obsm", "varm", "obsp", "varp", "uns")


class UnknownStateError(KeyError, ValueError):
    """A state name that is not among the estimator's states.

    A :class:`KeyError` (a name lookup failed) and a :class:`ValueError` (CellRank raises that for the
    same mistake), so code written against either catches it.
    """

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def short_kernel_repr(kernel: Kernel) -> str:
    """``PseudotimeKernel[n=5780]`` or ``(0.8 * PseudotimeKernel[n=..] + 0.2 * ...)``, as CellRank prints it."""
    return str(kernel)


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


def _renamed_columns(df: pd.DataFrame | None, names: list[str], old_new: dict[str, str]) -> pd.DataFrame | None:
    """``df`` with columns ``f"{name}_{suffix}"`` renamed after ``old_new`` (longest matching name wins)."""
    if df is None:
        return None
    by_length = sorted(names, key=len, reverse=True)

    def rename(col: Any) -> Any:
        for nm in by_length:
            if isinstance(col, str) and col.startswith(f"{nm}_"):
                return f"{old_new.get(nm, nm)}{col[len(nm) :]}"
        return col

    return df.rename(columns=rename)


def _kernel_nodes(kernel: Kernel) -> Iterator[Kernel]:
    """``kernel`` and, for an expression, every node below it."""
    yield kernel
    node = kernel.expression
    if node is not None:
        for op in node.operands:
            yield from _kernel_nodes(op)


@final
class _Pickler(pickle.Pickler):
    """Pickles backends by name: on load they resolve to the registered instance (one per backend)."""

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, Backend):
            return get_backend, (obj.name,)
        return NotImplemented


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
        self._n_obs = int(self._kernel.adata.n_obs)  # kept when the AnnData is dropped (write_adata=False)
        self._terminal_states: pd.Series | None = None
        self._terminal_probs: pd.Series | None = None
        self._term_colors: list[str] | None = None
        self._initial_states: pd.Series | None = None
        self._initial_probs: pd.Series | None = None
        self._init_colors: list[str] | None = None
        # Soft assignment of cells to the terminal/initial states (GPCCA, states named by macrostate)
        self._term_memberships: Lineage | None = None
        self._init_memberships: Lineage | None = None
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
    def initial_states_probabilities(self) -> pd.Series | None:
        """Per-cell initial-state probabilities (memberships scaled to max 1 per state)."""
        return self._initial_probs

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
        """Integer indices of the cells of state ``name`` (obs names, integer indices or a boolean mask).

        One 1-D selector of :func:`~cellfate_gpu.kernels._random_walk.resolve_cells` (no dict: the
        dict of states is the outer level); unknown names raise a :class:`KeyError`.
        """
        arr = np.asarray(cells)
        if arr.ndim == 0:
            arr = arr[None]
        if arr.size == 0:
            raise ValueError(f"State(s) [{name!r}] contain no cells.")
        if arr.ndim != 1:
            raise ValueError(f"State {name!r}: cells must be 1-D (names, indices or a mask), got shape {arr.shape}.")
        return resolve_cells(self.adata, arr, what=f"State {name!r}")

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

    def _write_states(
        self, key: str, assignment: pd.Series, probs: pd.Series | None, colors: list[str] | None, *, adata=None
    ) -> None:
        """Write a state assignment under ``obs[key]``, ``obs[f"{key}_probs"]``, ``uns[f"{key}_colors"]``.

        Every value is built first, then assigned, so a conversion error cannot leave a partial write.
        A state without cells is refused here too (a last line of defence for every caller).
        ``adata`` is the target (default :attr:`adata`; :meth:`to_adata` writes into a new object);
        ``probs`` or ``colors`` of ``None`` (states read from an AnnData without them) are not written.
        """
        adata = self.adata if adata is None else adata
        counts = assignment.value_counts()
        empty = [str(c) for c in assignment.cat.categories if counts.get(c, 0) == 0]
        if empty:
            raise ValueError(f"State(s) {empty} contain no cells; nothing was written to adata.obs[{key!r}].")
        values = assignment.values
        pvalues = None if probs is None else np.asarray(probs.values, dtype=np.float64)
        cols = None if colors is None else np.array(colors, dtype=object)
        adata.obs[key] = values
        if pvalues is not None:
            adata.obs[_keys.probs(key)] = pvalues
        if cols is not None:
            adata.uns[_keys.colors(key)] = cols

    def _write_state_memberships(self, key: str, memberships: Lineage | None, *, adata=None) -> None:
        """Write (or, for ``None``, remove) ``obsm[f"{key}_memberships"]`` with its names and colours."""
        adata = self.adata if adata is None else adata
        mkey = _keys.states_memberships(key)
        if memberships is None:
            adata.obsm.pop(mkey, None)
            adata.uns.pop(_keys.names(mkey), None)
            adata.uns.pop(_keys.colors(mkey), None)
        else:
            memberships.to_adata(adata, mkey)

    def _states_memberships(self, states: Any, cluster_key: str | None) -> Lineage | None:
        """Memberships of states given to a setter; ``None`` here (GPCCA: states named by macrostate)."""
        return None

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
        memberships = self._states_memberships(states, cluster_key)
        key = _keys.terminal_states(self.backward)
        self._write_states(key, assignment, probs, colors)
        self._write_state_memberships(key, memberships)
        self._terminal_states, self._terminal_probs, self._term_colors = assignment, probs, colors
        self._term_memberships = memberships
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
        memberships = self._states_memberships(states, cluster_key)
        key = _keys.initial_states(self.backward)
        self._write_states(key, assignment, probs, colors)
        self._write_state_memberships(key, memberships)
        self._initial_states, self._initial_probs, self._init_colors = assignment, probs, colors
        self._init_memberships = memberships
        info("Setting initial states %s", list(assignment.cat.categories))
        return self

    @staticmethod
    def _check_overlap(new: pd.Series, other: pd.Series | None, allow: bool, what: str) -> None:
        if other is None or allow:
            return
        both = int((new.notna().to_numpy() & other.notna().to_numpy()).sum())
        if both:
            raise ValueError(f"{both} cells would be both {what} and the new states; pass allow_overlap=True.")

    def rename_terminal_states(self, old_new: Mapping[str, str] | None = None, **kwargs: Any) -> BaseEstimator:
        """Rename the terminal states, ``{old: new}`` (CellRank's ``rename_terminal_states``).

        ``obs['term_states_fwd']`` and its colours, :attr:`terminal_states_memberships` (GPCCA) and
        the results computed for these states follow: fate probabilities (``obsm['lineages_fwd']``
        and its names), absorption times and lineage drivers (their ``{state}_...`` columns). CellRank
        drops the fate probabilities and absorption times on a rename instead; here they are kept,
        renamed. ``new_names=`` is accepted as an alias of ``old_new``.

        Raises
        ------
        RuntimeError
            No terminal states.
        TypeError
            ``old_new`` is not a dict.
        UnknownStateError
            A key is not a terminal state (a ``KeyError`` and a ``ValueError``).
        ValueError
            The new names are not unique.
        """
        return self._rename_states("terminal", self._rename_mapping("rename_terminal_states", old_new, kwargs))

    def rename_initial_states(self, old_new: Mapping[str, str] | None = None, **kwargs: Any) -> BaseEstimator:
        """Rename the initial states, ``{old: new}`` (CellRank's ``rename_initial_states``).

        ``obs['init_states_fwd']`` (its probabilities and colours stay) and
        :attr:`initial_states_memberships` (GPCCA) follow; errors as in :meth:`rename_terminal_states`.
        """
        return self._rename_states("initial", self._rename_mapping("rename_initial_states", old_new, kwargs))

    @staticmethod
    def _rename_mapping(where: str, old_new: Any, kwargs: dict[str, Any]) -> dict[str, str]:
        if "new_names" in kwargs:
            if old_new is not None:
                raise TypeError("Give the renaming once: old_new or new_names, not both.")
            old_new = kwargs.pop("new_names")
        check_no_options(where, kwargs)
        if not isinstance(old_new, Mapping):
            raise TypeError(f"Expected the new names as a dict {{old: new}}, got {type(old_new).__name__}.")
        return {str(k): str(v) for k, v in old_new.items()}

    def _rename_states(self, which: str, old_new: dict[str, str]) -> BaseEstimator:
        terminal = which == "terminal"
        states = self._terminal_states if terminal else self._initial_states
        if states is None:
            how = (
                "predict_terminal_states or set_terminal_states"
                if terminal
                else "predict_initial_states or set_initial_states"
            )
            raise RuntimeError(f"No {which} states to rename; call {how} first.")
        if not old_new:
            return self
        cats = [str(c) for c in states.cat.categories]
        unknown = [k for k in old_new if k not in cats]
        if unknown:
            raise UnknownStateError(f"Unknown {which} state(s) {unknown}; available: {cats}.")
        renamed = [old_new.get(c, c) for c in cats]
        if len(set(renamed)) != len(renamed):
            raise ValueError(f"Renaming would create duplicate names: {renamed}.")
        # ---- build everything, then write
        assignment = states.cat.rename_categories(renamed)
        mem = self._term_memberships if terminal else self._init_memberships
        if mem is not None:
            mem = Lineage(mem.X, names=[old_new.get(n, n) for n in mem.names], colors=mem.colors)
        key = _keys.terminal_states(self.backward) if terminal else _keys.initial_states(self.backward)
        probs = self._terminal_probs if terminal else self._initial_probs
        colors = self._term_colors if terminal else self._init_colors
        fates = times = drivers = None
        if terminal and self._fate_probabilities is not None:
            old_names = list(self._fate_probabilities.names)
            fates = Lineage(
                self._fate_probabilities.X,
                names=[old_new.get(n, n) for n in old_names],
                colors=self._fate_probabilities.colors,
            )
            times = _renamed_columns(self._absorption_times, old_names, old_new)
            drivers = _renamed_columns(self._lineage_drivers, old_names, old_new)
        self._write_states(key, assignment, probs, colors)
        if mem is not None:
            self._write_state_memberships(key, mem)
        if terminal:
            self._terminal_states, self._term_memberships = assignment, mem
            if fates is not None:
                self._fate_probabilities = fates
                fates.to_adata(self.adata, _keys.fate_probabilities(self.backward))
                if times is not None:
                    self._absorption_times = times
                    self.adata.obsm[_keys.absorption_times(self.backward)] = times
                if drivers is not None:
                    self._lineage_drivers = drivers
                    dkey = _keys.lineage_drivers(self.backward)
                    if dkey in self.adata.varm:
                        self.adata.varm[dkey] = drivers.reindex(self.adata.var_names)
        else:
            self._initial_states, self._init_memberships = assignment, mem
        info("Renamed %s states: %s", which, old_new)
        return self

    # ---------------------------------------------------------------- downstream
    def _require_terminal(self, what: str) -> pd.Series:
        if self._terminal_states is None:
            raise RuntimeError(
                f"{what} needs terminal states; call predict_terminal_states(...) or set_terminal_states(...) first."
            )
        return self._terminal_states

    def _solve_backend_and_T(self, backend: Any, use_petsc: bool | None = None):
        if isinstance(backend, str) and backend.lower() in JOBLIB_BACKENDS:  # accepted, ignored
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

    def plot_lineage_drivers_correlation(self, lineage_x: str, lineage_y: str, *args: Any, **kwargs: Any):
        """Genes' correlations with two lineages.

        The other arguments (``color``, ``gene_sym``, ``gene_sets``, ``gene_sets_colors``, ``use_raw``,
        ``cmap``, ``fontsize``, ``adjust_text``, ``legend_loc``, ``figsize``, ``dpi``, ``save``,
        ``show``, in CellRank's order, and scatter keywords) are
        :func:`cellfate_gpu.pl.lineage_drivers_correlation`'s.
        """
        from cellfate_gpu.pl import lineage_drivers_correlation as plot

        return plot(self, lineage_x, lineage_y, *args, **kwargs)

    # ---------------------------------------------------------------- copies and I/O
    def copy(self, *, deep: bool = False) -> BaseEstimator:
        """A copy of the estimator (CellRank's ``copy``).

        The results (states, memberships, fate probabilities, ...) are copied, so changing the copy's
        results leaves this estimator's alone. ``deep=False`` shares the AnnData and the transition
        matrix with this estimator (what the copy writes lands in the same AnnData, as in CellRank);
        ``deep=True`` also copies the kernel, its AnnData and its matrix. The backend is shared (one
        instance per backend), and so is a prepared solver, which only reads the matrix.
        """
        kernel = self._kernel.copy(deep=True) if deep else _copy.copy(self._kernel)
        out = object.__new__(type(self))
        for name, value in self.__dict__.items():
            if name in ("_kernel", "_T", "_backend", "_absorption_prepared"):
                continue
            if isinstance(value, Mapping):
                out.__dict__[name] = _copy.deepcopy(value)
            else:
                out.__dict__[name] = _copy.deepcopy(value) if deep else _copy.copy(value)
        out._kernel = kernel
        out._backend = self._backend
        out._T = kernel.native_transition_matrix if deep else self._T
        out._absorption_prepared = getattr(self, "_absorption_prepared", None)
        return out

    def __copy__(self) -> BaseEstimator:
        return self.copy(deep=False)

    def __deepcopy__(self, memo: dict) -> BaseEstimator:
        return self.copy(deep=True)

    def __getstate__(self) -> dict[str, Any]:
        # A prepared solver (a factorisation, an AMG hierarchy) is a cache and may hold closures.
        state = dict(self.__dict__)
        state.pop("_absorption_prepared", None)
        return state

    def _write_results(self, adata) -> None:
        """Write every result this estimator holds into ``adata`` under CellRank's keys."""
        bwd = self.backward
        for key, states, probs, colors, mem in (
            (
                _keys.terminal_states(bwd),
                self._terminal_states,
                self._terminal_probs,
                self._term_colors,
                self._term_memberships,
            ),
            (
                _keys.initial_states(bwd),
                self._initial_states,
                self._initial_probs,
                self._init_colors,
                self._init_memberships,
            ),
        ):
            if states is not None:
                self._write_states(key, states, probs, colors, adata=adata)
                if mem is not None:
                    self._write_state_memberships(key, mem, adata=adata)
        if self._fate_probabilities is not None:
            self._fate_probabilities.to_adata(adata, _keys.fate_probabilities(bwd))
        if self._absorption_times is not None:
            adata.obsm[_keys.absorption_times(bwd)] = self._absorption_times
        if self._priming_degree is not None:
            adata.obs[_keys.priming_degree(bwd)] = np.asarray(self._priming_degree)
        drivers = self._lineage_drivers
        if drivers is not None and drivers.index.isin(adata.var_names).all():
            adata.varm[_keys.lineage_drivers(bwd)] = drivers.reindex(adata.var_names)

    def to_adata(
        self,
        keep: str | Sequence[str] | Mapping[str, Any] = ("X", "raw"),
        *,
        copy: bool | str | Sequence[str] | Mapping[str, bool] = True,
    ):
        """A new AnnData with this estimator's results, its kernel's T and the kept parts of :attr:`adata`.

        As CellRank's ``to_adata``: the new object has the cells and genes of :attr:`adata`, every
        result under CellRank's keys (written from the estimator, not read back from
        :attr:`adata`), the transition matrix under ``obsp['T_fwd']`` (``T_bwd``) with its
        parameters, and from :attr:`adata` what ``keep`` names.

        Parameters
        ----------
        keep
            ``"all"`` (every attribute below), one or several of ``"X"``, ``"raw"``, ``"layers"``,
            ``"obs"``, ``"var"``, ``"obsm"``, ``"varm"``, ``"obsp"``, ``"varp"``, ``"uns"``, or a dict
            ``{attribute: keys}`` (``True``/``"all"``: every key of it). Columns of ``obs``/``var``
            the estimator wrote keep the estimator's values; for the mappings (``obsm``, ``uns``,
            ...) the kept entries of :attr:`adata` win, as in CellRank.
        copy
            Copy the kept data (``True``/``False``, or per attribute: names or ``{attribute: bool}``).

        Returns
        -------
        anndata.AnnData

        Raises
        ------
        ValueError
            An unknown attribute name.
        KeyError
            A key to keep that :attr:`adata` does not have (the message names them).
        """
        import anndata as ad

        from cellfate_gpu.kernels import _io

        src = self.adata
        if isinstance(keep, str):
            keep = list(_ADATA_ATTRS) if keep == "all" else [keep]
        keep = dict(keep) if isinstance(keep, Mapping) else dict.fromkeys(keep, True)
        if isinstance(copy, bool):
            copy = dict.fromkeys(keep, copy)
        elif isinstance(copy, str):
            copy = {copy: True}
        elif not isinstance(copy, Mapping):
            copy = dict.fromkeys(copy, True)
        bad = sorted(set(keep) - set(_ADATA_ATTRS)) + sorted(set(copy) - set(_ADATA_ATTRS))
        if bad:
            raise ValueError(f"Unknown AnnData attribute(s) {bad}; valid: {list(_ADATA_ATTRS)} or 'all'.")

        out = ad.AnnData(
            obs=pd.DataFrame(index=src.obs_names.copy()),
            var=pd.DataFrame(index=src.var_names.copy()),
        )
        self._write_results(out)
        kernel = self._kernel
        _io.write_kernel(
            out,
            _keys.transition_matrix(self.backward),
            self.transition_matrix,
            kernel.params,
            kernel._init_kwargs(),
            repr(kernel),
            copy=True,
        )
        for attr, keys in keep.items():
            if keys is False or keys is None:
                continue
            deep = bool(copy.get(attr, False))
            if attr == "X":
                out.X = _copy.deepcopy(src.X) if deep else src.X
                continue
            if attr == "raw":
                out.raw = src.raw.to_adata() if src.raw is not None else None
                continue
            old = getattr(src, attr)
            names = (
                list(old.keys())
                if keys is True or keys == "all" or keys == ["all"]
                else ([keys] if isinstance(keys, str) else list(keys))
            )
            missing = [k for k in names if k not in old]
            if missing:
                raise KeyError(f"Unable to find key(s) {missing} in adata.{attr}.")
            if attr in ("obs", "var"):
                mine = getattr(out, attr)
                extra = [k for k in names if k not in mine.columns]
                for k in extra:
                    mine[k] = old[k].copy() if deep else old[k]
            else:
                target = getattr(out, attr)
                for k in names:
                    target[k] = _copy.deepcopy(old[k]) if deep else old[k]
        return out

    def write(self, fname: str | Path, write_adata: bool = True, ext: str | None = "pickle") -> None:
        """Serialise the estimator with :mod:`pickle` (CellRank's ``write``).

        Parameters
        ----------
        fname
            Path; ``.{ext}`` is appended unless it already ends so (``ext=None``: as given).
        write_adata
            Include the AnnData. ``False`` drops it (every kernel of the expression loses it); give
            it back with :meth:`read` ``(fname, adata=...)``.
        ext
            File extension.

        Backends are stored by name and resolve to this process's instance on :meth:`read`; a
        prepared solver is not stored (it is rebuilt on the next solve).
        """
        path = Path(fname)
        if ext:
            suffix = ext if ext.startswith(".") else f".{ext}"
            if not path.name.endswith(suffix):
                path = path.with_name(path.name + suffix)
        info("Writing %r to %s", self, path)
        with path.open("wb") as fh, nullcontext() if write_adata else self._without_adata():
            _Pickler(fh, protocol=pickle.HIGHEST_PROTOCOL).dump(self)

    @classmethod
    def read(cls, fname: str | Path, adata=None, copy: bool = False) -> BaseEstimator:
        """Read an estimator written by :meth:`write` (CellRank's ``read``).

        Parameters
        ----------
        fname
            Path of the file.
        adata
            AnnData for an estimator written with ``write_adata=False`` (ignored, with a warning,
            when the file has its own).
        copy
            Copy ``adata`` before attaching it (a view is always copied).

        Raises
        ------
        TypeError
            The file holds no estimator of this class, or it was written without its AnnData and
            ``adata`` is not an AnnData.
        ValueError
            ``adata`` has another number of cells than the estimator.
        """
        import anndata as ad

        with Path(fname).open("rb") as fh:
            obj = pickle.load(fh)  # the user's own file, as CellRank reads it
        if not isinstance(obj, cls):
            raise TypeError(f"{fname} holds a {type(obj).__name__}, not a {cls.__name__}.")
        nodes = list(_kernel_nodes(obj._kernel))
        if all(getattr(node, "_adata", None) is not None for node in nodes):
            if adata is not None:
                warning("Ignoring the supplied adata: %s was written with its own", fname)
            return obj
        if not isinstance(adata, ad.AnnData):
            raise TypeError(f"{fname} was written without its AnnData; supply one as read(fname, adata=...).")
        n = obj._n_obs
        if adata.n_obs != n:
            raise ValueError(f"adata has {adata.n_obs} cells, the estimator {n}.")
        if copy or adata.is_view:
            adata = adata.copy()
        for node in nodes:
            if getattr(node, "_adata", None) is None:
                node._adata = adata
        return obj

    @contextmanager
    def _without_adata(self) -> Iterator[None]:
        """Every kernel of the expression without its AnnData, for the duration (restored after)."""
        nodes = list(_kernel_nodes(self._kernel))
        saved = [node._adata for node in nodes]
        try:
            for node in nodes:
                node._adata = None
            yield
        finally:
            for node, a in zip(nodes, saved, strict=True):
                node._adata = a

    def _states_repr(self, s: pd.Series | None) -> str:
        return "None" if s is None else repr([str(c) for c in s.cat.categories])

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}[kernel={short_kernel_repr(self._kernel)}, "
            f"initial_states={self._states_repr(self._initial_states)}, "
            f"terminal_states={self._states_repr(self._terminal_states)}]"
        )
