"""Core of the strict CuPy test double: the device array, the transfer counter, wrapping helpers.

A double ``ndarray`` holds a NumPy array that stands for device memory. Everything that would
move data between host and device on a real GPU is explicit and counted in :data:`TRANSFERS`:

* ``"h2d"``: :func:`cupy.asarray` / :func:`cupy.array` of host data (NumPy arrays, lists, scalars
  sequences) and ``cupyx.scipy.sparse`` matrices built from SciPy matrices;
* ``"d2h"``: :meth:`ndarray.get`, :func:`cupy.asnumpy`, sparse ``.get()``;
* ``"sync"``: reads that synchronise with the device: ``float()``, ``int()``, ``bool()``,
  ``complex()``, ``operator.index()``, :meth:`ndarray.item`, :meth:`ndarray.tolist`, ``repr``.

* ``"implicit_h2d"``: host index arrays (NumPy arrays, lists) that CuPy itself copies to the
  device without being asked: ``a[np_idx]``, ``a[np_idx] = np_values``, ``take(a, np_idx)``,
  ``ufunc.at(a, np_idx, np_values)``; counted, not refused, because CuPy accepts them;
* ``"copy"``: device-to-device copies CuPy's ``matmul``/``dot`` make of operands that cuBLAS cannot
  take as they are (see :func:`matmul_copies`); this is device traffic, counted with its bytes.

Implicit conversion to NumPy raises ``TypeError`` with CuPy's message, and mixing NumPy arrays
into device operations raises ``TypeError`` as CuPy does (``Unsupported type``). Integer-array
indices that are out of range wrap around (CuPy's documented difference from NumPy) instead of
raising ``IndexError``.

Every rule cites the CuPy source it models, at tag ``v14.0.0`` of github.com/cupy/cupy.
"""

from __future__ import annotations

import collections
import functools
from typing import Any, ClassVar

import numpy as np

IMPLICIT_MESSAGE = (
    "Implicit conversion to a NumPy array is not allowed. Please use `.get()` to construct a NumPy array explicitly."
)

#: Counts of host<->device transfers and synchronising reads, by kind ("h2d", "d2h", "sync").
TRANSFERS: collections.Counter = collections.Counter()
#: Bytes moved by kind ("h2d", "d2h").
TRANSFER_BYTES: collections.Counter = collections.Counter()


def reset_transfers() -> None:
    """Zero :data:`TRANSFERS` and :data:`TRANSFER_BYTES`."""
    TRANSFERS.clear()
    TRANSFER_BYTES.clear()


def count(kind: str, nbytes: int = 0) -> None:
    TRANSFERS[kind] += 1
    TRANSFER_BYTES[kind] += int(nbytes)


def unsupported(obj: Any) -> TypeError:
    return TypeError(f"Unsupported type {type(obj)}")


def unwrap(obj: Any) -> Any:
    """Device objects to their NumPy payload; host NumPy arrays are refused (as CuPy does)."""
    if isinstance(obj, ndarray):
        return obj._a
    if isinstance(obj, np.ndarray):
        raise unsupported(obj)
    if isinstance(obj, list | tuple):
        return type(obj)(unwrap(o) for o in obj)
    if isinstance(obj, slice):
        return slice(unwrap(obj.start), unwrap(obj.stop), unwrap(obj.step))
    return obj


def wrap(obj: Any) -> Any:
    """NumPy results to device arrays (CuPy returns 0-d arrays where NumPy returns scalars)."""
    if isinstance(obj, np.ndarray):
        return ndarray(obj)
    if isinstance(obj, np.generic):
        return ndarray(np.asarray(obj))
    if isinstance(obj, tuple) and type(obj) is not tuple:  # namedtuple results (unique_*, eigh, ...)
        return type(obj)(*(wrap(o) for o in obj))
    if isinstance(obj, list | tuple):
        return type(obj)(wrap(o) for o in obj)
    return obj


