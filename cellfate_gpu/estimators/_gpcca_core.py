r"""The G-PCCA core on host arrays: Schur-basis conventions, the crispness optimiser, coarse-graining.

Everything here works on small dense host arrays (``n x m`` Schur vectors, ``m x m`` matrices) or on
one sparse product with T; the partial Schur decomposition itself runs on the kernel's backend
(:func:`cellfate_gpu.linalg.partial_schur`).

Conventions follow pyGPCCA 1.0.4 (Reuter et al. 2018, 2019) with the uniform input distribution
:math:`\eta = \mathbf 1 / n` that CellRank uses:

* the Schur vectors :math:`X` (``n x m``) span a dominant invariant subspace, :math:`T X = X R`;
* they are :math:`\eta`-orthonormal, :math:`X^\top \operatorname{diag}(\eta) X = I`, and the first
  column is the constant vector :math:`\mathbf 1`;
* memberships are :math:`\chi = X A` with a *feasible* rotation matrix :math:`A` (``m x m``):
  :math:`\chi \ge 0` and :math:`\chi \mathbf 1 = \mathbf 1`;
* crispness (Röblitz & Weber 2013, Eq. 16) is :math:`\operatorname{tr}(\operatorname{diag}(A_{0,:})^{-1}
  A^\top A) / m \in (0, 1]`, to be maximised.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pandas as pd
import scipy.optimize as sopt

from cellfate_gpu._logging import warning

__all__ = [
    "eigengap",
    "eta_orthonormalize",
    "splits_conjugate_pair",
    "indexsearch",
    "initial_rotation",
    "fill_rotation",
    "crispness",
    "objective_and_gradient",
    "optimize_lbfgs",
    "optimize_nelder_mead",
    "memberships_from_rotation",
    "min_chi",
    "coarse_grain",
    "eigendecomposition",
    "unique_names",
    "nearly_closed_cells",
    "nearly_closed_owners",
]

_EPS = np.finfo(np.float64).eps


# --------------------------------------------------------------------------------------- spectrum
def eigengap(evals: np.ndarray, alpha: float = 1.0) -> int:
    r"""Index of the eigengap among eigenvalues sorted in decreasing real part (CellRank's rule).

    .. math:: k^* = \arg\max_k \; (\lambda_k - \lambda_{k+1}) - \alpha (1 - \lambda_k)

    on the real parts; the number of states suggested by the gap is :math:`k^* + 1`.

    Parameters
    ----------
    evals
        Eigenvalues (complex allowed; only real parts are used), sorted decreasingly by real part.
    alpha
        Weight of the penalty for an eigenvalue's distance from one.
    """
    ev = np.real(np.asarray(evals))
    if ev.size < 2:
        return 0
    gap = ev[:-1] - ev[1:]
    return int(np.argmax(gap - alpha * (1.0 - ev[:-1])))


def splits_conjugate_pair(evals: np.ndarray, m: int, *, tol: float = 1e-8) -> bool:
    """Whether taking the first ``m`` eigenvalues cuts a complex-conjugate pair in two.

    True when ``evals[m - 1]`` has a non-zero imaginary part and ``evals[m]`` is its conjugate.
    """
    ev = np.asarray(evals)
    if m < 1 or m >= ev.size:
        return False
    last, nxt = ev[m - 1], ev[m]
    scale = max(1.0, abs(last))
    return abs(last.imag) > tol * scale and abs(nxt - np.conj(last)) <= 1e-6 * scale


def eigendecomposition(backend, T: Any, k: int, *, which: str, alpha: float, only_evals: bool) -> dict:
    r"""CellRank's eigendecomposition dict of ``T`` on its backend (GPCCA and CFLARE share it).

    The ``k`` eigenvalues selected by ``which`` (:func:`cellfate_gpu.linalg.partial_eig`), with
    right (``V_r``) and left (``V_l``) eigenvectors unless ``only_evals``, the ``eigengap`` and the
    stationary distribution :math:`\pi \propto |\Re\, w_1|` from the first left vector.

    Raises
    ------
    ValueError
        If ``k`` is not an integer with ``1 <= k < n`` (named, before any work).
    """
    from cellfate_gpu.linalg import partial_eig

    n = int(T.shape[0])
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}.")
    if n < 2:
        raise ValueError(f"An eigendecomposition needs at least 2 cells, got {n}.")
    res = partial_eig(T, min(int(k), n - 1), which=which, left=not only_evals, vectors=not only_evals, backend=backend)
    evals = np.asarray(res.eigenvalues)
    eig: dict[str, Any] = {
        "D": evals,
        "eigengap": eigengap(evals, alpha),
        "params": {"which": which, "k": len(evals), "alpha": alpha},
    }
    if not only_evals:
        eig["V_r"], eig["V_l"] = backend.to_host(res.vectors), backend.to_host(res.left_vectors)
        pi = np.abs(np.real(eig["V_l"][:, 0]))
        eig["stationary_dist"] = pi / pi.sum()
    return eig


def unique_names(raw: list[str]) -> list[str]:
    """State names made unique: repeated names get ``_1``, ``_2``, ... (CellRank's convention)."""
    counts = pd.Series(raw, dtype=object).value_counts()
    seen: dict[str, int] = {}
    out = []
    for nm in raw:
        if counts[nm] > 1:
            seen[nm] = seen.get(nm, 0) + 1
            out.append(f"{nm}_{seen[nm]}")
        else:
            out.append(nm)
    return out


# --------------------------------------------------------------------------------------- Schur basis
def eta_orthonormalize(Q: np.ndarray, R: np.ndarray, *, tol: float = 1e-6) -> tuple[np.ndarray, np.ndarray]:
    r"""Turn an orthonormal Schur basis into pyGPCCA's convention for uniform :math:`\eta = \mathbf 1/n`.

    Given :math:`T Q = Q R` with :math:`Q^\top Q = I`, return :math:`X = \sqrt n\, Q M` and
    :math:`R' = M^\top R M` with an orthogonal ``M`` chosen so that :math:`X_{:,0} = \mathbf 1`;
    then :math:`X^\top \operatorname{diag}(\eta) X = I` and :math:`T X = X R'`.

    When the constant vector is already (up to sign) the first Schur vector (irreducible T, sorted
    by ``"LR"``), ``M`` is a sign flip and :math:`R'` stays quasi-upper-triangular. Otherwise (several
    unit eigenvalues) the constant vector is put first and the remaining columns are
    re-orthonormalised in order by modified Gram-Schmidt, as pyGPCCA's ``_gram_schmidt_mod`` does.

    Raises
    ------
    ValueError
        If the constant vector is not in the span of ``Q`` (T not row-stochastic, or the unit
        eigenvalue was not among those computed).
    """
    n, k = Q.shape
    u = np.full(n, 1.0 / np.sqrt(n))
    c = Q.T @ u
    resid = float(np.linalg.norm(u - Q @ c))
    if resid > tol:
        raise ValueError(
            f"The constant vector is not in the span of the {k} Schur vectors (residual {resid:.3g} > {tol:g}). "
            "T must be row-stochastic and the Schur decomposition must include the eigenvalue 1 (use which='LR')."
        )
    if abs(abs(c[0]) - 1.0) < 1e-8:
        M = np.eye(k)
        M[0, 0] = np.sign(c[0])
    else:
        # Modified Gram-Schmidt on [c, e_0, ..., e_{k-1}] in coefficient space, dropping dependent columns.
        cols = [c / np.linalg.norm(c)]
        for j in range(k):
            v = np.zeros(k)
            v[j] = 1.0
            for b in cols:
                v = v - (b @ v) * b
            nv = np.linalg.norm(v)
            if nv > 1e-8 and len(cols) < k:
                cols.append(v / nv)
        M = np.column_stack(cols)
    X = np.sqrt(n) * (Q @ M)
    X[:, 0] = 1.0
    return X, M.T @ R @ M


# --------------------------------------------------------------------------------------- rotation
def indexsearch(X: np.ndarray, first: np.ndarray | None = None) -> np.ndarray:
    """Inner simplex algorithm: indices of ``m`` rows of ``X`` spanning a maximal simplex (pyGPCCA's ``_indexsearch``).

    The first vertex is the row of largest norm; each further vertex is the row farthest from the
    affine span of the vertices found so far (Gram-Schmidt deflation of the translated rows).
    ``first`` prescribes the leading vertices (rows of nearly closed sets, see
    :func:`nearly_closed_cells`); the search continues from them.
    """
    n, m = X.shape
    if n < m:
        raise ValueError(f"Schur vectors of shape {X.shape} have more columns than rows.")
    diffs = np.ptp(X, axis=0)
    if diffs[0] > 1e-6:
        raise ValueError(
            f"The first Schur vector is not constant (range {diffs[0]:.3g}); sort the Schur vectors by 'LR'."
        )
    if np.any(diffs[1:] <= 1e-6):
        raise ValueError(f"{int(np.sum(diffs[1:] <= 1e-6))} Schur vector(s) after the first one are constant.")
    ortho = X.copy()
    first = np.zeros(0, dtype=np.int64) if first is None else np.asarray(first, dtype=np.int64)[:m]
    index = np.zeros(m, dtype=np.int64)
    index[: first.size] = first
    if first.size == 0:
        index[0] = int(np.argmax(np.linalg.norm(ortho, axis=1)))
    ortho -= ortho[index[0]]
    for j in range(1, m):
        # pyGPCCA deflates row by row sequentially; with a fixed direction this equals a projection.
        temp = ortho[index[j - 1]].copy()
        if j - 1 < first.size:  # a prescribed vertex is not yet scaled to unit distance
            temp /= max(np.linalg.norm(temp), _EPS)
        ortho -= np.outer(ortho @ temp, temp)
        dist = np.linalg.norm(ortho, axis=1)
        if j >= first.size:
            index[j] = int(np.argmax(dist))
            ortho /= dist[index[j]]
    return index


#: 1 - Re(lambda) at or below this marks a nearly closed set: a walk stays there ~1e8 steps, and an
#: absorption solve that leaves it without terminal cells is singular to working precision.
NEARLY_CLOSED_GAP = 1e-8


def nearly_closed_cells(X: np.ndarray, evals: np.ndarray, *, gap: float = NEARLY_CLOSED_GAP) -> np.ndarray:
    r"""One cell in each nearly closed set of the chain (empty when there are fewer than two).

    Eigenvalues with :math:`1 - \operatorname{Re}\lambda \le` ``gap`` (``r`` of them, counted from the
    sorted Schur form) belong to ``r`` sets of cells that the walk practically never leaves (closed
    classes, or branch tips of a directed kernel). The leading ``r`` Schur vectors span the functions
    that are constant on each such set, so the inner-simplex vertices of ``X[:, :r]``
    (:func:`indexsearch`) are one cell in each set. Fate probabilities exist only if every such set
    holds terminal cells; the optimiser starts from a simplex with these cells as vertices too.

    Parameters
    ----------
    X
        Schur vectors sorted by decreasing real part (``n x k``), first column constant.
    evals
        Their eigenvalues, in the same order.
    gap
        The threshold on :math:`1 - \operatorname{Re}\lambda`.

    Returns
    -------
    numpy.ndarray
        Row indices, one per nearly closed set.
    """
    r = min(int(np.sum(1.0 - np.real(np.asarray(evals)) <= gap)), X.shape[1])
    if r <= 1:
        return np.zeros(0, dtype=np.int64)
    return indexsearch(X[:, :r])


def nearly_closed_owners(chi: np.ndarray, cells: np.ndarray) -> list[int]:
    """The macrostate of largest membership at each cell of :func:`nearly_closed_cells` (sorted, unique)."""
    return sorted({int(np.argmax(chi[i])) for i in cells})


def initial_rotation(X: np.ndarray, first: np.ndarray | None = None) -> np.ndarray:
    """Initial (possibly infeasible) rotation ``pinv(X[index])`` from the inner simplex vertices."""
    index = indexsearch(X, first)
    cond = np.linalg.cond(X[index])
    if cond >= 1.0 / _EPS:
        raise ValueError(f"The simplex vertices X[index] are singular (condition number {cond:.3g}).")
    if cond > 1e4:
        warnings.warn(f"The simplex vertices X[index] are ill-conditioned (condition number {cond:.3g}).")
    return np.linalg.pinv(X[index])


def fill_rotation(alpha: np.ndarray, X: np.ndarray) -> np.ndarray:
    r"""Complete ``A[1:, 1:] = alpha`` to a feasible rotation matrix (pyGPCCA's ``_fill_matrix``).

    .. math::
        A_{i,0} = -\textstyle\sum_{j\ge1} A_{ij}\ (i \ge 1), \qquad
        A_{0,j} = \max_l \big(-X_{l,1:} A_{1:,j}\big), \qquad A \leftarrow A / \textstyle\sum_j A_{0,j}.

    Returns the matrix even when a first-row entry is not positive (the caller decides).
    """
    m = X.shape[1]
    A = np.zeros((m, m))
    A[1:, 1:] = np.reshape(alpha, (m - 1, m - 1))
    A[1:, 0] = -A[1:, 1:].sum(axis=1)
    A[0, :] = np.max(-(X[:, 1:] @ A[1:, :]), axis=0)
    return A / A[0, :].sum()


def crispness(A: np.ndarray) -> float:
    r"""Crispness :math:`\operatorname{tr}(\operatorname{diag}(A_{0,:})^{-1} A^\top A) / m` of a feasible ``A``."""
    return float(np.sum(np.sum(A**2, axis=0) / A[0, :]) / A.shape[0])


def objective_and_gradient(alpha: np.ndarray, X: np.ndarray, tau: float = 0.0) -> tuple[float, np.ndarray]:
    r"""Objective of pyGPCCA, :math:`f = m - \operatorname{tr}(\operatorname{diag}(A_{0,:})^{-1} A^\top A)`, + gradient.

    With :math:`B = \tilde A_{1:,:}` (before scaling), :math:`a_j = \max_l(-X_{l,1:} B_{:,j})`,
    :math:`s = \sum_j a_j`, :math:`c_j = \lVert B_{:,j} \rVert^2` and :math:`h = \sum_j c_j / a_j`,
    scale invariance gives :math:`f = m - 1 - h / s`, so

    .. math::
        \frac{\partial f}{\partial B_{:,j}} = -\frac1s\Big(\frac{2 B_{:,j}}{a_j} + \frac{c_j}{a_j^2} x_j\Big)
            - \frac{h}{s^2} x_j, \qquad x_j = \partial a_j / \partial(-B_{:,j}),

    and :math:`\partial f / \partial \alpha_{:,j} = \partial f / \partial B_{:,j+1} - \partial f / \partial B_{:,0}`
    because :math:`B_{:,0} = -\sum_j \alpha_{:,j}`.

    ``tau = 0`` uses the exact max (piecewise smooth; :math:`x_j = X_{l_j^*,1:}` of the active row).
    ``tau > 0`` replaces it by the log-sum-exp :math:`a_j = \tau \log \sum_l e^{v_{lj}/\tau} \ge \max_l v_{lj}`
    (smooth; :math:`x_j` the softmax-weighted mean row). Since the smoothed :math:`a_j` bounds the max from
    above, the memberships it implies stay feasible. Infeasible points (some :math:`a_j \le 0`) get a large
    value with a gradient pushing :math:`a_j` up.
    """
    m = X.shape[1]
    k = m - 1
    X1 = X[:, 1:]
    B = np.zeros((k, m))
    B[:, 1:] = np.reshape(alpha, (k, k))
    B[:, 0] = -B[:, 1:].sum(axis=1)
    vals = -(X1 @ B)  # n x m
    if tau > 0:
        vmax = vals.max(axis=0)
        w = np.exp((vals - vmax) / tau)
        z = w.sum(axis=0)
        a = vmax + tau * np.log(z)
        xs = (X1.T @ w) / z  # k x m
    else:
        lstar = np.argmax(vals, axis=0)
        a = vals[lstar, np.arange(m)]
        xs = X1[lstar].T  # k x m, column j = X1[l*_j]
    if np.any(a <= 1e-12):
        bad = a <= 1e-12
        f = 1e6 * (1.0 + np.sum(1e-12 - a[bad]))
        G = np.zeros((k, m))
        G[:, bad] = 1e6 * xs[:, bad]
    else:
        s = a.sum()
        c = np.sum(B**2, axis=0)
        h = np.sum(c / a)
        f = m - 1.0 - h / s
        G = -(2.0 * B / a + (c / a**2) * xs) / s - (h / s**2) * xs
    grad = G[:, 1:] - G[:, [0]]
    return float(f), grad.ravel()


def _lbfgs(x: np.ndarray, X: np.ndarray, tau: float, maxiter: int) -> np.ndarray:
    res = sopt.minimize(
        objective_and_gradient,
        x,
        args=(X, tau),
        jac=True,
        method="L-BFGS-B",
        options={"maxiter": maxiter, "ftol": 1e-13, "gtol": 1e-9},
    )
    return res.x


#: Above this many cells the rotation is optimised over an active set of rows (see optimize_lbfgs).
#: Measured on the user-like atlas (20,000 cells, 10 states, same Schur vectors): all rows 18.3 s,
#: crispness 0.5099; active set 2.6 s, crispness 0.5127. At 10k cells on our generator the active
#: set found 0.654 against 0.660 in 4.8 s vs 10.5 s, so the full problem is kept up to 10k.
ACTIVE_SET_MIN_ROWS = 10_000


def _top_rows(V: np.ndarray, r: int) -> np.ndarray:
    """Row indices of the ``r`` largest entries of every column of ``V``."""
    r = min(r, V.shape[0])
    return np.unique(np.argpartition(-V, r - 1, axis=0)[:r].ravel())


def _candidate_rows(X: np.ndarray, A0: np.ndarray, seed: int, n_directions: int = 256, r: int = 8) -> np.ndarray:
    r"""Rows likely to attain :math:`\max_l (-X_{l,1:} B_{:,j})` at the optimum.

    The inner-simplex vertices and the ``r`` most extreme rows of ``X`` along the initial rotation's
    columns and along ``n_directions`` random directions.
    """
    rng = np.random.default_rng(seed)
    k = X.shape[1] - 1
    D = np.c_[-A0[1:, :], rng.standard_normal((k, n_directions))]
    rows = [indexsearch(X)]
    step = 1 << 16  # chunks keep the n x directions block small
    for lo in range(0, X.shape[0], step):
        rows.append(lo + _top_rows(X[lo : lo + step, 1:] @ D, r))
    return np.unique(np.concatenate(rows))


def optimize_lbfgs(
    X: np.ndarray,
    *,
    n_restarts: int = 6,
    seed: int = 0,
    maxiter: int = 100,
    taus: tuple[float, ...] = (1e-1, 3e-2, 1e-2),
    active_set_min_rows: int = ACTIVE_SET_MIN_ROWS,
    max_rounds: int = 20,
    anchors: np.ndarray | None = None,
) -> tuple[np.ndarray, float]:
    r"""Maximise crispness with L-BFGS-B; on large ``X`` over an active set of rows, exactly.

    The objective touches the rows of :math:`X` only through the column maxima
    :math:`a_j = \max_l(-X_{l,1:} B_{:,j})`, attained at a handful of extreme rows. For
    ``n > active_set_min_rows`` we optimise over a candidate set :math:`S` of rows
    (:func:`_candidate_rows`), then evaluate the maxima over *all* rows; rows outside :math:`S`
    that attain (or come within the top 32 of) a maximum join :math:`S` and the optimisation
    resumes from the current point, until no row outside :math:`S` attains a maximum. At that
    point the objective over :math:`S` equals the objective over all rows (near it, too), so the
    point is a local optimum of the full problem, found at :math:`O(|S|\,m^2)` instead of
    :math:`O(n\,m^2)` per evaluation. The multi-start may settle in another local optimum than a run
    over all rows (10k cells, 10 states: crispness 0.654 in 4.8 s vs 0.660 in 10.5 s), hence the
    threshold. The returned rotation is filled with all rows, so
    the memberships :math:`X A` are non-negative for every cell.

    See :func:`_optimize_lbfgs_rows` for the optimisation itself and ``anchors``.

    Returns
    -------
    A, crispness
        Feasible ``m x m`` rotation matrix and its crispness.
    """
    n = X.shape[0]
    kw = dict(n_restarts=n_restarts, seed=seed, maxiter=maxiter, taus=taus)
    if n <= active_set_min_rows:
        return _optimize_lbfgs_rows(X, anchors=anchors, **kw)
    S = _candidate_rows(X, initial_rotation(X), seed)
    if anchors is not None:
        S = np.union1d(S, anchors)
    start = None
    for _ in range(max_rounds):
        local = None if anchors is None or start is not None else np.searchsorted(S, anchors)
        A_S, _ = _optimize_lbfgs_rows(X[S], start=start, anchors=local, **kw)
        start = A_S[1:, 1:].ravel()  # fill_rotation is scale invariant: this alpha gives A_S again
        A = fill_rotation(start, X)
        vals = -(X[:, 1:] @ A[1:, :])
        attained = np.unique(np.argmax(vals, axis=0))
        if np.all(np.isin(attained, S)) and np.all(A[0, :] > 0):
            break
        S = np.union1d(S, _top_rows(vals, 32))
        kw["n_restarts"] = 0  # later rounds continue from the current point
    else:
        warning("G-PCCA active-set optimisation did not settle in %d rounds; using the last rotation.", max_rounds)
    if not np.all(A[0, :] > 0):
        raise ValueError("G-PCCA optimisation found no feasible rotation matrix; try another number of states.")
    return A, crispness(A)


def _optimize_lbfgs_rows(
    X: np.ndarray,
    *,
    n_restarts: int = 6,
    seed: int = 0,
    maxiter: int = 100,
    taus: tuple[float, ...] = (1e-1, 3e-2, 1e-2),
    start: np.ndarray | None = None,
    anchors: np.ndarray | None = None,
) -> tuple[np.ndarray, float]:
    r"""Maximise crispness with L-BFGS-B and an analytic gradient, from the inner-simplex start plus restarts.

    Stage 1: L-BFGS-B on the exact objective from pyGPCCA's initial rotation (inner simplex algorithm)
    and from ``n_restarts`` seeded perturbations of it (5% Gaussian noise). Stage 2: from the best
    point, a continuation over the log-sum-exp smoothing ``taus`` (relative to the scale of
    :math:`X`) followed by the exact objective, which steps across the kinks of the max where plain
    L-BFGS stalls. With ``anchors`` (one row per nearly closed set, :func:`nearly_closed_cells`) a
    second chain starts from the inner simplex with those rows as its first vertices. The best
    feasible rotation seen (largest crispness) is returned.

    Returns
    -------
    A, crispness
        Feasible ``m x m`` rotation matrix and its crispness.
    """
    A0 = initial_rotation(X)
    alpha0 = A0[1:, 1:].ravel()
    rng = np.random.default_rng(seed)
    noise = 0.05 * (np.abs(alpha0).mean() + 1e-12)
    starts = [alpha0] + [alpha0 + noise * rng.standard_normal(alpha0.size) for _ in range(n_restarts)]
    if start is not None:
        starts.append(start)
    cands = [alpha0]
    for start in starts:
        cands.append(_lbfgs(start, X, 0.0, maxiter))
    best = [min(cands, key=lambda z: objective_and_gradient(z, X)[0])]
    if anchors is not None and 2 <= len(anchors) < X.shape[1]:
        # A second chain from the simplex whose first vertices are the nearly closed sets: the
        # greedy inner simplex may put no vertex there when the other slow modes are far apart
        # (4 nearly closed branch tips, 8 states: crispness 0.449 with tips at membership 0.61-0.77,
        # against 0.512 from this start).
        anchored = initial_rotation(X, anchors)[1:, 1:].ravel()
        cands += [anchored, _lbfgs(anchored, X, 0.0, maxiter)]
        best.append(cands[-1])
    scale = float(np.abs(X[:, 1:]).max())
    for x in best:
        for tau in taus:
            x = _lbfgs(x, X, tau * scale, maxiter)
        cands.append(_lbfgs(x, X, 0.0, maxiter))
    best_A, best_c = None, -np.inf
    for z in cands:
        A = fill_rotation(z, X)
        if np.all(A[0, :] > 0):
            c = crispness(A)
            if c > best_c:
                best_A, best_c = A, c
    if best_A is None:
        raise ValueError("G-PCCA optimisation found no feasible rotation matrix; try another number of states.")
    return best_A, best_c


def optimize_nelder_mead(X: np.ndarray) -> tuple[np.ndarray, float]:
    """The own optimisation of pyGPCCA (Nelder-Mead from the inner-simplex start), for exact parity.

    Uses the private functions ``pygpcca._gpcca._initialize_rot_matrix`` and ``pygpcca._gpcca._opt_soft``
    (pyGPCCA 1.0.4), which are exactly what :meth:`pygpcca.GPCCA.optimize` runs on its Schur vectors;
    the public API would recompute the Schur decomposition on the host.
    """
    try:
        from pygpcca._gpcca import _initialize_rot_matrix, _opt_soft
    except ImportError as e:  # pragma: no cover - pygpcca is a dependency
        raise ImportError("optimizer='nelder-mead' needs pyGPCCA: pip install pygpcca") from e
    A, _, fopt = _opt_soft(X, _initialize_rot_matrix(X))
    return A, float((X.shape[1] - fopt) / X.shape[1])


def memberships_from_rotation(X: np.ndarray, A: np.ndarray) -> np.ndarray:
    r"""Memberships :math:`\chi = X A`, tiny negatives clipped, rows renormalised to sum to one."""
    chi = X @ A
    if np.any(chi < -1e-8):
        raise ValueError(f"Memberships are significantly negative (min {chi.min():.3g}); the rotation is infeasible.")
    chi = np.clip(chi, 0.0, None)
    return chi / chi.sum(axis=1, keepdims=True)


def min_chi(X: np.ndarray, m: int) -> float:
    """The minChi indicator of ``m`` clusters: smallest entry of ``X[:, :m] pinv(X[index, :m])``."""
    Xm = X[:, :m]
    return float(np.min(Xm @ initial_rotation(Xm)))


def coarse_grain(T_times_chi: np.ndarray, chi: np.ndarray, eta: np.ndarray) -> np.ndarray:
    r"""Coarse-grained T, :math:`T_c = (\chi^\top D \chi)^{-1} (\chi^\top D T \chi)`, :math:`D = \mathrm{diag}(\eta)`.

    ``T_times_chi`` is :math:`T \chi` (one SpMM on the backend, done by the caller).
    """
    W = np.linalg.pinv(chi.T @ (chi * eta[:, None]))
    return W @ ((chi * eta[:, None]).T @ T_times_chi)
