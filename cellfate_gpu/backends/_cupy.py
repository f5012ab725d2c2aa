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
:meth:`CupyBackend.segment_sum` sums each row on its own, as one cuSPARSE SpMV of the values
(arranged as an ``n x 1`` CSR matrix with the original ``indptr``) with the vector ``[1]``:
:math:`s_i = \sum_{p_i \le j < p_{i+1}} v_j` in float64, with an error of
:math:`O((p_{i+1} - p_i)\,\epsilon)` relative to the row's own magnitude. ``cupy.add.reduceat`` is
*not* used: CuPy computes it as a difference of one cumulative sum over all ``nnz`` values,
:math:`c_{p_{i+1}} - c_{p_i}` (cupy/_core/_routines_indexing.pyx:1225-1240 at v14.0.0), whose error
grows with the prefix sum (7e-10 instead of 1e-16 for the row sums of a 1M-row stochastic matrix).
:meth:`CupyBackend.segment_max` scatters with ``cupy.maximum.at`` into an array initialised to
:math:`-\infty` (float32/float64 targets: CuPy's atomics support no other float type). Row ids of
the stored entries are a cumulative sum of int32 row-start markers (``cupy.add.at`` has no int64
atomics in CuPy 14, and ``cupy.repeat`` does not accept device repeat counts).

Precision policy
----------------
Matrices are stored in ``settings.dtype`` (``float32`` halves their footprint). Every dense vector
the generic Krylov methods keep (Krylov bases, Hessenberg columns, residuals, the solution) is
float64 whatever the storage type, and :meth:`CupyBackend.spmm` widens a float32 matrix to float64
for each product with float64 vectors, so the sums accumulate in float64 and the vectors are never
rounded to float32: orthogonality of the bases and the attainable residuals are float64's. What
float32 storage costs is the rounding of the matrix entries themselves (:math:`\le 2^{-24}`
relative), i.e. the answer is that of a perturbed matrix, not of a less accurate method.

Memory
------
Before large allocations :meth:`CupyBackend.check_device_memory` compares the need with the memory
CuPy can use, the driver's free memory plus the blocks cached in CuPy's memory pool
(``cupy.get_default_memory_pool().free_bytes()``: freed arrays are kept there and reused), and
raises :class:`DeviceMemoryError` with what to try instead of letting CUDA fail half-way. Estimates
cover the Krylov bases and the work blocks of each method (see :meth:`CupyBackend.solve` and
:meth:`CupyBackend.partial_schur`). cupyx stores CSR indices as int32 (and casts without a range
check), so matrices with :math:`nnz \ge 2^{31}` or a dimension :math:`\ge 2^{31}` are refused.

Availability
------------
:meth:`CupyBackend.why_unavailable` counts the devices and then runs a probe once per process: a
tiny element-wise kernel (compiled by NVRTC), a 2x2 matrix product (cuBLAS) and a 2x2 CSR SpMV
(cuSPARSE), so that a broken CUDA installation is reported with the failing library instead of
crashing the first real computation.
"""

from __future__ import annotations

from typing import Any, final

import numpy as np
import scipy.sparse as sp

from cellfate_gpu.backends._base import Backend, host_csr
from cellfate_gpu.linalg.krylov_schur import default_ncv

__all__ = ["CupyBackend", "DeviceMemoryError"]

#: Fraction of the usable device memory a single step may plan to use (the rest is left for
#: cuSPARSE work buffers and small temporaries).
MEMORY_HEADROOM = 0.9
#: cupyx keeps CSR ``indices``/``indptr`` as int32 (cupyx/scipy/sparse/_compressed.py:284-285, v14.0.0).
INT32_LIMIT = 2**31 - 1

_PROBES: dict[int, str | None] = {}


def _probe(cupy) -> str | None:
    """Run NVRTC, cuBLAS and cuSPARSE once on tiny inputs; ``None`` or the failing library and error."""
    import cupyx.scipy.sparse as csp

    steps = []
    try:
        kernel = cupy.ElementwiseKernel("T x", "T y", "y = x + 1", "cellfate_gpu_probe")
        steps.append(("NVRTC (compiling a kernel)", lambda: kernel(cupy.zeros(2, dtype=np.float64))))
    except Exception as err:  # kernel construction itself can fail on a broken install
        return f"NVRTC (compiling a kernel) failed: {type(err).__name__}: {err}"
    steps.append(("cuBLAS (a 2x2 matrix product)", lambda: cupy.eye(2) @ cupy.ones((2, 2))))
    steps.append(("cuSPARSE (a 2x2 CSR SpMV)", lambda: csp.identity(2, dtype=np.float64, format="csr") @ cupy.ones(2)))
    for what, step in steps:
        try:
            out = step()
            cupy.cuda.runtime.deviceSynchronize()
            if float(out.sum()) <= 0:
                return f"{what} returned a wrong result"
        except Exception as err:
            return f"{what} failed: {type(err).__name__}: {err}"
    return None


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
        key = id(cupy)
        if key not in _PROBES:
            _PROBES[key] = _probe(cupy)
        if _PROBES[key] is not None:
            return f"the CUDA installation does not work: {_PROBES[key]}"
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
        free, total = self.usable_device_memory()
        if nbytes > MEMORY_HEADROOM * free:
            raise DeviceMemoryError(
                f"{what} needs {nbytes / 2**30:.2f} GiB of GPU memory, but only {free / 2**30:.2f} GiB of "
                f"{total / 2**30:.2f} GiB are free (driver + CuPy's memory pool). "
                "Try settings.dtype='float32' (halves matrix storage), "
                "chunking (fewer right-hand sides or a smaller Krylov basis `ncv`/`restart` per call), "
                "or backend='petsc' (distributes the matrix over MPI ranks)."
            )

    def usable_device_memory(self) -> tuple[int, int]:
        """``(usable, total)`` bytes: the driver's free memory plus the free blocks of CuPy's pool."""
        free, total = self._cp.cuda.runtime.memGetInfo()
        try:
            cached = int(self._cp.get_default_memory_pool().free_bytes())
        except AttributeError:  # a CuPy without the default pool (allocator replaced)
            cached = 0
        return int(free) + cached, int(total)

    @staticmethod
    def check_index_range(shape: tuple[int, int], nnz: int) -> None:
        """Refuse sizes cupyx's int32 CSR indices cannot hold (it would cast them without a check)."""
        if nnz > INT32_LIMIT or max(shape) > INT32_LIMIT:
            raise ValueError(
                f"CSR matrix {shape[0]}x{shape[1]} with nnz={nnz} does not fit in cupyx's int32 indices "
                f"(limit {INT32_LIMIT}); split the matrix (fewer cells or neighbours per call) or use "
                "backend='petsc' (64-bit indices, distributed over MPI ranks)."
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
        """Host CSR to the device (a logged transfer); a ``cupyx`` matrix stays on the device.

        A device matrix (``adata.obsp`` after :func:`cellfate_gpu.device.anndata_to_device`) is
        converted to canonical CSR in ``dtype`` and *copied* on the device, so the result never
        shares buffers with the caller's matrix; nothing crosses to the host. Another backend's
        native matrix comes through that backend's :meth:`to_scipy_csr`.
        """
        from cellfate_gpu._settings import settings

        if isinstance(A, self._csp.spmatrix):
            return self._device_csr(A, dtype)
        A = sp.csr_matrix(host_csr(A))
        if dtype is None:
            dtype = settings.dtype if A.dtype.kind == "f" else np.float64
        A = sp.csr_matrix(A, dtype=dtype)
        if not A.has_canonical_format:
            A = A.copy()
            A.sum_duplicates()
        self.check_index_range(A.shape, A.nnz)
        # on the device indices and indptr are int32 whatever SciPy used
        nbytes = A.data.nbytes + 4 * (A.indices.shape[0] + A.indptr.shape[0])
        what = f"CSR matrix {A.shape[0]}x{A.shape[1]} nnz={A.nnz} {A.dtype}"
        self.check_device_memory(nbytes, what)
        self._log_transfer(what, "host->device", nbytes)
        return self._csp.csr_matrix(A)

    def _device_csr(self, A: Any, dtype: Any) -> Any:
        """Canonical CSR copy of a ``cupyx`` matrix in ``dtype``, made on the device."""
        from cellfate_gpu._settings import settings

        if dtype is None:
            dtype = settings.dtype if A.dtype.kind == "f" else np.float64
        A = A.tocsr()
        self.check_index_range(tuple(A.shape), int(A.nnz))
        nbytes = int(A.nnz) * (np.dtype(dtype).itemsize + 4) + 4 * (int(A.shape[0]) + 1)
        self.check_device_memory(nbytes, f"copy of the CSR matrix {A.shape[0]}x{A.shape[1]} nnz={A.nnz}")
        out = A.astype(np.dtype(dtype)) if A.dtype != np.dtype(dtype) else A.copy()
        if not out.has_canonical_format:
            out.sum_duplicates()
        return out

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
        shape = (int(shape[0]), int(shape[1]))
        self.check_index_range(shape, int(data.shape[0]))
        return self._csp.csr_matrix((data, indices, indptr), shape=shape)

    def _row_ids(self, indptr: Any, nnz: int) -> Any:
        cp = self._cp
        # int32 markers: ``cupy.add.at`` has no int64 atomics in CuPy 14 (_routines_indexing.pyx:925-934)
        marks = cp.zeros(nnz + 1, dtype=np.int32)
        if indptr.shape[0] > 2:
            cp.add.at(marks, indptr[1:-1], 1)  # empty rows stack their markers on one position
        return cp.cumsum(marks[:nnz], dtype=np.int32)

    def row_ids(self, indptr: Any, nnz: int | None = None) -> Any:
        r"""Row of every stored entry: :math:`r = \mathrm{cumsum}(\sum_{i \ge 1} e_{p_i})` over ``[0, nnz)``.

        Without ``nnz`` it reads ``indptr[-1]`` from the device (one 4-byte sync); callers that know
        it from the values (``data.shape[0]``: :meth:`segment_max`, :meth:`scale_rows`, the Jacobi
        preconditioner) pass it and do not sync.
        """
        return self._row_ids(indptr, int(indptr[-1]) if nnz is None else int(nnz))

    def segment_sum(self, values: Any, indptr: Any) -> Any:
        r"""Per-row sums :math:`s_i = \sum_{p_i \le j < p_{i+1}} v_j` in float64 (0 for empty rows).

        Each row is summed on its own by one cuSPARSE SpMV (see the module docstring), not as a
        difference of a cumulative sum.
        """
        cp = self._cp
        n = int(indptr.shape[0]) - 1
        acc = values.dtype if values.dtype.kind == "c" else np.float64
        nnz = int(values.shape[0])
        if n == 0 or nnz == 0:
            return cp.zeros(n, dtype=acc)
        # An n x 1 CSR matrix with the values in column 0, times [1]: s = V 1, row by row.
        column = cp.zeros(nnz, dtype=np.int32)
        V = self._csp.csr_matrix((values.astype(acc, copy=False), column, indptr), shape=(n, 1))
        return V @ cp.ones(1, dtype=acc)

    def segment_max(self, values: Any, indptr: Any) -> Any:
        r"""Per-row maxima :math:`m_i = \max_{p_i \le j < p_{i+1}} v_j` (:math:`-\infty` for empty rows)."""
        cp = self._cp
        n = int(indptr.shape[0]) - 1
        out = cp.full(n, -np.inf, dtype=np.result_type(values.dtype, np.float32))
        if values.shape[0]:
            rows = self._row_ids(indptr, int(values.shape[0]))
            cp.maximum.at(out, rows, values.astype(out.dtype, copy=False))
        return out

    def scale_rows(self, A: Any, d: Any) -> Any:
        """``diag(d) @ A`` (row ids from the number of stored values, without a device sync)."""
        data, indices, indptr = self.csr_components(A)
        scaled = data * self._cp.take(d, self._row_ids(indptr, int(data.shape[0])))
        return self.csr_from_components(scaled, indices, indptr, tuple(A.shape))

    # ---------------------------------------------------------------- sparse algebra
    def _spmm(self, A: Any, X: Any) -> Any:
        """``A @ X`` by cuSPARSE; a float32 matrix is widened per product so sums accumulate in float64.

        This is the precision policy of the module docstring: float64 vectors are never narrowed.
        """
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
        """``A[rows][:, cols]`` with host indices, checked on the host first.

        cupyx takes fancy indices modulo the axis length (cupyx/scipy/sparse/_index.py:497, v14.0.0)
        where SciPy raises, so an out-of-range index would silently pick another row.
        """
        A = self.ensure_native(A)
        picked = []
        for name, idx, length in (("rows", rows, A.shape[0]), ("cols", cols, A.shape[1])):
            idx = np.asarray(idx)
            if idx.dtype.kind not in "iu":
                raise IndexError(f"submatrix {name} must be integers, got dtype {idx.dtype}")
            bad = (idx < -length) | (idx >= length)
            if np.any(bad):
                raise IndexError(
                    f"submatrix {name} index {int(idx[bad][0])} is out of range for a matrix with "
                    f"{length} {name} ({int(bad.sum())} bad indices)"
                )
            picked.append(self.asarray(np.where(idx < 0, idx + length, idx).astype(np.int32)))
        return self._canonical(A[picked[0]][:, picked[1]])

    def eye(self, n: int, dtype: Any = None) -> Any:
        return self._csp.identity(int(n), dtype=dtype or np.float64, format="csr")

    # ---------------------------------------------------------------- heavy operations
    def solve(self, A, B, *, method="gmres", tol=1e-10, maxiter=None, preconditioner=None, x0=None, restart=None):
        """Block GMRES on the device (generic); checks the Krylov basis fits in free GPU memory first."""
        if method in {"gmres", "block_gmres", "auto"}:
            n = int(A.shape[0])
            s = 1 if B.ndim == 1 else int(B.shape[1])
            m = min(restart or 30, n)
            # float64 throughout: the basis (m + 1) n s; the blocks X, B, R, the SpMM output and the
            # preconditioned input (5 n s); the update V^T Y and the CGS2 work vectors (2 n s); and,
            # for a float32 matrix, its float64 copy that spmm makes per product (12 nnz bytes).
            need = 8 * n * s * (m + 1 + 7)
            if A.dtype == np.float32:
                need += 12 * int(A.nnz)
            self.check_device_memory(need, f"GMRES Krylov basis ({m + 1} x {n} x {s})")
            method = "gmres"
        return super().solve(
            A, B, method=method, tol=tol, maxiter=maxiter, preconditioner=preconditioner, x0=x0, restart=restart
        )

    def partial_schur(self, A, k, *, which="LR", tol=1e-10, maxiter=None, ncv=None):
        """Generic Krylov-Schur on the device; checks the basis fits in free GPU memory first."""
        n = int(A.shape[0])
        m = min(n, ncv) if ncv is not None else default_ncv(k, n)
        # basis (m + 1) n, the rotated basis V Z of the restart, and work vectors, float64; for a
        # float32 matrix also its float64 copy that spmm makes per product (12 nnz bytes)
        need = 8 * n * (2 * (m + 1) + 4)
        if A.dtype == np.float32:
            need += 12 * int(A.nnz)
        self.check_device_memory(need, f"Krylov-Schur basis ({m + 1} x {n})")
        return super().partial_schur(A, k, which=which, tol=tol, maxiter=maxiter, ncv=ncv)

    def __repr__(self) -> str:
        return f"<CupyBackend 'cupy' CuPy {getattr(self._cp, '__version__', '?')}>"
