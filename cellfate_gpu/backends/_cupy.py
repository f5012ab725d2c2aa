r"""The ``cupy`` backend: CuPy arrays and ``cupyx.scipy.sparse`` CSR matrices on an NVIDIA GPU.

Where the work runs
-------------------
* SpMV/SpMM ``A @ X``: cuSPARSE through ``cupyx.scipy.sparse.csr_matrix``.
* Structural sparse algebra (transpose, sums, element-wise products, sub-matrices): cupyx on the
  device (cuSPARSE ``csr2csc``, ``csrgeam``; fancy indexing kernels).
* Krylov methods: the generic block GMRES and Krylov-Schur of :mod:`cellfate_gpu.linalg`, written
  against :attr:`CupyBackend.xp` (``array_api_compat.cupy``). They read one small block to the host
  per restart and never per matvec.

Segment reductions
------------------
:meth:`CupyBackend.segment_sum` uses ``cupy.add.reduceat`` over the rows of a CSR matrix (CuPy
offers ``reduceat`` for ``add`` since v12), accumulating in float64; unlike a cumulative-sum
difference :math:`c_{p_{i+1}} - c_{p_i}` it has no cancellation error growing with the prefix sum.
:meth:`CupyBackend.segment_max` scatters with ``cupy.maximum.at`` (CuPy's ``ufunc.at`` covers
``maximum`` since v12) into an array initialised to :math:`-\infty`. Row ids of the stored entries
are a cumulative sum of row-start markers (``cupy.repeat`` does not accept device repeat counts).

Precision and memory
--------------------
Matrices are stored in ``settings.dtype`` (``float32`` halves their footprint); products with a
float32 matrix are accumulated in float64 (the values are widened per product). Before large
allocations :meth:`CupyBackend.check_device_memory` compares the need with
``cupy.cuda.runtime.memGetInfo()`` and raises :class:`DeviceMemoryError` with what to try instead of
letting CUDA fail half-way.
"""

from __future__ import annotations

from typing import Any, final

import numpy as np
import scipy.sparse as sp

from cellfate_gpu.backends._base import Backend
from cellfate_gpu.linalg.krylov_schur import default_ncv

__all__ = ["CupyBackend", "DeviceMemoryError"]

#: Fraction of the free device memory a single step may plan to use (the rest is left for CuPy's
#: memory pool, cuSPARSE work buffers and temporaries).
MEMORY_HEADROOM = 0.9


class DeviceMemoryError(MemoryError):
    """A step needs more GPU memory than is free; the message says what to try."""