def device_function(fn, name: str | None = None):
    """A NumPy function as a device function: unwrap the arguments, wrap the results."""

    @functools.wraps(fn)
    def run(*args, **kwargs):
        kwargs.pop("device", None)  # device placement is a no-op in the double (one device)
        return wrap(fn(*unwrap(args), **{k: unwrap(v) for k, v in kwargs.items()}))

    if name is not None:
        run.__name__ = name
    return run


def _implicit_host(obj: Any) -> np.ndarray:
    """A host index (NumPy array or list) as CuPy copies it to the device: counted ``implicit_h2d``.

    CuPy converts every non-device array in an index with ``core.array(s)``
    (cupy/_core/_routines_indexing.pyx:276, ``_prepare_slice_list``), in ``take``
    (:841-842) and in scatter values (:900-901).
    """
    host = np.asarray(obj)
    count("implicit_h2d", host.nbytes)
    return host


def _is_array_index(k: Any) -> bool:
    return isinstance(k, ndarray | np.ndarray | list)


def index_key(key: Any, shape: tuple[int, ...]) -> tuple[Any, bool]:
    """The NumPy key for a device indexing operation, and whether it has an array (advanced) part.

    Host arrays and lists are copied to the device (counted, as CuPy does); integer arrays wrap
    around modulo the axis length, as CuPy's gather and scatter kernels do (``mode='wrap'`` is
    CuPy's only behaviour for integer-array indexing; NumPy would raise ``IndexError``).
    """
    parts = list(key) if isinstance(key, tuple) else [key]
    out: list[Any] = []
    advanced = False
    consumed = 0
    for k in parts:
        if k is None:
            continue
        if k is Ellipsis:
            continue
        if isinstance(k, ndarray):
            consumed += k._a.ndim if k._a.dtype == bool else 1
        elif isinstance(k, np.ndarray | list):
            consumed += np.asarray(k).ndim if np.asarray(k).dtype == bool else 1
        else:
            consumed += 1
    n_ellipsis = len(shape) - consumed
    axis = 0
    for k in parts:
        if k is None:
            out.append(None)
            continue
        if k is Ellipsis:
            out.append(Ellipsis)
            axis += n_ellipsis
            continue
        if _is_array_index(k):
            advanced = True
            a = k._a if isinstance(k, ndarray) else _implicit_host(k)
            if a.dtype == bool:
                out.append(a)
                axis += a.ndim
                continue
            if a.dtype.kind in "iu" and axis < len(shape) and shape[axis] > 0:
                a = np.mod(a, shape[axis])
            out.append(a)
            axis += 1
            continue
        if isinstance(k, slice):
            out.append(slice(unwrap(k.start), unwrap(k.stop), unwrap(k.step)))
        else:
            out.append(unwrap(k))
        axis += 1
    return (tuple(out) if isinstance(key, tuple) else out[0]), advanced


def matmul_copies(a: np.ndarray, b: np.ndarray) -> None:
    """Count the operand copies CuPy's ``matmul`` makes before calling cuBLAS (kind ``"copy"``).

    * Both operands of at most 2 dimensions (``dot``): an operand is copied when it is neither C- nor
      F-contiguous (cupy/_core/_routines_linalg.pyx:461-473, ``_mat_to_cublas_contiguous``,
      ``if not a._c_contiguous: a = a.copy()``; a 1-D operand is first reshaped to one row or
      column, :493-504, so a strided vector is copied).
    * Either operand with more than 2 dimensions (batched GEMM): every operand that is not
      C-contiguous is copied (:903-904, ``a = ascontiguousarray(a, dtype)``), also an F-ordered one.
    * An operand whose dtype differs from the promoted dtype is cast, which is a copy as well.
    """
    dtype = np.promote_types(a.dtype, b.dtype)
    batched = max(a.ndim, b.ndim) > 2
    for x in (a, b):
        if x.dtype != dtype:
            copied = True
        elif batched:
            copied = not x.flags.c_contiguous
        elif x.ndim == 1:
            copied = not x.flags.c_contiguous
        else:
            copied = not (x.flags.c_contiguous or x.flags.f_contiguous)
        if copied and x.size:
            count("copy", x.size * np.dtype(dtype).itemsize)


