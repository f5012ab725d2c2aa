r"""CytoTRACEKernel: a pseudotime from gene counts (CytoTRACE, Gulati et al. 2020) directing the kNN graph.

CellRank 2.3.3's re-implementation, computed without densifying the expression matrix:

1. :math:`c_i = \#\{g : X_{ig} > 0\}`, the number of genes expressed by cell :math:`i`
   (``adata.X`` or ``adata.raw.X``);
2. Pearson correlation :math:`r_g = \operatorname{corr}_i(X_{ig}, c_i)` of every gene with it, from
   one sparse product :math:`X^\top c` and column moments;
3. the ``n_genes`` genes with the largest :math:`r_g` (NaN — constant genes — last);
4. the score :math:`s_i = \operatorname{agg}_{g \in \text{top}} E_{ig}` of their expression
   :math:`E` in ``layer`` (mean, median, geometric or harmonic mean), rescaled to :math:`[0, 1]`;
5. pseudotime :math:`1 - s` (plastic, naive cells first), then the
   :class:`~cellfate_gpu.kernels.PseudotimeKernel` on it.
"""

from __future__ import annotations

from typing import Any, final

import numpy as np
import pandas as pd
import scipy.sparse as sp
import scipy.stats as st

from cellfate_gpu._logging import info, timed, warning
from cellfate_gpu.kernels._base import BidirectionalKernel, _format_value
from cellfate_gpu.kernels._graph import read_connectivities, read_obs_vector
from cellfate_gpu.kernels._pseudotime import PseudotimeKernel

__all__ = ["CytoTRACEKernel", "num_expressed_genes", "gene_count_correlation", "aggregate_rows"]

AGGREGATIONS = ("mean", "median", "gmean", "hmean")
_ROW_CHUNK_BYTES = 32 * 2**20


def num_expressed_genes(X: Any) -> np.ndarray:
    """Number of genes with a positive value in every row of ``X`` (sparse stays sparse)."""
    if sp.issparse(X):
        X = sp.csr_matrix(X)
        rows = np.repeat(np.arange(X.shape[0]), np.diff(X.indptr))
        return np.bincount(rows, weights=X.data > 0, minlength=X.shape[0]).astype(np.int64)
    return np.asarray((np.asarray(X) > 0).sum(axis=1), dtype=np.int64).ravel()


def gene_count_correlation(X: Any, y: np.ndarray) -> np.ndarray:
    r"""Pearson correlation of every column of ``X`` with ``y`` (NaN for constant columns).

    :math:`r_g = \sum_i x_{ig} (y_i - \bar y) / (\sqrt{\sum_i x_{ig}^2 - n \bar x_g^2}\,\lVert y - \bar y\rVert)`,
    from :math:`X^\top (y - \bar y)` and the column sums of :math:`X` and :math:`X \circ X`, so a sparse
    ``X`` is never densified. CellRank's ``_mat_mat_corr_*`` divide the product of population
    standard deviations by :math:`n - 1` (a factor :math:`n/(n-1)` too large); that changes neither
    the ranking nor the score, and we store the plain correlation in ``var['ct_gene_corr']``.
    """
    n = X.shape[0]
    y = np.asarray(y, dtype=np.float64).ravel()
    yc = y - y.mean()
    if sp.issparse(X):
        X = sp.csr_matrix(X)
        cross = np.asarray(X.T @ yc, dtype=np.float64).ravel()
        s1 = np.asarray(X.sum(axis=0), dtype=np.float64).ravel()
        s2 = np.asarray(X.multiply(X).sum(axis=0), dtype=np.float64).ravel()
        var_x = np.maximum(s2 - s1 * s1 / n, 0.0)
    else:
        X = np.asarray(X, dtype=np.float64)
        Xc = X - X.mean(axis=0)
        cross = Xc.T @ yc
        var_x = (Xc * Xc).sum(axis=0)
    denom = np.sqrt(var_x) * np.sqrt(yc @ yc)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.where(denom > 0, cross / np.where(denom > 0, denom, 1.0), np.nan)
    return np.clip(r, -1.0, 1.0)


