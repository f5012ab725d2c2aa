r"""Krylov-Schur: restarted Arnoldi for a partial real Schur form (Stewart 2001).

Written against the backend's array namespace so NumPy, CuPy and JAX arrays all work. The only
host visits are the small projected problem, once per restart: the ``(m + 1) x m`` matrix
:math:`H` of the Krylov-Schur relation is read, Schur-factorised and reordered on the host
(:func:`scipy.linalg.schur`, LAPACK ``trexc``), and the ``m x p`` rotation :math:`Z` goes back.

Precision policy (the same as :mod:`cellfate_gpu.linalg.gmres` and every backend): the matrix may
be stored in float32 (``settings.dtype``), but every Krylov vector, the Hessenberg matrix, the
rotations and the returned :math:`Q` are float64. A float32 matrix is widened inside each product
by the backend's ``spmm`` (the sums accumulate in float64); vectors are never narrowed to the
storage type. So :math:`Q^\top Q = I` and :math:`\|A Q - Q R\| \le tol\,\|A\|` hold to float64
precision for the *stored* matrix; float32 storage only perturbs the matrix entries (by at most
:math:`2^{-24}` relative).
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any

import numpy as np
import scipy.linalg as sla

from cellfate_gpu._logging import debug, warning
from cellfate_gpu.backends._results import SchurResult, Status
from cellfate_gpu.linalg._schur_sort import order_schur, schur_eigenvalues, sort_key, split_safe

__all__ = ["CLUSTER_TOL", "complete_clusters", "default_ncv", "krylov_schur", "order_schur", "sort_key"]


def default_ncv(k: int, n: int) -> int:
    """Default Krylov subspace size for ``k`` wanted eigenvalues: SLEPc's ``max(2k, k + 15)``, capped at ``n``.

    The 15 spare vectors matter for small ``k`` with clustered spectra: with ARPACK's ``2k + 1``
    a random 800x800 stochastic matrix (``which='LM'``, ``k=10``, moduli ratio 0.996 at the cut)
    stalled for 380 restarts; with ``k + 15`` it converges, and in fewer matvecs on the test
    matrices (tests/test_linalg_generic.py).
    """
    return min(n, max(2 * k, k + 15))


class _Basis:
    """Krylov basis of ``n``-vectors behind the locked vectors, preallocated when the namespace allows item assignment.

    The buffer holds one vector per *row* (shape ``(r + size, n)``, C order): the ``r`` locked
    vectors first (``A W = W``, searched around), then the basis. Writing or reading a vector
    touches contiguous memory, and :meth:`first` / :meth:`with_locked` are transposed views, which
    BLAS takes as is. Column storage (``(n, size)``) made every write strided: 2.4 of 26 s at 100k
    cells. Keeping ``W`` in the same buffer lets one Gram-Schmidt product orthogonalise against
    ``[W, V]`` together (see :func:`_krylov_schur`).
    """

    def __init__(self, xp: Any, template: Any, size: int, mutable: bool, locked: Any = None):
        self.xp, self.mutable = xp, mutable
        n = template.shape[0]
        self.r = 0 if locked is None else int(locked.shape[1])
        self.buffer = None
        self.columns: list[Any] = []
        if mutable:
            self.buffer = xp.zeros((self.r + size, n), dtype=xp.float64, device=_device(template))
            if self.r:
                self.buffer[: self.r, :] = locked.T
        elif self.r:
            self.columns = [locked[:, i] for i in range(self.r)]

    def set(self, j: int, v: Any) -> None:
        j += self.r
        if self.mutable:
            self.buffer[j, :] = v
        elif j == len(self.columns):
            self.columns.append(v)
        else:
            self.columns[j] = v

    def first(self, j: int) -> Any:
        """The first ``j`` basis vectors (locked ones excluded) as an ``(n, j)`` array."""
        if self.mutable:
            return self.buffer[self.r : self.r + j, :].T
        return self.xp.stack(self.columns[self.r : self.r + j], axis=1)

    def with_locked(self, j: int) -> Any:
        """``[W, V_j]``: the locked vectors and the first ``j`` basis vectors, an ``(n, r + j)`` array."""
        if self.mutable:
            return self.buffer[: self.r + j, :].T
        return self.xp.stack(self.columns[: self.r + j], axis=1)

    def column(self, j: int) -> Any:
        return self.buffer[self.r + j, :] if self.mutable else self.columns[self.r + j]

    def replace_first(self, V: Any, residual: Any) -> None:
        """Set the basis to the columns of ``V`` followed by ``residual`` (the locked vectors stay)."""
        p, r = V.shape[1], self.r
        if self.mutable:
            self.buffer[r : r + p, :] = V.T
            self.buffer[r + p, :] = residual
        else:
            self.columns = self.columns[:r] + [V[:, i] for i in range(p)] + [residual]


#: DGKS criterion for the second Gram-Schmidt pass (ARPACK's and SLEPc's choice, 1/sqrt(2)).
_DGKS_ETA = 1.0 / math.sqrt(2.0)


def _device(x: Any) -> Any:
    return getattr(x, "device", None)


def krylov_schur(
    backend,
    A: Any,
    k: int,
    *,
    which: str = "LR",
    tol: float = 1e-10,
    maxiter: int | None = None,
    ncv: int | None = None,
    v0: Any = None,
    seed: int = 0,
    unit_eigenspace: bool = True,
) -> SchurResult:
    r"""Partial real Schur form :math:`A Q = Q R` of the ``k`` eigenvalues selected by ``which``.

    Stochastic matrices (``which`` ``"LR"`` or ``"LM"``) first get the invariant subspace of their
    eigenvalue 1 exactly, from the chain's closed communicating classes
    (:func:`cellfate_gpu.linalg._classes.unit_eigenspace`): an orthonormal :math:`W` with
    :math:`A W = W`, one column per closed class (the constant vector alone for an irreducible
    row-stochastic :math:`T`). Krylov-Schur then runs on the deflated operator
    :math:`(I - W W^\top) A` restricted to :math:`W^\perp`, giving :math:`(I - W W^\top) A U = U R_{22}`,
    and the result is assembled exactly,

    .. math::

        A \begin{pmatrix} W & U \end{pmatrix} = \begin{pmatrix} W & U \end{pmatrix}
        \begin{pmatrix} I_r & W^\top A U \\ 0 & R_{22} \end{pmatrix}.

    So a reducible chain gets its eigenvalue 1 once per closed class, which a single-vector Krylov
    method cannot (it sees one direction of a multiple eigenspace), and the span always holds the
    constant vector. ``unit_eigenspace=False`` skips this.

    Maintains the Krylov-Schur relation :math:`A V_m = V_m S + v_{m+1} b^T` with orthonormal
    :math:`[V_m, v_{m+1}]`. Each restart factorises :math:`S = Z T Z^T` (real Schur, wanted
    eigenvalues first), keeps the leading ``p`` Schur vectors :math:`V_m Z_{:, :p}` and the
    coupling :math:`b^T Z_{:, :p}`, and extends the basis again with Arnoldi steps
    (classical Gram-Schmidt applied twice, CGS2; on host arrays the second pass runs only when the
    DGKS test asks for it). A Schur vector is converged when its coupling
    :math:`|(b^T Z)_j| \le \tfrac{1}{2}\,tol\,\|A\| / \sqrt{k}`, so that
    :math:`\|A Q - Q R\|_2 \le tol \|A\|`; converged leading couplings are set to zero (locking).

    Parameters
    ----------
    backend
        A :class:`~cellfate_gpu.backends.Backend`; its ``xp``, ``spmm``, ``asarray`` and ``to_host``
        are all this function uses.
    A
        Native square matrix of the backend.
    k
        Number of wanted Schur vectors (``k + 1`` are returned if ``k`` would split a conjugate pair).
    which
        ``LR``, ``SR``, ``LM``, ``SM``, ``LI``, ``SI``.
    tol
        Relative tolerance (see above).
    maxiter
        Maximum number of restarts (default ``max(100, 10 * n // ncv)``).
    ncv
        Basis size ``m`` (default ``min(n, max(2 k + 1, 20))``).
    v0
        Start vector on the backend (default: seeded random, generated on the host).
    seed
        Seed of the default start vector (and of fresh vectors after an invariant subspace).

    unit_eigenspace
        Compute the eigenvalue-1 invariant subspace of a stochastic ``A`` exactly (see above).

    Returns
    -------
    SchurResult
        ``iterations`` counts restarts; ``residual_norms`` are the final couplings ``|b_j|``.
    """
    sort_key(which)  # validates which
    if unit_eigenspace and which in ("LR", "LM"):
        from cellfate_gpu.linalg import _classes

        kind = _classes.stochastic_kind(backend, A)
        found = _classes.unit_eigenspace(backend, A, kind=kind, tol=tol) if kind is not None else None
        if found is not None:
            W, _ = found
            res = _deflated(backend, A, k, W, which=which, tol=tol, maxiter=maxiter, ncv=ncv, v0=v0, seed=seed)

            search_ncv = ncv if ncv is not None else default_ncv(k, int(A.shape[0]))

            def search(locked: Any, p: int, attempt: int, scout: bool) -> SchurResult:
                return _krylov_schur(
                    backend,
                    A,
                    p,
                    which=which,
                    tol=max(tol, SCOUT_TOL) if scout else tol,
                    maxiter=maxiter,
                    ncv=min(search_ncv, int(A.shape[0]) - int(locked.shape[1])),
                    v0=None,
                    seed=seed + 1 + attempt,
                    locked=locked,
                )

            return complete_clusters(backend, A, k, res, search, which=which, exact=int(W.shape[1]))
    return _krylov_schur(backend, A, k, which=which, tol=tol, maxiter=maxiter, ncv=ncv, v0=v0, seed=seed)


#: Computed eigenvalues closer than this (relative to ``max(1, |lambda|)``) form a cluster that a
#: single-vector Krylov method may have resolved only in part (see :func:`complete_clusters`).
CLUSTER_TOL = 1e-8


#: The first look at the complement (see :func:`complete_clusters`) converges only to this
#: tolerance; a candidate further than :data:`SCOUT_MARGIN` below every cluster cannot be a member.
SCOUT_TOL = 1e-5
#: Eigenvalue error allowed for a scout at :data:`SCOUT_TOL` (100x: the conditioning of the eigenvalue).
SCOUT_MARGIN = 1e-3


def _cluster_members(ev: np.ndarray, exact: int) -> np.ndarray:
    """Indices of eigenvalues in a cluster (two within CLUSTER_TOL, not both among the first ``exact``)."""
    ev = np.asarray(ev)
    members = set()
    for i in range(ev.size):
        for j in range(max(i + 1, exact), ev.size):
            if abs(ev[i] - ev[j]) <= CLUSTER_TOL * max(1.0, abs(ev[i])):
                members.update((i, j))
    return np.array(sorted(members), dtype=np.int64)


def complete_clusters(
    backend, A: Any, k: int, result: SchurResult, search, *, which: str, exact: int = 0
) -> SchurResult:
    r"""Find the members of a near-multiple eigenvalue that a Krylov run missed, and merge them in.

    A Krylov space from one start vector cannot separate eigenvalues closer than rounding (a
    nearly reducible chain: metastable sets whose exchange is :math:`10^{-15}`, eigenvalues
    :math:`1 - 10^{-15}`), so a converged run may hold only some members of such a cluster. When
    the computed eigenvalues contain a cluster (two within :data:`CLUSTER_TOL`; the ``exact``
    leading ones, known from the class structure, excepted), ``search(Q, 1, attempt, scout)``
    computes the most wanted eigenvalue :math:`\mu` of :math:`A` on the complement of the current
    :math:`Q` (``(I - Q Q^T) A``, a Schur complement). A first look (``scout=True``) converges
    only to :data:`SCOUT_TOL`: a missed member lies in its cluster, so a :math:`\mu` more than
    :data:`SCOUT_MARGIN` below the least wanted cluster member ends the search (on a 100k-cell atlas
    with six nearly closed sets the complement's top eigenvalue is :math:`1 - 3.3 \cdot 10^{-3}`, and
    converging it to full accuracy cost 2974 matvecs, more than the whole decomposition). Otherwise
    the search runs to full accuracy, and if :math:`\mu` beats the last kept eigenvalue, the Schur
    forms are merged exactly,
    :math:`A [Q, u] = [Q, u] \begin{pmatrix} R & Q^\top A u \\ 0 & \mu \end{pmatrix}`, reordered
    (:func:`~cellfate_gpu.linalg._schur_sort.order_schur`) and truncated to ``k``; this repeats
    until the complement holds nothing more wanted (at most ``k`` rounds). The matvecs of every
    search are counted in the result.
    """
    if result.Q is None or result.status is not Status.CONVERGED:
        return result
    xp = backend.xp
    key = sort_key(which)
    Q, R, matvecs, merged = result.Q, np.asarray(result.R), result.matvecs, 0
    n = int(A.shape[0])
    for attempt in range(k):
        ev = schur_eigenvalues(R)
        members = _cluster_members(ev, exact)
        if members.size == 0 or n - Q.shape[1] < 3:
            break
        scout = search(Q, 1, attempt, True)
        matvecs += max(scout.matvecs, 0)
        if scout.Q is None or scout.status is not Status.CONVERGED:
            _warn_incomplete(ev[members], scout.status)
            break
        floor = float(np.min(key(ev[members])))
        if key(np.asarray(scout.eigenvalues)[:1])[0] < floor - SCOUT_MARGIN * max(1.0, float(np.max(np.abs(ev)))):
            break  # nothing on the complement comes near a cluster: no member was missed
        extra = search(Q, 1, attempt, False)
        matvecs += max(extra.matvecs, 0)
        if extra.Q is None or extra.status is not Status.CONVERGED:
            _warn_incomplete(ev[members], extra.status)
            break
        mu = np.asarray(extra.eigenvalues)
        if key(mu[:1])[0] <= key(ev[-1:])[0] + CLUSTER_TOL:
            break
        U = backend.asarray(extra.Q) if isinstance(extra.Q, np.ndarray) and not isinstance(Q, np.ndarray) else extra.Q
        AU = xp.astype(backend.spmm(A, U), xp.float64)  # float64 vectors (precision policy)
        C = backend.to_host(Q.T @ AU)
        p, q = R.shape[0], int(extra.R.shape[0])
        Rn = np.zeros((p + q, p + q))
        Rn[:p, :p], Rn[:p, p:], Rn[p:, p:] = R, C, np.asarray(extra.R)
        T, Z = order_schur(Rn, np.eye(p + q), which)
        kk = split_safe(T, min(k, T.shape[0]))
        Q = xp.concat([Q, U], axis=1) @ backend.asarray(np.ascontiguousarray(Z[:, :kk]))
        R = np.array(T[:kk, :kk])
        merged += 1
    if merged == 0:
        return dataclasses.replace(result, matvecs=matvecs)
    debug("Krylov-Schur: %d eigenvalue(s) of a near-multiple cluster found on the complement", merged)
    AQ = xp.astype(backend.spmm(A, Q), xp.float64)
    res = np.linalg.norm(backend.to_host(AQ - Q @ backend.asarray(R)), axis=0)
    return dataclasses.replace(
        result, Q=Q, R=R, eigenvalues=schur_eigenvalues(R), residual_norms=res, matvecs=matvecs + Q.shape[1]
    )


def _warn_incomplete(cluster: np.ndarray, status: Status) -> None:
    """Say that a cluster may lack members because the search on the complement failed (not silent)."""
    warning(
        "Krylov-Schur: the search for missed members of a near-multiple eigenvalue (cluster of %d around %.12g) "
        "ended with status %s; the Schur form is valid but may hold fewer members of that cluster than the "
        "matrix has (raise maxiter, or compute more Schur vectors)",
        cluster.size,
        float(np.real(cluster[0])),
        status.name,
    )


def _deflated(backend, A: Any, k: int, W_host: np.ndarray, *, which: str, **kw: Any) -> SchurResult:
    """Krylov-Schur on the complement of the known invariant subspace ``W`` (``A W = W``), assembled."""
    start_time = time.perf_counter()
    xp = backend.xp
    r = int(W_host.shape[1])
    W = backend.asarray(np.ascontiguousarray(W_host))
    if k <= r:
        # every wanted eigenvalue is 1: any k orthonormal columns of W (the constant vector first)
        return SchurResult(
            status=Status.CONVERGED,
            iterations=0,
            matvecs=0,
            seconds=time.perf_counter() - start_time,
            backend=backend.name,
            Q=W[:, :k] if k < r else W,
            R=np.eye(k),
            eigenvalues=np.ones(k, dtype=np.complex128),
            residual_norms=np.zeros(k),
            which=which,
        )
    rest = _krylov_schur(backend, A, k - r, which=which, locked=W, **kw)
    if rest.Q is None:
        return rest
    U = rest.Q
    AU = xp.astype(backend.spmm(A, U), xp.float64)  # float64 vectors (the precision policy of matvec)
    C = backend.to_host(W.T @ AU)
    kk = r + rest.R.shape[0]
    R = np.zeros((kk, kk))
    R[:r, :r] = np.eye(r)
    R[:r, r:] = C
    R[r:, r:] = rest.R
    debug("Krylov-Schur: %d known unit eigenvector(s) locked, %d computed on their complement", r, kk - r)
    return SchurResult(
        status=rest.status,
        iterations=rest.iterations,
        matvecs=rest.matvecs + U.shape[1],
        seconds=time.perf_counter() - start_time,
        backend=backend.name,
        Q=xp.concat([W, U], axis=1),
        R=R,
        eigenvalues=np.concatenate([np.ones(r, dtype=np.complex128), np.asarray(rest.eigenvalues)]),
        residual_norms=np.concatenate([np.zeros(r), np.asarray(rest.residual_norms)]),
        which=which,
    )


def _krylov_schur(
    backend,
    A: Any,
    k: int,
    *,
    which: str,
    tol: float,
    maxiter: int | None,
    ncv: int | None,
    v0: Any,
    seed: int,
    locked: Any = None,
) -> SchurResult:
    """The Krylov-Schur iteration; with ``locked`` (orthonormal ``W``, ``A W = W``) on ``W``'s complement."""
    start_time = time.perf_counter()
    xp = backend.xp
    n_full = int(A.shape[0])
    n_locked = 0 if locked is None else int(locked.shape[1])
    n = n_full - n_locked  # dimension of the search space
    m = min(n, ncv) if ncv is not None else default_ncv(k, n)
    m = max(m, min(n, k + 2))
    maxiter = maxiter if maxiter is not None else max(100, 10 * n // max(m, 1))
    mutable = getattr(backend, "mutable_arrays", True)
    rng = np.random.default_rng(seed)

    def project(v: Any) -> Any:
        """Remove the components along the locked vectors (twice: CGS2)."""
        if locked is None:
            return v
        for _ in range(2):
            v = v - locked @ (locked.T @ v)
        return v

    def fresh_vector() -> Any:
        return project(backend.asarray(rng.standard_normal(n_full)))

    def matvec(v: Any) -> Any:
        # Precision policy (as in gmres.py): the Krylov vectors stay float64 whatever the storage
        # type; a float32 matrix is widened inside the backend's SpMM, never the vector narrowed.
        # No projection here: Gram-Schmidt against [W, V] below removes the W components with V's
        # (V is orthogonal to W, so V^T A v = V^T (I - W W^T) A v: the deflated operator's H).
        return xp.astype(backend.spmm(A, v), xp.float64)

    if v0 is None:
        v = fresh_vector()
    else:
        v = backend.asarray(v0) if isinstance(v0, np.ndarray) else v0
    v = project(xp.astype(v, xp.float64))
    v = v / xp.linalg.vector_norm(v)
    # Backend hook: ``backend.arnoldi_sweep(A, m, locked)`` may return a basis object with a
    # compiled fixed-shape sweep ``extend(p)`` (new Hessenberg columns p..m-1 as one (m+1, m) block)
    # and restart ``rotate(Z, p)`` (JAX: one XLA program per sweep instead of one per step and shape).
    # Without it (the default) the generic loop below runs.
    hook = getattr(backend, "arnoldi_sweep", None)
    sweep = hook(A, m, locked) if hook is not None else None
    basis = sweep if sweep is not None else _Basis(xp, v, m + 1, mutable, locked)
    basis.set(0, v)
    H = np.zeros((m + 1, m))  # host copy of the projected matrix, refreshed once per restart
    H_dev_cols: list[Any] = []  # device columns of H produced by Arnoldi since the last restart
    p = 0  # number of kept (Schur) columns at the start of the current sweep
    matvecs, restarts, anorm = 0, 0, 0.0
    status = Status.MAX_ITER
    nconv = 0
    T = Z = b = None

    while True:
        # ---- Arnoldi extension from column p to m (all on the device)
        H_dev_cols = []
        if sweep is not None:
            H[:, p:m] = backend.to_host(sweep.extend(p))[:, p:m]  # the one host read of this restart
            matvecs += m - p
        for j in range(p, m) if sweep is None else ():
            w = matvec(basis.column(j))
            matvecs += 1
            # Classical Gram-Schmidt against [W, V_j] in one product pair: the locked vectors W and
            # the basis together (separate passes against W, before and after V, cost 3 of the 4
            # n-by-(r + j) products at 100k cells for nothing: V is orthogonal to W).
            B = basis.with_locked(j + 1)
            c = B.T @ w
            w_in = w
            w = w - B @ c
            beta = xp.linalg.vector_norm(w)
            # Second pass (CGS2) restores orthogonality lost to cancellation, against W as against
            # V. On host arrays it runs only when needed (DGKS: the norm fell below 1/sqrt(2) of
            # the input's, as in ARPACK and SLEPc), which halves the orthogonalisation traffic. On a
            # device the test would be a host sync per matvec, so there both passes always run.
            if not (isinstance(w, np.ndarray) and float(beta) > _DGKS_ETA * float(np.linalg.norm(w_in))):
                c2 = B.T @ w
                w = w - B @ c2
                c = c + c2
                beta = xp.linalg.vector_norm(w)
            h = c[n_locked:]
            # A zero beta means an invariant subspace; it is detected on the host at the restart.
            safe = xp.where(beta > 0, beta, xp.asarray(1.0, dtype=xp.float64, device=_device(w)))
            basis.set(j + 1, w / safe)
            H_dev_cols.append(
                xp.concat([h, xp.reshape(beta, (1,)), xp.zeros(m - j - 1, dtype=xp.float64, device=_device(w))])
            )

        # ---- one host read per restart: the new columns of H
        if H_dev_cols:
            new = backend.to_host(xp.stack(H_dev_cols, axis=1))
            H[:, p:m] = new
        if not np.all(np.isfinite(H)):
            status = Status.NONFINITE_INPUT
            break
        anorm = max(anorm, float(np.linalg.norm(H[:m, :m], 2)) if m <= 200 else float(np.linalg.norm(H[:m, :m])))
        threshold = 0.5 * tol * max(anorm, np.finfo(float).tiny) / math.sqrt(k)

        # Invariant subspace: the first tiny subdiagonal entry in the new Arnoldi columns ends the basis.
        m_eff = m
        for j in range(p, m):
            if H[j + 1, j] <= np.finfo(float).eps * max(anorm, 1e-300) * 10:
                m_eff = j + 1
                break
        S = H[:m_eff, :m_eff]
        bvec = H[m_eff, :m_eff].copy() if m_eff == m else np.zeros(m_eff)
        T, Z = sla.schur(S, output="real")
        T, Z = order_schur(T, Z, which)
        b = bvec @ Z
        # converged prefix (in wanted order) of Schur vectors
        nconv = 0
        while nconv < min(k, m_eff) and abs(b[nconv]) <= threshold:
            nconv += 1
        restarts += 1
        k_out = split_safe(T, min(k, m_eff))
        if nconv >= min(k, m_eff) and m_eff >= k:
            # converged: also the partner of a pair at the boundary must be converged
            if k_out == k or abs(b[k]) <= threshold:
                status = Status.CONVERGED
                break
        if restarts >= maxiter:
            status = Status.MAX_ITER
            break

        # ---- restart: keep p Schur vectors, lock the converged ones
        if m_eff < m:
            # Invariant subspace smaller than the basis: keep it all, continue from a fresh direction.
            p = m_eff
            b[:] = 0.0
            Zd = backend.asarray(Z)
            Vp = basis.first(m_eff) @ Zd
            r = fresh_vector()
            for _ in range(2):
                r = r - Vp @ (Vp.T @ r)
            r = r / xp.linalg.vector_norm(r)
            basis.replace_first(Vp, r)
        else:
            p = min(nconv + max((m - nconv) // 2, 1), m - 1)
            p = max(p, min(k, m - 1))
            p = split_safe(T, p)
            if p >= m:
                p = m - 2 if T[m - 1, m - 2] != 0.0 else m - 1
            b[:nconv] = 0.0  # locking: converged couplings are deflated exactly
            if sweep is not None:
                sweep.rotate(Z, p)
            else:
                Zd = backend.asarray(np.ascontiguousarray(Z[:, :p]))
                Vp = basis.first(m) @ Zd
                basis.replace_first(Vp, basis.column(m))
        H[:] = 0.0
        H[:p, :p] = T[:p, :p]
        H[p, :p] = b[:p]

    if T is None:  # non-finite values before the first restart
        return SchurResult(
            status=status,
            iterations=restarts,
            matvecs=matvecs,
            seconds=time.perf_counter() - start_time,
            backend=backend.name,
            which=which,
        )
    k_out = split_safe(T, min(k, T.shape[0]))
    Zd = backend.asarray(np.ascontiguousarray(Z[:, :k_out]))
    Q = basis.first(Z.shape[0]) @ Zd
    R = np.array(T[:k_out, :k_out])
    eigenvalues = schur_eigenvalues(R)
    return SchurResult(
        status=status,
        iterations=restarts,
        matvecs=matvecs,
        seconds=time.perf_counter() - start_time,
        backend=backend.name,
        Q=Q,
        R=R,
        eigenvalues=eigenvalues,
        residual_norms=np.abs(b[:k_out]),
        which=which,
    )
