"""MPI helpers for SPMD runs (``mpiexec -n N python ...``) that degrade to one rank without mpi4py.

The run model of the ``petsc`` backend is SPMD: every rank runs the same script.  These helpers
answer "who am I" (:func:`rank`, :func:`size`, :func:`is_root`), synchronise (:func:`barrier`),
keep writes to one rank (:func:`root_only_write`) and make a failure on one rank end the whole
job with a message instead of a hang (:func:`abort_on_error`).

``mpi4py.MPI`` initialises MPI when imported, so it is imported lazily and only when the process
was started by an MPI launcher (MPICH/Hydra ``PMI_*``, Open MPI ``OMPI_COMM_WORLD_*``, PMIx) or
when another module has already imported it.  Without mpi4py, or in a plain ``python`` run, every
helper behaves as a single-rank job.
"""

from __future__ import annotations

import contextlib
import os
import sys
import traceback
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

__all__ = ["abort_on_error", "barrier", "comm_world", "is_root", "launched_by_mpi", "rank", "root_only_write", "size"]

#: Environment variables that MPI launchers set in every rank (size, then rank).
_LAUNCHER_VARS = (
    ("PMI_SIZE", "PMI_RANK"),  # MPICH / Hydra, Intel MPI
    ("OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK"),  # Open MPI
    ("PMIX_SIZE", "PMIX_RANK"),  # PMIx launchers
    ("MPI_LOCALNRANKS", "MPI_LOCALRANKID"),  # MPICH local launchers
)
_WARNED: list[bool] = []


def launched_by_mpi() -> bool:
    """Whether this process was started by an MPI launcher (``mpiexec``/``mpirun``/``srun``)."""
    return any(size_var in os.environ for size_var, _ in _LAUNCHER_VARS)


def comm_world() -> Any | None:
    """``mpi4py.MPI.COMM_WORLD`` when running under MPI with mpi4py installed, else ``None``.

    mpi4py is imported (which initialises MPI) only under an MPI launcher or when it is already
    imported, so a serial ``python`` run never pays for MPI start-up here.
    """
    if "mpi4py.MPI" not in sys.modules and not launched_by_mpi():
        return None
    try:
        from mpi4py import MPI
    except ModuleNotFoundError:
        return None
    except ImportError as err:  # installed but broken (e.g. a wheel built for another MPI library)
        if launched_by_mpi() and not _WARNED:
            _WARNED.append(True)
            warnings.warn(
                f"Started by an MPI launcher but mpi4py.MPI cannot be imported ({err}); every rank runs as a "
                "single-process job. Rebuild mpi4py against this MPI: "
                "pip install --no-binary mpi4py --force-reinstall mpi4py",
                RuntimeWarning,
                stacklevel=2,
            )
        return None
    return MPI.COMM_WORLD


def rank() -> int:
    """Rank of this process in ``COMM_WORLD`` (0 without MPI)."""
    comm = comm_world()
    return 0 if comm is None else int(comm.Get_rank())


def size() -> int:
    """Number of ranks in ``COMM_WORLD`` (1 without MPI)."""
    comm = comm_world()
    return 1 if comm is None else int(comm.Get_size())


def is_root() -> bool:
    """Whether this is rank 0 (always true without MPI)."""
    return rank() == 0


def barrier() -> None:
    """Wait for every rank (no-op without MPI)."""
    comm = comm_world()
    if comm is not None and comm.Get_size() > 1:
        comm.Barrier()


@contextlib.contextmanager
def abort_on_error(context: str) -> Iterator[None]:
    """Turn an exception on any one rank into a clean abort of the whole MPI job.

    In an SPMD run, a rank that raises while the others wait in a collective call leaves the job
    hanging until the wall-clock limit.  Inside this context a failing rank prints
    ``[rank r/N] <context> failed: <error>`` with its traceback to stderr and calls
    ``COMM_WORLD.Abort(1)``, which ends every rank with a non-zero exit status.  With a single rank
    (or without MPI) the exception simply propagates.

    Parameters
    ----------
    context
        What is being done, e.g. ``"computing fate probabilities"``; printed on failure.

    Examples
    --------
    >>> with abort_on_error("computing the transition matrix"):
    ...     pass
    """
    try:
        yield
    except Exception as err:
        comm = comm_world()
        if comm is None or comm.Get_size() == 1:
            raise
        r, n = comm.Get_rank(), comm.Get_size()
        sys.stdout.flush()
        sys.stderr.write(f"[rank {r}/{n}] {context} failed: {type(err).__name__}: {err}\n")
        sys.stderr.write("".join(traceback.format_exception(err)))
        sys.stderr.write(f"[rank {r}/{n}] calling MPI_Abort so that the other ranks do not hang\n")
        sys.stderr.flush()
        comm.Abort(1)
        raise  # only reached if Abort returns (it does not in a real MPI library)


def root_only_write(path: str | os.PathLike[str], writer: Callable[[Path], Any]) -> Path:
    """Run ``writer(path)`` on rank 0 only; every rank returns once the file is complete.

    Writing the same file from N ranks at once corrupts it, so results (``.h5ad``, figures,
    benchmark JSON) are written by rank 0.  A failure in ``writer`` is broadcast: every rank raises
    :class:`RuntimeError` naming the path, so no rank continues with a missing file.

    Parameters
    ----------
    path
        Destination path (passed to ``writer`` as a :class:`pathlib.Path`).
    writer
        Callable that writes the file, e.g. ``lambda p: adata.write_h5ad(p)``.

    Returns
    -------
    pathlib.Path
        The path, on every rank.
    """
    path = Path(path)
    comm = comm_world()
    error: str | None = None
    if comm is None or comm.Get_rank() == 0:
        try:
            writer(path)
        except Exception as err:  # reported on every rank below
            error = f"{type(err).__name__}: {err}"
            if comm is None or comm.Get_size() == 1:
                raise
    if comm is not None and comm.Get_size() > 1:
        error = comm.bcast(error, root=0)
    if error is not None:
        raise RuntimeError(f"Rank 0 failed to write {str(path)!r}: {error}")
    return path
