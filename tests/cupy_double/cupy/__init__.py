"""Strict CuPy test double over NumPy (tests only; see ``_double.py`` for the rules it enforces).

Put ``tests/cupy_double`` first on ``sys.path`` to make ``import cupy`` load this package. The
double exposes CuPy's NumPy-like namespace, ``cupy.cuda`` (one device; ``memGetInfo`` configurable
with :func:`set_mem_info` to simulate an out-of-memory device), ``cupy.linalg``, and the test
hooks :data:`TRANSFERS`, :data:`TRANSFER_BYTES`, :func:`reset_transfers`.
"""

from __future__ import annotations

import numpy as _np

from . import _double
from ._double import TRANSFER_BYTES, TRANSFERS, Device, ndarray, reset_transfers, ufunc  # noqa: F401

__version__ = "14.0.0+double"
IS_DOUBLE = True

# NumPy names CuPy 14 does not define: every name of ``numpy.__all__`` (NumPy 2.4) that
# ``cupy/__init__.py`` at tag v14.0.0 neither imports nor assigns (read from that file; CuPy's
# module ``__getattr__`` at cupy/__init__.py:1132-1136 raises AttributeError for them). Note that
# CuPy 14 *does* have ``concat`` and ``permute_dims`` (cupy/__init__.py:274 and :254; CuPy 13.6 has
# neither), but not ``vecdot``, ``matrix_transpose``, ``isdtype``, ``unstack``, ``cumulative_sum``.
NOT_IN_CUPY_14 = frozenset({
    "False_", "ScalarType", "True_", "__array_namespace_info__", "asmatrix", "block", "bmat",
    "busday_count", "busday_offset", "busdaycalendar", "bytes_", "char", "character", "clongdouble",
    "complex256", "core", "ctypeslib", "cumulative_prod", "cumulative_sum", "datetime64",
    "datetime_as_string", "datetime_data", "einsum_path", "emath", "errstate", "f2py", "flexible",
    "float128", "frompyfunc", "fromregex", "geomspace", "get_include", "getbufsize", "geterr",
    "geterrcall", "histogram_bin_edges", "info", "insert", "is_busday", "isdtype", "isnat", "lib",
    "little_endian", "longdouble", "ma", "matrix", "matrix_transpose", "matvec", "memmap",
    "nanpercentile", "nanquantile", "ndenumerate", "nditer", "nested_iters", "object_", "polyder",
    "polydiv", "polyint", "rec", "recarray", "record", "sctypeDict", "setbufsize", "seterr",
    "seterrcall", "show_runtime", "spacing", "str_", "strings", "test", "timedelta64", "typecodes",
    "typing", "unstack", "vecdot", "vecmat", "void",
})  # fmt: skip
# Functions CuPy has but the double leaves out: they read or write host files or print host state,
# so wrapping NumPy's would hide a host round trip.
_HOST_ONLY = {
    "asarray_chkfinite", "fromfile", "fromfunction", "fromiter", "frombuffer", "fromstring",
    "genfromtxt", "load", "loadtxt", "mask_indices", "save", "savetxt", "savez", "savez_compressed",
    "show_config", "typename", "set_printoptions", "get_printoptions", "printoptions",
    "format_float_positional", "format_float_scientific", "array2string", "array_repr", "array_str",
    "piecewise", "apply_over_axes", "apply_along_axis", "iterable", "asanyarray", "require",
    "from_dlpack", "place", "putmask", "poly", "polysub", "polymul", "polyadd",
}  # fmt: skip
_NOT_IN_CUPY = NOT_IN_CUPY_14 | _HOST_ONLY
# Plain Python helpers and type utilities pass through unchanged.
_PASS_THROUGH = {
    "can_cast", "result_type", "promote_types", "min_scalar_type", "common_type", "mintypecode",
    "issubdtype", "isscalar", "broadcast_shapes", "ndim", "shape", "size", "iscomplexobj",
    "isrealobj", "base_repr", "binary_repr", "finfo", "iinfo", "dtype",
}  # fmt: skip

