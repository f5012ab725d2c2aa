r"""Run the benchmark pipeline with CellRank 2.3.3 and write timings plus the arrays needed for parity.

This script runs INSIDE the separate Python 3.12 environment made by
``cellfate_gpu/benchmarking/setup_cellrank_env.sh`` (CellRank >= 2.1 needs Python 3.12); it imports nothing from
``cellfate_gpu``. :func:`cellfate_gpu.benchmarking.run_benchmarks` calls it as a subprocess on the
same ``.h5ad`` that our pipeline ran on.

Usage
-----
.. code-block:: bash

    python .../cellfate_gpu/benchmarking/cellrank_runner.py atlas.h5ad --out bench_out/cellrank_100000 \\
        [--terminal terminal.json] [--steps kernel_pseudotime,...] [--max-dense-schur 12000] [--tol 1e-8]

Steps (the same names as ours): ``kernel_pseudotime`` (hard scheme, ``frac_to_keep=0.3``),
``kernel_velocity`` (deterministic, correlation, softmax scale estimated), ``kernel_connectivity``,
``kernel_combination`` (``0.8 * pk + 0.2 * ck``, materialised), ``schur_20``
(``compute_schur(n_components=20)``), ``macrostates_10`` (``fit(n_states=10, cluster_key="clusters")``),
``terminal_top6`` (``predict_terminal_states(method="top_n", n_states=6)``), ``fate_probabilities``
(``compute_fate_probabilities(use_petsc=False)``), ``absorption_times``, ``drivers``
(``compute_lineage_drivers()`` over all genes of ``adata.X`` and all lineages).

Caveats recorded in the output JSON (``notes``):

- ``use_petsc=False``: CellRank 2.3.3's PETSc path fails with petsc4py 3.26 (``Mat.getVecs`` is
  gone), so fate probabilities and absorption times use SciPy's GMRES, one right-hand side after
  another (petsc4py is installed here for SLEPc, but its linear-solve path is not used).
- With slepc4py (``cellfate_gpu/benchmarking/setup_cellrank_env.sh`` builds it) ``compute_schur`` runs SLEPc's
  Krylov-Schur (``method="krylov"``). Without it CellRank falls back to ``method="brandts"``, which
  densifies T (``8 n^2`` bytes: 80 GB at 100k cells); then, above ``--max-dense-schur`` cells, the
  Schur, macrostate and terminal-state steps are skipped (recorded as such) and fate probabilities
  use the terminal states given with ``--terminal``.
- The numba-compiled kernels are warmed up on a 300-cell subset first (``warmup_jit``, not part of
  any step), so compile time is not charged to a step.
- ``--terminal`` (JSON ``{lineage: [obs names]}``) sets OUR terminal states before fate
  probabilities, so fate probabilities are compared on the same T and the same terminal states.

Output: ``<out>.json`` (``{"tool", "version", "n_cells", "steps": [{"step", "seconds",
"peak_rss_mib", "status"}], "arrays", "notes"}``) and ``<out>.npz`` (``T_data/T_indices/T_indptr/
T_shape`` of the combined kernel, ``eig_real/eig_imag`` of the Schur eigenvalues, ``fate`` with
``fate_names``, ``terminal_obs``/``terminal_labels``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import signal
import sys
import time
import traceback
import warnings


def _load_steps():
    """The shared step list (``_steps.py`` beside this file), loaded by path: cellfate_gpu is not installed here."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("_cellfate_steps", Path(__file__).with_name("_steps.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ALL_STEPS = _load_steps().STEPS


class StepTimeout(BaseException):
    """A step ran past ``--step-timeout`` (a BaseException, so that library code catching Exception lets it through)."""


