r"""Penalised B-spline GLMs for many responses at once (the engine behind :class:`~cellfate_gpu.models.GAM`).

CellRank fits one :mod:`pygam` model per gene and lineage. For one lineage every gene shares the
pseudotime :math:`x`, the lineage weights :math:`w` and therefore the model matrix
:math:`B \in \mathbb{R}^{n \times m}` (``n_splines`` B-splines plus an intercept) and the penalty
:math:`P`. This module fits the same model as pygam's penalised iteratively re-weighted least squares
(PIRLS) for a block of genes :math:`Y \in \mathbb{R}^{n \times g}` in one pass per iteration:

.. math::

    z = \eta + (y - \mu)\, g'(\mu), \qquad
    \omega = \frac{w}{g'(\mu)^2 V(\mu)}, \qquad
    \beta^{\text{new}} = \bigl(B^\top \Omega B + P + \sqrt{\epsilon} I\bigr)^{-1} B^\top \Omega z,

with link :math:`g`, variance function :math:`V` and :math:`\Omega = \operatorname{diag}(\omega)`.
For ``normal``/``identity`` and ``gamma``/``log`` (CellRank's default) :math:`\omega = w` does not
depend on :math:`\mu`: the :math:`m \times m` matrix :math:`M = B^\top W B + P` is the same for every
gene and every iteration and is inverted once; each iteration costs the two products
:math:`B\beta` and :math:`B^\top (w \odot Z)` over all genes, done on the backend. Otherwise (e.g.
``poisson``/``log``) the per-gene Gram matrices :math:`B^\top \Omega_g B` are formed for all genes at
once as one product with the pairwise basis products and solved as a batch of :math:`m \times m`
systems.

Each gene stops at the iteration at which pygam stops it (relative coefficient change below ``tol``)
and starts from pygam's initial estimate, so the curves agree with pygam to rounding.

Confidence intervals follow pygam (Wood 2006, §4.8): :math:`\operatorname{cov}\beta = \phi\,
M^{-1} B^\top \Omega B M^{-1}`, effective degrees of freedom
:math:`\text{edof} = \operatorname{tr}(M^{-1} B^\top \Omega B)`, scale
:math:`\phi = \sum_i w_i (y_i - \mu_i)^2 / V(\mu_i) / (n - \text{edof})` (:math:`\phi = 1` for
Poisson), and the interval :math:`g^{-1}\bigl(\eta \pm q \sqrt{b^\top \operatorname{cov}\beta\, b}\bigr)`
with :math:`q` from Student's :math:`t_{n-\text{edof}}` (normal for a known scale).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np
import scipy.interpolate as si
import scipy.stats as st

__all__ = ["Family", "SplineBasis", "SplineFit", "fit_splines", "penalty_matrix"]

_EPS = np.finfo(np.float64).eps
_SQRT_EPS = float(np.sqrt(_EPS))

_LINKS = ("identity", "log")
_DISTRIBUTIONS = ("normal", "gamma", "poisson")


@dataclasses.dataclass(frozen=True)
class Family:
    """A distribution and link pair, as pygam names them.

    Parameters
    ----------
    distribution
        ``"normal"`` (``"gaussian"`` is an alias), ``"gamma"`` or ``"poisson"``.
    link
        ``"identity"`` or ``"log"``.
    """

    distribution: str = "gamma"
    link: str = "log"

    def __post_init__(self) -> None:
        dist = "normal" if self.distribution == "gaussian" else self.distribution
        object.__setattr__(self, "distribution", dist)
        if dist not in _DISTRIBUTIONS:
            raise NotImplementedError(
                f"distribution={self.distribution!r} is not implemented by the batched GAM; use one of "
                f"{list(_DISTRIBUTIONS)} (or an SKLearnModel)."
            )
        if self.link not in _LINKS:
            raise NotImplementedError(
                f"link={self.link!r} is not implemented by the batched GAM; use one of {list(_LINKS)}."
            )

    @property
    def is_linear(self) -> bool:
        """``normal``/``identity``: pygam's ``LinearGAM`` (one exact solve, tiny initial coefficients)."""
        return self.distribution == "normal" and self.link == "identity"

    @property
    def known_scale(self) -> bool:
        """Poisson has scale 1; the others estimate it."""
        return self.distribution == "poisson"

    @property
    def constant_weights(self) -> bool:
        r"""Whether the PIRLS weights :math:`w / (g'(\mu)^2 V(\mu))` reduce to :math:`w`."""
        return (self.distribution, self.link) in {("normal", "identity"), ("gamma", "log")}

    def mu(self, xp: Any, eta: Any) -> Any:
        """Inverse link."""
        return xp.exp(eta) if self.link == "log" else eta

    def eta(self, xp: Any, mu: Any) -> Any:
        """Link."""
        return xp.log(mu) if self.link == "log" else mu

    def dlink(self, xp: Any, mu: Any) -> Any:
        r""":math:`g'(\mu)`."""
        return 1.0 / mu if self.link == "log" else xp.ones_like(mu)

    def variance(self, xp: Any, mu: Any) -> Any:
        r""":math:`V(\mu)`."""
        if self.distribution == "gamma":
            return mu * mu
        if self.distribution == "poisson":
            return mu
        return xp.ones_like(mu)


