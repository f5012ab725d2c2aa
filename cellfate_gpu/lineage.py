"""The Lineage result: a cells x lineages array that knows its lineage names and colours."""

from __future__ import annotations

from typing import Any, final

import numpy as np

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
    """``n`` distinct hex colours (tab10, then matplotlib's hsv map)."""
    if n <= len(_PALETTE):
        return _PALETTE[:n]
    import matplotlib.colors as mcolors
    import matplotlib.pyplot as plt

    return [mcolors.to_hex(c) for c in plt.get_cmap("hsv")(np.linspace(0, 1, n, endpoint=False))]


@final
class Lineage(np.ndarray):
    """``(n_cells, n_lineages)`` array with ``names`` and ``colors``.

    Indexing: ``L["A"]`` → one column, ``L[["A", "B"]]`` → those columns, ``L[["A, B"]]`` → one
    merged column named ``"A, B"`` (the sum of both), integer/slice/boolean row selection keeps the
    names. Stored in AnnData as a plain array ``obsm[key]`` with ``uns[f"{key}_names"]`` and
    ``uns[f"{key}_colors"]`` (CellRank's layout).
    """

    def __new__(cls, values: Any, names: list[str], colors: list[str] | None = None) -> Lineage:
        arr = np.asarray(values, dtype=np.float64)
        if arr.ndim == 1:
            arr = arr[:, None]
        if arr.ndim != 2:
            raise ValueError(f"Lineage values must be 2-D, got shape {arr.shape}.")
        names = [str(n) for n in names]
        if len(names) != arr.shape[1]:
            raise ValueError(f"Got {len(names)} names for {arr.shape[1]} lineages.")
        if len(set(names)) != len(names):
            raise ValueError(f"Lineage names must be unique, got {names}.")
        colors = list(colors) if colors is not None else default_colors(len(names))
        if len(colors) != len(names):
            raise ValueError(f"Got {len(colors)} colors for {len(names)} lineages.")
        obj = arr.view(cls)
        obj._names, obj._colors = names, [str(c) for c in colors]
        return obj

    def __array_finalize__(self, obj: Any) -> None:
        self._names = getattr(obj, "_names", None)
        self._colors = getattr(obj, "_colors", None)

    @property
    def names(self) -> list[str]:
        """Lineage names."""
        return list(self._names)

    @property
    def colors(self) -> list[str]:
        """Lineage colours (hex)."""
        return list(self._colors)

    @property
    def X(self) -> np.ndarray:
        """The values as a plain NumPy array."""
        return np.asarray(self).view(np.ndarray)

    def _column_index(self, key: str) -> int:
        try:
            return self._names.index(key)
        except ValueError:
            raise KeyError(f"Lineage {key!r} not found; available: {self._names}.") from None

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            key = [key]
        if isinstance(key, list | tuple) and key and all(isinstance(k, str) for k in key):
            columns, names, colors = [], [], []
            for k in key:
                parts = [p.strip() for p in k.split(",")]
                idx = [self._column_index(p) for p in parts]
                columns.append(self.X[:, idx].sum(axis=1))
                names.append(", ".join(parts))
                colors.append(self._colors[idx[0]])
            return Lineage(np.column_stack(columns), names=names, colors=colors)
        if isinstance(key, tuple) and len(key) == 2:
            rows, cols = key
            sub = self.X[rows][:, cols] if not isinstance(cols, str) else self[cols].X[rows]
            if isinstance(cols, int | np.integer):
                return sub
            col_idx = np.arange(self.shape[1])[cols] if not isinstance(cols, str) else None
            if col_idx is None:
                return Lineage(sub, names=self[cols].names, colors=self[cols].colors)
            col_idx = np.atleast_1d(col_idx)
            return Lineage(
                np.atleast_2d(sub), names=[self._names[i] for i in col_idx], colors=[self._colors[i] for i in col_idx]
            )
        out = self.X[key]
        if out.ndim == 2 and out.shape[1] == self.shape[1]:
            return Lineage(out, names=self._names, colors=self._colors)
        return out

    @property
    def entropy(self) -> np.ndarray:
        r"""Per-cell entropy :math:`-\sum_l p_l \log p_l` of the fate distribution."""
        p = np.clip(self.X, 1e-300, None)
        return -(self.X * np.log(p)).sum(axis=1)

    def priming_degree(self, method: str = "kl_divergence", early_cells: np.ndarray | None = None) -> np.ndarray:
        r"""Lineage priming of every cell (CellRank's ``compute_lineage_priming``).

        ``"kl_divergence"``: :math:`\mathrm{KL}(p_i \,\|\, \bar p)` with :math:`\bar p` the mean fate
        distribution over ``early_cells`` (all cells if ``None``); ``"entropy"``:
        :math:`1 - H(p_i) / \log L`.
        """
        X = self.X
        if method == "kl_divergence":
            ref = X[early_cells].mean(axis=0) if early_cells is not None else X.mean(axis=0)
            p, q = np.clip(X, 1e-12, None), np.clip(ref, 1e-12, None)
            return np.sum(X * (np.log(p) - np.log(q)), axis=1)
        if method == "entropy":
            return 1.0 - self.entropy / np.log(max(X.shape[1], 2))
        raise ValueError(f"method must be 'kl_divergence' or 'entropy', got {method!r}.")

    def to_adata(self, adata, key: str) -> None:
        """Store as ``obsm[key]`` (plain array) with ``uns[f"{key}_names"]`` and ``uns[f"{key}_colors"]``."""
        adata.obsm[key] = self.X.copy()
        adata.uns[f"{key}_names"] = np.array(self._names, dtype=object)
        adata.uns[f"{key}_colors"] = np.array(self._colors, dtype=object)

    @classmethod
    def from_adata(cls, adata, key: str) -> Lineage:
        """Read what :meth:`to_adata` (or CellRank) wrote."""
        if key not in adata.obsm:
            raise KeyError(f"No lineage array in adata.obsm[{key!r}].")
        values = np.asarray(adata.obsm[key])
        names = list(adata.uns.get(f"{key}_names", [f"Lineage_{i}" for i in range(values.shape[1])]))
        colors = adata.uns.get(f"{key}_colors")
        return cls(values, names=[str(n) for n in names], colors=None if colors is None else list(colors))

    def __repr__(self) -> str:
        return f"Lineage{self.X.shape} with lineages {self._names}\n{np.array2string(self.X, threshold=50)}"

    def __reduce__(self):
        return (Lineage, (self.X, self._names, self._colors))
