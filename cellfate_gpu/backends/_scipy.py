"""The ``scipy`` backend: NumPy arrays and SciPy CSR on the host; default and fallback."""

from __future__ import annotations

import time
from typing import Any, final

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla

from cellfate_gpu.backends._base import Backend
from cellfate_gpu.backends._results import SolveResult, Status

__all__ = ["ScipyBackend"]


@final
class ScipyBackend(Backend):
    """CPU backend over NumPy/SciPy; native matrices are canonical ``scipy.sparse.csr_matrix``.

    Offers ``method="direct"`` (SuperLU via :func:`scipy.sparse.linalg.splu`, one factorisation
    for all right-hand sides) and ``preconditioner="ilu"`` (:func:`scipy.sparse.linalg.spilu`)
    besides the generic block GMRES.
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

    def row_ids(self, indptr):
        return np.repeat(np.arange(len(indptr) - 1, dtype=indptr.dtype), np.diff(indptr))

    # sparse algebra
    def spmm(self, A, X):
        return A @ X

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
    def solve(self, A, B, *, method="gmres", tol=1e-10, maxiter=None, preconditioner=None, x0=None, restart=None):
        if method == "direct":
            return _direct_solve(A, B)
        if preconditioner == "ilu":
            preconditioner = _ilu_preconditioner(A)
        return super().solve(
            A,
            B,
            method="gmres" if method in {"gmres", "block_gmres"} else method,
            tol=tol,
            maxiter=maxiter,
            preconditioner=preconditioner,
            x0=x0,
            restart=restart,
        )


def _ilu_preconditioner(A):
    """Incomplete LU of ``A`` as a block operator ``M^{-1} X`` (SuperLU's ILUTP)."""
    ilu = spla.spilu(sp.csc_matrix(A), drop_tol=1e-5, fill_factor=10)

    def apply(X):
        return ilu.solve(np.asarray(X))

    return apply


#: The last SuperLU factorisation, keyed by a fingerprint of its matrix. Absorption times solve
#: with the same ``I - Q`` two or three times; at 100k cells one factorisation takes ~9 s here.
_LAST_LU: tuple[tuple, Any] | None = None


def _fingerprint(A: sp.csr_matrix | sp.csr_array) -> tuple:
    """Shape, nnz and hashes of the CSR arrays: equal matrices, equal fingerprints (O(nnz), ~ms)."""
    A = sp.csr_matrix(A)
    return (A.shape, A.nnz, hash(A.indptr.tobytes()), hash(A.indices.tobytes()), hash(A.data.tobytes()))


def _splu(A) -> Any:
    """SuperLU of ``A``, reused when the same matrix was factorised last."""
    global _LAST_LU
    key = _fingerprint(A)
    if _LAST_LU is not None and _LAST_LU[0] == key:
        return _LAST_LU[1]
    _LAST_LU = None  # release the old factors before building new ones
    lu = spla.splu(sp.csc_matrix(A))
    _LAST_LU = (key, lu)
    return lu


def _direct_solve(A, B) -> SolveResult:
    """One SuperLU factorisation (reused for the same matrix), all right-hand sides, residuals checked."""
    start = time.perf_counter()
    B = np.asarray(B)
    try:
        lu = _splu(A)
    except RuntimeError as err:  # "Factor is exactly singular"
        return SolveResult(
            status=Status.BREAKDOWN,
            iterations=0,
            matvecs=0,
            seconds=time.perf_counter() - start,
            backend="scipy",
            X=np.full(B.shape, np.nan),
            residual_norms=np.full(1 if B.ndim == 1 else B.shape[1], np.inf),
            method="direct",
            message=str(err),
        )
    X = lu.solve(B.astype(np.result_type(B.dtype, A.dtype, np.float64), copy=False))
    Bm, Xm = B.reshape(B.shape[0], -1), X.reshape(X.shape[0], -1)
    bnorm = np.linalg.norm(Bm, axis=0)
    res = np.linalg.norm(Bm - A @ Xm, axis=0) / np.where(bnorm > 0, bnorm, 1.0)
    status = Status.CONVERGED if np.all(np.isfinite(X)) else Status.BREAKDOWN
    return SolveResult(
        status=status,
        iterations=1,
        matvecs=Xm.shape[1],
        seconds=time.perf_counter() - start,
        backend="scipy",
        X=X,
        residual_norms=res,
        method="direct",
    )
