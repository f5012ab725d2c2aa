r"""Linear solvers as values: small frozen objects passed to :func:`cellfate_gpu.linalg.solve`.

A solver value says *how* to solve :math:`A X = B`; :func:`~cellfate_gpu.linalg.solve` says on what.
Each value is immutable and hashable (compare, log, reuse it freely):

* :class:`Direct` — sparse LU (SuperLU on ``scipy``; KSPPREONLY + PCLU on ``petsc``), one
  factorisation for every right-hand side;
* :class:`GMRES` — restarted, right-preconditioned block GMRES over all columns at once (the
  generic code in :mod:`cellfate_gpu.linalg.gmres` on ``scipy``/``cupy``/``jax``; KSPGMRES on
  ``petsc``);
* :class:`Krylov` — SciPy's ``lgmres``, ``bicgstab`` or ``gcrotmk`` column by column (CellRank's
  solver names; KSPLGMRES/KSPBCGS/KSPGCR on ``petsc``);
* :class:`KSP` — any PETSc KSP with any PC (``petsc`` only);
* :class:`Auto` — decides among the above from the matrix and the backend, in one place
  (:meth:`Auto.choose`, which returns the choice and the reason, and is logged);
* preconditioners :class:`Jacobi`, :class:`ILU` and :class:`AMG` (pyamg smoothed aggregation
  or Ruge-Stüben, as a V-cycle).

Reusable state (a factorisation, a multigrid hierarchy) never lives in a module global: a solver is
*prepared* for one matrix (:meth:`Solver.prepare`, an O(setup) step) into a :class:`Prepared`
value, which is itself a solver. Every :class:`~cellfate_gpu.backends.SolveResult` carries the
``prepared`` solver it used, so a caller that solves with the same matrix again passes it back::

    first = solve(A, B1)                       # factorises / builds the hierarchy
    second = solve(A, B2, solver=first.prepared)  # reuses it (checked to be the same matrix)

Backends say which operations they implement (:meth:`Backend.can_run`); a value that a backend
cannot run raises :class:`SolverUnavailableError` with the backend's reason, never runs elsewhere.
"""

from __future__ import annotations

import abc
import dataclasses
import time
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, final

import numpy as np
import scipy.sparse as sp

from cellfate_gpu._logging import info, warning
from cellfate_gpu.backends._results import SolveResult, Status

__all__ = [
    "AMG",
    "GMRES",
    "ILU",
    "KSP",
    "Auto",
    "Direct",
    "Jacobi",
    "Krylov",
    "Preconditioner",
    "Prepared",
    "Solver",
    "SolverUnavailableError",
    "preconditioner_from_name",
    "solver_from_name",
]

#: Names accepted by :func:`solver_from_name` (CellRank's names included).
SOLVER_NAMES = ("auto", "direct", "gmres", "block_gmres", "lgmres", "bicgstab", "bcgs", "gcrotmk")
#: PETSc KSP type of each CellRank/SciPy Krylov name.
_PETSC_KSP = {"gmres": "gmres", "lgmres": "lgmres", "bicgstab": "bcgs", "bcgs": "bcgs", "gcrotmk": "gcr"}


class SolverUnavailableError(ValueError):
    """The backend does not implement what the solver value needs (the message says why)."""


def _require(backend: Any, operation: str, what: str) -> None:
    ok, reason = backend.can_run(operation)
    if not ok:
        raise SolverUnavailableError(f"{what} cannot run on the {backend.name!r} backend: {reason}.")


