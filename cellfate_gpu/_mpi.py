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
import stat
import struct
import sys
import time
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
#: If set, a failing rank also writes its report to ``<dir>/cellfate-rank<r>-error.txt``.
ERROR_DIR_ENV = "CELLFATE_MPI_ERROR_DIR"


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
        if launched_by_mpi():
            # One fixed source line and the "default" action of RuntimeWarning: the warnings
            # machinery shows this once per process (and honours the user's filters) -- no flag of ours.
            warnings.warn(
                f"Started by an MPI launcher but mpi4py.MPI cannot be imported ({err}); every rank runs as a "
                "single-process job. Rebuild mpi4py against this MPI: "
                "pip install --no-binary mpi4py --force-reinstall mpi4py",
                RuntimeWarning,
                stacklevel=1,
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


def _unread_bytes(fd: int) -> int | None:
    """Bytes written to ``fd`` that its reader has not taken yet (``None``: cannot tell, or nothing to wait for).

    A pipe (how MPICH's Hydra, Open MPI's ``prted`` and batch systems collect a rank's output) is
    asked with ``ioctl(FIONREAD)``, which Linux answers on the write end too; a socket or a
    terminal with ``ioctl(TIOCOUTQ)`` (bytes still in the send / output queue).  A regular file or
    ``/dev/null`` holds what was written as soon as ``write`` returns, so there is nothing to wait for.
    """
    try:
        import fcntl
        import termios

        mode = os.fstat(fd).st_mode
        if stat.S_ISFIFO(mode):
            request = termios.FIONREAD
        elif stat.S_ISSOCK(mode) or os.isatty(fd):
            request = termios.TIOCOUTQ
        else:
            return None
        return int(struct.unpack("i", fcntl.ioctl(fd, request, b"\0\0\0\0"))[0])
    except (ImportError, AttributeError, OSError, struct.error):  # no such ioctl here (not Linux), closed fd
        return None


def _write_all(fd: int, data: bytes) -> None:
    """``os.write`` until every byte is out (partial writes, a non-blocking fd); gives up on a dead reader."""
    view = memoryview(data)
    deadline = time.monotonic() + 10.0
    while view:
        try:
            view = view[os.write(fd, view) :]
        except BlockingIOError:
            if time.monotonic() > deadline:
                return
            time.sleep(0.005)
        except OSError:  # EPIPE/EBADF: nobody reads this stream any more
            return


def _wait_drained(fds: tuple[int, ...], timeout: float) -> None:
    """Wait until the readers of ``fds`` have taken everything written to them, at most ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pending = [n for n in (_unread_bytes(fd) for fd in fds) if n]
        if not pending:
            return
        time.sleep(0.005)


def _report_failure(message: str, rank: int, *, drain_timeout: float, grace: float) -> None:
    """Put ``message`` on file descriptor 2 and make sure the launcher has taken it before the job is killed.

    Why this is needed: ``MPI_Abort`` makes the launcher kill every rank, and a launcher that
    forwards a rank's stderr through a pipe (Hydra's proxy reads the pipe and forwards it to
    ``mpiexec`` on its control socket) may handle the abort before it has read the pipe; what is
    still in the pipe is then lost.  So: write straight to fd 2 (no Python buffer in between, and
    the real stderr even when ``sys.stderr`` was replaced), wait until the pipe is empty (the proxy
    has read it and, in the same step, sent it on, ahead of the abort on the same ordered stream),
    then wait ``grace`` seconds more for the launcher to write it out.
    """
    for stream in (sys.stdout, sys.stderr):  # what the rank printed before comes first
        with contextlib.suppress(Exception):
            stream.flush()
    data = message.encode("utf-8", "backslashreplace")
    _write_all(2, data)
    error_dir = os.environ.get(ERROR_DIR_ENV)
    if error_dir:  # a second copy that does not depend on the launcher at all
        with contextlib.suppress(OSError):
            Path(error_dir, f"cellfate-rank{rank}-error.txt").write_bytes(data)
    _wait_drained((1, 2), drain_timeout)
    time.sleep(grace)


@contextlib.contextmanager
def abort_on_error(context: str, *, drain_timeout: float = 10.0, grace: float = 0.5) -> Iterator[None]:
    """Turn an exception on any one rank into a clean abort of the whole MPI job, with the reason on stderr.

    In an SPMD run, a rank that raises while the others wait in a collective call leaves the job
    hanging until the wall-clock limit.  Inside this context a failing rank writes
    ``[rank r/N] <context> failed: <error>`` with its traceback to its stderr (file descriptor 2),
    waits until the launcher has read it (the pipe behind fd 2 is empty, at most
    ``drain_timeout`` seconds, then ``grace`` seconds more), and only then calls
    ``COMM_WORLD.Abort(1)``, which ends every rank with a non-zero exit status.  So the message
    reaches ``mpiexec``'s stderr before the job dies, on a busy machine too.  If the environment
    variable ``CELLFATE_MPI_ERROR_DIR`` names a directory, the report is also written to
    ``cellfate-rank<r>-error.txt`` there.  With a single rank (or without MPI) the exception simply
    propagates.

    Parameters
    ----------
    context
        What is being done, e.g. ``"computing fate probabilities"``; printed on failure.
    drain_timeout
        At most this many seconds to wait for the launcher to read the report.
    grace
        Seconds to wait after that, for the launcher to write the report out, before aborting.

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
        message = (
            f"[rank {r}/{n}] {context} failed: {type(err).__name__}: {err}\n"
            + "".join(traceback.format_exception(err))
            + f"[rank {r}/{n}] {context} failed: {type(err).__name__}: {err}\n"
            + f"[rank {r}/{n}] calling MPI_Abort so that the other ranks do not hang\n"
        )
        _report_failure(message, r, drain_timeout=drain_timeout, grace=grace)
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
