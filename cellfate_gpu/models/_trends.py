"""Gene trends of many genes along many lineages: one batched fit per lineage."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from cellfate_gpu._logging import progress, timed
from cellfate_gpu.models._base import BaseModel, expression, lineage_design
from cellfate_gpu.models._gam import GAM

__all__ = ["LineageTrends", "fit_trends"]


@dataclasses.dataclass(frozen=True)
class LineageTrends:
    """Smoothed expression of many genes along one lineage.

    Attributes
    ----------
    lineage
        The lineage (``None``: all weights one).
    x_test
        ``(n_test,)`` pseudotime grid.
    mean
        ``(n_test, n_genes)`` DataFrame of fitted trends (columns: genes).
    conf_int
        ``(n_test, n_genes, 2)`` lower/upper bounds, or ``None``.
    converged
        ``(n_genes,)`` whether each fit converged.
    models
        Per-gene models when a non-GAM model was used (else ``None``).
    """

    lineage: str | None
    x_test: np.ndarray
    mean: pd.DataFrame
    conf_int: np.ndarray | None
    converged: np.ndarray
    models: dict[str, BaseModel] | None = None


def _chunks(n_cells: int, n_genes: int, budget: int) -> list[slice]:
    step = max(1, min(n_genes, budget // max(1, n_cells)))
    return [slice(i, min(i + step, n_genes)) for i in range(0, n_genes, step)]


def fit_trends(
    adata: Any,
    model: BaseModel | Mapping[str, Any],
    genes: Sequence[str],
    lineages: Sequence[str | None],
    time_key: str,
    *,
    backward: bool = False,
    data_key: str | None = "X",
    time_range: Any = None,
    conf_int: bool | float = True,
    use_raw: bool = False,
    threshold: float | None = None,
    weight_threshold: float | tuple[float, float] = (0.01, 0.01),
    filter_cells: float | None = None,
    n_test_points: int = 200,
    chunk_elements: int = 1 << 25,
    show_progress_bar: bool = True,
) -> dict[str | None, LineageTrends]:
    r"""Fit ``model`` to every gene along every lineage, CellRank's ``gene_trends`` numbers.

    With a :class:`~cellfate_gpu.models.GAM` (the default in CellRank) each lineage is one batched
    fit over all genes (blocks of about ``chunk_elements`` cell×gene values at a time); any other
    model (or a ``{gene: {lineage: model}}`` mapping, or ``filter_cells``, which makes the cells
    differ per gene) is copied, prepared and fitted per gene, as CellRank does.

    Parameters
    ----------
    time_range
        One range for all lineages, or a list with one per lineage (see :func:`lineage_design`).
    conf_int
        Compute the confidence interval (a float in (0, 1) sets its width).

    Returns
    -------
    dict
        Lineage → :class:`LineageTrends`.
    """
    genes = list(dict.fromkeys(genes))
    lineages = list(dict.fromkeys(lineages))
    ranges = time_range if isinstance(time_range, list) else [time_range] * len(lineages)
    if len(ranges) != len(lineages):
        raise ValueError(f"Expected {len(lineages)} time ranges (one per lineage), got {len(ranges)}.")
    width = float(conf_int) if isinstance(conf_int, float) and 0 < conf_int < 1 else 0.95
    batched = isinstance(model, GAM) and filter_cells is None
    out: dict[str | None, LineageTrends] = {}
    M = expression(adata, genes, data_key=data_key, use_raw=use_raw) if batched else None
    if M is not None and sp.issparse(M):
        M = sp.csr_matrix(M)
    for lin, trange in zip(lineages, ranges, strict=True):
        if not batched:
            out[lin] = _per_gene(
                adata,
                model,
                genes,
                lin,
                time_key,
                backward=backward,
                data_key=data_key,
                time_range=trange,
                conf_int=conf_int,
                width=width,
                use_raw=use_raw,
                threshold=threshold,
                weight_threshold=weight_threshold,
                filter_cells=filter_cells,
                n_test_points=n_test_points,
            )
            continue
        design = lineage_design(
            adata,
            lin,
            time_key,
            backward=backward,
            time_range=trange,
            threshold=threshold,
            weight_threshold=weight_threshold,
            n_test_points=n_test_points,
        )
        sub = M[design.cells]
        mean = np.empty((design.x_test.size, len(genes)))
        ci = np.empty((design.x_test.size, len(genes), 2)) if conf_int else None
        conv = np.empty(len(genes), dtype=bool)
        blocks = _chunks(design.cells.size, len(genes), chunk_elements)
        it = progress(blocks, desc=f"trends {lin}", unit="block") if show_progress_bar and len(blocks) > 1 else blocks
        with timed("Fitting %d gene trends along lineage %r on %d cells", len(genes), lin, design.cells.size):
            for blk in it:
                Yb = sub[:, blk]
                Yb = sp.csc_matrix(Yb) if sp.issparse(Yb) else np.asarray(Yb, dtype=np.float64)
                fit = model.fit_many(design.x, Yb, design.w)
                mean[:, blk] = fit.predict(design.x_test)
                if ci is not None:
                    ci[:, blk] = fit.confidence_intervals(design.x_test, width=width)
                conv[blk] = fit.converged
        out[lin] = LineageTrends(lin, design.x_test, pd.DataFrame(mean, columns=genes), ci, conv)
    return out


def _per_gene(adata, model, genes, lin, time_key, *, conf_int, width, **prepare) -> LineageTrends:
    models: dict[str, BaseModel] = {}
    cols, cis, conv, x_test = [], [], [], None
    for gene in genes:
        base = model[gene][lin] if isinstance(model, Mapping) else model
        m = base.copy()
        m.prepare(gene, lin, time_key, **prepare)
        if x_test is None:
            x_test = m.x_test.ravel()
        m.fit()
        cols.append(m.predict(x_test))
        if conf_int:
            kw = {"width": width} if isinstance(m, GAM) else {}
            cis.append(m.confidence_interval(x_test, **kw))
        conv.append(getattr(m, "converged", True))
        models[gene] = m
    mean = pd.DataFrame(np.column_stack(cols), columns=genes)
    ci = np.stack(cis, axis=1) if conf_int else None
    return LineageTrends(lin, x_test, mean, ci, np.asarray(conv, dtype=bool), models)