def _fingerprint(backend: Any, A: Any) -> tuple:
    """Identity of a matrix: shape, nnz and a hash of its CSR arrays.

    Equal matrices give equal fingerprints; a different matrix passed with a :class:`Prepared`
    solver is refused. On host backends every entry is hashed (O(nnz), milliseconds at 1M rows);
    on device backends a strided sample of 4096 entries is read, so that no full copy crosses.
    """
    shape = tuple(int(s) for s in A.shape)
    data, indices, indptr = backend.csr_components(A)
    nnz = int(data.shape[0])
    step = 1 if backend.host_is_free else max(1, nnz // 4096)
    parts = (data[::step], indices[::step], indptr[:: max(1, step)])
    return (backend.name, shape, nnz, hash(b"".join(backend.to_host(p).tobytes() for p in parts)))


# ---------------------------------------------------------------------- preconditioners
class Preconditioner(abc.ABC):
    """A preconditioner value; :meth:`setup` builds :math:`M^{-1}` for one matrix."""

    #: The backend operation the set-up needs (see :meth:`Backend.can_run`).
    operation: ClassVar[str]
    #: The PETSc PC type the value maps to on the ``petsc`` backend.
    petsc_pc: ClassVar[str]

    @abc.abstractmethod
    def setup(self, backend: Any, A: Any) -> Callable[[Any], Any]:
        """Return ``apply(X) = M^{-1} X`` for an ``(n, s)`` backend block (after the set-up work)."""


@final
@dataclasses.dataclass(frozen=True)
class Jacobi(Preconditioner):
    r"""Inverse diagonal :math:`M^{-1} = \mathrm{diag}(A)^{-1}` (zero diagonal entries left unscaled); every backend."""

    operation: ClassVar[str] = "precond.jacobi"
    petsc_pc: ClassVar[str] = "jacobi"

    def setup(self, backend: Any, A: Any) -> Callable[[Any], Any]:
        from cellfate_gpu.linalg.gmres import jacobi_preconditioner

        _require(backend, self.operation, "Jacobi()")
        return jacobi_preconditioner(backend, A)


@final
@dataclasses.dataclass(frozen=True)
class ILU(Preconditioner):
    """Incomplete LU with threshold pivoting (SuperLU's ILUTP, :func:`scipy.sparse.linalg.spilu`); host backends.

    Parameters
    ----------
    drop_tol
        Entries of L and U below ``drop_tol`` (relative) are dropped.
    fill_factor
        Bound on the fill of L + U relative to ``A``.
    """

    drop_tol: float = 1e-5
    fill_factor: float = 10.0
    operation: ClassVar[str] = "precond.ilu"
    petsc_pc: ClassVar[str] = "ilu"

    def setup(self, backend: Any, A: Any) -> Callable[[Any], Any]:
        import scipy.sparse.linalg as spla

        _require(backend, self.operation, "ILU()")
        ilu = spla.spilu(sp.csc_matrix(backend.to_scipy_csr(A)), drop_tol=self.drop_tol, fill_factor=self.fill_factor)
        return lambda X: ilu.solve(np.asarray(X))


@final
@dataclasses.dataclass(frozen=True)
class AMG(Preconditioner):
    r"""One algebraic-multigrid V-cycle of pyamg as :math:`M^{-1}` (host backends; ``pip install pyamg``).

    :math:`I - Q` of a kNN Markov chain is an M-matrix whose slow modes are smooth over the graph,
    which is what aggregation-based coarse spaces capture; on the user-like 20k atlas a V-cycle
    makes GMRES converge in about 10 iterations per lineage where Jacobi or ILU need hundreds.

    Parameters
    ----------
    kind
        ``"sa"`` smoothed aggregation (:func:`pyamg.smoothed_aggregation_solver`, default) or
        ``"rs"`` classical Ruge-Stüben (:func:`pyamg.ruge_stuben_solver`).
    symmetry
        Passed to smoothed aggregation; ``I - Q`` is not symmetric, hence ``"nonsymmetric"``.
    max_coarse
        Size of the coarsest level (solved directly).
    cycle
        ``"V"``, ``"W"`` or ``"F"``.
    """

    kind: str = "sa"
    symmetry: str = "nonsymmetric"
    max_coarse: int = 500
    cycle: str = "V"
    operation: ClassVar[str] = "precond.amg"
    petsc_pc: ClassVar[str] = "gamg"

    def __post_init__(self) -> None:
        if self.kind not in ("sa", "rs"):
            raise ValueError(f"AMG kind must be 'sa' or 'rs', got {self.kind!r}.")
        if self.cycle not in ("V", "W", "F"):
            raise ValueError(f"AMG cycle must be 'V', 'W' or 'F', got {self.cycle!r}.")

    def setup(self, backend: Any, A: Any) -> Callable[[Any], Any]:
        _require(backend, self.operation, "AMG()")
        try:
            import pyamg
        except ImportError as err:
            raise SolverUnavailableError(
                "AMG() needs pyamg: pip install pyamg (or pip install 'cellfate_gpu[amg]')."
            ) from err
        Ah = sp.csr_matrix(backend.to_scipy_csr(A), dtype=np.float64)
        started = time.perf_counter()
        if self.kind == "sa":
            ml = pyamg.smoothed_aggregation_solver(Ah, symmetry=self.symmetry, max_coarse=self.max_coarse)
        else:
            ml = pyamg.ruge_stuben_solver(Ah, max_coarse=self.max_coarse)
        info(
            "    AMG(%s) hierarchy: %d levels, operator complexity %.2f, set-up %.2fs (host)",
            self.kind,
            len(ml.levels),
            ml.operator_complexity(),
            time.perf_counter() - started,
        )
        M = ml.aspreconditioner(cycle=self.cycle)

        def apply(X: Any) -> Any:
            X = np.asarray(X)
            if X.ndim == 1:
                return M.matvec(X)
            return np.stack([M.matvec(X[:, c]) for c in range(X.shape[1])], axis=1)

        return apply


def preconditioner_from_name(name: str | Preconditioner | Callable | None) -> Preconditioner | Callable | None:
    """``None``/``"none"``, ``"jacobi"``, ``"ilu"``, ``"amg"``/``"pyamg"``/``"sa"``, ``"rs"``, a value or a callable."""
    if name is None or isinstance(name, Preconditioner) or (callable(name) and not isinstance(name, str)):
        return None if name is None else name
    if not isinstance(name, str):
        raise TypeError(f"preconditioner must be a name, a Preconditioner value or a callable, got {name!r}.")
    key = name.lower()
    table: dict[str, Preconditioner | None] = {
        "none": None,
        "jacobi": Jacobi(),
        "ilu": ILU(),
        "amg": AMG(),
        "pyamg": AMG(),
        "sa": AMG(),
        "rs": AMG(kind="rs"),
    }
    if key not in table:
        raise ValueError(
            f"Unknown preconditioner {name!r}; use one of {sorted(table)}, a Preconditioner value "
            "(Jacobi(), ILU(), AMG()), a callable, or KSP(pc_type=...) on the petsc backend."
        )
    return table[key]


# ---------------------------------------------------------------------- solvers
class Solver(abc.ABC):
    """A solver value. :meth:`prepare` binds it to one matrix on one backend (the set-up work)."""

    @abc.abstractmethod
    def prepare(self, backend: Any, A: Any) -> Prepared:
        """Do the matrix-dependent set-up (factorisation, hierarchy) once; return a :class:`Prepared`."""


@final
@dataclasses.dataclass(frozen=True, eq=False)
class Prepared(Solver):
    """A solver bound to one matrix, with its reusable state (a factorisation, a preconditioner).

    Attributes
    ----------
    solver
        The value it was prepared from (what is logged and reported).
    backend
        Name of the backend it runs on.
    fingerprint
        Identity of the matrix (see :func:`_fingerprint`); a different matrix is refused.
    run
        ``run(B, tol, maxiter, x0) -> SolveResult``.
    """

    solver: Solver
    backend: str
    fingerprint: tuple
    run: Callable[..., SolveResult] = dataclasses.field(repr=False)

    def prepare(self, backend: Any, A: Any) -> Prepared:
        if backend.name != self.backend:
            raise ValueError(f"This solver was prepared on backend {self.backend!r}, not {backend.name!r}.")
        if _fingerprint(backend, A) != self.fingerprint:
            raise ValueError(
                f"This prepared {self.solver!r} belongs to another matrix (shape, nnz or entries differ); "
                "pass the solver value itself to prepare it for this matrix."
            )
        return self


def _prepared(solver: Solver, backend: Any, A: Any, run: Callable[..., SolveResult]) -> Prepared:
    return Prepared(solver=solver, backend=backend.name, fingerprint=_fingerprint(backend, A), run=run)


@final
@dataclasses.dataclass(frozen=True)
class Direct(Solver):
    """Sparse LU, one factorisation for every right-hand side (``scipy``: SuperLU; ``petsc``: PCLU).

    The factors live in the :class:`Prepared` value (``result.prepared``), not in a global. Memory is
    the fill of L + U, which on kNN graphs of high-dimensional data can be 100x ``nnz(A)``:
    :class:`Auto` only picks it for small systems.
    """

    def prepare(self, backend: Any, A: Any) -> Prepared:
        _require(backend, "solve.direct", "Direct()")
        factor = backend.factorize(A)
        return _prepared(self, backend, A, lambda B, tol, maxiter, x0: backend.solve_factorized(factor, A, B))


def _check_positive(name: str, value: Any) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1):
        raise ValueError(f"{name} must be a positive integer or None, got {value!r}.")


