r"""Lineage drivers: genes whose expression correlates with fate probabilities.

For gene :math:`g` and lineage :math:`l`, Pearson's correlation over the :math:`n` cells

.. math::

    r_{gl} = \frac{\sum_i x_{ig} (p_{il} - \bar p_l)}
                  {\sqrt{\sum_i x_{ig}^2 - n \bar x_g^2}\;\sqrt{\sum_i (p_{il} - \bar p_l)^2}}

for all genes and lineages from **one** product :math:`X^\top P_c` on the backend (:math:`P_c` the
column-centred fate probabilities; centring :math:`P` alone suffices because
:math:`\sum_i \bar x_g (p_{il} - \bar p_l) = 0`), plus the per-gene sums :math:`\sum_i x_{ig}` and
:math:`\sum_i x_{ig}^2` taken in :math:`O(\mathrm{nnz})` on the host. The expression matrix is never
densified or centred.

Tests (as in CellRank 2.3.3):

* ``"fisher"``: :math:`z = \operatorname{atanh} r`, standard error :math:`1/\sqrt{n-3}`, two-sided
  p-value :math:`2\,\Phi(-|z|\sqrt{n-3})`, confidence interval
  :math:`\tanh(z \pm \Phi^{-1}(q_h)/\sqrt{n-3})` with :math:`q_h = c + (1 - c)/2`.
* ``"perm_test"``: p-value from ``n_perms`` permutations of the cells' fate probabilities,
  confidence interval from the :math:`(q_l, q_h)` quantiles of ``n_perms`` bootstrap
  correlations. All permutations and bootstraps of a batch are one block product.

q-values: Benjamini-Hochberg per lineage over the genes with a defined p-value.

Differences from CellRank, on purpose: CellRank divides :math:`\sum_i (x - \bar x)(p - \bar p)` by
:math:`(n-1)\,\sigma_x \sigma_p` with population standard deviations, which inflates :math:`r` by
:math:`n/(n-1)`; here :math:`r` is exactly :func:`scipy.stats.pearsonr`. CellRank's permutation
p-value is :math:`k / N` (0 when no permutation is as extreme); here it is :math:`(k + 1)/(N + 1)`,
which is never 0 and is a valid p-value (Phipson & Smyth 2010).
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
import scipy.stats as st

from cellfate_gpu._logging import progress
from cellfate_gpu.backends import Backend, get_backend

__all__ = ["lineage_drivers", "correlations", "benjamini_hochberg"]

#: Largest dense block (bytes) moved to the backend at once.
_BLOCK_BYTES = 1 << 28


def benjamini_hochberg(p: np.ndarray) -> np.ndarray:
    r"""Benjamini-Hochberg q-values :math:`q_{(k)} = \min_{j \ge k} \min(1, m\,p_{(j)}/j)`; NaN stays NaN."""
    p = np.asarray(p, dtype=np.float64)
    q = np.full_like(p, np.nan)
    ok = np.isfinite(p)
    m = int(ok.sum())
    if m == 0:
        return q
    order = np.argsort(p[ok], kind="stable")
    ranked = p[ok][order] * m / np.arange(1, m + 1)
    ranked = np.minimum.accumulate(ranked[::-1])[::-1]
    out = np.empty(m)
    out[order] = np.minimum(ranked, 1.0)
    q[ok] = out
    return q


class _Expression:
    """The expression matrix on the backend, ready for ``X^T W`` and ``(X∘X)^T W`` products.

    Sparse input: ``X^T`` (genes x cells) is built on the host in O(nnz) and moved once as a native
    CSR matrix. Dense input: moved in gene blocks of at most ``_BLOCK_BYTES``.
    """

    def __init__(self, be: Backend, X: Any):
        self.be = be
        self.n, self.g = X.shape
        if sp.issparse(X):
            Xt = sp.csr_matrix(sp.csr_matrix(X, dtype=np.float64).T)
            Xt.sum_duplicates()
            self.s1 = np.asarray(Xt.sum(axis=1)).ravel()
            self.s2 = np.bincount(
                np.repeat(np.arange(self.g), np.diff(Xt.indptr)), weights=Xt.data * Xt.data, minlength=self.g
            )
            self.sparse = True
            self.Xt = be.from_scipy_csr(Xt)
            self._Xt2 = None
            self._host_sq = Xt
        else:
            X = np.asarray(X, dtype=np.float64)
            if X.ndim != 2:
                raise ValueError(f"X must be 2-D (cells x genes), got shape {X.shape}.")
            self.s1 = X.sum(axis=0)
            self.s2 = np.einsum("ij,ij->j", X, X)
            self.sparse = False
            self.X = X
            step = max(1, _BLOCK_BYTES // max(1, 8 * self.n))
            self.blocks = [slice(a, min(a + step, self.g)) for a in range(0, self.g, step)]

    def products(self, W: np.ndarray, W2: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        """``X^T W`` and (if ``W2``) ``(X∘X)^T W2`` on the backend, returned on the host."""
        be, xp = self.be, self.be.xp
        Wb = be.asarray(np.ascontiguousarray(W, dtype=np.float64))
        W2b = None if W2 is None else be.asarray(np.ascontiguousarray(W2, dtype=np.float64))
        if self.sparse:
            out = be.to_host(be.spmm(self.Xt, Wb))
            out2 = None
            if W2b is not None:
                if self._Xt2 is None:
                    sq = self._host_sq.copy()
                    sq.data = sq.data * sq.data
                    self._Xt2 = be.from_scipy_csr(sq)
                out2 = be.to_host(be.spmm(self._Xt2, W2b))
            return out, out2
        parts, parts2 = [], []
        for blk in self.blocks:
            Xb = be.asarray(self.X[:, blk])
            parts.append(xp.matmul(xp.permute_dims(Xb, (1, 0)), Wb))
            if W2b is not None:
                parts2.append(xp.matmul(xp.permute_dims(Xb * Xb, (1, 0)), W2b))
        out = be.to_host(xp.concat(parts, axis=0))
        out2 = None if W2b is None else be.to_host(xp.concat(parts2, axis=0))
        return out, out2


def _corr_from_sums(cross, sx, sxx, sp_, spp, w):
    """Weighted Pearson correlation from sums (weights ``w`` sum to the number of draws)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        cov = cross - np.outer(sx, sp_) / w
        vx = np.maximum(sxx - sx * sx / w, 0.0)
        vp = np.maximum(spp - sp_ * sp_ / w, 0.0)
        r = cov / np.sqrt(np.outer(vx, vp))
    r[~np.isfinite(r)] = np.nan
    return np.clip(r, -1.0, 1.0)


