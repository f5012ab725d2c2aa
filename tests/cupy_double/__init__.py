"""The strict CuPy test double and helpers to install it for one test.

``tests/cupy_double`` holds the packages ``cupy`` and ``cupyx`` (over NumPy/SciPy). Tests import
this package as ``tests.cupy_double`` and install the double with :func:`install` inside a
fixture::

    @pytest.fixture
    def cupy_double(monkeypatch):
        with install(monkeypatch) as cupy:
            yield cupy

``install`` puts this directory first on ``sys.path``, drops cached ``cupy*`` modules (and
``array_api_compat.cupy``, which binds the ``cupy`` it imported first) and clears the backend
registry's caches; on exit the modules it loaded are dropped again and the caches cleared, so no
test sees another test's ``cupy``.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _drop_cupy_modules() -> None:
    for name in list(sys.modules):
        if name in {"cupy", "cupyx"} or name.startswith(("cupy.", "cupyx.", "array_api_compat.cupy")):
            del sys.modules[name]
    sys.modules.pop("cellfate_gpu.backends._cupy", None)
    # ``from package import sub`` finds a submodule bound as a package attribute before sys.modules.
    for package, attribute in (("array_api_compat", "cupy"), ("cellfate_gpu.backends", "_cupy")):
        module = sys.modules.get(package)
        if module is not None and hasattr(module, attribute):
            delattr(module, attribute)


def _clear_backend_caches() -> None:
    from cellfate_gpu import backends

    backends._instance.cache_clear()
    backends._auto_choice.cache_clear()
    try:
        from array_api_compat.common import _helpers

        _helpers._cls_to_namespace.cache_clear()
    except (ImportError, AttributeError):  # older array_api_compat without the cache
        pass


@contextlib.contextmanager
def install(monkeypatch) -> Iterator[object]:
    """Make ``import cupy`` load the double for the duration of the block; yield the double's module."""
    _drop_cupy_modules()
    _clear_backend_caches()
    monkeypatch.syspath_prepend(str(HERE))
    import cupy

    cupy.reset_transfers()
    cupy.cuda.runtime.reset()
    try:
        yield cupy
    finally:
        monkeypatch.undo()  # sys.path first, so that nothing re-imports the double afterwards
        _drop_cupy_modules()
        _clear_backend_caches()


@contextlib.contextmanager
def hidden(monkeypatch) -> Iterator[None]:
    """Make ``import cupy`` fail (as on a machine without CuPy) for the duration of the block."""
    _drop_cupy_modules()
    _clear_backend_caches()
    for name in ("cupy", "cupyx"):
        monkeypatch.setitem(sys.modules, name, None)  # a None entry makes the import raise ImportError
    try:
        yield
    finally:
        monkeypatch.undo()
        _drop_cupy_modules()
        _clear_backend_caches()
