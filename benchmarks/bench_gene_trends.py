"""Gene trends: the batched GAM (all genes of a lineage in one fit) against per-gene pygam.

CellRank's ``gene_trends`` / ``heatmap`` fit one pygam ``GammaGAM`` per gene and lineage (CellRank's
default ``cellrank.models.GAM``: 6 cubic B-splines, ``lam=3``, derivative + l2 penalties, weights =
fate probabilities, 200 test points, confidence interval). This script times

- ours: :func:`cellfate_gpu.models.fit_trends` for every gene and lineage, with intervals;
- pygam: the same model gene by gene on a random sample of genes per lineage (fit, predict and
  confidence interval, the work CellRank does per model), extrapolated to all genes;

and checks that the sampled genes agree (max error relative to each curve's scale).

``--cellrank`` adds CellRank itself, side by side: the same AnnData goes to an .h5ad (pseudotime,
``obsm['lineages_fwd']`` named by the categories of ``obs['term_states_fwd']`` as CellRank reads them,
expression in ``X``) and ``benchmarks/cellrank_gene_trends.py`` runs ``cellrank.pl.gene_trends`` with a
``cellrank.models.GAM`` and CellRank's defaults on ``--cellrank-sample`` random genes (every lineage) in
CellRank's Python 3.12 venv (``cellfate_gpu/benchmarking/setup_cellrank_env.sh``; ``--cellrank-python``
or ``$CELLRANK_PYTHON`` picks the interpreter), once per ``--cellrank-n-jobs`` value. CellRank's fitting
time per model (what its ``_fit_bulk`` logs) is extrapolated linearly to all genes x lineages; its curves
and confidence intervals are compared with ours on the sampled genes.

Wall and CPU (``time.process_time``) seconds are both reported: on a shared machine the CPU
ratio is the fairer one. Run:
``python benchmarks/bench_gene_trends.py --cells 100000 --genes 2000 --lineages 6 --sample 4``
(``--backend cupy`` on a GPU; ``--sample 0 --cellrank --cellrank-sample 12`` for CellRank
itself). Prints one JSON object; ``--out`` writes it to a file as well.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import tempfile
import time

import numpy as np
import scipy.sparse as sp


def make_adata(n_cells: int, n_genes: int, n_lineages: int, seed: int = 0, density: float = 0.3):
    """Pseudotime, soft fate probabilities and sparse non-negative expression with smooth trends."""
    import anndata as ad

    from cellfate_gpu.lineage import Lineage

    rng = np.random.default_rng(seed)
    t = rng.uniform(0, 1, n_cells)
    branch = rng.integers(0, n_lineages, n_cells)
    logits = np.where(np.arange(n_lineages)[None, :] == branch[:, None], 5.0 * t[:, None], 0.0)
    logits += rng.normal(0, 0.3, logits.shape)
    P = np.exp(logits - logits.max(1, keepdims=True))
    P /= P.sum(1, keepdims=True)
    nnz_per_gene = int(density * n_cells)
    rows = np.concatenate([rng.choice(n_cells, nnz_per_gene, replace=False) for _ in range(n_genes)])
    cols = np.repeat(np.arange(n_genes), nnz_per_gene)
    freq = rng.uniform(1, 6, n_genes)
    phase = rng.uniform(0, np.pi, n_genes)
    vals = np.exp(np.sin(freq[cols] * t[rows] + phase[cols])) * rng.gamma(3.0, 1 / 3.0, rows.size)
    X = sp.csr_matrix((vals.astype(np.float32), (rows, cols)), shape=(n_cells, n_genes))
    adata = ad.AnnData(X)
    adata.var_names = [f"gene_{i}" for i in range(n_genes)]
    adata.obs["latent_time"] = t
    Lineage(P, names=[f"Lineage_{i}" for i in range(n_lineages)]).to_adata(adata, "lineages_fwd")
    return adata


def _uptime() -> str:
    """The machine's load line (``uptime``), recorded with each run on a shared machine."""
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError) as err:
        return f"uptime failed: {err}"


def _cellrank_python(arg: str | None) -> str:
    """``--cellrank-python``, else ``$CELLRANK_PYTHON``, else the venv of ``setup_cellrank_env.sh``."""
    if arg:
        return arg
    if os.environ.get("CELLRANK_PYTHON"):
        return os.environ["CELLRANK_PYTHON"]
    venv = os.environ.get("CELLRANK_VENV", str(pathlib.Path.home() / ".cache/cellfate_gpu/cellrank-venv"))
    return str(pathlib.Path(venv) / "bin" / "python")


