"""``run_benchmarks``: every size and backend (and CellRank) into one table; results as JSON."""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from cellfate_gpu.benchmarking._cellrank import CELLRANK_TOOL, _compare, _run_cellrank
from cellfate_gpu.benchmarking._measure import stream_triad_bandwidth
from cellfate_gpu.benchmarking._pipeline import atlas_h5ad, run_pipeline
from cellfate_gpu.benchmarking._steps import STEPS, closure


def run_benchmarks(
    sizes: Sequence[int] = (10_000, 100_000),
    backends: Sequence[str] = ("scipy",),
    with_cellrank: bool = False,
    out_dir: str | os.PathLike = "bench_out",
    steps: Iterable[str] | None = None,
    *,
    n_lineages: int = 6,
    n_genes: int = 2000,
    solve_kwargs: dict | None = None,
    triad_gbps: float | None = None,
    atlas_dir: str | os.PathLike | None = None,
    atlas: str = "synthetic",
) -> pd.DataFrame:
    """Run the pipeline for every size and backend (and CellRank); one row per (size, tool, step).

    Parameters
    ----------
    sizes
        Numbers of cells of the generated atlas (cached as ``.h5ad``, see :func:`atlas_h5ad`).
    backends
        Backend names; an unavailable one gets rows with ``status='unavailable: <reason>'``.
    with_cellrank
        Also run the CellRank runner (:data:`CELLRANK_RUNNER`) in CellRank's Python 3.12 environment
        (``$CELLRANK_PYTHON`` or ``$CELLRANK_VENV/bin/python``, default
        ``~/.cache/cellfate_gpu/cellrank-venv``), feeding it our terminal states.
    out_dir
        Where ``results.json`` and the CellRank outputs go.
    steps
        Subset of :data:`STEPS` (their prerequisites run too); default all.
    n_lineages, n_genes
        Atlas parameters (drivers are computed over all ``n_genes`` genes).
    solve_kwargs
        Passed to ``compute_fate_probabilities``/``compute_absorption_times``; default
        ``{"tol": 1e-8}`` (the same tolerance CellRank is run with).
    triad_gbps
        Measured bandwidth to compare against; default: :func:`stream_triad_bandwidth` now.
    atlas_dir
        Where atlases are cached (default ``cache_dir()/bench``).
    atlas
        Which generated atlas (:data:`~cellfate_gpu.benchmarking.ATLAS_KINDS`): ``"synthetic"`` or
        ``"user_like"`` (kNN of PCA of noisy counts; it has no velocity layers, so ``kernel_velocity``
        is recorded as failed there). Recorded in every row (column ``atlas``) and in the metadata.

    Returns
    -------
    pandas.DataFrame
        Columns ``n_cells, tool, backend, step, seconds, peak_rss_mib, status`` and, where they
        apply, ``matvecs, spmm_calls, spmm_seconds, spmm_bytes, bw_pct_step, bw_pct_spmm, nnz``; rows
        with ``tool='parity'`` hold the largest differences vs CellRank (``diff_T``,
        ``diff_schur_eigenvalues``, ``diff_fate_probabilities``). ``df.attrs['meta']`` describes the
        machine and the triad bandwidth.
    """
    import anndata as ad

    from cellfate_gpu.backends import available_backends

    sizes = [int(s) for s in sizes]
    if not sizes or min(sizes) < 100:
        raise ValueError(f"sizes must be a non-empty list of cell counts >= 100, got {sizes}.")
    backends = [backends] if isinstance(backends, str) else list(backends)
    if steps is None and atlas == "user_like":  # no velocity layers: the other steps, as the seed
        steps = [s for s in STEPS if s != "kernel_velocity"]
    todo = closure(steps)
    solve_kwargs = {"tol": 1e-8} if solve_kwargs is None else dict(solve_kwargs)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if triad_gbps is None:
        triad_gbps = stream_triad_bandwidth()
    reasons = available_backends()
    records: list[dict] = []
    for n in sizes:
        h5ad = atlas_h5ad(n, n_lineages=n_lineages, n_genes=n_genes, folder=atlas_dir, kind=atlas)
        adata0 = ad.read_h5ad(h5ad)
        reference: dict | None = None
        for be in backends:
            tool = f"cellfate_gpu[{be}]"
            reason = reasons.get(be, "not registered")
            if reason is not None:
                records.append({"n_cells": n, "tool": tool, "backend": be, "step": "end_to_end",
                                "seconds": math.nan, "status": f"unavailable: {reason}"})  # fmt: skip
                continue
            rows, res = run_pipeline(adata0.copy(), be, todo, triad_gbps=triad_gbps, solve_kwargs=solve_kwargs)
            nnz = int(res["T"].nnz) if "T" in res else None
            for r in rows:
                records.append({"n_cells": n, "tool": tool, "backend": be, "nnz": nnz, **r})
            if reference is None and res:
                reference = res
        del adata0
        if with_cellrank:
            cr = _run_cellrank(h5ad, (reference or {}).get("terminal"), out, todo)
            if cr is not None:
                tool = str(cr.get("tool", CELLRANK_TOOL))
                done = [r for r in cr["steps"] if r.get("status") == "ok"]
                # an abandoned step's time counts as a lower bound, so the end-to-end time stays one
                timed_out = [r for r in cr["steps"] if str(r.get("status", "")).startswith("timeout")]
                for r in cr["steps"]:
                    records.append({"n_cells": n, "tool": tool, "backend": "cellrank", **r})
                complete = len(done) == len(todo)
                if complete:
                    e2e_status = "ok"
                elif timed_out and not any(str(r.get("status", "")).startswith("failed") for r in cr["steps"]):
                    # the steps that did not run were skipped for want of a timed-out result
                    skipped = [r["step"] for r in cr["steps"] if r not in done and r not in timed_out]
                    e2e_status = "lower bound: " + ", ".join(r["step"] for r in timed_out) + " timed out"
                    e2e_status += f" ({', '.join(skipped)} skipped)" if skipped else ""
                else:
                    e2e_status = "partial: sum of the steps that ran"
                records.append(
                    {
                        "n_cells": n,
                        "tool": tool,
                        "backend": "cellrank",
                        "step": "end_to_end",
                        "seconds": float(sum(r["seconds"] for r in done + timed_out)),
                        "peak_rss_mib": max((r["peak_rss_mib"] for r in cr["steps"]), default=math.nan),
                        "status": e2e_status,
                    }
                )
                if reference is not None:
                    diffs = _compare(reference, cr)
                    records.append(
                        {
                            "n_cells": n,
                            "tool": "parity",
                            "step": "max_abs_diff",
                            "status": "ok",
                            **{f"diff_{k}": v for k, v in diffs.items()},
                        }
                    )
                    notes = cr.get("notes", [])
                    records[-1]["notes"] = "; ".join(notes)
    df = pd.DataFrame.from_records(records)
    df.insert(0, "atlas", atlas)
    meta = {
        "atlas": atlas,
        "machine": _machine(),
        "triad_gbps": float(triad_gbps),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "command": " ".join(sys.argv),
        "solve_kwargs": solve_kwargs,
        "steps": todo,
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    df.attrs["meta"] = meta
    _write_json(df, out)
    return df


def _machine() -> str:
    mem = ""
    with contextlib.suppress(OSError, ValueError, IndexError):
        with open("/proc/meminfo") as fh:
            mem = f", {int(fh.readline().split()[1]) / 1024**2:.0f} GiB RAM"
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    return f"{cpu}, {os.cpu_count()} cores{mem}, {platform.system()} {platform.release()}"


def _write_json(df: pd.DataFrame, out: Path) -> Path:
    path = out / "results.json"
    rows = json.loads(df.to_json(orient="records"))  # NaN -> null
    path.write_text(json.dumps({"meta": df.attrs.get("meta", {}), "rows": rows}, indent=1))
    return path


def read_results(*paths: str | os.PathLike) -> pd.DataFrame:
    """Rows of one or more ``results.json`` (files or the folders holding them), stacked in order.

    ``attrs['meta']`` is the first file's (machine, triad bandwidth, time), with ``sources`` listing
    every file, so that :func:`write_report` can put runs made one after another (say 10k/100k
    with CellRank, then 1M alone) in one report; each target still compares rows of one run.
    """
    frames, meta = [], {}
    for p in paths:
        path = Path(p)
        path = path / "results.json" if path.is_dir() else path
        if not path.is_file():
            raise FileNotFoundError(f"No benchmark results at {path} (run `cellfate-gpu bench --out DIR` first).")
        data = json.loads(path.read_text())
        frames.append(pd.DataFrame.from_records(data["rows"]))
        meta = meta or dict(data.get("meta", {}))
        meta.setdefault("sources", []).append(str(path))
    df = pd.concat(frames, ignore_index=True)
    df.attrs["meta"] = meta
    return df
