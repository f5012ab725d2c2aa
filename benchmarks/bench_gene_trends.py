"""Gene trends: the batched GAM (all genes of a lineage in one fit) against per-gene pygam.

CellRank's ``gene_trends`` / ``heatmap`` fit one pygam ``GammaGAM`` per gene and lineage (CellRank's
default ``cellrank.models.GAM``: 6 cubic B-splines, ``lam=3``, derivative + l2 penalties, weights =
fate probabilities, 200 test points, confidence interval). This script times

- ours: :func:`cellfate_gpu.models.fit_trends` for every gene and lineage, with intervals;
- pygam: the same model gene by gene on a random sample of genes per lineage (fit, predict and
  confidence interval, the work CellRank does per model), extrapolated to all genes;

and checks that the sampled genes agree (max error relative to each curve's scale).

Wall and CPU (``time.process_time``) seconds are both reported: on a shared machine the CPU
ratio is the fairer one. Run:
``python benchmarks/bench_gene_trends.py --cells 100000 --genes 2000 --lineages 6 --sample 4``
(``--backend cupy`` on a GPU). Prints one JSON object; ``--out`` writes it to a file as well.
"""

from __future__ import annotations

import argparse
import json
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cells", type=int, default=100_000)
    ap.add_argument("--genes", type=int, default=2000)
    ap.add_argument("--lineages", type=int, default=6)
    ap.add_argument("--sample", type=int, default=4, help="pygam genes per lineage (timed, then extrapolated)")
    ap.add_argument("--backend", default="scipy")
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
        result["pygam"] = "not installed"
    else:
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
    line = json.dumps(result)
    print(line)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(line + "\n")


if __name__ == "__main__":
    main()
