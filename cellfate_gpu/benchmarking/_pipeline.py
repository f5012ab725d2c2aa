"""Our pipeline, one timed step after another, on one backend (CellRank's 'Getting started' steps)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from cellfate_gpu._remote_datasets import cache_dir
from cellfate_gpu._settings import settings
from cellfate_gpu.backends import get_backend
from cellfate_gpu.benchmarking._measure import MatvecCounter, PeakMemory, counting_backend
from cellfate_gpu.benchmarking._steps import SPMV_BOUND, closure
from cellfate_gpu.datasets import synthetic_atlas, user_like_atlas
from cellfate_gpu.estimators import GPCCA
from cellfate_gpu.kernels import ConnectivityKernel, PseudotimeKernel, VelocityKernel

#: The generated atlases a benchmark can run on: ``synthetic`` (:func:`cellfate_gpu.datasets.synthetic_atlas`,
#: near-one-dimensional branches, graph on the latent coordinates) and ``user_like``
#: (:func:`cellfate_gpu.datasets.user_like_atlas`: kNN of PCA of noisy counts, as scanpy users build theirs).
ATLAS_KINDS = ("synthetic", "user_like")


def atlas_h5ad(
    n_cells: int,
    *,
    n_lineages: int = 6,
    n_genes: int = 2000,
    seed: int = 0,
    folder: Any = None,
    kind: str = "synthetic",
) -> Path:
    """Path of a cached ``.h5ad`` of a generated atlas (generated and written on first use).

    Cached under ``folder`` (default ``cache_dir()/bench``) as ``atlas_{n}c_{l}l_{g}g_s{seed}.h5ad``
    (``user_like_...`` for the user-like kind) so that CellRank and every backend read the same file.

    Parameters
    ----------
    kind
        One of :data:`ATLAS_KINDS`.
    """
    generators = {"synthetic": synthetic_atlas, "user_like": user_like_atlas}
    if kind not in generators:
        raise ValueError(f"Unknown atlas kind {kind!r}; choose from {list(ATLAS_KINDS)}.")
    folder = Path(folder) if folder is not None else cache_dir() / "bench"
    prefix = "atlas" if kind == "synthetic" else kind
    path = folder / f"{prefix}_{n_cells}c_{n_lineages}l_{n_genes}g_s{seed}.h5ad"
    if not path.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        adata = generators[kind](n_cells=n_cells, n_lineages=n_lineages, n_genes=n_genes, seed=seed, cache=False)
        tmp = path.with_suffix(".tmp.h5ad")
        adata.write_h5ad(tmp)
        tmp.replace(path)
    return path


def run_pipeline(
    adata: Any,
    backend: str = "scipy",
    steps: Iterable[str] | None = None,
    *,
    triad_gbps: float = math.nan,
    solve_kwargs: dict | None = None,
) -> tuple[list[dict], dict]:
    """Run (a subset of) the benchmark pipeline once on ``adata`` and time every step.

    Returns ``(rows, arrays)``: one dict per step (``step, seconds, peak_rss_mib, status`` and, for
    steps that multiply by T, ``matvecs, spmm_calls, spmm_seconds, spmm_bytes, bw_pct_*``) plus an
    ``end_to_end`` row; ``arrays`` holds the host T, the Schur eigenvalues, the fate probabilities,
    the lineage names and the terminal states (``{lineage: obs names}``) for parity checks. A step
    that raises is recorded with ``status='failed: ...'`` and the steps that do not need it go on.
    """
    steps = closure(steps)
    solve_kwargs = {"tol": 1e-8} if solve_kwargs is None else dict(solve_kwargs)
    # Every step runs on one counting view of the backend (the cached instance is not touched);
    # each step's MatvecCounter counts the products made while it is open.
    be = counting_backend(get_backend(backend))
    rows: list[dict] = []
    st: dict[str, Any] = {}
    nnz_T: list[int] = []

    def run(name: str, fn: Callable[[], Any]) -> Any:
        if name not in steps:
            return None
        mem = PeakMemory()
        counter = MatvecCounter(default_nnz=nnz_T[0] if nnz_T else None)
        status, value = "ok", None
        t0 = time.perf_counter()
        with mem, counter:
            try:
                value = fn()
            except Exception as e:  # record the failure and let independent steps continue
                status = f"failed: {type(e).__name__}: {e}"[:400]
        secs = time.perf_counter() - t0 if status == "ok" else float("nan")
        row: dict[str, Any] = {"step": name, "seconds": secs, "peak_rss_mib": mem.peak_mib, "status": status}
        if counter.matvecs:
            row.update(matvecs=counter.matvecs, spmm_calls=counter.calls, spmm_seconds=counter.seconds)
            row["spmm_bytes"] = counter.bytes
            if status == "ok" and name in SPMV_BOUND:
                row["bw_pct_step"] = 100 * counter.bytes / secs / 1e9 / triad_gbps
                if counter.seconds > 0:
                    row["bw_pct_spmm"] = 100 * counter.bytes / counter.seconds / 1e9 / triad_gbps
        rows.append(row)
        return value

    with settings.using(verbosity=1):
        t_start = time.perf_counter()
        st["pk"] = run(
            "kernel_pseudotime",
            lambda: PseudotimeKernel(adata, time_key="pseudotime").compute_transition_matrix(
                threshold_scheme="hard", frac_to_keep=0.3, backend=be
            ),
        )

        run(
            "kernel_velocity",
            lambda: VelocityKernel(adata).compute_transition_matrix(
                model="deterministic", similarity="correlation", backend=be
            ),
        )
        st["ck"] = run("kernel_connectivity", lambda: ConnectivityKernel(adata).compute_transition_matrix(backend=be))

        def combine():
            k = 0.8 * st["pk"] + 0.2 * st["ck"]
            k.compute_transition_matrix()
            return k

        combined = run("kernel_combination", combine)
        out: dict[str, Any] = {}
        if combined is not None:
            T_host = combined.transition_matrix
            nnz_T.append(int(T_host.nnz))
            out["T"] = T_host
            g = GPCCA(combined)
            if run("schur_20", lambda: g.compute_schur(n_components=20)) is not None:
                out["eigenvalues"] = np.asarray(g.eigendecomposition["D"])
            run("macrostates_10", lambda: g.compute_macrostates(n_states=10, cluster_key="clusters"))
            run("terminal_top6", lambda: g.predict_terminal_states(method="top_n", n_states=6))
            if g.terminal_states is None and any(s in steps for s in ("fate_probabilities", "absorption_times")):
                # keep benchmarking the solves: the atlas's true terminal cells (not timed, noted)
                g.set_terminal_states(_true_terminal_states(adata))
                note = "terminal states from the atlas's ground truth (terminal_top6 failed)"
                for r in rows:
                    if r["step"] == "terminal_top6":
                        r["note"] = note
                out["terminal_note"] = note
            lin = run("fate_probabilities", lambda: g.compute_fate_probabilities(**solve_kwargs))
            run("absorption_times", lambda: g.compute_absorption_times(**solve_kwargs))
            run("drivers", lambda: g.compute_lineage_drivers())
            if lin is not None:
                out["fate"], out["lineages"] = np.asarray(lin.X), list(lin.names)
                residual = harmonic_residual(T_host, out["fate"], g.terminal_states)
                for r in rows:
                    if r["step"] == "fate_probabilities":
                        r["harmonic_residual"] = residual
            term = g.terminal_states
            if term is not None:
                out["terminal"] = {
                    str(c): [str(x) for x in term.index[(term == c).to_numpy()]] for c in term.cat.categories
                }
        ok = all(r["status"] == "ok" for r in rows) and rows
        rows.append(
            {
                "step": "end_to_end",
                "seconds": time.perf_counter() - t_start if ok else float("nan"),
                "peak_rss_mib": max((r["peak_rss_mib"] for r in rows), default=float("nan")),
                "status": "ok" if ok else "incomplete: " + ", ".join(r["step"] for r in rows if r["status"] != "ok"),
            }
        )
    return rows, out


def harmonic_residual(T: Any, F: np.ndarray, terminal_states: Any) -> float:
    r"""Largest :math:`|(T F - F)_{ij}|` over transient cells :math:`i`: an independent check of F.

    Fate probabilities are harmonic on the transient cells (:math:`F = T F` there, with the one-hot
    rows of the terminal cells as boundary values), whatever solver produced them; this uses one
    SpMM with the host ``T`` and none of the solver code.
    """
    transient = ~np.asarray(terminal_states.notna())
    TF = np.asarray(T @ F)
    return float(np.max(np.abs(TF[transient] - F[transient]), initial=0.0))


def _true_terminal_states(adata: Any) -> dict[str, list[str]]:
    """``{lineage: obs names}`` of the generated atlas's terminal cells (``obs['is_terminal']``)."""
    obs = adata.obs
    if "is_terminal" not in obs or "lineage" not in obs:
        raise KeyError("The atlas has no obs['is_terminal'] / obs['lineage'] to take terminal states from.")
    term = obs[obs["is_terminal"].to_numpy(dtype=bool)]
    return {str(k): [str(x) for x in v.index] for k, v in term.groupby("lineage", observed=True) if len(v)}
