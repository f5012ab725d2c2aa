"""CellRank's own ``gene_trends`` on an .h5ad, timed; run by file path in CellRank's Python 3.12 venv.

``bench_gene_trends.py --cellrank`` writes the AnnData (``obs[time_key]``, ``obsm['lineages_fwd']`` with
the lineage names as the categories of ``obs['term_states_fwd']``, expression in ``X``) and runs::

    $CELLRANK_VENV/bin/python benchmarks/cellrank_gene_trends.py ADATA.h5ad --genes g1,g2 --out cr.npz

For every ``--n-jobs`` value this calls ``cellrank.pl.gene_trends(adata, cellrank.models.GAM(adata),
genes, time_key=..., n_jobs=n, return_models=True)`` with CellRank's defaults otherwise (every lineage,
``conf_int=True``, 200 test points, ``weight_threshold=(0.01, 0.01)``, GAM: 6 cubic splines, gamma
distribution, log link, ``lam=3``, derivative + l2 penalties, ``max_iter=2000``) and records

- ``fit_s``: CellRank's own fitting time (the ``Finish (...s)`` its ``_fit_bulk`` logs: prepare, fit,
  predict and confidence interval of every gene and lineage, through joblib/loky for ``n_jobs > 1``);
- ``call_s``: the whole ``gene_trends`` call (fitting plus the figure, drawn with the Agg backend);
- CPU seconds of this process and of its loky worker processes (``psutil``; ``None`` without it), over
  the fitting (read at the log records that bracket it) and over the whole call.

The curves ``y_test``, ``conf_int`` and ``x_test`` of the first run go to ``--out`` (.npz); the timings
are printed as one JSON object. cellfate_gpu is not needed (nor installed) here.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import time

import numpy as np


class _FitClock(logging.Handler):
    """Times CellRank's fitting from its own log records.

    ``_fit_bulk`` logs ``Computing trends using %d core(s)`` before and ``Finish (%.2fs)`` after it
    fits; at each the CPU seconds (this process and its workers) are read, and the logged wall time kept.
    """

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.seconds: float | None = None
        self.cpu_start = self.cpu_end = (0.0, None)

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        if msg.startswith("Computing trends using"):
            self.cpu_start = _cpu_seconds()
        m = re.search(r"Finish \(([0-9.]+)s\)", msg)
        if m:
            self.cpu_end = _cpu_seconds()
            self.seconds = float(m.group(1))


def _cpu_seconds() -> tuple[float, float | None]:
    """CPU seconds (user + system) of this process and of its live children (loky workers)."""
    own = time.process_time()
    try:
        import psutil
    except ImportError:
        return own, None
    kids = 0.0
    for child in psutil.Process().children(recursive=True):
        try:
            t = child.cpu_times()
        except psutil.Error:
            continue
        kids += t.user + t.system
    return own, kids


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("h5ad")
    ap.add_argument("--genes", required=True, help="comma-separated gene names")
    ap.add_argument("--time-key", default="latent_time")
    ap.add_argument("--n-jobs", default="1,2", help="comma-separated n_jobs values, one timed run each")
    ap.add_argument("--out", required=True, help=".npz for the curves of the first run")
    args = ap.parse_args()

    import anndata as ad
    import cellrank as cr
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    handler = _FitClock()
    cr_logger = logging.getLogger("cellrank.pl._utils")
    cr_logger.addHandler(handler)
    cr_logger.setLevel(logging.INFO)

    t0 = time.perf_counter()
    adata = ad.read_h5ad(args.h5ad)
    read_s = time.perf_counter() - t0
    genes = args.genes.split(",")
    lineages = list(cr.Lineage.from_adata(adata).names)
    runs, saved = [], False
    for n_jobs in (int(v) for v in args.n_jobs.split(",")):
        handler.seconds = None
        own0, kids0 = _cpu_seconds()
        t0 = time.perf_counter()
        models = cr.pl.gene_trends(
            adata,
            model=cr.models.GAM(adata),
            signals=genes,
            time_key=args.time_key,
            n_jobs=n_jobs,
            return_models=True,
            show_progress_bar=False,
        )
        call_s = time.perf_counter() - t0
        own1, kids1 = _cpu_seconds()
        plt.close("all")
        n_models = sum(len(v) for v in models.values())
        runs.append(
            {
                "n_jobs": n_jobs,
                "models": n_models,
                "fit_s": handler.seconds,
                "call_s": round(call_s, 3),
                "fit_cpu_main_s": round(handler.cpu_end[0] - handler.cpu_start[0], 3),
                "fit_cpu_workers_s": None if kids0 is None else round(handler.cpu_end[1] - handler.cpu_start[1], 3),
                "call_cpu_main_s": round(own1 - own0, 3),
                "call_cpu_workers_s": None if kids0 is None else round(kids1 - kids0, 3),
                "not_converged": sum(1 for v in models.values() for m in v.values() if not m._converged),
            }
        )
        if not saved:
            shape = (len(genes), len(lineages))
            y = np.full((*shape, 200), np.nan)
            ci = np.full((*shape, 200, 2), np.nan)
            xt = np.full((len(lineages), 200), np.nan)
            for i, g in enumerate(genes):
                for j, ln in enumerate(lineages):
                    m = models.get(g, {}).get(ln)
                    if m is None or m.y_test is None:
                        continue
                    y[i, j] = np.ravel(m.y_test)
                    ci[i, j] = m.conf_int
                    xt[j] = np.ravel(m.x_test)
            np.savez(args.out, genes=np.array(genes), lineages=np.array(lineages), x_test=xt, y_test=y, conf_int=ci)
            saved = True
    print(json.dumps({"cellrank": cr.__version__, "read_s": round(read_s, 2), "runs": runs}))


if __name__ == "__main__":
    main()
