"""The partial Schur path: SLEPc EPS (Krylov-Schur) with the eigenvalue-1 space deflated, and retries.

Functions of the backend (bound as methods of :class:`PetscBackend`).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import numpy as np

from cellfate_gpu._logging import debug, info
from cellfate_gpu.backends._results import SchurResult, Status
from cellfate_gpu.linalg._schur_sort import sort_key, sorted_real_schur, split_safe
from cellfate_gpu.linalg.krylov_schur import SCOUT_TOL, complete_clusters, default_ncv

_WHICH_TO_SLEPC = {
    "LR": "LARGEST_REAL",
    "LM": "LARGEST_MAGNITUDE",
    "SR": "SMALLEST_REAL",
    "SM": "SMALLEST_MAGNITUDE",
    "LI": "LARGEST_IMAGINARY",
    "SI": "SMALLEST_IMAGINARY",
}
#: SLEPc's test bounds the residual of its Ritz *eigenpairs*; the residual of the Schur vectors
#: (what the contract promises, ``|A q_j - (Q R)_j| <= tol |A|``) can be ~10x larger for
#: non-normal matrices, so SLEPc is asked for this fraction of ``tol``.
_SLEPC_TOL_MARGIN = 0.1
#: How many times partial_schur retries with a doubled ``ncv`` when fewer than ``k`` pairs converged.
_SCHUR_RETRIES = 2


def _start_vector(M, ranges: np.ndarray, seed: int):
    r"""SLEPc's initial vector: this rank's rows of one seeded host random vector of length ``n``.

    SLEPc's own random start depends on the number of ranks; on two ranks it lost a whole
    direction on a 300k-cell atlas (its complement search converged to :math:`1 - 2 \cdot 10^{-3}`
    where one rank finds the missed :math:`1 - 5 \cdot 10^{-13}`), so the start is made here, the
    same vector for any number of ranks.
    """
    me = M.getComm().getRank()
    x = np.random.default_rng(seed).standard_normal(int(ranges[-1]))
    v = M.createVecRight()
    v.setArray(np.ascontiguousarray(x[int(ranges[me]) : int(ranges[me + 1])]))
    return v


def _unit_eigenspace(backend, A: Any, which: str, tol: float, ranges: np.ndarray) -> np.ndarray | None:
    r"""Rows owned by this rank of the exact invariant subspace :math:`W` of the eigenvalue 1, or ``None``.

    The same class-aware step as the generic Krylov-Schur
    (:func:`cellfate_gpu.linalg._classes.unit_eigenspace`), on the host CSR matrix: every rank
    computes the same :math:`W` in ``"replicated"`` mode (deterministic), rank 0 computes and
    broadcasts it in ``"root"`` mode. SLEPc then deflates it (``EPSSetDeflationSpace``), so a
    reducible chain gets its eigenvalue 1 once per closed class on any number of ranks.
    """
    if which not in ("LR", "LM"):
        return None
    from cellfate_gpu.linalg._classes import stochastic_kind, unit_eigenspace

    comm = backend._comm()
    me, root_mode = comm.getRank(), backend._distribution == "root" and comm.getSize() > 1
    W = None
    if not root_mode or me == 0:
        native = backend._host.ensure_native(A)
        kind = stochastic_kind(backend._host, native)
        found = unit_eigenspace(backend._host, native, kind=kind, tol=tol) if kind is not None else None
        W = None if found is None else found[0]
    if root_mode:
        W = comm.tompi4py().bcast(W, root=0)
    return None if W is None else np.ascontiguousarray(W[int(ranges[me]) : int(ranges[me + 1])])


def partial_schur(
    backend,
    A: Any,
    k: int,
    *,
    which: str = "LR",
    tol: float = 1e-10,
    maxiter: int | None = None,
    ncv: int | None = None,
) -> SchurResult:
    r"""Partial real Schur form :math:`A Q = Q R` with SLEPc's Krylov-Schur (EPS, problem type NHEP).

    SLEPc computes ``nev = k`` eigenpairs with the convergence test
    :math:`\|A x - \lambda x\| \le 0.1\, tol \cdot \|A\|` (``EPS_CONV_NORM``; the factor 0.1 covers
    the gap between SLEPc's eigenpair residual estimates and the Schur-vector residuals).  The orthonormal Schur
    basis of the converged pairs is read with ``EPSGetInvariantSubspace`` *before* any
    eigenvector is requested (asking for eigenvectors first would overwrite the basis with
    eigenvectors, which for a real non-symmetric matrix are neither orthonormal nor real).
    Then, on the host, :math:`R = Q^T (A Q)` is brought to a real Schur form ordered by
    ``which`` (LAPACK ``gees`` + ``trexc``) and truncated to ``k`` columns, or ``k + 1`` when
    the ``k``-th eigenvalue is one of a complex-conjugate pair — the contract of the generic
    Krylov-Schur.  If fewer than ``k`` pairs converged, the solve is repeated with a doubled
    ``ncv`` (at most twice); if that still fails the result has status ``MAX_ITER`` (or
    ``BREAKDOWN``) and holds the pairs that did converge.

    Parameters
    ----------
    A
        Square SciPy CSR matrix (``None`` on ranks other than 0 with ``distribution='root'``).
    k
        Number of Schur vectors wanted.
    which
        ``"LR"``, ``"LM"``, ``"SR"``, ``"SM"``, ``"LI"``, ``"SI"`` (imaginary parts by magnitude).
    tol
        Residual tolerance relative to :math:`\|A\|`.
    maxiter
        Maximum Krylov-Schur restarts (SLEPc's ``max_it``; default SLEPc's choice).
    ncv
        Krylov subspace size (default :math:`\max(2k, k + 15)`, SLEPc's own, capped at ``n``).

    Returns
    -------
    SchurResult
        ``Q`` (``n x k'`` NumPy, on every rank), ``R``, ``eigenvalues``, ``residual_norms``
        (:math:`\|A q_j - (Q R)_j\|`), ``iterations`` (restarts of the last attempt),
        ``matvecs`` (MatMult calls, from PETSc's event log).
    """
    PETSc, SLEPc = backend._start()
    sort_key(which)  # validates which
    started = time.perf_counter()
    mults0 = backend._matmult_count()
    M, ranges = backend._petsc_matrix(A)
    n = int(ranges[-1])
    if not 1 <= k < n:
        M.destroy()
        raise ValueError(f"k must satisfy 1 <= k < n={n}, got {k}.")
    try:
        W_local = backend._unit_eigenspace(A, which, tol, ranges)
    except BaseException:
        M.destroy()
        raise
    r_locked = 0 if W_local is None else int(W_local.shape[1])
    if r_locked >= k:  # every wanted eigenvalue is 1 (a reducible chain): nothing left for SLEPc
        M.destroy()
        W_all = backend._gather_rows(W_local, ranges)[:, :k]
        return SchurResult(
            status=Status.CONVERGED,
            iterations=0,
            matvecs=0,
            seconds=time.perf_counter() - started,
            backend=backend.name,
            Q=W_all,
            R=np.eye(k),
            eigenvalues=np.ones(k, dtype=complex),
            residual_norms=np.zeros(k),
            which=which,
        )
    ncv_now = min(n - r_locked, ncv) if ncv is not None else default_ncv(k - r_locked, n - r_locked)
    nev = k - r_locked
    slepc_tol = _SLEPC_TOL_MARGIN * tol
    try:
        norm_bound = float(np.sqrt(M.norm(PETSc.NormType.NORM_1) * M.norm(PETSc.NormType.NORM_INFINITY)))
        for attempt in range(_SCHUR_RETRIES + 1):
            eps = SLEPc.EPS().create(comm=PETSc.COMM_WORLD)
            try:
                eps.setOperators(M)
                eps.setProblemType(SLEPc.EPS.ProblemType.NHEP)
                eps.setType(SLEPc.EPS.Type.KRYLOVSCHUR)
                eps.setWhichEigenpairs(getattr(SLEPc.EPS.Which, _WHICH_TO_SLEPC[which]))
                eps.setDimensions(nev=nev, ncv=max(ncv_now, min(n, nev + 1)), mpd=max(ncv_now, min(n, nev + 1)))
                eps.setTolerances(tol=slepc_tol, max_it=maxiter)
                eps.setConvergenceTest(SLEPc.EPS.Conv.NORM)
                deflation = []
                if W_local is not None:
                    # the known invariant subspace of the eigenvalue 1: SLEPc searches its complement
                    for j in range(r_locked):
                        d = M.createVecRight()
                        d.setArray(np.ascontiguousarray(W_local[:, j]))
                        deflation.append(d)
                    eps.setDeflationSpace(deflation)
                start = _start_vector(M, ranges, seed=attempt)
                eps.setInitialSpace([start])
                with backend._options_applied():
                    eps.setFromOptions()
                eps.solve()
                start.destroy()
                nconv = int(eps.getConverged())
                reason = int(eps.getConvergedReason())
                iterations = int(eps.getIterationNumber())
                eps_type = eps.getType()
                vecs = eps.getInvariantSubspace() if nconv > 0 else []  # before any eigenvector!
                vecs = deflation + list(vecs)  # Q = [W, U]: U is orthogonal to W
                nconv += r_locked
                # Q and A Q on the host (every rank); R = Q^T A Q is nconv x nconv.
                local_q, local_aq = _local_q_and_aq(M, vecs) if vecs else (None, None)
                for v in vecs:
                    v.destroy()
            finally:
                eps.destroy()
            enough = accurate = False
            if nconv >= k:
                Q_all = backend._gather_rows(local_q, ranges)
                AQ_all = backend._gather_rows(local_aq, ranges)
                T, Z, evals = sorted_real_schur(Q_all.T @ AQ_all, which)
                kk = k + 1 if k < T.shape[0] and T[k, k - 1] != 0.0 else k
                Q = Q_all @ Z[:, :kk]
                R = T[:kk, :kk]
                res = np.linalg.norm(AQ_all @ Z[:, :kk] - Q @ R, axis=0)
                # A pair split by SLEPc's convergence (one half converged) would show here.
                enough = bool(np.all(res <= max(100.0 * tol, 1e-12) * max(norm_bound, 1.0)))
                # The contract bounds the Schur residual by tol |A|; SLEPc's per-pair test can
                # leave it 10-100x above that on clustered spectra: then tighten and go again.
                accurate = bool(np.all(res <= tol * norm_bound))
                evals = evals[:kk]
            if enough and (accurate or slepc_tol <= 1e-15 or attempt == _SCHUR_RETRIES):
                break
            if nconv >= k and slepc_tol > 1e-15:
                # Enough pairs passed SLEPc's test, but the Schur residual (the contract) is above
                # tol: SLEPc's per-pair estimate can be 10-5000x below it on a clustered, non-normal
                # spectrum (100k atlas: 4.8e-8 |A| at SLEPc tol 1e-11). A larger ncv does not cure
                # that (it did cost 3x the matvecs and still failed); a tighter SLEPc tol does. The
                # partner of a pair split at the boundary is asked for as well.
                worst = float(np.max(res)) / norm_bound
                new_tol = max(slepc_tol * tol / worst / 10, 1e-15)
                info(
                    "    SLEPc Schur residual %.2e |A| > tol=%.0e (attempt %d of %d); retrying with SLEPc tol %.0e",
                    worst,
                    tol,
                    attempt + 1,
                    _SCHUR_RETRIES + 1,
                    new_tol,
                )
                slepc_tol = new_tol
                nev = min(k + 1, n - 1) - r_locked
                continue
            info(
                "    SLEPc converged %d of %d Schur vectors (ncv=%d, attempt %d of %d)%s",
                nconv,
                k,
                ncv_now,
                attempt + 1,
                _SCHUR_RETRIES + 1,
                "; retrying with a larger ncv" if attempt < _SCHUR_RETRIES else "",
            )
            ncv_now = min(n, 2 * ncv_now)
            nev = min(k + 1, n - 1) - r_locked  # also ask for the partner of a possibly split pair
    finally:
        M.destroy()

    if enough:
        status = Status.CONVERGED
    else:
        reasons = SLEPc.EPS.ConvergedReason
        status = (
            Status.BREAKDOWN
            if reason in (reasons.DIVERGED_BREAKDOWN, reasons.DIVERGED_SYMMETRY_LOST)
            else (Status.MAX_ITER)
        )
        if nconv > 0:  # what did converge, honestly labelled by the status
            Q_all = backend._gather_rows(local_q, ranges)
            AQ_all = backend._gather_rows(local_aq, ranges)
            T, Z, evals = sorted_real_schur(Q_all.T @ AQ_all, which)
            Q, R = Q_all @ Z, T
            res = np.linalg.norm(AQ_all @ Z - Q @ R, axis=0)
        else:
            Q, R, evals, res = np.zeros((n, 0)), np.zeros((0, 0)), np.zeros(0, complex), np.zeros(0)
    mults1 = backend._matmult_count()
    matvecs = mults1 - mults0 if mults0 >= 0 and mults1 >= 0 else -1
    debug("petsc partial_schur: EPS %s, reason %d, nconv %d, restarts %d", eps_type, reason, nconv, iterations)
    result = SchurResult(
        status=status,
        iterations=iterations,
        matvecs=matvecs,
        seconds=time.perf_counter() - started,
        backend=backend.name,
        Q=Q,
        R=R,
        eigenvalues=np.asarray(evals, dtype=complex),
        residual_norms=res,
        which=which,
    )
    if W_local is None or (backend._distribution == "root" and backend._comm().getSize() > 1):
        return result  # completion needs the host matrix on every rank (replicated)

    def search(locked: np.ndarray, p: int, attempt: int, scout: bool) -> SchurResult:
        return backend._eps_on_complement(
            A, locked, p, which=which, tol=max(tol, SCOUT_TOL) if scout else tol, maxiter=maxiter, seed=1 + attempt
        )

    done = complete_clusters(backend, backend._host.ensure_native(A), k, result, search, which=which, exact=r_locked)
    return dataclasses.replace(done, seconds=time.perf_counter() - started)


def _eps_on_complement(
    backend, A: Any, locked: np.ndarray, nev: int, *, which: str, tol: float, maxiter: int | None, seed: int = 1
) -> SchurResult:
    r"""The ``nev`` most wanted Schur vectors of :math:`A` on the complement of an invariant ``locked`` basis.

    One SLEPc Krylov-Schur solve with ``locked`` (``n x p``, orthonormal, the same on every
    rank) as the deflation space; used by :func:`~cellfate_gpu.linalg.krylov_schur.complete_clusters`
    to find the members of a near-multiple eigenvalue that the first solve missed.
    """
    PETSc, SLEPc = backend._start()
    M, ranges = backend._petsc_matrix(A)
    me = backend._comm().getRank()
    lo, hi = int(ranges[me]), int(ranges[me + 1])
    n, p = locked.shape
    deflation, vecs = [], []
    eps = SLEPc.EPS().create(comm=PETSc.COMM_WORLD)
    try:
        for j in range(p):
            d = M.createVecRight()
            d.setArray(np.ascontiguousarray(locked[lo:hi, j]))
            deflation.append(d)
        ncv = default_ncv(nev, n - p)
        eps.setOperators(M)
        eps.setProblemType(SLEPc.EPS.ProblemType.NHEP)
        eps.setType(SLEPc.EPS.Type.KRYLOVSCHUR)
        eps.setWhichEigenpairs(getattr(SLEPc.EPS.Which, _WHICH_TO_SLEPC[which]))
        eps.setDimensions(nev=nev, ncv=ncv, mpd=ncv)
        eps.setTolerances(tol=_SLEPC_TOL_MARGIN * tol, max_it=maxiter)
        eps.setConvergenceTest(SLEPc.EPS.Conv.NORM)
        eps.setDeflationSpace(deflation)
        start = _start_vector(M, ranges, seed)
        deflation.append(start)  # destroyed with the deflation vectors
        eps.setInitialSpace([start])
        with backend._options_applied():
            eps.setFromOptions()
        eps.solve()
        nconv = min(int(eps.getConverged()), nev)
        vecs = list(eps.getInvariantSubspace())[:nconv] if nconv > 0 else []
        if nconv < nev:
            return SchurResult(
                status=Status.MAX_ITER,
                iterations=int(eps.getIterationNumber()),
                matvecs=-1,
                seconds=0.0,
                backend=backend.name,
                which=which,
            )
        local_q, local_aq = _local_q_and_aq(M, vecs)
    finally:
        for v in deflation + vecs:
            v.destroy()
        eps.destroy()
        M.destroy()
    U, AU = backend._gather_rows(local_q, ranges), backend._gather_rows(local_aq, ranges)
    T, Z, evals = sorted_real_schur(U.T @ AU, which)
    kk = split_safe(T, nev)
    return SchurResult(
        status=Status.CONVERGED,
        iterations=0,
        matvecs=-1,
        seconds=0.0,
        backend=backend.name,
        Q=U @ Z[:, :kk],
        R=T[:kk, :kk],
        eigenvalues=evals[:kk],
        which=which,
    )


def _local_q_and_aq(M, vecs) -> tuple[np.ndarray, np.ndarray]:
    """The local rows of ``Q`` (the basis vectors ``vecs``) and of ``A Q`` on this rank, as host arrays."""
    local_q = np.column_stack([v.getArray(readonly=True).copy() for v in vecs])
    w = M.createVecLeft()
    cols = []
    for v in vecs:
        M.mult(v, w)
        cols.append(w.getArray(readonly=True).copy())
    w.destroy()
    return local_q, np.column_stack(cols)
