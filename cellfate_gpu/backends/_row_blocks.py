r"""SpMM on every core of a CPU: SciPy's CSR kernel over row blocks, one thread per block.

SciPy's ``csr_matvec(s)`` is single-threaded but releases the GIL, so the product
:math:`Y = A X` splits exactly by rows, :math:`Y_{[a, b)} = A_{[a, b), :} X`, into independent calls
that run in parallel threads. The blocks are views of ``A``'s ``data`` and ``indices`` (only the
shifted row pointers are copied, :math:`O(n)` integers), built once per matrix and kept on the
matrix object itself, keyed by the identity of its arrays: a structural change rebuilds them, an
in-place change of ``A.data`` is seen through the views. Results are bit-identical to ``A @ X``
(each row is the same dot product in the same order).

Measured on this project's 2-core machine (``benchmarks/`` figures in docs/benchmarks.md): below
:data:`MIN_ROWS` rows thread start-up costs more than it saves.
"""

from __future__ import annotations

import itertools
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import scipy.sparse as sp

__all__ = ["MIN_ROWS", "n_threads", "threaded_spmm"]

#: Matrices with fewer rows use SciPy's serial product.
MIN_ROWS = 50_000
_ATTR = "_cellfate_row_blocks"
_POOL: dict[int, ThreadPoolExecutor] = {}  # one pool per thread count; threads are reused, not state


def n_threads() -> int:
    """Threads for the SpMM: ``CELLFATE_NUM_THREADS``, else the CPUs this process may run on."""
    env = os.environ.get("CELLFATE_NUM_THREADS")
    if env:
        try:
            value = int(env)
        except ValueError:
            raise ValueError(f"CELLFATE_NUM_THREADS must be a positive integer, got {env!r}.") from None
        if value < 1:
            raise ValueError(f"CELLFATE_NUM_THREADS must be a positive integer, got {env!r}.")
        return value
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def _key(A: sp.csr_matrix, parts: int) -> tuple:
    return (A.shape, A.nnz, A.data.ctypes.data, A.indices.ctypes.data, A.indptr.ctypes.data, parts)


def _blocks(A: sp.csr_matrix, parts: int) -> list[tuple[int, int, sp.csr_matrix]]:
    """Row blocks of ``A`` with about equal numbers of stored entries (cached on ``A``)."""
    key = _key(A, parts)
    cached = getattr(A, _ATTR, None)
    if cached is not None and cached[0] == key:
        return cached[1]
    targets = np.linspace(0, A.nnz, parts + 1)
    cuts = np.unique(np.concatenate([[0], np.searchsorted(A.indptr, targets[1:-1]), [A.shape[0]]]))
    blocks = []
    for a, b in itertools.pairwise(cuts):
        lo, hi = A.indptr[a], A.indptr[b]
        # Set the arrays directly: SciPy's constructor may copy a slice, and the blocks must stay
        # views of A's data and indices (so that an in-place change of A.data is seen).
        block = sp.csr_matrix((int(b - a), A.shape[1]), dtype=A.dtype)
        block.data, block.indices, block.indptr = A.data[lo:hi], A.indices[lo:hi], A.indptr[a : b + 1] - lo
        blocks.append((int(a), int(b), block))
    try:
        setattr(A, _ATTR, (key, blocks))
    except AttributeError:  # a matrix type without instance attributes: rebuild next time
        pass
    return blocks


def threaded_spmm(A: Any, X: np.ndarray, threads: int | None = None) -> np.ndarray:
    """``A @ X`` for a SciPy CSR ``A`` and a dense ``(n,)`` or ``(n, s)`` ``X``, over ``threads`` threads."""
    if A.shape[0] < MIN_ROWS or not (sp.issparse(A) and A.format == "csr"):
        return A @ X  # small or not CSR: no thread count needed (this runs on every matvec)
    threads = n_threads() if threads is None else threads
    if threads < 2:
        return A @ X
    X = np.asarray(X)
    dtype = np.result_type(A.dtype, X.dtype)
    Y = np.empty((A.shape[0], *X.shape[1:]), dtype=dtype)
    blocks = _blocks(A, threads)
    pool = _POOL.get(threads)
    if pool is None:
        pool = _POOL[threads] = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="cellfate-spmm")

    def run(block: tuple[int, int, sp.csr_matrix]) -> None:
        a, b, M = block
        Y[a:b] = M @ X

    for future in [pool.submit(run, blk) for blk in blocks]:
        future.result()  # re-raises a worker's exception here
    return Y
