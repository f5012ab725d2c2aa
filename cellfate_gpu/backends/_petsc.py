r"""The ``petsc`` backend: PETSc KSP and SLEPc EPS on a row-distributed matrix, one core to a cluster.

Run model (SPMD)
----------------
Every rank runs the same script (``mpiexec -n N python script.py``).  Kernels and estimators run
on the host exactly as on the ``scipy`` backend (this backend composes a
:class:`~cellfate_gpu.backends._scipy.ScipyBackend` and delegates every CSR primitive to it;
native matrices are SciPy CSR).  Only the two heavy operations go to PETSc:

* :meth:`PetscBackend.partial_schur` — SLEPc EPS Krylov-Schur (problem type NHEP);
* :meth:`PetscBackend.solve` — a PETSc KSP (GMRES, BiCGStab or LU) set up once for all columns.

Each call copies its rank's contiguous block of rows of the host CSR matrix into a PETSc MPIAIJ
matrix (rows ``[rstart, rend)`` as PETSc's ownership ranges would split them; global column ids).
Where the rows come from depends on ``distribution``:

``"replicated"`` (default)
    Every rank holds the same host CSR (each read the AnnData and built the same kernel; the
    kernels are deterministic) and takes its own row block; no communication.  A cheap check
    (shape, ``nnz``, a position-weighted sum of the entries) verifies that the ranks really hold the same matrix.
``"root"``
    Only rank 0's matrix and right-hand sides are used; the row blocks are scattered from rank 0
    with mpi4py (``Scatterv``).  Other ranks may pass ``None`` to the backend methods.

Results (``X``, ``Q``, ``R``, eigenvalues) are gathered (``Allgatherv``) and returned on **every**
rank as NumPy arrays, so the host-side estimator code continues identically everywhere; write
files from rank 0 only (:func:`cellfate_gpu._mpi.root_only_write`).

Options
-------
Solver settings given as arguments are applied first, then the PETSc options database is read
(``KSPSetFromOptions``/``EPSSetFromOptions``), so the usual PETSc flags on the command line
(``-ksp_type bcgs -pc_type asm -ksp_monitor``, ``-eps_ncv 60 -eps_view``; no prefix) and in the
``PETSC_OPTIONS`` environment variable override them, and the backend's own ``petsc_options``
(constructor or :meth:`PetscBackend.set_options`) override both.  PETSc is initialised on the first
heavy call with ``sys.argv`` (never at import).
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import importlib.util
import sys
import time
import types
from collections.abc import Iterator, Mapping
from typing import Any, Literal, final

import numpy as np
import scipy.sparse as sp

from cellfate_gpu._logging import debug, info
from cellfate_gpu.backends._base import Backend
from cellfate_gpu.backends._results import SchurResult, SolveResult, Status
from cellfate_gpu.backends._scipy import ScipyBackend
from cellfate_gpu.linalg._schur_sort import sort_key, sorted_real_schur, split_safe
from cellfate_gpu.linalg.krylov_schur import complete_clusters, default_ncv

__all__ = ["PetscBackend", "PetscBuildError", "sorted_real_schur"]

_WHICH_TO_SLEPC = {
    "LR": "LARGEST_REAL",
    "LM": "LARGEST_MAGNITUDE",
    "SR": "SMALLEST_REAL",
    "SM": "SMALLEST_MAGNITUDE",
    "LI": "LARGEST_IMAGINARY",
    "SI": "SMALLEST_IMAGINARY",
}
_KSP_METHODS = {"gmres": "gmres", "bcgs": "bcgs", "direct": "preonly"}
_PRECONDITIONERS = {"none": "none", "jacobi": "jacobi", "bjacobi": "bjacobi", "ilu": "ilu", "asm": "asm"}
#: SLEPc's test bounds the residual of its Ritz *eigenpairs*; the residual of the Schur vectors
#: (what the contract promises, ``|A q_j - (Q R)_j| <= tol |A|``) can be ~10x larger for
#: non-normal matrices, so SLEPc is asked for this fraction of ``tol``.
_SLEPC_TOL_MARGIN = 0.1
#: How many times partial_schur retries with a doubled ``ncv`` when fewer than ``k`` pairs converged.
_SCHUR_RETRIES = 2


class PetscBuildError(RuntimeError):
    """The installed PETSc cannot serve this backend (complex scalars, too small an index type, ...)."""


def _petsc_argv() -> list[str]:
    """The PETSc options on the script's command line (``-ksp_type bcgs``, ``-eps_view``, ``-help``).

    Only single-dash options whose name contains an underscore (PETSc's ``-prefix_name`` style) or
    is one of PETSc's plain flags are passed on, each with its value, so that the script's own
    arguments (``--input x.h5ad``, pytest's ``-x -q``) do not end up in PETSc's "unused options"
    warning.
    """
    argv = list(sys.argv) if sys.argv else []
    out = [argv[0] if argv and argv[0] else "python"]
    keep = False
    for token in argv[1:]:
        is_option = token.startswith("-") and not token.startswith("--") and len(token) > 1
        if is_option:
            try:
                float(token)
                is_option = False  # a negative number is a value
            except ValueError:
                pass
        if is_option:
            name = token[1:]
            keep = "_" in name or name in _PETSC_FLAGS
            if keep:
                out.append(token)
        elif keep:
            out.append(token)
            keep = False
    return out


_PETSC_FLAGS = frozenset({"help", "info", "version", "malloc", "malloc_debug", "malloc_dump", "memory_view"})


def _ownership_ranges(n: int, nranks: int) -> np.ndarray:
    """Row block boundaries ``[r_0=0, r_1, ..., r_N=n]`` split as ``PetscSplitOwnership`` does."""
    counts = np.full(nranks, n // nranks, dtype=np.int64)
    counts[: n % nranks] += 1
    return np.concatenate([[0], np.cumsum(counts)])


@final
class PetscBackend(Backend):
    r"""MPI backend: PETSc KSP and SLEPc EPS on a row-distributed MPIAIJ copy of a host CSR matrix.

    Parameters
    ----------
    petsc_options
        PETSc options applied around every solver set-up, e.g. ``{"ksp_type": "bcgs",
        "pc_type": "asm", "eps_ncv": 60}`` (leading dashes optional; ``None`` or ``True`` values
        set a flag).  They win over solver arguments and over the command line.
    distribution
        ``"replicated"`` (every rank holds the same host matrix; default) or ``"root"`` (rank 0's
        matrix and right-hand sides are scattered to the others with mpi4py).

    Notes
    -----
    The kernels run on the host (``xp`` is NumPy; native matrices are SciPy CSR; every CSR
    primitive is delegated to a composed :class:`ScipyBackend`), so ``to_host``/``asarray`` cost
    nothing.  See the module docstring for the SPMD run model.

    Examples
    --------
    >>> from cellfate_gpu.backends import get_backend
    >>> be = get_backend("petsc")  # doctest: +SKIP
    >>> be.set_options({"ksp_type": "bcgs", "pc_type": "jacobi"})  # doctest: +SKIP
    """

    name = "petsc"
    extra = "petsc"
    host_is_free = True

    def __init__(
        self,
        *,
        petsc_options: Mapping[str, Any] | None = None,
        distribution: Literal["replicated", "root"] = "replicated",
    ) -> None:
        if distribution not in ("replicated", "root"):
            raise ValueError(f"distribution must be 'replicated' or 'root', got {distribution!r}.")
        self._host = ScipyBackend()
        self._options: dict[str, str | None] = {}
        self._distribution = distribution
        self._modules: tuple[Any, Any] | None = None
        self.set_options(petsc_options or {})

    # ---------------------------------------------------------------- availability and start-up
    @classmethod
    def why_unavailable(cls) -> str | None:
        # Only the packages are imported: importing petsc4py.PETSc would initialise PETSc (and
        # mpi4py.MPI would initialise MPI) before the command line could be handed to it.
        missing = [m for m in ("mpi4py", "petsc4py", "slepc4py") if importlib.util.find_spec(m) is None]
        if missing:
            return (
                f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not installed (see ci/install_petsc.sh)"
            )
        try:
            import petsc4py  # noqa: F401
            import slepc4py  # noqa: F401
        except ImportError as err:
            return f"petsc4py/slepc4py cannot be imported ({err})"
        if importlib.util.find_spec("petsc4py.PETSc") is None or importlib.util.find_spec("slepc4py.SLEPc") is None:
            return "petsc4py/slepc4py are installed without their compiled PETSc/SLEPc modules"
        return None

    def _start(self) -> tuple[Any, Any]:
        """Initialise PETSc/SLEPc once (with ``sys.argv``) and check the build; return ``(PETSc, SLEPc)``."""
        if self._modules is not None:
            return self._modules
        import petsc4py
        import slepc4py

        if "petsc4py.PETSc" not in sys.modules:
            petsc4py.init(_petsc_argv())
        if "slepc4py.SLEPc" not in sys.modules:
            slepc4py.init(_petsc_argv())
        from petsc4py import PETSc
        from slepc4py import SLEPc

        scalar = np.dtype(PETSc.ScalarType)
        if scalar.kind == "c":
            raise PetscBuildError(
                f"PETSc was built with complex scalars ({scalar}); cellfate_gpu needs real double precision. "
                "Rebuild PETSc with --with-scalar-type=real --with-precision=double (ci/install_petsc.sh does)."
            )
        if scalar != np.float64:
            raise PetscBuildError(
                f"PETSc was built with {scalar} scalars; cellfate_gpu needs float64 (--with-precision=double)."
            )
        with contextlib.suppress(Exception):  # event counters for matvec counts; harmless if unavailable
            PETSc.Log.begin()
        self._modules = (PETSc, SLEPc)
        debug(
            "petsc backend started: PETSc %s, SLEPc %s, %d rank(s), index type %s",
            ".".join(map(str, PETSc.Sys.getVersion())),
            ".".join(map(str, SLEPc.Sys.getVersion())),
            PETSc.COMM_WORLD.getSize(),
            np.dtype(PETSc.IntType),
        )
        return self._modules

    # ---------------------------------------------------------------- options
    @property
    def options(self) -> dict[str, str | None]:
        """A copy of this backend's PETSc options (names without the leading dash)."""
        return dict(self._options)

    def set_options(self, options: Mapping[str, Any], *, replace: bool = False) -> None:
        """Add (or with ``replace=True`` set exactly) PETSc options applied to every solver set-up.

        Only on an instance you made (``PetscBackend(...)``): the shared instance that
        ``get_backend("petsc")`` returns is refused, since changing it would change every later
        computation in the process; use :meth:`using_options` there (scoped to a ``with`` block).

        Parameters
        ----------
        options
            ``{"ksp_type": "bcgs", "-pc_type": "ilu", "ksp_monitor": None}``; values are converted
            with ``str`` (booleans to ``true``/``false``; ``None`` or ``True`` set a flag).
        replace
            Drop the options set before.
        """
        if getattr(self, "_shared", False):
            raise RuntimeError(
                "This is the shared petsc backend of get_backend('petsc'); set_options would change it for the "
                "whole process. Use `with backend.using_options({...}):` for a scoped change, or "
                "PetscBackend(petsc_options={...}) for a backend of your own."
            )
        new: dict[str, str | None] = {} if replace else dict(self._options)
        new.update(_normalise_options(options))
        self._options = new

    @contextlib.contextmanager
    def using_options(self, options: Mapping[str, Any]) -> Iterator[PetscBackend]:
        """Apply ``options`` (as in :meth:`set_options`) to the set-ups inside a ``with`` block only.

        Scoped per context (a :class:`contextvars.ContextVar`), so threads and nested blocks do not
        see each other's options; inner blocks win.
        """
        extra = _normalise_options(options)
        token = _SCOPED_OPTIONS.set({**_SCOPED_OPTIONS.get(), **extra})
        try:
            yield self
        finally:
            _SCOPED_OPTIONS.reset(token)

    @contextlib.contextmanager
    def _options_applied(self, extra: Mapping[str, str | None] | None = None) -> Iterator[None]:
        """Put this backend's options, then the scoped ones, then ``extra`` into PETSc's database.

        For one set-up; the database is restored afterwards.
        """
        PETSc, _ = self._start()
        db = PETSc.Options()
        saved: dict[str, str | bool | None] = {}
        merged = {**self._options, **_SCOPED_OPTIONS.get(), **(extra or {})}
        for name, value in merged.items():
            saved[name] = db.getString(name) if db.hasName(name) else False
            db.setValue(name, value if value is not None else True)
        try:
            yield
        finally:
            for name, old in saved.items():
                if old is False:
                    db.delValue(name)
                else:
                    db.setValue(name, old if old is not None else True)

    # ---------------------------------------------------------------- arrays (host, delegated)
    @property
    def xp(self) -> Any:
        return self._host.xp

    def asarray(self, x: Any, dtype: Any = None) -> np.ndarray:
        return self._host.asarray(x, dtype=dtype)

    def to_host(self, x: Any) -> np.ndarray:
        return self._host.to_host(x)

    def from_scipy_csr(self, A: Any, dtype: Any = None) -> sp.csr_matrix:
        return self._host.from_scipy_csr(A, dtype=dtype)

    def to_scipy_csr(self, A: Any) -> sp.csr_matrix:
        return self._host.to_scipy_csr(A)

    def is_native(self, A: Any) -> bool:
        return self._host.is_native(A)

    def ensure_native(self, A: Any) -> sp.csr_matrix:
        return self._host.ensure_native(A)

    def csr_components(self, A: Any) -> tuple[Any, Any, Any]:
        return self._host.csr_components(A)

    def csr_from_components(self, data: Any, indices: Any, indptr: Any, shape: tuple[int, int]) -> Any:
        return self._host.csr_from_components(data, indices, indptr, shape)

    def segment_sum(self, values: Any, indptr: Any) -> Any:
        return self._host.segment_sum(values, indptr)

    def segment_max(self, values: Any, indptr: Any) -> Any:
        return self._host.segment_max(values, indptr)

    def row_ids(self, indptr: Any) -> Any:
        return self._host.row_ids(indptr)

    def spmm(self, A: Any, X: Any) -> Any:
        return self._host.spmm(A, X)

    def transpose(self, A: Any) -> Any:
        return self._host.transpose(A)

    def linear_combination(self, coeffs: list[float], mats: list[Any]) -> Any:
        return self._host.linear_combination(coeffs, mats)

    def multiply(self, A: Any, B: Any) -> Any:
        return self._host.multiply(A, B)

    def submatrix(self, A: Any, rows: np.ndarray, cols: np.ndarray) -> Any:
        return self._host.submatrix(A, rows, cols)

    def eye(self, n: int, dtype: Any = None) -> Any:
        return self._host.eye(n, dtype=dtype)

    # ---------------------------------------------------------------- distribution
    def _comm(self) -> Any:
        PETSc, _ = self._start()
        return PETSc.COMM_WORLD

    def _local_rows(self, A: Any) -> tuple[int, np.ndarray, tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """``(n, ranges, (indptr, indices, data))`` of this rank's row block, with global column ids."""
        comm = self._comm()
        nranks, me = comm.getSize(), comm.getRank()
        if self._distribution == "root" and nranks > 1:
            return _scatter_csr_from_root(A if me == 0 else None, comm.tompi4py())
        A = self.ensure_native(A)
        if A.shape[0] != A.shape[1]:
            raise ValueError(f"A must be square, got shape {A.shape}.")
        n = A.shape[0]
        if not A.has_sorted_indices:
            A = A.sorted_indices()
        if nranks > 1:
            # position-weighted checksum: equal (to rounding) only if the entries sit in the same places
            rows = np.repeat(np.arange(n, dtype=np.float64), np.diff(A.indptr))
            mine = (n, A.nnz, float(np.dot(A.data, np.cos(A.indices + 0.5 * rows))))
            everyone = comm.tompi4py().allgather(mine)
            if any(o[:2] != mine[:2] or not np.isclose(o[2], mine[2], rtol=1e-12, atol=0) for o in everyone):
                raise ValueError(
                    "distribution='replicated' needs the same matrix on every rank, but the ranks hold "
                    f"different ones ((n, nnz, checksum) per rank: {everyone}). Build it deterministically on every "
                    "rank, or use PetscBackend(distribution='root') and pass rank 0's matrix."
                )
        ranges = _ownership_ranges(n, nranks)
        lo, hi = int(ranges[me]), int(ranges[me + 1])
        start, stop = int(A.indptr[lo]), int(A.indptr[hi])
        return n, ranges, (A.indptr[lo : hi + 1] - start, A.indices[start:stop], A.data[start:stop])

    def _petsc_matrix(self, A: Any) -> tuple[Any, np.ndarray]:
        """Row-distributed MPIAIJ (SEQAIJ on one rank) copy of ``A``; returns ``(Mat, ranges)``."""
        PETSc, _ = self._start()
        comm = PETSc.COMM_WORLD
        n, ranges, (indptr, indices, data) = self._local_rows(A)
        nnz_global = comm.tompi4py().allreduce(int(indices.size)) if comm.getSize() > 1 else int(indices.size)
        imax = int(np.iinfo(PETSc.IntType).max)
        if n > imax or indices.size > imax:
            raise PetscBuildError(
                f"The matrix (n={n}, nnz={nnz_global}) does not fit PETSc's {np.dtype(PETSc.IntType)} indices "
                f"(max {imax} rows / local nonzeros). Rebuild PETSc with --with-64-bit-indices."
            )
        me = comm.getRank()
        nloc = int(ranges[me + 1] - ranges[me])
        idx = np.dtype(PETSc.IntType)
        M = PETSc.Mat().createAIJ(
            size=((nloc, n), (nloc, n)),
            csr=(indptr.astype(idx), indices.astype(idx), np.ascontiguousarray(data, dtype=np.float64)),
            comm=comm,
        )
        M.assemble()
        if M.getOwnershipRange() != (int(ranges[me]), int(ranges[me + 1])):
            raise RuntimeError(f"PETSc row ownership {M.getOwnershipRange()} differs from the planned block.")
        debug("petsc: distributed a %d x %d matrix with %d nonzeros over %d rank(s)", n, n, nnz_global, comm.getSize())
        return M, ranges

    def _gather_rows(self, local: np.ndarray, ranges: np.ndarray) -> np.ndarray:
        """Stack every rank's ``(n_local, m)`` block into the full ``(n, m)`` array on every rank."""
        comm = self._comm()
        if comm.getSize() == 1:
            return np.array(local, copy=True)
        from mpi4py import MPI

        local = np.ascontiguousarray(local, dtype=np.float64)
        m = local.shape[1]
        out = np.empty((int(ranges[-1]), m), dtype=np.float64)
        counts = np.diff(ranges) * m
        comm.tompi4py().Allgatherv(local, [out, counts, ranges[:-1] * m, MPI.DOUBLE])
        return out

    def _local_block(self, X: Any, n: int, ranges: np.ndarray, what: str) -> np.ndarray:
        """Return this rank's rows of a host ``(n, m)`` array (scattered from rank 0 in ``'root'`` mode)."""
        comm = self._comm()
        me = comm.getRank()
        lo, hi = int(ranges[me]), int(ranges[me + 1])
        if self._distribution == "root" and comm.getSize() > 1:
            mpi = comm.tompi4py()
            m = mpi.bcast(None if me else np.asarray(X).reshape(n, -1).shape[1], root=0)
            local = np.empty((hi - lo, m), dtype=np.float64)
            from mpi4py import MPI

            full = np.ascontiguousarray(np.asarray(X, dtype=np.float64).reshape(n, m)) if me == 0 else None
            counts = np.diff(ranges) * m
            mpi.Scatterv([full, counts, ranges[:-1] * m, MPI.DOUBLE] if me == 0 else None, local, root=0)
            return local
        X = np.asarray(X, dtype=np.float64)
        if X.shape[0] != n:
            raise ValueError(f"{what} must have {n} rows to match A, got shape {X.shape}.")
        return np.ascontiguousarray(X.reshape(n, -1)[lo:hi])

    def _matmult_count(self) -> int:
        """Number of MatMult calls so far on this rank (PETSc's event log), or -1 if unavailable."""
        PETSc, _ = self._start()
        try:
            return int(PETSc.Log.Event("MatMult").getPerfInfo()["count"])
        except Exception:  # logging disabled in this PETSc build
            return -1

    # ---------------------------------------------------------------- partial Schur (SLEPc)
    def _unit_eigenspace(self, A: Any, which: str, tol: float, ranges: np.ndarray) -> np.ndarray | None:
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

        comm = self._comm()
        me, root_mode = comm.getRank(), self._distribution == "root" and comm.getSize() > 1
        W = None
        if not root_mode or me == 0:
            native = self._host.ensure_native(A)
            kind = stochastic_kind(self._host, native)
            found = unit_eigenspace(self._host, native, kind=kind, tol=tol) if kind is not None else None
            W = None if found is None else found[0]
        if root_mode:
            W = comm.tompi4py().bcast(W, root=0)
        return None if W is None else np.ascontiguousarray(W[int(ranges[me]) : int(ranges[me + 1])])

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
        PETSc, SLEPc = self._start()
        sort_key(which)  # validates which
        started = time.perf_counter()
        mults0 = self._matmult_count()
        M, ranges = self._petsc_matrix(A)
        n = int(ranges[-1])
        if not 1 <= k < n:
            M.destroy()
            raise ValueError(f"k must satisfy 1 <= k < n={n}, got {k}.")
        try:
            W_local = self._unit_eigenspace(A, which, tol, ranges)
        except BaseException:
            M.destroy()
            raise
        r_locked = 0 if W_local is None else int(W_local.shape[1])
        if r_locked >= k:  # every wanted eigenvalue is 1 (a reducible chain): nothing left for SLEPc
            M.destroy()
            W_all = self._gather_rows(W_local, ranges)[:, :k]
            return SchurResult(
                status=Status.CONVERGED,
                iterations=0,
                matvecs=0,
                seconds=time.perf_counter() - started,
                backend=self.name,
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
                    with self._options_applied():
                        eps.setFromOptions()
                    eps.solve()
                    nconv = int(eps.getConverged())
                    reason = int(eps.getConvergedReason())
                    iterations = int(eps.getIterationNumber())
                    eps_type = eps.getType()
                    vecs = eps.getInvariantSubspace() if nconv > 0 else []  # before any eigenvector!
                    vecs = deflation + list(vecs)  # Q = [W, U]: U is orthogonal to W
                    nconv += r_locked
                    # Q and A Q on the host (every rank); R = Q^T A Q is nconv x nconv.
                    local_q = np.column_stack([v.getArray(readonly=True).copy() for v in vecs]) if vecs else None
                    local_aq = None
                    if vecs:
                        w = M.createVecLeft()
                        cols = []
                        for v in vecs:
                            M.mult(v, w)
                            cols.append(w.getArray(readonly=True).copy())
                        w.destroy()
                        local_aq = np.column_stack(cols)
                    for v in vecs:
                        v.destroy()
                finally:
                    eps.destroy()
                enough = accurate = False
                if nconv >= k:
                    Q_all = self._gather_rows(local_q, ranges)
                    AQ_all = self._gather_rows(local_aq, ranges)
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
                if enough:
                    worst = float(np.max(res)) / norm_bound
                    info(
                        "    SLEPc Schur residual %.2e |A| > tol=%.0e; retrying with SLEPc tol %.0e",
                        worst,
                        tol,
                        max(slepc_tol * tol / worst / 10, 1e-15),
                    )
                    slepc_tol = max(slepc_tol * tol / worst / 10, 1e-15)
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
                nev = min(k + 1, n - 1)  # also ask for the partner of a possibly split pair
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
                Q_all = self._gather_rows(local_q, ranges)
                AQ_all = self._gather_rows(local_aq, ranges)
                T, Z, evals = sorted_real_schur(Q_all.T @ AQ_all, which)
                Q, R = Q_all @ Z, T
                res = np.linalg.norm(AQ_all @ Z - Q @ R, axis=0)
            else:
                Q, R, evals, res = np.zeros((n, 0)), np.zeros((0, 0)), np.zeros(0, complex), np.zeros(0)
        mults1 = self._matmult_count()
        matvecs = mults1 - mults0 if mults0 >= 0 and mults1 >= 0 else -1
        debug("petsc partial_schur: EPS %s, reason %d, nconv %d, restarts %d", eps_type, reason, nconv, iterations)
        result = SchurResult(
            status=status,
            iterations=iterations,
            matvecs=matvecs,
            seconds=time.perf_counter() - started,
            backend=self.name,
            Q=Q,
            R=R,
            eigenvalues=np.asarray(evals, dtype=complex),
            residual_norms=res,
            which=which,
        )
        if W_local is None or (self._distribution == "root" and self._comm().getSize() > 1):
            return result  # completion needs the host matrix on every rank (replicated)

        def search(locked: np.ndarray, p: int, attempt: int) -> SchurResult:
            return self._eps_on_complement(A, locked, p, which=which, tol=tol, maxiter=maxiter)

        done = complete_clusters(self, self._host.ensure_native(A), k, result, search, which=which, exact=r_locked)
        return dataclasses.replace(done, seconds=time.perf_counter() - started)

    def _eps_on_complement(
        self, A: Any, locked: np.ndarray, nev: int, *, which: str, tol: float, maxiter: int | None
    ) -> SchurResult:
        r"""The ``nev`` most wanted Schur vectors of :math:`A` on the complement of an invariant ``locked`` basis.

        One SLEPc Krylov-Schur solve with ``locked`` (``n x p``, orthonormal, the same on every
        rank) as the deflation space; used by :func:`~cellfate_gpu.linalg.krylov_schur.complete_clusters`
        to find the members of a near-multiple eigenvalue that the first solve missed.
        """
        PETSc, SLEPc = self._start()
        M, ranges = self._petsc_matrix(A)
        me = self._comm().getRank()
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
            with self._options_applied():
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
                    backend=self.name,
                    which=which,
                )
            local_q = np.column_stack([v.getArray(readonly=True).copy() for v in vecs])
            w = M.createVecLeft()
            cols = []
            for v in vecs:
                M.mult(v, w)
                cols.append(w.getArray(readonly=True).copy())
            w.destroy()
            local_aq = np.column_stack(cols)
        finally:
            for v in deflation + vecs:
                v.destroy()
            eps.destroy()
            M.destroy()
        U, AU = self._gather_rows(local_q, ranges), self._gather_rows(local_aq, ranges)
        T, Z, evals = sorted_real_schur(U.T @ AU, which)
        kk = split_safe(T, nev)
        return SchurResult(
            status=Status.CONVERGED,
            iterations=0,
            matvecs=-1,
            seconds=0.0,
            backend=self.name,
            Q=U @ Z[:, :kk],
            R=T[:kk, :kk],
            eigenvalues=evals[:kk],
            which=which,
        )

    # ---------------------------------------------------------------- linear solves (KSP)
    implements = frozenset({"solve.ksp", "solve.direct", "schur", "eig"})

    def factorize(self, A: Any) -> Any:
        """Nothing to keep: PCLU is factorised inside each KSP set-up (``solve_factorized`` does it)."""
        return None

    def solve_factorized(self, factor: Any, A: Any, B: Any) -> SolveResult:
        """KSPPREONLY + PCLU (MUMPS on several ranks)."""
        return self.solve_ksp(A, B, ksp_type="preonly", pc_type="lu")

    def solve(
        self,
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
            raise ValueError(
                f"method={method!r} is not offered by the 'petsc' backend; use one of {tuple(_KSP_METHODS)}."
            )
        if preconditioner is not None and (
            not isinstance(preconditioner, str) or preconditioner not in _PRECONDITIONERS
        ):
            raise ValueError(
                f"preconditioner must be None or one of {tuple(_PRECONDITIONERS)} on the 'petsc' backend, "
                f"got {preconditioner!r} (other PETSc PCs: KSP(pc_type=...), petsc_options={{'pc_type': ...}} "
                "or -pc_type)."
            )
        pc_type = "lu" if method == "direct" else None if preconditioner is None else _PRECONDITIONERS[preconditioner]
        return self.solve_ksp(
            A, B, ksp_type=_KSP_METHODS[method], pc_type=pc_type, tol=tol, maxiter=maxiter, x0=x0, restart=restart
        )

    def solve_ksp(
        self,
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
        PETSc, _ = self._start()
        started = time.perf_counter()
        direct = ksp_type == "preonly"
        comm = PETSc.COMM_WORLD
        nranks = comm.getSize()
        if direct and (pc_type or "lu") == "lu" and nranks > 1 and not _has_parallel_lu(PETSc):
            raise ValueError(
                "method='direct' on several ranks needs PETSc built with MUMPS or SuperLU_dist "
                "(--download-mumps); use method='gmres' or 'bcgs'."
            )
        vector = np.ndim(B) == 1 if (self._distribution != "root" or comm.getRank() == 0) else False
        if self._distribution == "root" and nranks > 1:
            vector = comm.tompi4py().bcast(vector, root=0)
        M, ranges = self._petsc_matrix(A)
        n = int(ranges[-1])
        try:
            b_local = self._local_block(B, n, ranges, "B")
            x_local0 = self._local_block(x0, n, ranges, "x0") if _present(x0, comm, self._distribution) else None
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
                    backend=self.name,
                    X=X[:, 0] if vector else X,
                    residual_norms=np.full(m, np.nan),
                    method="ksp",
                    message="B or x0 contains NaN or inf",
                )
            mults0 = self._matmult_count()
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
                with self._options_applied(options):
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
            mults1 = self._matmult_count()
        finally:
            M.destroy()
        X = self._gather_rows(X_local, ranges)
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
            backend=self.name,
            X=X[:, 0] if vector else X,
            residual_norms=res,
            method=used,
            message=message,
        )


#: Options of the innermost ``PetscBackend.using_options`` block (scoped, not a process-wide setting).
_SCOPED_OPTIONS: contextvars.ContextVar[Mapping[str, str | None]] = contextvars.ContextVar(
    "petsc_options", default=types.MappingProxyType({})
)


def _normalise_options(options: Mapping[str, Any]) -> dict[str, str | None]:
    """PETSc option names without dashes; ``None``/``True`` set a flag, ``False`` is ``"false"``."""
    if not isinstance(options, Mapping):
        raise TypeError(f"options must be a mapping of PETSc option names to values, got {type(options).__name__}.")
    out: dict[str, str | None] = {}
    for key, value in options.items():
        name = str(key).lstrip("-")
        if not name or any(c.isspace() for c in name):
            raise ValueError(f"Invalid PETSc option name {key!r}.")
        out[name] = None if value is None or value is True else "false" if value is False else str(value)
    return out


_STATUS_RANK = {Status.CONVERGED: 0, Status.MAX_ITER: 1, Status.BREAKDOWN: 2, Status.NONFINITE_INPUT: 3}


def _present(x0: Any, comm: Any, distribution: str) -> bool:
    """Whether an initial guess was given (decided by rank 0 in ``'root'`` mode)."""
    here = x0 is not None
    if distribution == "root" and comm.getSize() > 1:
        return bool(comm.tompi4py().bcast(here, root=0))
    return here


def _mpi_land() -> Any:
    from mpi4py import MPI

    return MPI.LAND


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


def _scatter_csr_from_root(A: Any, mpi: Any) -> tuple[int, np.ndarray, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Scatter the row blocks of rank 0's CSR matrix (``Scatterv``); returns this rank's block.

    Each rank receives its rows' lengths, column ids and values (three ``Scatterv`` calls).
    MPI counts are 32-bit, so one rank's block must hold fewer than 2**31 nonzeros.
    """
    from mpi4py import MPI

    me, nranks = mpi.Get_rank(), mpi.Get_size()
    header = None
    if me == 0:
        if A is None or not sp.issparse(A) or A.shape[0] != A.shape[1]:
            shape = getattr(A, "shape", None)
            header = ("error", f"distribution='root' needs a square sparse matrix on rank 0, got shape {shape}")
        else:
            A = sp.csr_matrix(A, dtype=np.float64)
            if not A.has_sorted_indices:
                A = A.sorted_indices()
            header = ("ok", A.shape[0])
    header = mpi.bcast(header, root=0)
    if header[0] == "error":
        raise ValueError(header[1])
    n = int(header[1])
    ranges = _ownership_ranges(n, nranks)
    nnz_bounds = mpi.bcast(A.indptr[ranges].astype(np.int64) if me == 0 else None, root=0)
    lo, hi = int(ranges[me]), int(ranges[me + 1])
    row_len = np.empty(hi - lo, dtype=np.int64)
    indices = np.empty(int(nnz_bounds[me + 1] - nnz_bounds[me]), dtype=np.int64)
    data = np.empty(indices.size, dtype=np.float64)
    row_counts, nnz_counts = np.diff(ranges), np.diff(nnz_bounds)
    send_len = [np.diff(A.indptr).astype(np.int64), row_counts, ranges[:-1], MPI.INT64_T] if me == 0 else None
    mpi.Scatterv(send_len, row_len, root=0)
    send_idx = [A.indices.astype(np.int64), nnz_counts, nnz_bounds[:-1], MPI.INT64_T] if me == 0 else None
    mpi.Scatterv(send_idx, indices, root=0)
    send_data = [np.ascontiguousarray(A.data), nnz_counts, nnz_bounds[:-1], MPI.DOUBLE] if me == 0 else None
    mpi.Scatterv(send_data, data, root=0)
    indptr = np.concatenate([[0], np.cumsum(row_len)])
    return n, ranges, (indptr, indices, data)
