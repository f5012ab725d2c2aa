"""Fate-probability solvers side by side on one generated atlas: time, iterations, memory, accuracy.

Builds ``T = 0.8 * PseudotimeKernel + 0.2 * ConnectivityKernel`` (the bench pipeline's kernel),
takes the atlas's true terminal cells as terminal states (the user-like atlas: the 30 latest cells of
each lineage), so every solver solves the same system,
and runs ``compute_fate_probabilities`` with each solver value. Per solver it records the wall time
(set-up included), iterations, peak resident memory, the harmonic residual
``max |T F - F|`` over transient cells (an independent check that uses no solver code) and, where a
reference solver ran, ``max |F - F_ref|``.

Usage::

    python benchmarks/bench_fate_solvers.py --atlas synthetic --n-cells 100000 \
        --solvers direct amg-sa amg-rs ilu jacobi --out fate_solvers_100k.json

A solver that exceeds ``--timeout`` seconds (default 900) is stopped (it runs in a child process)
and recorded as such. Timings are measurements on the machine named in the output; no timed
asserts anywhere.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

SOLVERS = {
    "direct": lambda s: s.Direct(),
    "amg-sa": lambda s: s.GMRES(restart=30, preconditioner=s.AMG()),
    "amg-rs": lambda s: s.GMRES(restart=30, preconditioner=s.AMG(kind="rs")),
    "ilu": lambda s: s.GMRES(restart=30, preconditioner=s.ILU()),
    "jacobi": lambda s: s.GMRES(restart=30, preconditioner=s.Jacobi()),
    "auto": lambda s: s.Auto(),
    "ksp-gamg": lambda s: s.KSP(ksp_type="gmres", pc_type="gamg"),
    "ksp-ilu": lambda s: s.KSP(ksp_type="gmres", pc_type="ilu"),
}


def _system(atlas: str, n_cells: int, n_genes: int, seed: int):
    import anndata as ad

    from cellfate_gpu.benchmarking._pipeline import _true_terminal_states, atlas_h5ad
    from cellfate_gpu.kernels import ConnectivityKernel, PseudotimeKernel

    adata = ad.read_h5ad(atlas_h5ad(n_cells, n_genes=n_genes, seed=seed, kind=atlas))
    pk = PseudotimeKernel(adata, time_key="pseudotime").compute_transition_matrix(
        threshold_scheme="hard", frac_to_keep=0.3
    )
    ck = ConnectivityKernel(adata).compute_transition_matrix()
    kernel = 0.8 * pk + 0.2 * ck
    kernel.compute_transition_matrix()
    if "is_terminal" in adata.obs:
        return kernel, _true_terminal_states(adata)
    # The user-like atlas marks no terminal cells: per lineage, its 30 latest cells (what top-30
    # cells of a terminal macrostate are on these atlases).
    obs = adata.obs
    lineages = [c for c in obs["lineage"].cat.categories if c != "Root"]
    terminal = {}
    for name in lineages:
        cells = obs.index[(obs["lineage"] == name).to_numpy()]
        t = obs.loc[cells, "pseudotime"].to_numpy()
        terminal[str(name)] = [str(c) for c in cells[np.argsort(-t, kind="stable")[:30]]]
    return kernel, terminal


def _one(args: tuple) -> dict:
    atlas, n_cells, n_genes, seed, name, tol, backend = args
    from cellfate_gpu.benchmarking._measure import PeakMemory
    from cellfate_gpu.benchmarking._pipeline import harmonic_residual
    from cellfate_gpu.estimators import GPCCA
    from cellfate_gpu.estimators._absorption import fate_probabilities
    from cellfate_gpu.linalg import solvers

    kernel, terminal = _system(atlas, n_cells, n_genes, seed)
    g = GPCCA(kernel)
    g.set_terminal_states(terminal)
    T = kernel.transition_matrix
    row = {"solver": name, "atlas": atlas, "n_cells": n_cells, "nnz_T": int(T.nnz), "backend": backend}
    value = SOLVERS[name](solvers)
    row["value"] = repr(value)
    mem = PeakMemory()
    t0 = time.perf_counter()
    with mem:
        try:
            lin, result = fate_probabilities(backend, T, g.terminal_states, solver=value, tol=tol)
        except Exception as err:  # recorded, not raised: the other solvers go on
            row.update(status=f"failed: {type(err).__name__}: {err}"[:300], peak_rss_mib=mem.peak_mib)
            return row
    row["seconds"] = time.perf_counter() - t0
    row["peak_rss_mib"] = mem.peak_mib
    row.update(iterations=result.iterations, matvecs=result.matvecs, chosen=repr(result.prepared.solver))
    row["worst_relative_residual"] = float(np.max(result.residual_norms))
    F = np.asarray(lin.X)
    row["harmonic_residual"] = harmonic_residual(T, F, g.terminal_states)
    row["status"] = "ok"
    np.save(_fate_path(atlas, n_cells, name), F)
    return row


def _fate_path(atlas: str, n_cells: int, name: str) -> Path:
    folder = Path(os.environ.get("TMPDIR", "/tmp")) / "cellfate_fate_solvers"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{atlas}_{n_cells}_{name}.npy"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--atlas", default="synthetic", choices=["synthetic", "user_like"])
    parser.add_argument("--n-cells", type=int, default=100_000)
    parser.add_argument("--n-genes", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--solvers", nargs="+", default=["direct", "amg-sa", "amg-rs", "ilu", "jacobi"])
    parser.add_argument("--reference", default="direct", help="solver whose F the others are compared with")
    parser.add_argument("--tol", type=float, default=1e-8)
    parser.add_argument("--backend", default="scipy")
    parser.add_argument("--timeout", type=float, default=900.0)
    parser.add_argument("--out", default="fate_solvers.json")
    a = parser.parse_args()
    unknown = [s for s in a.solvers if s not in SOLVERS]
    if unknown:
        parser.error(f"unknown solver(s) {unknown}; choose from {list(SOLVERS)}")
    rows = []
    ctx = mp.get_context("spawn")
    for name in a.solvers:
        started = time.perf_counter()
        with ctx.Pool(1) as pool:
            job = pool.apply_async(_one, ((a.atlas, a.n_cells, a.n_genes, a.seed, name, a.tol, a.backend),))
            try:
                row = job.get(timeout=a.timeout)
            except mp.TimeoutError:
                row = {"solver": name, "status": f"timeout after {a.timeout:.0f} s (system build included)"}
                pool.terminate()
        row["process_seconds"] = time.perf_counter() - started
        print(json.dumps(row), flush=True)
        rows.append(row)
    ref = _fate_path(a.atlas, a.n_cells, a.reference)
    if ref.is_file():
        F_ref = np.load(ref)
        for row in rows:
            path = _fate_path(a.atlas, a.n_cells, row["solver"])
            if row.get("status") == "ok" and path.is_file():
                row[f"max_abs_diff_vs_{a.reference}"] = float(np.max(np.abs(np.load(path) - F_ref)))
    meta = {
        "machine": f"{platform.node()} {platform.machine()}, {os.cpu_count()} cores",
        "load_avg_at_end": os.getloadavg(),
        "command": "python benchmarks/bench_fate_solvers.py " + " ".join(sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "tol": a.tol,
    }
    Path(a.out).write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    for row in rows:
        print(
            f"{row['solver']:>9}  {row.get('seconds', float('nan')):8.2f} s  "
            f"peak {row.get('peak_rss_mib', float('nan')):8.0f} MiB  "
            f"F=TF {row.get('harmonic_residual', float('nan')):.1e}  "
            f"diff {row.get(f'max_abs_diff_vs_{a.reference}', float('nan')):.1e}  {row.get('status')}"
        )


if __name__ == "__main__":
    main()
