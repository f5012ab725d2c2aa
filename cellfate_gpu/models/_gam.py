"""CellRank's default trend model: a penalised B-spline GAM, fitted without pygam."""

from __future__ import annotations

import types
from collections.abc import Mapping
from typing import Any

import numpy as np

from cellfate_gpu.models._base import BaseModel
from cellfate_gpu.models._spline import Family, SplineBasis, SplineFit, fit_splines, penalty_matrix

__all__ = ["GAM"]

_GAM_KWARGS = ("tol", "fit_intercept", "verbose", "callbacks", "scale")


class GAM(BaseModel):
    r"""Generalised additive model of expression along pseudotime, CellRank's ``cellrank.models.GAM``.

    One spline term ``s(0, n_splines=n_knots, spline_order=spline_order, lam=3,
    penalties=["derivative", "l2"])`` plus an intercept, fitted by penalised IRLS with the lineage
    weights as sample weights; defaults are CellRank's (``distribution="gamma"``, ``link="log"``,
    ``max_iter=2000``, pygam's ``tol=1e-4``). The same numbers as pygam's ``GammaGAM`` /
    ``LinearGAM`` / ``PoissonGAM`` (see :mod:`cellfate_gpu.models._spline` for the maths), but the
    engine fits many genes at once: :func:`cellfate_gpu.pl.gene_trends` and friends give it all genes
    of a lineage in one call.

    Parameters
    ----------
    adata
        AnnData with the pseudotime, the expression and ``obsm['lineages_fwd']``.
    n_knots
        Number of B-splines.
    spline_order
        Degree of the splines (3: cubic).
    distribution
        ``"gamma"``, ``"normal"`` (``"gaussian"``) or ``"poisson"``.
    link
        ``"log"`` or ``"identity"``.
    max_iter
        PIRLS iterations at most.
    expectile, grid
        pygam's expectile GAM and grid search are not implemented here; passing them raises.
    spline_kwargs
        ``lam`` and ``penalties`` of the spline term.
    backend
        Where the cell-sized products run (default the scipy backend).
    kwargs
        ``tol``, ``fit_intercept`` (other pygam ``GAM`` arguments raise).
    """

    def __init__(
        self,
        adata: Any,
        n_knots: int | None = 6,
        spline_order: int = 3,
        distribution: str = "gamma",
        link: str = "log",
        max_iter: int = 2000,
        expectile: float | None = None,
        grid: Any = None,
        spline_kwargs: Mapping[str, Any] = types.MappingProxyType({}),
        backend: Any = None,
        **kwargs: Any,
    ):
        super().__init__(adata)
        if expectile is not None:
            raise NotImplementedError(
                "expectile GAMs are not implemented; use distribution='normal' or an SKLearnModel."
            )
        if grid is not None:
            raise NotImplementedError("grid search over lam is not implemented; pass spline_kwargs={'lam': ...}.")
        unknown = set(kwargs) - set(_GAM_KWARGS)
        if unknown:
            raise TypeError(f"Invalid arguments {sorted(unknown)} for GAM; accepted: {list(_GAM_KWARGS)}.")
        unknown = set(spline_kwargs) - {"lam", "penalties", "basis", "edge_knots"}
        if unknown:
            raise TypeError(
                f"Invalid spline_kwargs {sorted(unknown)}; accepted: lam, penalties, basis='ps', edge_knots."
            )
        if spline_kwargs.get("basis", "ps") != "ps":
            raise NotImplementedError("Only basis='ps' is implemented.")
        self.n_knots = 6 if n_knots is None else int(n_knots)
        self.spline_order = int(spline_order)
        self.family = Family(distribution, link)
        self.max_iter = int(max_iter)
        self.tol = float(kwargs.get("tol", 1e-4))
        self.fit_intercept = bool(kwargs.get("fit_intercept", True))
        self.lam = spline_kwargs.get("lam", 3.0)
        self.penalties = spline_kwargs.get("penalties", ("derivative", "l2"))
        self.edge_knots = spline_kwargs.get("edge_knots")
        self.backend = backend
        self._converged = True

    def basis_for(self, x: np.ndarray) -> SplineBasis:
        """The model matrix builder for data ``x`` (edge knots at its range unless given)."""
        lo, hi = (np.min(x), np.max(x)) if self.edge_knots is None else sorted(self.edge_knots)
        return SplineBasis(float(lo), float(hi), self.n_knots, self.spline_order, intercept=self.fit_intercept)

    def fit_many(self, x: np.ndarray, Y: Any, w: np.ndarray) -> SplineFit:
        """Fit every column of ``Y`` with this model's settings (the batched engine)."""
        return fit_splines(
            x,
            Y,
            w,
            basis=self.basis_for(x),
            family=self.family,
            penalty=penalty_matrix(self.n_knots, self.lam, self.penalties, intercept=self.fit_intercept),
            max_iter=self.max_iter,
            tol=self.tol,
            backend=self.backend,
        )

    def fit(self, x: Any = None, y: Any = None, w: Any = None, **kwargs: Any) -> GAM:
        """Fit on the prepared cells (or the given ``x``, ``y``, ``w``)."""
        if kwargs:
            raise TypeError(f"GAM.fit got unexpected arguments {sorted(kwargs)}.")
        x, y, w = self._xyw(x, y, w)
        self._model = self.fit_many(x, y[:, None], w)
        self._converged = bool(self._model.converged[0])
        return self

    @property
    def converged(self) -> bool:
        """Whether PIRLS reached ``tol``."""
        return self._converged

    def _fitted(self) -> SplineFit:
        if not isinstance(self._model, SplineFit):
            raise RuntimeError("The GAM is not fitted; call fit() first.")
        return self._model

    def predict(self, x_test: Any = None, key_added: str | None = "_x_test", **kwargs: Any) -> np.ndarray:
        """Mean expression at ``x_test``."""
        xt = self._test_points(x_test)
        return self._store_test(key_added, xt, self._fitted().predict(xt)[:, 0])

    def confidence_interval(self, x_test: Any = None, **kwargs: Any) -> np.ndarray:
        """The pygam confidence interval (``width=0.95`` or ``quantiles=``) at ``x_test``, ``(n_test, 2)``."""
        xt = self._test_points(x_test)
        self._conf_int = self._fitted().confidence_intervals(xt, **kwargs)[:, 0, :]
        return self._conf_int

    def _model_repr(self) -> str:
        return (
            f"GAM(distribution={self.family.distribution!r}, link={self.family.link!r}, n_knots={self.n_knots}, "
            f"spline_order={self.spline_order}, lam={self.lam})"
        )
