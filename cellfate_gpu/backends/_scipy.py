"""The ``scipy`` backend: NumPy arrays and SciPy CSR on the host; default and fallback."""

from __future__ import annotations

import importlib.util
import time
from typing import Any, final

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla

from cellfate_gpu.backends._base import Backend, host_csr
from cellfate_gpu.backends._results import SolveResult, Status
from cellfate_gpu.backends._row_blocks import threaded_spmm

__all__ = ["ScipyBackend"]


@final
class ScipyBackend(Backend):
    """CPU backend over NumPy/SciPy; native matrices are canonical ``scipy.sparse.csr_matrix``.

    Implements, besides the generic block GMRES, :class:`~cellfate_gpu.linalg.solvers.Direct`
    (SuperLU via :func:`scipy.sparse.linalg.splu`, one factorisation for all right-hand sides, kept
    in the prepared solver), SciPy's Krylov solvers, and the ILU
    (:func:`scipy.sparse.linalg.spilu`) and AMG (pyamg) preconditioners.
    """

    name = "scipy"
    extra = ""
    host_is_free = True

    @classmethod
    def why_unavailable(cls) -> str | None:
        return None

    @property
    def xp(self) -> Any:
        from array_api_compat import numpy as xp_numpy

        return xp_numpy

    # transfers are no-ops on the host
    def asarray(self, x: Any, dtype: Any = None) -> np.ndarray:
        return np.asarray(x, dtype=dtype)

    def to_host(self, x: Any) -> np.ndarray:
        return np.asarray(x)

    def from_scipy_csr(self, A, dtype: Any = None) -> sp.csr_matrix:
        A = host_csr(A)  # a device matrix (adata.obsp on a GPU) comes through its backend's named transfer
        out = sp.csr_matrix(A, dtype=dtype if dtype is not None else A.dtype)
        if not out.has_canonical_format:
            out = out.copy()
            out.sum_duplicates()
        return out

    def to_scipy_csr(self, A: Any) -> sp.csr_matrix:
        return sp.csr_matrix(A)

    def is_native(self, A: Any) -> bool:
        return sp.issparse(A)

    def ensure_native(self, A: Any) -> sp.csr_matrix:
        if sp.issparse(A):
            return A if A.format == "csr" and isinstance(A, sp.csr_matrix) else sp.csr_matrix(A)
        raise TypeError(f"Expected a SciPy sparse matrix, got {type(A).__name__}.")

    # CSR primitives
    def csr_components(self, A):
        A = self.ensure_native(A)
        return A.data, A.indices, A.indptr

    def csr_from_components(self, data, indices, indptr, shape):
        return sp.csr_matrix((data, indices, indptr), shape=shape)

    def segment_sum(self, values, indptr):
        n = len(indptr) - 1
        return np.bincount(self.row_ids(indptr), weights=values, minlength=n).astype(
            np.result_type(values.dtype, np.float64) if values.dtype.kind != "f" else values.dtype, copy=False
        )

    def segment_max(self, values, indptr):
        n = len(indptr) - 1
        out = np.full(n, -np.inf, dtype=np.result_type(values.dtype, np.float32))
        nonempty = np.diff(indptr) > 0
        if values.size:
            out[nonempty] = np.maximum.reduceat(values, indptr[:-1][nonempty])
        return out

    def row_ids(self, indptr, nnz=None):
        return np.repeat(np.arange(len(indptr) - 1, dtype=indptr.dtype), np.diff(indptr))

    # sparse algebra
    def _spmm(self, A, X):
        # Row blocks over every core (SciPy's kernel is serial but releases the GIL); bit-identical.
        return threaded_spmm(A, X)

    def transpose(self, A):
        return sp.csr_matrix(A.T)

    def linear_combination(self, coeffs, mats):
        out = coeffs[0] * sp.csr_matrix(mats[0])
        for c, M in zip(coeffs[1:], mats[1:], strict=True):
            out = out + c * sp.csr_matrix(M)
        out = sp.csr_matrix(out)
        out.sum_duplicates()
        return out

    def multiply(self, A, B):
        return sp.csr_matrix(sp.csr_matrix(A).multiply(B))

    def submatrix(self, A, rows, cols):
        return sp.csr_matrix(A[np.asarray(rows)][:, np.asarray(cols)])

    def eye(self, n, dtype=None):
        return sp.identity(n, dtype=dtype or np.float64, format="csr")

    # heavy operations
    implements = Backend.implements | {"solve.direct", "solve.scipy_krylov", "precond.ilu", "precond.amg"}

    def can_run(self, operation: str) -> tuple[bool, str]:
        if operation == "precond.amg" and importlib.util.find_spec("pyamg") is None:
            return False, "pyamg is not installed (pip install pyamg)"
        return super().can_run(operation)

    def factorize(self, A: Any) -> Any:
        """SuperLU of ``A`` (COLAMD ordering); ``None`` with the reason if ``A`` is exactly singular."""
        try:
            return spla.splu(sp.csc_matrix(A))
        except RuntimeError as err:  # "Factor is exactly singular"
            return err

    def solve_factorized(self, factor: Any, A: Any, B: Any) -> SolveResult:
        """All right-hand sides with one factorisation, one step of iterative refinement, residuals checked."""
        return _direct_solve(factor, A, B)


def _direct_solve(lu: Any, A: Any, B: Any) -> SolveResult:
    start = time.perf_counter()
    B = np.asarray(B)
    if isinstance(lu, Exception):
        return SolveResult(
            status=Status.BREAKDOWN,
            iterations=0,
            matvecs=0,
            seconds=time.perf_counter() - start,
            backend="scipy",
            X=np.full(B.shape, np.nan),
            residual_norms=np.full(1 if B.ndim == 1 else B.shape[1], np.inf),
            method="direct",
            message=f"SuperLU: {lu}",
        )
    B = B.astype(np.result_type(B.dtype, A.dtype, np.float64), copy=False)
    X = lu.solve(B)
    Bm, Xm = B.reshape(B.shape[0], -1), X.reshape(X.shape[0], -1)
    bnorm = np.linalg.norm(Bm, axis=0)
    scale = np.where(bnorm > 0, bnorm, 1.0)
    R = Bm - A @ Xm
    with np.errstate(invalid="ignore", over="ignore"):
        Xm = Xm + lu.solve(R).reshape(Xm.shape)  # one step of refinement: cheap next to the factorisation
        res = np.linalg.norm(Bm - A @ Xm, axis=0) / scale
    X = Xm.reshape(X.shape)
    status = Status.CONVERGED if np.all(np.isfinite(X)) else Status.BREAKDOWN
    return SolveResult(
        status=status,
        iterations=1,
        matvecs=2 * Xm.shape[1],
        seconds=time.perf_counter() - start,
        backend="scipy",
        X=X,
        residual_norms=res,
        method="direct",
        message="" if status is Status.CONVERGED else "SuperLU gave non-finite values (A is numerically singular)",
    )
