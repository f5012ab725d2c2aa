"""End to end: kernels -> Schur 20 -> 10 macrostates -> 6 terminal states -> fate probabilities ->
absorption times -> drivers, as :func:`cellfate_gpu.benchmarking.run_pipeline` runs it.

The per-step timings of the measured round go to ``benchmark.extra_info['steps']``. Run:
``pytest benchmarks/bench_pipeline.py --benchmark-only`` (see ``benchmarks/conftest.py``).
"""

from __future__ import annotations

from cellfate_gpu.benchmarking import run_pipeline


def test_end_to_end(benchmark, atlas_of, n_cells, backend_name):
    def setup():
        return (atlas_of(n_cells).copy(),), {}

    result: dict = {}

    def pipeline(adata):
        rows, _ = run_pipeline(adata, backend_name)
        result["rows"] = rows
        return rows

    benchmark.pedantic(pipeline, setup=setup, rounds=1, iterations=1)
    rows = result["rows"]
    benchmark.extra_info.update(
        n_cells=n_cells,
        backend=backend_name,
        steps={r["step"]: {k: v for k, v in r.items() if k != "step"} for r in rows},
        peak_rss_mib=max(r["peak_rss_mib"] for r in rows),
        matvecs=int(sum(r.get("matvecs", 0) or 0 for r in rows)),
    )
    assert {r["step"] for r in rows} >= {"kernel_pseudotime", "end_to_end"}