class CompileError(Exception):
    """``cupy.cuda.compiler.CompileException`` of the double (NVRTC failed)."""


class ElementwiseKernel:
    """``cupy.ElementwiseKernel`` for simple one-statement kernels (``"y = x + 1"``), run by NumPy.

    The operation is evaluated with the parameters bound to NumPy arrays; ``runtime.set_broken("nvrtc")``
    makes the first call fail as a broken NVRTC would.
    """

    def __init__(self, in_params: str, out_params: str, operation: str, name: str = "kernel", **kwargs):
        self.inputs = [p.split()[-1] for p in in_params.split(",") if p.strip()]
        self.outputs = [p.split()[-1] for p in out_params.split(",") if p.strip()]
        self.operation, self.name = operation, name

    def __call__(self, *args):
        from cupy.cuda import runtime

        if runtime.broken("nvrtc"):
            raise CompileError(f"nvrtc: error: failed to compile {self.name} (double: NVRTC marked broken)")
        env = {name: unwrap(a) for name, a in zip(self.inputs, args, strict=False)}
        first = np.asarray(env[self.inputs[0]])
        for name in self.outputs:
            env[name] = np.empty_like(first)
        exec(self.operation, {"np": np}, env)
        outs = [ndarray(np.asarray(env[name])) for name in self.outputs]
        return outs[0] if len(outs) == 1 else tuple(outs)


def check_sort_kind(kind: Any) -> None:
    """CuPy sorts only stably: ``kind`` must be ``None`` or ``'stable'`` (cupy/_core/core.pyx:1065-1067)."""
    if kind is not None and kind != "stable":
        raise ValueError("kind can only be None or 'stable'")


class Device:
    """``cupy.cuda.Device``: a context manager naming device 0."""

    def __init__(self, device: Any = None):
        self.id = 0 if device is None else int(getattr(device, "id", device))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Device) and other.id == self.id

    def __hash__(self) -> int:
        return hash(("cuda", self.id))

    def __repr__(self) -> str:
        return f"<CUDA Device {self.id}>"

    def synchronize(self) -> None:
        pass


_BINARY = [
    "add", "sub", "mul", "truediv", "floordiv", "mod", "pow",
    "and", "or", "xor", "lshift", "rshift",
]  # fmt: skip
_COMPARE = ["eq", "ne", "lt", "le", "gt", "ge"]


