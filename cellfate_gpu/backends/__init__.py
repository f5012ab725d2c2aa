"""Backend registry and dispatch.

Backends register under the entry-point group ``cellfate_gpu.backends`` (the built-in ones are
declared in pyproject.toml like any third-party backend would be).  Dispatch rules
(DESIGN.md §4): an explicit name wins and never falls back; ``"auto"`` picks ``cupy`` when a GPU
is usable, ``petsc`` under MPI with more than one rank, else ``scipy``, and logs the choice.
"""

from __future__ import annotations

import functools
import importlib
import os
from importlib.metadata import entry_points
from typing import Any

import numpy as np

from cellfate_gpu._logging import info
from cellfate_gpu._settings import settings
from cellfate_gpu.backends._base import Backend
from cellfate_gpu.backends._results import EigResult, SchurResult, SolveResult, Status

__all__ = [
    "Backend",
    "BackendUnavailableError",
    "EigResult",
    "SchurResult",
    "SolveResult",
    "Status",
    "available_backends",
    "array_backend_of",
    "backend_of",
    "get_backend",
]

# Used when the package metadata is absent (e.g. running from a source tree without install).
_BUILTIN = {
    "scipy": "cellfate_gpu.backends._scipy:ScipyBackend",
    "cupy": "cellfate_gpu.backends._cupy:CupyBackend",
    "jax": "cellfate_gpu.backends._jax:JaxBackend",
    "petsc": "cellfate_gpu.backends._petsc:PetscBackend",
}


# The pip extra of each built-in backend, for messages even when its module cannot be imported.
_EXTRAS = {"cupy": "cuda12", "jax": "jax", "petsc": "petsc"}


class BackendUnavailableError(RuntimeError):
    """A requested backend cannot run here; the message says why and what to install."""


@functools.cache
def _registry() -> dict[str, str]:
    found = dict(_BUILTIN)
    for ep in entry_points(group="cellfate_gpu.backends"):
        found[ep.name] = ep.value
    return found


def _load_class(name: str) -> type[Backend]:
    """Import a registered backend class (ImportError if its module itself cannot be imported)."""
    module, _, attr = _registry()[name].partition(":")
    return getattr(importlib.import_module(module), attr)


def _why_not(name: str) -> str | None:
    try:
        cls = _load_class(name)
    except ImportError as err:  # the backend module itself is broken, not just its optional dependency
        return f"its module could not be imported ({err})"
    return cls.why_unavailable()


def available_backends() -> dict[str, str | None]:
    """Every registered backend with ``None`` if usable, else the reason it is not.

    Examples
    --------
    >>> from cellfate_gpu.backends import available_backends
    >>> available_backends()["scipy"] is None
    True
    """
    return {name: _why_not(name) for name in _registry()}


def _mpi_size() -> int:
    for var in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MPI_LOCALNRANKS", "PMIX_SIZE"):
        if var in os.environ:
            try:
                return int(os.environ[var])
            except ValueError:
                pass
    return 1


@functools.cache
def _instance(name: str) -> Backend:
    if name not in _registry():
        known = ", ".join(sorted(_registry()))
        raise ValueError(f"Unknown backend {name!r}; registered backends: {known}.")
    reason = _why_not(name)
    if reason is not None:
        extra = _EXTRAS.get(name) or getattr(_load_class(name), "extra", "")
        hint = f" Install it with `pip install 'cellfate_gpu[{extra}]'`." if extra else ""
        raise BackendUnavailableError(f"Backend {name!r} is unavailable: {reason}.{hint}".replace("..", "."))
    backend = _load_class(name)()
    backend._shared = True  # the process-wide instance: backends refuse to mutate it (scoped changes only)
    return backend


def _resolve_auto() -> str:
    reasons = available_backends()
    if reasons.get("cupy") is None:
        choice, why = "cupy", "a CUDA device is usable"
    elif _mpi_size() > 1 and reasons.get("petsc") is None:
        choice, why = "petsc", f"running under MPI with {_mpi_size()} ranks"
    else:
        choice, why = "scipy", "no GPU and no multi-rank MPI run"
    info("Backend 'auto' chose %r (%s)", choice, why)
    return choice


def get_backend(name: str | Backend | None = None) -> Backend:
    """Return the backend instance for ``name`` (``None``: ``settings.backend``).

    Raises
    ------
    ValueError
        ``name`` is not registered.
    BackendUnavailableError
        The backend is registered but cannot run here (never silently replaced).
    """
    if isinstance(name, Backend):
        return name
    if name is None:
        name = settings.backend
    if not isinstance(name, str):
        raise ValueError(f"backend must be a name or a Backend instance, got {type(name).__name__}.")
    name = name.lower()
    if name == "auto":
        name = _auto_choice()
    return _instance(name)


@functools.cache
def _auto_choice() -> str:
    return _resolve_auto()


#: Top-level modules whose array types a built-in backend owns (besides its own module's types).
_NATIVE_MODULES = {"cupy": ("cupy", "cupyx"), "jax": ("jax", "jaxlib")}


def _may_own(name: str, module: str) -> bool:
    """Whether backend ``name`` can own a type defined in ``module`` (no import of the backend's engine)."""
    own_module = _registry()[name].partition(":")[0]
    if module == own_module:
        return True
    roots = _NATIVE_MODULES.get(name)
    if roots is None:  # a third-party backend: its class declares ``native_modules`` (importing it is cheap)
        try:
            roots = tuple(getattr(_load_class(name), "native_modules", ()))
        except ImportError:
            return False
    return module.split(".")[0] in roots


def backend_of(A: Any) -> Backend | None:
    """The backend whose native matrix ``A`` is, if any (``None`` for SciPy/NumPy input).

    Only a backend that can own ``A``'s type (by the module that defines it) is instantiated, so
    asking about a CuPy matrix never starts JAX (whose start-up would touch its process-wide
    configuration), and NumPy/SciPy input instantiates nothing.
    """
    import scipy.sparse as sp

    if sp.issparse(A) or isinstance(A, np.ndarray):
        return None
    module = type(A).__module__ or ""
    for name in _registry():
        if name == "scipy" or not _may_own(name, module):
            continue
        if _why_not(name) is not None:
            continue
        backend = _instance(name)
        if backend.is_native(A):
            return backend
    return None


def array_backend_of(x: Any) -> Backend | None:
    """The backend whose dense array ``x`` is (a CuPy or JAX array), if any (``None`` for NumPy).

    Found, as in :func:`backend_of`, by the module that defines ``x``'s type, so only a backend
    that can own it is instantiated.
    """
    if isinstance(x, np.ndarray | np.generic):
        return None
    module = type(x).__module__ or ""
    for name in _registry():
        if name == "scipy" or not _may_own(name, module):
            continue
        if _why_not(name) is None:
            return _instance(name)
    return None
