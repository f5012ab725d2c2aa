"""``cellrank.logging`` in CellRank's interface: what a notebook's last cell prints."""

from __future__ import annotations

import platform
import sys
from importlib import metadata

#: Packages whose versions decide results here (the engine, the numerics, the optional backends).
_PACKAGES = (
    "cellfate_gpu",
    "anndata",
    "numpy",
    "scipy",
    "pandas",
    "matplotlib",
    "pyamg",
    "pygam",
    "scanpy",
    "cupy",
    "jax",
    "petsc4py",
    "slepc4py",
    "mpi4py",
)


def versions() -> dict[str, str | None]:
    """Installed version of each package that shapes results (``None``: not installed)."""
    found: dict[str, str | None] = {}
    for name in _PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def print_versions() -> None:
    """Print Python's and the relevant packages' versions in one line (CellRank's ``print_versions``)."""
    parts = [f"{name}=={v}" for name, v in versions().items() if v is not None]
    print(f"python=={platform.python_version()} " + " ".join(parts), file=sys.stdout)
