"""The backend contract.

A backend owns where arrays live and how the three heavy operations run on them:

* building T: row-wise CSR primitives (:meth:`Backend.segment_sum`, :meth:`Backend.segment_max`,
  :meth:`Backend.row_ids`, gathers through :attr:`Backend.xp`) and sparse algebra;
* absorption solves: :meth:`Backend.solve` (default: the generic block GMRES in
  :mod:`cellfate_gpu.linalg.gmres`);
* partial real Schur decompositions: :meth:`Backend.partial_schur` (default: the generic
  Krylov-Schur in :mod:`cellfate_gpu.linalg.krylov_schur`).

Host <-> backend moves happen only in :meth:`asarray`, :meth:`to_host`, :meth:`from_scipy_csr` and
:meth:`to_scipy_csr`; each is logged at DEBUG with its size, so a run's transfers can be audited.
"""

from __future__ import annotations

import abc
import dataclasses
from typing import Any, final

import numpy as np
import scipy.sparse as sp

from cellfate_gpu._logging import logger
from cellfate_gpu.backends._counting import counted_spmm
from cellfate_gpu.backends._results import EigResult, SchurResult, SolveResult

__all__ = ["Backend", "host_csr"]


def host_csr(A: Any) -> Any:
    """SciPy sparse ``A`` as it is; another backend's native matrix moved to the host by its owner.

    The move is the owning backend's :meth:`Backend.to_scipy_csr` (a named, logged transfer), so a
    matrix that lives on a device (a ``cupyx`` CSR in ``adata.obsp``, say) can feed a host backend
    without an implicit conversion.

    Raises
    ------
    TypeError
        ``A`` is neither SciPy sparse nor the native matrix of a usable backend.
    """
    if sp.issparse(A):
        return A
    from cellfate_gpu.backends import backend_of

    owner = backend_of(A)
    if owner is None:
        raise TypeError(
            f"Expected a SciPy sparse matrix or a backend's native sparse matrix, got {type(A).__module__}."
            f"{type(A).__name__}."
        )
    return owner.to_scipy_csr(A)


