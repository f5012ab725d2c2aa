"""Public linear-algebra entry points, dispatched to a backend.

``A`` may be a SciPy sparse matrix/array or a backend's native matrix. The backend is, in order:
the explicit ``backend=`` argument, the backend ``A`` natively lives on, ``settings.backend``.
Results come back on the backend that computed them; ``result.to_host()`` brings them to NumPy.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import scipy.sparse as sp

from cellfate_gpu._logging import info, timed
from cellfate_gpu.backends import Backend, EigResult, SchurResult, SolveResult, Status, backend_of, get_backend
from cellfate_gpu.linalg.solvers import (
    AMG,
    GMRES,
    ILU,
    KSP,
    Auto,
    Direct,
    Jacobi,
    Krylov,
    Prepared,
    Solver,
    SolverUnavailableError,
    solver_from_name,
)

__all__ = [
    "AMG",
    "GMRES",
    "ILU",
    "KSP",
    "Auto",
    "Direct",
    "Jacobi",
    "Krylov",
    "Prepared",
    "SchurError",
    "SolveError",
    "Solver",
    "SolverUnavailableError",
    "partial_eig",
    "partial_schur",
    "solve",
    "solver_from_name",
]

_WHICH = ("LR", "LM", "SR", "SM", "LI", "SI")


class SolveError(RuntimeError):
    """An iterative solve did not converge (the message says what to try)."""


class SchurError(RuntimeError):
    """A partial Schur decomposition did not converge (the message says what to try)."""


def _pick_backend(A: Any, backend: str | Backend | None) -> Backend:
    if backend is not None:
        return get_backend(backend)
    native = backend_of(A)
    return native if native is not None else get_backend(None)


def _check_matrix(A: Any, be: Backend) -> tuple[int, int]:
    shape = tuple(getattr(A, "shape", ()))
    if len(shape) != 2 or shape[0] != shape[1]:
        raise ValueError(f"A must be a square matrix, got shape {shape}.")
    if sp.issparse(A):
        if not np.all(np.isfinite(A.data)):
            bad = int(np.sum(~np.isfinite(A.data)))
            raise ValueError(f"A has {bad} non-finite stored entries (NaN or inf).")
    elif not be.is_native(A):
        raise TypeError(f"A must be a SciPy sparse matrix or a native {be.name!r} matrix, got {type(A).__name__}.")
    return shape


def _check_tol(tol: float) -> None:
    if not (isinstance(tol, int | float | np.floating) and np.isfinite(tol) and tol > 0):
        raise ValueError(f"tol must be a positive finite number, got {tol!r}.")


def _check_maxiter(maxiter) -> None:
    if maxiter is not None and (not isinstance(maxiter, int | np.integer) or maxiter < 1):
        raise ValueError(f"maxiter must be a positive integer or None, got {maxiter!r}.")


def partial_schur(
    A: Any,
    k: int,
    *,
    which: str = "LR",
    tol: float = 1e-10,
    maxiter: int | None = None,
    ncv: int | None = None,
    backend: str | Backend | None = None,
    throw: bool = True,
) -> SchurResult:
    r"""Partial real Schur decomposition :math:`A Q = Q R` of the ``k`` eigenvalues selected by ``which``.

    Krylov-Schur (Stewart 2001) with CGS2 orthogonalisation and locking; the small projected
    problem is reordered on the host with LAPACK ``trsen``.

    Parameters
    ----------
    A
        Square sparse matrix (SciPy or the backend's native type), ``n x n``.
    k
        Number of Schur vectors, ``1 <= k < n``. If the ``k``-th and ``(k+1)``-th eigenvalues form
        a complex-conjugate pair, ``k + 1`` vectors are returned (logged).
    which
        ``"LR"`` largest real part (default), ``"LM"`` largest magnitude, ``"SR"``, ``"SM"``,
        ``"LI"``, ``"SI"``.
    tol
        Relative residual tolerance :math:`\|A q - Q r\| \le tol \cdot \|A\|`.
    maxiter
        Maximum number of restarts (default: backend's choice, about ``max(100, n / ncv)``).
    ncv
        Krylov subspace size (default ``max(2k, k + 15)`` as in SLEPc, capped at ``n``).
    backend
        Backend name or instance; default: where ``A`` lives, else ``settings.backend``.
    throw
        Raise :class:`SchurError` if not converged (otherwise inspect ``result.status``).

    Returns
    -------
    SchurResult
        ``Q`` (``n x k'``, orthonormal, on the backend), ``R`` (``k' x k'`` quasi-upper-triangular,
        host), ``eigenvalues`` (host, ordered by ``which``), ``status``, ``matvecs``.
    """
    be = _pick_backend(A, backend)
    n, _ = _check_matrix(A, be)
    if not isinstance(k, int | np.integer) or not 1 <= k < n:
        raise ValueError(f"k must be an integer with 1 <= k < n={n}, got {k!r}.")
    if which not in _WHICH:
        raise ValueError(f"which must be one of {_WHICH}, got {which!r}.")
    _check_tol(tol)
    _check_maxiter(maxiter)
    if ncv is not None and not (k < ncv <= n):
        raise ValueError(f"ncv must satisfy k < ncv <= n ({k} < ncv <= {n}), got {ncv!r}.")
    native = be.ensure_native(A)
    with timed("Computing partial Schur decomposition (k=%d, which=%r, backend=%r)", k, which, be.name) as t:
        result = be.partial_schur(native, int(k), which=which, tol=tol, maxiter=maxiter, ncv=ncv)
        t["note"] = f"matvecs={result.matvecs}"
    if result.Q is not None and result.Q.shape[1] == k + 1:
        info("    Returned %d Schur vectors instead of %d to keep a complex-conjugate pair together", k + 1, k)
    if throw and result.status is not Status.CONVERGED:
        raise SchurError(
            f"Partial Schur decomposition did not converge (status={result.status.value}, "
            f"restarts={result.iterations}, matvecs={result.matvecs}). Try a larger maxiter, a larger "
            f"ncv (now {ncv}), a looser tol (now {tol:g}), or which='LM' for stochastic matrices."
        )
    return result


def partial_eig(
    A: Any,
    k: int,
    *,
    which: str = "LR",
    tol: float = 1e-10,
    maxiter: int | None = None,
    left: bool = False,
    vectors: bool = True,
    backend: str | Backend | None = None,
    throw: bool = True,
) -> EigResult:
    r"""Partial eigendecomposition :math:`A v_i = \lambda_i v_i` (and left vectors :math:`w_i^H A = \lambda_i w_i^H`).

    Computed from the partial Schur form: :math:`R Y = Y \Lambda`, :math:`V = Q Y`; left vectors
    from the partial Schur form of :math:`A^T`. Parameters as in :func:`partial_schur`.
    """
    be = _pick_backend(A, backend)
    n, _ = _check_matrix(A, be)
    if not isinstance(k, int | np.integer) or not 1 <= k < n:
        raise ValueError(f"k must be an integer with 1 <= k < n={n}, got {k!r}.")
    if which not in _WHICH:
        raise ValueError(f"which must be one of {_WHICH}, got {which!r}.")
    _check_tol(tol)
    _check_maxiter(maxiter)
    native = be.ensure_native(A)
    with timed("Computing partial eigendecomposition (k=%d, which=%r, backend=%r)", k, which, be.name):
        result = be.partial_eig(native, int(k), which=which, tol=tol, maxiter=maxiter, left=left, vectors=vectors)
    if throw and result.status is not Status.CONVERGED:
        raise SchurError(
            f"Partial eigendecomposition did not converge (status={result.status.value}). "
            f"Try a larger maxiter or a looser tol (now {tol:g})."
        )
    return result


def solve(
    A: Any,
    B: Any,
    *,
    solver: Solver | str | None = None,
    method: str | None = None,
    tol: float = 1e-10,
    maxiter: int | None = None,
    preconditioner: Any = None,
    x0: Any = None,
    restart: int | None = None,
    backend: str | Backend | None = None,
    throw: bool = True,
) -> SolveResult:
    r"""Solve :math:`A X = B` for all right-hand sides at once.

    Parameters
    ----------
    A
        Square sparse matrix ``n x n`` (SciPy or native).
    B
        ``(n,)`` or ``(n, m)`` dense right-hand sides (NumPy or backend array; not sparse).
    solver
        A solver value from :mod:`cellfate_gpu.linalg.solvers` (:class:`~.solvers.Direct`,
        :class:`~.solvers.GMRES`, :class:`~.solvers.Krylov`, :class:`~.solvers.KSP`,
        :class:`~.solvers.Auto`, or the ``result.prepared`` of an earlier solve with the same ``A``,
        which reuses its factorisation or multigrid hierarchy), or a name as for ``method``.
        Default ``Auto()``, which logs what it chose and why.
    method
        A solver name, kept for compatibility: ``"auto"``, ``"direct"``, ``"gmres"``, ``"lgmres"``,
        ``"bicgstab"``, ``"gcrotmk"``, ``"bcgs"``; with ``preconditioner``, ``restart`` and
        ``maxiter`` it maps to a value in :func:`~.solvers.solver_from_name` (the one place).
    tol
        Relative residual tolerance per column, :math:`\|b_j - A x_j\| \le tol \|b_j\|`. It is
        checked on the true residual for *every* solver, direct ones included: a result whose
        residual exceeds ``tol`` (beyond rounding, a factor 10) is not ``CONVERGED``.
    maxiter
        Maximum total number of iterations (GMRES steps; per column for column-wise solvers).
    preconditioner
        With ``method``: ``None``, ``"jacobi"``, ``"ilu"``, ``"amg"``, a value, a callable, or a
        PETSc PC name on ``petsc``. With a solver value, set it in the value instead.
    x0
        Initial guess, same shape as ``B``.
    restart
        With ``method``: GMRES restart length (a positive integer).
    backend, throw
        As in :func:`partial_schur`; ``throw`` raises :class:`SolveError` on a bad status.

    Returns
    -------
    SolveResult
        ``X`` on the backend, ``status``, ``residual_norms`` (host, relative, one per column),
        ``matvecs``, ``prepared`` (pass it back as ``solver=`` to reuse the set-up).
    """
    be = _pick_backend(A, backend)
    n, _ = _check_matrix(A, be)
    _check_tol(tol)
    _check_maxiter(maxiter)
    if restart is not None and (isinstance(restart, bool) or not isinstance(restart, int | np.integer) or restart < 1):
        raise ValueError(f"restart must be a positive integer or None, got {restart!r}.")
    if sp.issparse(B):
        raise TypeError(
            f"B must be a dense array, got a sparse {type(B).__name__}; pass B.toarray() "
            "(the solution of a sparse right-hand side is dense anyway)."
        )
    bshape = tuple(getattr(B, "shape", np.shape(B)))
    if len(bshape) not in (1, 2) or bshape[0] != n:
        raise ValueError(f"B must have shape ({n},) or ({n}, m) to match A, got shape {bshape}.")
    if isinstance(B, np.ndarray) and not np.all(np.isfinite(B)):
        raise ValueError(f"B contains non-finite values ({int(np.sum(~np.isfinite(B)))} entries).")
    if x0 is not None and tuple(getattr(x0, "shape", np.shape(x0))) != bshape:
        raise ValueError(f"x0 must have the shape of B {bshape}, got {tuple(np.shape(x0))}.")
    if solver is not None and method is not None:
        raise ValueError(f"Pass either solver= or method=, not both (got solver={solver!r}, method={method!r}).")
    if isinstance(solver, Solver):
        if preconditioner is not None or restart is not None:
            raise ValueError(
                f"preconditioner= and restart= go into the solver value ({solver!r}), e.g. "
                "GMRES(restart=50, preconditioner=AMG())."
            )
        value = solver
    else:
        name = solver if solver is not None else method if method is not None else "auto"
        if not isinstance(name, str):
            raise TypeError(f"solver must be a Solver value or a name, got {type(name).__name__}.")
        value = solver_from_name(name, preconditioner=preconditioner, restart=restart, maxiter=maxiter, backend=be)
    native = be.ensure_native(A)
    Bb = B if not isinstance(B, np.ndarray) or be.host_is_free else be.asarray(B)
    if x0 is not None and isinstance(x0, np.ndarray) and not be.host_is_free:
        x0 = be.asarray(x0)
    ncols = 1 if len(bshape) == 1 else bshape[1]
    prepared = value.prepare(be, native)
    with timed("Solving %d linear system(s) of size %d (%r, backend=%r)", ncols, n, prepared.solver, be.name) as t:
        result = prepared.run(Bb, tol, maxiter, x0)
        t["note"] = f"iterations={result.iterations}, matvecs={result.matvecs}"
    result = _checked_against_tol(result, tol)
    result = dataclasses.replace(result, prepared=prepared)
    if throw and result.status is not Status.CONVERGED:
        raise SolveError(_not_converged_message(result, tol, n))
    return result


#: A result's true relative residual may exceed ``tol`` by rounding (a recurrence-based stopping
#: test, the last update of X); up to this factor it is still ``CONVERGED``.
RESIDUAL_SLACK = 10.0


def _checked_against_tol(result: SolveResult, tol: float) -> SolveResult:
    """Every solver's result is checked on its true residual: ``CONVERGED`` needs ``max res <= 10 tol``."""
    res = result.residual_norms
    if result.status is not Status.CONVERGED or res is None:
        return result
    worst = float(np.max(res)) if np.size(res) else 0.0
    if np.isfinite(worst) and worst <= RESIDUAL_SLACK * tol:
        return result
    return dataclasses.replace(
        result,
        status=Status.BREAKDOWN,
        message=(
            f"{result.method} finished but the true relative residual is {worst:.3g} > tol={tol:g}: "
            "A is singular or numerically singular"
        ),
    )


def _not_converged_message(result: SolveResult, tol: float, n: int) -> str:
    worst = float(np.max(result.residual_norms)) if result.residual_norms is not None else float("nan")
    why = f" ({result.message})" if result.message else ""
    return (
        f"Linear solve did not converge (status={result.status.value}, method={result.method!r}, "
        f"worst relative residual {worst:.3g} > tol={tol:g} after {result.iterations} iterations){why}. "
        "Try: a larger maxiter; GMRES(restart=100, preconditioner=AMG()) (pyamg) or "
        "preconditioner='ilu' / 'jacobi'; method='direct' (Direct()) for small n "
        f"(n={n}); or a looser tol. If a direct solve fails too, A is singular (for I - Q: some cells "
        "reach no absorbing state)."
    )
