r"""Machine measurements for the benchmarks: triad bandwidth, SpMM traffic and counts, peak memory.

Bandwidth model
---------------
One CSR SpMM :math:`Y = A X` with :math:`n` rows, :math:`z` stored entries and :math:`s` columns
moves at least

.. math::

    B_\\mathrm{SpMM} = 12 z + 4 (n + 1) + 16 n s \\quad\text{bytes}

(8-byte values and 4-byte column indices, row pointers, one read of :math:`X` and one write of
:math:`Y`; gathers of :math:`X` are assumed cached). The efficiency of a step is
:math:`\\sum B_\\mathrm{SpMM} / t` divided by the triad bandwidth; ``bw_pct_spmm`` uses the time
spent inside the SpMMs only, ``bw_pct_step`` the whole step (orthogonalisation and host work
included). Orthogonalisation traffic (for the GPU projection) is modelled as classical Gram-Schmidt
with one re-orthogonalisation: :math:`4 j n \\cdot 8` bytes for the :math:`j`-th basis vector,
with :math:`j` averaging :math:`(k + n_{cv})/2` in Krylov-Schur (:math:`n_{cv} = \\max(2k, k + 15)`) and
half the restart length (30) in GMRES.
"""

from __future__ import annotations

import contextlib
import contextvars
import itertools
import math
import os
import resource
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from cellfate_gpu.backends._counting import close_recorder, counting_backend, open_recorder


def stream_triad_bandwidth(n: int = 20_000_000, repeats: int = 5, threads: int | None = None) -> float:
    r"""STREAM-like triad :math:`a = b + s\,c` bandwidth in GB/s over ``threads`` threads.

    NumPy evaluates the triad as two passes (``a = s c`` then ``a += b``), which move
    :math:`5 \cdot 8 n` bytes (read ``c``, write ``a``; read ``a`` and ``b``, write ``a``); that is
    what is counted here, so the number is the sustained bandwidth of the memory system rather
    than STREAM's :math:`3 \cdot 8 n` convention. NumPy releases the GIL inside large ufunc loops,
    so each thread's slice runs on its own core. Best of ``repeats``.

    Parameters
    ----------
    n
        Elements per array (three float64 arrays; 160 MB each by default, well beyond the caches).
    repeats
        Repetitions; the fastest counts.
    threads
        Worker threads (default: all cores, ``os.cpu_count()``).
    """
    if n < 1 or repeats < 1:
        raise ValueError(f"n and repeats must be positive, got n={n}, repeats={repeats}.")
    threads = max(1, threads or os.cpu_count() or 1)
    b, c = np.ones(n), np.full(n, 2.0)
    a = np.zeros(n)
    edges = np.linspace(0, n, threads + 1).astype(int)
    bounds = [(int(lo), int(hi)) for lo, hi in itertools.pairwise(edges) if hi > lo]

    def triad(lo_hi: tuple[int, int]) -> None:
        lo, hi = lo_hi
        np.multiply(c[lo:hi], 3.0, out=a[lo:hi])
        np.add(a[lo:hi], b[lo:hi], out=a[lo:hi])

    best = math.inf
    with ThreadPoolExecutor(threads) as pool:
        for _ in range(repeats):
            t0 = time.perf_counter()
            list(pool.map(triad, bounds))
            best = min(best, time.perf_counter() - t0)
    return 5 * 8 * n / best / 1e9


def spmv_bytes(n: int, nnz: int, ncols: int = 1) -> int:
    """Bytes one CSR SpMM with ``n`` rows, ``nnz`` entries and ``ncols`` vectors moves at least.

    ``12 nnz + 4 (n + 1) + 16 n ncols``: values and column indices, row pointers, the block read once
    and the result written once.
    """
    return 12 * int(nnz) + 4 * (int(n) + 1) + 16 * int(n) * int(ncols)