class ndarray:
    """Device array of the double (a NumPy payload that refuses implicit host conversion)."""

    __slots__ = ("_a",)
    # NumPy must defer to us in mixed expressions (so that np_array + device_array raises, as in CuPy).
    __array_ufunc__ = None
    __array_priority__ = 100

    def __init__(self, a: np.ndarray):
        if not isinstance(a, np.ndarray):
            raise TypeError(f"the double's ndarray wraps numpy arrays, got {type(a).__name__}")
        object.__setattr__(self, "_a", a)

    # ------------------------------------------------------------------ refusal / explicit moves
    def __array__(self, *args, **kwargs):
        raise TypeError(IMPLICIT_MESSAGE)

    def get(self, stream: Any = None, order: str = "C", out: Any = None, blocking: bool = True) -> np.ndarray:
        count("d2h", self._a.nbytes)
        return np.array(self._a, copy=True)

    def set(self, arr: np.ndarray, stream: Any = None) -> None:
        count("h2d", arr.nbytes)
        self._a[...] = arr

    # ------------------------------------------------------------------ synchronising reads
    def item(self, *args):
        count("sync", self._a.itemsize)
        return self._a.item(*args)

    def tolist(self):
        count("sync", self._a.nbytes)
        return self._a.tolist()

    def __float__(self) -> float:
        count("sync", self._a.itemsize)
        return float(self._a)

    def __int__(self) -> int:
        count("sync", self._a.itemsize)
        return int(self._a)

    def __complex__(self) -> complex:
        count("sync", self._a.itemsize)
        return complex(self._a)

    def __bool__(self) -> bool:
        count("sync", self._a.itemsize)
        return bool(self._a)

    def __index__(self) -> int:
        count("sync", self._a.itemsize)
        return self._a.__index__()

    def __repr__(self) -> str:
        count("sync", self._a.nbytes)
        return repr(self._a)

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        count("sync", self._a.nbytes)
        return format(self._a, spec)

    # ------------------------------------------------------------------ metadata (no transfer)
    shape = property(lambda self: self._a.shape)
    dtype = property(lambda self: self._a.dtype)
    ndim = property(lambda self: self._a.ndim)
    size = property(lambda self: self._a.size)
    nbytes = property(lambda self: self._a.nbytes)
    itemsize = property(lambda self: self._a.itemsize)
    strides = property(lambda self: self._a.strides)
    flags = property(lambda self: self._a.flags)
    device = property(lambda self: Device(0))
    T = property(lambda self: ndarray(self._a.T))
    mT = property(lambda self: ndarray(np.swapaxes(self._a, -1, -2)))
    real = property(lambda self: ndarray(self._a.real))
    imag = property(lambda self: ndarray(self._a.imag))

    def __len__(self) -> int:
        return len(self._a)

    def __iter__(self):
        if self._a.ndim == 0:
            raise TypeError("iteration over a 0-d array")
        return (ndarray(np.asarray(row)) if not isinstance(row, np.ndarray) else ndarray(row) for row in self._a)

    def __hash__(self):
        raise TypeError("unhashable type: 'cupy.ndarray'")

    # ------------------------------------------------------------------ indexing
    def __getitem__(self, key):
        k, _ = index_key(key, self._a.shape)
        return wrap(self._a[k])

    def __setitem__(self, key, value):
        k, advanced = index_key(key, self._a.shape)
        if advanced and isinstance(value, np.ndarray | list):
            # an advanced-index scatter converts its values (cupy/_core/_routines_indexing.pyx:900-901)
            value = _implicit_host(value)
        else:
            value = unwrap(value)  # basic slices refuse host arrays (gh-2079, :1066-1070)
        self._a[k] = value

    def sort(self, axis=-1, kind=None):
        check_sort_kind(kind)
        self._a.sort(axis=axis, kind="stable")

    def argsort(self, axis=-1, kind=None):
        check_sort_kind(kind)
        return ndarray(self._a.argsort(axis=axis, kind="stable"))

    def take(self, indices, axis=None, out=None):
        return take(self, indices, axis=axis)

    # ------------------------------------------------------------------ methods
    def astype(self, dtype, order="K", casting=None, subok=None, copy=True):
        return ndarray(self._a.astype(dtype, order=order, copy=copy))

    def copy(self, order="C"):
        return ndarray(self._a.copy(order=order))

    def reshape(self, *shape, order="C"):
        return ndarray(self._a.reshape(*unwrap(shape), order=order))

    def __getattr__(self, name: str):
        # Remaining NumPy methods (sum, max, ravel, cumsum, ...); dunders are never forwarded so that
        # NumPy cannot find __array_interface__ & co.
        if name.startswith("__") or name in {"tobytes", "tofile", "dump", "dumps", "ctypes", "data", "base"}:
            raise AttributeError(name)
        attr = getattr(self._a, name)
        if not callable(attr):
            raise AttributeError(name)
        return device_function(attr, name)

    # ------------------------------------------------------------------ operators
    def __neg__(self):
        return ndarray(-self._a)

    def __pos__(self):
        return ndarray(+self._a)

    def __abs__(self):
        return ndarray(np.abs(self._a))

    def __invert__(self):
        return ndarray(~self._a)

    def __matmul__(self, other):
        if not isinstance(other, ndarray):
            if isinstance(other, np.ndarray):
                raise unsupported(other)
            return NotImplemented
        from cupy.cuda import runtime

        if runtime.broken("cublas"):
            raise RuntimeError("CUBLAS_STATUS_NOT_INITIALIZED (double: cuBLAS marked broken)")
        matmul_copies(self._a, other._a)
        return wrap(self._a @ other._a)

    def __rmatmul__(self, other):
        if isinstance(other, np.ndarray):
            raise unsupported(other)
        return NotImplemented

    def dot(self, other):
        return self.__matmul__(other)


