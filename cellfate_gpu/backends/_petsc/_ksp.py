"""The linear-solve path: PETSc KSP set up once for all right-hand sides, LU factorisations, statuses.

Functions of the backend (bound as methods of :class:`PetscBackend`).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from cellfate_gpu._logging import info
from cellfate_gpu.backends._petsc._distribution import _mpi_land, _present
from cellfate_gpu.backends._results import SolveResult, Status

_KSP_METHODS = {"gmres": "gmres", "bcgs": "bcgs", "direct": "preonly"}
_PRECONDITIONERS = {"none": "none", "jacobi": "jacobi", "bjacobi": "bjacobi", "ilu": "ilu", "asm": "asm"}


def factorize(backend, A: Any) -> Any:
    """Nothing to keep: PCLU is factorised inside each KSP set-up (``solve_factorized`` does it)."""
    return None


def solve_factorized(backend, factor: Any, A: Any, B: Any) -> SolveResult:
    """KSPPREONLY + PCLU (MUMPS on several ranks)."""
    return backend.solve_ksp(A, B, ksp_type="preonly", pc_type="lu")


def solve(
    backend,
    A: Any,
    B: Any,
    *,
    method: Any = "gmres",
    tol: float = 1e-10,
    maxiter: int | None = None,
    preconditioner: str | None = None,
    x0: Any = None,
    restart: int | None = None,
) -> SolveResult:
    r"""Solve :math:`A X = B` with one PETSc KSP, set up once and reused for every column.

    The operator and preconditioner are set up once (``KSPSetUp``: e.g. the ILU factorisation
    is computed once); the columns are then solved one after another with the same KSP (a
    loop rather than ``KSPMatSolve``, which for GMRES/BiCGStab loops internally anyway and
    would hide the per-column convergence reason).  Preconditioning is on the right and the
    convergence test uses the unpreconditioned norm, so ``tol`` bounds the true relative
    residual :math:`\|b_j - A x_j\| \le tol \cdot \|b_j\|` (``rtol=tol``, ``atol=1e-50``);
    the residuals reported are recomputed from :math:`X`.

    Parameters
    ----------
    A
        Square SciPy CSR matrix (``None`` on ranks other than 0 with ``distribution='root'``).
    B
        ``(n,)`` or ``(n, m)`` host array.
    method
        ``"gmres"`` (KSPGMRES), ``"bcgs"`` (KSPBCGS, BiCGStab) or ``"direct"`` (KSPPREONLY + PCLU;
        one rank, or a PETSc built with MUMPS).  ``"auto"`` means ``"gmres"``.
    tol
        Relative residual tolerance per column.
    maxiter
        Maximum iterations per column (KSP ``max_it``; default PETSc's, 10000).
    preconditioner
        ``None`` (PETSc's default: ILU(0) on one rank, block Jacobi + ILU(0) on several),
        ``"none"``, ``"jacobi"``, ``"bjacobi"``, ``"ilu"`` (on several ranks: block Jacobi with
        ILU(0) blocks, as PETSc's ILU is sequential) or ``"asm"``.
    x0
        Initial guess of the shape of ``B``.
    restart
        GMRES restart length (default PETSc's, 30).

    Returns
    -------
    SolveResult
        ``X`` (NumPy, on every rank), ``status`` (worst over the columns: a diverged iteration
        count gives ``MAX_ITER``, any other divergence ``BREAKDOWN``), ``residual_norms``,
        ``iterations`` (summed over columns), ``matvecs``, ``method`` (``"ksp:<type>+pc:<type>"``,
        as actually used after the options database).
    """
    from cellfate_gpu.linalg.solvers import Solver

    if isinstance(method, Solver):
        return super().solve(A, B, method=method, tol=tol, maxiter=maxiter, x0=x0)
    method = "gmres" if method in ("auto", "block_gmres") else method
    if method not in _KSP_METHODS:
        raise ValueError(f"method={method!r} is not offered by the 'petsc' backend; use one of {tuple(_KSP_METHODS)}.")
    if preconditioner is not None and (not isinstance(preconditioner, str) or preconditioner not in _PRECONDITIONERS):
        raise ValueError(
            f"preconditioner must be None or one of {tuple(_PRECONDITIONERS)} on the 'petsc' backend, "
            f"got {preconditioner!r} (other PETSc PCs: KSP(pc_type=...), petsc_options={{'pc_type': ...}} "
            "or -pc_type)."
        )
    pc_type = "lu" if method == "direct" else None if preconditioner is None else _PRECONDITIONERS[preconditioner]
    return backend.solve_ksp(
        A, B, ksp_type=_KSP_METHODS[method], pc_type=pc_type, tol=tol, maxiter=maxiter, x0=x0, restart=restart
    )


def solve_ksp(
    backend,
    A: Any,
    B: Any,
    *,
    ksp_type: str = "gmres",
    pc_type: str | None = None,
    options: Mapping[str, str | None] | None = None,
    tol: float = 1e-10,
    maxiter: int | None = None,
    x0: Any = None,
    restart: int | None = None,
) -> SolveResult:
    """One PETSc KSP of type ``ksp_type`` with PC ``pc_type`` (``None``: PETSc's default) for all columns.

    ``options`` go into PETSc's options database for this set-up only (after this backend's
    own and the scoped ones of :meth:`using_options`). ``ksp_type="preonly"`` is a direct
    solve (PC ``"lu"`` by default). Otherwise as :meth:`solve`.
    """
    PETSc, _ = backend._start()
    started = time.perf_counter()
    direct = ksp_type == "preonly"
    comm = PETSc.COMM_WORLD
    nranks = comm.getSize()
    if direct and (pc_type or "lu") == "lu" and nranks > 1 and not _has_parallel_lu(PETSc):
        raise ValueError(
            "method='direct' on several ranks needs PETSc built with MUMPS or SuperLU_dist "
            "(--download-mumps); use method='gmres' or 'bcgs'."
        )
    vector = np.ndim(B) == 1 if (backend._distribution != "root" or comm.getRank() == 0) else False
    if backend._distribution == "root" and nranks > 1:
        vector = comm.tompi4py().bcast(vector, root=0)
    M, ranges = backend._petsc_matrix(A)
    n = int(ranges[-1])
    try:
        b_local = backend._local_block(B, n, ranges, "B")
        x_local0 = backend._local_block(x0, n, ranges, "x0") if _present(x0, comm, backend._distribution) else None
        m = b_local.shape[1]
        finite = bool(np.all(np.isfinite(b_local))) and (x_local0 is None or bool(np.all(np.isfinite(x_local0))))
        if nranks > 1:
            finite = bool(comm.tompi4py().allreduce(finite, op=_mpi_land()))
        if not finite:
            X = np.full((n, m), np.nan)
            return SolveResult(
                status=Status.NONFINITE_INPUT,
                iterations=0,
                matvecs=0,
                seconds=time.perf_counter() - started,
                backend=backend.name,
                X=X[:, 0] if vector else X,
                residual_norms=np.full(m, np.nan),
                method="ksp",
                message="B or x0 contains NaN or inf",
            )
        mults0 = backend._matmult_count()
        ksp = PETSc.KSP().create(comm=comm)
        b, x, r = M.createVecLeft(), M.createVecRight(), M.createVecLeft()
        try:
            ksp.setOperators(M)
            ksp.setType(ksp_type)
            pc = ksp.getPC()
            if direct:
                pc.setType(pc_type or PETSc.PC.Type.LU)
                if nranks > 1 and (pc_type or "lu") == "lu":
                    pc.setFactorSolverType("mumps")
            elif pc_type is not None:
                if pc_type == "ilu" and nranks > 1:
                    info("    preconditioner='ilu' on %d ranks: block Jacobi with ILU(0) blocks", nranks)
                    pc_type = "bjacobi"
                pc.setType(pc_type)
            if not direct:
                ksp.setPCSide(PETSc.PC.Side.RIGHT)
                ksp.setNormType(PETSc.KSP.NormType.UNPRECONDITIONED)
                if ksp_type == "gmres" and restart is not None:
                    ksp.setGMRESRestart(int(restart))
            ksp.setTolerances(rtol=tol, atol=1e-50, max_it=maxiter)
            ksp.setInitialGuessNonzero(x_local0 is not None)
            with backend._options_applied(options):
                ksp.setFromOptions()
            ksp.setUp()
            used = f"ksp:{ksp.getType()}+pc:{ksp.getPC().getType()}"
            X_local = np.empty_like(b_local)
            reasons, iterations, res = [], 0, np.empty(m)
            for j in range(m):
                b.setArray(b_local[:, j])
                if x_local0 is not None:
                    x.setArray(x_local0[:, j])
                else:
                    x.set(0.0)
                ksp.solve(b, x)
                reasons.append(int(ksp.getConvergedReason()))
                iterations += int(ksp.getIterationNumber())
                X_local[:, j] = x.getArray(readonly=True)
                M.mult(x, r)
                r.aypx(-1.0, b)  # r = b - A x
                bnorm = b.norm()
                res[j] = r.norm() / (bnorm if bnorm > 0 else 1.0)
        finally:
            for obj in (b, x, r, ksp):
                obj.destroy()
        mults1 = backend._matmult_count()
    finally:
        M.destroy()
    X = backend._gather_rows(X_local, ranges)
    statuses = [_ksp_status(PETSc, reason) for reason in reasons]
    status = max(statuses, key=lambda s: _STATUS_RANK[s]) if statuses else Status.CONVERGED
    message = ""
    if status is Status.CONVERGED and np.any(res > 100.0 * tol) and not direct:
        status = Status.BREAKDOWN
        message = f"KSP reported convergence but the true relative residual is {float(np.max(res)):.3g}"
    bad = sorted({_reason_name(PETSc, r) for r in reasons if r <= 0})
    if bad:
        message = "KSP: " + ", ".join(bad)
    return SolveResult(
        status=status,
        iterations=iterations,
        matvecs=mults1 - mults0 if mults0 >= 0 and mults1 >= 0 else -1,
        seconds=time.perf_counter() - started,
        backend=backend.name,
        X=X[:, 0] if vector else X,
        residual_norms=res,
        method=used,
        message=message,
    )


def _has_parallel_lu(PETSc: Any) -> bool:
    try:
        return bool(PETSc.Sys.hasExternalPackage("mumps"))
    except Exception:
        return False


def _reason_name(PETSc: Any, reason: int) -> str:
    for name, value in vars(PETSc.KSP.ConvergedReason).items():
        if not name.startswith("_") and value == reason:
            return name
    return str(reason)


def _ksp_status(PETSc: Any, reason: int) -> Status:
    """Map a KSP converged reason to a :class:`Status`."""
    if reason > 0:
        return Status.CONVERGED
    reasons = PETSc.KSP.ConvergedReason
    if reason == getattr(reasons, "DIVERGED_MAX_IT", getattr(reasons, "DIVERGED_ITS", -3)):
        return Status.MAX_ITER
    return Status.BREAKDOWN  # breakdown, NaN/inf, dtol, PC failure, indefinite operator ...


#: Worst status first, to combine the statuses of several right-hand sides.
_STATUS_RANK = {Status.CONVERGED: 0, Status.MAX_ITER: 1, Status.BREAKDOWN: 2, Status.NONFINITE_INPUT: 3}