@final
@dataclasses.dataclass(frozen=True)
class GMRES(Solver):
    r"""Restarted, right-preconditioned block GMRES: every column advances together, one SpMM per step.

    Parameters
    ----------
    restart
        Cycle length ``m`` (default 30); memory is about ``(m + 1) n s`` float64 values.
    maxiter
        Total number of GMRES steps (default ``min(20 n, 20000)``); ``solve(maxiter=...)`` overrides it.
    preconditioner
        ``None``, :class:`Jacobi`, :class:`ILU`, :class:`AMG` (or a callable ``X -> M^{-1} X``).
    """

    restart: int | None = None
    maxiter: int | None = None
    preconditioner: Preconditioner | Callable | None = None

    def __post_init__(self) -> None:
        _check_positive("restart", self.restart)
        _check_positive("maxiter", self.maxiter)
        if self.preconditioner is not None and not (
            isinstance(self.preconditioner, Preconditioner) or callable(self.preconditioner)
        ):
            raise TypeError(
                f"GMRES preconditioner must be a Preconditioner value or a callable, got {self.preconditioner!r} "
                "(names: preconditioner_from_name)."
            )

    def prepare(self, backend: Any, A: Any) -> Prepared:
        if not backend.can_run("solve.gmres")[0] and backend.can_run("solve.ksp")[0]:
            # The backend's own GMRES (PETSc's KSPGMRES) is the same method on its engine.
            pc = self.preconditioner
            if pc is not None and not isinstance(pc, Preconditioner):
                raise SolverUnavailableError("A callable preconditioner cannot run inside PETSc; use KSP(pc_type=...).")
            ksp = KSP(ksp_type="gmres", pc_type=pc.petsc_pc if pc is not None else None, restart=self.restart)
            info("    GMRES(...) on the %r backend runs as %r", backend.name, ksp)
            inner = ksp.prepare(backend, A)
            return dataclasses.replace(inner, solver=self)
        _require(backend, "solve.gmres", "GMRES()")
        pc = self.preconditioner
        apply = pc.setup(backend, A) if isinstance(pc, Preconditioner) else pc

        def run(B: Any, tol: float, maxiter: int | None, x0: Any) -> SolveResult:
            from cellfate_gpu.linalg.gmres import block_gmres

            return block_gmres(
                backend,
                A,
                B,
                tol=tol,
                maxiter=maxiter if maxiter is not None else self.maxiter,
                restart=self.restart,
                preconditioner=apply,
                x0=x0,
            )

        return _prepared(self, backend, A, run)