def _operand(other: Any) -> Any:
    if isinstance(other, ndarray):
        return other._a
    if isinstance(other, np.ndarray):
        raise unsupported(other)
    if isinstance(other, int | float | complex | bool | np.generic):
        return other
    return NotImplemented


def _make_binary(op: str):
    fwd = getattr(np.ndarray, f"__{op}__")

    def method(self, other):
        o = _operand(other)
        if o is NotImplemented:
            return NotImplemented
        return wrap(fwd(self._a, o))

    return method


def _make_reflected(op: str):
    fwd = getattr(np.ndarray, f"__r{op}__")

    def method(self, other):
        o = _operand(other)
        if o is NotImplemented:
            return NotImplemented
        return wrap(fwd(self._a, o))

    return method


def _make_inplace(op: str):
    fwd = getattr(np.ndarray, f"__i{op}__")

    def method(self, other):
        o = _operand(other)
        if o is NotImplemented:
            return NotImplemented
        fwd(self._a, o)
        return self

    return method


def take(a, indices, axis=None, out=None):
    """``cupy.take``: host indices are copied to the device (cupy/_core/_routines_indexing.pyx:841-842),
    out-of-range ones wrap (the gather kernel takes them modulo the axis length)."""
    if not isinstance(a, ndarray):
        raise unsupported(a)
    if isinstance(indices, ndarray):
        idx = indices._a
    elif isinstance(indices, int | np.integer):
        idx = indices
    else:
        idx = _implicit_host(indices)
    return wrap(np.take(a._a, idx, axis=axis, mode="wrap"))


for _op in _BINARY:
    setattr(ndarray, f"__{_op}__", _make_binary(_op))
    setattr(ndarray, f"__r{_op}__", _make_reflected(_op))
    setattr(ndarray, f"__i{_op}__", _make_inplace(_op))
for _op in _COMPARE:
    setattr(ndarray, f"__{_op}__", _make_binary(_op))

ndarray.__module__ = "cupy"
ndarray.__qualname__ = "ndarray"