__all__ = ["ndarray", "ufunc"]

for _name in _np.__all__:
    _obj = getattr(_np, _name, None)
    if _obj is None or _name in _NOT_IN_CUPY or _name.startswith("_") or _name in {"ndarray", "ufunc"}:
        continue
    if _name in _PASS_THROUGH or isinstance(_obj, type):
        # dtypes and scalar types are NumPy's in CuPy too (cupy.float64 is numpy.float64)
        if _name not in {"matrix", "memmap", "recarray", "chararray"}:
            globals()[_name] = _obj
            __all__.append(_name)
        continue
    if isinstance(_obj, _np.ufunc):
        globals()[_name] = ufunc(_obj)
    elif callable(_obj):
        globals()[_name] = _double.device_function(_obj, _name)
    else:  # constants: pi, e, inf, nan, newaxis
        globals()[_name] = _obj
    __all__.append(_name)

for _name in ("pi", "e", "inf", "nan", "newaxis", "euler_gamma", "bool_", "int_", "float_", "complex_"):
    if hasattr(_np, _name):
        globals()[_name] = getattr(_np, _name)


def asarray(a, dtype=None, order=None, *, blocking=False):
    """Host data to the device (counted); a device array is returned as it is (cast if asked)."""
    return _double.to_device(a, dtype=dtype, copy=False)


def array(obj, dtype=None, copy=True, order="K", subok=False, ndmin=0, *, blocking=False):
    """Like :func:`asarray`, copying a device array by default."""
    return _double.to_device(obj, dtype=dtype, copy=bool(copy))


def asnumpy(a, stream=None, order="C", out=None, *, blocking=True):
    """Device array to NumPy (counted); host input is returned as a NumPy array without counting."""
    if isinstance(a, ndarray):
        return a.get()
    return _np.asarray(a)


def get_array_module(*args):
    """``cupy`` if any argument is a device array, else ``numpy``."""
    import sys

    return sys.modules[__name__] if any(isinstance(a, ndarray) for a in args) else _np


def repeat(a, repeats, axis=None):
    """CuPy's ``repeat`` takes repeat counts as an int, list or tuple only (the output size must be known)."""
    if isinstance(repeats, ndarray):
        raise ValueError("`repeats` must be an int, list or tuple (cupy.ndarray repeats are not supported)")
    return _double.device_function(_np.repeat, "repeat")(a, repeats, axis=axis)


def sort(a, axis=-1, kind=None):
    """Stable sort only: ``kind`` is ``None`` or ``'stable'`` (cupy/_sorting/sort.py:11-38, core.pyx:1065-1067)."""
    _double.check_sort_kind(kind)
    return _double.ndarray(_np.sort(_double.unwrap(a), axis=axis, kind="stable"))


def argsort(a, axis=-1, kind=None):
    """Stable argsort only (cupy/_sorting/sort.py:93-114)."""
    _double.check_sort_kind(kind)
    return _double.ndarray(_np.argsort(_double.unwrap(a), axis=axis, kind="stable"))


def matmul(a, b, out=None):
    """``a @ b`` with CuPy's contiguity copies counted (see :func:`cupy._double.matmul_copies`)."""
    return a @ b


def dot(a, b, out=None):
    """``cupy.dot`` (2-D and 1-D operands; the copies of ``matmul`` are counted)."""
    if a.ndim > 2 or b.ndim > 2:
        return _double.device_function(_np.dot, "dot")(a, b)
    return a @ b


take = _double.take
ElementwiseKernel = _double.ElementwiseKernel
from ._pool import get_default_memory_pool  # noqa: E402

__all__ += ["asarray", "array", "asnumpy", "get_array_module", "repeat", "sort", "argsort", "matmul", "dot", "take"]
__all__ += ["ElementwiseKernel", "get_default_memory_pool"]

from . import cuda, fft, linalg, random  # noqa: E402,F401

del _name, _obj