@final
@dataclasses.dataclass(frozen=True)
class Krylov(Solver):
    """SciPy's ``lgmres``, ``bicgstab`` or ``gcrotmk``, one column at a time (CellRank's solver names).

    On ``petsc`` these run as KSPLGMRES, KSPBCGS and KSPGCR. Prefer :class:`GMRES` elsewhere: it
    advances all columns with one SpMM per step.
    """

    method: str = "lgmres"
    maxiter: int | None = None
    preconditioner: Preconditioner | Callable | None = None

    def __post_init__(self) -> None:
        if self.method not in ("lgmres", "bicgstab", "gcrotmk"):
            raise ValueError(f"Krylov method must be 'lgmres', 'bicgstab' or 'gcrotmk', got {self.method!r}.")
        _check_positive("maxiter", self.maxiter)

    def prepare(self, backend: Any, A: Any) -> Prepared:
        if not backend.can_run("solve.scipy_krylov")[0] and backend.can_run("solve.ksp")[0]:
            pc = self.preconditioner
            ksp = KSP(ksp_type=_PETSC_KSP[self.method], pc_type=getattr(pc, "petsc_pc", None))
            info("    Krylov(%r) on the %r backend runs as %r", self.method, backend.name, ksp)
            return dataclasses.replace(ksp.prepare(backend, A), solver=self)
        _require(backend, "solve.scipy_krylov", f"Krylov({self.method!r})")
        import scipy.sparse.linalg as spla

        pc = self.preconditioner
        apply = pc.setup(backend, A) if isinstance(pc, Preconditioner) else pc
        n = int(A.shape[0])
        M = None if apply is None else spla.LinearOperator((n, n), matvec=lambda v: np.asarray(apply(v)).ravel())
        fn = getattr(spla, self.method)

        def run(B: Any, tol: float, maxiter: int | None, x0: Any) -> SolveResult:
            started = time.perf_counter()
            B2 = np.asarray(B, dtype=np.float64).reshape(n, -1)
            X0 = None if x0 is None else np.asarray(x0, dtype=np.float64).reshape(n, -1)
            X = np.zeros_like(B2)
            its, statuses = 0, []
            limit = maxiter if maxiter is not None else self.maxiter
            # SciPy's own default (1000 outer cycles for lgmres/gcrotmk, 10 n for bicgstab) when unset:
            # passing None crashes lgmres and gcrotmk.
            budget = {} if limit is None else {"maxiter": int(limit)}
            for c in range(B2.shape[1]):
                count = [0]

                def step(_: Any, count: list = count) -> None:
                    count[0] += 1

                x, flag = fn(
                    A,
                    B2[:, c],
                    x0=None if X0 is None else X0[:, c],
                    rtol=tol,
                    atol=0.0,
                    M=M,
                    **budget,
                    callback=step,
                )
                X[:, c] = x
                its += count[0]
                statuses.append(Status.CONVERGED if flag == 0 else Status.MAX_ITER if flag > 0 else Status.BREAKDOWN)
            bnorm = np.linalg.norm(B2, axis=0)
            res = np.linalg.norm(B2 - A @ X, axis=0) / np.where(bnorm > 0, bnorm, 1.0)
            worst = max(statuses, key=[Status.CONVERGED, Status.MAX_ITER, Status.BREAKDOWN].index)
            return SolveResult(
                status=worst,
                iterations=its,
                matvecs=its,
                seconds=time.perf_counter() - started,
                backend=backend.name,
                X=X.reshape(np.shape(B)),
                residual_norms=res,
                method=f"scipy:{self.method}",
            )

        return _prepared(self, backend, A, run)


