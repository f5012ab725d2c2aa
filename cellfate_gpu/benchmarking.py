"""Atlas-scale benchmark runner behind ``cellfate-gpu bench``.

Runs the seed pipeline (pseudotime + connectivity kernels → Schur 20 → 10 macrostates → 6 terminal
states → fate probabilities → absorption times → drivers) per backend and size on the generated
atlas, records wall time, peak RSS and matvecs per step, a STREAM-like triad bandwidth of the
machine (SpMV-bound phases are reported as a percentage of it), and optionally runs CellRank 2.3.3
on the same .h5ad in its own Python 3.12 environment (``benchmarks/setup_cellrank_env.sh``) and
records the largest differences of T, Schur eigenvalues and fate probabilities.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["run_benchmarks", "write_report", "stream_triad_bandwidth", "spmv_bytes"]


def stream_triad_bandwidth(n: int = 20_000_000, repeats: int = 5, threads: int | None = None) -> float:
    """Best-of-``repeats`` triad ``a = b + s c`` bandwidth in GB/s over ``threads`` (default: all cores).

    Counts 3 x 8 bytes per element (two reads, one write), as STREAM does; NumPy releases the GIL
    inside the ufuncs, so the threads run on separate cores.
    """
    threads = threads or os.cpu_count() or 1
    b, c = np.ones(n), np.full(n, 2.0)
    a = np.empty(n)
    chunks = np.array_split(np.arange(n), threads)
    bounds = [(int(ch[0]), int(ch[-1]) + 1) for ch in chunks if ch.size]

    def triad(lo_hi):
        lo, hi = lo_hi
        np.multiply(c[lo:hi], 3.0, out=a[lo:hi])
        np.add(a[lo:hi], b[lo:hi], out=a[lo:hi])

    best = np.inf
    with ThreadPoolExecutor(threads) as pool:
        for _ in range(repeats):
            t = time.perf_counter()
            list(pool.map(triad, bounds))
            best = min(best, time.perf_counter() - t)
    # multiply + add make two passes (read c, write a; read a, b, write a): 5 x 8 bytes actually move.
    return 5 * 8 * n / best / 1e9


def spmv_bytes(n: int, nnz: int, ncols: int = 1) -> int:
    """Bytes one CSR SpMM moves at least: values + column indices + row pointers + ``ncols`` vectors in/out."""
    return nnz * (8 + 4) + (n + 1) * 4 + 2 * n * 8 * ncols


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _run_ours(adata, backend: str, n_genes_drivers: int) -> tuple[list[dict], dict]:
    from cellfate_gpu import settings
    from cellfate_gpu.estimators import GPCCA
    from cellfate_gpu.kernels import ConnectivityKernel, PseudotimeKernel

    rows: list[dict] = []
    out: dict[str, Any] = {}

    def step(name: str, fn, **extra):
        t = time.perf_counter()
        value = fn()
        rows.append({"step": name, "seconds": time.perf_counter() - t, "peak_rss_mib": _peak_rss_mib(), **extra})
        return value

    with settings.using(verbosity=1):
        pk = step("kernel_pseudotime", lambda: PseudotimeKernel(adata, time_key="pseudotime")
                  .compute_transition_matrix(backend=backend))
        ck = step("kernel_connectivity", lambda: ConnectivityKernel(adata).compute_transition_matrix(backend=backend))
        combined = step("kernel_combination", lambda: (0.8 * pk + 0.2 * ck).compute_transition_matrix())
        g = GPCCA(combined)
        from cellfate_gpu.linalg import partial_schur

        T = combined.native_transition_matrix
        nnz = combined.transition_matrix.nnz
        t0 = time.perf_counter()
        schur = partial_schur(T, 20, which="LR", backend=backend)
        secs = time.perf_counter() - t0
        rows.append({"step": "schur_20", "seconds": secs, "peak_rss_mib": _peak_rss_mib(), "matvecs": schur.matvecs,
                     "spmv_gbps": spmv_bytes(adata.n_obs, nnz) * schur.matvecs / secs / 1e9})
        step("schur_20_gpcca_basis", lambda: g.compute_schur(n_components=20))
        step("macrostates_10", lambda: g.compute_macrostates(n_states=10, cluster_key="clusters"))
        step("terminal_top6", lambda: g.predict_terminal_states(method="top_n", n_states=6))
        lin = step("fate_probabilities", lambda: g.compute_fate_probabilities(solver="gmres", preconditioner="jacobi",
                                                                              tol=1e-8))
        step("absorption_times", lambda: g.compute_absorption_times(solver="gmres", preconditioner="jacobi", tol=1e-8))
        step("drivers", lambda: g.compute_lineage_drivers(lineages=[lin.names[0]]))
    out["T"] = combined.transition_matrix
    out["eigenvalues"] = np.asarray(schur.eigenvalues)
    out["fate"] = lin.X
    out["lineages"] = lin.names
    out["terminal"] = {str(c): list(adata.obs_names[g.terminal_states.to_numpy() == c]) for c in lin.names}
    return rows, out


def _run_cellrank(h5ad: Path, terminal: dict, out_dir: Path, python: str) -> dict | None:
    runner = Path(__file__).resolve().parents[1] / "benchmarks" / "cellrank_runner.py"
    if not runner.is_file() or not Path(python).exists():
        return None
    tjson = out_dir / f"{h5ad.stem}_terminal.json"
    tjson.write_text(json.dumps(terminal))
    result = out_dir / f"{h5ad.stem}_cellrank.json"
    proc = subprocess.run([python, str(runner), str(h5ad), str(tjson), str(result)], capture_output=True, text=True)
    if proc.returncode != 0:
        print(proc.stderr[-3000:], file=sys.stderr)
        return None
    return json.loads(result.read_text())


def run_benchmarks(sizes=(10_000, 100_000), backends=("scipy",), with_cellrank: bool = False,
                   out_dir: str | os.PathLike = "bench_out", steps: Any = None, n_genes: int = 2000) -> pd.DataFrame:
    """Run the pipeline for every size and backend; return one row per (size, backend, step)."""
    from cellfate_gpu.datasets import synthetic_atlas

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    bandwidth = stream_triad_bandwidth()
    default_venv = Path.home() / ".cache/cellfate_gpu/cellrank-venv/bin/python"
    cellrank_python = os.environ.get("CELLRANK_PYTHON", str(default_venv))
    records = []
    for n in sizes:
        adata = synthetic_atlas(n_cells=n, n_lineages=6, n_genes=n_genes, seed=0)
        h5ad = out / f"atlas_{n}.h5ad"
        ours_ref = None
        for be in backends:
            rows, ours = _run_ours(adata.copy(), be, n_genes)
            ours_ref = ours_ref or ours
            for r in rows:
                records.append({"n_cells": n, "tool": f"cellfate_gpu[{be}]", **r})
        if with_cellrank and ours_ref is not None:
            if not h5ad.is_file():
                adata.write_h5ad(h5ad)
            cr = _run_cellrank(h5ad, ours_ref["terminal"], out, cellrank_python)
            if cr is not None:
                for r in cr["steps"]:
                    records.append({"n_cells": n, "tool": "cellrank-2.3.3", **r})
                diffs = _compare(ours_ref, cr, out)
                records.append({"n_cells": n, "tool": "parity", "step": "max_abs_diff", **diffs})
    df = pd.DataFrame.from_records(records)
    meta = {"machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
            "triad_gbps": bandwidth, "command": " ".join(sys.argv)}
    (out / "results.json").write_text(json.dumps({"meta": meta, "rows": df.to_dict(orient="records")}, indent=1,
                                                  default=float))
    df.attrs["meta"] = meta
    return df


def _compare(ours: dict, cr: dict, out: Path) -> dict:
    diffs: dict[str, float] = {}
    npz = np.load(cr["arrays"], allow_pickle=False)
    import scipy.sparse as sp

    T_cr = sp.csr_matrix((npz["T_data"], npz["T_indices"], npz["T_indptr"]), shape=tuple(npz["T_shape"]))
    diffs["T"] = float(abs(ours["T"] - T_cr).max())
    ev_cr = np.sort_complex(npz["eig_real"] + 1j * npz["eig_imag"])
    ev_ours = np.sort_complex(ours["eigenvalues"])[-len(ev_cr):]
    diffs["schur_eigenvalues"] = float(np.max(np.abs(ev_ours - ev_cr))) if len(ev_cr) else float("nan")
    names = [str(x) for x in npz["fate_names"]]
    order = [names.index(nm) for nm in ours["lineages"] if nm in names]
    if len(order) == len(ours["lineages"]):
        diffs["fate_probabilities"] = float(np.max(np.abs(ours["fate"] - npz["fate"][:, order])))
    return diffs


def write_report(df: pd.DataFrame, out_dir: str | os.PathLike) -> Path:
    """Markdown table (seconds per step, ratios to CellRank) and a log-log PNG of end-to-end time vs cells."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    timed_rows = df[df["tool"] != "parity"]
    table = timed_rows.pivot_table(index=["n_cells", "step"], columns="tool", values="seconds", aggfunc="first")
    e2e = timed_rows.groupby(["n_cells", "tool"])["seconds"].sum().unstack()
    lines = [f"machine: {df.attrs.get('meta', {}).get('machine', '')}; "
             f"triad bandwidth {df.attrs.get('meta', {}).get('triad_gbps', float('nan')):.1f} GB/s", "",
             table.to_markdown(floatfmt=".3f"), "", "End to end (sum of steps, seconds):", "",
             e2e.to_markdown(floatfmt=".2f")]
    if "cellrank-2.3.3" in e2e.columns:
        ratio = e2e["cellrank-2.3.3"].to_numpy()[:, None] / e2e.drop(columns="cellrank-2.3.3")
        lines += ["", "Speed-up over CellRank (end to end):", "", ratio.to_markdown(floatfmt=".1f")]
    parity = df[df["tool"] == "parity"]
    if len(parity):
        lines += ["", "Largest differences vs CellRank:", "", parity.dropna(axis=1, how="all").to_markdown(index=False)]
    md = out / "results.md"
    md.write_text("\n".join(lines) + "\n")
    fig, ax = plt.subplots(figsize=(5, 4))
    for tool in e2e.columns:
        ax.loglog(e2e.index, e2e[tool], marker="o", label=tool)
    ax.set_xlabel("cells")
    ax.set_ylabel("end-to-end seconds")
    ax.legend(frameon=False)
    fig.savefig(out / "time_vs_cells.png", bbox_inches="tight")
    return md