def _pearson(expr: _Expression, P: np.ndarray) -> np.ndarray:
    n = expr.n
    Pc = P - P.mean(axis=0)
    cross, _ = expr.products(Pc)
    var_x = np.maximum(expr.s2 - expr.s1 * expr.s1 / n, 0.0)
    # Relative cancellation guard: a gene whose variance is at round-off level of its mean is constant.
    const = var_x <= 1e-12 * np.maximum(expr.s2, np.finfo(float).tiny)
    norm_p = np.sqrt((Pc * Pc).sum(axis=0))
    with np.errstate(divide="ignore", invalid="ignore"):
        r = cross / (np.sqrt(var_x)[:, None] * norm_p[None, :])
    r[const] = np.nan
    r[~np.isfinite(r)] = np.nan
    return np.clip(r, -1.0, 1.0)


def correlations(X: Any, P: np.ndarray, *, backend: Any = None) -> np.ndarray:
    """Pearson correlations ``(genes, lineages)`` of ``X`` (cells x genes, sparse or dense) with ``P``.

    NaN for genes (or lineages) that are constant over the cells.
    """
    P = np.asarray(P, dtype=np.float64)
    return _pearson(_Expression(get_backend(backend), X), P.reshape(P.shape[0], -1))


def _perm_test(expr: _Expression, P: np.ndarray, r: np.ndarray, n_perms: int, seed, ql: float, qh: float):
    """Permutation p-values and bootstrap confidence intervals, batched into block products."""
    n, L = P.shape
    rng = np.random.default_rng(seed)
    Pc = P - P.mean(axis=0)
    batch = int(max(1, min(n_perms, _BLOCK_BYTES // (8 * n * (2 * L + 2)))))
    exceed = np.zeros_like(r)
    boot = np.empty((n_perms, *r.shape))
    abs_r = np.abs(r)
    done = 0
    starts = range(0, n_perms, batch)
    for start in progress(starts, total=len(starts), desc="permutation batches", unit="batch"):
        B = min(batch, n_perms - start)
        perms = [rng.permutation(n) for _ in range(B)]
        weights = [np.bincount(rng.integers(0, n, n), minlength=n).astype(np.float64) for _ in range(B)]
        C = np.stack(weights, axis=1)  # n x B bootstrap counts
        W = np.concatenate([Pc[p] for p in perms] + [C[:, [b]] * P for b in range(B)] + [C], axis=1)
        out, out2 = expr.products(W, C)
        for b in range(B):
            # permutation: the centring of P is permutation-invariant, the gene sums unchanged
            rp = _pearson_from_cross(out[:, b * L : (b + 1) * L], expr, Pc)
            exceed += np.abs(rp) >= abs_r
            off = B * L + b * L
            c = C[:, b]
            boot[done + b] = _corr_from_sums(
                out[:, off : off + L], out[:, 2 * B * L + b], out2[:, b], c @ P, c @ (P * P), float(n)
            )
        done += B
    pval = (exceed + 1.0) / (n_perms + 1.0)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices of constant genes
        ci_low = np.nanquantile(boot, ql, axis=0) if n_perms else np.full_like(r, np.nan)
        ci_high = np.nanquantile(boot, qh, axis=0) if n_perms else np.full_like(r, np.nan)
    return pval, ci_low, ci_high


def _pearson_from_cross(cross: np.ndarray, expr: _Expression, Pc: np.ndarray) -> np.ndarray:
    var_x = np.maximum(expr.s2 - expr.s1 * expr.s1 / expr.n, 0.0)
    norm_p = np.sqrt((Pc * Pc).sum(axis=0))
    with np.errstate(divide="ignore", invalid="ignore"):
        r = cross / (np.sqrt(var_x)[:, None] * norm_p[None, :])
    return np.clip(np.where(np.isfinite(r), r, 0.0), -1.0, 1.0)


def lineage_drivers(
    backend: Any,
    X: Any,
    probs: Any,
    gene_names: Any = None,
    lineage_names: list[str] | None = None,
    *,
    method: str = "fisher",
    confidence_level: float = 0.95,
    n_perms: int = 1000,
    seed: int | None = None,
) -> pd.DataFrame:
    r"""Correlate every gene with every lineage's fate probabilities (CellRank's lineage drivers).

    Parameters
    ----------
    backend
        Backend (name, instance or ``None`` for ``settings.backend``) that runs the products.
    X
        ``(n_cells, n_genes)`` expression, NumPy array or SciPy sparse (never densified).
    probs
        ``(n_cells, n_lineages)`` fate probabilities (array or :class:`~cellfate_gpu.lineage.Lineage`).
    gene_names
        ``n_genes`` names (the index of the result).
    lineage_names
        ``n_lineages`` names (default: ``probs.names`` for a Lineage).
    method
        ``"fisher"`` (Fisher z-transform) or ``"perm_test"`` (permutations + bootstrap).
    confidence_level
        Level :math:`c \in (0, 1)` of the confidence interval.
    n_perms
        Number of permutations (and bootstrap samples) for ``"perm_test"``.
    seed
        Seed of ``"perm_test"`` (same seed, same result).

    Returns
    -------
    pandas.DataFrame
        Indexed by gene; per lineage ``{lin}_corr``, ``{lin}_pval``, ``{lin}_qval``,
        ``{lin}_ci_low``, ``{lin}_ci_high``; sorted by the lineages' correlations (first lineage
        first), descending. Constant genes get NaN everywhere and are left out of the BH correction.
    """
    if backend is not None and not isinstance(backend, str | Backend):
        # Called without a backend: lineage_drivers(X, probs, gene_names, lineage_names, ...).
        backend, X, probs, gene_names, lineage_names = None, backend, X, probs, gene_names
    if lineage_names is None:
        if not hasattr(probs, "names"):
            raise ValueError("lineage_names is required when probs is not a Lineage.")
        lineage_names = list(probs.names)
    be = get_backend(backend)
    if method not in ("fisher", "perm_test"):
        raise ValueError(f"method must be 'fisher' or 'perm_test', got {method!r}.")
    if not 0 < confidence_level < 1:
        raise ValueError(f"confidence_level must be in (0, 1), got {confidence_level!r}.")
    if method == "perm_test" and (not isinstance(n_perms, int | np.integer) or n_perms < 1):
        raise ValueError(f"n_perms must be a positive integer, got {n_perms!r}.")
    shape = tuple(getattr(X, "shape", ()))
    if len(shape) != 2:
        raise ValueError(f"X must be 2-D (cells x genes), got shape {shape}.")
    n, g = shape
    P = np.asarray(getattr(probs, "X", probs), dtype=np.float64)
    P = P.reshape(P.shape[0], -1)
    if P.shape[0] != n:
        raise ValueError(f"probs has {P.shape[0]} rows but X has {n} cells.")
    if len(lineage_names) != P.shape[1]:
        raise ValueError(f"Got {len(lineage_names)} lineage names for {P.shape[1]} probability columns.")
    gene_names = [f"gene_{i}" for i in range(g)] if gene_names is None else list(gene_names)
    if len(gene_names) != g:
        raise ValueError(f"Got {len(gene_names)} gene names for {g} genes.")
    if n < 4:
        raise ValueError(f"Need at least 4 cells for the correlation tests, got {n}.")

    expr = _Expression(be, X)
    r = _pearson(expr, P)
    qh = confidence_level + (1.0 - confidence_level) / 2.0
    ql = 1.0 - qh
    if method == "fisher":
        se = 1.0 / np.sqrt(n - 3)
        with np.errstate(divide="ignore"):
            z = np.arctanh(r)
        zcrit = st.norm.ppf(qh)
        ci_low, ci_high = np.tanh(z - zcrit * se), np.tanh(z + zcrit * se)
        pval = 2.0 * st.norm.cdf(-np.abs(z) / se)
    else:
        pval, ci_low, ci_high = _perm_test(expr, P, r, int(n_perms), seed, ql, qh)
    bad = np.isnan(r)
    for a in (pval, ci_low, ci_high):
        a[bad] = np.nan

    columns = {}
    for j, lin in enumerate(lineage_names):
        columns[f"{lin}_corr"] = r[:, j]
        columns[f"{lin}_pval"] = pval[:, j]
        columns[f"{lin}_qval"] = benjamini_hochberg(pval[:, j])
        columns[f"{lin}_ci_low"] = ci_low[:, j]
        columns[f"{lin}_ci_high"] = ci_high[:, j]
    df = pd.DataFrame(columns, index=pd.Index(gene_names, name="gene"))
    return df.sort_values([f"{lin}_corr" for lin in lineage_names], ascending=False, kind="stable")
