r"""VelocityKernel's ``"stochastic"`` and ``"monte_carlo"`` models (CellRank 2.3.3's meaning).

Both treat the velocity of cell :math:`i` as random, with the kNN moments of the velocities as mean
and variance (CellRank's ``_knn_moments``):

.. math::

    W = \operatorname{rownorm}\bigl(\mathbb 1[C > 0] + I\bigr), \qquad
    \mu = W V, \qquad \sigma^2 = W (V \odot V) - \mu \odot \mu

(:math:`C` the kNN connectivities, self-loops added, rows summing to 1; :math:`\sigma^2` clipped at 0
against round-off; float64 throughout, where CellRank stores :math:`W` in float32). With
:math:`p_{ij}(u) = \operatorname{softmax}_{j \in N(i)}(\lambda\, s(u, \delta_{ij}))` the deterministic
transition probabilities at velocity :math:`u` (:mod:`cellfate_gpu.kernels._velocity`), the models
approximate :math:`\mathbb E_{u \sim \mathcal N(\mu_i, \operatorname{diag}\sigma_i^2)}[p_{ij}(u)]`:

``"stochastic"`` — the second-order expansion around the mean (the first-order term vanishes):

.. math::

    \hat p_{ij} = p_{ij}(\mu_i) + \tfrac12 \sum_g \sigma_{ig}^2\, \partial_g^2 p_{ij}(\mu_i),

clipped to :math:`[0, 1]` and renormalised over the row (uniform if every entry is 0; uniform when
:math:`\mu_i = 0`). CellRank differentiates with :func:`jax.hessian`, one cell at a time; here the
diagonal of the Hessian is in closed form, for every edge at once. With :math:`a_{ij} = \lambda
\nabla s_{ij}`, :math:`B_{ij} = \lambda \nabla^2 s_{ij}` and averages :math:`\bar a_i = \sum_j p_{ij}
a_{ij}` (and :math:`\bar B_i`) over the neighbours,

.. math::

    \nabla^2 p_{ij} = p_{ij} \Bigl[(a_{ij} - \bar a_i)(a_{ij} - \bar a_i)^\top
        - \sum_k p_{ik} (a_{ik} - \bar a_i)(a_{ik} - \bar a_i)^\top + B_{ij} - \bar B_i\Bigr],

so the correction sums to 0 over each row. For the dot product :math:`a = \lambda\delta`,
:math:`B = 0`; for the cosine, with :math:`n = \lVert u\rVert`, :math:`\hat u = u/n`,
:math:`\hat c = \delta/\lVert\delta\rVert` and :math:`s = \hat c^\top \hat u`,

.. math::

    a = \frac{\lambda}{n}(\hat c - s \hat u), \qquad
    B_{gg} = \frac{\lambda}{n^2}\bigl(3 s \hat u_g^2 - 2 \hat c_g \hat u_g - s\bigr);

the correlation is the cosine of the gene-centred vectors, whose Hessian diagonal (projected by
the centring :math:`I - \mathbf 1\mathbf 1^\top / G`) gains :math:`\lambda s / (G n^2)`. The sums
:math:`\bar a_i` are sparse products (:math:`\sum_j p_{ij} \hat c_{ij} = \sum_j w_{ij} (\tilde x_j -
\tilde x_i)` with :math:`w_{ij} = p_{ij} / \lVert\delta_{ij}\rVert`), the per-edge terms row-wise dot
products on chunks of gathered rows, as in the deterministic model.

``"monte_carlo"`` — the average of the deterministic probabilities over ``n_samples`` draws
:math:`u^{(s)}_i = \mu_i + \sigma_i \odot z^{(s)}_i`, :math:`z \sim \mathcal N(0, I)` from
:func:`numpy.random.default_rng` (``seed``), drawn on the host (the same stream on every
backend). CellRank passes :math:`\sigma^2` as NumPy's *scale* (standard deviation) argument; we
draw with standard deviation :math:`\sigma`, the distribution the stochastic model expands.

As in CellRank, the softmax scale :math:`\lambda`, when not given, is estimated from the
deterministic model on the raw velocities, and both models apply to forward processes only.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from cellfate_gpu._logging import info, progress
from cellfate_gpu.kernels._velocity import (
    MAX_CHUNK_BYTES,
    SIMILARITIES,
    edge_similarities,
    estimate_softmax_scale,
    masked_row_softmax,
    normalise_rows_or_uniform,
)

__all__ = [
    "knn_velocity_moments",
    "model_transition_data",
    "monte_carlo_transition_data",
    "stochastic_transition_data",
]

STOCHASTIC_MODELS = ("stochastic", "monte_carlo")


def knn_velocity_moments(backend, C: Any, v: Any) -> tuple[Any, Any]:
    r"""Backend arrays :math:`\mu = W V` and :math:`\sigma^2 = \max(W V^{\odot 2} - \mu^{\odot 2}, 0)`.

    :math:`W = \operatorname{rownorm}(\mathbb 1[C > 0] + I)` is applied from the pattern of the
    native CSR matrix ``C`` without forming it: with :math:`B = \mathbb 1[C > 0]`, :math:`k_i` the
    row counts of :math:`B` and :math:`e_i = 1` where :math:`B_{ii} = 1` already,
    :math:`(W V)_i = \bigl((B V)_i + (1 - e_i) V_i\bigr) / (k_i + 1 - e_i)`.
    """
    xp = backend.xp
    data, indices, indptr = backend.csr_components(C)
    ones = xp.astype(data > 0, xp.float64)
    B = backend.csr_from_components(ones, indices, indptr, tuple(C.shape))
    rows = backend.row_ids(indptr)
    on_diag = backend.segment_sum(xp.where(indices == rows, ones, xp.zeros_like(ones)), indptr)
    add = 1.0 - on_diag  # the self-loop that rownorm(B + I) adds where B has none
    denom = (backend.segment_sum(ones, indptr) + add)[:, None]
    v = xp.astype(v, xp.float64)
    mean = (backend.spmm(B, v) + add[:, None] * v) / denom
    var = (backend.spmm(B, v * v) + add[:, None] * (v * v)) / denom - mean * mean
    return mean, xp.where(var > 0, var, xp.zeros_like(var))


def _chunk(n_features: int, max_chunk_bytes: int) -> int:
    return max(1, int(max_chunk_bytes) // (10 * 8 * max(n_features, 1)))  # ~10 gathered float64 rows per edge


def stochastic_transition_data(
    backend,
    x: Any,
    mean: Any,
    var: Any,
    indices: Any,
    indptr: Any,
    *,
    similarity: str = "correlation",
    softmax_scale: float = 1.0,
    max_chunk_bytes: int = MAX_CHUNK_BYTES,
) -> Any:
    r"""Second-order transition probabilities :math:`\hat p_{ij}` on the CSR pattern (see the module docstring).

    Parameters
    ----------
    backend
        Backend whose array namespace runs the computation.
    x
        ``(n_cells, n_features)`` expression (backend array).
    mean, var
        ``(n_cells, n_features)`` velocity mean :math:`\mu` and variance :math:`\sigma^2`.
    indices, indptr
        CSR pattern of the kNN graph (backend arrays).
    similarity
        ``"correlation"``, ``"cosine"`` or ``"dot_product"``.
    softmax_scale
        :math:`\lambda`.
    max_chunk_bytes
        Memory bound of the gathered rows of one chunk of edges.

    Returns
    -------
    Any
        ``(nnz,)`` float64 probabilities, rows summing to 1.
    """
    if similarity not in SIMILARITIES:
        raise ValueError(f"similarity must be one of {SIMILARITIES}, got {similarity!r}.")
    xp = backend.xp
    lam = float(softmax_scale)
    n, G = int(x.shape[0]), int(x.shape[1])
    nnz = int(indices.shape[0])
    rows = backend.row_ids(indptr)
    center, normalise = similarity == "correlation", similarity != "dot_product"
    x = xp.astype(x, xp.float64)
    u = xp.astype(mean, xp.float64)
    var = xp.astype(var, xp.float64)
    if center:  # the correlation is the cosine of gene-centred vectors
        x = x - xp.mean(x, axis=1, keepdims=True)
        u = u - xp.mean(u, axis=1, keepdims=True)
    zero_u = xp.all(xp.astype(mean, xp.float64) == 0, axis=1)
    # (sums of products, not vecdot: CuPy 13/14 lacks it)  # CellRank: uniform for a zero mean velocity
    unorm = xp.sqrt(xp.sum(u * u, axis=1))
    safe_n = xp.where(unorm > 0, unorm, xp.ones_like(unorm))
    uhat = u / safe_n[:, None]
    step = _chunk(G, max_chunk_bytes)

    # pass A: similarities, validity and |delta| per edge
    sims, valids, dnorms = [], [], []
    for start in range(0, nnz, step):
        r, c = rows[start : start + step], indices[start : start + step]
        d = xp.take(x, c, axis=0) - xp.take(x, r, axis=0)
        dot = xp.sum(xp.take(u, r, axis=0) * d, axis=1)
        if normalise:
            dn = xp.sqrt(xp.sum(d * d, axis=1))
            denom = xp.take(unorm, r) * dn
            ok = denom > 0
            sims.append(xp.where(ok, dot / xp.where(ok, denom, xp.ones_like(denom)), xp.zeros_like(dot)))
            valids.append(ok)
            dnorms.append(dn)
        else:
            sims.append(dot)
            valids.append(xp.ones(dot.shape, dtype=xp.bool))
            dnorms.append(xp.ones_like(dot))
    if not sims:
        return xp.zeros((0,), dtype=xp.float64)
    sim, valid, dnorm = (xp.concat(a) if len(a) > 1 else a[0] for a in (sims, valids, dnorms))
    p0 = masked_row_softmax(backend, lam * sim, valid, indptr)
    pv = xp.where(valid, p0, xp.zeros_like(p0))  # probabilities the Hessian is taken of (0 on masked edges)

    # per-cell mean gradient a_bar
    shape = (n, n)
    if normalise:
        w = xp.where(valid, pv / xp.where(dnorm > 0, dnorm, xp.ones_like(dnorm)), xp.zeros_like(pv))
        Wm = backend.csr_from_components(w, indices, indptr, shape)
        chat_bar = backend.spmm(Wm, x) - backend.segment_sum(w, indptr)[:, None] * x
        s_bar = backend.segment_sum(pv * sim, indptr)
        a_bar = (lam / safe_n)[:, None] * (chat_bar - s_bar[:, None] * uhat)
    else:
        Pm = backend.csr_from_components(pv, indices, indptr, shape)
        a_bar = lam * (backend.spmm(Pm, x) - backend.segment_sum(pv, indptr)[:, None] * x)

    # pass B: per-edge variance-weighted terms T1 = sum_g s2 (a - a_bar)^2 and T3 = sum_g s2 B_gg
    t1s, t3s = [], []
    for start in range(0, nnz, step):
        stop = min(start + step, nnz)
        r, c = rows[start:stop], indices[start:stop]
        d = xp.take(x, c, axis=0) - xp.take(x, r, axis=0)
        s2 = xp.take(var, r, axis=0)
        ab = xp.take(a_bar, r, axis=0)
        if normalise:
            ok = valid[start:stop]
            s = sim[start:stop]
            dn = dnorm[start:stop]
            chat = d / xp.where(dn > 0, dn, xp.ones_like(dn))[:, None]
            uh = xp.take(uhat, r, axis=0)
            nn = xp.take(safe_n, r)
            a = (lam / nn)[:, None] * (chat - s[:, None] * uh)
            diff = a - ab
            t1 = xp.sum(s2 * diff * diff, axis=1)
            b = 3.0 * s[:, None] * uh * uh - 2.0 * chat * uh - s[:, None]
            t3 = (lam / (nn * nn)) * xp.sum(s2 * b, axis=1)
            if center:
                t3 = t3 + (lam / (G * nn * nn)) * s * xp.sum(s2, axis=1)
            t1s.append(xp.where(ok, t1, xp.zeros_like(t1)))
            t3s.append(xp.where(ok, t3, xp.zeros_like(t3)))
        else:
            diff = lam * d - ab
            t1s.append(xp.sum(s2 * diff * diff, axis=1))
            t3s.append(xp.zeros((stop - start,), dtype=xp.float64))
        del d, s2, ab, diff
    t1 = xp.concat(t1s) if len(t1s) > 1 else t1s[0]
    t3 = xp.concat(t3s) if len(t3s) > 1 else t3s[0]
    t2 = xp.take(backend.segment_sum(pv * t1, indptr), rows)
    t4 = xp.take(backend.segment_sum(pv * t3, indptr), rows)
    q = 0.5 * pv * (t1 - t2 + t3 - t4)
    q = xp.where(xp.take(zero_u, rows), xp.zeros_like(q), q)
    p = xp.clip(p0 + q, 0.0, 1.0)

    # rows: renormalise; all-zero rows (and zero mean velocity) become uniform
    return normalise_rows_or_uniform(backend, p, indptr, rows, uniform_rows=zero_u)


def monte_carlo_transition_data(
    backend,
    x: Any,
    mean: Any,
    var: Any,
    indices: Any,
    indptr: Any,
    *,
    similarity: str = "correlation",
    softmax_scale: float = 1.0,
    n_samples: int = 1000,
    seed: int | None = None,
    max_chunk_bytes: int = MAX_CHUNK_BYTES,
) -> Any:
    r""":math:`\frac1S \sum_s p_{ij}(\mu_i + \sigma_i \odot z_i^{(s)})` on the CSR pattern (see the module docstring).

    ``z`` is drawn as ``numpy.random.default_rng(seed).standard_normal((n_cells, n_features))`` once
    per sample, in order; parameters as :func:`stochastic_transition_data`.
    """
    if not isinstance(n_samples, int | np.integer) or isinstance(n_samples, bool) or n_samples < 1:
        raise ValueError(f"n_samples must be a positive integer, got {n_samples!r}.")
    xp = backend.xp
    rng = np.random.default_rng(seed)
    mean = xp.astype(mean, xp.float64)
    std = xp.sqrt(xp.astype(var, xp.float64))
    shape = (int(mean.shape[0]), int(mean.shape[1]))
    acc = None
    for _ in progress(range(int(n_samples)), desc="Monte Carlo samples", unit="sample"):
        z = backend.asarray(rng.standard_normal(shape))
        sim, valid = edge_similarities(
            backend, x, mean + std * z, indices, indptr, similarity=similarity, mode="forward",
            max_chunk_bytes=max_chunk_bytes,
        )  # fmt: skip
        p = masked_row_softmax(backend, float(softmax_scale) * sim, valid, indptr)
        acc = p if acc is None else acc + p
    return acc / float(n_samples)


def model_transition_data(
    backend,
    model: str,
    x: Any,
    v: Any,
    C: Any,
    *,
    similarity: str = "correlation",
    softmax_scale: float | None = None,
    n_samples: int = 1000,
    seed: int | None = None,
    max_chunk_bytes: int = MAX_CHUNK_BYTES,
) -> tuple[Any, float]:
    r"""Probabilities of ``model`` (``"stochastic"`` or ``"monte_carlo"``) and the softmax scale used.

    :math:`\lambda` = ``softmax_scale``, or CellRank's estimate from the deterministic similarities of
    the raw velocities ``v``; ``C`` is the native kNN graph (its pattern gives the neighbours and the
    velocity moments, :func:`knn_velocity_moments`).
    """
    _, indices, indptr = backend.csr_components(C)
    if model not in STOCHASTIC_MODELS:
        raise ValueError(f"model must be one of {STOCHASTIC_MODELS}, got {model!r}.")
    if softmax_scale is None:
        sim, _ = edge_similarities(
            backend, x, v, indices, indptr, similarity=similarity, mode="forward", max_chunk_bytes=max_chunk_bytes
        )
        softmax_scale = estimate_softmax_scale(backend, sim)
        del sim
        info("Using `softmax_scale=%.4f`", softmax_scale)
    mean, var = knn_velocity_moments(backend, C, v)
    if model == "stochastic":
        probs = stochastic_transition_data(
            backend, x, mean, var, indices, indptr, similarity=similarity, softmax_scale=softmax_scale,
            max_chunk_bytes=max_chunk_bytes,
        )  # fmt: skip
    else:
        probs = monte_carlo_transition_data(
            backend, x, mean, var, indices, indptr, similarity=similarity, softmax_scale=softmax_scale,
            n_samples=n_samples, seed=seed, max_chunk_bytes=max_chunk_bytes,
        )  # fmt: skip
    return probs, float(softmax_scale)