def compare_curves(trends, npz) -> dict:
    r"""Worst disagreement between our trends and CellRank's on the genes CellRank fitted.

    For every gene and lineage: :math:`\max_t |\hat y_t - y^{CR}_t| / \max_t |y^{CR}_t|` for the mean and
    the same with both interval bounds (scaled by the largest bound), and the largest difference of the
    test grids.
    """
    names, lins = [str(g) for g in npz["genes"]], [str(ln) for ln in npz["lineages"]]
    worst = {"mean": (0.0, None, None), "ci": (0.0, None, None)}
    grid, n_over, n_missing = 0.0, 0, 0
    for j, lin in enumerate(lins):
        lt = trends[lin]
        grid = max(grid, float(np.abs(lt.x_test - npz["x_test"][j]).max()))
        for i, g in enumerate(names):
            ref_y, ref_ci = npz["y_test"][i, j], npz["conf_int"][i, j]
            if not np.isfinite(ref_y).all():
                n_missing += 1
                continue
            errs = {
                "mean": np.abs(lt.mean[g].to_numpy() - ref_y).max() / max(np.abs(ref_y).max(), 1e-300),
                "ci": np.abs(lt.conf_int[:, lt.mean.columns.get_loc(g)] - ref_ci).max()
                / max(np.abs(ref_ci).max(), 1e-300),
            }
            n_over += int(max(errs.values()) > 1e-6)
            for k, e in errs.items():
                if e > worst[k][0]:
                    worst[k] = (float(e), g, lin)
    return {
        "max_rel_err_mean": worst["mean"][0],
        "worst_mean_at": worst["mean"][1:],
        "max_rel_err_ci": worst["ci"][0],
        "worst_ci_at": worst["ci"][1:],
        "curves_over_1e-6": n_over,
        "curves_compared": len(names) * len(lins) - n_missing,
        "cellrank_failed_curves": n_missing,
        "max_abs_grid_diff": grid,
    }