def aggregate_rows(E: Any, aggregation: str) -> np.ndarray:
    """Row-wise mean / median / geometric / harmonic mean of ``E`` (cells x selected genes).

    Sparse input is densified in row chunks of at most 32 MiB (only for median and the means that
    need every entry); the mean of a sparse matrix never is.
    """
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {aggregation!r}.")
    if aggregation == "mean":  # accumulate in float64 (layers are often float32)
        E = sp.csr_matrix(E, dtype=np.float64) if sp.issparse(E) else np.asarray(E, dtype=np.float64)
        return np.asarray(E.mean(axis=1)).ravel()
    fn = {"median": lambda a: np.median(a, axis=1), "gmean": lambda a: st.gmean(a, axis=1),
          "hmean": lambda a: st.hmean(a, axis=1)}[aggregation]  # fmt: skip
    if not sp.issparse(E):
        with np.errstate(divide="ignore"):
            return np.asarray(fn(np.asarray(E, dtype=np.float64)), dtype=np.float64)
    E = sp.csr_matrix(E)
    step = max(1, _ROW_CHUNK_BYTES // (8 * max(E.shape[1], 1)))
    out = np.empty(E.shape[0], dtype=np.float64)
    with np.errstate(divide="ignore"):
        for start in range(0, E.shape[0], step):
            stop = min(start + step, E.shape[0])
            out[start:stop] = fn(E[start:stop].toarray().astype(np.float64))
    return out


@final
class CytoTRACEKernel(BidirectionalKernel):
    r"""Pseudotime kernel on the CytoTRACE pseudotime (CellRank 2.3.3).

    Call :meth:`compute_cytotrace` first (it writes ``obs['ct_pseudotime']``), then
    :meth:`compute_transition_matrix`, which is the :class:`~cellfate_gpu.kernels.PseudotimeKernel`'s
    on that pseudotime (composed, not inherited).

    Parameters
    ----------
    adata
        Annotated data with expression and ``obsp[conn_key]``.
    backward
        Direction of the process.
    time_key
        ``adata.obs`` key of the CytoTRACE pseudotime; read at construction if present (e.g. from an
        earlier run), written by :meth:`compute_cytotrace`.
    conn_key
        Key of the kNN connectivities in ``adata.obsp``.
    """

    def __init__(
        self, adata, backward: bool = False, time_key: str = "ct_pseudotime", conn_key: str = "connectivities"
    ):
        if not isinstance(backward, bool | np.bool_):
            raise TypeError(f"backward must be a bool, got {type(backward).__name__}.")
        super().__init__(adata, backward=bool(backward))
        self._time_key, self._conn_key = time_key, conn_key
        read_connectivities(adata, conn_key)  # fail early, naming the key
        self._pseudotime: np.ndarray | None = None
        if time_key in adata.obs:
            self._pseudotime = read_obs_vector(adata, time_key, what="CytoTRACE pseudotime")

    @property
    def pseudotime(self) -> np.ndarray | None:
        """The CytoTRACE pseudotime (``None`` before :meth:`compute_cytotrace`)."""
        return self._pseudotime

    def compute_cytotrace(
        self,
        layer: str | None = "Ms",
        aggregation: str = "mean",
        use_raw: bool = False,
        n_genes: int = 200,
    ) -> CytoTRACEKernel:
        """Compute the CytoTRACE score and pseudotime (see the module docstring).

        Parameters
        ----------
        layer
            ``adata.layers`` key (or ``"X"``/``None`` for ``adata.X``) of the expression that is aggregated.
        aggregation
            ``"mean"``, ``"median"``, ``"gmean"`` or ``"hmean"`` over the top genes.
        use_raw
            Count expressed genes and correlate on ``adata.raw`` (falls back to ``adata`` with a
            warning if there is none).
        n_genes
            Number of top positively correlated genes.

        Returns
        -------
        ``self``; writes ``obs['ct_score']``, ``obs['ct_pseudotime']``, ``obs['ct_num_exp_genes']``,
        ``var['ct_gene_corr']``, ``var['ct_correlates']`` and ``uns['ct_params']``.
        """
        adata = self.adata
        if aggregation not in AGGREGATIONS:
            raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {aggregation!r}.")
        if not isinstance(n_genes, int | np.integer) or n_genes <= 0:
            raise ValueError(f"n_genes must be a positive integer, got {n_genes!r}.")
        if use_raw and adata.raw is None:
            warning("adata.raw is None; using use_raw=False.")
            use_raw = False
        if layer not in (None, "X") and layer not in adata.layers:
            raise KeyError(f"No expression in adata.layers[{layer!r}]; valid: {sorted({'X', *adata.layers.keys()})}.")
        source = adata.raw if use_raw else adata
        if source.X is None:
            raise ValueError(
                f"adata{'.raw' if use_raw else ''}.X is None; CytoTRACE counts the genes each cell expresses "
                "in X. Put the counts (or normalised expression) into X."
            )
        if layer not in (None, "X") and adata.layers[layer] is None:
            raise ValueError(f"adata.layers[{layer!r}] is None.")
        msg = "Computing CytoTRACE score with %d genes"
        if source.n_vars < 10_000:
            msg += ". Consider using more than 10000 genes"
        with timed(msg, source.n_vars):
            counts = num_expressed_genes(source.X)
            corr = pd.Series(gene_count_correlation(source.X, counts), index=np.asarray(source.var_names))
            ranked = corr.sort_values(ascending=False, kind="stable")  # NaN last
            in_adata = ranked.index.isin(adata.var_names)
            top = list(ranked.index[in_adata][:n_genes])
            if not top:
                raise ValueError("No genes have been selected for the CytoTRACE score.")
            n_nan = int(corr.loc[top].isna().sum())
            if n_nan:
                raise ValueError(
                    f"The top {len(top)} positively correlated genes contain {n_nan} with NaN correlation "
                    "(constant expression); lower n_genes or filter constant genes."
                )
            if len(top) != n_genes:
                warning("Only %d genes are available; using them instead of n_genes=%d.", len(top), n_genes)
            cols = adata.var_names.get_indexer(top)
            E = adata.X if layer in (None, "X") else adata.layers[layer]
            score = aggregate_rows(E[:, cols], aggregation)
            score = score - np.nanmin(score)
            top_score = np.nanmax(score)
            if not np.isfinite(top_score) or top_score <= 0:
                raise ValueError("The CytoTRACE score is constant across cells; it cannot order them.")
            score = score / top_score
            pseudotime = 1.0 - score

            adata.obs["ct_score"] = score
            adata.obs["ct_pseudotime"] = pseudotime
            if self._time_key != "ct_pseudotime":
                adata.obs[self._time_key] = pseudotime
            adata.obs["ct_num_exp_genes"] = counts
            adata.var["ct_gene_corr"] = corr.reindex(adata.var_names).to_numpy()
            adata.var["ct_correlates"] = np.isin(np.asarray(adata.var_names), top)
            adata.uns["ct_params"] = {
                "aggregation": aggregation,
                "layer": "X" if layer is None else layer,
                "use_raw": bool(use_raw),
                "n_genes": len(top),
            }
            self._pseudotime = pseudotime
        info(
            "Adding `adata.obs['ct_score']`, `adata.obs['ct_pseudotime']`, `adata.obs['ct_num_exp_genes']`, "
            "`adata.var['ct_gene_corr']`, `adata.var['ct_correlates']`, `adata.uns['ct_params']`"
        )
        return self

    def compute_transition_matrix(
        self,
        threshold_scheme: Any = "hard",
        frac_to_keep: float = 0.3,
        b: float = 10.0,
        nu: float = 0.5,
        check_irreducibility: bool = False,
        *,
        backend: Any = None,
    ) -> CytoTRACEKernel:
        """Bias the kNN graph by the CytoTRACE pseudotime (arguments as the PseudotimeKernel's)."""
        if self._pseudotime is None or self._time_key not in self.adata.obs:
            raise RuntimeError(
                f"No CytoTRACE pseudotime in adata.obs[{self._time_key!r}]; call compute_cytotrace() first."
            )
        pk = PseudotimeKernel(self.adata, time_key=self._time_key, backward=self.backward, conn_key=self._conn_key)
        pk.compute_transition_matrix(
            threshold_scheme,
            frac_to_keep=frac_to_keep,
            b=b,
            nu=nu,
            check_irreducibility=check_irreducibility,
            backend=backend,
        )
        recompute = {
            "threshold_scheme": threshold_scheme,
            "frac_to_keep": frac_to_keep,
            "b": b,
            "nu": nu,
            "check_irreducibility": check_irreducibility,
            "backend": backend,
        }
        self._set_native(pk.native_transition_matrix, pk.backend, pk.params, recompute=recompute)
        return self

    def _repr_params(self) -> str:
        p = self._params
        rest = ", ".join(f"{k}={_format_value(v)}" for k, v in p.items() if k != "dnorm")
        return f"dnorm={p.get('dnorm', False)}, {rest}" if rest else f"dnorm={p.get('dnorm', False)}"
