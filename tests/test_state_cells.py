"""Which cells represent a state: ties at the cut-off, nearly closed sets (issue 13.12)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from cellfate_gpu.estimators import _gpcca_core as core
from cellfate_gpu.estimators._state_cells import quasi_stationary, top_cells


def directed_path(n: int, stay: float = 0.5) -> sp.csr_matrix:
    """A walk along 0 -> 1 -> ... -> n-1 (stays with ``stay``); the last cell is absorbing."""
    rows = np.r_[np.arange(n), np.arange(n - 1)]
    cols = np.r_[np.arange(n), np.arange(1, n)]
    vals = np.r_[np.full(n - 1, stay), 1.0, np.full(n - 1, 1.0 - stay)]
    return sp.csr_matrix((vals, (rows, cols)), shape=(n, n))


def test_without_ties_the_order_is_cellranks():
    rng = np.random.default_rng(0)
    m = rng.uniform(size=500)
    T = directed_path(500)
    np.testing.assert_array_equal(top_cells(m, 30, T), np.argsort(-m, kind="stable")[:30])


@pytest.mark.parametrize("seed", range(5))
def test_tied_cells_are_the_deepest_whatever_the_rounding(seed):
    """A plateau of 120 cells at membership 1 - noise (noise ~1e-12, a different draw per 'backend')."""
    n, plateau, n_cells = 400, 120, 30
    T = directed_path(n)
    m = np.linspace(0.0, 0.9, n)
    m[-plateau:] = 1.0 - np.random.default_rng(seed).uniform(0, 1e-12, plateau)
    chosen = top_cells(m, n_cells, T)
    # the deepest cells are the last ones along the path
    assert set(chosen) == set(range(n - n_cells, n))
    # without T (no depth available) the choice follows the noise
    assert set(top_cells(m, n_cells)) != set(range(n - n_cells, n))


def test_quasi_stationary_is_the_left_perron_vector():
    rng = np.random.default_rng(3)
    A = rng.uniform(size=(40, 40)) * (rng.uniform(size=(40, 40)) < 0.2) + np.eye(40) * 0.1
    T = sp.csr_matrix(A / A.sum(1, keepdims=True))
    cells = np.arange(5, 35)
    p = quasi_stationary(T, cells)
    sub = T.toarray()[np.ix_(cells, cells)]
    w, V = np.linalg.eig(sub.T)
    v = np.abs(np.real(V[:, np.argmax(np.real(w))]))
    np.testing.assert_allclose(p, v / v.sum(), atol=1e-10)
    assert p.sum() == pytest.approx(1.0)


def test_nearly_closed_cells_one_per_block():
    from cellfate_gpu.linalg import partial_schur

    rng = np.random.default_rng(1)
    blocks = [rng.uniform(0.1, 1.0, (s, s)) for s in (30, 40, 50)]
    T = sp.csr_matrix(sp.block_diag([b / b.sum(1, keepdims=True) for b in blocks]))
    res = partial_schur(T, 6, which="LR", backend="scipy")
    X, _ = core.eta_orthonormalize(np.asarray(res.Q), np.asarray(res.R))
    cells = core.nearly_closed_cells(X, np.asarray(res.eigenvalues))
    assert sorted(np.searchsorted([30, 70, 120], cells, side="right")) == [0, 1, 2]


def test_terminal_states_cover_every_nearly_closed_branch_tip():
    """The issue's atlas: 8 non-crisp macrostates, top_n:4 terminal states; the solve must be defined."""
    from cellfate_gpu.datasets import synthetic_atlas
    from cellfate_gpu.estimators import GPCCA
    from cellfate_gpu.kernels import ConnectivityKernel, PseudotimeKernel

    adata = synthetic_atlas(n_cells=4000, n_lineages=4, seed=3)
    pk = PseudotimeKernel(adata, time_key="pseudotime").compute_transition_matrix(backend="scipy")
    ck = ConnectivityKernel(adata).compute_transition_matrix(backend="scipy")
    g = GPCCA(0.8 * pk + 0.2 * ck)
    g.fit(n_states=8)
    g.predict_terminal_states(method="top_n", n_states=4)
    tips = {
        str(adata.obs["clusters"].iloc[np.flatnonzero((g.terminal_states == s).to_numpy())].mode()[0])
        for s in g.terminal_states.cat.categories
    }
    assert tips == {"Lineage_A", "Lineage_B", "Lineage_C", "Lineage_D"}
    g.compute_fate_probabilities()
    F = np.asarray(g.fate_probabilities)
    np.testing.assert_allclose(F.sum(1), 1.0, atol=1e-8)
    assert F.min() >= -1e-10
