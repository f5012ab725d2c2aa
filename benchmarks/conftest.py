"""Fixtures of the pytest-benchmark suites (``benchmarks/bench_*.py``).

Run all suites (files are named ``bench_*.py``, so tell pytest to collect them):

.. code-block:: bash

    pytest benchmarks/ -o python_files='bench_*.py' --benchmark-only
    CELLFATE_BENCH_SIZES=10000 pytest benchmarks/bench_kernels.py --benchmark-only   # one size
    CELLFATE_BENCH_HUGE=1 pytest benchmarks/ -o python_files='bench_*.py' --benchmark-only  # adds 1M

Sizes: 10k and 100k cells (``CELLFATE_BENCH_HUGE=1`` adds 1M; ``CELLFATE_BENCH_SIZES=n1,n2``
replaces the list). Backends: every registered backend; unavailable ones are skipped with their
reason. Each benchmark stores ``matvecs``, ``spmm_seconds``, ``peak_rss_mib`` (during the measured
call) and ``wall_s`` in ``benchmark.extra_info``. Benchmarks are not tests: there are no timing
asserts, only checks that the result is meaningful.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import pytest

pytest.importorskip("pytest_benchmark", reason="pytest-benchmark not installed (extra 'bench')")

from cellfate_gpu import settings
from cellfate_gpu.backends import available_backends, get_backend
from cellfate_gpu.benchmarking import MatvecCounter, PeakMemory, _true_terminal_states, atlas_h5ad, counting_backend

settings.verbosity = 1


def _sizes() -> list[int]:
    env = os.environ.get("CELLFATE_BENCH_SIZES")
    if env:
        return [int(x) for x in env.replace(" ", "").split(",") if x]
    sizes = [10_000, 100_000]
    if os.environ.get("CELLFATE_BENCH_HUGE") == "1":
        sizes.append(1_000_000)
    return sizes


SIZES = _sizes()
BACKENDS = list(available_backends())


def _size_id(n: int) -> str:
    return f"{n // 1_000_000}M" if n >= 1_000_000 and n % 1_000_000 == 0 else f"{n // 1000}k"


@pytest.fixture(scope="session", params=SIZES, ids=_size_id)
def n_cells(request) -> int:
    return request.param


@pytest.fixture(scope="session", params=BACKENDS)
def backend_name(request) -> str:
    reason = available_backends().get(request.param)
    if reason is not None:
        pytest.skip(f"backend {request.param!r} unavailable: {reason}")
    return request.param


_COUNTING: dict[str, Any] = {}


def _counting(name: str) -> Any:
    if name not in _COUNTING:  # one view per backend for the session, so cached kernels stay on it
        _COUNTING[name] = counting_backend(get_backend(name))
    return _COUNTING[name]


@pytest.fixture
def backend(backend_name):
    """The current backend as a counting view (pass it as ``backend=``): ``measure`` counts its SpMMs."""
    return _counting(backend_name)


_ATLAS: dict[int, Any] = {}


@pytest.fixture(scope="session")
def atlas_of() -> Callable[[int], Any]:
    """``atlas_of(n)``: the cached 6-lineage, 2000-gene atlas with ``n`` cells (one size kept in memory)."""
    import anndata as ad

    def get(n: int):
        if n not in _ATLAS:
            _ATLAS.clear()
            _T_CACHE.clear()
            _ATLAS[n] = ad.read_h5ad(atlas_h5ad(n, n_lineages=6, n_genes=2000))
        return _ATLAS[n]

    return get


@pytest.fixture
def atlas(atlas_of, n_cells):
    """A fresh copy (estimators write into ``adata``) of the atlas of the current size."""
    return atlas_of(n_cells).copy()


_T_CACHE: dict[tuple[int, str], Any] = {}


@pytest.fixture
def combined_kernel(atlas_of, n_cells, backend_name):
    """``0.8 * PseudotimeKernel(hard) + 0.2 * ConnectivityKernel`` with T on the backend (cached per size)."""
    from cellfate_gpu.kernels import ConnectivityKernel, PseudotimeKernel

    key = (n_cells, backend_name)
    if key not in _T_CACHE:
        adata = atlas_of(n_cells).copy()
        pk = PseudotimeKernel(adata, time_key="pseudotime").compute_transition_matrix(backend=_counting(backend_name))
        ck = ConnectivityKernel(adata).compute_transition_matrix(backend=_counting(backend_name))
        k = 0.8 * pk + 0.2 * ck
        k.compute_transition_matrix()
        _T_CACHE[key] = k
    return _T_CACHE[key]


@pytest.fixture
def true_terminal_states(atlas_of, n_cells) -> dict[str, list[str]]:
    """``{lineage: obs names}`` of the atlas's terminal cells (6 lineages)."""
    return _true_terminal_states(atlas_of(n_cells))


def rounds_for(n: int) -> int:
    """Few rounds for big inputs: 3 at <= 10k cells, 1 above."""
    return 3 if n <= 10_000 else 1


@pytest.fixture
def measure(benchmark, backend_name):
    """``measure(fn, n, setup=None)``: benchmark ``fn`` with pedantic rounds and record extra_info.

    ``setup`` (optional) returns ``(args, kwargs)`` for ``fn`` and is not timed. Matvecs, the time
    inside SpMM (of work on the ``backend`` view or on ``combined_kernel``) and the peak RSS are
    taken from the last round.
    """

    def run(fn: Callable[..., Any], n: int, setup: Callable[[], tuple] | None = None) -> Any:
        stats: dict[str, Any] = {}

        def wrapped(*args, **kwargs):
            mem, counter = PeakMemory(), MatvecCounter()  # counts the SpMMs of counting views (``backend``)
            t0 = time.perf_counter()
            with mem, counter:
                value = fn(*args, **kwargs)
            stats.update(
                wall_s=time.perf_counter() - t0,
                peak_rss_mib=mem.peak_mib,
                matvecs=counter.matvecs,
                spmm_calls=counter.calls,
                spmm_seconds=counter.seconds,
                spmm_bytes=counter.bytes,
            )
            return value

        kwargs: dict[str, Any] = {"rounds": rounds_for(n), "iterations": 1}
        if setup is not None:
            kwargs["setup"] = setup
        value = benchmark.pedantic(wrapped, **kwargs)
        benchmark.extra_info.update(stats, n_cells=n, backend=backend_name)
        return value

    return run