@final
@dataclasses.dataclass(frozen=True)
class KSP(Solver):
    """A PETSc KSP with any PC (``petsc`` backend only).

    Parameters
    ----------
    ksp_type
        PETSc KSP type (``"gmres"``, ``"bcgs"``, ``"lgmres"``, ``"gcr"``, ``"preonly"`` for a direct solve, ...).
    pc_type
        PETSc PC type (``None``: PETSc's default, ILU(0) on one rank, block Jacobi on several;
        ``"jacobi"``, ``"bjacobi"``, ``"asm"``, ``"gamg"``, ``"hypre"``, ``"lu"``, ``"none"``).
    options
        Further PETSc options for this solve only, e.g. ``{"ksp_gmres_restart": 100}``; they are put
        into PETSc's options database around the set-up and removed afterwards.
    restart
        GMRES restart length.
    """

    ksp_type: str = "gmres"
    pc_type: str | None = None
    options: tuple[tuple[str, str | None], ...] | Mapping[str, Any] = ()
    restart: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.options, Mapping):
            items = tuple(sorted((str(k).lstrip("-"), None if v is None else str(v)) for k, v in self.options.items()))
            object.__setattr__(self, "options", items)
        _check_positive("restart", self.restart)

    def prepare(self, backend: Any, A: Any) -> Prepared:
        _require(backend, "solve.ksp", repr(self))

        def run(B: Any, tol: float, maxiter: int | None, x0: Any) -> SolveResult:
            return backend.solve_ksp(
                A,
                B,
                ksp_type=self.ksp_type,
                pc_type=self.pc_type,
                options=dict(self.options),
                tol=tol,
                maxiter=maxiter,
                x0=x0,
                restart=self.restart,
            )

        return _prepared(self, backend, A, run)


