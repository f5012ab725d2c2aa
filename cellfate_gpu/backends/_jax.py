r"""The ``jax`` backend: XLA-compiled sparse products over a CSR pytree, on CPU, GPU or TPU.

Precision (global state)
    JAX computes in float32 unless 64-bit mode is on. Importing this module changes nothing;
    *constructing* :class:`JaxBackend` (``get_backend("jax")``) calls
    ``jax.config.update("jax_enable_x64", True)`` for the whole process, because the generic Krylov
    code runs eagerly outside any context manager and needs float64 to reach tolerances of 1e-10.
    A scoped ``jax.experimental.enable_x64()`` would not cover arrays flowing between calls.

SpMM
    :func:`jax.experimental.sparse.BCSR` products and ``jax.ops.segment_sum`` over row ids lower to
    scatter-adds, which XLA runs slowly on the CPU (6-14x SciPy for a 100k kNN matrix). When the rows
    have similar lengths (kNN graphs: the padded size :math:`n \cdot K_{max}` is at most twice the
    stored entries and :math:`K_{max} \le 64`) the matrix also keeps an ELLPACK copy (``(n, K)``
    values and columns, built once per matrix and cached), and the jit-compiled product is
    :math:`Y = \sum_{k<K} \mathrm{diag}(D_{:,k})\, X[C_{:,k}]`: K dense gathers, no scatter, within 2x
    of SciPy. Other matrices use the segment sum.

Structural operations
    XLA has no good kernel for transposes, sums of matrices with different patterns or
    sub-matrices, so these go through SciPy on the host; each such visit is a logged transfer.
    SpMV/SpMM, segment reductions and gathers stay on the device.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, final

import numpy as np
import scipy.sparse as sp

from cellfate_gpu.backends._base import Backend

__all__ = ["JaxBackend", "JaxCSR"]


@dataclasses.dataclass(frozen=True)
class JaxCSR:
    """CSR matrix as JAX arrays; ``row_ids`` (row of every stored entry) makes SpMM one segment sum."""

    data: Any
    indices: Any
    indptr: Any
    row_ids: Any
    shape: tuple[int, int]
    #: Lazily built ELLPACK copy ``(values (n, K), columns (n, K))`` or ``None`` when ELL is unsuitable.
    _ell: dict = dataclasses.field(default_factory=dict, compare=False, repr=False)

    @property
    def dtype(self) -> Any:
        return self.data.dtype

    @property
    def nnz(self) -> int:
        return int(self.data.shape[0])


@functools.cache
def _register_pytree() -> None:
    import jax

    jax.tree_util.register_pytree_node(
        JaxCSR,
        lambda m: ((m.data, m.indices, m.indptr, m.row_ids), m.shape),
        lambda shape, ch: JaxCSR(*ch, shape=shape),
    )


@functools.cache
def _spmm_kernel():
    import jax

    @functools.partial(jax.jit, static_argnames=("n",))
    def spmm(data, indices, row_ids, X, n):
        gathered = X[indices]
        weighted = data[:, None] * gathered if X.ndim == 2 else data * gathered
        return jax.ops.segment_sum(weighted, row_ids, num_segments=n, indices_are_sorted=True)

    return spmm


#: ELLPACK is used when the padded size is at most this multiple of the stored entries ...
ELL_MAX_PADDING = 2.0
#: ... and the longest row is at most this long (the product loop is unrolled over K).
ELL_MAX_WIDTH = 64


@functools.cache
def _ell_kernel():
    import jax

    @jax.jit
    def spmm(values, columns, X):
        def term(k):
            w = values[:, k]
            return (w[:, None] if X.ndim == 2 else w) * X[columns[:, k]]

        out = term(0)
        for k in range(1, values.shape[1]):
            out = out + term(k)
        return out

    return spmm


def _ell_of(A: JaxCSR) -> tuple[Any, Any] | None:
    """ELLPACK copy of ``A`` (cached on the matrix), or ``None`` if rows are too uneven or too long."""
    if "ell" in A._ell:
        return A._ell["ell"]
    import jax.numpy as jnp

    n, nnz = A.shape[0], int(A.data.shape[0])
    ell = None
    if n > 0 and nnz > 0:
        counts = A.indptr[1:] - A.indptr[:-1]
        width = int(jnp.max(counts))  # one host read per matrix, at its first product
        if width <= ELL_MAX_WIDTH and n * width <= ELL_MAX_PADDING * nnz:
            pos = jnp.arange(nnz, dtype=A.indptr.dtype) - A.indptr[A.row_ids]
            values = jnp.zeros((n, width), dtype=A.data.dtype).at[A.row_ids, pos].set(A.data)
            # padding points at column 0 with weight 0
            columns = jnp.zeros((n, width), dtype=A.indices.dtype).at[A.row_ids, pos].set(A.indices)
            ell = (values, columns)
    A._ell["ell"] = ell
    return ell


@final
class JaxBackend(Backend):
    """JAX backend (see the module docstring for what runs where)."""

    name = "jax"
    extra = "jax"
    host_is_free = False
    mutable_arrays = False

    def __init__(self):
        import jax

        jax.config.update("jax_enable_x64", True)
        _register_pytree()

    @classmethod
    def why_unavailable(cls) -> str | None:
        try:
            import jax  # noqa: F401
        except ImportError:
            return "JAX is not installed"
        return None

    @property
    def xp(self) -> Any:
        import jax.numpy as jnp

        return jnp

    # transfers
    def asarray(self, x: Any, dtype: Any = None) -> Any:
        import jax.numpy as jnp

        arr = np.asarray(x, dtype=dtype)
        self._log_transfer("array", "host->device", arr.nbytes)
        return jnp.asarray(arr)

    def to_host(self, x: Any) -> np.ndarray:
        out = np.asarray(x)
        self._log_transfer("array", "device->host", out.nbytes)
        return out

    def from_scipy_csr(self, A: Any, dtype: Any = None) -> JaxCSR:
        import jax.numpy as jnp

        A = sp.csr_matrix(A, dtype=dtype if dtype is not None else np.float64)
        if not A.has_canonical_format:
            A = A.copy()
            A.sum_duplicates()
        self._log_transfer("CSR matrix", "host->device", A.data.nbytes + A.indices.nbytes + A.indptr.nbytes)
        rows = np.repeat(np.arange(A.shape[0], dtype=np.int64), np.diff(A.indptr))
        return JaxCSR(
            jnp.asarray(A.data),
            jnp.asarray(A.indices.astype(np.int64)),
            jnp.asarray(A.indptr.astype(np.int64)),
            jnp.asarray(rows),
            tuple(A.shape),
        )

    def to_scipy_csr(self, A: JaxCSR) -> sp.csr_matrix:
        data, indices, indptr = (np.asarray(A.data), np.asarray(A.indices), np.asarray(A.indptr))
        self._log_transfer("CSR matrix", "device->host", data.nbytes + indices.nbytes + indptr.nbytes)
        return sp.csr_matrix((data, indices, indptr), shape=A.shape)

    def is_native(self, A: Any) -> bool:
        return isinstance(A, JaxCSR)

    # CSR primitives
    def csr_components(self, A: JaxCSR):
        return A.data, A.indices, A.indptr

    def csr_from_components(self, data, indices, indptr, shape):
        import jax.numpy as jnp

        n = int(shape[0])
        counts = indptr[1:] - indptr[:-1]
        rows = jnp.repeat(jnp.arange(n, dtype=indptr.dtype), counts, total_repeat_length=int(data.shape[0]))
        return JaxCSR(data, indices, indptr, rows, (int(shape[0]), int(shape[1])))

    def row_ids(self, indptr):
        import jax.numpy as jnp

        n = int(indptr.shape[0]) - 1
        nnz = int(indptr[-1])
        return jnp.repeat(jnp.arange(n, dtype=indptr.dtype), indptr[1:] - indptr[:-1], total_repeat_length=nnz)

    def segment_sum(self, values, indptr):
        import jax

        n = int(indptr.shape[0]) - 1
        return jax.ops.segment_sum(values, self.row_ids(indptr), num_segments=n, indices_are_sorted=True)

    def segment_max(self, values, indptr):
        import jax
        import jax.numpy as jnp

        n = int(indptr.shape[0]) - 1
        out = jax.ops.segment_max(values, self.row_ids(indptr), num_segments=n, indices_are_sorted=True)
        empty = (indptr[1:] - indptr[:-1]) == 0
        return jnp.where(empty, -jnp.inf, out)

    # sparse algebra
    def spmm(self, A: JaxCSR, X: Any) -> Any:
        """``A @ X`` jit-compiled: ELLPACK gathers for even rows, else a sorted segment sum."""
        ell = _ell_of(A)
        if ell is not None:
            return _ell_kernel()(ell[0], ell[1], X)
        return _spmm_kernel()(A.data, A.indices, A.row_ids, X, A.shape[0])

    def _via_host(self, fn, *mats):
        return self.from_scipy_csr(fn(*[self.to_scipy_csr(M) for M in mats]))

    def transpose(self, A):
        return self._via_host(lambda M: sp.csr_matrix(M.T), A)

    def linear_combination(self, coeffs, mats):
        def combine(*Ms):
            out = coeffs[0] * Ms[0]
            for c, M in zip(coeffs[1:], Ms[1:], strict=True):
                out = out + c * M
            return sp.csr_matrix(out)

        return self._via_host(combine, *mats)

    def multiply(self, A, B):
        return self._via_host(lambda M, N: sp.csr_matrix(M.multiply(N)), A, B)

    def submatrix(self, A, rows, cols):
        return self._via_host(lambda M: sp.csr_matrix(M[np.asarray(rows)][:, np.asarray(cols)]), A)

    def eye(self, n, dtype=None):
        return self.from_scipy_csr(sp.identity(n, dtype=dtype or np.float64, format="csr"))
