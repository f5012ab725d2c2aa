"""Per-gene trend models in CellRank's interface, and the cell selection they share per lineage."""

from __future__ import annotations

import abc
import copy as _copy
import dataclasses
from typing import Any

import numpy as np
import scipy.sparse as sp

from cellfate_gpu import _keys
from cellfate_gpu.lineage import Lineage

__all__ = ["BaseModel", "LineageDesign", "lineage_design", "expression"]


@dataclasses.dataclass(frozen=True)
class LineageDesign:
    """Cells, weights and test points of one lineage, the same for every gene.

    Attributes
    ----------
    cells
        Indices into ``adata.obs`` of the fitted cells, ordered by pseudotime.
    x, w
        Their pseudotime and weights.
    x_test
        The prediction grid.
    x_all, w_all
        Pseudotime and (thresholded) weights of all cells, in ``adata`` order.
    """

    cells: np.ndarray
    x: np.ndarray
    w: np.ndarray
    x_test: np.ndarray
    x_all: np.ndarray
    w_all: np.ndarray


def _time_bounds(time_range: Any) -> tuple[float | None, float | None]:
    if time_range is None:
        return None, None
    if isinstance(time_range, tuple):
        if len(time_range) != 2:
            raise ValueError(f"time_range must be a tuple of length 2, got length {len(time_range)}.")
        for v in time_range:
            if not isinstance(v, (float, int, np.number, type(None))):
                raise TypeError(f"time_range values must be numbers or None, got {type(v).__name__!r}.")
        return time_range
    if isinstance(time_range, (float, int, np.number)):
        return None, float(time_range)
    raise TypeError(f"time_range must be None, a number or a (start, end) tuple, got {type(time_range).__name__!r}.")


