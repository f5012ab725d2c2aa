"""GPCCA: macrostates, initial and terminal states from a partial real Schur decomposition of T."""

from __future__ import annotations

from typing import Any, final

import numpy as np
import pandas as pd

from cellfate_gpu import _keys
from cellfate_gpu._logging import info, timed, warning
from cellfate_gpu._settings import settings
from cellfate_gpu.estimators import _gpcca_core as core
from cellfate_gpu.estimators._base import BaseEstimator, check_positive_int
from cellfate_gpu.estimators._state_cells import cover_nearly_closed, top_cells
from cellfate_gpu.kernels._validation import check_no_options
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
        self._tsi: pd.DataFrame | None = None

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
    def terminal_states_memberships(self) -> Lineage | None:
        r"""Soft assignment of cells to the terminal states: the columns of :math:`\chi` of the chosen macrostates.

        ``None`` when the terminal states were not chosen among the macrostates (a dict or a Series
        of cells, or clusters of ``cluster_key``), as in CellRank.
        """
        return self._term_memberships

    @property
    def initial_states_memberships(self) -> Lineage | None:
        r"""Soft assignment of cells to the initial states: the columns of :math:`\chi` of the chosen macrostates."""
        return self._init_memberships

    @property
    def coarse_initial_distribution(self) -> pd.Series | None:
        r"""Coarse-grained initial distribution :math:`\chi^\top \eta` over the macrostates.

        :math:`\eta = \mathbf 1 / n` (uniform over the cells), as pyGPCCA's default input distribution.
        """
        if self._coarse_initial is None or self._coarse_T is None:
            return None
        return pd.Series(np.asarray(self._coarse_initial, dtype=np.float64), index=self._coarse_T.index)

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
        self._commit_macrostates(self._macrostate_values(n_states, n_cells, cluster_key, optimizer, schur))
        return self

    def _macrostate_values(self, n_states, n_cells, cluster_key, optimizer, schur: dict | None) -> dict:
        """Macrostates as local values (nothing is stored: see :meth:`_commit_macrostates`)."""
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
        return {
            "schur": schur,
            "memberships": memberships,
            "assignment": assignment,
            "crispness": crisp,
            "coarse": coarse,
            "names": names,
            "colors": colors,
            "stationary": stationary,
            "initial": chi.T @ eta,
            "probs": probs,
        }

    def _commit_macrostates(self, values: dict) -> None:
        """Store what :meth:`_macrostate_values` computed (on the estimator and in the AnnData)."""
        schur = values["schur"]
        if schur is not self._current_schur() and schur is not None:
            self._commit_schur(schur)
        names = values["names"]
        self._memberships = values["memberships"]
        self._macrostates = values["assignment"]
        self._crispness = values["crispness"]
        self._coarse_T = pd.DataFrame(values["coarse"], index=names, columns=names)
        self._coarse_initial = values["initial"]
        self._coarse_stationary = values["stationary"]
        self._macro_probs = values["probs"]
        self._write_macrostates(self.adata)
        info("Macrostates %s (crispness %.3f)", names, values["crispness"])

    def _write_macrostates(self, adata) -> None:
        """Macrostates, their memberships and the coarse chain under CellRank's keys of ``adata``."""
        names = list(self._memberships.names)
        probs = getattr(self, "_macro_probs", None)
        if probs is None:
            probs = _scaled_probs(self._memberships.X, self._macrostates, names)
        self._write_states(
            _keys.macrostates(self.backward), self._macrostates, probs, list(self._memberships.colors), adata=adata
        )
        self._memberships.to_adata(adata, _keys.macrostates_memberships(self.backward))
        if self._coarse_T is not None:
            adata.uns[_keys.coarse(self.backward)] = _h5ad_safe(
                {
                    "T": self._coarse_T.to_numpy(),
                    "names": np.array(names, dtype=object),
                    "stationary_dist": self._coarse_stationary,
                    "init_dist": self._coarse_initial,
                    "crispness": None if self._crispness is None else float(self._crispness),
                }
            )

    def _write_results(self, adata) -> None:
        """The Schur decomposition, eigendecomposition and macrostates, then the shared results."""
        bwd = self.backward
        if self._schur_vectors is not None:
            adata.obsm[_keys.schur_vectors(bwd)] = self._schur_vectors
            adata.uns[_keys.schur_matrix(bwd)] = self._schur_matrix
        if self._eigendecomposition is not None:
            adata.uns[_keys.eigendecomposition(bwd)] = _h5ad_safe(self._eigendecomposition)
        if self._macrostates is not None and self._memberships is not None:
            self._write_macrostates(adata)
        super()._write_results(adata)

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
        memberships = self._memberships[list(chosen)]
        if terminal:
            self._check_overlap(assignment, self._initial_states, allow_overlap, "initial")
            key = _keys.terminal_states(self.backward)
            self._write_states(key, assignment, prob_series, colors)
            self._write_state_memberships(key, memberships)
            self._terminal_states, self._terminal_probs, self._term_colors = assignment, prob_series, colors
            self._term_memberships = memberships
            self._fate_probabilities = self._absorption_times = None
            info("Terminal states: %s", chosen)
        else:
            self._check_overlap(assignment, self._terminal_states, allow_overlap, "terminal")
            key = _keys.initial_states(self.backward)
            self._write_states(key, assignment, prob_series, colors)
            self._write_state_memberships(key, memberships)
            self._initial_states, self._initial_probs, self._init_colors = assignment, prob_series, colors
            self._init_memberships = memberships
            info("Initial states: %s", chosen)
        return self

    def _states_memberships(self, states: Any, cluster_key: str | None) -> Lineage | None:
        """The macrostates' memberships when ``states`` names macrostates (CellRank: else ``None``)."""
        if cluster_key is not None or self._memberships is None or not isinstance(states, str | list | tuple):
            return None
        names = [states] if isinstance(states, str) else [str(s) for s in states]
        if not names or any(nm not in self._memberships.names for nm in names):
            return None
        return self._memberships[names]

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

    # ---------------------------------------------------------------- terminal state identification
    def tsi(
        self,
        n_macrostates: int,
        terminal_states: list[str] | None = None,
        cluster_key: str | None = None,
        **kwargs: Any,
    ) -> float:
        r"""Terminal state identification (TSI) score (CellRank's ``GPCCA.tsi``, Weiler et al. 2024).

        For every :math:`n = 1, \dots, N` (``N = n_macrostates``) the macrostates are computed as
        :meth:`compute_macrostates` ``(n_states=n, cluster_key=cluster_key, **kwargs)`` would, and
        :math:`I_n` counts the known ``terminal_states`` among the clusters that name them (a
        macrostate ``Alpha_2`` belongs to cluster ``Alpha``; each cluster counts once). An optimal
        method finds :math:`O_n = \min(n, K)` of the :math:`K` terminal states. The score is the area
        under the identification curve relative to the optimal one,

        .. math:: \mathrm{TSI}_N = \sum_{n=1}^{N} I_n \Big/ \sum_{n=1}^{N} O_n \in [0, 1].

        A number of macrostates that cannot be computed (a ``ValueError``, e.g. a state without
        cells) takes the count of the next smaller one (0 for :math:`n = 1`), as CellRank does.
        Nothing is written: the estimator's macrostates and the AnnData stay as they were. The
        table is kept (see :meth:`plot_tsi`) and reused by later calls with
        ``n_macrostates <= N`` and the same (or omitted) ``terminal_states`` and ``cluster_key``.

        CellRank maps a macrostate to its cluster by cutting the name at the first ``_``, so
        clusters whose names contain ``_`` (``Lineage_A``) are never counted there; here only the
        ``_<k>`` suffix added to repeated names is removed.

        Parameters
        ----------
        n_macrostates
            Largest number of macrostates :math:`N` (a positive integer).
        terminal_states
            The known terminal states: clusters of ``adata.obs[cluster_key]``.
        cluster_key
            Cluster annotation that names the macrostates.
        kwargs
            ``n_cells`` and ``optimizer`` of :meth:`compute_macrostates`.

        Returns
        -------
        float
            :math:`\mathrm{TSI}_N`.
        """
        n_max = check_positive_int(
            "n_macrostates", n_macrostates, upper=self.adata.n_obs - 2, upper_what="the number of cells - 2"
        )
        cached = self._tsi
        reuse = cached is not None and int(cached["number_of_macrostates"].max()) >= n_max
        if reuse and terminal_states is not None:
            reuse = set(cached.attrs["terminal_states"]) == {str(t) for t in terminal_states}
        if reuse and cluster_key is not None:
            reuse = cached.attrs["cluster_key"] == cluster_key
        if not reuse:
            if terminal_states is None or cluster_key is None:
                raise RuntimeError("Give terminal_states and cluster_key to compute the TSI.")
            self._tsi = self._tsi_table(n_max, terminal_states, cluster_key, kwargs)
        return _tsi_score(self._tsi, n_max)

    def _tsi_table(self, n_max: int, terminal_states: Any, cluster_key: str, options: dict) -> pd.DataFrame:
        """Identified and optimal counts for ``n = 1..n_max`` macrostates (computed, never stored)."""
        if isinstance(terminal_states, str):
            terminal_states = [terminal_states]
        terminal = [str(t) for t in terminal_states]
        if not terminal:
            raise ValueError("terminal_states is empty; name the known terminal clusters.")
        if cluster_key not in self.adata.obs:
            raise KeyError(
                f"No cluster annotation adata.obs[{cluster_key!r}]; available: {list(self.adata.obs.columns)}."
            )
        clusters = [str(c) for c in self.adata.obs[cluster_key].astype("category").cat.categories]
        unknown = [t for t in terminal if t not in clusters]
        if unknown:
            raise ValueError(f"Terminal state(s) {unknown} are not clusters of adata.obs[{cluster_key!r}].")
        options = dict(options)
        n_cells = options.pop("n_cells", 30)
        optimizer = options.pop("optimizer", "l-bfgs")
        check_no_options("tsi", options)
        self._check_n_cells(n_cells)
        schur = self._schur_with(n_max + 2, self._current_schur())
        names_by_n: dict[int, list[str] | None] = {}
        with timed("Computing the TSI for 1..%d macrostates", n_max):
            for n in range(n_max, 0, -1):
                try:
                    with settings.using(verbosity=min(settings.verbosity, 1)):
                        values = self._macrostate_values(n, n_cells, cluster_key, optimizer, schur)
                except ValueError as err:
                    info("    %d macrostates: not computable (%s)", n, err)
                    names_by_n[n] = None
                else:
                    names_by_n[n] = list(values["names"])
                    schur = values["schur"]
        return tsi_table(names_by_n, terminal, clusters, cluster_key=cluster_key)

    def plot_tsi(self, *args: Any, **kwargs: Any):
        """Identified terminal states against the number of macrostates, with the optimal curve.

        Needs :meth:`tsi` first. The arguments (``n_macrostates``, ``x_offset``, ``y_offset``,
        ``figsize``, ``dpi``, ``save``, and ``palette`` and the other keywords, in CellRank's order) are
        :func:`cellfate_gpu.pl.tsi`'s. Returns the axes.
        """
        from cellfate_gpu.pl import tsi as plot

        return plot(self, *args, **kwargs)

    # ---------------------------------------------------------------- plots
    def plot_macrostate_composition(self, key: str, *args: Any, **kwargs: Any):
        """Stacked bars: the categories of ``adata.obs[key]`` among each macrostate's cells.

        The other arguments (``macrostate``, ``width``, ``title``, ``labelrot``, ``legend_loc``,
        ``figsize``, ``dpi``, ``save``, ``show``, in CellRank's order) are
        :func:`cellfate_gpu.pl.macrostate_composition`'s; with ``show=False`` the axes are returned.
        """
        from cellfate_gpu.pl import macrostate_composition as plot

        return plot(self, key, *args, **kwargs)

    def plot_schur_matrix(self, *args: Any, **kwargs: Any):
        """Heatmap of the Schur matrix :math:`R`.

        The arguments (``title``, ``cmap``, ``figsize``, ``dpi``, ``save``, ``show``, in CellRank's
        order) are :func:`cellfate_gpu.pl.schur_matrix`'s.
        """
        from cellfate_gpu.pl import schur_matrix as plot

        return plot(self, *args, **kwargs)

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
                mkey = _keys.states_memberships(key)
                if mkey in adata.obsm:
                    setattr(
                        g,
                        "_term_memberships" if attr == "_terminal" else "_init_memberships",
                        Lineage.from_adata(adata, mkey),
                    )
        lkey = _keys.fate_probabilities(bwd)
        if lkey in adata.obsm:
            g._fate_probabilities = Lineage.from_adata(adata, lkey)
        if _keys.absorption_times(bwd) in adata.obsm:
            g._absorption_times = pd.DataFrame(adata.obsm[_keys.absorption_times(bwd)])
        return g


