"""Smoke tests of the benchmark runner (500 cells, scipy, no CellRank) and its byte/bandwidth helpers."""

import json
import math

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from cellfate_gpu import benchmarking as bm
from cellfate_gpu.backends import get_backend


def test_spmv_bytes_formula():
    # 12 bytes per stored entry, 4 per row pointer, 16 per row and column (read X, write Y)
    assert bm.spmv_bytes(10, 30) == 12 * 30 + 4 * 11 + 16 * 10
    assert bm.spmv_bytes(10, 30, ncols=3) - bm.spmv_bytes(10, 30) == 2 * 16 * 10


def test_matvec_counter_counts_columns_and_restores_backend():
    be = get_backend("scipy")
    A = sp.random(50, 50, density=0.1, format="csr", random_state=0)
    with bm.MatvecCounter(be) as c:
        y = be.spmm(A, np.ones(50))
        Y = be.spmm(A, np.ones((50, 4)))
    np.testing.assert_allclose(y, A @ np.ones(50))
    np.testing.assert_allclose(Y, A @ np.ones((50, 4)))
    assert (c.calls, c.matvecs) == (2, 5)
    assert c.bytes == bm.spmv_bytes(50, A.nnz, 1) + bm.spmv_bytes(50, A.nnz, 4)
    assert "spmm" not in vars(be)  # the class method is back
    be.spmm(A, np.ones(50))
    assert c.calls == 2


def test_step_closure_adds_prerequisites_in_pipeline_order():
    assert bm._closure(["drivers"]) == [
        "kernel_pseudotime",
        "kernel_connectivity",
        "kernel_combination",
        "schur_20",
        "macrostates_10",
        "terminal_top6",
        "fate_probabilities",
        "drivers",
    ]
    assert bm._closure(None) == list(bm.STEPS)
    with pytest.raises(ValueError, match="Unknown benchmark steps"):
        bm._closure(["schur_99"])


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
    expected = (m * (12 * 30 * N + 20 * N) + m * 4 * 30.5 * N * 8) / 1e12
    assert row["X s"] == pytest.approx(expected)