@final
@dataclasses.dataclass(frozen=True)
class Auto(Solver):
    r"""Choose a solver from the matrix and the backend, in one place (:meth:`choose`), and log why.

    The rule, measured on kNN Markov chains (docs/benchmarks.md):

    1. ``petsc``: :class:`KSP` GMRES with PETSc's algebraic multigrid (PCGAMG) above
       ``direct_max_n`` unknowns. On the 100k atlas (one rank, tol 1e-10) it takes 4.9 s where
       PETSc's default PC (ILU(0); block Jacobi + ILU(0) on several ranks) takes 25.2 s, and on 2
       ranks at 300k the default PC stopped at the iteration limit (residual 2e-9 for tol 1e-10).
       Up to ``direct_max_n`` unknowns: GMRES with PETSc's default PC (GAMG's set-up fails on some
       tiny systems, ``DIVERGED_PCSETUP_FAILED``, and buys nothing there). Should PCGAMG's set-up
       fail on a large system, the solve is repeated once with the default PC, with a warning.
    2. Backends without sparse LU (``cupy``, ``jax``): :class:`GMRES` with :class:`Jacobi`.
    3. ``scipy`` with at most ``direct_max_n`` unknowns: :class:`Direct` (any fill is cheap there).
    4. ``scipy`` and pyamg installed: :class:`GMRES` with an :class:`AMG` V-cycle. SuperLU's fill on
       kNN graphs of high-dimensional data grows much faster than ``n`` (19 minutes and 8.6 GB
       unfinished at 100k cells of a user-like atlas), while AMG-GMRES stays near linear.
    5. ``scipy`` without pyamg: :class:`Direct` when a bound on the fill of L + U, the profile of
       ``A`` in reverse Cuthill-McKee order (an O(nnz) computation), is at most
       ``fill_limit * nnz(A)``; else :class:`GMRES` with :class:`ILU`.

    Parameters
    ----------
    direct_max_n
        Largest system that is always factorised directly.
    fill_limit
        Largest accepted fill bound relative to ``nnz(A)`` (rule 5).
    restart
        GMRES restart length of the iterative choices.
    """

    direct_max_n: int = 5_000
    fill_limit: float = 40.0
    restart: int | None = None

    def choose(self, A: Any, backend: Any) -> tuple[Solver, str]:
        """Return ``(solver, reason)`` for matrix ``A`` on ``backend`` (no set-up work is done)."""
        n = int(A.shape[0])
        if backend.can_run("solve.ksp")[0] and not backend.can_run("solve.gmres")[0]:
            if n <= self.direct_max_n:
                return (
                    KSP(ksp_type="gmres", restart=self.restart),
                    f"the {backend.name!r} backend solves with PETSc KSP; n={n} <= direct_max_n="
                    f"{self.direct_max_n}: GMRES with PETSc's default PC",
                )
            return (
                KSP(ksp_type="gmres", pc_type="gamg", restart=self.restart),
                f"the {backend.name!r} backend solves with PETSc KSP; GMRES with algebraic multigrid (PCGAMG)",
            )
        if not backend.can_run("solve.direct")[0]:
            return (
                GMRES(restart=self.restart, preconditioner=Jacobi()),
                f"the {backend.name!r} backend has no sparse LU; block GMRES with Jacobi runs on the device",
            )
        if n <= self.direct_max_n:
            return Direct(), f"n={n} <= direct_max_n={self.direct_max_n}"
        amg_ok, why_not = backend.can_run("precond.amg")
        if amg_ok:
            return (
                GMRES(restart=self.restart, preconditioner=AMG()),
                f"n={n} > direct_max_n={self.direct_max_n}: block GMRES with an AMG V-cycle (pyamg)",
            )
        bound = _rcm_profile(backend.to_scipy_csr(A))
        nnz = int(backend.csr_components(A)[0].shape[0])
        if bound <= self.fill_limit * nnz:
            return Direct(), f"no AMG ({why_not}); fill bound {bound / nnz:.1f} x nnz <= fill_limit={self.fill_limit:g}"
        return (
            GMRES(restart=self.restart, preconditioner=ILU()),
            f"no AMG ({why_not}); fill bound {bound / nnz:.1f} x nnz > fill_limit={self.fill_limit:g}",
        )

    def prepare(self, backend: Any, A: Any) -> Prepared:
        chosen, reason = self.choose(A, backend)
        info("    Solver Auto() chose %r: %s", chosen, reason)
        prepared = chosen.prepare(backend, A)
        if not (isinstance(chosen, KSP) and chosen.pc_type == "gamg"):
            return prepared
        fallback = KSP(ksp_type=chosen.ksp_type, restart=chosen.restart)

        def run(B: Any, tol: float, maxiter: int | None, x0: Any) -> SolveResult:
            result = prepared.run(B, tol, maxiter, x0)
            if "DIVERGED_PCSETUP_FAILED" not in result.message:
                return result
            warning("    PCGAMG's set-up failed (%s); solving again with %r", result.message, fallback)
            return fallback.prepare(backend, A).run(B, tol, maxiter, x0)

        return _prepared(chosen, backend, A, run)


