"""The ``jax`` backend: XLA-compiled sparse products over a CSR pytree, on CPU, GPU or TPU.

JAX computes in float32 unless 64-bit mode is on; constructing :class:`JaxBackend` enables it
(``jax.config.update("jax_enable_x64", True)``) because Krylov methods at tolerance 1e-10 need
float64. Structural sparse operations that XLA has no good kernel for (transpose, sums of matrices
with different patterns, sub-matrices) go through SciPy on the host; each such visit is a logged
transfer. SpMV/SpMM, segment reductions and gathers stay on the device.
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
        return JaxCSR(jnp.asarray(A.data), jnp.asarray(A.indices.astype(np.int64)),
                      jnp.asarray(A.indptr.astype(np.int64)), jnp.asarray(rows), tuple(A.shape))

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
