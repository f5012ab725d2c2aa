"""The PETSc options database: which command-line flags are PETSc's, and option values as PETSc strings."""

from __future__ import annotations

import contextvars
import sys
import types
from collections.abc import Mapping
from typing import Any


class PetscBuildError(RuntimeError):
    """The installed PETSc cannot serve this backend (complex scalars, too small an index type, ...)."""


def _petsc_argv() -> list[str]:
    """The PETSc options on the script's command line (``-ksp_type bcgs``, ``-eps_view``, ``-help``).

    Only single-dash options whose name contains an underscore (PETSc's ``-prefix_name`` style) or
    is one of PETSc's plain flags are passed on, each with its value, so that the script's own
    arguments (``--input x.h5ad``, pytest's ``-x -q``) do not end up in PETSc's "unused options"
    warning.
    """
    argv = list(sys.argv) if sys.argv else []
    out = [argv[0] if argv and argv[0] else "python"]
    keep = False
    for token in argv[1:]:
        is_option = token.startswith("-") and not token.startswith("--") and len(token) > 1
        if is_option:
            try:
                float(token)
                is_option = False  # a negative number is a value
            except ValueError:
                pass
        if is_option:
            name = token[1:]
            keep = "_" in name or name in _PETSC_FLAGS
            if keep:
                out.append(token)
        elif keep:
            out.append(token)
            keep = False
    return out


_PETSC_FLAGS = frozenset({"help", "info", "version", "malloc", "malloc_debug", "malloc_dump", "memory_view"})


def _normalise_options(options: Mapping[str, Any]) -> dict[str, str | None]:
    """PETSc option names without dashes; ``None``/``True`` set a flag, ``False`` is ``"false"``."""
    if not isinstance(options, Mapping):
        raise TypeError(f"options must be a mapping of PETSc option names to values, got {type(options).__name__}.")
    out: dict[str, str | None] = {}
    for key, value in options.items():
        name = str(key).lstrip("-")
        if not name or any(c.isspace() for c in name):
            raise ValueError(f"Invalid PETSc option name {key!r}.")
        out[name] = None if value is None or value is True else "false" if value is False else str(value)
    return out


#: Options of the innermost ``PetscBackend.using_options`` block (scoped, not a process-wide setting).
_SCOPED_OPTIONS: contextvars.ContextVar[Mapping[str, str | None]] = contextvars.ContextVar(
    "petsc_options", default=types.MappingProxyType({})
)