def _rcm_profile(A: sp.csr_matrix) -> int:
    r"""Profile (envelope size) of :math:`A + A^T` in reverse Cuthill-McKee order: a bound on the fill of LU.

    LU without pivoting keeps its factors inside the envelope, so
    :math:`\mathrm{nnz}(L + U) \le 2 \sum_i (i - \min\{j : a_{ij} \ne 0\}) + n`; SuperLU's COLAMD
    ordering usually does better, so this is a safe (pessimistic) bound.
    """
    from scipy.sparse.csgraph import reverse_cuthill_mckee

    S = sp.csr_matrix(A + A.T)
    perm = reverse_cuthill_mckee(S, symmetric_mode=True)
    P = S[perm][:, perm].tocsr()
    n = P.shape[0]
    rows = np.repeat(np.arange(n), np.diff(P.indptr))
    first = np.full(n, n, dtype=np.int64)
    np.minimum.at(first, rows, P.indices)
    width = np.maximum(np.arange(n) - np.minimum(first, np.arange(n)), 0)
    return int(2 * width.sum() + n)


def solver_from_name(
    name: str,
    *,
    preconditioner: Any = None,
    restart: int | None = None,
    maxiter: int | None = None,
    backend: Any = None,
) -> Solver:
    """The one place where solver names (``method=``, CellRank's ``solver=``) become values.

    ``"auto"`` → :class:`Auto`; ``"direct"`` → :class:`Direct`; ``"gmres"`` → :class:`GMRES`;
    ``"lgmres"``, ``"bicgstab"``, ``"gcrotmk"`` → :class:`Krylov`; ``"bcgs"`` → ``KSP("bcgs")`` on
    ``petsc``, else ``Krylov("bicgstab")``. On ``petsc`` a preconditioner name that is not one of
    ours (``"bjacobi"``, ``"asm"``, ``"gamg"``, ...) becomes ``KSP(pc_type=name)``.
    """
    if not isinstance(name, str) or name.lower() not in SOLVER_NAMES:
        raise ValueError(f"method must be one of {SOLVER_NAMES} or a Solver value, got {name!r}.")
    key = name.lower()
    on_petsc = backend is not None and backend.can_run("solve.ksp")[0] and not backend.can_run("solve.gmres")[0]
    if on_petsc and isinstance(preconditioner, str) and preconditioner.lower() not in ("jacobi", "ilu", "amg"):
        pc_type = preconditioner.lower()
        if key in ("auto", "gmres", "block_gmres", "lgmres", "bicgstab", "bcgs", "gcrotmk"):
            ksp_type = "gmres" if key in ("auto", "block_gmres") else _PETSC_KSP[key]
            return KSP(ksp_type=ksp_type, pc_type=pc_type, restart=restart)
    pc = preconditioner_from_name(preconditioner)
    if key == "auto":
        if pc is not None:
            return GMRES(restart=restart, maxiter=maxiter, preconditioner=pc)
        return Auto(restart=restart)
    if key == "direct":
        return Direct()
    if key in ("gmres", "block_gmres"):
        return GMRES(restart=restart, maxiter=maxiter, preconditioner=pc)
    if key == "bcgs" and on_petsc:
        return KSP(ksp_type="bcgs", pc_type=getattr(pc, "petsc_pc", None))
    return Krylov(method="bicgstab" if key == "bcgs" else key, maxiter=maxiter, preconditioner=pc)