@dataclasses.dataclass(frozen=True)
class SplineBasis:
    r"""pygam's ``s(0)`` basis (``basis='ps'``) on ``[lo, hi]`` plus an intercept column.

    :math:`x` is rescaled to :math:`u = (x - lo)/(hi - lo)`; the B-splines of degree ``order`` live on
    ``n_splines - order + 1`` equally spaced knots on :math:`[0, 1]`, extended by ``order`` knots on
    each side (the last one nudged by :math:`10^{-9}`, as pygam does). Outside :math:`[0, 1]` each
    basis function continues linearly with its slope at the edge.
    """

    lo: float
    hi: float
    n_splines: int = 6
    order: int = 3
    intercept: bool = True

    def __post_init__(self) -> None:
        if self.order < 0 or self.n_splines < self.order + 1:
            raise ValueError(
                f"n_knots (n_splines) must be >= spline_order + 1, got n_splines={self.n_splines}, "
                f"spline_order={self.order}."
            )

    @property
    def n_coefs(self) -> int:
        """Columns of the model matrix."""
        return self.n_splines + int(self.intercept)

    @property
    def knots(self) -> np.ndarray:
        """The augmented knot vector on the rescaled axis."""
        k = self.order
        inner = np.linspace(0.0, 1.0, 1 + self.n_splines - k)
        step = inner[1] - inner[0]
        aug = np.arange(1, k + 1) * step
        t = np.r_[-aug[::-1], inner, 1.0 + aug]
        t[-1] += 1e-9
        return t

    def __call__(self, x: Any) -> np.ndarray:
        """Model matrix ``(len(x), n_coefs)`` on the host."""
        x = np.asarray(x, dtype=np.float64).ravel()
        scale = self.hi - self.lo
        u = (x - self.lo) / (scale if scale != 0 else 1.0)
        t, k = self.knots, self.order
        spline = si.BSpline(t, np.eye(self.n_splines), k, extrapolate=False)
        inside = (u >= 0.0) & (u <= 1.0)
        out = np.zeros((x.size, self.n_splines))
        out[inside] = spline(u[inside])
        if not inside.all():
            slope = spline.derivative()
            for edge, mask in ((0.0, u < 0.0), (1.0, u > 1.0)):
                if mask.any():
                    out[mask] = spline(edge) + np.outer(u[mask] - edge, slope(edge))
        np.nan_to_num(out, copy=False)
        return np.c_[out, np.ones(x.size)] if self.intercept else out


