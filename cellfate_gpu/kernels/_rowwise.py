"""Row-wise CSR operations written once against the backend primitives (no per-row Python loops).

Every function takes a :class:`~cellfate_gpu.backends.Backend` and native arrays on it, and
returns native arrays on the same backend, so kernels built from them run unchanged on SciPy,
CuPy and JAX. A CSR matrix with ``nnz`` stored entries is handled as its ``data``/``indices``/
``indptr`` triple; per-row reductions are ``segment_sum``/``segment_max`` over ``indptr`` and
per-edge broadcasts are gathers with :func:`edge_rows`.
"""

from __future__ import annotations

from typing import Any

__all__ = ["edge_rows", "row_normalize", "row_softmax", "rank_within_rows"]


def edge_rows(backend, indptr: Any) -> Any:
    """Row index of every stored entry (length ``nnz``): ``backend.row_ids(indptr)``."""
    return backend.row_ids(indptr)


def row_normalize(backend, A: Any, *, what: str = "transition matrix") -> Any:
    r"""Divide every row of the native CSR matrix ``A`` by its sum: :math:`T_{ij} = A_{ij} / \sum_k A_{ik}`.

    Parameters
    ----------
    backend
        Backend that ``A`` lives on.
    A
        Native sparse matrix with non-negative entries.
    what
        Name of the matrix used in the error message.

    Returns
    -------
    Native CSR matrix with the same sparsity pattern whose rows sum to one.

    Raises
    ------
    ValueError
        Some rows sum to zero (e.g. every edge was removed by thresholding); names how many.
    """
    xp = backend.xp
    data, indices, indptr = backend.csr_components(A)
    sums = backend.segment_sum(xp.astype(data, xp.float64), indptr)
    empty = int(backend.to_host(xp.sum(xp.astype(sums <= 0, xp.int64))))
    if empty:
        raise ValueError(
            f"{empty} row(s) of the {what} sum to zero (no outgoing edge left); "
            "check the graph or relax the thresholding."
        )
    scaled = data / xp.astype(xp.take(sums, edge_rows(backend, indptr)), data.dtype)
    return backend.csr_from_components(scaled, indices, indptr, tuple(A.shape))


def row_softmax(backend, logits: Any, indptr: Any, scale: float = 1.0) -> Any:
    r"""Per-row softmax of CSR values, shifted by the row maximum for numerical stability.

    :math:`p_{ij} = e^{s (l_{ij} - m_i)} / \sum_k e^{s (l_{ik} - m_i)}` with
    :math:`m_i = \max_k l_{ik}` and ``scale`` :math:`s > 0`.

    Parameters
    ----------
    backend
        Backend the arrays live on.
    logits
        ``data`` array of a CSR matrix (one value per stored entry).
    indptr
        Row pointer of that matrix.
    scale
        Inverse temperature :math:`s` (CellRank's ``softmax_scale``).

    Returns
    -------
    The probabilities, aligned with ``logits``; every non-empty row sums to one.
    """
    xp = backend.xp
    rows = edge_rows(backend, indptr)
    scaled = logits * scale if scale != 1.0 else logits
    shifted = scaled - xp.take(backend.segment_max(scaled, indptr), rows)
    e = xp.exp(shifted)
    return e / xp.take(backend.segment_sum(e, indptr), rows)


def rank_within_rows(backend, values: Any, indptr: Any) -> Any:
    """Rank of every stored value within its row, ``0`` for the largest.

    Equal values are ranked as ``numpy.flip(numpy.argsort(row_values, kind="stable"))`` ranks them
    (the later stored entry first), i.e. as CellRank's ``HardThresholdScheme`` does for rows short
    enough for NumPy's default sort to be stable. The order comes from two stable sorts (by value,
    then by row), which is exact for any values and needs no lexsort (absent from the array API).

    Parameters
    ----------
    backend
        Backend the arrays live on.
    values
        ``data`` array of a CSR matrix.
    indptr
        Row pointer of that matrix.

    Returns
    -------
    Integer ranks aligned with ``values``.
    """
    xp = backend.xp
    rows = edge_rows(backend, indptr)
    by_value = xp.argsort(values, stable=True)
    by_row = xp.argsort(xp.take(rows, by_value), stable=True)
    order = xp.take(by_value, by_row)  # grouped by row, ascending value, ties by storage position
    position = xp.argsort(order, stable=True)  # inverse permutation: position of each entry in `order`
    ascending_rank = position - xp.take(indptr[:-1], rows)
    row_len = xp.take(indptr[1:] - indptr[:-1], rows)
    return row_len - 1 - ascending_rank