def lineage_design(
    adata: Any,
    lineage: str | None,
    time_key: str,
    *,
    backward: bool = False,
    time_range: Any = None,
    threshold: float | None = None,
    weight_threshold: float | tuple[float, float] = (0.01, 0.01),
    n_test_points: int | None = 200,
) -> LineageDesign:
    r"""Which cells a trend of ``lineage`` is fitted on, with what weights, and where it is evaluated.

    The meaning is CellRank's ``BaseModel.prepare``:

    - weights are the lineage's fate probabilities, those below ``weight_threshold[0]`` set to
      ``weight_threshold[1]`` (all ones for ``lineage=None``);
    - cells with repeated pseudotime keep only their first occurrence, sorted by time;
    - the end of the range (unless given) is where the running mean (window ``n_test_points // 20``)
      of the weights of cells with weight :math:`\ge` ``threshold`` (default: their median) peaks, or the
      last such cell for ``lineage=None``; when all weights are equal (e.g. ``lineage=None``) the
      default range is all the data (CellRank uses :math:`[w_0 - 1, w_0 + 1]` there, a weight read as a
      time, which cuts pseudotimes beyond 2 and overrides ``time_range``); the range is clipped to the data;
    - the test grid has ``n_test_points`` equally spaced points on the range (``None``: the fitted cells).
    """
    from scipy.ndimage import convolve

    if time_key not in adata.obs:
        raise KeyError(f"Time key {time_key!r} not found in adata.obs; available: {list(adata.obs.columns)}.")
    if isinstance(weight_threshold, (int, float, np.number)):
        weight_threshold = (weight_threshold, weight_threshold)
    if len(weight_threshold) != 2:
        raise ValueError(f"weight_threshold must be a number or a pair, got {weight_threshold!r}.")
    val_start, val_end = _time_bounds(time_range)
    x_all = np.asarray(adata.obs[time_key], dtype=np.float64)
    if lineage is not None:
        key = _keys.fate_probabilities(backward)
        if key not in adata.obsm:
            raise KeyError(f"No fate probabilities in adata.obsm[{key!r}]; compute them first.")
        w_all = np.array(Lineage.from_adata(adata, key)[lineage].X, dtype=np.float64).ravel()
        cut, val = weight_threshold
        w_all[w_all < cut] = val
    else:
        w_all = np.ones_like(x_all)
    x, first = np.unique(x_all, return_index=True)
    w = w_all[first]
    if np.allclose(w, w[0]):
        # CellRank sets the range to [w_0 - 1, w_0 + 1] here (a weight used as a time, which truncates
        # pseudotimes beyond 2 and ignores time_range); we use the whole data range unless one is given.
        val_start = np.min(x) if val_start is None else val_start
        val_end = np.max(x) if val_end is None else val_end
    if val_start is None:
        val_start = np.min(x)
    if val_end is None:
        thr = np.nanmedian(w) if threshold is None else threshold
        above = w >= thr
        n_window = max(1, (n_test_points or 200) // 20)
        smooth = convolve(w[above], np.ones(n_window) / n_window, mode="nearest")
        val_end = x[above][-1 if lineage is None else int(np.nanargmax(smooth))]
    if val_start > val_end:
        val_start, val_end = val_end, val_start
    val_start, val_end = max(val_start, np.min(x)), min(val_end, np.max(x))
    keep = (x >= val_start) & (x <= val_end)
    x_test = np.linspace(val_start, val_end, n_test_points) if n_test_points is not None else x[keep]
    cells = first[keep]
    if cells.size == 0:
        raise RuntimeError(f"No cells to fit for lineage {lineage!r} in time range [{val_start}, {val_end}].")
    return LineageDesign(cells=cells, x=x[keep], w=w[keep], x_test=x_test, x_all=x_all, w_all=w_all)


def expression(adata: Any, genes: list[str], *, data_key: str | None = "X", use_raw: bool = False) -> Any:
    """``(n_obs, len(genes))`` expression (sparse stays sparse) from ``X``, a layer, ``raw`` or ``obs``."""
    if data_key == "obs":
        missing = [g for g in genes if g not in adata.obs]
        if missing:
            raise KeyError(f"Not in adata.obs: {missing}.")
        return np.column_stack([np.asarray(adata.obs[g], dtype=np.float64) for g in genes])
    src = adata.raw if use_raw else adata
    if use_raw and src is None:
        raise AttributeError("adata.raw is None; use_raw=True needs it.")
    names = src.var_names
    missing = [g for g in genes if g not in names]
    if missing:
        raise KeyError(f"Genes not in adata{'.raw' if use_raw else ''}.var_names: {missing[:10]}.")
    ix = names.get_indexer(genes)
    if use_raw or data_key in ("X", None):
        M = src.X
    elif data_key in adata.layers:
        M = adata.layers[data_key]
    else:
        raise KeyError(f"data_key {data_key!r} is not 'X', 'obs' or a layer {list(adata.layers.keys())}.")
    M = M[:, ix]
    if use_raw and adata.raw is not None and adata.raw.n_obs != adata.n_obs:
        raise ValueError("adata.raw has other cells than adata.")
    return M


def _column(M: Any, rows: np.ndarray) -> np.ndarray:
    M = M[rows]
    return np.asarray(M.toarray() if sp.issparse(M) else M, dtype=np.float64)


class BaseModel(abc.ABC):
    """A trend model of one gene along one lineage, in CellRank's interface.

    ``prepare`` selects cells (see :func:`lineage_design`), ``fit``, ``predict`` on ``x_test`` and
    ``confidence_interval`` fill ``y_test`` and ``conf_int``; ``plot`` draws them. Arrays are
    ``(n, 1)`` columns as in CellRank.
    """

    def __init__(self, adata: Any, model: Any = None):
        if adata is not None and not hasattr(adata, "obs"):
            raise TypeError(f"Expected an AnnData, got {type(adata).__name__}.")
        self._adata = adata
        self._model = model
        self._gene: str | None = None
        self._lineage: str | None = None
        self._prepared = False
        self._x = self._y = self._w = None
        self._x_all = self._y_all = self._w_all = None
        self._x_test = self._y_test = None
        self._x_hat = self._y_hat = None
        self._conf_int = None

    # -- data ------------------------------------------------------------------------------------
    def prepare(
        self,
        gene: str,
        lineage: str | None,
        time_key: str,
        backward: bool = False,
        time_range: Any = None,
        data_key: str | None = "X",
        use_raw: bool = False,
        threshold: float | None = None,
        weight_threshold: float | tuple[float, float] = (0.01, 0.01),
        filter_cells: float | None = None,
        n_test_points: int | None = 200,
    ) -> BaseModel:
        """Select the cells, weights and test points for ``gene`` along ``lineage`` (CellRank's meaning).

        ``filter_cells`` drops cells whose expression is at or below it.
        """
        design = lineage_design(
            self.adata,
            lineage,
            time_key,
            backward=backward,
            time_range=time_range,
            threshold=threshold,
            weight_threshold=weight_threshold,
            n_test_points=n_test_points,
        )
        y_all = _column(expression(self.adata, [gene], data_key=data_key, use_raw=use_raw), slice(None)).ravel()
        x, y, w = design.x, y_all[design.cells], design.w
        if filter_cells is not None:
            keep = (y >= filter_cells) & ~np.isclose(y, filter_cells)
            x, y, w = x[keep], y[keep], w[keep]
            if x.size == 0:
                raise RuntimeError(f"No cells of gene {gene!r} are expressed above filter_cells={filter_cells}.")
        self._x_all, self._y_all, self._w_all = design.x_all[:, None], y_all[:, None], design.w_all
        self._x, self._y, self._w = x[:, None], y[:, None], w
        self._x_test = np.asarray(design.x_test, dtype=np.float64)[:, None]
        self._y_test = self._x_hat = self._y_hat = self._conf_int = None
        self._gene, self._lineage, self._prepared = gene, lineage, True
        return self

    def _xyw(self, x: Any, y: Any, w: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if x is None and y is None and w is None:
            if not self._prepared:
                raise RuntimeError("Call prepare(...) first, or pass x, y (and w) to fit.")
            return self._x.ravel(), self._y.ravel(), self._w
        if x is None or y is None:
            raise ValueError("Pass both x and y (and optionally w), or neither.")
        x = np.asarray(x, dtype=np.float64).ravel()
        y = np.asarray(y, dtype=np.float64).ravel()
        w = np.ones_like(x) if w is None else np.asarray(w, dtype=np.float64).ravel()
        if not (x.size == y.size == w.size):
            raise ValueError(f"x, y and w have different lengths: {x.size}, {y.size}, {w.size}.")
        self._x, self._y, self._w = x[:, None], y[:, None], w
        return x, y, w

    def _test_points(self, x_test: Any) -> np.ndarray:
        if x_test is None:
            if self._x_test is None:
                raise RuntimeError("No x_test; call prepare(...) or pass x_test.")
            return self._x_test.ravel()
        return np.asarray(x_test, dtype=np.float64).ravel()

    @abc.abstractmethod
    def fit(self, x: Any = None, y: Any = None, w: Any = None, **kwargs: Any) -> BaseModel:
        """Fit on the prepared cells (or on the given ``x``, ``y``, ``w``)."""

    @abc.abstractmethod
    def predict(self, x_test: Any = None, key_added: str | None = "_x_test", **kwargs: Any) -> np.ndarray:
        """Predict at ``x_test`` (default the prepared grid); stores ``y_test``."""

    def confidence_interval(self, x_test: Any = None, **kwargs: Any) -> np.ndarray:
        """``(len(x_test), 2)`` interval; the default is :meth:`default_confidence_interval`."""
        return self.default_confidence_interval(x_test, **kwargs)

    def default_confidence_interval(self, x_test: Any = None, **kwargs: Any) -> np.ndarray:
        r"""Band :math:`\hat y \pm s/2`, :math:`s = \hat\sigma\sqrt{1 + 1/n + (x - \bar x)^2/\sum (x_i - \bar x)^2}`.

        :math:`\hat\sigma^2 = \sum (\hat y_i - y_i)^2 / (n - 2)` over cells with positive weight
        (CellRank's rule for models without their own interval, after DeSalvo 1970, eq. 5).
        """
        xt = self._test_points(x_test)
        use = self.w > 0
        x_hat = self.x[use].ravel()
        self._y_hat = np.asarray(self.predict(x_hat, key_added="_x_hat", **kwargs)).ravel()
        y_test = np.asarray(self.predict(xt, key_added="_x_test", **kwargs)).ravel()
        n = int(use.sum())
        sigma = np.sqrt(np.sum((self._y_hat - self.y[use].ravel()) ** 2) / (n - 2))
        xm = np.mean(self.x)
        with np.errstate(divide="ignore", invalid="ignore"):
            sd = sigma * np.sqrt(1 + 1 / n + (xt - xm) ** 2 / np.sum((self.x - xm) ** 2))
        self._conf_int = np.c_[y_test - sd / 2.0, y_test + sd / 2.0]
        return self._conf_int

    def _store_test(self, key_added: str | None, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        y = np.asarray(y, dtype=np.float64).ravel()
        if key_added == "_x_test":
            self._x_test, self._y_test = x[:, None], y
        elif key_added == "_x_hat":
            self._x_hat, self._y_hat = x[:, None], y
        return y

    # -- views -----------------------------------------------------------------------------------
    @property
    def adata(self) -> Any:
        """The AnnData the model reads from."""
        return self._adata

    @property
    def model(self) -> Any:
        """The underlying estimator (or fitted spline)."""
        return self._model

    @property
    def prepared(self) -> bool:
        """Whether :meth:`prepare` ran."""
        return self._prepared

    @property
    def shape(self) -> tuple[int]:
        """``(n_obs,)`` of the AnnData."""
        return (0 if self._adata is None else self._adata.n_obs,)

    x_all = property(lambda self: self._x_all, doc="Pseudotime of all cells, ``(n_obs, 1)``.")
    y_all = property(lambda self: self._y_all, doc="Expression of all cells, ``(n_obs, 1)``.")
    w_all = property(lambda self: self._w_all, doc="Weights of all cells, ``(n_obs,)``.")
    x = property(lambda self: self._x, doc="Pseudotime of the fitted cells, ``(n, 1)``.")
    y = property(lambda self: self._y, doc="Expression of the fitted cells, ``(n, 1)``.")
    w = property(lambda self: self._w, doc="Weights of the fitted cells, ``(n,)``.")
    x_test = property(lambda self: self._x_test, doc="Test points, ``(n_test, 1)``.")
    y_test = property(lambda self: self._y_test, doc="Prediction at the test points, ``(n_test,)``.")
    x_hat = property(lambda self: self._x_hat, doc="Fitted cells' pseudotime used for the default interval.")
    y_hat = property(lambda self: self._y_hat, doc="Prediction at ``x_hat``.")
    conf_int = property(lambda self: self._conf_int, doc="Confidence interval at the test points, ``(n_test, 2)``.")

    def copy(self) -> BaseModel:
        """A deep copy that shares the AnnData."""
        adata, self._adata = self._adata, None
        try:
            out = _copy.deepcopy(self)
        finally:
            self._adata = adata
        out._adata = adata
        return out

    def __repr__(self) -> str:
        return f"<{type(self).__name__}[gene={self._gene!r}, lineage={self._lineage!r}, model={self._model_repr()}]>"

    def _model_repr(self) -> str:
        return type(self._model).__name__ if self._model is not None else "None"

    def plot(
        self,
        figsize: tuple[float, float] = (8, 5),
        same_plot: bool = False,
        hide_cells: bool = False,
        perc: tuple[float, float] | None = None,
        fate_prob_cmap: Any = "viridis",
        cell_color: str | None = None,
        lineage_color: str = "black",
        alpha: float = 0.8,
        lineage_alpha: float = 0.2,
        title: str | None = None,
        size: float = 15,
        lw: float = 2,
        cbar: bool = True,
        margins: float = 0.015,
        xlabel: str = "pseudotime",
        ylabel: str = "expression",
        conf_int: bool = True,
        lineage_probability: bool = False,
        lineage_probability_conf_int: bool | float = False,
        lineage_probability_color: str | None = None,
        obs_legend_loc: str | None = "best",
        dpi: int | None = None,
        fig: Any = None,
        ax: Any = None,
        return_fig: bool = False,
        save: Any = None,
        **kwargs: Any,
    ) -> Any:
        """Cells (coloured by weight, with a colour bar) and the fitted trend with its confidence band."""
        import matplotlib.pyplot as plt

        if self._y_test is None:
            raise RuntimeError("Nothing to plot; call fit() and predict() first.")
        if ax is None:
            fig, ax = plt.subplots(figsize=figsize, dpi=dpi)
        if not hide_cells:
            c = self.w
            vmin, vmax = (0.0, 1.0) if perc is None else np.percentile(c, perc)
            sc = ax.scatter(
                self.x.ravel(),
                self.y.ravel(),
                c=c,
                cmap=fate_prob_cmap,
                vmin=vmin,
                vmax=vmax,
                s=size,
                alpha=alpha,
                linewidths=0,
                rasterized=True,
            )
            if cbar and not same_plot:
                fig.colorbar(sc, ax=ax, pad=0.02, label="weight")
        xt = self._x_test.ravel()
        ax.plot(xt, self._y_test, color=lineage_color, lw=lw, label=str(self._lineage))
        if conf_int and self._conf_int is not None:
            ax.fill_between(xt, self._conf_int[:, 0], self._conf_int[:, 1], color=lineage_color, alpha=lineage_alpha)
        ax.margins(margins)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_title(title if title is not None else f"{self._gene} ({self._lineage})")
        if save is not None:
            fig.savefig(save, bbox_inches="tight")
        return fig if return_fig else None