@final
class CupyBackend(Backend):
    """NVIDIA GPU backend over CuPy (see the module docstring for what runs where).

    Offers ``solve(method="gmres")`` with ``preconditioner=None | "jacobi" | callable`` and the
    generic partial Schur/eigen decompositions.
    """

    name = "cupy"
    extra = "cuda12"
    host_is_free = False
    mutable_arrays = True

    def __init__(self):
        import cupy
        import cupyx.scipy.sparse as cusparse

        self._cp = cupy
        self._csp = cusparse

    # ---------------------------------------------------------------- availability
    @classmethod
    def why_unavailable(cls) -> str | None:
        try:
            import cupy
        except ImportError:
            return "CuPy is not installed"
        try:
            n = cupy.cuda.runtime.getDeviceCount()
        except Exception as err:  # CUDARuntimeError without a driver, or a broken installation
            return f"no usable CUDA device ({type(err).__name__}: {err})"
        if n == 0:
            return "no CUDA device is visible"
        return None

    # ---------------------------------------------------------------- arrays
    @property
    def xp(self) -> Any:
        from array_api_compat import cupy as xp_cupy

        return xp_cupy

    def check_device_memory(self, nbytes: int, what: str) -> None:
        """Raise :class:`DeviceMemoryError` if ``nbytes`` exceed the free device memory (with headroom).

        Parameters
        ----------
        nbytes
            Bytes the step is about to allocate on the device.
        what
            What is being allocated, for the message (e.g. ``"GMRES Krylov basis (31 x 100000 x 6)"``).
        """
        free, total = self._cp.cuda.runtime.memGetInfo()
        if nbytes > MEMORY_HEADROOM * free:
            raise DeviceMemoryError(
                f"{what} needs {nbytes / 2**30:.2f} GiB of GPU memory, but only {free / 2**30:.2f} GiB of "
                f"{total / 2**30:.2f} GiB are free. Try settings.dtype='float32' (halves matrix storage), "
                "chunking (fewer right-hand sides or a smaller Krylov basis `ncv`/`restart` per call), "
                "or backend='petsc' (distributes the matrix over MPI ranks)."
            )

    def asarray(self, x: Any, dtype: Any = None) -> Any:
        cp = self._cp
        if isinstance(x, cp.ndarray):
            return x if dtype is None or x.dtype == np.dtype(dtype) else x.astype(dtype)
        host = np.asarray(x, dtype=dtype)
        self.check_device_memory(host.nbytes, f"array {host.shape} {host.dtype}")
        self._log_transfer(f"array {host.shape} {host.dtype}", "host->device", host.nbytes)
        return cp.asarray(host)

    def to_host(self, x: Any) -> np.ndarray:
        if isinstance(x, self._cp.ndarray):
            self._log_transfer(f"array {x.shape} {x.dtype}", "device->host", x.nbytes)
            return x.get()
        return np.asarray(x)

    def from_scipy_csr(self, A: Any, dtype: Any = None) -> Any:
        from cellfate_gpu._settings import settings

        A = sp.csr_matrix(A)
        if dtype is None:
            dtype = settings.dtype if A.dtype.kind == "f" else np.float64
        A = sp.csr_matrix(A, dtype=dtype)
        if not A.has_canonical_format:
            A = A.copy()
            A.sum_duplicates()
        nbytes = A.data.nbytes + A.indices.nbytes + A.indptr.nbytes
        what = f"CSR matrix {A.shape[0]}x{A.shape[1]} nnz={A.nnz} {A.dtype}"
        self.check_device_memory(nbytes, what)
        self._log_transfer(what, "host->device", nbytes)
        return self._csp.csr_matrix(A)

    def to_scipy_csr(self, A: Any) -> sp.csr_matrix:
        A = self.ensure_native(A)
        nbytes = A.data.nbytes + A.indices.nbytes + A.indptr.nbytes
        self._log_transfer(f"CSR matrix {A.shape[0]}x{A.shape[1]} nnz={A.nnz}", "device->host", nbytes)
        return sp.csr_matrix(A.get())

    def is_native(self, A: Any) -> bool:
        return isinstance(A, self._csp.csr_matrix)

    def ensure_native(self, A: Any) -> Any:
        if isinstance(A, self._csp.csr_matrix):
            return A
        if isinstance(A, self._csp.spmatrix):  # csc/coo already on the device: convert there
            return A.tocsr()
        return super().ensure_native(A)

    # ---------------------------------------------------------------- CSR primitives
    def csr_components(self, A: Any) -> tuple[Any, Any, Any]:
        A = self.ensure_native(A)
        if not A.has_canonical_format:
            A.sum_duplicates()
        return A.data, A.indices, A.indptr

    def csr_from_components(self, data: Any, indices: Any, indptr: Any, shape: tuple[int, int]) -> Any:
        return self._csp.csr_matrix((data, indices, indptr), shape=(int(shape[0]), int(shape[1])))

    def row_ids(self, indptr: Any) -> Any:
        r"""Row of every stored entry: :math:`r = \mathrm{cumsum}(\sum_{i \ge 1} e_{p_i})` over ``[0, nnz)``."""
        cp = self._cp
        nnz = int(indptr[-1])
        marks = cp.zeros(nnz + 1, dtype=indptr.dtype)
        if indptr.shape[0] > 2:
            cp.add.at(marks, indptr[1:-1], 1)  # empty rows stack their markers on one position
        return cp.cumsum(marks[:nnz], dtype=indptr.dtype)

    def segment_sum(self, values: Any, indptr: Any) -> Any:
        r"""Per-row sums :math:`s_i = \sum_{p_i \le j < p_{i+1}} v_j` in float64 (0 for empty rows)."""
        cp = self._cp
        n = int(indptr.shape[0]) - 1
        acc = values.dtype if values.dtype.kind == "c" else np.float64
        if n == 0:
            return cp.zeros(0, dtype=acc)
        # A trailing zero makes every start (including ``nnz`` for trailing empty rows) a valid index.
        extended = cp.concatenate([values.astype(acc, copy=False), cp.zeros(1, dtype=acc)])
        sums = cp.add.reduceat(extended, indptr[:-1])
        return cp.where(indptr[1:] > indptr[:-1], sums, 0)

    def segment_max(self, values: Any, indptr: Any) -> Any:
        r"""Per-row maxima :math:`m_i = \max_{p_i \le j < p_{i+1}} v_j` (:math:`-\infty` for empty rows)."""
        cp = self._cp
        n = int(indptr.shape[0]) - 1
        out = cp.full(n, -np.inf, dtype=np.result_type(values.dtype, np.float32))
        if values.shape[0]:
            cp.maximum.at(out, self.row_ids(indptr), values.astype(out.dtype, copy=False))
        return out

    # ---------------------------------------------------------------- sparse algebra
    def spmm(self, A: Any, X: Any) -> Any:
        """``A @ X`` by cuSPARSE; a float32 matrix is widened per product so sums accumulate in float64."""
        if A.dtype == np.float32 and X.dtype == np.float64:
            A = self._csp.csr_matrix((A.data.astype(np.float64), A.indices, A.indptr), shape=A.shape)
        return A @ X

    def _canonical(self, A: Any) -> Any:
        A = A.tocsr()
        A.sum_duplicates()  # sorts indices as well
        return A

    def transpose(self, A: Any) -> Any:
        return self._canonical(self.ensure_native(A).T)

    def linear_combination(self, coeffs: list[float], mats: list[Any]) -> Any:
        if len(coeffs) != len(mats) or not mats:
            raise ValueError(f"need one coefficient per matrix, got {len(coeffs)} and {len(mats)}")
        out = float(coeffs[0]) * self.ensure_native(mats[0])
        for c, M in zip(coeffs[1:], mats[1:], strict=True):
            out = out + float(c) * self.ensure_native(M)
        return self._canonical(out)

    def multiply(self, A: Any, B: Any) -> Any:
        return self._canonical(self.ensure_native(A).multiply(self.ensure_native(B)))

    def submatrix(self, A: Any, rows: np.ndarray, cols: np.ndarray) -> Any:
        rows_d = self.asarray(np.asarray(rows, dtype=np.int64))
        cols_d = self.asarray(np.asarray(cols, dtype=np.int64))
        return self._canonical(self.ensure_native(A)[rows_d][:, cols_d])

    def eye(self, n: int, dtype: Any = None) -> Any:
        return self._csp.identity(int(n), dtype=dtype or np.float64, format="csr")

    # ---------------------------------------------------------------- heavy operations
    def solve(self, A, B, *, method="gmres", tol=1e-10, maxiter=None, preconditioner=None, x0=None, restart=None):
        """Block GMRES on the device (generic); checks the Krylov basis fits in free GPU memory first."""
        if method in {"gmres", "block_gmres", "auto"}:
            n = int(A.shape[0])
            s = 1 if B.ndim == 1 else int(B.shape[1])
            m = min(restart or 30, n)
            # basis (m + 1) n s, plus X, B, residual and SpMM output blocks, all float64
            need = 8 * n * s * (m + 1 + 4)
            self.check_device_memory(need, f"GMRES Krylov basis ({m + 1} x {n} x {s})")
            method = "gmres"
        return super().solve(
            A, B, method=method, tol=tol, maxiter=maxiter, preconditioner=preconditioner, x0=x0, restart=restart
        )

    def partial_schur(self, A, k, *, which="LR", tol=1e-10, maxiter=None, ncv=None):
        """Generic Krylov-Schur on the device; checks the basis fits in free GPU memory first."""
        n = int(A.shape[0])
        m = min(n, ncv) if ncv is not None else default_ncv(k, n)
        # basis (m + 1) n, the rotated basis V Z of the restart, and work vectors, float64
        need = 8 * n * (2 * (m + 1) + 4)
        self.check_device_memory(need, f"Krylov-Schur basis ({m + 1} x {n})")
        return super().partial_schur(A, k, which=which, tol=tol, maxiter=maxiter, ncv=ncv)

    def __repr__(self) -> str:
        return f"<CupyBackend 'cupy' CuPy {getattr(self._cp, '__version__', '?')}>"
