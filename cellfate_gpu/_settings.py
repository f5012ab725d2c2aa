"""Scoped settings: backend, dtype, verbosity.

Values live in a :class:`contextvars.ContextVar` (no module-level mutable globals), so
``settings.using(...)`` is safe in threads and async code and always restores the old values.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import os
from collections.abc import Iterator

import numpy as np

__all__ = ["settings"]

_BACKENDS_HINT = "'auto', 'scipy', 'cupy', 'jax', 'petsc' or a registered third-party name"
_VERBOSITY = {"error": 0, "warning": 1, "info": 2, "debug": 3}


@dataclasses.dataclass(frozen=True)
class _Config:
    backend: str = "auto"
    dtype: str = "float64"
    verbosity: int = 2


def _initial() -> _Config:
    backend = os.environ.get("CELLFATE_BACKEND", "auto").strip().lower() or "auto"
    verbosity = os.environ.get("CELLFATE_VERBOSITY", "info").strip().lower()
    return _Config(backend=backend, verbosity=_VERBOSITY.get(verbosity, 2))


# _Config is frozen, so sharing the default instance is safe.
_config: contextvars.ContextVar[_Config] = contextvars.ContextVar(
    "cellfate_gpu_config",
    default=_initial(),  # noqa: B039
)


class _Settings:
    """Library-wide defaults.

    Attributes
    ----------
    backend
        Default backend name (env ``CELLFATE_BACKEND``, default ``"auto"``).
    dtype
        Storage dtype of transition matrices, ``"float64"`` (default) or ``"float32"``.
        Reductions and Krylov projections accumulate in float64 whatever this says.
    verbosity
        0 errors, 1 warnings, 2 info (default, CellRank-style timed lines), 3 debug
        (also every host/device transfer).

    Examples
    --------
    >>> from cellfate_gpu import settings
    >>> with settings.using(backend="scipy", verbosity=0):
    ...     settings.backend
    'scipy'
    """

    @property
    def backend(self) -> str:
        return _config.get().backend

    @backend.setter
    def backend(self, value: str) -> None:
        self._set(backend=value)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(_config.get().dtype)

    @dtype.setter
    def dtype(self, value) -> None:
        self._set(dtype=value)

    @property
    def verbosity(self) -> int:
        return _config.get().verbosity

    @verbosity.setter
    def verbosity(self, value: int | str) -> None:
        self._set(verbosity=value)

    @staticmethod
    def _validated(**changes) -> dict:
        out = {}
        for key, value in changes.items():
            if key == "backend":
                if not isinstance(value, str) or not value:
                    raise ValueError(f"backend must be one of {_BACKENDS_HINT}, got {value!r}.")
                out[key] = value.lower()
            elif key == "dtype":
                dt = np.dtype(value)
                if dt not in (np.float32, np.float64):
                    raise ValueError(f"dtype must be float32 or float64, got {value!r}.")
                out[key] = dt.name
            elif key == "verbosity":
                if isinstance(value, str):
                    if value.lower() not in _VERBOSITY:
                        raise ValueError(f"verbosity must be one of {list(_VERBOSITY)} or 0-3, got {value!r}.")
                    value = _VERBOSITY[value.lower()]
                if not 0 <= int(value) <= 3:
                    raise ValueError(f"verbosity must be between 0 and 3, got {value!r}.")
                out[key] = int(value)
            else:
                raise ValueError(f"Unknown setting {key!r}; known: backend, dtype, verbosity.")
        return out

    def _set(self, **changes) -> None:
        _config.set(dataclasses.replace(_config.get(), **self._validated(**changes)))

    @contextlib.contextmanager
    def using(self, **changes) -> Iterator[_Settings]:
        """Temporarily change settings; the old values come back on exit, even on error."""
        token = _config.set(dataclasses.replace(_config.get(), **self._validated(**changes)))
        try:
            yield self
        finally:
            _config.reset(token)

    def __repr__(self) -> str:
        c = _config.get()
        return f"settings(backend={c.backend!r}, dtype={c.dtype!r}, verbosity={c.verbosity})"


settings = _Settings()
