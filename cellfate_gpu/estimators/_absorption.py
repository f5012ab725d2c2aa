r"""Absorbing Markov chains: fate probabilities, absorption times, lineage priming.

Make every cell of a terminal state absorbing and order the cells transient first; the
transition matrix then has the canonical form

.. math::

    T = \begin{pmatrix} Q & R \\ 0 & I \end{pmatrix},

with :math:`Q` (transient x transient) and :math:`R` (transient x absorbing). The fundamental
matrix :math:`N = (I - Q)^{-1} = \sum_{k \ge 0} Q^k` counts expected visits; it exists exactly
when every transient cell can reach an absorbing cell (Kemeny & Snell 1960, Thm. 3.2.1).

* **Fate probabilities.** With :math:`S` (absorbing cells x lineages) the indicator that
  aggregates the cells of each terminal state into one lineage,

  .. math:: B = N R S \quad\Longleftrightarrow\quad (I - Q) B = R S,

  one block solve for all lineages at once (:func:`cellfate_gpu.linalg.solve`). Absorbing cells
  get one-hot rows; every row of :math:`B` is a distribution.
* **Absorption times** (Kemeny & Snell 1960, Thm. 3.3.5). Mean
  :math:`m = N \mathbf 1`, i.e. :math:`(I - Q) m = \mathbf 1`, and variance
  :math:`v = (2N - I)\, m - m \circ m` (a second solve, :math:`N m`).
  Per lineage the times are conditioned on where the walk ends (as in CellRank): with
  :math:`b_l` the fate probabilities, :math:`u_l = N b_l = E[\tau \mathbf 1\{l\}]` and
  :math:`w_l = N (2 u_l - b_l) = E[\tau^2 \mathbf 1\{l\}]`, so
  :math:`E[\tau \mid l] = u_l / b_l` and :math:`\mathrm{Var}[\tau \mid l] = w_l / b_l - (u_l/b_l)^2`.
  For one lineage (or all lineages merged, ``keys=["A, B, C"]``) :math:`b = \mathbf 1` and
  these are exactly the textbook :math:`m` and :math:`v`.

All matrices stay on the backend that holds ``T``; results come to the host once, at the end.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from cellfate_gpu._logging import info
from cellfate_gpu.backends import SolveResult, get_backend
from cellfate_gpu.linalg import Prepared, Solver, solve, solver_from_name
from cellfate_gpu.lineage import Lineage

__all__ = ["fate_probabilities", "absorption_times", "lineage_priming", "terminal_indicator"]


# ---------------------------------------------------------------------- setup
def terminal_indicator(
    terminal_states: pd.Series, keys: list[str] | None = None, *, n_cells: int | None = None
) -> tuple[np.ndarray, list[str], list[np.ndarray]]:
    """Absorbing cells, lineage names and each lineage's cells.

    Parameters
    ----------
    terminal_states
        Categorical series, one entry per cell; NaN for cells that are not terminal.
    keys
        Lineages to form (default: every category). ``"A, B"`` merges terminal states A and B
        into one lineage; states not named are not absorbing.
    n_cells
        Expected length of ``terminal_states`` (the size of ``T``).

    Returns
    -------
    absorbing
        Sorted indices of all absorbing cells.
    names
        Lineage names (``"A, B"`` for merged ones).
    groups
        Cell indices of each lineage.
    """
    if not isinstance(terminal_states, pd.Series) or not isinstance(terminal_states.dtype, pd.CategoricalDtype):
        raise TypeError(
            "terminal_states must be a categorical pandas Series (NaN for non-terminal cells), "
            f"got {type(terminal_states).__name__} of dtype {getattr(terminal_states, 'dtype', None)}."
        )
    if n_cells is not None and len(terminal_states) != n_cells:
        raise ValueError(f"terminal_states has {len(terminal_states)} entries but T has {n_cells} cells.")
    codes = terminal_states.cat.codes.to_numpy()
    categories = [str(c) for c in terminal_states.cat.categories]
    if not np.any(codes >= 0):
        raise ValueError("No terminal states are set (every entry is NaN); set or predict terminal states first.")
    keys = categories if keys is None else ([keys] if isinstance(keys, str) else list(keys))
    if not keys:
        raise ValueError("keys is empty; name at least one terminal state.")
    names, groups, used = [], [], {}
    for key in keys:
        parts = [p.strip() for p in str(key).strip(" ,").split(",")]
        unknown = [p for p in parts if p not in categories]
        if unknown:
            raise KeyError(f"Unknown terminal state(s) {unknown} in keys; available: {categories}.")
        for p in parts:
            if p in used:
                raise ValueError(f"Terminal state {p!r} appears in two keys ({used[p]!r} and {key!r}).")
            used[p] = key
        idx = np.flatnonzero(np.isin(codes, [categories.index(p) for p in parts]))
        if idx.size == 0:
            raise ValueError(f"Terminal state {key!r} has no cells.")
        names.append(", ".join(parts))
        groups.append(idx)
    return np.sort(np.concatenate(groups)), names, groups


def _transient_system(backend, T: Any, absorbing: np.ndarray, groups: list[np.ndarray]):
    r"""``I - Q`` (native) and ``R S`` (backend block) for the transient cells.

    :math:`R S` is one SpMM of :math:`R = T[\text{transient}, \text{absorbing}]` with the dense
    ``(n_absorbing, L)`` 0/1 indicator block :math:`S` moved to the backend once.
    """
    n = T.shape[0]
    transient = np.setdiff1d(np.arange(n), absorbing, assume_unique=True)
    if transient.size == 0:
        raise ValueError("Every cell is a terminal cell; there is nothing to solve for.")
    Q = backend.submatrix(T, transient, transient)
    A = backend.linear_combination([1.0, -1.0], [backend.eye(transient.size), Q])
    S = np.zeros((absorbing.size, len(groups)))
    for j, g in enumerate(groups):
        S[np.searchsorted(absorbing, g), j] = 1.0
    R = backend.submatrix(T, transient, absorbing)
    RS = backend.spmm(R, backend.asarray(S))
    return transient, A, RS


def _cells_reaching_no_target(backend, T: Any, targets: np.ndarray) -> np.ndarray:
    """Cells with no path to ``targets`` (host graph search; only run on the failure path)."""
    import scipy.sparse as sp
    from scipy.sparse.csgraph import breadth_first_order

    Th = backend.to_scipy_csr(T).tocoo()
    n = Th.shape[0]
    # Reverse graph plus a virtual source n linked to every target: reached = can reach a target.
    mask = Th.data != 0
    rows = np.r_[Th.col[mask], np.full(targets.size, n)]
    cols = np.r_[Th.row[mask], targets]
    rev = sp.csr_matrix((np.ones(rows.size), (rows, cols)), shape=(n + 1, n + 1))
    reached = breadth_first_order(rev, n, directed=True, return_predecessors=False)
    ok = np.zeros(n + 1, dtype=bool)
    ok[reached] = True
    return np.flatnonzero(~ok[:n])


def _reducible_error(backend, T, absorbing, index) -> ValueError | None:
    stuck = _cells_reaching_no_target(backend, T, absorbing)
    if stuck.size == 0:
        return None
    examples = [str(index[i]) for i in stuck[:5]]
    return ValueError(
        f"{stuck.size} transient cell(s) reach no terminal state (the chain is reducible; e.g. {examples}). "
        "Add terminal states for the missing end points (they form closed classes of T), or use a "
        "kernel whose graph is connected."
    )


def _prepare(backend, T, terminal_states, keys):
    be = get_backend(backend)
    shape = tuple(getattr(T, "shape", ()))
    if len(shape) != 2 or shape[0] != shape[1]:
        raise ValueError(f"T must be a square matrix, got shape {shape}.")
    T = be.ensure_native(T)
    absorbing, names, groups = terminal_indicator(terminal_states, keys, n_cells=shape[0])
    transient, A, RS = _transient_system(be, T, absorbing, groups)
    # A lineage no transient cell steps into is never reached: B's column would be 0.
    inflow = be.to_host(be.xp.sum(RS, axis=0))
    unreachable = [nm for nm, f in zip(names, np.atleast_1d(inflow), strict=True) if not f > 0]
    if unreachable:
        raise ValueError(
            f"Terminal state(s) {unreachable} cannot be reached from any transient cell "
            "(no transition into them); remove them from the terminal states or check T."
        )
    return be, T, absorbing, names, groups, transient, A, RS


def _checked_solve(be, T, A, B, absorbing, index, *, solver, tol, maxiter) -> SolveResult:
    """One block solve with ``(I - Q)``; a reducible chain or a non-converged solve raises with what to try.

    ``solver`` may be the ``prepared`` solver of an earlier solve: it is reused when ``A`` is the
    same matrix, and prepared afresh from its value otherwise.
    """
    if isinstance(solver, Prepared):
        try:
            solver.prepare(be, A)
        except ValueError:
            info("    The kept %r belongs to another system; preparing it for this one", solver.solver)
            solver = solver.solver
    result = solve(A, B, solver=solver, tol=tol, maxiter=maxiter, backend=be, throw=False)
    if not result.converged:
        err = _reducible_error(be, T, absorbing, index)
        if err is not None:
            raise err
        worst = float(np.max(result.residual_norms)) if result.residual_norms is not None else float("nan")
        why = f" ({result.message})" if result.message else ""
        raise RuntimeError(
            f"The absorption solve did not converge (status={result.status.value}, solver={result.prepared.solver!r}, "
            f"worst relative residual {worst:.3g}, tol={tol:g}, {result.iterations} iterations){why}. Try: "
            "solver=GMRES(restart=100, preconditioner=AMG()) (pyamg) or preconditioner='ilu' (scipy) / 'jacobi'; "
            "a larger maxiter; a looser tol; or solver='direct' on small systems. If a direct solve fails too, "
            "(I - Q) is numerically singular: some transient cells sit in a region the walk practically never "
            "leaves (a metastable state that is not among the terminal states); check the macrostates and the "
            "terminal states (e.g. more macrostates, or set_terminal_states)."
        )
    return result


def _check_distributions(be, T, absorbing, index, X: np.ndarray, tol: float, check_sum_tol: float) -> None:
    """Fate probabilities must be distributions (within ``check_sum_tol``), else a clear error."""
    sums = X.sum(axis=1)
    if not np.all(np.abs(sums - 1.0) <= check_sum_tol):  # a singular system can overshoot, too
        err = _reducible_error(be, T, absorbing, index)
        if err is not None:
            raise err
    finite = bool(np.all(np.isfinite(X)))
    worst_sum = float(np.max(np.abs(sums - 1.0))) if finite else float("inf")
    most_negative = float(X.min()) if finite else float("nan")
    if not finite or worst_sum > check_sum_tol or most_negative < -check_sum_tol:
        raise RuntimeError(
            f"Fate probabilities are not distributions: min entry {most_negative:.3g}, max |row sum - 1| "
            f"{worst_sum:.3g} (check_sum_tol={check_sum_tol:g}). Try a smaller tol (now {tol:g}), "
            "preconditioner='ilu' (scipy) or 'jacobi', or method='direct'. If method='direct' fails too, "
            "(I - Q) is numerically singular: some transient cells sit in a region the walk practically "
            "never leaves (a metastable state that is not among the terminal states); check the macrostates "
            "and the terminal states (e.g. more macrostates, or set_terminal_states)."
        )


def _solver_value(solver: Any, method: str | None, preconditioner: Any, restart: int | None, maxiter, be) -> Any:
    """The solver for the absorption solves: a value, or names mapped by ``solver_from_name`` (one place)."""
    if isinstance(solver, Solver):
        if preconditioner is not None or restart is not None:
            raise ValueError(f"Set preconditioner and restart inside the solver value {solver!r}.")
        return solver
    name = method if method is not None else solver if solver is not None else "auto"
    return solver_from_name(name, preconditioner=preconditioner, restart=restart, maxiter=maxiter, backend=be)


# ---------------------------------------------------------------------- public
def fate_probabilities(
    backend: Any,
    T: Any,
    terminal_states: pd.Series,
    *,
    keys: list[str] | None = None,
    solver: Any = None,
    method: str | None = None,
    tol: float = 1e-10,
    preconditioner: Any = None,
    maxiter: int | None = None,
    restart: int | None = None,
    check_sum_tol: float = 1e-3,
    colors: list[str] | None = None,
) -> tuple[Lineage, SolveResult]:
    r"""Probability that a random walk from each cell ends in each terminal state.

    Solves :math:`(I - Q) B = R S` for all lineages at once (see the module docstring).

    Parameters
    ----------
    backend
        Backend (name or instance) that holds ``T``; a SciPy ``T`` is moved there.
    T
        ``n x n`` row-stochastic transition matrix (native or SciPy sparse).
    terminal_states
        Categorical series of length ``n`` (NaN = not terminal); cells of one category form one
        absorbing lineage.
    keys
        Lineages to compute (default all categories; ``"A, B"`` merges A and B). Terminal states
        not named are treated as transient.
    solver
        A solver value of :mod:`cellfate_gpu.linalg.solvers` (default :class:`~.solvers.Auto`), a
        ``result.prepared`` of an earlier solve (reused if it is the same ``I - Q``), or a name
        (``"auto"``, ``"direct"``, ``"gmres"``, ``"lgmres"``, ``"bicgstab"``, ``"gcrotmk"``).
    method
        A solver name (compatibility; same names as ``solver``).
    tol, preconditioner, maxiter, restart
        Passed to :func:`cellfate_gpu.linalg.solve`.
    check_sum_tol
        Largest accepted deviation of a row sum from 1, and of an entry below 0. Entries in
        ``[-check_sum_tol, 0)`` are solver noise and are clipped to 0; rows are then renormalised.
    colors
        Lineage colours (default: tab10).

    Returns
    -------
    (Lineage, SolveResult)
        ``n x L`` probabilities on the host (terminal cells one-hot) and the solve's record, whose
        ``prepared`` solver :func:`absorption_times` can reuse.

    Raises
    ------
    ValueError
        No terminal states; a lineage no transient cell can step into; transient cells that reach no
        terminal state (reducible chain) — the message says how many, with examples.
    RuntimeError
        The solve did not converge, or the result is not a distribution within ``check_sum_tol``;
        the message says what to try.
    """
    if not check_sum_tol > 0:
        raise ValueError(f"check_sum_tol must be positive, got {check_sum_tol!r}.")
    index = terminal_states.index
    be, T, absorbing, names, groups, transient, A, RS = _prepare(backend, T, terminal_states, keys)
    value = _solver_value(solver, method, preconditioner, restart, maxiter, be)
    result = _checked_solve(be, T, A, RS, absorbing, index, solver=value, tol=tol, maxiter=maxiter)
    X = be.to_host(result.X).reshape(transient.size, len(names))
    _check_distributions(be, T, absorbing, index, X, tol, check_sum_tol)
    X = np.clip(X, 0.0, 1.0)
    X /= X.sum(axis=1, keepdims=True)
    probs = np.zeros((T.shape[0], len(names)))
    probs[transient] = X
    for j, g in enumerate(groups):
        probs[g, j] = 1.0
    if colors is not None and len(colors) != len(names):
        raise ValueError(f"Got {len(colors)} colors for {len(names)} lineages {names}.")
    return Lineage(probs, names=names, colors=colors), result


def absorption_times(backend: Any, T: Any, terminal_states: pd.Series, keys: list[str] | None = None, **kwargs: Any):
    r"""Expected number of steps until absorption (and its variance), per lineage.

    See :func:`_absorption_times` for the parameters; this returns only the frame.
    """
    return _absorption_times(backend, T, terminal_states, keys, **kwargs)[0]


def _absorption_times(
    backend: Any,
    T: Any,
    terminal_states: pd.Series,
    keys: list[str] | None = None,
    *,
    calculate_variance: bool = False,
    solver: Any = None,
    method: str | None = None,
    tol: float = 1e-10,
    preconditioner: Any = None,
    maxiter: int | None = None,
    restart: int | None = None,
    check_sum_tol: float = 1e-3,
    index: Any = None,
) -> tuple[pd.DataFrame, SolveResult]:
    r"""Expected number of steps until absorption (and its variance), per lineage, and the first solve's record.

    Every terminal state named in ``keys`` is absorbing. Column ``{lin}_mean`` is
    :math:`E[\tau \mid \text{absorbed in } lin] = (N b_l) / b_l`; ``{lin}_var`` (with
    ``calculate_variance``) is :math:`\mathrm{Var}[\tau \mid lin] = N(2 N b_l - b_l) / b_l - (N b_l / b_l)^2`.
    With a single lineage (e.g. ``keys=["A, B"]``) :math:`b = \mathbf 1`, giving the textbook
    :math:`m = (I - Q)^{-1}\mathbf 1` and :math:`v = (2N - I) m - m \circ m` (Kemeny & Snell).

    Parameters
    ----------
    backend, T, terminal_states, keys, solver, method, tol, preconditioner, maxiter, restart, check_sum_tol
        As in :func:`fate_probabilities`; ``solver`` may be the ``prepared`` solver of
        :func:`fate_probabilities` on the same terminal states, which skips the set-up.
    calculate_variance
        Also compute the variance (one more block solve).
    index
        Index of the returned frame (default: ``terminal_states.index``).

    Returns
    -------
    (pandas.DataFrame, SolveResult)
        ``n_cells`` rows; ``{lin}_mean`` (and ``{lin}_var``) per lineage. Absorbing cells get 0;
        transient cells that never end in ``lin`` get NaN. The record of the first block solve
        (with its ``prepared`` solver).

    Raises
    ------
    ValueError, RuntimeError
        As :func:`fate_probabilities`: the first solve *is* the fate-probability solve and is
        checked the same way (a system that one rejects the other rejects too), and the times must
        come out finite and non-negative.

    Notes
    -----
    Three block solves with ``L`` columns each (:math:`b`, :math:`u`, :math:`w`) with one set-up
    (factorisation or hierarchy); the results come to the host in one transfer.
    """
    idx = terminal_states.index
    be, T, absorbing, names, _, transient, A, RS = _prepare(backend, T, terminal_states, keys)
    value = _solver_value(solver, method, preconditioner, restart, maxiter, be)
    xp = be.xp
    L = len(names)

    def run(rhs: Any, using: Any) -> SolveResult:
        return _checked_solve(be, T, A, rhs, absorbing, idx, solver=using, tol=tol, maxiter=maxiter)

    first = run(RS, value)
    Bt = xp.reshape(first.X, (transient.size, L))
    _check_distributions(be, T, absorbing, idx, be.to_host(Bt), tol, check_sum_tol)
    U = xp.reshape(run(Bt, first.prepared).X, (transient.size, L))
    blocks = [Bt, U]
    if calculate_variance:
        blocks.append(xp.reshape(run(2.0 * U - Bt, first.prepared).X, (transient.size, L)))
    host = be.to_host(xp.concat(blocks, axis=1) if hasattr(xp, "concat") else xp.concatenate(blocks, axis=1))
    Bh, Uh = host[:, :L], host[:, L : 2 * L]
    if not np.all(np.isfinite(host)) or float(Uh.min()) < -check_sum_tol * max(1.0, float(np.abs(Uh).max())):
        raise RuntimeError(
            f"Absorption times are not finite and non-negative (min E[tau 1{{l}}] {float(np.nanmin(Uh)):.3g}, "
            f"{int(np.sum(~np.isfinite(host)))} non-finite values): (I - Q) is numerically singular. Check the "
            "terminal states (a metastable region that is not terminal makes the expected times explode), or "
            "try solver='direct' on a small system."
        )
    reach = Bh > 1e-12
    n = T.shape[0]
    out: dict[str, np.ndarray] = {}
    with np.errstate(divide="ignore", invalid="ignore"):
        mean_t = np.where(reach, np.maximum(Uh, 0.0) / Bh, np.nan)
        if calculate_variance:
            var_t = np.where(reach, np.maximum(host[:, 2 * L :] / Bh - mean_t * mean_t, 0.0), np.nan)
    for j, name in enumerate(names):
        col = np.zeros(n)
        col[transient] = mean_t[:, j]
        out[f"{name}_mean"] = col
        if calculate_variance:
            col = np.zeros(n)
            col[transient] = var_t[:, j]
            out[f"{name}_var"] = col
    return pd.DataFrame(out, index=idx if index is None else index), first


def lineage_priming(probs: Lineage, method: str = "kl_divergence", early_cells: Any = None) -> np.ndarray:
    r"""Degree of lineage priming per cell, in :math:`[0, 1]`.

    See :meth:`cellfate_gpu.lineage.Lineage.priming_degree`: ``"kl_divergence"`` scores
    :math:`\sum_l p_{il}\log_2(p_{il}/\bar p_l)` against the mean fate of ``early_cells``,
    ``"entropy"`` scores :math:`\max_j H_j - H_i`; both min-max scaled.
    """
    if not isinstance(probs, Lineage):
        raise TypeError(f"probs must be a Lineage, got {type(probs).__name__}.")
    return probs.priming_degree(method=method, early_cells=early_cells)
