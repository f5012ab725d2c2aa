"""Smoke tests of the benchmark runner (500 cells, scipy, no CellRank) and its byte/bandwidth helpers."""

import json
import math
import sys
import threading

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from cellfate_gpu import benchmarking as bm
from cellfate_gpu.backends import Backend, get_backend


def test_spmv_bytes_formula():
    # 12 bytes per stored entry, 4 per row pointer, 16 per row and column (read X, write Y)
    assert bm.spmv_bytes(10, 30) == 12 * 30 + 4 * 11 + 16 * 10
    assert bm.spmv_bytes(10, 30, ncols=3) - bm.spmv_bytes(10, 30) == 2 * 16 * 10


def test_matvec_counter_counts_columns_and_restores_backend():
    be = get_backend("scipy")
    A = sp.random(50, 50, density=0.1, format="csr", random_state=0)
    with bm.MatvecCounter(be) as c:
        counted = c.backend  # a private counting view; the cached backend is never modified
        y = counted.spmm(A, np.ones(50))
        Y = counted.spmm(A, np.ones((50, 4)))
        be.spmm(A, np.ones(50))  # the cached instance, which nobody asked to count
    np.testing.assert_allclose(y, A @ np.ones(50))
    np.testing.assert_allclose(Y, A @ np.ones((50, 4)))
    assert (c.calls, c.matvecs) == (2, 5)
    assert c.bytes == bm.spmv_bytes(50, A.nnz, 1) + bm.spmv_bytes(50, A.nnz, 4)
    assert "spmm" not in vars(be)  # the class method is back
    be.spmm(A, np.ones(50))
    counted.spmm(A, np.ones(50))  # no counter open: nothing is counted
    assert c.calls == 2


def test_matvec_counters_nest_and_stay_in_their_context():
    be = bm.counting_backend(get_backend("scipy"))
    assert be is not get_backend("scipy") and type(be) is type(get_backend("scipy"))
    A = sp.random(30, 30, density=0.2, format="csr", random_state=1)
    with bm.MatvecCounter() as outer:
        be.spmm(A, np.ones((30, 2)))
        with bm.MatvecCounter() as inner:
            be.spmm(A, np.ones(30))
        with pytest.raises(RuntimeError, match="already open"), outer:
            pass
    assert (outer.calls, outer.matvecs) == (2, 3) and (inner.calls, inner.matvecs) == (1, 1)

    seen = []
    with bm.MatvecCounter() as main:
        thread = threading.Thread(target=lambda: seen.append(be.spmm(A, np.ones(30))))
        thread.start()
        thread.join()
    assert len(seen) == 1 and main.calls == 0  # a new thread starts with an empty context
    with pytest.raises(ValueError, match="without a backend"):
        _ = bm.MatvecCounter().backend


def test_only_the_counting_view_counts_and_no_method_is_replaced():
    cached = get_backend("scipy")
    view = bm.counting_backend(cached)
    A = sp.random(40, 40, density=0.1, format="csr", random_state=2)
    X = np.arange(80.0).reshape(40, 2)
    with bm.MatvecCounter() as c:
        np.testing.assert_array_equal(cached.spmm(A, X), A @ X)
        assert c.calls == 0  # the cached instance is never counted
        np.testing.assert_array_equal(view.spmm(A, X), A @ X)
        assert (c.calls, c.matvecs) == (1, 2)
    # the view is the same class with the counting flag set, not a monkeypatched method
    assert type(view) is type(cached) and view is not cached
    assert "spmm" not in vars(view) and "_spmm" not in vars(view) and "spmm" not in vars(cached)
    assert view._counts_spmm and not cached._counts_spmm and not get_backend("scipy")._counts_spmm
    assert type(view).spmm is Backend.spmm  # the final template method; backends implement _spmm
    assert bm.counting_backend(view)._counts_spmm and not cached._counts_spmm


def test_step_closure_adds_prerequisites_in_pipeline_order():
    assert bm.closure(["drivers"]) == [
        "kernel_pseudotime",
        "kernel_connectivity",
        "kernel_combination",
        "schur_20",
        "macrostates_10",
        "terminal_top6",
        "fate_probabilities",
        "drivers",
    ]
    assert bm.closure(None) == list(bm.STEPS)
    with pytest.raises(ValueError, match="Unknown benchmark steps"):
        bm.closure(["schur_99"])


def test_triad_bandwidth_is_positive_and_finite():
    gbps = bm.stream_triad_bandwidth(n=200_000, repeats=2, threads=2)
    assert math.isfinite(gbps) and gbps > 0
    with pytest.raises(ValueError):
        bm.stream_triad_bandwidth(n=0)


