"""The ``PetscBackend`` class: start-up, options, transfers and the composed host backend."""

from __future__ import annotations

import contextlib
import importlib.util
import sys
from collections.abc import Iterator, Mapping
from typing import Any, Literal

import numpy as np
import scipy.sparse as sp

from cellfate_gpu._logging import debug
from cellfate_gpu.backends._base import Backend
from cellfate_gpu.backends._petsc import _eps, _ksp
from cellfate_gpu.backends._petsc._distribution import _ownership_ranges, _scatter_csr_from_root
from cellfate_gpu.backends._petsc._options import _SCOPED_OPTIONS, PetscBuildError, _normalise_options, _petsc_argv
from cellfate_gpu.backends._scipy import ScipyBackend


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
    #: PETSc's own engines only: KSP (any Krylov method and PC, PCLU for Direct()) and SLEPc; our
    #: generic block GMRES and SciPy's Krylov solvers never run here (GMRES()/Krylov() map to KSP).
    implements = frozenset({"solve.ksp", "solve.direct", "schur", "eig"})

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

    def row_ids(self, indptr: Any, nnz: int | None = None) -> Any:
        return self._host.row_ids(indptr, nnz)

    def _spmm(self, A: Any, X: Any) -> Any:
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

    # the two heavy operations, each in its own module
    _unit_eigenspace = _eps._unit_eigenspace
    partial_schur = _eps.partial_schur
    _eps_on_complement = _eps._eps_on_complement
    factorize = _ksp.factorize
    solve_factorized = _ksp.solve_factorized
    solve = _ksp.solve
    solve_ksp = _ksp.solve_ksp
