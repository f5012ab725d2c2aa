"""GPCCA: macrostates, initial and terminal states from a partial real Schur decomposition of T."""

from __future__ import annotations

from typing import Any, final

import numpy as np
import pandas as pd

from cellfate_gpu import _keys
from cellfate_gpu._logging import info, timed, warning
from cellfate_gpu.estimators import _gpcca_core as core
from cellfate_gpu.estimators._base import BaseEstimator, check_positive_int
from cellfate_gpu.estimators._state_cells import cover_nearly_closed, top_cells
from cellfate_gpu.linalg import partial_schur
from cellfate_gpu.linalg._classes import ReducibleChainError
from cellfate_gpu.lineage import Lineage, default_colors

__all__ = ["GPCCA"]


@final
class GPCCA(BaseEstimator):
    r"""Generalized Perron Cluster Cluster Analysis (Reuter et al. 2018) on a kernel's T.

    The Schur vectors :math:`X` of the ``k`` eigenvalues with largest real part span an invariant
    subspace, :math:`T X = X R`. Macrostate memberships are :math:`\chi = X A`, with the rotation
    :math:`A` maximising crispness. The default optimiser is L-BFGS with an analytic gradient and
    seeded restarts from pyGPCCA's inner-simplex start; ``optimizer="nelder-mead"`` runs pyGPCCA's
    own optimisation for exact parity. Coarse-grained transitions
    :math:`T_c = (\chi^\top D \chi)^{-1} \chi^\top D T \chi` with :math:`D = \mathrm{diag}(\eta)`,
    :math:`\eta = \mathbf 1 / n`.
    """

    def __init__(self, object: Any, *, backward: bool = False, obsp_key: str | None = None):
        super().__init__(object, backward=backward, obsp_key=obsp_key)
        self._schur_vectors: np.ndarray | None = None
        self._schur_matrix: np.ndarray | None = None
        self._eigenvalues: np.ndarray | None = None
        self._eigendecomposition: dict | None = None
        self._macrostates: pd.Series | None = None
        self._memberships: Lineage | None = None
        self._coarse_T: pd.DataFrame | None = None
        self._coarse_stationary: np.ndarray | None = None
        self._coarse_initial: np.ndarray | None = None
        self._crispness: float | None = None

    # ---------------------------------------------------------------- properties
    @property
    def schur_vectors(self) -> np.ndarray | None:
        """η-orthonormal Schur vectors (first column constant), host array ``n x k``."""
        return self._schur_vectors

    @property
    def schur_matrix(self) -> np.ndarray | None:
        """Quasi-upper-triangular ``R`` with :math:`T X = X R`."""
        return self._schur_matrix

    @property
    def eigendecomposition(self) -> dict | None:
        """CellRank's eigendecomposition dict (``D``, ``eigengap``, ``params``, ...)."""
        return self._eigendecomposition

    @property
    def macrostates(self) -> pd.Series | None:
        """Categorical macrostate assignment of the top ``n_cells`` cells per state."""
        return self._macrostates

    @property
    def macrostates_memberships(self) -> Lineage | None:
        r"""Memberships :math:`\chi` (cells x macrostates)."""
        return self._memberships

    @property
    def coarse_T(self) -> pd.DataFrame | None:
        """Coarse-grained transition matrix between macrostates."""
        return self._coarse_T

    @property
    def coarse_stationary_distribution(self) -> pd.Series | None:
        """Stationary distribution of the coarse chain."""
        if self._coarse_stationary is None:
            return None
        return pd.Series(self._coarse_stationary, index=self._coarse_T.index)

    # ---------------------------------------------------------------- decompositions
    def _schur_values(self, n_components: int, which: str, alpha: float, tol: float, maxiter: int | None) -> dict:
        """The partial Schur decomposition as local values (nothing is stored: see :meth:`_commit_schur`)."""
        n = self.adata.n_obs
        if isinstance(n_components, bool) or not isinstance(n_components, int | np.integer) or n_components < 1:
            raise ValueError(f"n_components must be a positive integer, got {n_components!r}.")
        if n < 3:
            raise ValueError(f"A Schur decomposition for GPCCA needs at least 3 cells, got {n}.")
        k = min(int(n_components), n - 1)
        res = partial_schur(self._T, k, which=which, tol=tol, maxiter=maxiter, backend=self._backend)
        Q, R = self._backend.to_host(res.Q), np.asarray(res.R)
        X, Rp = core.eta_orthonormalize(Q, R)
        evals = np.asarray(res.eigenvalues)
        eig = {
            "D": evals,
            "eigengap": core.eigengap(evals, alpha),
            "params": {"which": which, "k": len(evals), "alpha": alpha},
        }
        return {"X": X, "R": Rp, "evals": evals, "eig": eig}

    def _commit_schur(self, values: dict) -> None:
        self._schur_vectors, self._schur_matrix, self._eigenvalues = values["X"], values["R"], values["evals"]
        self._eigendecomposition = values["eig"]
        self.adata.obsm[_keys.schur_vectors(self.backward)] = values["X"]
        self.adata.uns[_keys.schur_matrix(self.backward)] = values["R"]
        self.adata.uns[_keys.eigendecomposition(self.backward)] = _h5ad_safe(values["eig"])

    def _current_schur(self) -> dict | None:
        if self._schur_vectors is None:
            return None
        return {
            "X": self._schur_vectors,
            "R": self._schur_matrix,
            "evals": self._eigenvalues,
            "eig": self._eigendecomposition,
        }

    def compute_schur(
        self,
        n_components: int = 20,
        which: str = "LR",
        method: str | None = None,
        alpha: float = 1.0,
        tol: float = 1e-10,
        maxiter: int | None = None,
        **kwargs: Any,
    ) -> GPCCA:
        """Partial real Schur decomposition of T on its backend (:func:`cellfate_gpu.linalg.partial_schur`).

        On a reducible T the decomposition holds the eigenvalue 1 once per closed communicating
        class (computed exactly from the class structure), so its span contains the constant vector
        and every class's absorption probabilities. A decomposition that does not converge raises
        :class:`~cellfate_gpu.linalg.SchurError` saying what to try (``maxiter``, ``tol``) and
        stores nothing.
        """
        values = self._schur_values(n_components, which, alpha, tol, maxiter)
        self._commit_schur(values)
        info(
            "Schur decomposition: %d vectors, eigengap suggests %d states",
            values["X"].shape[1],
            values["eig"]["eigengap"] + 1,
        )
        return self

    def compute_eigendecomposition(
        self, k: int = 20, which: str = "LR", alpha: float = 1.0, only_evals: bool = False, **kwargs: Any
    ) -> GPCCA:
        """Top-``k`` eigenvalues, right/left eigenvectors, stationary distribution and eigengap."""
        eig = core.eigendecomposition(self._backend, self._T, k, which=which, alpha=alpha, only_evals=only_evals)
        self._eigendecomposition = eig
        self.adata.uns[_keys.eigendecomposition(self.backward)] = _h5ad_safe(eig)
        return self

    # ---------------------------------------------------------------- macrostates
    def _closed_classes(self):
        """Closed communicating classes of T (host graph search, O(nnz))."""
        from cellfate_gpu.linalg._classes import chain_classes

        return chain_classes(self._backend.to_scipy_csr(self._T))

    def _check_n_states(self, n_states: Any) -> None:
        """Refuse a bad ``n_states`` by name, before any heavy work."""
        n = self.adata.n_obs
        values = list(n_states) if isinstance(n_states, list | tuple) else [n_states]
        if isinstance(n_states, list | tuple) and len(values) != 2:
            raise ValueError(f"n_states as a range must be [min, max], got {n_states!r}.")
        for v in values:
            if isinstance(v, bool) or not isinstance(v, int | np.integer):
                raise TypeError(f"n_states must be an integer, a [min, max] pair or None, got {n_states!r}.")
            if v < 1:
                raise ValueError(f"n_states must be positive, got {n_states!r}.")
            if v > n - 2:
                raise ValueError(
                    f"n_states={int(v)} is too large for {n} cells: GPCCA needs n_states + 1 Schur vectors and "
                    f"at most n - 1 = {n - 1} exist, so n_states <= {n - 2}."
                )
        if isinstance(n_states, list | tuple) and not 2 <= values[0] <= values[1]:
            raise ValueError(f"n_states range must satisfy 2 <= min <= max, got {n_states!r}.")

    def _check_n_cells(self, n_cells: Any) -> None:
        n = self.adata.n_obs
        if n_cells is None:
            return
        if isinstance(n_cells, bool) or not isinstance(n_cells, int | np.integer):
            raise TypeError(f"n_cells must be a positive integer or None, got {n_cells!r}.")
        if not 1 <= n_cells <= n:
            raise ValueError(f"n_cells={n_cells!r} must be between 1 and the number of cells ({n}).")

    def _schur_with(self, m: int, current: dict | None) -> dict:
        """Schur values with at least ``m`` vectors: ``current`` if it has them, else a new decomposition."""
        if current is not None and current["X"].shape[1] >= min(m, self.adata.n_obs - 1):
            return current
        k = max(m, 20 if current is None else m)
        return self._schur_values(k, "LR", 1.0, 1e-10, None)

    def _pick_n_states(self, n_states: Any, schur: dict | None) -> tuple[int, dict]:
        if n_states is None:
            schur = self._schur_with(20, schur)
            n = int(schur["eig"]["eigengap"]) + 1
            info("Using %d states based on the eigengap", n)
            return max(n, 2), schur
        if isinstance(n_states, list | tuple):
            lo, hi = int(n_states[0]), int(n_states[1])
            schur = self._schur_with(hi + 1, schur)
            scores = {
                m: core.min_chi(schur["X"], m)
                for m in range(lo, min(hi, schur["X"].shape[1]) + 1)
                if not core.splits_conjugate_pair(schur["evals"], m)
            }
            if not scores:
                raise ValueError(
                    f"No n_states in {n_states!r} avoids splitting a complex-conjugate pair of eigenvalues."
                )
            best = max(scores, key=scores.get)
            info("minChi selected %d states from %s", best, {m: round(v, 3) for m, v in scores.items()})
            return best, schur
        return int(n_states), schur

    def compute_macrostates(
        self,
        n_states: int | list[int] | None = None,
        n_cells: int | None = 30,
        cluster_key: str | None = None,
        optimizer: str = "l-bfgs",
        **kwargs: Any,
    ) -> GPCCA:
        """Macrostates from the Schur vectors: memberships, names, colours and the coarse chain.

        ``n_states``, ``n_cells``, ``cluster_key`` and ``optimizer`` are checked before any work, and
        everything is computed before anything is stored: a failing call leaves the estimator and
        the AnnData as they were. On a reducible T every closed communicating class gets at least
        one macrostate; fewer ``n_states`` than closed classes is refused (naming the classes).
        """
        return self._macrostates_from(n_states, n_cells, cluster_key, optimizer, self._current_schur())

    def _macrostates_from(self, n_states, n_cells, cluster_key, optimizer, schur: dict | None) -> GPCCA:
        if optimizer not in ("l-bfgs", "nelder-mead"):
            raise ValueError(f"optimizer must be 'l-bfgs' or 'nelder-mead', got {optimizer!r}.")
        if n_states is not None:
            self._check_n_states(n_states)
        self._check_n_cells(n_cells)
        if cluster_key is not None and cluster_key not in self.adata.obs:
            raise KeyError(
                f"No cluster annotation adata.obs[{cluster_key!r}]; available: {list(self.adata.obs.columns)}."
            )
        classes = self._closed_classes()
        n, schur = self._pick_n_states(n_states, schur)
        if n < classes.n_closed:
            raise ReducibleChainError(
                f"T has {classes.describe()}, so GPCCA needs at least {classes.n_closed} macrostates "
                f"(one per closed class), got n_states={n}. Use n_states >= {classes.n_closed}, or restrict "
                "the data to the largest component (check the kNN graph's connectivity)."
            )
        schur = self._schur_with(n + 1, schur)
        if core.splits_conjugate_pair(schur["evals"], n):
            warning("%d states would split a complex-conjugate pair of eigenvalues; using %d states", n, n + 1)
            n += 1
            schur = self._schur_with(n + 1, schur)
        if n > schur["X"].shape[1]:
            raise ValueError(f"n_states={n} exceeds the {schur['X'].shape[1]} Schur vectors available.")
        n_obs = self.adata.n_obs
        X = schur["X"][:, :n]
        with timed("Computing %d macrostates (optimizer=%r)", n, optimizer):
            if n == 1:
                chi, crisp = np.ones((n_obs, 1)), 1.0
            else:
                anchors = core.nearly_closed_cells(X, schur["evals"][:n])
                if optimizer == "l-bfgs":
                    A, crisp = core.optimize_lbfgs(X, anchors=anchors)
                else:
                    A, crisp = core.optimize_nelder_mead(X)
                chi = core.memberships_from_rotation(X, A)
            T_chi = self._backend.to_host(self._backend.spmm(self._T, self._backend.asarray(chi)))
            eta = np.full(n_obs, 1.0 / n_obs)
            coarse = core.coarse_grain(np.asarray(T_chi), chi, eta)
        names, assignment = _name_states(chi, n_cells, self.adata, cluster_key, self.transition_matrix)
        colors = self._colors_for(names, cluster_key) if cluster_key else default_colors(n)
        memberships = Lineage(chi, names=names, colors=colors)
        stationary = _stationary(coarse)
        probs = _scaled_probs(chi, assignment, names)
        # ---- everything computed: store (nothing above wrote to self or the AnnData)
        if schur is not self._current_schur() and schur is not None:
            self._commit_schur(schur)
        self._memberships = memberships
        self._macrostates = assignment
        self._crispness = crisp
        self._coarse_T = pd.DataFrame(coarse, index=names, columns=names)
        self._coarse_initial = chi.T @ eta
        self._coarse_stationary = stationary
        self._macro_probs = probs
        key = _keys.macrostates(self.backward)
        self._write_states(key, assignment, probs, colors)
        self._memberships.to_adata(self.adata, _keys.macrostates_memberships(self.backward))
        self.adata.uns[_keys.coarse(self.backward)] = {
            "T": coarse,
            "names": np.array(names, dtype=object),
            "stationary_dist": self._coarse_stationary,
            "init_dist": self._coarse_initial,
            "crispness": float(crisp),
        }
        info("Macrostates %s (crispness %.3f)", names, crisp)
        return self

    def fit(
        self,
        n_states: int | list[int] | None = None,
        n_cells: int | None = 30,
        cluster_key: str | None = None,
        **kwargs: Any,
    ) -> GPCCA:
        """Schur decomposition (enough vectors for ``n_states``) followed by :meth:`compute_macrostates`.

        Arguments are checked before the decomposition, and the Schur keys are stored only with
        the macrostates: a failing ``fit`` leaves the AnnData and the estimator untouched.
        """
        if n_states is not None:
            self._check_n_states(n_states)
        self._check_n_cells(n_cells)
        m = max(n_states) if isinstance(n_states, list | tuple) else (n_states or 0)
        schur = self._schur_with(max(20, m + 1), self._current_schur())
        optimizer = kwargs.pop("optimizer", "l-bfgs")
        return self._macrostates_from(n_states, n_cells, cluster_key, optimizer, schur)

    # ---------------------------------------------------------------- terminal / initial states
    def _require_macrostates(self) -> None:
        if self._macrostates is None:
            raise RuntimeError("Compute macrostates first: fit(...) or compute_macrostates(...).")

    def predict_terminal_states(
        self,
        method: str = "stability",
        n_cells: int = 30,
        alpha: float = 1.0,
        stability_threshold: float = 0.96,
        n_states: int | None = None,
        allow_overlap: bool = False,
    ) -> GPCCA:
        """Terminal states among the macrostates: the most stable ones (diagonal of the coarse T)."""
        self._require_macrostates()
        names = list(self._coarse_T.index)
        stability = np.diag(self._coarse_T.to_numpy())
        order = list(np.argsort(-stability, kind="stable"))
        if method == "stability":
            chosen = [names[i] for i in order if stability[i] >= stability_threshold]
            if not chosen:
                raise ValueError(
                    f"No macrostate has stability >= {stability_threshold}; max is {stability.max():.3f}. "
                    "Lower stability_threshold or use method='top_n'."
                )
        elif method == "top_n":
            if n_states is None or not 1 <= n_states <= len(names):
                raise ValueError(f"method='top_n' needs 1 <= n_states <= {len(names)}, got {n_states!r}.")
            chosen = [names[i] for i in order[:n_states]]
        elif method in ("eigengap", "eigengap_coarse"):
            ev = (
                np.sort(np.real(np.linalg.eigvals(self._coarse_T.to_numpy())))[::-1]
                if method == "eigengap_coarse"
                else np.real(self._eigenvalues)
            )
            k = min(core.eigengap(ev, alpha) + 1, len(names))
            chosen = [names[i] for i in order[:k]]
        else:
            raise ValueError(f"method must be 'stability', 'top_n', 'eigengap' or 'eigengap_coarse', got {method!r}.")
        chosen = self._with_nearly_closed(chosen, order, keep_count=method != "stability")
        return self._set_from_macrostates(chosen, n_cells, terminal=True, allow_overlap=allow_overlap)

    def _nearly_closed(self) -> tuple[np.ndarray, int]:
        """One cell per nearly closed set (:func:`core.nearly_closed_cells`) and the number of sets."""
        if self._schur_vectors is None or self._eigenvalues is None or self._memberships is None:
            return np.zeros(0, dtype=np.int64), 0
        m = self._memberships.X.shape[1]
        cells = core.nearly_closed_cells(self._schur_vectors[:, :m], np.asarray(self._eigenvalues)[:m])
        return cells, cells.size

    def _with_nearly_closed(self, chosen: list[str], order: list[int], *, keep_count: bool) -> list[str]:
        """``chosen`` with every macrostate that owns a nearly closed set of cells among them.

        A set the walk practically never leaves (:func:`core.nearly_closed_cells`) without terminal
        cells makes the fate probabilities undefined, so such a macrostate is always terminal. With
        ``keep_count`` (``top_n``, eigengap) it replaces the least stable choice that owns none;
        otherwise (``stability``) it is added. Ordered by stability, as CellRank orders them.
        """
        names = list(self._coarse_T.index)
        cells, _ = self._nearly_closed()
        owners = core.nearly_closed_owners(self._memberships.X, cells)
        required = [names[j] for j in owners]
        missing = [nm for nm in required if nm not in chosen]
        if not missing:
            return chosen
        if keep_count and len(required) > len(chosen):
            warning(
                "T has %d nearly closed sets of cells (1 - eigenvalue <= %.0e), owned by %s, but only %d terminal "
                "states were asked for: fate probabilities will be undefined from the sets left out. Ask for "
                "n_states >= %d.",
                len(required),
                core.NEARLY_CLOSED_GAP,
                required,
                len(chosen),
                len(required),
            )
            return chosen
        extra = [nm for nm in chosen if nm not in required]
        dropped = extra[len(extra) - len(missing) :] if keep_count else []
        kept = set(chosen) - set(dropped) | set(missing)
        result = [names[i] for i in order if names[i] in kept]
        info(
            "Terminal states: %s own nearly closed sets of cells (1 - eigenvalue <= %.0e) and are terminal%s, "
            "else the fate probabilities are undefined there",
            missing,
            core.NEARLY_CLOSED_GAP,
            f" in place of {dropped}" if dropped else "",
        )
        return result

    def predict_initial_states(self, n_states: int = 1, n_cells: int = 30, allow_overlap: bool = False) -> GPCCA:
        """Initial states: the macrostates with least mass in the coarse stationary distribution."""
        self._require_macrostates()
        names = list(self._coarse_T.index)
        if not 1 <= n_states <= len(names):
            raise ValueError(f"n_states must be in [1, {len(names)}], got {n_states}.")
        order = np.argsort(self._coarse_stationary, kind="stable")
        return self._set_from_macrostates(
            [names[i] for i in order[:n_states]], n_cells, terminal=False, allow_overlap=allow_overlap
        )

    def _set_from_macrostates(self, chosen: list[str], n_cells: int, *, terminal: bool, allow_overlap: bool) -> GPCCA:
        n_cells = check_positive_int("n_cells", n_cells, upper=self.adata.n_obs, upper_what="the number of cells")
        names = list(self._memberships.names)
        chi = self._memberships.X
        labels = np.full(self.adata.n_obs, None, dtype=object)
        probs = np.zeros(self.adata.n_obs)
        T = self.transition_matrix
        anchors, r = self._nearly_closed() if terminal else (np.zeros(0, dtype=np.int64), 0)
        for nm in chosen:
            j = names.index(nm)
            top = top_cells(chi[:, j], n_cells, T)
            owned = [a for a in anchors if int(np.argmax(chi[a])) == j]
            if len(owned) == 1:
                top, moved = cover_nearly_closed(top, self._schur_vectors[:, :r], owned[0], n_cells, T, chi[:, j])
                if moved:
                    info(
                        "Terminal state %r: its top cells by membership lie outside the nearly closed set it owns; "
                        "using the %d deepest cells of that set instead",
                        nm,
                        len(top),
                    )
            elif len(owned) > 1:
                warning(
                    "Terminal state %r owns %d nearly closed sets of cells; its top cells can cover only one. "
                    "Use more macrostates.",
                    nm,
                    len(owned),
                )
            labels[top] = nm
            col = chi[:, j]
            probs = np.maximum(probs, np.where(labels == nm, col / max(col.max(), 1e-300), 0.0))
        assignment = pd.Series(pd.Categorical(labels, categories=chosen), index=self.adata.obs_names)
        colors = [self._memberships.colors[names.index(nm)] for nm in chosen]
        prob_series = pd.Series(probs, index=self.adata.obs_names)
        if terminal:
            self._check_overlap(assignment, self._initial_states, allow_overlap, "initial")
            self._terminal_states, self._terminal_probs, self._term_colors = assignment, prob_series, colors
            self._fate_probabilities = self._absorption_times = None
            self._write_states(_keys.terminal_states(self.backward), assignment, prob_series, colors)
            info("Terminal states: %s", chosen)
        else:
            self._check_overlap(assignment, self._terminal_states, allow_overlap, "terminal")
            self._initial_states, self._initial_probs, self._init_colors = assignment, prob_series, colors
            self._write_states(_keys.initial_states(self.backward), assignment, prob_series, colors)
            info("Initial states: %s", chosen)
        return self

    def _states_from_names(self, names: list[str], cluster_key: str | None, n_cells: int | None):
        if cluster_key is None and self._memberships is not None:
            unknown = [nm for nm in names if nm not in self._memberships.names]
            if unknown:
                raise KeyError(f"Unknown macrostate(s) {unknown}; available: {self._memberships.names}.")
            chi, all_names = self._memberships.X, self._memberships.names
            labels = np.full(self.adata.n_obs, None, dtype=object)
            probs = np.zeros(self.adata.n_obs)
            T = self.transition_matrix
            for nm in names:
                j = all_names.index(nm)
                top = top_cells(chi[:, j], n_cells or 30, T)
                labels[top] = nm
                probs[top] = chi[top, j] / max(chi[:, j].max(), 1e-300)
            assignment = pd.Series(pd.Categorical(labels, categories=list(names)), index=self.adata.obs_names)
            colors = [self._memberships.colors[all_names.index(nm)] for nm in names]
            return assignment, pd.Series(probs, index=self.adata.obs_names), colors
        return super()._states_from_names(names, cluster_key, n_cells)

    # ---------------------------------------------------------------- plots
    def plot_spectrum(self, **kwargs: Any):
        """Eigenvalues of the Schur decomposition in the complex plane (or real parts)."""
        from cellfate_gpu.pl import spectrum

        return spectrum(self, **kwargs)

    def plot_macrostates(self, which: str = "all", **kwargs: Any):
        """Macrostates (``which="all"``), terminal or initial states on an embedding."""
        from cellfate_gpu.pl import macrostates

        return macrostates(self, which=which, **kwargs)

    def plot_coarse_T(self, **kwargs: Any):
        """Heatmap of the coarse-grained transition matrix."""
        from cellfate_gpu.pl import coarse_T

        return coarse_T(self, **kwargs)

    # ---------------------------------------------------------------- AnnData
    @classmethod
    def from_adata(cls, adata, obsp_key: str = "T_fwd") -> GPCCA:
        """Rebuild an estimator from what it (or CellRank) wrote into ``adata``."""
        from cellfate_gpu.kernels import Kernel

        g = cls(Kernel.from_adata(adata, obsp_key))
        bwd = g.backward
        if _keys.schur_vectors(bwd) in adata.obsm:
            g._schur_vectors = np.asarray(adata.obsm[_keys.schur_vectors(bwd)])
            g._schur_matrix = np.asarray(adata.uns.get(_keys.schur_matrix(bwd)))
        eig = adata.uns.get(_keys.eigendecomposition(bwd))
        if eig is not None:
            g._eigendecomposition = dict(eig)
            g._eigenvalues = np.asarray(eig.get("D"))
        mkey = _keys.macrostates_memberships(bwd)
        if mkey in adata.obsm:
            g._memberships = Lineage.from_adata(adata, mkey)
            g._macrostates = adata.obs[_keys.macrostates(bwd)].copy()
            coarse = adata.uns.get(_keys.coarse(bwd), {})
            names = [str(x) for x in coarse.get("names", g._memberships.names)]
            g._coarse_T = pd.DataFrame(np.asarray(coarse["T"]), index=names, columns=names) if "T" in coarse else None
            g._coarse_stationary = np.asarray(coarse.get("stationary_dist")) if "stationary_dist" in coarse else None
            g._coarse_initial = np.asarray(coarse.get("init_dist")) if "init_dist" in coarse else None
        for key, attr in ((_keys.terminal_states(bwd), "_terminal"), (_keys.initial_states(bwd), "_initial")):
            if key in adata.obs:
                states = adata.obs[key].copy()
                setattr(g, f"{attr}_states", states.astype("category"))
                setattr(g, f"{attr}_probs", adata.obs.get(_keys.probs(key)))
                colors = adata.uns.get(_keys.colors(key))
                setattr(
                    g,
                    "_term_colors" if attr == "_terminal" else "_init_colors",
                    None if colors is None else list(colors),
                )
        lkey = _keys.fate_probabilities(bwd)
        if lkey in adata.obsm:
            g._fate_probabilities = Lineage.from_adata(adata, lkey)
        if _keys.absorption_times(bwd) in adata.obsm:
            g._absorption_times = pd.DataFrame(adata.obsm[_keys.absorption_times(bwd)])
        return g


