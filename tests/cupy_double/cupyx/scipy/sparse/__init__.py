"""``cupyx.scipy.sparse`` of the CuPy test double: CSR/CSC matrices over SciPy, device components.

Building a matrix from a SciPy matrix is a counted host->device transfer and ``.get()`` a counted
device->host transfer, as in cupyx. ``.data``, ``.indices`` and ``.indptr`` are device arrays of
the double (views of the SciPy buffers). Mixing a host NumPy array into a product raises
``TypeError`` as in CuPy.

CuPy 14's limits (cupyx/scipy/sparse/_compressed.py at tag v14.0.0):

* values must be bool, float32, float64, complex64 or complex128, else ``ValueError``
  (:273-281, ``if dtype.char not in '?fdFD'``); integer SciPy matrices are refused too;
* ``indices`` and ``indptr`` are always int32 (:229-230 from SciPy, :284-285 from components):
  CuPy casts without a range check, so ``nnz >= 2**31`` would wrap. The double raises
  ``OverflowError`` there instead of wrapping, so a backend that forgets to refuse fails loudly;
* fancy row/column indices are converted with ``cupy.asarray`` (an implicit copy of host indices,
  counted) and taken modulo the axis length (cupyx/scipy/sparse/_index.py:482-497,
  ``return x % length``): out-of-range indices wrap instead of raising.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as _sp
from cupy._double import _implicit_host, count, ndarray, unsupported

_INT32_MAX = np.iinfo(np.int32).max


def _check_dtype(dtype) -> np.dtype:
    dtype = np.dtype(dtype)
    if dtype.char not in "?fdFD":
        raise ValueError("Only bool, float32, float64, complex64 and complex128 are supported")
    return dtype


def _int32(a: np.ndarray) -> np.ndarray:
    """``astype('i')`` as CuPy does, but refusing values that would wrap (see the module docstring)."""
    if a.size and (int(a.max()) > _INT32_MAX or int(a.min()) < -_INT32_MAX - 1):
        raise OverflowError("index values do not fit in int32 (CuPy would wrap them silently)")
    return a.astype(np.int32, copy=False)


__all__ = [
    "coo_matrix", "csc_matrix", "csr_matrix", "diags", "eye", "identity", "issparse", "isspmatrix_csr", "spmatrix",
]  # fmt: skip


def _nbytes(M) -> int:
    M = _sp.csr_matrix(M) if M.format not in {"csr", "csc"} else M
    return M.data.nbytes + M.indices.nbytes + M.indptr.nbytes


class spmatrix:
    """Base of the double's sparse matrices (holds a SciPy matrix ``_m`` standing for device memory)."""

    format = ""
    _scipy = None

    def __init__(self, arg1, shape=None, dtype=None, copy=False):
        if isinstance(arg1, spmatrix):
            m = arg1._m
        elif _sp.issparse(arg1):
            count("h2d", _nbytes(arg1))
            m = arg1
        elif isinstance(arg1, tuple) and len(arg1) == 3:
            data, indices, indptr = arg1
            for part in (data, indices, indptr):
                if not isinstance(part, ndarray):
                    raise unsupported(part)
            m = self._scipy((data._a, indices._a, indptr._a), shape=shape)
        elif isinstance(arg1, tuple) and len(arg1) == 2 and isinstance(arg1[1], tuple):
            data, (row, col) = arg1
            for part in (data, row, col):
                if not isinstance(part, ndarray):
                    raise unsupported(part)
            m = _sp.coo_matrix((data._a, (row._a, col._a)), shape=shape)
        elif isinstance(arg1, ndarray):
            m = arg1._a
        elif isinstance(arg1, np.ndarray):
            raise unsupported(arg1)
        else:
            raise TypeError(f"unsupported input for {type(self).__name__}: {type(arg1).__name__}")
        m = self._scipy(m, dtype=dtype, copy=copy)
        _check_dtype(m.dtype)
        self._m = self._to_int32(m)

    @classmethod
    def _to_int32(cls, m):
        if m.format in {"csr", "csc"}:
            m.indices = _int32(m.indices)
            m.indptr = _int32(m.indptr)
        elif m.format == "coo":
            m.row = _int32(m.row)
            m.col = _int32(m.col)
        return m

    @classmethod
    def _from(cls, m):
        out = cls.__new__(cls)
        m = cls._scipy(m)
        _check_dtype(m.dtype)
        out._m = cls._to_int32(m)
        return out

    # ------------------------------------------------------------------ metadata
    shape = property(lambda self: self._m.shape)
    dtype = property(lambda self: self._m.dtype)
    nnz = property(lambda self: self._m.nnz)
    ndim = 2

    @property
    def has_canonical_format(self) -> bool:
        return bool(self._m.has_canonical_format)

    @property
    def has_sorted_indices(self) -> bool:
        return bool(self._m.has_sorted_indices)

    def __array__(self, *args, **kwargs):
        raise TypeError(
            "Implicit conversion to a NumPy array is not allowed. Please use `.get()` to construct a NumPy array "
            "explicitly."
        )

    # ------------------------------------------------------------------ explicit transfer
    def get(self, stream=None):
        count("d2h", _nbytes(self._m))
        return self._m.copy()

    # ------------------------------------------------------------------ conversions
    def tocsr(self, copy=False):
        return csr_matrix._from(self._m.tocsr(copy=copy))

    def tocsc(self, copy=False):
        return csc_matrix._from(self._m.tocsc(copy=copy))

    def tocoo(self, copy=False):
        return coo_matrix._from(self._m.tocoo(copy=copy))

    def toarray(self, order=None, out=None):
        return ndarray(self._m.toarray())

    def copy(self):
        return type(self)._from(self._m.copy())

    def astype(self, t):
        _check_dtype(t)
        return type(self)._from(self._m.astype(t))

    def transpose(self, axes=None, copy=False):
        t = self._m.transpose()
        return (csc_matrix if t.format == "csc" else csr_matrix)._from(t)

    T = property(transpose)

    def sum_duplicates(self):
        self._m.sum_duplicates()

    def sort_indices(self):
        self._m.sort_indices()

    def eliminate_zeros(self):
        self._m.eliminate_zeros()

    def diagonal(self, k=0):
        return ndarray(self._m.diagonal(k))

    def sum(self, axis=None, dtype=None, out=None):
        out = self._m.sum(axis=axis, dtype=dtype)
        return ndarray(np.asarray(out))

    def __abs__(self):
        """Element-wise ``abs`` of the stored values (``_data_matrix.__abs__``, cupyx/scipy/sparse/_data.py:31-33)."""
        return type(self)._from(abs(self._m))

    def max(self, axis=None, out=None, *, explicit=False):
        """``_minmax_mixin.max`` (cupyx/scipy/sparse/_data.py): over all entries a 0-d *device* array
        (implicit zeros count unless ``explicit``), never a host scalar."""
        return self._min_or_max(np.max, np.maximum, axis, explicit)

    def min(self, axis=None, out=None, *, explicit=False):
        """``_minmax_mixin.min``, as :meth:`max`."""
        return self._min_or_max(np.min, np.minimum, axis, explicit)

    def _min_or_max(self, reduce, combine, axis, explicit):
        if axis is not None:
            out = self._m.max(axis=axis) if reduce is np.max else self._m.min(axis=axis)
            return _wrap_result(out.tocsr() if _sp.issparse(out) else out)
        if 0 in self.shape:
            raise ValueError("zero-size array to reduction operation")
        if self.nnz == 0:
            return ndarray(np.zeros((), dtype=self.dtype))
        self._m.sum_duplicates()
        m = reduce(self._m.data)
        if not explicit and self.nnz != self.shape[0] * self.shape[1]:
            m = combine(np.zeros((), dtype=self.dtype), m)
        return ndarray(np.asarray(m))

    def multiply(self, other):
        if isinstance(other, spmatrix):
            return csr_matrix._from(_sp.csr_matrix(self._m.multiply(other._m)))
        if isinstance(other, ndarray):
            return _wrap_result(self._m.multiply(other._a))
        if np.isscalar(other):
            return type(self)._from(self._m.multiply(other))
        raise unsupported(other)

    # ------------------------------------------------------------------ arithmetic
    def _other(self, other):
        if isinstance(other, spmatrix):
            return other._m
        if isinstance(other, ndarray):
            return other._a
        if isinstance(other, int | float | complex | np.generic):
            return other
        raise unsupported(other)

    def __matmul__(self, other):
        from cupy.cuda import runtime

        if runtime.broken("cusparse"):
            raise RuntimeError("CUSPARSE_STATUS_NOT_INITIALIZED (double: cuSPARSE marked broken)")
        return _wrap_result(self._m @ self._other(other))

    def dot(self, other):
        return self.__matmul__(other)

    def __rmatmul__(self, other):
        return _wrap_result(self._other(other) @ self._m)

    def __add__(self, other):
        return _wrap_result(self._m + self._other(other))

    __radd__ = __add__

    def __sub__(self, other):
        return _wrap_result(self._m - self._other(other))

    def __rsub__(self, other):
        return _wrap_result(self._other(other) - self._m)

    def __mul__(self, other):
        if isinstance(other, ndarray | spmatrix):
            return self.__matmul__(other)  # cupyx keeps the spmatrix meaning of * (matrix product)
        return _wrap_result(self._m * self._other(other))

    def __rmul__(self, other):
        return _wrap_result(self._other(other) * self._m)

    def __truediv__(self, other):
        return _wrap_result(self._m / self._other(other))

    def __neg__(self):
        return type(self)._from(-self._m)

    def __getitem__(self, key):
        def unwrap_key(k, length):
            if isinstance(k, ndarray):
                a = k._a
            elif isinstance(k, np.ndarray | list):
                a = _implicit_host(k)  # cupy.asarray(idx) in _asindices (_index.py:490)
            else:
                return k
            if a.dtype.kind in "iu":
                return np.mod(a.astype(np.int32), length)  # ``x % length`` (_index.py:497)
            return a

        if isinstance(key, tuple):
            return _wrap_result(self._m[tuple(unwrap_key(k, d) for k, d in zip(key, self.shape, strict=False))])
        return _wrap_result(self._m[unwrap_key(key, self.shape[0])])

    def __repr__(self) -> str:
        return f"<cupyx double {self.format} matrix {self.shape[0]}x{self.shape[1]}, nnz={self.nnz}, {self.dtype}>"


