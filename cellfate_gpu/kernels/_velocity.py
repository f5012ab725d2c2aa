r"""VelocityKernel: direct the kNN graph with RNA velocity (CellRank 2.3.3's deterministic model).

For cell :math:`i` with kNN neighbours :math:`j \in N(i)` (the stored entries of row :math:`i` of
``obsp['connectivities']``, as they are, without adding self-loops), the displacement
:math:`\delta_{ij} = x_j - x_i` is compared with the velocity :math:`v_i`:

.. math::

    s_{ij} = \operatorname{sim}(v_i, \delta_{ij}), \qquad
    T_{ij} = \frac{e^{\lambda s_{ij}}}{\sum_{k \in N(i)} e^{\lambda s_{ik}}},

with :math:`\operatorname{sim}` one of

* ``"dot_product"``: :math:`v_i^\top \delta_{ij}`;
* ``"cosine"``: :math:`v_i^\top \delta_{ij} / (\lVert v_i\rVert \lVert \delta_{ij}\rVert)`;
* ``"correlation"``: Pearson correlation over genes, i.e. the cosine of the gene-centred vectors.

Vectorisation
-------------
CellRank loops over cells. Here every similarity is a row-wise dot product of gathered rows on the
kNN pattern (a sampled dense-dense product): for a chunk of edges :math:`(i, j)` we gather
:math:`x_j`, :math:`x_i` and :math:`v_i`, form :math:`\delta_{ij}` and reduce over genes. Two
choices keep it exact:

* Correlation uses per-cell centred data, :math:`\tilde x_i = x_i - \bar x_i` and
  :math:`\tilde v_i = v_i - \bar v_i`; because the mean over genes is linear,
  :math:`\tilde x_j - \tilde x_i = \delta_{ij} - \bar\delta_{ij}`, so the correlation is exactly the
  cosine of :math:`\tilde v_i` and :math:`\tilde x_j - \tilde x_i` (centring done once per cell, not
  per edge).
* :math:`\lVert \delta_{ij} \rVert^2` is reduced from the gathered difference, not expanded as
  :math:`\lVert x_j\rVert^2 + \lVert x_i\rVert^2 - 2 x_i^\top x_j` (which cancels catastrophically
  for close neighbours); the per-cell :math:`\lVert v_i\rVert` is computed once.

Edges are processed in chunks whose gathered blocks stay under ``max_chunk_bytes`` (64 MiB by
default), all in float64 through the backend's array namespace, so the same code runs on NumPy,
CuPy and JAX.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, final

import numpy as np
import scipy.sparse as sp

from cellfate_gpu._logging import debug, info, timed, warning
from cellfate_gpu.kernels._base import BidirectionalKernel, _format_value
from cellfate_gpu.kernels._graph import count_isolated, host_data, read_connectivities
from cellfate_gpu.kernels._validation import JOBLIB_BACKENDS

__all__ = [
    "VelocityKernel",
    "edge_similarities",
    "estimate_softmax_scale",
    "masked_row_softmax",
    "velocity_transition_data",
]

SIMILARITIES = ("correlation", "cosine", "dot_product")
BACKWARD_MODES = ("transpose", "negate")
MODELS = ("deterministic", "stochastic", "monte_carlo")
#: Default memory bound of the gathered blocks of one chunk of edges.
MAX_CHUNK_BYTES = 64 * 2**20


# --------------------------------------------------------------------------- numerical core
def _chunk_size(n_features: int, max_chunk_bytes: int) -> int:
    # Per edge of a chunk: gathered x_j, x_i, v and the difference, float64.
    per_edge = 4 * 8 * max(n_features, 1)
    return max(1, int(max_chunk_bytes) // per_edge)


def edge_similarities(
    backend,
    x: Any,
    v: Any,
    indices: Any,
    indptr: Any,
    *,
    similarity: str = "correlation",
    mode: str = "forward",
    max_chunk_bytes: int = MAX_CHUNK_BYTES,
) -> tuple[Any, Any]:
    r"""Similarity of velocity and displacement for every stored edge of a CSR pattern.

    Parameters
    ----------
    backend
        Backend whose :attr:`~cellfate_gpu.backends.Backend.xp` runs the computation.
    x, v
        Backend arrays ``(n_cells, n_features)``: expression and velocity.
    indices, indptr
        CSR pattern of the kNN graph (backend arrays).
    similarity
        ``"correlation"``, ``"cosine"`` or ``"dot_product"``.
    mode
        ``"forward"``: :math:`\operatorname{sim}(v_i, x_j - x_i)`;
        ``"negate"``: :math:`\operatorname{sim}(-v_i, x_j - x_i)`;
        ``"transpose"``: :math:`\operatorname{sim}(v_j, x_i - x_j)` (how much the neighbour's
        velocity points at :math:`i`; CellRank's default backward mode).
    max_chunk_bytes
        Memory bound of the gathered blocks of one chunk of edges.

    Returns
    -------
    sim, valid
        ``sim`` (float64, one per edge; 0 where undefined) and the boolean ``valid``, false where a
        norm in the denominator is zero (CellRank masks those edges to probability 0).
    """
    if similarity not in SIMILARITIES:
        raise ValueError(f"similarity must be one of {SIMILARITIES}, got {similarity!r}.")
    if mode not in ("forward", "negate", "transpose"):
        raise ValueError(f"mode must be 'forward', 'negate' or 'transpose', got {mode!r}.")
    xp = backend.xp
    center = similarity == "correlation"
    normalise = similarity != "dot_product"
    rows = backend.row_ids(indptr)
    nnz = int(indices.shape[0])
    step = _chunk_size(int(x.shape[1]), max_chunk_bytes)
    sims, valids = [], []
    # x and v stay in their storage dtype (float32 halves the footprint at a million cells); each
    # chunk of gathered rows is promoted to float64 and centred there, so no whole-matrix copy is made.
    for start in range(0, nnz, step):
        stop = min(start + step, nnz)
        r, c = rows[start:stop], indices[start:stop]
        src, dst = (c, r) if mode == "transpose" else (r, c)  # velocity of `src`, displacement src -> dst
        d = xp.astype(xp.take(x, dst, axis=0), xp.float64) - xp.astype(xp.take(x, src, axis=0), xp.float64)
        vs = xp.astype(xp.take(v, src, axis=0), xp.float64)
        if center:  # mean over genes of the displacement is mean(x_dst) - mean(x_src)
            d = d - xp.mean(d, axis=1, keepdims=True)
            vs = vs - xp.mean(vs, axis=1, keepdims=True)
        if mode == "negate":
            vs = -vs
        dot = xp.sum(vs * d, axis=1)  # not vecdot: CuPy 13/14 lacks it (a copy + batched GEMM via compat)
        if normalise:
            denom = xp.sqrt(xp.sum(vs * vs, axis=1)) * xp.sqrt(xp.sum(d * d, axis=1))
            ok = denom > 0
            sims.append(xp.where(ok, dot / xp.where(ok, denom, xp.ones_like(denom)), xp.zeros_like(dot)))
            valids.append(ok)
        else:
            sims.append(dot)
            valids.append(xp.ones(dot.shape, dtype=xp.bool))
        del d, vs
    if not sims:
        return xp.zeros((0,), dtype=xp.float64), xp.zeros((0,), dtype=xp.bool)
    if len(sims) == 1:
        return sims[0], valids[0]
    return xp.concat(sims), xp.concat(valids)


def estimate_softmax_scale(backend, sim: Any) -> float:
    r"""CellRank's estimate :math:`\lambda = 1 / \operatorname{median}\{|s_{ij}| : s_{ij} \ne 0\}`.

    CellRank runs the deterministic model with scale 1 and takes the median of the absolute
    logits of its CSR output after ``eliminate_zeros`` — so zero similarities (masked edges, rows of
    zero velocity) do not count. The median is found by one sort on the backend; only two numbers
    come back to the host.
    """
    xp = backend.xp
    a = xp.sort(xp.abs(sim))
    n_zero = int(backend.to_host(xp.sum(xp.astype(a == 0, xp.int64))))
    m = int(a.shape[0]) - n_zero
    if m == 0:
        raise ValueError(
            "Cannot estimate softmax_scale: every velocity-displacement similarity is zero "
            "(all velocities zero?); pass softmax_scale explicitly."
        )
    lo, hi = n_zero + (m - 1) // 2, n_zero + m // 2
    median = float(backend.to_host((a[lo] + a[hi]) / 2.0))
    return 1.0 / median


def masked_row_softmax(backend, logits: Any, valid: Any, indptr: Any) -> Any:
    r"""Row softmax over the valid entries; invalid entries get 0; rows with no valid entry are uniform.

    Stable: :math:`p_{ij} = e^{l_{ij} - m_i} / \sum_k e^{l_{ik} - m_i}` with :math:`m_i` the row
    maximum over valid entries. A row without any valid entry (zero velocity under cosine or
    correlation) becomes uniform over its neighbours, as CellRank does for zero velocity vectors
    (CellRank returns NaN for a constant non-zero velocity under correlation; we return uniform).
    """
    xp = backend.xp
    rows = backend.row_ids(indptr)
    neg_inf = xp.full(logits.shape, -xp.inf, dtype=logits.dtype)
    row_max = backend.segment_max(xp.where(valid, logits, neg_inf), indptr)
    row_max = xp.where(xp.isfinite(row_max), row_max, xp.zeros_like(row_max))
    shifted = xp.where(valid, logits - xp.take(row_max, rows), xp.zeros_like(logits))
    e = xp.where(valid, xp.exp(shifted), xp.zeros_like(logits))
    return normalise_rows_or_uniform(backend, e, indptr, rows)


def normalise_rows_or_uniform(backend, weights: Any, indptr: Any, rows: Any, uniform_rows: Any = None) -> Any:
    """Divide non-negative CSR ``weights`` by their row sums; rows summing to 0 become uniform.

    ``rows`` is ``backend.row_ids(indptr)`` (the callers already have it); ``uniform_rows``, a
    boolean per row, makes further rows uniform over their neighbours.
    """
    xp = backend.xp
    sums = backend.segment_sum(weights, indptr)
    counts = xp.astype(indptr[1:] - indptr[:-1], xp.float64)
    has = sums > 0
    if uniform_rows is not None:
        has = has & ~uniform_rows
    ones = xp.ones_like(sums)
    per_row = xp.take(xp.where(has, sums, ones), rows)
    uniform = xp.take(ones / xp.where(counts > 0, counts, ones), rows)
    return xp.where(xp.take(has, rows), weights / per_row, uniform)


def velocity_transition_data(
    backend,
    x: Any,
    v: Any,
    indices: Any,
    indptr: Any,
    *,
    similarity: str = "correlation",
    mode: str = "forward",
    softmax_scale: float | None = None,
    max_chunk_bytes: int = MAX_CHUNK_BYTES,
) -> tuple[Any, float]:
    """Transition probabilities on the CSR pattern and the softmax scale used (estimated if ``None``)."""
    sim, valid = edge_similarities(
        backend, x, v, indices, indptr, similarity=similarity, mode=mode, max_chunk_bytes=max_chunk_bytes
    )
    if softmax_scale is None:
        softmax_scale = estimate_softmax_scale(backend, sim)
        info("Using `softmax_scale=%.4f`", softmax_scale)
    probs = masked_row_softmax(backend, float(softmax_scale) * sim, valid, indptr)
    return probs, float(softmax_scale)


# --------------------------------------------------------------------------- reading AnnData
def _select_genes(adata, subset: Any, n_vars: int) -> np.ndarray:
    if isinstance(subset, str):
        if subset not in adata.var:
            raise KeyError(
                f"gene_subset={subset!r} is not a column of adata.var; available: {list(adata.var.columns)}."
            )
        subset = adata.var[subset]
    mask = np.asarray(subset)
    if mask.dtype == bool and mask.shape == (n_vars,):
        return mask
    mask = np.isin(np.asarray(adata.var_names), mask)
    if not mask.any():
        raise ValueError("None of the genes in gene_subset are in adata.var_names.")
    return mask


def _extract(adata, attr: str, key: str | None, mask: np.ndarray | None) -> np.ndarray:
    if key in (None, "X"):
        data, where = adata.X, "adata.X"
    elif attr == "layers":
        if key not in adata.layers:
            raise KeyError(f"No data in adata.layers[{key!r}]; available: {list(adata.layers.keys())}.")
        data, where = adata.layers[key], f"adata.layers[{key!r}]"
    elif attr == "obsm":
        if key not in adata.obsm:
            raise KeyError(f"No data in adata.obsm[{key!r}]; available: {list(adata.obsm.keys())}.")
        data, where = adata.obsm[key], f"adata.obsm[{key!r}]"
    else:
        raise ValueError(f"attr must be 'layers' or 'obsm', got {attr!r}.")
    data = host_data(data, where)  # a device layer comes through its backend's named transfer
    if mask is not None:
        data = data[:, mask]  # subset before densifying: only the used genes become dense
    data = data.toarray() if sp.issparse(data) else np.asarray(data)
    if data.ndim != 2 or data.shape[0] != adata.n_obs:
        raise ValueError(f"{where} has shape {data.shape}, expected ({adata.n_obs}, n_features).")
    # C order: the edge loop gathers whole rows; gathering rows of a column-major array (what a
    # boolean gene mask on a C-ordered layer gives) is ~50x slower at 2000 genes. float32 stays
    # float32 (promoted per chunk of edges), other dtypes become float64.
    dtype = data.dtype if data.dtype in (np.float32, np.float64) else np.float64
    return np.ascontiguousarray(data, dtype=dtype)


# --------------------------------------------------------------------------- the kernel
@final
class VelocityKernel(BidirectionalKernel):
    r"""Transition matrix from RNA velocity on the kNN graph (CellRank 2.3.3's deterministic model).

    See the module docstring for the model and its vectorised evaluation.

    Parameters
    ----------
    adata
        Annotated data with expression ``adata.{attr}[xkey]``, velocity ``adata.{attr}[vkey]`` and
        ``obsp[conn_key]``.
    backward
        Direction of the process; see :meth:`compute_transition_matrix` (``backward_mode``).
    attr
        ``"layers"`` or ``"obsm"``.
    xkey, vkey
        Keys of expression and velocity (``"X"`` or ``None`` for ``adata.X``).
    gene_subset
        Genes to use: a boolean mask, gene names or the name of a boolean ``adata.var`` column.
        Default: ``adata.var[f"{vkey}_genes"]`` when present (only for ``attr="layers"``).
    conn_key
        Key of the kNN connectivities in ``adata.obsp``; its stored entries are the neighbours.

    Notes
    -----
    Genes whose velocity is NaN in any cell are dropped (as CellRank does), with a warning naming
    how many. Non-finite expression values are an error.
    """

    def __init__(
        self,
        adata,
        backward: bool = False,
        attr: str | None = "layers",
        xkey: str | None = "Ms",
        vkey: str | None = "velocity",
        gene_subset: str | Sequence[str] | np.ndarray | None = None,
        conn_key: str = "connectivities",
    ):
        if not isinstance(backward, bool | np.bool_):
            raise TypeError(f"backward must be a bool, got {type(backward).__name__}.")
        super().__init__(adata, backward=bool(backward))
        attr = attr or "layers"
        if attr not in ("layers", "obsm"):
            raise ValueError(f"attr must be 'layers' or 'obsm', got {attr!r}.")
        if attr == "layers" and gene_subset is None and f"{vkey}_genes" in adata.var:
            gene_subset = adata.var[f"{vkey}_genes"]
        elif attr == "obsm" and gene_subset is not None:
            warning("gene_subset is ignored for attr='obsm'.")
            gene_subset = None
        mask = _select_genes(adata, gene_subset, adata.n_vars) if gene_subset is not None else None
        if mask is not None and not mask.any():
            raise ValueError(f"gene_subset selects no genes (adata.var[{f'{vkey}_genes'!r}] is all False?).")
        x = _extract(adata, attr, xkey, mask)
        v = _extract(adata, attr, vkey, mask)
        if x.shape != v.shape:
            raise ValueError(f"Shape mismatch: {attr}[{xkey!r}] has shape {x.shape}, {attr}[{vkey!r}] {v.shape}.")
        nan_genes = np.isnan(v).any(axis=0)
        if nan_genes.any():
            warning(
                "Dropping %d of %d genes whose velocity adata.%s[%r] contains NaN.",
                int(nan_genes.sum()),
                v.shape[1],
                attr,
                vkey,
            )
            x, v = x[:, ~nan_genes], v[:, ~nan_genes]
        if v.shape[1] == 0:
            raise ValueError(f"No genes left to compute velocity similarities from adata.{attr}[{vkey!r}].")
        bad_x = int(np.sum(~np.isfinite(x)))
        if bad_x:
            raise ValueError(f"adata.{attr}[{xkey!r}] has {bad_x} non-finite values in the used genes.")
        bad_v = int(np.sum(~np.isfinite(v)))
        if bad_v:
            raise ValueError(f"adata.{attr}[{vkey!r}] has {bad_v} infinite values in the used genes.")
        self._xdata, self._vdata = np.ascontiguousarray(x), np.ascontiguousarray(v)
        self._attr, self._xkey, self._vkey, self._conn_key = attr, xkey, vkey, conn_key
        self._conn = read_connectivities(adata, conn_key)

    @property
    def connectivities(self) -> sp.csr_matrix:
        """The kNN connectivities whose pattern defines the neighbours."""
        return self._conn

    @property
    def n_features(self) -> int:
        """Number of genes (or ``obsm`` columns) used."""
        return int(self._vdata.shape[1])

    def compute_transition_matrix(
        self,
        model: str = "deterministic",
        backward_mode: str = "transpose",
        similarity: str = "correlation",
        softmax_scale: float | None = None,
        *,
        backend: Any = None,
        max_chunk_bytes: int = MAX_CHUNK_BYTES,
        **kwargs: Any,
    ) -> VelocityKernel:
        r"""Compute :math:`T_{ij} = \operatorname{softmax}_j(\lambda\, s_{ij})` on ``backend``.

        Parameters
        ----------
        model
            ``"deterministic"``; ``"stochastic"`` (second-order expansion of :math:`T` in a random
            velocity with the kNN mean and variance of the velocities) or ``"monte_carlo"`` (the
            average over ``n_samples`` velocities drawn from that distribution, ``seed``); see
            :mod:`cellfate_gpu.kernels._velocity_models`. As in CellRank, a backward kernel uses
            ``"deterministic"`` (with a warning).
        backward_mode
            Used when ``backward=True`` (CellRank's two modes):

            - ``"transpose"`` (CellRank's default): :math:`s_{ij} = \operatorname{sim}(v_j, x_i - x_j)`,
              how strongly neighbour :math:`j`'s velocity points back at :math:`i`;
            - ``"negate"``: :math:`s_{ij} = \operatorname{sim}(-v_i, x_j - x_i)`.

            CellRank's ``"negate"`` negates ``v_i`` *in place* in its stored velocities
            (``_velocity_model.py``: ``v = self._v[ix]; v *= -1``); with ``softmax_scale=None`` the
            estimation pass and the main pass each negate once, so its final matrix is computed from
            :math:`+v` — a forward matrix labelled backward. We never modify the inputs.
        similarity
            ``"correlation"``, ``"cosine"`` or ``"dot_product"``.
        softmax_scale
            :math:`\lambda`; ``None`` estimates it as CellRank does (see
            :func:`estimate_softmax_scale`), using the same similarity and direction.
        backend
            Backend name or instance (default ``settings.backend``).
        max_chunk_bytes
            Memory bound of one chunk of gathered edges.
        kwargs
            ``n_samples`` (default 1000) and ``seed`` for ``model="monte_carlo"``; CellRank's
            parallelisation arguments (``n_jobs``, ``show_progress_bar``) are accepted and ignored:
            the computation is vectorised.
        """
        if model not in MODELS:
            raise ValueError(f"model must be one of {MODELS}, got {model!r}.")
        if model != "deterministic" and self.backward:  # as CellRank: no random-velocity backward models
            warning("model=%r is not supported for a backward process; using model='deterministic'.", model)
            model = "deterministic"
        if backward_mode not in BACKWARD_MODES:
            raise ValueError(f"backward_mode must be one of {BACKWARD_MODES}, got {backward_mode!r}.")
        if not isinstance(similarity, str) or similarity not in SIMILARITIES:
            raise ValueError(f"similarity must be one of {SIMILARITIES}, got {similarity!r}.")
        if softmax_scale is not None and not (np.isfinite(softmax_scale) and softmax_scale > 0):
            raise ValueError(f"softmax_scale must be a positive finite number or None, got {softmax_scale!r}.")
        if isinstance(backend, str) and backend in JOBLIB_BACKENDS:  # CellRank's joblib `backend=`
            debug("Ignoring joblib backend=%r: the computation is vectorised", backend)
            backend = None
        unknown = set(kwargs) - {"n_jobs", "show_progress_bar", "n_samples", "seed"}
        if unknown:
            raise TypeError(f"Unexpected keyword argument(s) {sorted(unknown)}.")

        isolated = count_isolated(self._conn)  # host or device graph
        if isolated:
            raise ValueError(
                f"{isolated} cell(s) have no neighbour in adata.obsp[{self._conn_key!r}]; "
                "their transition probabilities are undefined."
            )
        be = self._resolve_backend(backend)
        mode = backward_mode if self.backward else "forward"
        params: dict[str, Any] = {"model": model, "similarity": similarity, "softmax_scale": softmax_scale}
        if self.backward:
            params["bwd_mode"] = backward_mode
        with timed("Computing transition matrix using %r model (backend=%r)", model, be.name):
            C = be.from_scipy_csr(self._conn.copy())  # T must not share index arrays with the graph
            _, indices, indptr = be.csr_components(C)
            x = be.asarray(self._xdata)
            v = be.asarray(self._vdata)
            if model == "deterministic":
                probs, scale = velocity_transition_data(
                    be,
                    x,
                    v,
                    indices,
                    indptr,
                    similarity=similarity,
                    mode=mode,
                    softmax_scale=softmax_scale,
                    max_chunk_bytes=max_chunk_bytes,
                )
            else:  # kernels/_velocity_models.py: velocity ~ N(kNN mean, kNN variance)
                from cellfate_gpu.kernels._velocity_models import model_transition_data

                n_samples, seed = kwargs.get("n_samples", 1000), kwargs.get("seed")
                probs, scale = model_transition_data(
                    be, model, x, v, C, similarity=similarity,
                    softmax_scale=softmax_scale, n_samples=n_samples, seed=seed, max_chunk_bytes=max_chunk_bytes,
                )  # fmt: skip
                if model == "monte_carlo":
                    params["n_samples"], params["seed"] = n_samples, seed
            params["softmax_scale"] = scale
            T = be.csr_from_components(probs, indices, indptr, tuple(C.shape))
            recompute = {"model": model, "backward_mode": backward_mode, "similarity": similarity,
                         "softmax_scale": softmax_scale, "backend": backend, "max_chunk_bytes": max_chunk_bytes,
                         **kwargs}  # fmt: skip
            self._set_native(T, be, params, recompute=recompute)  # what ~self recomputes with
        return self

    def _repr_params(self) -> str:
        return ", ".join(f"{k}={_format_value(v)}" for k, v in self._params.items())