def _nnz(A: Any) -> int | None:
    for attr in ("nnz", "nse"):
        v = getattr(A, attr, None)
        if v is not None and not callable(v):
            return int(v)
    data = getattr(A, "data", None)
    shape = getattr(data, "shape", None)
    if shape:
        return int(shape[0])
    return None


class MatvecCounter(contextlib.AbstractContextManager):
    """Count the SpMMs of counting backends (and their bytes and time) while the context is open.

    Scoped like :meth:`settings.using <cellfate_gpu._settings._Settings.using>`: entering pushes
    this counter onto a :class:`contextvars.ContextVar`, leaving pops it, so counters nest (an
    outer one sees the products of an inner one too) and threads or tasks with their own context
    do not see each other's (the scope is :mod:`cellfate_gpu.backends._counting`'s). What is
    counted are the ``spmm`` calls of :func:`counting_backend` views; :attr:`backend` is such a view
    of ``backend`` (made on first use).

    ``matvecs`` counts vectors (an SpMM with ``s`` columns counts ``s``); ``seconds`` is the time
    spent inside ``spmm``; ``bytes`` follows :func:`spmv_bytes` (``default_nnz`` stands in for a
    matrix whose stored entries cannot be read). Backends whose solvers do not go through
    ``spmm`` (PETSc's KSP/EPS) report zero.

    Parameters
    ----------
    backend
        The backend whose counting view :attr:`backend` gives (optional).
    default_nnz
        Stored entries assumed for a matrix without ``nnz``/``nse``/``data``.
    """

    def __init__(self, backend: Any = None, default_nnz: int | None = None):
        self._of = backend
        self._view: Any = None
        self.default_nnz = default_nnz
        self.calls = self.matvecs = self.bytes = 0
        self.seconds = 0.0
        self._token: contextvars.Token | None = None

    @property
    def backend(self) -> Any:
        """A :func:`counting_backend` view of the backend this counter was made for."""
        if self._of is None:
            raise ValueError("MatvecCounter() was made without a backend; pass MatvecCounter(backend).")
        if self._view is None:
            self._view = counting_backend(self._of)
        return self._view

    def record(self, A: Any, X: Any, seconds: float) -> None:
        """Add one SpMM ``A @ X`` that took ``seconds``."""
        shape = getattr(X, "shape", ())
        ncols = int(shape[1]) if len(shape) == 2 else 1
        nnz = _nnz(A)
        n = int(getattr(A, "shape", (0,))[0])
        self.seconds += seconds
        self.calls += 1
        self.matvecs += ncols
        self.bytes += spmv_bytes(n, nnz if nnz is not None else (self.default_nnz or 0), ncols)

    def __enter__(self) -> MatvecCounter:
        if self._token is not None:
            raise RuntimeError("This MatvecCounter is already open; make one per context.")
        self._token = open_recorder(self)
        return self

    def __exit__(self, *exc: Any) -> None:
        close_recorder(self._token)
        self._token = None
        return None


class PeakMemory(contextlib.AbstractContextManager):
    """Peak resident memory (MiB) of this process while the context is open.

    On Linux, writing ``5`` to ``/proc/self/clear_refs`` resets the high-water mark ``VmHWM``, so
    the peak is the step's own; elsewhere it falls back to ``resource.getrusage``'s lifetime peak.
    """

    def __init__(self) -> None:
        self.peak_mib = float("nan")
        self.reset_ok = False

    def __enter__(self) -> PeakMemory:
        try:
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")
            self.reset_ok = True
        except OSError:
            self.reset_ok = False
        return self

    def __exit__(self, *exc: Any) -> None:
        self.peak_mib = _peak_rss_mib() if not self.reset_ok else _vmhwm_mib()
        return None


def _vmhwm_mib() -> float:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return _peak_rss_mib()


def _peak_rss_mib() -> float:
    per_mib = 1024.0**2 if sys.platform == "darwin" else 1024.0  # ru_maxrss: bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / per_mib
