"""Row distribution over the ranks: ownership ranges, scattering rows from rank 0, collective checks."""

from __future__ import annotations

from typing import Any, final

import numpy as np
import scipy.sparse as sp


def _ownership_ranges(n: int, nranks: int) -> np.ndarray:
    """Row block boundaries ``[r_0=0, r_1, ..., r_N=n]`` split as ``PetscSplitOwnership`` does."""
    counts = np.full(nranks, n // nranks, dtype=np.int64)
    counts[: n % nranks] += 1
    return np.concatenate([[0], np.cumsum(counts)])


@final
def _present(x0: Any, comm: Any, distribution: str) -> bool:
    """Whether an initial guess was given (decided by rank 0 in ``'root'`` mode)."""
    here = x0 is not None
    if distribution == "root" and comm.getSize() > 1:
        return bool(comm.tompi4py().bcast(here, root=0))
    return here


def _mpi_land() -> Any:
    from mpi4py import MPI

    return MPI.LAND


def _scatter_csr_from_root(A: Any, mpi: Any) -> tuple[int, np.ndarray, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Scatter the row blocks of rank 0's CSR matrix (``Scatterv``); returns this rank's block.

    Each rank receives its rows' lengths, column ids and values (three ``Scatterv`` calls).
    MPI counts are 32-bit, so one rank's block must hold fewer than 2**31 nonzeros.
    """
    from mpi4py import MPI

    me, nranks = mpi.Get_rank(), mpi.Get_size()
    header = None
    if me == 0:
        if A is None or not sp.issparse(A) or A.shape[0] != A.shape[1]:
            shape = getattr(A, "shape", None)
            header = ("error", f"distribution='root' needs a square sparse matrix on rank 0, got shape {shape}")
        else:
            A = sp.csr_matrix(A, dtype=np.float64)
            if not A.has_sorted_indices:
                A = A.sorted_indices()
            header = ("ok", A.shape[0])
    header = mpi.bcast(header, root=0)
    if header[0] == "error":
        raise ValueError(header[1])
    n = int(header[1])
    ranges = _ownership_ranges(n, nranks)
    nnz_bounds = mpi.bcast(A.indptr[ranges].astype(np.int64) if me == 0 else None, root=0)
    lo, hi = int(ranges[me]), int(ranges[me + 1])
    row_len = np.empty(hi - lo, dtype=np.int64)
    indices = np.empty(int(nnz_bounds[me + 1] - nnz_bounds[me]), dtype=np.int64)
    data = np.empty(indices.size, dtype=np.float64)
    row_counts, nnz_counts = np.diff(ranges), np.diff(nnz_bounds)
    send_len = [np.diff(A.indptr).astype(np.int64), row_counts, ranges[:-1], MPI.INT64_T] if me == 0 else None
    mpi.Scatterv(send_len, row_len, root=0)
    send_idx = [A.indices.astype(np.int64), nnz_counts, nnz_bounds[:-1], MPI.INT64_T] if me == 0 else None
    mpi.Scatterv(send_idx, indices, root=0)
    send_data = [np.ascontiguousarray(A.data), nnz_counts, nnz_bounds[:-1], MPI.DOUBLE] if me == 0 else None
    mpi.Scatterv(send_data, data, root=0)
    indptr = np.concatenate([[0], np.cumsum(row_len)])
    return n, ranges, (indptr, indices, data)