def penalty_matrix(
    n_splines: int,
    lam: float | Sequence[float] = 3.0,
    penalties: str | Sequence[str] = ("derivative", "l2"),
    *,
    intercept: bool = True,
) -> np.ndarray:
    r"""The pygam penalty for one spline term, plus an unpenalised intercept.

    ``"derivative"`` is :math:`D D^\top` with :math:`D` the second differences of the identity
    (penalises curvature of the coefficient sequence), ``"l2"`` the identity; ``"auto"`` means
    ``"derivative"``; each is scaled by its :math:`\lambda` and they are summed. CellRank's default:
    ``lam=3``, ``penalties=["derivative", "l2"]``.
    """
    names = [penalties] if isinstance(penalties, str) else list(penalties)
    lams = np.atleast_1d(np.asarray(lam, dtype=np.float64))
    if lams.size == 1:
        lams = np.repeat(lams, len(names))
    if lams.size != len(names):
        raise ValueError(f"Got {lams.size} lam values for {len(names)} penalties {names}.")
    P = np.zeros((n_splines, n_splines))
    for name, lm in zip(names, lams, strict=True):
        if name in ("derivative", "auto"):
            D = np.diff(np.eye(n_splines), n=2, axis=1) if n_splines > 1 else np.zeros((1, 0))
            P += lm * (D @ D.T)
        elif name == "l2":
            P += lm * np.eye(n_splines)
        elif name in ("none", None):
            continue
        else:
            raise NotImplementedError(f"penalty {name!r} is not implemented; use 'derivative', 'l2' or 'none'.")
    if intercept:
        P = np.pad(P, ((0, 1), (0, 1)))
    return P


@dataclasses.dataclass(frozen=True)
class SplineFit:
    r"""Fitted coefficients of ``g`` genes sharing one basis (host arrays).

    Attributes
    ----------
    coef
        ``(n_coefs, g)`` coefficients.
    cov_unit
        ``(g, n_coefs, n_coefs)`` :math:`M^{-1} B^\top \Omega B M^{-1}` (multiply by ``scale`` for the covariance).
    scale
        ``(g,)`` :math:`\phi`.
    edof
        ``(g,)`` effective degrees of freedom.
    n_samples
        Cells used in the fit.
    n_iter, converged
        ``(g,)`` PIRLS iterations and whether ``tol`` was reached within ``max_iter``.
    """

    basis: SplineBasis
    family: Family
    coef: np.ndarray
    cov_unit: np.ndarray
    scale: np.ndarray
    edof: np.ndarray
    n_samples: int
    n_iter: np.ndarray
    converged: np.ndarray

    def predict(self, x: Any) -> np.ndarray:
        """Mean response ``(len(x), g)``."""
        return self.family.mu(np, self.basis(x) @ self.coef)

    def confidence_intervals(self, x: Any, width: float = 0.95, quantiles: Sequence[float] | None = None) -> np.ndarray:
        """``(len(x), g, len(quantiles))`` interval bounds (default the ``width`` central interval)."""
        q = np.atleast_1d(quantiles if quantiles is not None else [(1 - width) / 2, 1 - (1 - width) / 2])
        if np.any((q <= 0) | (q >= 1)):
            raise ValueError(f"quantiles must lie in (0, 1), got {q.tolist()}.")
        X = self.basis(x)
        eta = X @ self.coef
        var = np.einsum("ia,gab,ib->ig", X, self.cov_unit, X) * self.scale
        sd = np.sqrt(np.maximum(var, 0.0))
        if self.family.known_scale:
            z = st.norm.ppf(q)[None, None, :]
        else:
            z = st.t.ppf(q[None, None, :], df=(self.n_samples - self.edof)[None, :, None])
        return self.family.mu(np, eta[:, :, None] + z * sd[:, :, None])