class _CompressedMixin:
    @property
    def data(self):
        return ndarray(self._m.data)

    @property
    def indices(self):
        return ndarray(self._m.indices)

    @property
    def indptr(self):
        return ndarray(self._m.indptr)


class csr_matrix(_CompressedMixin, spmatrix):
    """``cupyx.scipy.sparse.csr_matrix`` of the double."""

    format = "csr"
    _scipy = staticmethod(_sp.csr_matrix)


class csc_matrix(_CompressedMixin, spmatrix):
    """``cupyx.scipy.sparse.csc_matrix`` of the double."""

    format = "csc"
    _scipy = staticmethod(_sp.csc_matrix)


class coo_matrix(spmatrix):
    """``cupyx.scipy.sparse.coo_matrix`` of the double."""

    format = "coo"
    _scipy = staticmethod(_sp.coo_matrix)

    row = property(lambda self: ndarray(self._m.row))
    col = property(lambda self: ndarray(self._m.col))
    data = property(lambda self: ndarray(self._m.data))


def _wrap_result(r):
    if isinstance(r, np.matrix):
        return ndarray(np.asarray(r))
    if isinstance(r, np.ndarray):
        return ndarray(r)
    if isinstance(r, np.generic):
        return ndarray(np.asarray(r))
    if _sp.issparse(r):
        fmt = r.format
        cls = {"csr": csr_matrix, "csc": csc_matrix}.get(fmt, csr_matrix)
        return cls._from(r if fmt in {"csr", "csc"} else r.tocsr())
    return r


def issparse(x) -> bool:
    return isinstance(x, spmatrix)


def isspmatrix_csr(x) -> bool:
    return isinstance(x, csr_matrix)


def identity(n, dtype="d", format=None):
    return _wrap_result(_sp.identity(n, dtype=dtype, format=format or "csr"))


def eye(m, n=None, k=0, dtype="d", format=None):
    return _wrap_result(_sp.eye(m, n, k=k, dtype=dtype, format=format or "csr"))


def diags(diagonals, offsets=0, shape=None, format=None, dtype=None):
    def host(d):
        if isinstance(d, ndarray):
            return d._a
        if isinstance(d, np.ndarray):
            raise unsupported(d)
        return d

    diagonals = [host(d) for d in diagonals] if isinstance(diagonals, list | tuple) else host(diagonals)
    return _wrap_result(_sp.diags(diagonals, offsets, shape=shape, format=format or "csr", dtype=dtype))
