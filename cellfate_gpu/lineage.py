r"""The Lineage result: a ``cells x lineages`` array that knows its lineage names and colours.

A :class:`Lineage` is what fate probabilities and macrostate memberships are returned as. Its
values live on the host (results are brought back from the backend once, by the computation that
made them). Column selection by name merges lineages on request:

.. math::

    L[[\text{"A, B"}]]_{i} = L_{i,A} + L_{i,B},

which is again a distribution over the remaining lineages when the rows of ``L`` were.
"""

from __future__ import annotations

from typing import Any, final

import numpy as np
import pandas as pd

from cellfate_gpu._logging import warning

__all__ = ["Lineage", "default_colors"]

_PALETTE = [
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
]


def default_colors(n: int) -> list[str]:
    """``n`` distinct hex colours (tab10, then evenly spaced hues of matplotlib's ``hsv`` map)."""
    if n <= len(_PALETTE):
        return _PALETTE[:n]
    import matplotlib
    import matplotlib.colors as mcolors

    cmap = matplotlib.colormaps["hsv"]
    return [mcolors.to_hex(c) for c in cmap(np.linspace(0, 1, n, endpoint=False))]


def _mean_color(colors: list[str]) -> str:
    """Mean of colours in RGB (the colour of a merged lineage)."""
    import matplotlib.colors as mcolors

    return mcolors.to_hex(np.mean([mcolors.to_rgb(c) for c in colors], axis=0))


def _split_key(key: str) -> list[str]:
    return [p.strip() for p in str(key).strip(" ,").split(",")]


_DIST_MEASURES = ("cosine_sim", "wasserstein_dist", "kl_div", "js_div", "mutual_info", "equal")


def _reduction_weights(R: np.ndarray, Q: np.ndarray, measure: str) -> np.ndarray:
    r"""``(n_query, n_reference)`` similarity weights :math:`W_{q,r}` of :meth:`Lineage.reduce`."""
    n_q, n_r = Q.shape[1], R.shape[1]
    if measure == "equal":
        return np.ones((n_q, n_r))
    if measure == "cosine_sim":
        with np.errstate(divide="ignore", invalid="ignore"):
            Rn = R / np.linalg.norm(R, axis=0)
            Qn = Q / np.linalg.norm(Q, axis=0)
        return Qn.T @ Rn
    if measure == "mutual_info":
        try:
            from sklearn.feature_selection import mutual_info_regression
        except ImportError as e:
            raise ImportError(
                "dist_measure='mutual_info' needs scikit-learn (`pip install scikit-learn`); "
                "or pass another dist_measure, e.g. 'cosine_sim'."
            ) from e
        return np.vstack([mutual_info_regression(R, Q[:, q], random_state=0) for q in range(n_q)])
    # point-wise distances between the columns as distributions over the cells without zeros
    import scipy.stats as st
    from scipy.spatial.distance import jensenshannon

    keep = ~((R == 0).any(axis=1) | (Q == 0).any(axis=1))
    if (~keep).any():
        warning("Removed %d row(s) that contain zeros before computing %s.", int((~keep).sum()), measure)
    if not keep.any():
        raise ValueError(f"Every cell has a zero lineage value; {measure} is undefined.")
    Rk, Qk = R[keep], Q[keep]
    with np.errstate(divide="ignore", invalid="ignore"):
        Rk = Rk / np.abs(Rk).sum(axis=0)
        Qk = Qk / np.abs(Qk).sum(axis=0)
    dist = {"wasserstein_dist": st.wasserstein_distance, "kl_div": st.entropy, "js_div": jensenshannon}[measure]
    W = np.empty((n_q, n_r))
    for q in range(n_q):
        for r in range(n_r):
            d = float(dist(Qk[:, q], Rk[:, r]))
            W[q, r] = np.inf if d == 0 else 1.0 / d  # identical columns: CellRank's 1/0, refused by the caller
    return W