class Backend(abc.ABC):
    """Abstract base of every backend (each concrete backend is a final class).

    Subclasses set :attr:`name`, :attr:`extra` (the pip extra that installs it) and implement the
    abstract methods (the SpMM as :meth:`_spmm`; the public :meth:`spmm` is final).  Generic defaults
    (solve, partial Schur, partial eig) are written against :attr:`xp`, :meth:`spmm`, :meth:`to_host`
    and :meth:`asarray`, so a backend with a working array namespace and SpMM gets the Krylov
    algorithms for free.
    """

    name: str = ""
    extra: str = ""
    #: Whether :meth:`to_host` costs nothing (host backends); lets generic code check
    #: convergence every iteration instead of once per restart.
    host_is_free: bool = False
    #: Whether backend arrays support item assignment (JAX arrays do not); generic code then
    #: preallocates Krylov bases instead of stacking lists of vectors.
    mutable_arrays: bool = True

    # ---------------------------------------------------------------- availability
    @classmethod
    @abc.abstractmethod
    def why_unavailable(cls) -> str | None:
        """Return ``None`` if usable, else a sentence saying why not and how to fix it.

        Must have no side effects beyond importing optional modules.
        """

    @classmethod
    def available(cls) -> bool:
        """Whether this backend can run here."""
        return cls.why_unavailable() is None

    # ---------------------------------------------------------------- arrays
    @property
    @abc.abstractmethod
    def xp(self) -> Any:
        """Array namespace (array-API compatible) of this backend's dense arrays."""

    @abc.abstractmethod
    def asarray(self, x: Any, dtype: Any = None) -> Any:
        """Move a host array to the backend (a logged transfer)."""

    @abc.abstractmethod
    def to_host(self, x: Any) -> np.ndarray:
        """Move a backend array to a NumPy array on the host (a logged transfer)."""

    @abc.abstractmethod
    def from_scipy_csr(self, A: sp.csr_array | sp.csr_matrix, dtype: Any = None) -> Any:
        """Move a host CSR matrix to the backend's native sparse matrix (a logged transfer).

        Another backend's native matrix is accepted too and first moved to the host by its owner
        (:func:`host_csr`); a device backend may take its own native matrices without a transfer
        (a cast copy on the device).
        """

    @abc.abstractmethod
    def to_scipy_csr(self, A: Any) -> sp.csr_matrix:
        """Move a native sparse matrix to a SciPy CSR matrix on the host (a logged transfer)."""

    @abc.abstractmethod
    def is_native(self, A: Any) -> bool:
        """Whether ``A`` is this backend's native sparse matrix."""

    def ensure_native(self, A: Any) -> Any:
        """Return ``A`` as a native matrix, transferring SciPy sparse input (logged)."""
        if self.is_native(A):
            return A
        if sp.issparse(A):
            return self.from_scipy_csr(sp.csr_matrix(A))
        raise TypeError(f"Expected a SciPy sparse matrix or a native {self.name!r} matrix, got {type(A).__name__}.")

    # ---------------------------------------------------------------- CSR primitives
    @abc.abstractmethod
    def csr_components(self, A: Any) -> tuple[Any, Any, Any]:
        """Return ``(data, indices, indptr)`` of a canonical native CSR matrix as backend arrays."""

    @abc.abstractmethod
    def csr_from_components(self, data: Any, indices: Any, indptr: Any, shape: tuple[int, int]) -> Any:
        """Build a native CSR matrix from backend arrays (sorted indices, no duplicates assumed)."""

    @abc.abstractmethod
    def segment_sum(self, values: Any, indptr: Any) -> Any:
        """Per-row sums ``out[i] = sum(values[indptr[i]:indptr[i+1]])``; empty rows give 0."""

    @abc.abstractmethod
    def segment_max(self, values: Any, indptr: Any) -> Any:
        """Per-row maxima; empty rows give ``-inf``."""

    def row_ids(self, indptr: Any, nnz: int | None = None) -> Any:
        """Row index of every stored entry (length ``nnz``), from ``indptr``.

        ``nnz`` (``indptr[-1]``, e.g. ``data.shape[0]``) may be given by a caller that knows it, so a
        device backend need not read it from the device (a synchronisation).
        """
        xp = self.xp
        n = indptr.shape[0] - 1
        counts = indptr[1:] - indptr[:-1]
        return xp.repeat(xp.arange(n, dtype=indptr.dtype), counts)

    # ---------------------------------------------------------------- sparse algebra
    #: Whether this instance reports its SpMMs to the open recorders of
    #: :mod:`~cellfate_gpu.backends._counting`. Unset on every instance a backend class makes (so on
    #: the cached ones :func:`~cellfate_gpu.backends.get_backend` hands out); set only on the private
    #: shallow copies :func:`~cellfate_gpu.backends._counting.counting_backend` makes.
    _counts_spmm: bool = False

    @final
    def spmm(self, A: Any, X: Any) -> Any:
        """Sparse times dense: ``A @ X`` for a vector or a block of vectors.

        Final: a backend implements :meth:`_spmm`; this runs it and, on a counting view only,
        reports the product to the open recorders (one attribute read otherwise).
        """
        if self._counts_spmm:
            return counted_spmm(self._spmm, A, X)
        return self._spmm(A, X)

    @abc.abstractmethod
    def _spmm(self, A: Any, X: Any) -> Any:
        """The backend's own ``A @ X`` (a vector or a block of vectors); called by :meth:`spmm` only."""

    @abc.abstractmethod
    def transpose(self, A: Any) -> Any:
        """``A.T`` as a canonical native CSR matrix."""

    @abc.abstractmethod
    def linear_combination(self, coeffs: list[float], mats: list[Any]) -> Any:
        """``sum(c * A for c, A in zip(coeffs, mats))`` as a canonical native CSR matrix."""

    @abc.abstractmethod
    def multiply(self, A: Any, B: Any) -> Any:
        """Element-wise product of two sparse matrices (canonical native CSR)."""

    @abc.abstractmethod
    def submatrix(self, A: Any, rows: np.ndarray, cols: np.ndarray) -> Any:
        """``A[rows][:, cols]`` with host integer index arrays, as a native CSR matrix."""

    @abc.abstractmethod
    def eye(self, n: int, dtype: Any = None) -> Any:
        """Native sparse identity."""

    def row_sums(self, A: Any) -> Any:
        """Row sums of a native matrix as a backend vector."""
        data, _, indptr = self.csr_components(A)
        return self.segment_sum(data, indptr)

    def scale_rows(self, A: Any, d: Any) -> Any:
        """``diag(d) @ A`` for a backend vector ``d``."""
        data, indices, indptr = self.csr_components(A)
        scaled = data * self.xp.take(d, self.row_ids(indptr, int(data.shape[0])))
        return self.csr_from_components(scaled, indices, indptr, tuple(A.shape))

    # ---------------------------------------------------------------- capabilities
    #: The operations this backend implements natively; :meth:`can_run` answers from it. Names:
    #: ``solve.gmres`` (generic block GMRES on :attr:`xp`), ``solve.direct`` (sparse LU through
    #: :meth:`factorize`), ``solve.scipy_krylov`` (SciPy's Krylov solvers on host arrays),
    #: ``solve.ksp`` (PETSc KSP through ``solve_ksp``), ``precond.jacobi``, ``precond.ilu``,
    #: ``precond.amg``, ``schur`` and ``eig`` (partial Schur/eigen decompositions).
    implements: frozenset[str] = frozenset({"solve.gmres", "precond.jacobi", "schur", "eig"})

    def can_run(self, operation: str) -> tuple[bool, str]:
        """Whether this backend implements ``operation`` natively, and why (not).

        The dispatcher in :mod:`cellfate_gpu.linalg` asks this before it runs anything and raises
        with the reason when the answer is no; it never routes the call to another engine.
        """
        if operation in self.implements:
            return True, f"{operation!r} is implemented by the {self.name!r} backend"
        return False, f"it does not implement {operation!r} (it implements {', '.join(sorted(self.implements))})"

    # ---------------------------------------------------------------- heavy operations
    def factorize(self, A: Any) -> Any:
        """Sparse LU of native ``A`` (backends that implement ``solve.direct``)."""
        raise NotImplementedError(f"The {self.name!r} backend does not implement sparse LU (solve.direct).")

    def solve_factorized(self, factor: Any, A: Any, B: Any) -> SolveResult:
        """Solve with the factors from :meth:`factorize` (backends that implement ``solve.direct``)."""
        raise NotImplementedError(f"The {self.name!r} backend does not implement sparse LU (solve.direct).")

    def solve(
        self,
        A: Any,
        B: Any,
        *,
        method: Any = "gmres",
        tol: float = 1e-10,
        maxiter: int | None = None,
        preconditioner: Any = None,
        x0: Any = None,
        restart: int | None = None,
    ) -> SolveResult:
        """Solve ``A X = B`` for all columns of ``B`` at once on this backend, without the public checks.

        ``A`` is native, ``B`` and ``x0`` are backend arrays. ``method`` is a solver name or a
        :mod:`~cellfate_gpu.linalg.solvers` value; names become values in
        :func:`~cellfate_gpu.linalg.solvers.solver_from_name` (the one place). Prefer
        :func:`cellfate_gpu.linalg.solve`, which validates input, checks the residual against
        ``tol`` and raises with what to try.
        """
        from cellfate_gpu.linalg.solvers import Solver, solver_from_name

        if isinstance(method, Solver):
            solver = method
        else:
            solver = solver_from_name(
                method, preconditioner=preconditioner, restart=restart, maxiter=maxiter, backend=self
            )
        prepared = solver.prepare(self, A)
        result = prepared.run(B, tol, maxiter, x0)
        return dataclasses.replace(result, prepared=prepared)

    def partial_schur(
        self,
        A: Any,
        k: int,
        *,
        which: str = "LR",
        tol: float = 1e-10,
        maxiter: int | None = None,
        ncv: int | None = None,
    ) -> SchurResult:
        """Partial real Schur form of native ``A`` (generic Krylov-Schur)."""
        from cellfate_gpu.linalg.krylov_schur import krylov_schur

        return krylov_schur(self, A, k, which=which, tol=tol, maxiter=maxiter, ncv=ncv)

    def partial_eig(
        self,
        A: Any,
        k: int,
        *,
        which: str = "LR",
        tol: float = 1e-10,
        maxiter: int | None = None,
        left: bool = False,
        vectors: bool = True,
    ) -> EigResult:
        """Partial eigendecomposition from the partial Schur form (generic)."""
        from cellfate_gpu.linalg.eig import eig_from_schur

        return eig_from_schur(self, A, k, which=which, tol=tol, maxiter=maxiter, left=left, vectors=vectors)

    # ---------------------------------------------------------------- helpers
    def fuse(self, fn: Any) -> Any:
        """``fn``, a pure function of backend arrays, as one compiled program where the backend compiles.

        The default returns ``fn`` itself (NumPy, CuPy: every operation is already one kernel call);
        the ``jax`` backend returns ``jax.jit(fn)``, so that a block of eager operations compiles into
        one XLA program per input shape instead of one per operation.
        """
        return fn

    def _log_transfer(self, what: str, direction: str, nbytes: int) -> None:
        logger.debug("%s transfer %s: %s (%.2f MiB)", self.name, direction, what, nbytes / 2**20)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"