class ufunc:
    """A NumPy ufunc under CuPy 14's rules: only the methods CuPy offers for this ufunc exist.

    * ``at``: only ufuncs with a scatter kernel (``add``, ``subtract``, ``maximum``, ``minimum``,
      ``bitwise_and/or/xor``; cupy/_core/_kernel.pyx:1428-1438), and only for the dtypes their
      atomics support, checked on the target's dtype (cupy/_core/_routines_indexing.pyx:925-1000):
      ``add.at`` int32, float16, float32, float64, uint32, uint64 (**not int64**);
      ``subtract.at`` int32, uint32; ``maximum.at``/``minimum.at`` int32, float32, float64, uint32,
      uint64; the bitwise ones int32, int64, uint32, uint64. Others raise ``TypeError``.
    * ``reduce``: add, multiply (:1440-1450); ``accumulate``: add, multiply (:1452-1463).
    * ``reduceat``: add only (:1465-1474), computed as CuPy computes it, a difference of a
      cumulative sum, :math:`c_{p_{i+1}} - c_{p_i}` (cupy/_core/_routines_indexing.pyx:1225-1240),
      so it carries the cancellation error of the prefix sum.
    """

    _METHODS: ClassVar[dict[str, set[str]]] = {
        "at": {"add", "subtract", "maximum", "minimum", "bitwise_and", "bitwise_or", "bitwise_xor"},
        "reduce": {"add", "multiply"},
        "accumulate": {"add", "multiply"},
        "reduceat": {"add"},
    }
    _AT_DTYPES: ClassVar[dict[str, set[str]]] = {
        "add": {"int32", "float16", "float32", "float64", "uint32", "uint64"},
        "subtract": {"int32", "uint32"},
        "maximum": {"int32", "float32", "float64", "uint32", "uint64"},
        "minimum": {"int32", "float32", "float64", "uint32", "uint64"},
        "bitwise_and": {"int32", "int64", "uint32", "uint64"},
        "bitwise_or": {"int32", "int64", "uint32", "uint64"},
        "bitwise_xor": {"int32", "int64", "uint32", "uint64"},
    }

    def __init__(self, uf: np.ufunc):
        self._uf = uf
        self.__name__ = uf.__name__
        self.nin, self.nout, self.nargs = uf.nin, uf.nout, uf.nargs

    def __call__(self, *args, **kwargs):
        return device_function(self._uf)(*args, **kwargs)

    def _method(self, name: str):
        if self._uf.__name__ not in self._METHODS[name]:
            raise NotImplementedError(f"`cupy_{self._uf.__name__}.{name}` is not supported yet")
        return getattr(self._uf, name)

    def at(self, a, indices, b=None):
        if not isinstance(a, ndarray):
            raise unsupported(a)
        uf = self._method("at")
        allowed = self._AT_DTYPES[self._uf.__name__]
        if a.dtype.name not in allowed:
            raise TypeError(
                f"cupy.{self._uf.__name__}.at only supports {', '.join(sorted(allowed))} as data type "
                f"(got {a.dtype.name})"
            )
        key, _ = index_key(indices, a._a.shape)
        if b is None:
            uf(a._a, key)
            return
        values = b._a if isinstance(b, ndarray) else (_implicit_host(b) if isinstance(b, np.ndarray | list) else b)
        uf(a._a, key, np.asarray(values).astype(a.dtype, copy=False))

    def reduce(self, array, axis=0, dtype=None, out=None, keepdims=False):
        return wrap(self._method("reduce")(unwrap(array), axis=axis, dtype=dtype, keepdims=keepdims))

    def accumulate(self, array, axis=0, dtype=None, out=None):
        return wrap(self._method("accumulate")(unwrap(array), axis=axis, dtype=dtype))

    def reduceat(self, array, indices, axis=0, dtype=None, out=None):
        self._method("reduceat")
        a = unwrap(array)
        idx = np.append(unwrap(indices), a.shape[axis])
        acc = np.cumsum(a, axis=axis, dtype=dtype)
        zero_shape = tuple(1 if i == axis else d for i, d in enumerate(a.shape))
        acc = np.concatenate([np.zeros(zero_shape, dtype=acc.dtype), acc], axis=axis)
        mask = (idx[:-1] >= idx[1:]).reshape(-1, *([1] * (a.ndim - axis - 1)))
        diff = np.take(acc, idx[1:], axis=axis) - np.take(acc, idx[:-1], axis=axis)
        first = np.take(a, idx[:-1], axis=axis, mode="wrap") if a.shape[axis] else diff
        return wrap(np.where(mask, first, diff))

    def outer(self, A, B, **kwargs):
        return wrap(self._uf.outer(unwrap(A), unwrap(B), **kwargs))

    def __repr__(self) -> str:
        return f"<ufunc '{self.__name__}'>"


def to_device(obj: Any, dtype: Any = None, copy: bool = False) -> ndarray:
    """``cupy.asarray``/``cupy.array``: host data becomes a device array (a counted transfer)."""
    if isinstance(obj, ndarray):
        a = obj._a.astype(dtype, copy=copy) if dtype is not None else (obj._a.copy() if copy else obj._a)
        return ndarray(a)
    if isinstance(obj, int | float | complex | bool | np.generic):
        # Scalars are passed by value with the kernel launch: no copy is counted.
        return ndarray(np.array(obj, dtype=dtype))
    host = np.array(unwrap_nested_host(obj), dtype=dtype, copy=True)
    count("h2d", host.nbytes)
    return ndarray(host)


def unwrap_nested_host(obj: Any) -> Any:
    """Host data for ``asarray``: NumPy arrays and nested lists; device arrays inside lists are refused."""
    if isinstance(obj, list | tuple):
        return [unwrap_nested_host(o) for o in obj]
    if isinstance(obj, ndarray):
        raise TypeError("cupy.asarray of a list containing cupy arrays is not supported by the double; use stack")
    if hasattr(obj, "__cuda_array_interface__"):
        raise TypeError("unexpected foreign device array")
    return obj
