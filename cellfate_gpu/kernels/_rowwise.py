"""Row-wise CSR operations written once against the backend primitives (no per-row loops)."""

from __future__ import annotations

from typing import Any

__all__ = ["row_normalize", "row_softmax", "rank_within_rows"]


def row_normalize(backend, A: Any, *, what: str = "transition matrix") -> Any:
    """Divide every row of native ``A`` by its sum.

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
    scaled = data / xp.astype(xp.take(sums, backend.row_ids(indptr)), data.dtype)
    return backend.csr_from_components(scaled, indices, indptr, tuple(A.shape))


def row_softmax(backend, logits: Any, indptr: Any) -> Any:
    r"""Per-row softmax of CSR values, shifted by the row maximum for stability.

    :math:`p_{ij} = e^{l_{ij} - \max_j l_{ij}} / \sum_j e^{l_{ij} - \max_j l_{ij}}`.
    """
    xp = backend.xp
    rows = backend.row_ids(indptr)
    shifted = logits - xp.take(backend.segment_max(logits, indptr), rows)
    e = xp.exp(shifted)
    return e / xp.take(backend.segment_sum(e, indptr), rows)


def rank_within_rows(backend, values: Any, indptr: Any) -> Any:
    """Rank (0 = largest) of every stored value within its row, by two stable sorts.

    The sort key ``row + 0.5 (1 - v / rowmax)`` orders rows first, then values descending, which
    needs no lexsort (absent from the array API) and stays exact enough in float64 for rows < 2^32.
    """
    xp = backend.xp
    rows = backend.row_ids(indptr)
    v = xp.astype(values, xp.float64)
    vmax = xp.take(backend.segment_max(v, indptr), rows)
    vmin = xp.take(-backend.segment_max(-v, indptr), rows)
    span = xp.where(vmax > vmin, vmax - vmin, xp.ones_like(vmax))
    key = xp.astype(rows, xp.float64) + 0.5 * (vmax - v) / span
    order = xp.argsort(key, stable=True)
    position = xp.argsort(order, stable=True)
    return position - xp.take(indptr, rows)