def _h5ad_safe(d: dict) -> dict:
    """Drop None values (h5ad cannot store them)."""
    return {k: (_h5ad_safe(v) if isinstance(v, dict) else v) for k, v in d.items() if v is not None}


def _stationary(P: np.ndarray) -> np.ndarray:
    """Stationary distribution of a small (coarse) stochastic matrix: left eigenvector of eigenvalue 1."""
    w, V = np.linalg.eig(P.T)
    v = np.abs(np.real(V[:, np.argmin(np.abs(w - 1.0))]))
    return v / v.sum()


def _scaled_probs(chi: np.ndarray, assignment: pd.Series, names: list[str]) -> pd.Series:
    codes = assignment.cat.codes.to_numpy()
    probs = np.zeros(chi.shape[0])
    for j in range(len(names)):
        mask = codes == j
        probs[mask] = chi[mask, j] / max(chi[:, j].max(), 1e-300)
    return pd.Series(probs, index=assignment.index)


def _name_states(
    chi: np.ndarray, n_cells: int | None, adata, cluster_key: str | None, T=None
) -> tuple[list[str], pd.Series]:
    """Assign the top ``n_cells`` cells of each state; name states by majority cluster (``_1``, ``_2`` on repeats)."""
    n, m = chi.shape
    n_cells = n_cells or max(1, n // (10 * m))
    tops = [top_cells(chi[:, j], n_cells, T) for j in range(m)]
    if cluster_key is not None:
        if cluster_key not in adata.obs:
            raise KeyError(f"No cluster annotation adata.obs[{cluster_key!r}].")
        col = adata.obs[cluster_key].astype(str).to_numpy()
        raw = [pd.Series(col[t]).value_counts().index[0] for t in tops]
    else:
        raw = [str(j) for j in range(m)]
    names = core.unique_names(raw)
    # A cell among the top cells of several states goes to the claimant with the largest membership
    # (not to the global argmax, which may be a state that does not claim it and so leave a state empty).
    claim = np.full((n, m), -np.inf)
    for j, top in enumerate(tops):
        claim[top, j] = chi[top, j]
    owner = np.argmax(claim, axis=1)
    claimed = np.isfinite(claim.max(axis=1))
    labels = np.full(n, None, dtype=object)
    labels[claimed] = np.asarray(names, dtype=object)[owner[claimed]]
    empty = [names[j] for j in range(m) if not np.any(owner[claimed] == j)]
    if empty:
        raise ValueError(
            f"Macrostate(s) {empty} own none of their top {n_cells} cells (other states have larger memberships "
            "there); use fewer n_states or a larger n_cells."
        )
    return names, pd.Series(pd.Categorical(labels, categories=names), index=adata.obs_names)
