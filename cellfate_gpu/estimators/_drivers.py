r"""Lineage drivers: genes whose expression correlates with fate probabilities.

For gene :math:`g` and lineage :math:`l`, Pearson's

.. math::

    r_{gl} = \frac{\sum_i (x_{ig} - \bar x_g)(p_{il} - \bar p_l)}
                  {\sqrt{\sum_i (x_{ig} - \bar x_g)^2}\,\sqrt{\sum_i (p_{il} - \bar p_l)^2}}

for all genes and lineages from one sparse product :math:`X^\top P` plus column sums (the
expression matrix is never densified or centred whole). As in CellRank 2.3.3 the plain sample
correlation is used (no :math:`n/(n-1)` factor). ``fisher``: :math:`z = \operatorname{atanh} r`,
standard error :math:`1/\sqrt{n - 3}`, two-sided normal p-values and confidence interval
:math:`\tanh(z \pm z_{1-\alpha/2}/\sqrt{n-3})`; ``perm_test``: p-values from permuting the
fate probabilities. q-values by Benjamini-Hochberg per lineage.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
import scipy.stats as st

__all__ = ["lineage_drivers", "correlations", "benjamini_hochberg"]


def benjamini_hochberg(p: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg q-values (NaN p-values stay NaN)."""
    p = np.asarray(p, dtype=np.float64)
    q = np.full_like(p, np.nan)
    ok = np.isfinite(p)
    m = int(ok.sum())
    if m == 0:
        return q
    order = np.argsort(p[ok])
    ranked = p[ok][order] * m / np.arange(1, m + 1)
    ranked = np.minimum.accumulate(ranked[::-1])[::-1]
    out = np.empty(m)
    out[order] = np.minimum(ranked, 1.0)
    q[ok] = out
    return q


def correlations(X: Any, P: np.ndarray) -> np.ndarray:
    """Pearson correlations ``genes x lineages`` of ``X`` (cells x genes, sparse or dense) with ``P``."""
    n = X.shape[0]
    P = np.asarray(P, dtype=np.float64)
    Pc = P - P.mean(axis=0)
    if sp.issparse(X):
        X = sp.csr_matrix(X)
        cross = np.asarray(X.T @ Pc)  # sum_i x_ig (p_il - mean_l) = centred cross product
        s1 = np.asarray(X.sum(axis=0)).ravel()
        s2 = np.asarray(X.multiply(X).sum(axis=0)).ravel()
    else:
        X = np.asarray(X, dtype=np.float64)
        cross = X.T @ Pc
        s1, s2 = X.sum(axis=0), (X * X).sum(axis=0)
    var_x = np.maximum(s2 - s1 * s1 / n, 0.0)
    norm_p = np.sqrt((Pc * Pc).sum(axis=0))
    with np.errstate(divide="ignore", invalid="ignore"):
        r = cross / (np.sqrt(var_x)[:, None] * norm_p[None, :])
    r[~np.isfinite(r)] = np.nan
    return np.clip(r, -1.0, 1.0)


def lineage_drivers(
    X: Any,
    probs: np.ndarray,
    gene_names: list[str],
    lineage_names: list[str],
    *,
    method: str = "fisher",
    confidence_level: float = 0.95,
    n_perms: int = 1000,
    seed: int | None = None,
) -> pd.DataFrame:
    """Correlation of every gene with every lineage, with p-values, q-values and confidence intervals.

    Returns
    -------
    pandas.DataFrame
        Indexed by gene; ``{lin}_corr``, ``{lin}_pval``, ``{lin}_qval``, ``{lin}_ci_low``,
        ``{lin}_ci_high`` per lineage; sorted by the first lineage's correlation, descending.
    """
    if method not in ("fisher", "perm_test"):
        raise ValueError(f"method must be 'fisher' or 'perm_test', got {method!r}.")
    if not 0 < confidence_level < 1:
        raise ValueError(f"confidence_level must be in (0, 1), got {confidence_level!r}.")
    n = X.shape[0]
    if n < 4:
        raise ValueError(f"Need at least 4 cells for correlation tests, got {n}.")
    probs = np.asarray(probs, dtype=np.float64)
    r = correlations(X, probs)
    z = np.arctanh(np.clip(r, -1 + 1e-15, 1 - 1e-15))
    se = 1.0 / np.sqrt(n - 3)
    zcrit = st.norm.ppf(1 - (1 - confidence_level) / 2)
    ci_low, ci_high = np.tanh(z - zcrit * se), np.tanh(z + zcrit * se)
    if method == "fisher":
        pval = 2 * st.norm.sf(np.abs(z) / se)
    else:
        rng = np.random.default_rng(seed)
        exceed = np.zeros_like(r)
        for _ in range(n_perms):
            rp = correlations(X, probs[rng.permutation(n)])
            exceed += np.abs(rp) >= np.abs(r)
        pval = (exceed + 1) / (n_perms + 1)
    pval[np.isnan(r)] = np.nan
    columns = {}
    for j, lin in enumerate(lineage_names):
        columns[f"{lin}_corr"] = r[:, j]
        columns[f"{lin}_pval"] = pval[:, j]
        columns[f"{lin}_qval"] = benjamini_hochberg(pval[:, j])
        columns[f"{lin}_ci_low"] = ci_low[:, j]
        columns[f"{lin}_ci_high"] = ci_high[:, j]
    df = pd.DataFrame(columns, index=pd.Index(list(gene_names), name="gene"))
    return df.sort_values(f"{lineage_names[0]}_corr", ascending=False)
