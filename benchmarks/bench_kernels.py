"""Kernel construction: pseudotime (hard and soft), connectivity, velocity, and the 0.8/0.2 combination.

Run: ``pytest benchmarks/bench_kernels.py --benchmark-only`` (see ``benchmarks/conftest.py``).
"""

from __future__ import annotations

import numpy as np
import pytest

from cellfate_gpu.kernels import ConnectivityKernel, PseudotimeKernel


def _check_stochastic(kernel) -> None:
    T = kernel.transition_matrix
    np.testing.assert_allclose(np.asarray(T.sum(axis=1)).ravel(), 1.0, atol=1e-8)


@pytest.mark.parametrize("scheme", ["hard", "soft"])
def test_pseudotime_kernel(measure, atlas, n_cells, backend, scheme):
    k = measure(
        lambda: PseudotimeKernel(atlas, time_key="pseudotime").compute_transition_matrix(
            threshold_scheme=scheme, frac_to_keep=0.3, backend=backend
        ),
        n_cells,
    )
    _check_stochastic(k)


def test_connectivity_kernel(measure, atlas, n_cells, backend):
    k = measure(lambda: ConnectivityKernel(atlas).compute_transition_matrix(backend=backend), n_cells)
    _check_stochastic(k)


def test_velocity_kernel(measure, atlas, n_cells, backend):
    kernels = pytest.importorskip("cellfate_gpu.kernels._velocity", reason="VelocityKernel not available yet")
    k = measure(
        lambda: kernels.VelocityKernel(atlas).compute_transition_matrix(
            model="deterministic", similarity="correlation", backend=backend
        ),
        n_cells,
    )
    _check_stochastic(k)


def test_kernel_combination(measure, atlas, n_cells, backend):
    pk = PseudotimeKernel(atlas, time_key="pseudotime").compute_transition_matrix(backend=backend)
    ck = ConnectivityKernel(atlas).compute_transition_matrix(backend=backend)

    def combine():
        k = 0.8 * pk + 0.2 * ck
        k.compute_transition_matrix()
        return k

    _check_stochastic(measure(combine, n_cells))
