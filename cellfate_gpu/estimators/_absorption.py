r"""Absorbing Markov chains: fate probabilities and absorption times.

With the cells ordered transient first, :math:`T = \begin{pmatrix} Q & R \\ 0 & I \end{pmatrix}`.
Absorbing cells of one terminal state form one lineage; :math:`S` (absorbing cells x lineages)
aggregates them. Then

* fate probabilities :math:`B = (I - Q)^{-1} R S`, i.e. :math:`(I - Q) B = R S` — all lineages in
  one block solve;
* mean absorption time :math:`m = N \mathbf 1` with :math:`N = (I - Q)^{-1}`;
* its variance :math:`v = (2 N - I)\, m - m \circ m` (Kemeny & Snell 1960, Thm. 3.3.5).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from cellfate_gpu.linalg import solve
from cellfate_gpu.lineage import Lineage

__all__ = ["fate_probabilities", "absorption_times", "terminal_indicator"]


def terminal_indicator(
    terminal_states: pd.Series, keys: list[str] | None = None
) -> tuple[np.ndarray, list[str], list[np.ndarray]]:
    """Absorbing cell indices, lineage names and the cells of each lineage (``"A, B"`` merges A and B)."""
    if not isinstance(terminal_states.dtype, pd.CategoricalDtype):
        raise TypeError("terminal_states must be a categorical Series (NaN for non-terminal cells).")
    codes = terminal_states.cat.codes.to_numpy()
    categories = [str(c) for c in terminal_states.cat.categories]
    if (codes >= 0).sum() == 0:
        raise ValueError("No terminal states are set; set or predict them first.")
    keys = keys if keys is not None else categories
    names, groups = [], []
    for key in keys:
        parts = [p.strip() for p in str(key).split(",")]
        unknown = [p for p in parts if p not in categories]
        if unknown:
            raise KeyError(f"Unknown terminal state(s) {unknown}; available: {categories}.")
        idx = np.flatnonzero(np.isin(codes, [categories.index(p) for p in parts]))
        if idx.size == 0:
            raise ValueError(f"Terminal state {key!r} has no cells.")
        names.append(", ".join(parts))
        groups.append(idx)
    absorbing = np.unique(np.concatenate(groups))
    return absorbing, names, groups


def _transient_system(backend, T: Any, absorbing: np.ndarray, groups: list[np.ndarray]):
    """``I - Q`` (native) and ``R S`` (backend array) for the transient cells."""
    n = T.shape[0]
    transient = np.setdiff1d(np.arange(n), absorbing)
    if transient.size == 0:
        raise ValueError("Every cell is a terminal cell; nothing to solve.")
    Q = backend.submatrix(T, transient, transient)
    A = backend.linear_combination([1.0, -1.0], [backend.eye(transient.size), Q])
    # S: n x L indicator of each lineage's cells (host, sparse), moved once; R S = T[transient] @ S.
    rows = np.concatenate(groups)
    cols = np.concatenate([np.full(g.size, j) for j, g in enumerate(groups)])
    S = sp.csr_matrix((np.ones(rows.size), (rows, cols)), shape=(n, len(groups)))
    RS = backend.spmm(backend.submatrix(T, transient, np.arange(n)), backend.asarray(S.toarray()))
    return transient, A, RS


def _cells_reaching_no_target(backend, T: Any, targets: np.ndarray) -> int:
    """Number of cells with no path to ``targets`` (host graph search; only on the failure path)."""
    from scipy.sparse.csgraph import breadth_first_order

    Th = backend.to_scipy_csr(T)
    n = Th.shape[0]
    # Reverse graph with a virtual source linked to every target: reachable = can reach a target.
    coo = Th.tocoo()
    rows, cols = np.r_[coo.col, np.full(targets.size, n)], np.r_[coo.row, targets]
    rev = sp.csr_matrix((np.ones(rows.size), (rows, cols)), shape=(n + 1, n + 1))
    reached = breadth_first_order(rev, n, directed=True, return_predecessors=False)
    return int(n - (np.sum(reached < n)))


def fate_probabilities(
    backend,
    T: Any,
    terminal_states: pd.Series,
    *,
    keys: list[str] | None = None,
    method: str = "auto",
    tol: float = 1e-10,
    preconditioner: str | None = None,
    maxiter: int | None = None,
    check_sum_tol: float = 1e-3,
    colors: list[str] | None = None,
):
    """Probability that a walk from each cell is absorbed in each terminal state.

    Returns
    -------
    (Lineage, SolveResult)
        ``n_cells x n_lineages`` probabilities (terminal cells one-hot) and the solve's record.

    Raises
    ------
    ValueError
        No terminal states; a lineage that no transient cell can reach; transient cells that reach no
        terminal state (reducible chain).
    RuntimeError
        The result is not a probability distribution within ``check_sum_tol`` (says what to try).
    """
    absorbing, names, groups = terminal_indicator(terminal_states, keys)
    transient, A, RS = _transient_system(backend, T, absorbing, groups)
    inflow = backend.to_host(backend.xp.sum(RS, axis=0))
    unreachable = [nm for nm, f in zip(names, inflow, strict=True) if f <= 0]
    if unreachable:
        raise ValueError(f"Terminal state(s) {unreachable} cannot be reached from any transient cell.")
    result = solve(
        A, RS, method=method, tol=tol, preconditioner=preconditioner, maxiter=maxiter, backend=backend, throw=False
    )
    if not result.converged:
        stuck = _cells_reaching_no_target(backend, T, absorbing)
        if stuck:
            raise ValueError(
                f"{stuck} transient cell(s) reach no terminal state (the chain is reducible); "
                "add terminal states for the missing end points or use a connected kernel."
            )
        raise RuntimeError(
            f"The absorption solve did not converge (status={result.status.value}, method={result.method!r}). "
            "Try a larger maxiter, preconditioner='ilu' or 'jacobi', a looser tol, or method='direct'."
        )
    X = backend.to_host(result.X).reshape(transient.size, len(names))
    n = T.shape[0]
    probs = np.zeros((n, len(names)))
    probs[transient] = X
    for j, g in enumerate(groups):
        probs[g, j] = 1.0
    sums = probs[transient].sum(axis=1)
    stuck = int(np.sum(sums < 1e-8))
    if stuck:
        raise ValueError(
            f"{stuck} transient cell(s) reach no terminal state (the chain is reducible); "
            "add terminal states for the missing end points or use a connected kernel."
        )
    if probs.min() < -check_sum_tol or np.abs(sums - 1.0).max() > check_sum_tol:
        raise RuntimeError(
            f"Fate probabilities are not distributions (min {probs.min():.3g}, max |row sum - 1| "
            f"{np.abs(sums - 1.0).max():.3g} > check_sum_tol={check_sum_tol:g}). Try a smaller tol, "
            "preconditioner='ilu' or 'jacobi', or method='direct'."
        )
    probs = np.clip(probs, 0.0, 1.0)
    probs /= probs.sum(axis=1, keepdims=True)
    if colors is None:
        colors = None
    return Lineage(probs, names=names, colors=colors), result


def absorption_times(
    backend,
    T: Any,
    terminal_states: pd.Series,
    *,
    keys: list[str] | None = None,
    calculate_variance: bool = False,
    method: str = "auto",
    tol: float = 1e-10,
    preconditioner: str | None = None,
    maxiter: int | None = None,
    index: Any = None,
) -> pd.DataFrame:
    r"""Expected number of steps until absorption, per lineage (``{lin}_mean``, ``{lin}_var`` columns).

    Every terminal state in ``keys`` is absorbing (so :math:`I - Q` is non-singular whenever every
    transient cell reaches one). Column ``l`` is the time conditioned on absorption in lineage ``l``:
    with fate probabilities :math:`b_l`, :math:`u_l = N b_l = E[\tau\,1\{l\}]` and
    :math:`w_l = N (2 u_l - b_l) = E[\tau^2 1\{l\}]` (first-step analysis), so
    :math:`E[\tau \mid l] = u_l / b_l` and :math:`\mathrm{Var}[\tau \mid l] = w_l / b_l - (u_l / b_l)^2`.
    With a single lineage this is the textbook :math:`m = N \mathbf 1`, :math:`v = (2N - I) m - m \circ m`.
    Cells that never end in ``l`` get NaN; absorbing cells get 0.
    """
    absorbing, names, groups = terminal_indicator(terminal_states, keys)
    transient, A, RS = _transient_system(backend, T, absorbing, groups)
    xp = backend.xp
    kw = dict(method=method, tol=tol, preconditioner=preconditioner, maxiter=maxiter, backend=backend)
    Bt = solve(A, RS, **kw).X  # fate probabilities of the transient cells (backend array)
    U = solve(A, Bt, **kw).X
    Bh, Uh = backend.to_host(Bt).reshape(transient.size, -1), backend.to_host(U).reshape(transient.size, -1)
    if calculate_variance:
        W = solve(A, 2.0 * U - xp.reshape(Bt, U.shape), **kw).X
        Wh = backend.to_host(W).reshape(transient.size, -1)
    n = T.shape[0]
    out = {}
    reach = Bh > 1e-12
    with np.errstate(divide="ignore", invalid="ignore"):
        for j, name in enumerate(names):
            mean = np.zeros(n)
            mean[transient] = np.where(reach[:, j], Uh[:, j] / Bh[:, j], np.nan)
            out[f"{name}_mean"] = mean
            if calculate_variance:
                var = np.zeros(n)
                m = Uh[:, j] / Bh[:, j]
                var[transient] = np.where(reach[:, j], np.maximum(Wh[:, j] / Bh[:, j] - m * m, 0.0), np.nan)
                out[f"{name}_var"] = var
    return pd.DataFrame(out, index=index)
