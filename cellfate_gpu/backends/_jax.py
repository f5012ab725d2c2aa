r"""The ``jax`` backend: XLA-compiled sparse products over a CSR pytree, on CPU, GPU or TPU.

Precision (required at start-up, never switched here)
    JAX computes in float32 unless 64-bit mode is on, and the generic Krylov code needs float64 to
    reach tolerances of 1e-10. Turning ``jax_enable_x64`` on is a process-wide switch that changes
    every other JAX user's arrays, so this backend never flips it: it is *available* only when
    64-bit mode is already on, and otherwise :meth:`JaxBackend.why_unavailable` says how to turn it
    on (``JAX_ENABLE_X64=1`` in the environment before Python starts, or
    ``jax.config.update("jax_enable_x64", True)`` before any JAX array is created), so that
    ``get_backend("jax")`` raises with that sentence. The precision policy is the one of the other
    backends: float64 Krylov vectors; a float32 matrix is widened inside each product.

SpMM
    :func:`jax.experimental.sparse.BCSR` products and ``jax.ops.segment_sum`` over row ids lower to
    scatter-adds, which XLA runs slowly on the CPU (6-14x SciPy for a 100k kNN matrix). When the rows
    have similar lengths (kNN graphs: the padded size :math:`n \cdot K_{max}` is at most twice the
    stored entries and :math:`K_{max} \le 64`) the matrix also keeps an ELLPACK copy (``(n, K)``
    values and columns, built once per matrix and cached), and the jit-compiled product is
    :math:`Y = \sum_{k<K} \mathrm{diag}(D_{:,k})\, X[C_{:,k}]`: K dense gathers, no scatter, within 2x
    of SciPy. Other matrices use the segment sum.

Compiled Krylov sweeps
    Eager JAX compiles one XLA program per operation and array shape; the generic Arnoldi loop,
    whose Gram-Schmidt products grow by one column per step, compiled 248 programs for one partial
    Schur at n = 2000 (and again for every new size). :meth:`JaxBackend.arnoldi_sweep` is the
    backend hook of :func:`cellfate_gpu.linalg.krylov_schur.krylov_schur`: the basis is one
    preallocated ``(m + 1, n)`` array whose unused rows are zero, so that the Gram-Schmidt products
    :math:`h = V w`, :math:`w \leftarrow w - V^T h` over *all* rows equal those over the first
    :math:`j + 1`; the whole sweep from column ``p`` to ``m`` is one jitted ``fori_loop`` (the start
    ``p`` is a traced integer) and the restart :math:`V_{:p} \leftarrow Z_{:, :p}^T V_{:m}`,
    :math:`v_p \leftarrow v_m` is one jitted product with a zero-padded ``Z``. Both compile once per
    ``(n, m)`` and matrix layout, not once per step or restart. The row primitives (row ids,
    segment sum and max) and the ELLPACK copy are jitted too, one program each per shape: eager,
    they compiled about 40 programs per matrix size. A whole public ``partial_schur`` at a new size
    compiles fewer than 40 programs, and so does a block-GMRES solve, whose cycle start, packing and
    residual are fused by :meth:`JaxBackend.fuse` (tests/test_jax_backend.py).

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

from cellfate_gpu.backends._base import Backend, host_csr

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


@functools.cache
def _jitted(fn: Any) -> Any:
    import jax

    return jax.jit(fn)


@functools.cache
def _row_kernels():
    """Row ids, segment sum and segment max over CSR rows, each one jitted program per shape.

    Eager, each would be half a dozen XLA programs (``repeat`` alone is a scatter-add and a
    cumulative sum), compiled again for every new matrix size.
    """
    import jax
    import jax.numpy as jnp

    @functools.partial(jax.jit, static_argnames=("nnz",))
    def row_ids(indptr, nnz):
        n = indptr.shape[0] - 1
        return jnp.repeat(jnp.arange(n, dtype=indptr.dtype), indptr[1:] - indptr[:-1], total_repeat_length=nnz)

    @jax.jit
    def segment_sum(values, indptr):
        n = indptr.shape[0] - 1
        rows = row_ids(indptr, nnz=values.shape[0])
        return jax.ops.segment_sum(values, rows, num_segments=n, indices_are_sorted=True)

    @jax.jit
    def segment_max(values, indptr):
        n = indptr.shape[0] - 1
        rows = row_ids(indptr, nnz=values.shape[0])
        out = jax.ops.segment_max(values, rows, num_segments=n, indices_are_sorted=True)
        return jnp.where((indptr[1:] - indptr[:-1]) == 0, -jnp.inf, out)

    return row_ids, segment_sum, segment_max


@functools.cache
def _ell_builders():
    """Jitted pieces of the ELLPACK copy: the longest row, and the padded ``(n, K)`` arrays (one program each)."""
    import jax
    import jax.numpy as jnp

    @jax.jit
    def longest_row(indptr):
        return jnp.max(indptr[1:] - indptr[:-1])

    @functools.partial(jax.jit, static_argnames=("n", "width"))
    def build(data, indices, indptr, row_ids, n, width):
        pos = jnp.arange(data.shape[0], dtype=indptr.dtype) - indptr[row_ids]
        values = jnp.zeros((n, width), dtype=data.dtype).at[row_ids, pos].set(data)
        # padding points at column 0 with weight 0
        columns = jnp.zeros((n, width), dtype=indices.dtype).at[row_ids, pos].set(indices)
        return values, columns

    return longest_row, build


def _ell_of(A: JaxCSR) -> tuple[Any, Any] | None:
    """ELLPACK copy of ``A`` (cached on the matrix), or ``None`` if rows are too uneven or too long.

    Built by two compiled programs (the longest row, then the scatter into the padded arrays), not
    by a dozen eager operations that would each compile once per matrix size.
    """
    if "ell" in A._ell:
        return A._ell["ell"]
    n, nnz = A.shape[0], int(A.data.shape[0])
    ell = None
    if n > 0 and nnz > 0:
        longest_row, build = _ell_builders()
        width = int(longest_row(A.indptr))  # one host read per matrix, at its first product
        if width <= ELL_MAX_WIDTH and n * width <= ELL_MAX_PADDING * nnz:
            ell = build(A.data, A.indices, A.indptr, A.row_ids, n=n, width=width)
    A._ell["ell"] = ell
    return ell


def _matvec(op: tuple, v: Any) -> Any:
    """``A v`` in float64 inside a jitted function.

    ``op`` is ``("ell", values, columns)`` or ``("seg", data, indices, row_ids, n)``.
    """
    import jax
    import jax.numpy as jnp

    if op[0] == "ell":
        values, columns = op[1], op[2]
        return jnp.sum(values.astype(jnp.float64) * v[columns], axis=1)
    data, indices, row_ids, n = op[1], op[2], op[3], op[4]
    return jax.ops.segment_sum(data.astype(jnp.float64) * v[indices], row_ids, num_segments=n, indices_are_sorted=True)


@functools.cache
def _sweep_kernels():
    """The jitted Arnoldi sweep and restart rotation of :class:`_ArnoldiSweep` (built once per process)."""
    import jax
    import jax.numpy as jnp

    def project(L, w):
        if L is None:
            return w
        for _ in range(2):
            w = w - L @ (L.T @ w)
        return w

    @functools.partial(jax.jit, static_argnames=("kind", "n"))
    def extend(kind, n, arrays, V, p, L):
        op = (kind, *arrays, n) if kind == "seg" else (kind, *arrays)
        m = V.shape[0] - 1

        def step(j, state):
            V, H = state
            w = _matvec(op, V[j])
            if L is not None:
                w = w - L @ (L.T @ w)
            h = V @ w  # rows beyond j are zero, so this is V_{:j+1} w
            w = w - V.T @ h
            h2 = V @ w  # CGS2
            w = w - V.T @ h2
            h = h + h2
            w = project(L, w)
            beta = jnp.linalg.norm(w)
            V = V.at[j + 1].set(w / jnp.where(beta > 0, beta, 1.0))
            H = H.at[:, j].set(h.at[j + 1].set(beta))
            return V, H

        return jax.lax.fori_loop(p, m, step, (V, jnp.zeros((m + 1, m), dtype=jnp.float64)))

    @jax.jit
    def rotate(V, Zpad, p):
        m = V.shape[0] - 1
        new = jnp.zeros_like(V).at[:m].set(Zpad.T @ V[:m])  # rows >= p are zero (Z is zero-padded)
        return jax.lax.dynamic_update_slice(new, V[m][None, :], (p, 0))

    @jax.jit
    def set_row(V, j, v):
        return jax.lax.dynamic_update_slice(V, v[None, :], (j, 0))

    @jax.jit
    def get_row(V, j):
        return jax.lax.dynamic_index_in_dim(V, j, axis=0, keepdims=False)

    return extend, rotate, set_row, get_row


class _ArnoldiSweep:
    """A preallocated Krylov basis with a compiled sweep (the hook :meth:`JaxBackend.arnoldi_sweep`).

    Offers the basis methods the generic Krylov-Schur uses (``set``, ``column``, ``first``,
    ``replace_first``) plus ``extend(p)`` (Arnoldi steps ``p .. m-1``, returning the ``(m + 1, m)``
    block of new Hessenberg columns) and ``rotate(Z, p)`` (the restart).
    """

    def __init__(self, A: JaxCSR, m: int, locked: Any):
        import jax.numpy as jnp

        n = int(A.shape[0])
        self.m, self.n, self.locked = int(m), n, locked
        self.buffer = jnp.zeros((self.m + 1, n), dtype=jnp.float64)
        ell = _ell_of(A)
        if ell is not None:
            self._kind, self._arrays = "ell", (ell[0], ell[1])
        else:
            self._kind, self._arrays = "seg", (A.data, A.indices, A.row_ids)
        self._extend, self._rotate, self._set_row, self._get_row = _sweep_kernels()

    def set(self, j: int, v: Any) -> None:
        self.buffer = self._set_row(self.buffer, j, v)

    def column(self, j: int) -> Any:
        return self._get_row(self.buffer, j)

    def first(self, j: int) -> Any:
        return self.buffer[:j].T

    def replace_first(self, V: Any, residual: Any) -> None:
        import jax.numpy as jnp

        p = int(V.shape[1])
        self.buffer = jnp.zeros_like(self.buffer).at[:p].set(V.T).at[p].set(residual)

    def extend(self, p: int) -> Any:
        self.buffer, H = self._extend(self._kind, self.n, self._arrays, self.buffer, p, self.locked)
        return H

    def rotate(self, Z: np.ndarray, p: int) -> None:
        import jax.numpy as jnp

        Zpad = np.zeros((self.m, self.m))
        Zpad[: Z.shape[0], :p] = Z[:, :p]
        self.buffer = self._rotate(self.buffer, jnp.asarray(Zpad), p)


@functools.cache
def _gmres_kernels():
    """The jitted block-GMRES cycle sweep of :class:`_GmresSweep` (built once per process)."""
    import jax
    import jax.numpy as jnp

    @functools.partial(jax.jit, static_argnames=("kind", "n"))
    def extend(kind, n, arrays, V, dinv, steps):
        """Arnoldi steps ``0 .. steps-1`` for all ``s`` columns; ``V`` is ``(s, m + 1, n)``, zero beyond row 0."""
        op = (kind, *arrays, n) if kind == "seg" else (kind, *arrays)
        s, m1, _ = V.shape
        m = m1 - 1

        def matmat(W):  # (s, n) -> (s, n): A M^{-1} w_c for every column
            return jax.vmap(lambda w: _matvec(op, dinv * w))(W)

        def step(j, state):
            V, H = state
            w = matmat(V[:, j, :])
            h = jnp.einsum("cjn,cn->cj", V, w)  # rows beyond j are zero
            w = w - jnp.einsum("cj,cjn->cn", h, V)
            h2 = jnp.einsum("cjn,cn->cj", V, w)  # CGS2
            w = w - jnp.einsum("cj,cjn->cn", h2, V)
            h = h + h2
            hn = jnp.linalg.norm(w, axis=1)
            V = V.at[:, j + 1, :].set(w / jnp.where(hn > 0, hn, 1.0)[:, None])
            col = h.T.at[j + 1].set(hn)  # (m + 1, s)
            return V, H.at[:, j, :].set(col)

        return jax.lax.fori_loop(0, steps, step, (V, jnp.zeros((m + 1, m, s), dtype=jnp.float64)))

    @jax.jit
    def combine(V, Y):
        """``(s, n)``: ``out[c] = Y[c] @ V_c[:m]`` with ``Y`` zero-padded to ``m`` columns."""
        return jnp.einsum("cj,cjn->cn", Y, V[:, : Y.shape[1], :])

    return extend, combine


class _GmresSweep:
    """Fixed-shape block-GMRES cycle (the hook :meth:`JaxBackend.gmres_sweep`)."""

    def __init__(self, A: JaxCSR, m: int, s: int, dinv: Any):
        import jax.numpy as jnp

        self.m, self.s, self.n = int(m), int(s), int(A.shape[0])
        ell = _ell_of(A)
        if ell is not None:
            self._kind, self._arrays = "ell", (ell[0], ell[1])
        else:
            self._kind, self._arrays = "seg", (A.data, A.indices, A.row_ids)
        self.dinv = dinv if dinv is not None else jnp.ones(self.n, dtype=jnp.float64)
        self._extend, self._combine = _gmres_kernels()
        self.V = None

    def set(self, j: int, v: Any) -> None:
        """Start a cycle: ``v`` is the ``(s, n)`` block of normalised residuals (``j`` must be 0)."""
        import jax.numpy as jnp

        if j != 0:
            raise ValueError("a compiled GMRES sweep sets only its first vector")
        self.V = jnp.zeros((self.s, self.m + 1, self.n), dtype=jnp.float64).at[:, 0, :].set(v)

    def extend(self, steps: int) -> Any:
        """Run ``steps`` Arnoldi steps; the ``(m + 1, m, s)`` Hessenberg block (columns ``>= steps`` zero)."""
        self.V, H = self._extend(self._kind, self.n, self._arrays, self.V, self.dinv, steps)
        return H

    def combine(self, j: int, h: Any) -> Any:
        import jax.numpy as jnp

        Y = jnp.zeros((self.s, self.m), dtype=jnp.float64).at[:, :j].set(h)
        return self._combine(self.V, Y)


@final
class JaxBackend(Backend):
    """JAX backend (see the module docstring for what runs where)."""

    name = "jax"
    extra = "jax"
    host_is_free = False
    mutable_arrays = False

    def __init__(self):
        reason = self.why_unavailable()
        if reason is not None:  # direct construction; get_backend raises BackendUnavailableError first
            raise RuntimeError(reason)
        _register_pytree()

    @classmethod
    def why_unavailable(cls) -> str | None:
        """``None`` when JAX imports and runs in 64-bit mode; else what to do (no global state is changed)."""
        try:
            import jax
        except ImportError:
            return "JAX is not installed"
        if not jax.config.jax_enable_x64:
            return (
                "JAX runs in 32-bit mode and this backend needs float64: set the environment variable "
                "JAX_ENABLE_X64=1 before starting Python, or call jax.config.update('jax_enable_x64', True) "
                "before creating any JAX array (cellfate_gpu does not switch this process-wide flag itself)"
            )
        return None

    @property
    def xp(self) -> Any:
        import jax.numpy as jnp

        return jnp

    def fuse(self, fn: Any) -> Any:
        """``jax.jit(fn)``, one jitted wrapper per function (so its compiled programs are reused)."""
        return _jitted(fn)

    def arnoldi_sweep(self, A: JaxCSR, m: int, locked: Any = None) -> _ArnoldiSweep:
        """Hook of the generic Krylov-Schur: a fixed-shape basis of ``m + 1`` vectors.

        Its Arnoldi sweep and restart are compiled once per size (see the module docstring).
        """
        return _ArnoldiSweep(A, m, locked)

    def gmres_sweep(self, A: JaxCSR, m: int, s: int, precond: Any = None) -> _GmresSweep | None:
        """Hook of the generic block GMRES: a fixed ``(s, m + 1, n)`` basis, one compiled sweep per cycle.

        Returns ``None`` (the generic loop) for preconditioners that are not diagonal.

        ``precond`` is the callable the generic code built (``None`` or the Jacobi scaling, whose
        diagonal is read off by applying it to a column of ones).
        """
        import jax.numpy as jnp

        dinv = None
        if precond is not None:
            if not getattr(precond, "is_diagonal", False):
                return None
            dinv = jnp.reshape(precond(jnp.ones((int(A.shape[0]), 1), dtype=jnp.float64)), (-1,))
        return _GmresSweep(A, m, s, dinv)

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

        A = sp.csr_matrix(host_csr(A), dtype=dtype if dtype is not None else np.float64)
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
        rows = _row_kernels()[0](indptr, nnz=int(data.shape[0]))
        return JaxCSR(data, indices, indptr, rows, (int(shape[0]), int(shape[1])))

    def row_ids(self, indptr, nnz=None):
        nnz = int(indptr[-1]) if nnz is None else int(nnz)  # a device read only when not given
        return _row_kernels()[0](indptr, nnz=nnz)

    def segment_sum(self, values, indptr):
        return _row_kernels()[1](values, indptr)

    def segment_max(self, values, indptr):
        return _row_kernels()[2](values, indptr)

    # sparse algebra
    def _spmm(self, A: JaxCSR, X: Any) -> Any:
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
