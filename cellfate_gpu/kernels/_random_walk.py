"""Random walks on a transition matrix: all walks step together, each step costs O(row nnz).

Semantics follow CellRank 2.3.3's ``RandomWalk``: start cells are drawn uniformly from
``start_ixs``; a walk makes at most ``max_iter`` steps and stops early once it has visited
``stop_ixs`` cells ``successive_hits + 1`` times in a row (the start cell does not count).
Unlike CellRank, which seeds walk ``s`` with ``seed + s`` and samples a dense row per step,
all walks share one :class:`numpy.random.Generator` and step together: the next cell of every
active walk is found by one ``searchsorted`` into the global cumulative sum of ``T.data``.
So walks are reproducible under a seed but not identical to CellRank's for the same seed.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from cellfate_gpu._logging import progress, timed

__all__ = ["UnknownCellsError", "resolve_cells", "simulate_random_walks"]


class UnknownCellsError(KeyError, ValueError):
    """Obs names that are not in ``adata.obs_names``.

    A failed lookup (:class:`KeyError`) and a bad value (:class:`ValueError`), so code written
    against either catches it.
    """

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def resolve_cells(adata, selector: Any, *, what: str) -> np.ndarray:
    """Sorted unique integer indices of the cells a CellRank-style selector names.

    Parameters
    ----------
    adata
        Annotated data the selector refers to.
    selector
        ``None`` → all cells; ``{"clusters": ["HSC_1"]}`` → cells whose categorical (or string)
        ``obs["clusters"]`` is listed; ``{"dpt_pseudotime": [0, 0.1]}`` → cells whose numeric obs
        column lies in the closed range; an obs name or a sequence of obs names; integer indices
        (negative ones count from the end); a boolean mask of length ``n_obs``.
    what
        Name of the argument, for error messages.

    Raises
    ------
    KeyError, ValueError, IndexError, TypeError
        Unknown obs key, bad mask length, out-of-range indices, an empty selection, or another
        dtype; unknown obs names raise :class:`UnknownCellsError` (both a KeyError and a ValueError).
    """
    n = adata.n_obs
    if selector is None:
        return np.arange(n)
    if isinstance(selector, dict):
        if len(selector) != 1:
            raise ValueError(f"{what} as a dict must have exactly one obs key, got {list(selector)}.")
        ((key, values),) = selector.items()
        if key not in adata.obs:
            raise KeyError(f"{what}: no column adata.obs[{key!r}]; available: {list(adata.obs.columns)}.")
        col = adata.obs[key]
        if pd.api.types.is_numeric_dtype(col) and not isinstance(col.dtype, pd.CategoricalDtype):
            values = list(np.atleast_1d(values))
            if len(values) != 2:
                raise ValueError(f"{what}: adata.obs[{key!r}] is numeric; give a range [min, max], got {values}.")
            lo, hi = sorted(float(v) for v in values)
            ixs = np.flatnonzero(((col >= lo) & (col <= hi)).to_numpy())
        else:
            # one category (``{"day": 0.0}`` as in CellRank's real-time tutorial) or a list of them
            values = list(values) if isinstance(values, (list, tuple, set, np.ndarray, pd.Index)) else [values]
            col = col.astype(str)
            unknown = sorted(set(map(str, values)) - set(col.unique()))
            if unknown:
                raise ValueError(f"{what}: values {unknown} not found in adata.obs[{key!r}].")
            ixs = np.flatnonzero(col.isin(list(map(str, values))).to_numpy())
    else:
        arr = np.atleast_1d(np.asarray(selector))
        if arr.dtype == bool:
            if arr.shape != (n,):
                raise ValueError(f"{what}: boolean mask has shape {arr.shape}, expected ({n},).")
            ixs = np.flatnonzero(arr)
        elif arr.dtype.kind in "iu":
            if arr.size and (arr.min() < -n or arr.max() >= n):
                raise IndexError(f"{what}: indices must be in [-{n}, {n}), got range [{arr.min()}, {arr.max()}].")
            ixs = np.unique(np.where(arr < 0, arr + n, arr).astype(np.int64).ravel())
        elif arr.dtype.kind in "OUS":
            names = adata.obs_names.get_indexer(arr.astype(str).ravel())
            if np.any(names < 0):
                missing = list(arr.astype(str).ravel()[names < 0][:5])
                raise UnknownCellsError(
                    f"{what}: {int(np.sum(names < 0))} obs names not found in adata.obs_names, e.g. {missing}."
                )
            ixs = np.unique(names)
        else:
            raise TypeError(
                f"{what} must be a dict, obs names, integer indices or a boolean mask, got dtype {arr.dtype}."
            )
    if ixs.size == 0:
        raise ValueError(f"{what} selects no cells.")
    return ixs


def _max_iter(max_iter: int | float, n: int) -> int:
    if isinstance(max_iter, float):
        if not (np.isfinite(max_iter) and max_iter > 0):
            raise ValueError(f"max_iter as a float (a fraction of the {n} cells) must be positive, got {max_iter}.")
        max_iter = int(np.ceil(max_iter * n))
    if max_iter < 1:
        raise ValueError(f"Expected max_iter >= 1 steps, got {max_iter}.")
    return int(max_iter)


def simulate_random_walks(
    kernel,
    n_sims: int = 100,
    max_iter: int | float = 0.25,
    seed: int | None = None,
    successive_hits: int = 0,
    start_ixs: Any = None,
    stop_ixs: Any = None,
) -> list[np.ndarray]:
    r"""Simulate ``n_sims`` random walks on ``kernel.transition_matrix`` (host CSR).

    From cell :math:`i` the next cell is :math:`j` with probability :math:`T_{ij}`: with
    :math:`c` the global cumulative sum of ``T.data`` and :math:`u \sim U(0, 1)`, it is the entry
    found by ``searchsorted`` of :math:`c_{\text{start}(i)} + u \sum_j T_{ij}` — one vectorised step
    for all active walks, so a step costs :math:`O(\text{walks} \cdot \log \text{nnz})`.

    Parameters
    ----------
    kernel
        A kernel with a computed transition matrix.
    n_sims
        Number of walks.
    max_iter
        Maximum number of steps; a float is a fraction of the number of cells (``ceil``).
    seed
        Seed of the :class:`numpy.random.Generator`; the same seed gives the same walks.
    successive_hits
        A walk stops after ``successive_hits + 1`` consecutive steps into ``stop_ixs`` cells.
    start_ixs, stop_ixs
        CellRank selectors (see :func:`resolve_cells`); start cells are drawn uniformly.

    Returns
    -------
    list of numpy.ndarray
        The visited cell indices of each walk, start included (length at most ``max_iter + 1``).
    """
    T = kernel.transition_matrix
    n = T.shape[0]
    if n_sims < 1:
        raise ValueError(f"Expected n_sims >= 1, got {n_sims}.")
    if successive_hits < 0:
        raise ValueError(f"Expected successive_hits >= 0, got {successive_hits}.")
    steps = _max_iter(max_iter, n)
    rng = np.random.default_rng(seed)
    starts = resolve_cells(kernel.adata, start_ixs, what="start_ixs")
    stop_mask = np.zeros(n, dtype=bool)
    if stop_ixs is not None:
        stop_mask[resolve_cells(kernel.adata, stop_ixs, what="stop_ixs")] = True

    indptr, indices = T.indptr.astype(np.int64), T.indices
    cumulative = np.cumsum(T.data, dtype=np.float64)  # per-row cumulative sums from one global cumsum
    before = np.r_[0.0, cumulative][indptr[:-1]]  # cumulative mass before row i
    row_mass = np.r_[0.0, cumulative][indptr[1:]] - before

    current = rng.choice(starts, size=n_sims)
    hits = np.zeros(n_sims, dtype=np.int64)
    active = np.arange(n_sims)
    sim_log, cell_log = [np.arange(n_sims)], [current.copy()]  # (walk, cell) pairs, in step order
    with timed("Simulating %d random walks of maximum length %d", n_sims, steps):
        for _ in progress(range(steps), desc="random walks", unit="step"):
            c = current[active]
            u = before[c] + rng.random(active.size) * row_mass[c]
            pos = np.searchsorted(cumulative, u, side="right")
            pos = np.clip(pos, indptr[c], indptr[c + 1] - 1)  # guards rounding at row ends
            nxt = indices[pos]
            current[active] = nxt
            sim_log.append(active)
            cell_log.append(nxt)
            hits[active] = np.where(stop_mask[nxt], hits[active] + 1, 0)
            active = active[hits[active] <= successive_hits]
            if active.size == 0:
                break
    sims, cells = np.concatenate(sim_log), np.concatenate(cell_log)
    order = np.argsort(sims, kind="stable")  # group by walk, keep step order
    bounds = np.searchsorted(sims[order], np.arange(n_sims + 1))
    walk_cells = cells[order]
    return [walk_cells[bounds[s] : bounds[s + 1]] for s in range(n_sims)]
