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

__version__ = "13.99.0+double"
IS_DOUBLE = True

# Functions NumPy has and CuPy does not (or that read/write host files); absent from the double too.
_NOT_IN_CUPY = {
    "asarray_chkfinite", "asmatrix", "bmat", "busday_count", "busday_offset", "datetime_as_string",
    "datetime_data", "fromfile", "fromfunction", "fromiter", "fromregex", "frombuffer", "fromstring",
    "genfromtxt", "get_include", "getbufsize", "geterr", "geterrcall", "info", "is_busday", "load",
    "loadtxt", "mask_indices", "nested_iters", "save", "savetxt", "savez", "savez_compressed",
    "setbufsize", "seterr", "seterrcall", "show_config", "show_runtime", "test", "typename",
    "set_printoptions", "get_printoptions", "printoptions", "format_float_positional",
    "format_float_scientific", "array2string", "array_repr", "array_str", "place", "putmask",
    "piecewise", "polyder", "polyint", "polydiv", "poly", "polysub", "polymul", "polyadd",
    "apply_over_axes", "apply_along_axis", "frompyfunc", "iterable", "asanyarray", "require",
    "ascontiguousarray", "asfortranarray", "copyto", "from_dlpack",
}  # fmt: skip
# Plain Python helpers and type utilities pass through unchanged.
_PASS_THROUGH = {
    "can_cast", "result_type", "promote_types", "min_scalar_type", "common_type", "mintypecode",
    "issubdtype", "isdtype", "isscalar", "broadcast_shapes", "ndim", "shape", "size", "iscomplexobj",
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


__all__ += ["asarray", "array", "asnumpy", "get_array_module", "repeat"]

from . import cuda, fft, linalg, random  # noqa: E402,F401

del _name, _obj
