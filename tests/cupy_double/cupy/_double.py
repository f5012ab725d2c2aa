"""Core of the strict CuPy test double: the device array, the transfer counter, wrapping helpers.

A double ``ndarray`` holds a NumPy array that stands for device memory. Everything that would
move data between host and device on a real GPU is explicit and counted in :data:`TRANSFERS`:

* ``"h2d"``: :func:`cupy.asarray` / :func:`cupy.array` of host data (NumPy arrays, lists, scalars
  sequences) and ``cupyx.scipy.sparse`` matrices built from SciPy matrices;
* ``"d2h"``: :meth:`ndarray.get`, :func:`cupy.asnumpy`, sparse ``.get()``;
* ``"sync"``: reads that synchronise with the device: ``float()``, ``int()``, ``bool()``,
  ``complex()``, ``operator.index()``, :meth:`ndarray.item`, :meth:`ndarray.tolist`, ``repr``.

Implicit conversion to NumPy raises ``TypeError`` with CuPy's message, and mixing NumPy arrays
into device operations raises ``TypeError`` as CuPy does (``Unsupported type``).
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
    "add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "matmul",
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
        return wrap(self._a[unwrap(key)])

    def __setitem__(self, key, value):
        self._a[unwrap(key)] = unwrap(value)

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


for _op in _BINARY:
    setattr(ndarray, f"__{_op}__", _make_binary(_op))
    setattr(ndarray, f"__r{_op}__", _make_reflected(_op))
    setattr(ndarray, f"__i{_op}__", _make_inplace(_op))
for _op in _COMPARE:
    setattr(ndarray, f"__{_op}__", _make_binary(_op))

ndarray.__module__ = "cupy"
ndarray.__qualname__ = "ndarray"


class ufunc:
    """A NumPy ufunc under CuPy's rules: only the methods CuPy offers for this ufunc exist.

    CuPy (v12+) offers ``at`` for add/maximum/minimum/bitwise and/or/xor, ``reduce`` for
    add/multiply, ``accumulate`` and ``reduceat`` for add only, and ``outer`` for all.
    """

    _METHODS: ClassVar[dict[str, set[str]]] = {
        "at": {"add", "maximum", "minimum", "bitwise_and", "bitwise_or", "bitwise_xor"},
        "reduce": {"add", "multiply"},
        "accumulate": {"add"},
        "reduceat": {"add"},
    }

    def __init__(self, uf: np.ufunc):
        self._uf = uf
        self.__name__ = uf.__name__
        self.nin, self.nout, self.nargs = uf.nin, uf.nout, uf.nargs

    def __call__(self, *args, **kwargs):
        return device_function(self._uf)(*args, **kwargs)

    def _method(self, name: str):
        if self._uf.__name__ not in self._METHODS[name]:
            raise NotImplementedError(f"`{name}` is not supported for cupy.{self._uf.__name__} (as in CuPy)")
        return getattr(self._uf, name)

    def at(self, a, indices, b=None):
        if not isinstance(a, ndarray):
            raise unsupported(a)
        args = (unwrap(indices),) if b is None else (unwrap(indices), unwrap(b))
        self._method("at")(a._a, *args)

    def reduce(self, array, axis=0, dtype=None, out=None, keepdims=False):
        return wrap(self._method("reduce")(unwrap(array), axis=axis, dtype=dtype, keepdims=keepdims))

    def accumulate(self, array, axis=0, dtype=None, out=None):
        return wrap(self._method("accumulate")(unwrap(array), axis=axis, dtype=dtype))

    def reduceat(self, array, indices, axis=0, dtype=None, out=None):
        return wrap(self._method("reduceat")(unwrap(array), unwrap(indices), axis=axis, dtype=dtype))

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
