"""CFLARE: Clustering and Filtering Left And Right Eigenvectors (CellRank's first estimator)."""

from __future__ import annotations

from typing import Any, final

import numpy as np
import pandas as pd

from cellfate_gpu import _keys
from cellfate_gpu._logging import info, timed
from cellfate_gpu.estimators import _gpcca_core as core
from cellfate_gpu.estimators._base import BaseEstimator

__all__ = ["CFLARE"]


@final
class CFLARE(BaseEstimator):
    """Terminal states from the extremes of the leading eigenvectors of T.

    Cells in the top ``percentile`` of any of the ``use`` leading left/right eigenvectors (real parts,
    the first, stationary one excluded for the right vectors) are clustered; each cluster is a
    terminal state. Fate probabilities and the other downstream results are shared with GPCCA.
    """

    def __init__(self, object: Any, *, backward: bool = False, obsp_key: str | None = None):
        super().__init__(object, backward=backward, obsp_key=obsp_key)
        self._eigendecomposition: dict | None = None

    @property
    def eigendecomposition(self) -> dict | None:
        """CellRank's eigendecomposition dict (``D``, ``V_l``, ``V_r``, ``eigengap``, ``stationary_dist``)."""
        return self._eigendecomposition

    def compute_eigendecomposition(
        self, k: int = 20, which: str = "LR", alpha: float = 1.0, only_evals: bool = False, **kwargs: Any
    ) -> CFLARE:
        """Top-``k`` eigenvalues with left and right eigenvectors on T's backend (:func:`core.eigendecomposition`)."""
        eig = core.eigendecomposition(self._backend, self._T, k, which=which, alpha=alpha, only_evals=only_evals)
        self._eigendecomposition = eig
        self.adata.uns[_keys.eigendecomposition(self.backward)] = eig
        return self

    def _write_results(self, adata) -> None:
        """The eigendecomposition, then the shared results (states, fate probabilities, ...)."""
        if self._eigendecomposition is not None:
            adata.uns[_keys.eigendecomposition(self.backward)] = self._eigendecomposition
        super()._write_results(adata)

    def predict(
        self,
        use: int | list[int] | None = None,
        percentile: int | None = 98,
        method: str = "kmeans",
        cluster_key: str | None = None,
        n_clusters_kmeans: int | None = None,
        n_matches_min: int = 0,
        n_neighbors: int = 20,
        resolution: float = 0.1,
        n_cells: int | None = None,
        seed: int = 0,
        **kwargs: Any,
    ) -> CFLARE:
        """Filter cells by eigenvector extremes, cluster them, and set the clusters as terminal states."""
        if self._eigendecomposition is None or "V_l" not in self._eigendecomposition:
            self.compute_eigendecomposition()
        eig = self._eigendecomposition
        if use is None:
            use = int(eig["eigengap"]) + 1
        use = list(range(use)) if isinstance(use, int) else list(use)
        V = np.real(eig["V_l"][:, use])
        with timed("Clustering the extremes of %d eigenvectors (method=%r)", len(use), method):
            V = (V - V.mean(axis=0)) / np.where(V.std(axis=0) > 0, V.std(axis=0), 1.0)
            if percentile is not None:
                if not 0 < percentile < 100:
                    raise ValueError(f"percentile must be in (0, 100), got {percentile}.")
                thresholds = np.percentile(np.abs(V), percentile, axis=0)
                keep = np.flatnonzero((np.abs(V) >= thresholds).sum(axis=1) > n_matches_min)
            else:
                keep = np.arange(V.shape[0])
            n_clusters = n_clusters_kmeans or max(len(use), 2)
            if keep.size < n_clusters:
                raise ValueError(f"Only {keep.size} cells pass the percentile filter; lower percentile={percentile}.")
            if method == "kmeans":
                from scipy.cluster.vq import kmeans2

                _, labels = kmeans2(V[keep], n_clusters, seed=seed, minit="++")
            elif method == "leiden":
                raise ImportError("method='leiden' needs leidenalg and igraph: pip install leidenalg igraph")
            else:
                raise ValueError(f"method must be 'kmeans' or 'leiden', got {method!r}.")
        names = _cluster_names(labels, keep, self.adata, cluster_key)
        states = {nm: keep[labels == j] for j, nm in enumerate(names) if np.any(labels == j)}
        if n_cells is not None:
            states = {nm: cells[:n_cells] for nm, cells in states.items()}
        info("CFLARE found %d terminal states: %s", len(states), list(states))
        return self.set_terminal_states(states, cluster_key=cluster_key)


def _cluster_names(labels: np.ndarray, keep: np.ndarray, adata, cluster_key: str | None) -> list[str]:
    n = int(labels.max()) + 1
    if cluster_key is None:
        return [str(j) for j in range(n)]
    col = adata.obs[cluster_key].astype(str).to_numpy()
    raw = [
        pd.Series(col[keep[labels == j]]).value_counts().index[0] if np.any(labels == j) else str(j) for j in range(n)
    ]
    return core.unique_names(raw)