def test_run_benchmarks_500_cells_scipy(tmp_path):
    df = bm.run_benchmarks(
        sizes=(500,),
        backends=("scipy",),
        with_cellrank=False,
        out_dir=tmp_path,
        n_genes=50,
        triad_gbps=10.0,
        atlas_dir=tmp_path / "atlas",
    )
    ours = df[df["tool"] == "cellfate_gpu[scipy]"]
    assert set(ours["step"]) == {*bm.STEPS, "end_to_end"}
    assert (ours["n_cells"] == 500).all()
    # kernels that exist produce positive timings and a positive memory peak
    ok = ours[ours["status"] == "ok"]
    assert {"kernel_pseudotime", "kernel_connectivity", "kernel_combination"} <= set(ok["step"])
    assert (ok["seconds"] > 0).all() and (ok["peak_rss_mib"] > 0).all()
    # every non-ok step says why
    assert ours.loc[ours["status"] != "ok", "status"].str.len().gt(5).all()
    # the combined T has the kNN graph's sparsity (at most 2x15 neighbours + the diagonal)
    nnz = int(ours["nnz"].iloc[0])
    assert 500 * 15 <= nnz <= 500 * 31
    # matvec-counted steps carry consistent byte counts
    if "matvecs" in ours:
        mv = ours[ours["matvecs"].notna()]
        assert (mv["spmm_bytes"] > 0).all()
        # the Schur step multiplies the whole T: per vector at least x and y (2 x 8 bytes x n)
        schur = mv[mv["step"] == "schur_20"]
        assert len(schur) == 1 and (schur["spmm_bytes"] >= schur["matvecs"] * 16 * 500).all()
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["meta"]["triad_gbps"] == 10.0 and len(data["rows"]) == len(df)
    again = bm.read_results(tmp_path, tmp_path / "results.json")  # a folder and a file: two runs stacked
    assert len(again) == 2 * len(df) and again.attrs["meta"]["triad_gbps"] == 10.0
    assert list(again["seconds"].iloc[: len(df)]) == pytest.approx(list(df["seconds"]), nan_ok=True)
    with pytest.raises(FileNotFoundError, match="No benchmark results"):
        bm.read_results(tmp_path / "missing")

    md = bm.write_report(df, tmp_path)
    text = md.read_text()
    assert "## Seconds per step" in text and "## Targets" in text
    assert "not measured" in text  # no CellRank, no 100k: the speed-up targets are reported as such
    assert (tmp_path / "time_vs_cells.png").stat().st_size > 1000


def test_gpu_projection_formula():
    df = pd.DataFrame(
        [
            {"n_cells": 1000, "tool": "cellfate_gpu[scipy]", "step": "schur_20", "matvecs": 100.0, "nnz": 30_000},
            {"n_cells": 1000, "tool": "cellfate_gpu[scipy]", "step": "drivers", "matvecs": np.nan, "nnz": 30_000},
        ]
    )
    proj = bm.gpu_projection(df, sizes=(10_000,), bandwidths={"X": 1000.0}, k=20)
    row = proj[proj["step"] == "schur_20"].iloc[0]
    N, m = 10_000, 100
    jbar = (20 + max(2 * 20, 20 + 15)) / 2  # (k + ncv) / 2 basis vectors per orthogonalisation
    expected = (m * (12 * 30 * N + 20 * N) + m * 4 * jbar * N * 8) / 1e12
    assert row["X s"] == pytest.approx(expected)


FAKE_CELLRANK = r'''
"""Stands in for the CellRank interpreter: ignores the runner, writes what the runner would."""
import json, sys
import numpy as np
args = sys.argv[1:]
out = args[args.index("--out") + 1]
steps = args[args.index("--steps") + 1].split(",")
rows = [{"step": s, "seconds": 2.0, "peak_rss_mib": 100.0, "status": "ok"} for s in steps]
for r in rows:
    if r["step"] == "absorption_times":
        r.update(seconds=7.0, status="timeout: abandoned after 7 s")
np.savez(out + ".npz")
json.dump({"tool": "cellrank-fake", "steps": rows, "arrays": out + ".npz", "notes": ["fake"]}, open(out + ".json", "w"))
'''


def test_cellrank_timeout_makes_end_to_end_a_lower_bound(tmp_path, monkeypatch):
    fake = tmp_path / "fake_python"
    fake.write_text(f"#!{sys.executable}" + FAKE_CELLRANK)  # this interpreter: it has NumPy
    fake.chmod(0o755)
    monkeypatch.setenv("CELLRANK_PYTHON", str(fake))
    steps = ("kernel_pseudotime", "kernel_connectivity", "kernel_combination", "fate_probabilities",
             "absorption_times")  # fmt: skip
    df = bm.run_benchmarks(
        sizes=(400,), backends=("scipy",), with_cellrank=True, out_dir=tmp_path, steps=steps,
        n_genes=20, triad_gbps=10.0, atlas_dir=tmp_path / "atlas",
    )  # fmt: skip
    cr = df[df["tool"] == "cellrank-fake"].set_index("step")
    assert cr.loc["absorption_times", "status"].startswith("timeout")
    # the abandoned step's 7 s count, so the end-to-end time is a lower bound of CellRank's
    n_ran = len(cr) - 1
    assert cr.loc["end_to_end", "seconds"] == pytest.approx(2.0 * (n_ran - 1) + 7.0)
    assert cr.loc["end_to_end", "status"] == "lower bound: absorption_times timed out"


def test_cellrank_runner_ships_in_the_package_and_shares_the_step_list(tmp_path):
    """The runner lives inside the package (so an installed wheel has it) and needs no cellfate_gpu import."""
    import subprocess
    from pathlib import Path

    import cellfate_gpu

    runner = Path(bm.CELLRANK_RUNNER)
    assert runner.is_file()
    assert Path(cellfate_gpu.__file__).parent in runner.parents
    # run it the way CellRank's interpreter does: isolated (-I: no cwd, no user site), from elsewhere;
    # --help parses the arguments and exits before CellRank is imported
    proc = subprocess.run(
        [sys.executable, "-I", str(runner), "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    flat = "".join(proc.stdout.split())  # argparse wraps the comma-separated list anywhere
    missing = [step for step in bm.STEPS if step not in flat]
    assert not missing, proc.stdout