def _cluster_of(name: str, clusters: set[str]) -> str:
    """The cluster a macrostate is named after: ``name``, or ``name`` without its ``_<k>`` repeat suffix."""
    if name in clusters:
        return name
    base, sep, k = name.rpartition("_")
    return base if sep and k.isdigit() else name


def tsi_table(
    names_by_n: dict[int, list[str] | None],
    terminal_states: list[str],
    clusters: list[str],
    *,
    cluster_key: str | None = None,
) -> pd.DataFrame:
    r"""The TSI table from the macrostate names for each number of macrostates :math:`n`.

    ``names_by_n[n]`` lists the names of the :math:`n` macrostates (``None``: not computable).
    Columns (CellRank's): ``number_of_macrostates`` :math:`n`, ``identified_terminal_states``
    :math:`I_n` (distinct clusters among the names that are terminal; a failed :math:`n` takes
    :math:`I` of the next smaller computable one, 0 below all), ``optimal_identification``
    :math:`\min(n, K)`. Rows by increasing :math:`n`; ``attrs`` holds ``terminal_states`` and
    ``cluster_key``.
    """
    known, cats = set(terminal_states), set(clusters)
    rows = []
    for n in sorted(names_by_n):
        names = names_by_n[n]
        found = np.nan if names is None else float(len({_cluster_of(nm, cats) for nm in names} & known))
        rows.append((n, found, min(n, len(known))))
    df = pd.DataFrame(rows, columns=["number_of_macrostates", "identified_terminal_states", "optimal_identification"])
    df["identified_terminal_states"] = df["identified_terminal_states"].ffill().fillna(0.0)
    df.attrs = {"terminal_states": list(terminal_states), "cluster_key": cluster_key}
    return df


def _tsi_score(table: pd.DataFrame, n_max: int) -> float:
    rows = table["number_of_macrostates"] <= n_max
    return float(table.loc[rows, "identified_terminal_states"].sum() / table.loc[rows, "optimal_identification"].sum())


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