def run_cellrank(adata, trends, lineages, args, t_ours: float, c_ours: float) -> dict:
    """CellRank's ``gene_trends`` on a gene sample in its own venv; times, extrapolation, agreement."""
    import pandas as pd

    python = _cellrank_python(args.cellrank_python)
    if not pathlib.Path(python).exists():
        return {"error": f"CellRank's Python {python!r} not found; run cellfate_gpu/benchmarking/setup_cellrank_env.sh"}
    rng = np.random.default_rng(2)
    sample = [adata.var_names[j] for j in np.sort(rng.choice(adata.n_vars, args.cellrank_sample, replace=False))]
    # CellRank names the columns of obsm['lineages_fwd'] by the categories of obs['term_states_fwd']
    P = np.asarray(adata.obsm["lineages_fwd"])
    codes = np.where(P.max(1) > 0.9, P.argmax(1), -1)
    adata.obs["term_states_fwd"] = pd.Categorical.from_codes(codes, categories=lineages)
    adata.uns["term_states_fwd_colors"] = np.asarray(adata.uns["lineages_fwd_colors"], dtype=object)
    script = pathlib.Path(__file__).with_name("cellrank_gene_trends.py")
    with tempfile.TemporaryDirectory() as tmp:
        h5ad, npz_path = pathlib.Path(tmp, "adata.h5ad"), pathlib.Path(tmp, "cellrank.npz")
        t0 = time.perf_counter()
        adata.write_h5ad(h5ad)
        write_s = time.perf_counter() - t0
        cmd = [python, str(script), str(h5ad), "--genes", ",".join(sample), "--out", str(npz_path)]
        cmd += ["--n-jobs", args.cellrank_n_jobs]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            return {"error": f"exit {proc.returncode}", "stderr_tail": proc.stderr[-3000:]}
        out = json.loads(proc.stdout.strip().splitlines()[-1])
        with np.load(npz_path) as npz:
            out["agreement"] = compare_curves(trends, npz)
    total = args.genes * len(lineages)
    seen: set[int] = set()
    for run in out["runs"]:
        # a repeated n_jobs > 1 run finds loky's workers started (and cellrank imported) by the first
        run["warm_workers"] = run["n_jobs"] > 1 and run["n_jobs"] in seen
        seen.add(run["n_jobs"])
        per = run["fit_s"] / run["models"]
        run["per_model_s"] = round(per, 4)
        run["extrapolated_fit_s"] = round(per * total, 1)
        run["speedup_wall"] = round(per * total / t_ours, 1)
        if run["fit_cpu_workers_s"] is not None:
            cpu = (run["fit_cpu_main_s"] + run["fit_cpu_workers_s"]) / run["models"] * total
            run["extrapolated_cpu_s"] = round(cpu, 1)
            run["speedup_cpu"] = round(cpu / c_ours, 1)
    serial = [r for r in out["runs"] if r["n_jobs"] == 1]
    if serial:
        # CellRank's best case on this 2-core machine: its serial fitting split perfectly over both cores
        ideal = serial[0]["extrapolated_fit_s"] / 2
        out["ideal_two_core_s"] = round(ideal, 1)
        out["speedup_vs_ideal_two_core"] = round(ideal / t_ours, 1)
    out.update(
        sample_genes=sample,
        h5ad_write_s=round(write_s, 2),
        extrapolation=(
            f"CellRank's fitting time (its _fit_bulk log: prepare, fit, predict, conf. int.) on "
            f"{len(sample)} genes x {len(lineages)} lineages, scaled linearly to {args.genes} x {len(lineages)} "
            "models (wall and CPU of this process plus its loky workers over the fitting alike); the figure "
            "gene_trends draws is not extrapolated (call_s - fit_s on the sample)"
        ),
    )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cells", type=int, default=100_000)
    ap.add_argument("--genes", type=int, default=2000)
    ap.add_argument("--lineages", type=int, default=6)
    ap.add_argument("--sample", type=int, default=4, help="pygam genes per lineage (timed, then extrapolated)")
    ap.add_argument("--backend", default="scipy")
    ap.add_argument("--cellrank", action="store_true", help="run CellRank's gene_trends side by side")
    ap.add_argument("--cellrank-sample", type=int, default=12, help="genes CellRank fits (every lineage)")
    ap.add_argument("--cellrank-n-jobs", default="1,2,2", help="comma-separated n_jobs, one CellRank run each")
    ap.add_argument("--cellrank-python", default=None, help="CellRank's interpreter (default $CELLRANK_PYTHON)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    from cellfate_gpu.models import GAM, fit_trends, lineage_design

    t0 = time.perf_counter()
    adata = make_adata(args.cells, args.genes, args.lineages)
    t_data = time.perf_counter() - t0
    genes = list(adata.var_names)
    lineages = [f"Lineage_{i}" for i in range(args.lineages)]
    model = GAM(adata, backend=args.backend)
    t0, c0 = time.perf_counter(), time.process_time()
    trends = fit_trends(adata, model, genes, lineages, "latent_time", show_progress_bar=False)
    t_ours, c_ours = time.perf_counter() - t0, time.process_time() - c0

    result = {
        "cells": args.cells,
        "genes": args.genes,
        "lineages": args.lineages,
        "backend": args.backend,
        "data_s": round(t_data, 2),
        "ours_s": round(t_ours, 2),
        "ours_cpu_s": round(c_ours, 2),
    }
    try:
        import pygam
    except ImportError:
        pygam = None
        result["pygam"] = "not installed"
    if pygam is not None and args.sample > 0:
        rng = np.random.default_rng(1)
        per_fit, per_cpu, worst_mean, worst_ci = [], [], 0.0, 0.0
        for lin in lineages:
            d = lineage_design(adata, lin, "latent_time")
            for j in rng.choice(args.genes, args.sample, replace=False):
                y = adata.X[d.cells, j].toarray().ravel().astype(np.float64)
                t1, c1 = time.perf_counter(), time.process_time()
                term = pygam.s(0, spline_order=3, n_splines=6, lam=3, penalties=["derivative", "l2"])
                gam = pygam.GammaGAM(term, max_iter=2000, verbose=False).fit(d.x[:, None], y, weights=d.w)
                pred = gam.predict(d.x_test[:, None])
                ci = gam.confidence_intervals(d.x_test[:, None])
                per_fit.append(time.perf_counter() - t1)
                per_cpu.append(time.process_time() - c1)
                scale = max(1.0, float(np.abs(pred).max()))
                worst_mean = max(worst_mean, float(np.abs(trends[lin].mean.iloc[:, j].to_numpy() - pred).max()) / scale)
                worst_ci = max(worst_ci, float(np.abs(trends[lin].conf_int[:, j] - ci).max()) / scale)
        per = float(np.mean(per_fit))
        extrapolated = per * args.genes * args.lineages
        extrapolated_cpu = float(np.mean(per_cpu)) * args.genes * args.lineages
        result.update(
            pygam_per_fit_s=round(per, 4),
            pygam_fits_timed=len(per_fit),
            pygam_extrapolated_s=round(extrapolated, 1),
            pygam_extrapolated_cpu_s=round(extrapolated_cpu, 1),
            speedup=round(extrapolated / t_ours, 1),
            speedup_cpu=round(extrapolated_cpu / c_ours, 1),
            max_rel_err_mean=worst_mean,
            max_rel_err_ci=worst_ci,
        )
    if args.cellrank:
        result["uptime_before"] = _uptime()
        result["cellrank"] = run_cellrank(adata, trends, lineages, args, t_ours, c_ours)
        result["uptime_after"] = _uptime()
    line = json.dumps(result)
    print(line)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(line + "\n")


if __name__ == "__main__":
    main()