def _on_alarm(signum, frame):
    raise StepTimeout


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def main(argv: list[str] | None = None) -> int:
    """Parse the command line, run the requested steps with CellRank and write JSON + NPZ."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("h5ad")
    p.add_argument("--out", required=True, help="output prefix: writes <out>.json and <out>.npz")
    p.add_argument("--terminal", default=None, help="JSON {lineage: [obs names]} to set as terminal states")
    p.add_argument("--steps", default=",".join(ALL_STEPS), help="comma-separated subset of " + ",".join(ALL_STEPS))
    p.add_argument("--max-dense-schur", type=int, default=12_000, help="largest n for the dense 'brandts' Schur")
    p.add_argument("--n-jobs", type=int, default=None, help="CellRank's n_jobs for the velocity kernel")
    p.add_argument("--tol", type=float, default=1e-8, help="GMRES tolerance of fate probabilities/absorption times")
    p.add_argument(
        "--step-timeout",
        type=float,
        default=900.0,
        help="seconds after which a step is abandoned and recorded as a timeout (0: no limit)",
    )
    args = p.parse_args(argv)

    warnings.filterwarnings("ignore")
    import anndata as ad
    import cellrank as cr
    import numpy as np
    import scipy.sparse as sp

    wanted = [s.strip() for s in args.steps.split(",") if s.strip()]
    unknown = sorted(set(wanted) - set(ALL_STEPS))
    if unknown:
        p.error(f"unknown steps {unknown}; choose from {list(ALL_STEPS)}")
    adata = ad.read_h5ad(args.h5ad)
    n = adata.n_obs
    notes = [
        "fate probabilities and absorption times with use_petsc=False (CellRank 2.3.3 + petsc4py 3.26: "
        f"Mat.getVecs is gone), solver='gmres', tol={args.tol:g}",
    ]
    steps: list[dict] = []

    def record(name, fn):
        if name not in wanted:
            return None
        t0 = time.perf_counter()
        # SIGALRM interrupts CellRank's Python-level solver loops, so that one runaway step (GMRES
        # crawling on a nearly singular system) costs a bounded time and the later steps still run.
        signal.signal(signal.SIGALRM, _on_alarm)
        signal.alarm(math.ceil(args.step_timeout) if args.step_timeout > 0 else 0)
        try:
            value = fn()
        except StepTimeout:
            traceback.print_exc()  # where the step was: the log tells which solver was crawling
            steps.append(
                {
                    "step": name,
                    "seconds": time.perf_counter() - t0,  # a lower bound of the step's time
                    "peak_rss_mib": _peak_rss_mib(),
                    "status": f"timeout: abandoned after {args.step_timeout:g} s",
                }
            )
            return None
        except Exception as e:  # record and continue: later steps may still run
            steps.append(
                {
                    "step": name,
                    "seconds": float("nan"),
                    "peak_rss_mib": _peak_rss_mib(),
                    "status": f"failed: {type(e).__name__}: {e}"[:500],
                }
            )
            traceback.print_exc()
            return None
        finally:
            signal.alarm(0)
        steps.append(
            {"step": name, "seconds": time.perf_counter() - t0, "peak_rss_mib": _peak_rss_mib(), "status": "ok"}
        )
        return True if value is None else value  # CellRank's compute_* return None on success

    def skip(name, why):
        if name in wanted:
            steps.append({"step": name, "seconds": float("nan"), "peak_rss_mib": _peak_rss_mib(), "status": why})

    # JIT warm-up (numba) on a small subset, not charged to any step.
    job_kw = {} if args.n_jobs is None else {"n_jobs": args.n_jobs}
    notes.append(f"CellRank n_jobs={args.n_jobs} (None: CellRank's default)")
    t0 = time.perf_counter()
    lo = min(n // 10, max(n - 300, 0))  # a contiguous block of the (pseudotime-sorted) atlas keeps its kNN edges
    small = adata[lo : lo + min(300, n)].copy()
    warmups = [
        lambda: cr.kernels.PseudotimeKernel(small, time_key="pseudotime").compute_transition_matrix(
            threshold_scheme="hard", frac_to_keep=0.3, show_progress_bar=False
        )
    ]
    if "kernel_velocity" in wanted:
        # the same call as the step: loky keeps its worker processes, so their numba code stays compiled
        warmups.append(
            lambda: cr.kernels.VelocityKernel(small).compute_transition_matrix(
                model="deterministic", similarity="correlation", show_progress_bar=False, **job_kw
            )
        )
    for fn in warmups:
        try:
            fn()
        except Exception as e:  # best effort: a 300-cell subset may leave cells without neighbours
            print(f"warm-up: {type(e).__name__}: {e}", file=sys.stderr)
    notes.append("numba warm-up on 300 cells took %.2fs (not charged)" % (time.perf_counter() - t0))

    pk = record(
        "kernel_pseudotime",
        lambda: cr.kernels.PseudotimeKernel(adata, time_key="pseudotime").compute_transition_matrix(
            threshold_scheme="hard", frac_to_keep=0.3, show_progress_bar=False
        ),
    )
    record(
        "kernel_velocity",
        lambda: cr.kernels.VelocityKernel(adata).compute_transition_matrix(
            model="deterministic", similarity="correlation", show_progress_bar=False, **job_kw
        ),
    )
    ck = record("kernel_connectivity", lambda: cr.kernels.ConnectivityKernel(adata).compute_transition_matrix())

    def combine():
        k = 0.8 * pk + 0.2 * ck
        k.compute_transition_matrix()  # materialise, as our combination step does
        return k

    combined = record("kernel_combination", combine) if pk is not None and ck is not None else None
    if combined is None:
        combined = pk if pk is not None else ck
    if combined is None:
        print("no kernel computed; nothing more to run", file=sys.stderr)
        _write(args.out, n, steps, notes, None, None, None, None, cr.__version__)
        return 1
    T = sp.csr_matrix(combined.transition_matrix)
    g = cr.estimators.GPCCA(combined)
    ev = None
    try:
        import slepc4py  # noqa: F401

        has_slepc = True
    except ImportError:
        has_slepc = False
    if has_slepc or n <= args.max_dense_schur:
        if has_slepc:
            notes.append("compute_schur: method='krylov' (SLEPc Krylov-Schur via slepc4py)")
        else:
            notes.append("compute_schur: no slepc4py, so CellRank uses method='brandts' on the densified T")
        schur_kw = {"method": "krylov"} if has_slepc else {}
        if record("schur_20", lambda: g.compute_schur(n_components=20, **schur_kw)) is not None:
            ev = np.asarray(g.eigendecomposition["D"]) if g.eigendecomposition is not None else None
        record("macrostates_10", lambda: g.fit(n_states=10, cluster_key="clusters"))
        record("terminal_top6", lambda: g.predict_terminal_states(method="top_n", n_states=6))
    else:
        why = (
            f"skipped: without slepc4py CellRank densifies T for Schur ({8 * n * n / 1e9:.0f} GB at n={n}); "
            f"n > --max-dense-schur={args.max_dense_schur}"
        )
        for name in ("schur_20", "macrostates_10", "terminal_top6"):
            skip(name, why)
        notes.append(why)
    if args.terminal:
        with open(args.terminal) as fh:
            terminal = json.load(fh)
        g.set_terminal_states(terminal)
        notes.append("fate probabilities on OUR terminal states (set_terminal_states)")
    fate = None
    if g.terminal_states is None:
        for name in ("fate_probabilities", "absorption_times", "drivers"):
            skip(name, "skipped: no terminal states (pass --terminal or run terminal_top6)")
    else:
        kw = dict(use_petsc=False, solver="gmres", tol=args.tol, **job_kw)
        fate_step = record("fate_probabilities", lambda: g.compute_fate_probabilities(show_progress_bar=False, **kw))
        if fate_step is not None:
            fate = g.fate_probabilities
        record("absorption_times", lambda: g.compute_absorption_times(show_progress_bar=False, **kw))
        if fate is not None:
            record("drivers", lambda: g.compute_lineage_drivers())
    term = g.terminal_states
    _write(args.out, n, steps, notes, T, ev, fate, term, cr.__version__)
    return 0


def _write(out, n, steps, notes, T, ev, fate, term, version) -> None:
    import numpy as np

    arrays = {}
    if T is not None:
        arrays.update(T_data=T.data, T_indices=T.indices, T_indptr=T.indptr, T_shape=np.array(T.shape))
    if ev is not None:
        arrays.update(eig_real=np.real(ev), eig_imag=np.imag(ev))
    if fate is not None:
        fate_matrix = np.asarray(fate.X if hasattr(fate, "X") else fate)
        arrays.update(fate=fate_matrix, fate_names=np.array(fate.names, dtype=str))
    if term is not None:
        mask = term.notna().to_numpy()
        arrays.update(
            terminal_obs=np.asarray(term.index[mask], dtype=str), terminal_labels=np.asarray(term[mask], dtype=str)
        )
    np.savez(out + ".npz", **arrays)
    with open(out + ".json", "w") as fh:
        json.dump(
            {
                "tool": f"cellrank-{version}",
                "version": version,
                "n_cells": n,
                "steps": steps,
                "arrays": out + ".npz",
                "notes": notes,
            },
            fh,
            indent=1,
        )


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # With petsc4py/slepc4py imported (CellRank does so for SLEPc), interpreter shutdown can block
    # on a helper process that MPICH's singleton start-up forked; the results are written by now.
    os._exit(code)