def _pirls_weights(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    r"""The sample weights as pygam uses them: ``float32``, and their reciprocal rounded to ``float32``.

    pygam casts the weights to ``float32`` and forms the PIRLS weight as
    :math:`\omega = (g'(\mu)^2 V(\mu)\, \mathrm{fl}_{32}(1/w))^{-1}`, the reciprocal taken in ``float32``; its
    scale estimate uses the ``float32`` weights themselves. Returns ``(w32, 1 / fl32(1 / w32))`` as ``float64``
    (zero weights give zero; pygam masks those rows).
    """
    w32 = np.asarray(w, dtype=np.float32)
    with np.errstate(divide="ignore"):
        return w32.astype(np.float64), 1.0 / np.reciprocal(w32).astype(np.float64)


def _initial_solve(gram0: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    r"""The start :math:`(B^\top B + \sqrt\epsilon I)^{-1} B^\top L` by an LU solve on the host, as pygam.

    The B-splines sum to one, as does the intercept column, so :math:`B^\top B` is singular and only
    :math:`\sqrt\epsilon` loads it (condition about :math:`10^{13}` at :math:`10^5` cells). A solve is
    backward stable: its error lies along the null direction, which :math:`B\beta` does not see. An
    explicit inverse is not: it puts errors of relative size up to :math:`\epsilon\,\kappa \approx 10^{-3}`
    into :math:`B\beta`, a different start that can move a gene's stop by one iteration.
    """
    return np.linalg.solve(gram0, rhs)


def _initial_coef(be: Any, family: Family, B: Any, Y: Any, gram0: np.ndarray, *, gene_major: bool) -> Any:
    """Start as pygam does: tiny coefficients for LinearGAM, else an unpenalised fit on the link scale."""
    xp = be.xp
    m, g = B.shape[1], (Y.shape[0] if gene_major else Y.shape[1])
    if family.is_linear:
        return xp.full((m, g), _SQRT_EPS, dtype=xp.float64)
    Yc = xp.where(Y == 0.0, Y + 0.01, Y)
    Yc = xp.where(Yc == 1.0, Yc - 0.01, Yc)
    L = family.eta(xp, Yc)
    rhs = be.to_host(((L @ B) if gene_major else (L.T @ B)).T)
    return be.asarray(_initial_solve(gram0, rhs), dtype=xp.float64)


def _sparse_log_link_pirls(be, xp, Yt, Bh, omega_h, Minv_h, gram, bw_h, gram0_h, *, max_iter, tol, w64):
    r"""Gamma/log PIRLS on sparse expression: the exponential is only evaluated where :math:`y \ne 0`.

    :math:`B^\top W z = (B^\top W B)\beta - B^\top w + (W B)^\top (y \odot e^{-B\beta})`, and
    :math:`y \odot e^{-B\beta}` is as sparse as :math:`y`: per iteration one dense
    :math:`\beta^\top B^\top`, a gather and an exponential at the non-zeros, and one sparse product.
    ``Yt`` is the host CSR (genes x cells). Returns ``coef (m, g)``, ``n_iter``, ``active`` and the
    weighted Pearson residual sums :math:`\sum_i w_i (y_i/\mu_i - 1)^2`.
    """
    import scipy.sparse as sp

    g, n = Yt.shape
    m = Bh.shape[1]
    BT = be.asarray(np.ascontiguousarray(Bh.T), dtype=xp.float64)
    Bw = be.asarray(omega_h[:, None] * Bh, dtype=xp.float64)
    Minv, gram_d, bw = (be.asarray(a, dtype=xp.float64) for a in (Minv_h, gram, bw_h[:, None]))

    def upload(Yh):
        Yh = sp.csr_matrix(Yh)
        Yh.sort_indices()
        rows = np.repeat(np.arange(Yh.shape[0]), np.diff(Yh.indptr))
        pos = be.asarray(rows * n + Yh.indices)
        parts = (be.asarray(Yh.data, dtype=xp.float64), be.asarray(Yh.indices), be.asarray(Yh.indptr))
        return Yh, pos, parts

    def y_over_mu(c, pos, parts, rows_g):
        eta = xp.reshape(c.T @ BT, (-1,))
        vals = parts[0] * xp.exp(-xp.take(eta, pos))
        return vals, be.csr_from_components(vals, parts[1], parts[2], (rows_g, n))

    # pygam's start: an unpenalised least-squares fit of log(y) (zeros read as 0.01, ones as 0.99)
    data = np.where(Yt.data == 1.0, 0.99, Yt.data)
    base = np.log(0.01)
    L = sp.csr_matrix((np.log(data) - base, Yt.indices, Yt.indptr), shape=Yt.shape)
    LB = base * np.broadcast_to(Bh.sum(0), (g, m)) + L @ Bh
    c = be.asarray(_initial_solve(gram0_h, np.ascontiguousarray(LB.T)), dtype=xp.float64)
    Yh, pos, parts = upload(Yt)
    idx = np.arange(g)
    coef_h = np.empty((m, g))
    n_iter = np.zeros(g, dtype=np.int64)
    for it in range(1, max_iter + 1):
        _, E = y_over_mu(c, pos, parts, idx.size)
        c_new = Minv @ (gram_d @ c - bw + be.spmm(E, Bw).T)
        diff = xp.sqrt(xp.sum((c - c_new) ** 2, axis=0)) / xp.sqrt(xp.sum(c_new**2, axis=0))
        coef_h[:, idx] = be.to_host(c_new)
        n_iter[idx] = it
        done = be.to_host(diff < tol)
        if done.all():
            idx = idx[:0]
            break
        if done.any():
            keep = np.flatnonzero(~done)
            idx = idx[keep]
            Yh, pos, parts = upload(Yh[keep])
            c = xp.take(c_new, be.asarray(keep), axis=1)
        else:
            c = c_new
    active = np.zeros(g, dtype=bool)
    active[idx] = True
    # sum_i w_i (y_i/mu_i - 1)^2 = sum_i w_i + sum_{y_i != 0} w_i ((y_i/mu_i - 1)^2 - 1)
    Yh, pos, parts = upload(Yt)
    vals, _ = y_over_mu(be.asarray(coef_h, dtype=xp.float64), pos, parts, g)
    wnz = xp.take(be.asarray(w64, dtype=xp.float64), parts[1])
    per_nz = be.to_host(wnz * ((vals - 1.0) ** 2 - 1.0))
    resid = w64.sum() + np.bincount(np.repeat(np.arange(g), np.diff(Yt.indptr)), weights=per_nz, minlength=g)
    return coef_h, n_iter, active, resid


def fit_splines(
    x: np.ndarray,
    Y: Any,
    w: np.ndarray,
    *,
    basis: SplineBasis,
    family: Family,
    penalty: np.ndarray,
    max_iter: int = 2000,
    tol: float = 1e-4,
    backend: Any = None,
) -> SplineFit:
    r"""Fit one penalised spline GLM per column of ``Y`` (same ``x`` and weights ``w``).

    Parameters
    ----------
    x
        ``(n,)`` covariate (pseudotime).
    Y
        ``(n, g)`` responses, host (NumPy / SciPy sparse) or already on ``backend``.
    w
        ``(n,)`` sample weights; rounded to ``float32`` as pygam does (see :func:`_pirls_weights`).
    basis, family, penalty
        Model matrix builder, distribution/link, ``(m, m)`` penalty without the :math:`\sqrt\epsilon` load.
    max_iter, tol
        PIRLS stopping rule per gene: :math:`\lVert\beta_{\text{old}} - \beta\rVert / \lVert\beta\rVert < \text{tol}`.
    backend
        Where the ``n``-sized products run (a backend name or instance; default the scipy backend).

    Returns
    -------
    SplineFit
    """
    from cellfate_gpu.backends import get_backend

    be = get_backend(backend if backend is not None else "scipy")
    xp = be.xp
    n = int(np.asarray(x).size)
    if Y.shape[0] != n or np.asarray(w).size != n:
        raise ValueError(f"x has {n} cells but Y has shape {Y.shape} and w {np.asarray(w).shape}.")
    w64, w_pirls = _pirls_weights(w)
    Bh = basis(x)
    m = Bh.shape[1]
    E = np.asarray(penalty, dtype=np.float64) + _SQRT_EPS * np.eye(m)
    import scipy.sparse as sp

    if sp.issparse(Y) and family.constant_weights and family.link == "log":
        keep = (np.sqrt(w_pirls) >= _SQRT_EPS) & np.isfinite(w_pirls)
        omega_h = np.where(keep, w_pirls, 0.0)
        gram = Bh.T @ (omega_h[:, None] * Bh)
        Minv_h = np.linalg.inv(gram + E)
        gram0_h = Bh.T @ Bh + _SQRT_EPS * np.eye(m)
        Yt = sp.csr_matrix(Y.T, dtype=np.float64)
        Yt.sum_duplicates()
        Yt.eliminate_zeros()
        coef_h, n_iter, active, resid = _sparse_log_link_pirls(
            be, xp, Yt, Bh, omega_h, Minv_h, gram, omega_h @ Bh, gram0_h, max_iter=max_iter, tol=tol, w64=w64
        )
        g = Yt.shape[0]
        A = np.broadcast_to(Minv_h @ gram, (g, m, m))
        edof = np.trace(A, axis1=1, axis2=2).copy()
        return SplineFit(
            basis=basis,
            family=family,
            coef=coef_h,
            cov_unit=np.ascontiguousarray(np.broadcast_to(Minv_h @ gram @ Minv_h, (g, m, m))),
            scale=np.ones(g) if family.known_scale else resid / (n - edof),
            edof=edof,
            n_samples=n,
            n_iter=n_iter,
            converged=~active,
        )
    if hasattr(Y, "toarray"):
        Y = Y.toarray()
    B = be.asarray(Bh, dtype=xp.float64)
    # constant PIRLS weights: genes x cells layout, so that every per-iteration product is a
    # contiguous (g x n)(n x m) or (g x m)(m x n) one, the fast shapes for BLAS
    gene_major = family.constant_weights
    Yd = be.asarray(np.ascontiguousarray(np.asarray(Y).T) if gene_major else Y, dtype=xp.float64)
    g = Yd.shape[0] if gene_major else Yd.shape[1]
    # pygam drops rows whose PIRLS weight sqrt(omega) is below sqrt(eps) or not finite.
    wd, wp = be.asarray(w64, dtype=xp.float64), be.asarray(w_pirls, dtype=xp.float64)
    coef = _initial_coef(be, family, B, Yd, Bh.T @ Bh + _SQRT_EPS * np.eye(m), gene_major=gene_major)
    Ed = be.asarray(E, dtype=xp.float64)
    if family.constant_weights:
        keep = (np.sqrt(w_pirls) >= _SQRT_EPS) & np.isfinite(w_pirls)
        omega_h = np.where(keep, w_pirls, 0.0)
        gram = Bh.T @ (omega_h[:, None] * Bh)
        Minv_h = np.linalg.inv(gram + E)
        Minv = be.asarray(Minv_h, dtype=xp.float64)
        # omega * B: the n-sized reduction of every iteration is (Z^T (omega B))^T, the fast product shape
        # for BLAS (a contiguous 7 x n times n x g is far slower in OpenBLAS)
        Bw = be.asarray(omega_h[:, None] * Bh, dtype=xp.float64)
        # gamma/log: B^T W z = (B^T W B) c - B^T w + (W B)^T (Y * exp(-B c)), one exp and one product
        # per cell and gene; normal/identity: z = y, the solution is the same every iteration
        gram_d = be.asarray(gram, dtype=xp.float64)
        bw = be.asarray((omega_h @ Bh)[:, None], dtype=xp.float64)
        c_linear = Minv @ (Yd @ Bw).T if family.is_linear else None
        BT = be.asarray(np.ascontiguousarray(Bh.T), dtype=xp.float64)
    else:
        pairs = be.asarray(np.einsum("ia,ib->iab", Bh, Bh).reshape(n, m * m), dtype=xp.float64)
    # The active set shrinks as genes converge; their columns are compacted once, when they finish.
    idx = np.arange(g)
    coef_h = np.empty((m, g))
    n_iter = np.zeros(g, dtype=np.int64)
    last_gram = None if family.constant_weights else np.zeros((g, m, m))
    c, Ya = coef, Yd
    for it in range(1, max_iter + 1):
        if family.is_linear:
            c_new = c_linear if idx.size == g else xp.take(c_linear, be.asarray(idx), axis=1)
        elif family.constant_weights:
            c_new = Minv @ (gram_d @ c - bw + ((Ya * xp.exp(-(c.T @ BT))) @ Bw).T)
        else:
            eta = B @ c
            mu = family.mu(xp, eta)
            z = eta + (Ya - mu) * family.dlink(xp, mu)
            om = wp[:, None] / (family.dlink(xp, mu) ** 2 * family.variance(xp, mu))
            om = xp.where(xp.isfinite(om) & (xp.sqrt(om) >= _SQRT_EPS), om, 0.0)
            om = xp.where(xp.isfinite(z), om, 0.0)
            z = xp.where(om > 0, z, 0.0)
            grams = xp.reshape(om.T @ pairs, (idx.size, m, m))
            rhs = ((om * z).T @ B)[:, :, None]
            c_new = xp.reshape(xp.linalg.solve(grams + Ed[None, :, :], rhs), (idx.size, m)).T
            last_gram[idx] = be.to_host(grams)
        diff = xp.sqrt(xp.sum((c - c_new) ** 2, axis=0)) / xp.sqrt(xp.sum(c_new**2, axis=0))
        coef_h[:, idx] = be.to_host(c_new)
        n_iter[idx] = it
        done = be.to_host(diff < tol)
        if done.all():
            idx = idx[:0]
            break
        if done.any():
            keep = be.asarray(np.flatnonzero(~done))
            idx = idx[~done]
            c, Ya = xp.take(c_new, keep, axis=1), xp.take(Ya, keep, axis=0 if gene_major else 1)
        else:
            c = c_new
    active = np.zeros(g, dtype=bool)
    active[idx] = True
    # statistics at the final coefficients, with the weights of the last iteration (as pygam)
    if family.constant_weights:
        A = np.broadcast_to(Minv_h @ gram, (g, m, m))
        cov_unit = np.broadcast_to(Minv_h @ gram @ Minv_h, (g, m, m))
    else:
        Minvs = np.linalg.inv(last_gram + E[None])
        A = Minvs @ last_gram
        cov_unit = A @ Minvs
    edof = np.trace(A, axis1=1, axis2=2).copy()
    if family.known_scale:
        scale = np.ones(g)
    else:
        cd = be.asarray(coef_h, dtype=xp.float64)
        if gene_major:
            mu = family.mu(xp, cd.T @ BT)
            resid = xp.sum(wd[None, :] * (Yd - mu) ** 2 / family.variance(xp, mu), axis=1)
        else:
            mu = family.mu(xp, B @ cd)
            resid = xp.sum(wd[:, None] * (Yd - mu) ** 2 / family.variance(xp, mu), axis=0)
        scale = be.to_host(resid) / (n - edof)
    return SplineFit(
        basis=basis,
        family=family,
        coef=coef_h,
        cov_unit=np.ascontiguousarray(cov_unit),
        scale=np.asarray(scale, dtype=np.float64),
        edof=edof,
        n_samples=n,
        n_iter=n_iter,
        converged=~active,
    )
