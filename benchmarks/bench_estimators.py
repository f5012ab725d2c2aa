"""Estimator steps on the combined kernel: partial Schur (k=20), macrostates (10), fate probabilities
(6 lineages), absorption times and lineage drivers (2000 genes).

Fate probabilities, absorption times and drivers use the atlas's true terminal cells (6 lineages), so
they are measured independently of the macrostate step. Run:
``pytest benchmarks/bench_estimators.py --benchmark-only`` (see ``benchmarks/conftest.py``).
"""

from __future__ import annotations

import numpy as np

from cellfate_gpu.estimators import GPCCA

TOL = 1e-8  # the tolerance CellRank is run with in cellfate_gpu/benchmarking/cellrank_runner.py


def test_partial_schur_k20(measure, combined_kernel, n_cells):
    def setup():
        return (GPCCA(combined_kernel),), {}

    g = measure(lambda g: g.compute_schur(n_components=20), n_cells, setup=setup)
    ev = np.asarray(g.eigendecomposition["D"])
    assert ev.size >= 20 and abs(ev[0] - 1.0) < 1e-6


def test_macrostates_10(measure, combined_kernel, n_cells):
    base = GPCCA(combined_kernel).compute_schur(n_components=20)

    def setup():
        return (base,), {}

    g = measure(lambda g: g.compute_macrostates(n_states=10, cluster_key="clusters"), n_cells, setup=setup)
    assert g.macrostates_memberships.shape == (n_cells, 10)


def _with_terminal(kernel, terminal) -> GPCCA:
    return GPCCA(kernel).set_terminal_states(terminal)


def test_fate_probabilities_6_lineages(measure, combined_kernel, true_terminal_states, n_cells):
    def setup():
        return (_with_terminal(combined_kernel, true_terminal_states),), {}

    lin = measure(lambda g: g.compute_fate_probabilities(tol=TOL), n_cells, setup=setup)
    X = np.asarray(lin.X)
    assert X.shape == (n_cells, 6)
    np.testing.assert_allclose(X.sum(axis=1), 1.0, atol=1e-3)


def test_absorption_times(measure, combined_kernel, true_terminal_states, n_cells):
    def setup():
        return (_with_terminal(combined_kernel, true_terminal_states),), {}

    df = measure(lambda g: g.compute_absorption_times(tol=TOL), n_cells, setup=setup)
    assert (df.to_numpy() >= 0).all()


def test_lineage_drivers_2000_genes(measure, combined_kernel, true_terminal_states, n_cells):
    g = _with_terminal(combined_kernel, true_terminal_states)
    g.compute_fate_probabilities(tol=TOL)
    df = measure(lambda: g.compute_lineage_drivers(), n_cells)
    assert len(df) == 2000
