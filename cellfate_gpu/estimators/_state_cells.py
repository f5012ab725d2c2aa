r"""Which cells represent a macrostate: the top cells by membership, ties broken by depth.

CellRank takes the ``n_cells`` cells of largest membership :math:`\chi_{:,j}`. In a nearly closed
branch (the tip of a pseudotime-directed lineage) hundreds of cells have membership equal to the
maximum within :math:`10^{-12}`-:math:`10^{-8}`: the Schur vectors are constant there up to rounding.
"The top 30" is then decided by rounding, so two backends (or two runs of a randomised eigensolver)
pick different, equally large, cells, and the fate probabilities that follow differ.

The rule here keeps CellRank's order wherever memberships differ by more than ``tol`` and breaks the
ties at the cut-off by a quantity that is a function of T alone: the quasi-stationary distribution
of the walk restricted to the candidate cells :math:`S`, the left Perron vector of :math:`T_{SS}`,

.. math:: \pi T_{SS} = \lambda \pi, \qquad \pi \ge 0, \quad \textstyle\sum_i \pi_i = 1,

which is where a walk that has stayed in :math:`S` for a long time is found: the deepest cells of the
branch. Choosing them matters for the solve too: if shallower cells were made absorbing, the deeper
ones would form a region the walk practically never leaves and :math:`I - Q` would be numerically
singular. Cells the power iteration leaves at the same value (for example sources of :math:`S`,
which keep no mass) fall back to membership, then to the cell index.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

__all__ = ["top_cells", "quasi_stationary", "cover_nearly_closed"]

#: Memberships closer than this to the cut-off value are ties (memberships are in [0, 1]; backends
#: agree on them to ~1e-8 where the rotation is well determined).
TIE_TOL = 1e-6


def quasi_stationary(T: sp.spmatrix, cells: np.ndarray, *, maxiter: int = 2000, tol: float = 1e-13) -> np.ndarray:
    r"""Left Perron vector of :math:`T_{SS}`, the walk restricted to ``cells``, by power iteration.

    The lazy chain :math:`(I + T_{SS}) / 2` has the same Perron vector and no period, so the
    iteration :math:`p \leftarrow p (I + T_{SS}) / 2`, renormalised to sum one, converges from the
    uniform start. Deterministic: the same T gives the same vector on every backend.

    Parameters
    ----------
    T
        Host row-(sub)stochastic matrix (``n x n``).
    cells
        Indices of :math:`S`.
    maxiter, tol
        At most ``maxiter`` steps; stop when the l1 change is below ``tol``.

    Returns
    -------
    numpy.ndarray
        :math:`\pi` over ``cells`` (sums to one; zeros where no mass stays).
    """
    sub = sp.csr_matrix(T)[cells][:, cells]
    lazy_t = (0.5 * (sp.identity(len(cells), format="csr") + sub)).T.tocsr()
    p = np.full(len(cells), 1.0 / len(cells))
    for _ in range(maxiter):
        q = lazy_t @ p
        total = q.sum()
        if not total > 0:  # every cell leaves S in one step: no depth to rank by
            return np.zeros(len(cells))
        q /= total
        done = np.abs(q - p).sum() < tol
        p = q
        if done:
            break
    return p


def top_cells(
    membership: np.ndarray, n_cells: int, T: sp.spmatrix | None = None, *, tol: float = TIE_TOL
) -> np.ndarray:
    """The ``n_cells`` cells of largest membership; ties at the cut-off broken by depth in T.

    Parameters
    ----------
    membership
        One column of the memberships, length ``n``.
    n_cells
        How many cells.
    T
        Host transition matrix; without it, ties go to the lower cell index (CellRank's order is
        arbitrary there).
    tol
        Memberships within ``tol`` of the ``n_cells``-th largest are ties.

    Returns
    -------
    numpy.ndarray
        Cell indices, deepest-first among ties, then by decreasing membership.
    """
    membership = np.asarray(membership, dtype=np.float64)
    if not 1 <= n_cells <= membership.size:
        raise ValueError(f"n_cells must be in [1, {membership.size}] (the number of cells), got {n_cells!r}.")
    order = np.argsort(-membership, kind="stable")
    if T is None or n_cells >= membership.size:
        return order[:n_cells]
    cutoff = membership[order[n_cells - 1]]
    sure = np.flatnonzero(membership > cutoff + tol)
    band = np.flatnonzero(np.abs(membership - cutoff) <= tol)
    seats = n_cells - sure.size
    if band.size <= seats:  # no tie at the cut-off
        return order[:n_cells]
    candidates = np.concatenate([sure, band])
    depth = quasi_stationary(T, candidates)[sure.size :]
    # Deepest first; equal depth by membership, then index (lexsort: last key is primary).
    pick = band[np.lexsort((band, -membership[band], -depth))[:seats]]
    chosen = np.concatenate([sure, pick])
    return chosen[np.argsort(-membership[chosen], kind="stable")]


#: Cells whose absorption into a nearly closed set is at least ``1 - COMMITTED_TOL`` are its basin.
COMMITTED_TOL = 1e-6


def cover_nearly_closed(
    top: np.ndarray, X_r: np.ndarray, anchor: int, n_cells: int, T: sp.spmatrix, membership: np.ndarray
) -> tuple[np.ndarray, bool]:
    r"""Terminal cells of a macrostate that owns a nearly closed set: in that set, not beside it.

    A nearly closed set must hold terminal cells, else the walk from it is never absorbed and the
    fate probabilities are undefined. The top cells by membership usually lie there; with few crisp
    macrostates they can lie upstream of it (a membership that peaks in the early part of a lineage).

    The leading ``r`` Schur vectors ``X_r`` span (to the closure error) the functions :math:`h` with
    :math:`T h = h`, and such a function is :math:`h(i) = \sum_c \psi_c(i)\, h(\text{set } c)`
    with :math:`\psi_c` the probability of ending in set :math:`c`. So the cells committed to the set
    of ``anchor`` (:math:`\psi_c = 1`: the set and the cells that can only flow into it) are the rows
    of ``X_r`` equal to the anchor's row, to ``COMMITTED_TOL`` relative to the largest entry. When the
    top cells hold less than half of the quasi-stationary mass of that basin
    (:func:`quasi_stationary`), the ``n_cells`` deepest cells of the basin are taken instead.

    Parameters
    ----------
    top
        The cells chosen by membership (:func:`top_cells`).
    X_r
        The leading ``r`` Schur vectors (``n x r``), ``r`` the number of nearly closed sets.
    anchor
        A cell of the set (:func:`cellfate_gpu.estimators._gpcca_core.nearly_closed_cells`).
    n_cells
        How many cells.
    T
        Host transition matrix.
    membership
        The macrostate's membership column (the secondary order).

    Returns
    -------
    cells, replaced
        The terminal cells and whether they differ from ``top``.
    """
    scale = max(float(np.abs(X_r).max()), np.finfo(float).tiny)
    basin = np.flatnonzero(np.abs(X_r - X_r[anchor]).max(axis=1) <= COMMITTED_TOL * scale)
    if basin.size == 0:
        return top, False
    depth = quasi_stationary(T, basin)
    held = depth[np.isin(basin, top)].sum()
    if held >= 0.5:
        return top, False
    pick = basin[np.lexsort((basin, -membership[basin], -depth))[:n_cells]]
    return pick[np.argsort(-membership[pick], kind="stable")], True