@final
class Lineage(np.ndarray):
    r"""``(n_cells, n_lineages)`` float array with lineage ``names`` and ``colors``.

    Parameters
    ----------
    values
        ``(n_cells, n_lineages)`` finite values (a 1-D array is one lineage).
    names
        One unique name per column.
    colors
        One colour per column (anything matplotlib understands; stored as hex). Default: tab10.

    Notes
    -----
    Indexing (always returns a 2-D :class:`Lineage`, as in CellRank):

    * ``L["A"]`` one column; ``L[["A", "C"]]`` those columns; ``L[["A, B"]]`` one merged column
      ``"A, B"`` holding :math:`L_{:,A} + L_{:,B}` (colour: mean of the merged colours);
    * ``L[rows]`` with an integer, slice, boolean mask or index array keeps all names;
    * ``L[rows, cols]`` with ``cols`` any of the above (names, integers, slices, masks).

    Element-wise arithmetic keeps names; reductions and transposes return plain arrays.
    In AnnData a lineage is stored as the plain array ``obsm[key]`` with ``uns[f"{key}_names"]``
    and ``uns[f"{key}_colors"]`` (:meth:`to_adata`, :meth:`from_adata`).
    """

    def __new__(cls, values: Any, names: Any, colors: Any = None) -> Lineage:
        arr = np.array(values, dtype=np.float64, copy=True)
        if arr.ndim == 1:
            arr = arr[:, None]
        if arr.ndim != 2:
            raise ValueError(f"Lineage values must be 2-D (cells x lineages), got shape {arr.shape}.")
        bad = int(np.count_nonzero(~np.isfinite(arr)))
        if bad:  # probabilities and memberships are finite; NaN here would spread silently into every score
            raise ValueError(f"Lineage values have {bad} non-finite entries (NaN or inf) of {arr.size}.")
        names = [str(n) for n in names]
        if len(names) != arr.shape[1]:
            raise ValueError(f"Got {len(names)} names for {arr.shape[1]} lineage column(s).")
        if len(set(names)) != len(names):
            dup = sorted({n for n in names if names.count(n) > 1})
            raise ValueError(f"Lineage names must be unique; duplicated: {dup}.")
        colors = default_colors(len(names)) if colors is None else list(colors)
        if len(colors) != len(names):
            raise ValueError(f"Got {len(colors)} colors for {len(names)} lineages.")
        import matplotlib.colors as mcolors

        bad = [c for c in colors if not mcolors.is_color_like(c)]
        if bad:
            raise ValueError(f"Not valid colours: {bad}.")
        obj = arr.view(cls)
        obj._names = names
        obj._colors = [mcolors.to_hex(c) for c in colors]
        return obj

    def __array_finalize__(self, obj: Any) -> None:
        names = getattr(obj, "_names", None)
        ok = names is not None and self.ndim == 2 and self.shape[1] == len(names)
        self._names = list(names) if ok else None
        self._colors = list(obj._colors) if ok else None

    def __array_wrap__(self, array: Any, context: Any = None, return_scalar: bool = False) -> Any:
        # Ufunc results keep the names only when they still are cells x the same lineages.
        if return_scalar:
            return array[()]
        if array.ndim == 2 and self._names is not None and array.shape[1] == len(self._names):
            return super().__array_wrap__(array, context, return_scalar)
        return np.asarray(array).view(np.ndarray)

    # ------------------------------------------------------------------ attributes
    @property
    def names(self) -> list[str]:
        """Lineage names, one per column."""
        if self._names is None:
            return [f"Lineage_{i}" for i in range(self.shape[-1])]
        return list(self._names)

    @property
    def colors(self) -> list[str]:
        """Lineage colours (hex), one per column."""
        if self._colors is None:
            return default_colors(self.shape[-1])
        return list(self._colors)

    @property
    def nlin(self) -> int:
        """Number of lineages."""
        return int(self.shape[1])

    @property
    def T(self) -> np.ndarray:
        """Transpose as a plain array (``lineages x cells`` has no per-column lineage names)."""
        return self.X.T

    @property
    def X(self) -> np.ndarray:
        """The values as a plain :class:`numpy.ndarray` (a view, no copy)."""
        return self.view(np.ndarray)

    # ------------------------------------------------------------------ indexing
    def _resolve_columns(self, key: Any) -> tuple[list[np.ndarray], list[str], list[str]]:
        """Column groups (merged when a name is ``"A, B"``), their names and colours."""
        names, colors = self.names, self.colors
        if isinstance(key, str):
            key = [key]
        if isinstance(key, list | tuple | np.ndarray) and len(key) and all(isinstance(k, str) for k in key):
            groups, out_names, out_colors = [], [], []
            for k in key:
                parts = _split_key(k)
                idx = []
                for p in parts:
                    if p not in names:
                        raise KeyError(f"Lineage {p!r} not found; available: {names}.")
                    idx.append(names.index(p))
                if len(set(idx)) != len(idx):
                    raise ValueError(f"Lineage key {k!r} names a lineage twice.")
                groups.append(np.asarray(idx))
                out_names.append(", ".join(parts))
                out_colors.append(colors[idx[0]] if len(idx) == 1 else _mean_color([colors[i] for i in idx]))
            if len(set(out_names)) != len(out_names):
                raise ValueError(f"Selected lineages are not unique: {out_names}.")
            return groups, out_names, out_colors
        cols = np.atleast_1d(np.arange(self.shape[1])[key])
        return [np.asarray([c]) for c in cols], [names[c] for c in cols], [colors[c] for c in cols]

    def __getitem__(self, key: Any) -> Lineage:
        if isinstance(key, tuple) and len(key) == 2:
            rows, cols = key
        elif isinstance(key, str) or (
            isinstance(key, list | tuple) and len(key) and all(isinstance(k, str) for k in key)
        ):
            rows, cols = slice(None), key
        else:
            rows, cols = key, slice(None)
        if isinstance(rows, int | np.integer):
            rows = [int(rows)]
        groups, names, colors = self._resolve_columns(cols)
        X = self.X[rows]
        if X.ndim != 2:
            raise IndexError(f"Row selection {rows!r} does not give a 2-D array.")
        if all(g.size == 1 for g in groups):
            values = X[:, np.concatenate(groups)] if groups else X[:, :0]
        else:
            values = np.column_stack([X[:, g].sum(axis=1) for g in groups])
        return Lineage(values, names=names, colors=colors)

    def __iter__(self):
        # Rows as plain 1-D arrays (what code iterating a cells x lineages table expects).
        return iter(self.X)

    # ------------------------------------------------------------------ derived quantities
    @property
    def entropy(self) -> np.ndarray:
        r"""Per-cell Shannon entropy :math:`H_i = -\sum_l p_{il} \ln p_{il}` (with :math:`0 \ln 0 = 0`)."""
        X = self.X
        with np.errstate(divide="ignore", invalid="ignore"):
            terms = np.where(X > 0, X * np.log(np.where(X > 0, X, 1.0)), 0.0)
        return 0.0 - terms.sum(axis=1)

    def priming_degree(self, method: str = "kl_divergence", early_cells: Any = None) -> np.ndarray:
        r"""Degree of lineage priming, a score in :math:`[0, 1]` (0 naive, 1 committed).

        Parameters
        ----------
        method
            ``"kl_divergence"`` (Velten et al. 2017):
            :math:`d_i = \sum_l p_{il} \log_2 (p_{il} / \bar p_l)` with :math:`\bar p` the mean fate
            distribution over ``early_cells``; ``"entropy"`` (Setty et al. 2019):
            :math:`d_i = \max_j H_j - H_i`. Either score is then min-max scaled to :math:`[0, 1]`,
            as in CellRank.
        early_cells
            Boolean mask or integer indices of the reference cells (default: all cells).

        Returns
        -------
        numpy.ndarray
            ``(n_cells,)`` scores.

        Notes
        -----
        CellRank evaluates :math:`0 \log 0` as NaN and then sets the whole cell's score to 1; here
        :math:`0 \log 0 = 0`, the usual convention, so committed cells with exact zeros get their
        true (largest) divergence.
        """
        X = self.X
        if method == "kl_divergence":
            if early_cells is None:
                ref_rows = X
            else:
                early = np.asarray(early_cells)
                if early.dtype == bool and early.shape != (X.shape[0],):
                    raise ValueError(f"early_cells mask must have shape ({X.shape[0]},), got {early.shape}.")
                ref_rows = X[early]
            if ref_rows.shape[0] == 0:
                raise ValueError("early_cells selects no cells.")
            ref = ref_rows.mean(axis=0)
            with np.errstate(divide="ignore", invalid="ignore"):
                ratio = np.where(X > 0, X / np.where(ref > 0, ref, 1.0), 1.0)
                score = np.sum(np.where(X > 0, X * np.log2(ratio), 0.0), axis=1)
        elif method == "entropy":
            H = self.entropy
            score = H.max() - H
        else:
            raise ValueError(f"method must be 'kl_divergence' or 'entropy', got {method!r}.")
        lo, hi = float(np.min(score)), float(np.max(score))
        return np.zeros_like(score) if hi <= lo else (score - lo) / (hi - lo)

    # ------------------------------------------------------------------ reduction
    def reduce(
        self,
        *keys: str,
        mode: str = "dist",
        dist_measure: str = "mutual_info",
        normalize_weights: str = "softmax",
        softmax_scale: float = 1.0,
        return_weights: bool = False,
    ) -> Lineage | tuple[Lineage, pd.DataFrame | None]:
        r"""Keep the lineages ``keys`` and give them the mass of the others, so rows sum to 1 again.

        With reference columns :math:`R` (the ``keys``, ``"A, B"`` merges) and query columns
        :math:`Q` (every lineage not in a key), rows of ``self`` summing to 1:

        * ``mode="scale"``: :math:`\hat R_{i,r} = R_{i,r} / \sum_{r'} R_{i,r'}`;
        * ``mode="dist"``: :math:`\hat R = R + Q\,\hat W`, where :math:`W_{q,r}` measures how similar
          query lineage :math:`q` is to reference :math:`r` over the cells (``dist_measure``) and
          :math:`\hat W` normalises each row of :math:`W` to sum to 1 (``normalize_weights``).

        Parameters
        ----------
        keys
            Lineage names to keep (``"A, B"`` is one merged lineage).
        mode
            ``"dist"`` or ``"scale"``.
        dist_measure
            For ``mode="dist"``, :math:`W_{q,r}` is (as CellRank computes it)

            - ``"cosine_sim"``: :math:`\cos(Q_{:,q}, R_{:,r})` over cells;
            - ``"wasserstein_dist"``, ``"kl_div"``, ``"js_div"``: :math:`1 / d(q, r)` with
              :math:`d` :func:`scipy.stats.wasserstein_distance` (columns taken as samples),
              :math:`\mathrm{KL}(q \,\|\, r)` (:func:`scipy.stats.entropy`) or the Jensen-Shannon
              distance (:func:`scipy.spatial.distance.jensenshannon`), on the columns normalised to
              sum 1 over the cells where no lineage is exactly 0;
            - ``"mutual_info"``: :func:`sklearn.feature_selection.mutual_info_regression` of
              :math:`Q_{:,q}` on the columns of :math:`R` (``random_state=0``; CellRank leaves it
              unseeded);
            - ``"equal"``: :math:`W_{q,r} = 1`.
        normalize_weights
            ``"scale"``: :math:`\hat W_{q,r} = W_{q,r} / \sum_{r'} W_{q,r'}`; ``"softmax"``:
            :math:`\hat W_{q,\cdot} = \operatorname{softmax}(\beta\, W_{q,\cdot} / \sum_{r'} W_{q,r'})`
            with :math:`\beta` = ``softmax_scale``.
        softmax_scale
            :math:`\beta`.
        return_weights
            Also return :math:`\hat W` as a DataFrame (index: query, columns: reference names);
            ``None`` for ``mode="scale"``.

        Returns
        -------
        Lineage or (Lineage, pandas.DataFrame or None)
            ``(n_cells, len(keys))``, rows summing to 1.

        Notes
        -----
        One key gives a column of ones. Lineages are excluded from the query by name components
        (``"A"`` is in the key ``"A, B"``); CellRank tests substrings, so there a key ``"AB"`` would
        also drop a lineage ``"A"``.
        """
        if mode not in ("dist", "scale"):
            raise ValueError(f"mode must be 'dist' or 'scale', got {mode!r}.")
        if dist_measure not in _DIST_MEASURES:
            raise ValueError(f"dist_measure must be one of {_DIST_MEASURES}, got {dist_measure!r}.")
        if normalize_weights not in ("scale", "softmax"):
            raise ValueError(f"normalize_weights must be 'scale' or 'softmax', got {normalize_weights!r}.")
        if not keys:
            raise ValueError("Unable to perform the reduction, no keys specified.")
        sums = self.X.sum(axis=1)
        off = ~np.isclose(sums, 1.0)
        if off.any():
            raise ValueError(
                f"Memberships do not sum to one row-wise: {int(off.sum())} of {self.shape[0]} rows "
                f"(e.g. row {int(np.flatnonzero(off)[0])} sums to {sums[off][0]:.6g})."
            )
        reference = self[:, list(keys)]
        if len(keys) == 1:
            ones = Lineage(np.ones((self.shape[0], 1)), names=reference.names, colors=reference.colors)
            return (ones, None) if return_weights else ones
        if return_weights and mode == "scale":
            warning("With mode='scale', no weights are computed; returning None for them.")
        used = {p for name in reference.names for p in _split_key(name)}
        rest = [n for n in self.names if n not in used]
        if not rest:
            warning("All lineages are selected; returning the selection only.")
            return (reference.copy(), None) if return_weights else reference.copy()
        query = self[:, rest]
        R, Q = reference.X, query.X
        weights_n = None
        if mode == "scale":
            s = R.sum(axis=1, keepdims=True)
            if (s <= 0).any():
                raise ValueError(
                    f"{int((s <= 0).sum())} cell(s) have no mass on the lineages {reference.names}; "
                    "mode='scale' cannot renormalise them (use mode='dist')."
                )
            out = R / s
        else:
            W = _reduction_weights(R, Q, dist_measure)
            if W.shape != (Q.shape[1], R.shape[1]):
                raise ValueError(f"Expected weights of shape {(Q.shape[1], R.shape[1])}, found {W.shape}.")
            if not np.isfinite(W).all():
                raise ValueError(f"The {dist_measure} weights contain non-finite values.")
            if (W < 0).any():
                raise ValueError(f"The {dist_measure} weights contain negative values.")
            if (W == 0).any():
                warning("The %s weight matrix contains exact zeros.", dist_measure)
            rs = W.sum(axis=1, keepdims=True)
            if (rs <= 0).any():
                raise ValueError(
                    f"Query lineage(s) {[rest[i] for i in np.flatnonzero(rs.ravel() <= 0)]} have zero "
                    f"{dist_measure} weight to every kept lineage."
                )
            weights_n = W / rs
            if normalize_weights == "softmax":
                e = np.exp(
                    float(softmax_scale) * weights_n - np.max(float(softmax_scale) * weights_n, axis=1, keepdims=True)
                )
                weights_n = e / e.sum(axis=1, keepdims=True)
            out = R + Q @ weights_n
        if not np.allclose(out.sum(axis=1), 1.0):
            raise ValueError("Reduced lineage rows do not sum to 1.")
        result = Lineage(out, names=reference.names, colors=reference.colors)
        if return_weights:
            if weights_n is None:
                return result, None
            return result, pd.DataFrame(weights_n, index=query.names, columns=reference.names)
        return result

    # ------------------------------------------------------------------ plots
    def plot_pie(self, *args: Any, **kwargs: Any) -> None:
        r"""Pie chart of ``reduction(X, axis=0)``, one wedge per lineage (CellRank's ``plot_pie``).

        Wedge :math:`l` has the share :math:`a_l / \sum_k a_k` with :math:`a = ` ``reduction`` of the
        values over cells and is labelled with :math:`a_l`. The arguments (``reduction``, ``title``,
        ``legend_loc``, ``legend_kwargs``, ``figsize``, ``dpi``, ``save``, in CellRank's order, and
        pie keywords) are :func:`cellfate_gpu.pl._lineage.lineage_pie`'s.
        """
        from cellfate_gpu.pl._lineage import lineage_pie

        lineage_pie(self, *args, **kwargs)

    # ------------------------------------------------------------------ AnnData
    def to_adata_dict(self, key: str) -> dict[str, dict[str, Any]]:
        """What :meth:`to_adata` writes: ``{"obsm": {key: values}, "uns": {names_key: ..., colors_key: ...}}``."""
        return {
            "obsm": {key: self.X.copy()},
            "uns": {
                f"{key}_names": np.array(self.names, dtype=object),
                f"{key}_colors": np.array(self.colors, dtype=object),
            },
        }

    def to_adata(self, adata: Any, key: str) -> None:
        """Store as ``obsm[key]`` (plain array) with ``uns[f"{key}_names"]`` and ``uns[f"{key}_colors"]``."""
        for attr, items in self.to_adata_dict(key).items():
            target = getattr(adata, attr)
            for k, v in items.items():
                target[k] = v

    @classmethod
    def from_adata(cls, adata: Any, key: str) -> Lineage:
        """Read what :meth:`to_adata` (or CellRank) wrote under ``obsm[key]``.

        Names come from ``uns[f"{key}_names"]``; for CellRank's ``lineages_fwd``/``lineages_bwd``
        without stored names, from the categories of ``obs['term_states_fwd'/'_bwd']`` (and their
        ``uns`` colours), else ``Lineage_0, Lineage_1, ...``.
        """
        if key not in adata.obsm:
            raise KeyError(f"No lineage array adata.obsm[{key!r}]; available: {list(adata.obsm.keys())}.")
        values = np.asarray(adata.obsm[key])
        if values.ndim != 2:
            raise ValueError(f"adata.obsm[{key!r}] must be 2-D, got shape {values.shape}.")
        n = values.shape[1]
        names = adata.uns.get(f"{key}_names")
        colors = adata.uns.get(f"{key}_colors")
        if names is None and key.startswith("lineages_"):
            states = adata.obs.get(f"term_states_{key.rsplit('_', 1)[-1]}")
            if states is not None and hasattr(states, "cat") and len(states.cat.categories) == n:
                names = list(states.cat.categories)
                colors = colors if colors is not None else adata.uns.get(f"term_states_{key.rsplit('_', 1)[-1]}_colors")
        if names is None or len(names) != n:
            names = [f"Lineage_{i}" for i in range(n)]
        if colors is not None and len(colors) != n:
            colors = None
        return cls(values, names=[str(x) for x in names], colors=None if colors is None else [str(c) for c in colors])

    # ------------------------------------------------------------------ misc
    def copy(self, order: str = "C") -> Lineage:
        """A deep copy (values, names, colours)."""
        return Lineage(self.X.copy(order=order), names=self.names, colors=self.colors)

    def __repr__(self) -> str:
        body = np.array2string(self.X, separator=", ", prefix="Lineage(", threshold=50)
        return f"Lineage({body},\n  names([{', '.join(self.names)}]))"

    def __str__(self) -> str:
        return f"{np.array2string(self.X, threshold=50)}\n names=[{', '.join(self.names)}]"

    def __reduce__(self):
        return (Lineage, (self.X.copy(), self.names, self.colors))
