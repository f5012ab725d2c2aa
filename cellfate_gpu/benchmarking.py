r"""Atlas-scale benchmark runner behind ``cellfate-gpu bench``.

For every size and backend, :func:`run_benchmarks` runs the pipeline of CellRank's "Getting
started" tutorial on the generated atlas (:func:`cellfate_gpu.datasets.synthetic_atlas`, 6
lineages, 2000 genes) and records, per step, the wall time, the peak resident memory during the
step, the matrix-vector products (an SpMM with :math:`s` columns counts :math:`s`) and, for the
SpMV-bound steps, the achieved memory bandwidth as a fraction of a STREAM-like triad bandwidth
measured on the same machine. Optionally it runs CellRank 2.3.3 on the same ``.h5ad`` in its own
Python 3.12 environment (``benchmarks/setup_cellrank_env.sh``, ``benchmarks/cellrank_runner.py``)
and records the largest differences of T, of the Schur eigenvalues and of the fate probabilities.
:func:`write_report` writes ``results.json``, ``results.md`` (tables, ratios, targets met or
missed, a projected GPU table) and ``time_vs_cells.png``.

Bandwidth model
---------------
One CSR SpMM :math:`Y = A X` with :math:`n` rows, :math:`z` stored entries and :math:`s` columns
moves at least

.. math::

    B_\mathrm{SpMM} = 12 z + 4 (n + 1) + 16 n s \quad\text{bytes}

(8-byte values and 4-byte column indices, row pointers, one read of :math:`X` and one write of
:math:`Y`; gathers of :math:`X` are assumed cached). The efficiency of a step is
:math:`\sum B_\mathrm{SpMM} / t` divided by the triad bandwidth; ``bw_pct_spmm`` uses the time
spent inside the SpMMs only, ``bw_pct_step`` the whole step (orthogonalisation and host work
included). Orthogonalisation traffic (for the GPU projection) is modelled as classical Gram-Schmidt
with one re-orthogonalisation: :math:`4 j n \cdot 8` bytes for the :math:`j`-th basis vector,
with :math:`j` averaging :math:`(k + n_{cv})/2` in Krylov-Schur (:math:`n_{cv} = \max(2k, k + 15)`) and
half the restart length (30) in GMRES.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import platform
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

__all__ = [
    "STEPS",
    "TARGETS",
    "HBM_BANDWIDTH_GBPS",
    "run_benchmarks",
    "run_pipeline",
    "write_report",
    "read_results",
    "stream_triad_bandwidth",
    "spmv_bytes",
    "atlas_h5ad",
    "gpu_projection",
    "MatvecCounter",
    "PeakMemory",
]

#: The pipeline steps, in order (also the names the CellRank runner uses).
STEPS: tuple[str, ...] = (
    "kernel_pseudotime",
    "kernel_velocity",
    "kernel_connectivity",
    "kernel_combination",
    "schur_20",
    "macrostates_10",
    "terminal_top6",
    "fate_probabilities",
    "absorption_times",
    "drivers",
)
_DEPENDS: dict[str, tuple[str, ...]] = {
    "kernel_combination": ("kernel_pseudotime", "kernel_connectivity"),
    "schur_20": ("kernel_combination",),
    "macrostates_10": ("schur_20",),
    "terminal_top6": ("macrostates_10",),
    "fate_probabilities": ("terminal_top6",),
    "absorption_times": ("terminal_top6",),
    "drivers": ("fate_probabilities",),
}
#: Steps whose cost is dominated by sparse matrix products (their bandwidth efficiency is reported).
SPMV_BOUND = ("schur_20", "fate_probabilities", "absorption_times")

#: Targets (speed-up over CellRank 2.3.3 at 100k cells; 1M end to end in seconds; bandwidth in %).
TARGETS: dict[str, float] = {
    "kernel_pseudotime_speedup_100k": 50.0,
    "kernel_velocity_speedup_100k": 10.0,
    "end_to_end_speedup_100k": 5.0,
    "end_to_end_seconds_1M": 600.0,
    "spmv_bandwidth_pct": 70.0,
}

#: Steps whose SpMMs took less than this (seconds) get no bandwidth target row: too short to time.
BW_MIN_SPMM_SECONDS = 0.01

#: HBM bandwidths (GB/s) used by the projected GPU table.
HBM_BANDWIDTH_GBPS: dict[str, float] = {"H100 SXM": 3350.0, "A100 80GB": 2000.0}

CELLRANK_TOOL = "cellrank-2.3.3"


# --------------------------------------------------------------------------- machine measurements
def stream_triad_bandwidth(n: int = 20_000_000, repeats: int = 5, threads: int | None = None) -> float:
    r"""STREAM-like triad :math:`a = b + s\,c` bandwidth in GB/s over ``threads`` threads.

    NumPy evaluates the triad as two passes (``a = s c`` then ``a += b``), which move
    :math:`5 \cdot 8 n` bytes (read ``c``, write ``a``; read ``a`` and ``b``, write ``a``); that is
    what is counted here, so the number is the sustained bandwidth of the memory system rather
    than STREAM's :math:`3 \cdot 8 n` convention. NumPy releases the GIL inside large ufunc loops,
    so each thread's slice runs on its own core. Best of ``repeats``.

    Parameters
    ----------
    n
        Elements per array (three float64 arrays; 160 MB each by default, well beyond the caches).
    repeats
        Repetitions; the fastest counts.
    threads
        Worker threads (default: all cores, ``os.cpu_count()``).
    """
    if n < 1 or repeats < 1:
        raise ValueError(f"n and repeats must be positive, got n={n}, repeats={repeats}.")
    threads = max(1, threads or os.cpu_count() or 1)
    b, c = np.ones(n), np.full(n, 2.0)
    a = np.zeros(n)
    edges = np.linspace(0, n, threads + 1).astype(int)
    bounds = [(int(lo), int(hi)) for lo, hi in itertools.pairwise(edges) if hi > lo]

    def triad(lo_hi: tuple[int, int]) -> None:
        lo, hi = lo_hi
        np.multiply(c[lo:hi], 3.0, out=a[lo:hi])
        np.add(a[lo:hi], b[lo:hi], out=a[lo:hi])

    best = math.inf
    with ThreadPoolExecutor(threads) as pool:
        for _ in range(repeats):
            t0 = time.perf_counter()
            list(pool.map(triad, bounds))
            best = min(best, time.perf_counter() - t0)
    return 5 * 8 * n / best / 1e9


def spmv_bytes(n: int, nnz: int, ncols: int = 1) -> int:
    """Bytes one CSR SpMM with ``n`` rows, ``nnz`` entries and ``ncols`` vectors moves at least.

    ``12 nnz + 4 (n + 1) + 16 n ncols``: values and column indices, row pointers, the block read once
    and the result written once.
    """
    return 12 * int(nnz) + 4 * (int(n) + 1) + 16 * int(n) * int(ncols)


def _nnz(A: Any) -> int | None:
    for attr in ("nnz", "nse"):
        v = getattr(A, attr, None)
        if v is not None and not callable(v):
            return int(v)
    data = getattr(A, "data", None)
    shape = getattr(data, "shape", None)
    if shape:
        return int(shape[0])
    return None


class MatvecCounter(contextlib.AbstractContextManager):
    """Count the SpMMs a backend performs (and their bytes and time) while the context is open.

    Wraps the instance's ``spmm`` (an instance attribute shadowing the class method) and restores
    it on exit. ``matvecs`` counts vectors (an SpMM with ``s`` columns counts ``s``); ``seconds`` is
    the time spent inside ``spmm``; ``bytes`` follows :func:`spmv_bytes`. Backends whose solvers do
    not go through ``spmm`` (PETSc's KSP/EPS) report zero.
    """

    def __init__(self, backend: Any, default_nnz: int | None = None):
        self.backend = backend
        self.default_nnz = default_nnz
        self.calls = self.matvecs = self.bytes = 0
        self.seconds = 0.0
        self._installed = False

    def __enter__(self) -> MatvecCounter:
        original = type(self.backend).spmm.__get__(self.backend)

        def counted(A: Any, X: Any) -> Any:
            shape = getattr(X, "shape", ())
            ncols = int(shape[1]) if len(shape) == 2 else 1
            nnz = _nnz(A)
            n = int(getattr(A, "shape", (0,))[0])
            t0 = time.perf_counter()
            Y = original(A, X)
            with contextlib.suppress(Exception):  # wait for asynchronous devices where possible
                getattr(Y, "block_until_ready", lambda: None)()
            self.seconds += time.perf_counter() - t0
            self.calls += 1
            self.matvecs += ncols
            self.bytes += spmv_bytes(n, nnz if nnz is not None else (self.default_nnz or 0), ncols)
            return Y

        try:
            self.backend.spmm = counted
            self._installed = True
        except (AttributeError, TypeError):  # a frozen/slotted backend: nothing is counted
            self._installed = False
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._installed:
            with contextlib.suppress(AttributeError):
                del self.backend.spmm
        return None


class PeakMemory(contextlib.AbstractContextManager):
    """Peak resident memory (MiB) of this process while the context is open.

    On Linux, writing ``5`` to ``/proc/self/clear_refs`` resets the high-water mark ``VmHWM``, so
    the peak is the step's own; elsewhere it falls back to ``resource.getrusage``'s lifetime peak.
    """

    def __init__(self) -> None:
        self.peak_mib = float("nan")
        self.reset_ok = False

    def __enter__(self) -> PeakMemory:
        try:
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")
            self.reset_ok = True
        except OSError:
            self.reset_ok = False
        return self

    def __exit__(self, *exc: Any) -> None:
        self.peak_mib = _peak_rss_mib() if not self.reset_ok else _vmhwm_mib()
        return None


def _vmhwm_mib() -> float:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return _peak_rss_mib()


def _peak_rss_mib() -> float:
    per_mib = 1024.0**2 if sys.platform == "darwin" else 1024.0  # ru_maxrss: bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / per_mib


# --------------------------------------------------------------------------- data
def atlas_h5ad(n_cells: int, *, n_lineages: int = 6, n_genes: int = 2000, seed: int = 0, folder: Any = None) -> Path:
    """Path of a cached ``.h5ad`` of the generated atlas (generated and written on first use).

    Cached under ``folder`` (default ``cache_dir()/bench``) as ``atlas_{n}c_{l}l_{g}g_s{seed}.h5ad``
    so that CellRank and every backend read the same file.
    """
    from cellfate_gpu._remote_datasets import cache_dir
    from cellfate_gpu.datasets import synthetic_atlas

    folder = Path(folder) if folder is not None else cache_dir() / "bench"
    path = folder / f"atlas_{n_cells}c_{n_lineages}l_{n_genes}g_s{seed}.h5ad"
    if not path.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        adata = synthetic_atlas(n_cells=n_cells, n_lineages=n_lineages, n_genes=n_genes, seed=seed, cache=False)
        tmp = path.with_suffix(".tmp.h5ad")
        adata.write_h5ad(tmp)
        tmp.replace(path)
    return path


def _closure(steps: Iterable[str] | None) -> list[str]:
    if steps is None:
        return list(STEPS)
    wanted = [steps] if isinstance(steps, str) else list(steps)
    bad = sorted(set(wanted) - set(STEPS))
    if bad:
        raise ValueError(f"Unknown benchmark steps {bad}; choose from {list(STEPS)}.")
    todo: set[str] = set()
    stack = list(wanted)
    while stack:
        s = stack.pop()
        if s not in todo:
            todo.add(s)
            stack.extend(_DEPENDS.get(s, ()))
    return [s for s in STEPS if s in todo]


# --------------------------------------------------------------------------- our pipeline
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
    steps = _closure(steps)
    solve_kwargs = {"tol": 1e-8} if solve_kwargs is None else dict(solve_kwargs)
    backend_name = backend
    from cellfate_gpu import settings
    from cellfate_gpu.backends import get_backend
    from cellfate_gpu.estimators import GPCCA
    from cellfate_gpu.kernels import ConnectivityKernel, PseudotimeKernel

    be = get_backend(backend_name)
    rows: list[dict] = []
    st: dict[str, Any] = {}
    nnz_T: list[int] = []

    def run(name: str, fn: Callable[[], Any]) -> Any:
        if name not in steps:
            return None
        mem = PeakMemory()
        counter = MatvecCounter(be, default_nnz=nnz_T[0] if nnz_T else None)
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

        def velocity():
            from cellfate_gpu.kernels import _velocity  # noqa: F401  (ImportError: not available yet)
            from cellfate_gpu.kernels._velocity import VelocityKernel

            return VelocityKernel(adata).compute_transition_matrix(
                model="deterministic", similarity="correlation", backend=be
            )

        run("kernel_velocity", velocity)
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


def _true_terminal_states(adata: Any) -> dict[str, list[str]]:
    """``{lineage: obs names}`` of the generated atlas's terminal cells (``obs['is_terminal']``)."""
    obs = adata.obs
    if "is_terminal" not in obs or "lineage" not in obs:
        raise KeyError("The atlas has no obs['is_terminal'] / obs['lineage'] to take terminal states from.")
    term = obs[obs["is_terminal"].to_numpy(dtype=bool)]
    return {str(k): [str(x) for x in v.index] for k, v in term.groupby("lineage", observed=True) if len(v)}


# --------------------------------------------------------------------------- CellRank
def _cellrank_python() -> Path:
    env = os.environ.get("CELLRANK_PYTHON")
    if env:
        return Path(env)
    venv = os.environ.get("CELLRANK_VENV", str(Path.home() / ".cache/cellfate_gpu/cellrank-venv"))
    return Path(venv) / "bin" / "python"


def _runner_path() -> Path:
    return Path(__file__).resolve().parents[1] / "benchmarks" / "cellrank_runner.py"


def _run_cellrank(h5ad: Path, terminal: dict | None, out: Path, steps: Sequence[str]) -> dict | None:
    python, runner = _cellrank_python(), _runner_path()
    if not runner.is_file():
        print(f"CellRank runner not found at {runner}; skipping CellRank", file=sys.stderr)
        return None
    if not python.exists():
        print(
            f"CellRank environment not found ({python}); run benchmarks/setup_cellrank_env.sh "
            "or set CELLRANK_PYTHON; skipping CellRank",
            file=sys.stderr,
        )
        return None
    prefix = out / f"cellrank_{h5ad.stem}"
    cmd = [str(python), str(runner), str(h5ad), "--out", str(prefix), "--steps", ",".join(steps)]
    if terminal:
        tjson = out / f"terminal_{h5ad.stem}.json"
        tjson.write_text(json.dumps(terminal))
        cmd += ["--terminal", str(tjson)]
    with open(str(prefix) + ".log", "w") as log:
        # its own session, so that helpers it leaves behind (a forked child outlives the runner's
        # os._exit) are reaped with it instead of piling up, one per run, at 0.6 GB each
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        proc.wait()
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    result = Path(str(prefix) + ".json")
    if proc.returncode != 0 or not result.is_file():
        print(f"CellRank runner failed (exit {proc.returncode}); see {prefix}.log", file=sys.stderr)
        return None
    return json.loads(result.read_text())


def _compare(ours: dict, cr: dict) -> dict[str, float]:
    """Largest absolute differences ours vs CellRank (NaN where either side is missing)."""
    import scipy.sparse as sp

    diffs = {"T": math.nan, "schur_eigenvalues": math.nan, "fate_probabilities": math.nan}
    npz = np.load(cr["arrays"], allow_pickle=False)
    if "T_data" in npz and "T" in ours:
        T_cr = sp.csr_matrix((npz["T_data"], npz["T_indices"], npz["T_indptr"]), shape=tuple(npz["T_shape"]))
        if T_cr.shape == ours["T"].shape:
            diffs["T"] = float(abs(ours["T"] - T_cr).max())
    if "eig_real" in npz and "eigenvalues" in ours:
        ev_cr = npz["eig_real"] + 1j * npz["eig_imag"]
        ev = np.asarray(ours["eigenvalues"])
        # nearest-neighbour matching: robust to ordering and to a conjugate pair cut at k
        k = min(len(ev), len(ev_cr)) - 1
        if k > 0:
            diffs["schur_eigenvalues"] = float(max(np.min(np.abs(ev - lam)) for lam in ev_cr[:k]))
    if "fate" in npz and "fate" in ours:
        names = [str(x) for x in npz["fate_names"]]
        if sorted(names) == sorted(ours["lineages"]):
            order = [names.index(nm) for nm in ours["lineages"]]
            diffs["fate_probabilities"] = float(np.max(np.abs(ours["fate"] - npz["fate"][:, order])))
    return diffs


# --------------------------------------------------------------------------- public entry points
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
) -> pd.DataFrame:
    """Run the pipeline for every size and backend (and CellRank); one row per (size, tool, step).

    Parameters
    ----------
    sizes
        Numbers of cells of the generated atlas (cached as ``.h5ad``, see :func:`atlas_h5ad`).
    backends
        Backend names; an unavailable one gets rows with ``status='unavailable: <reason>'``.
    with_cellrank
        Also run ``benchmarks/cellrank_runner.py`` in CellRank's Python 3.12 environment
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
    todo = _closure(steps)
    solve_kwargs = {"tol": 1e-8} if solve_kwargs is None else dict(solve_kwargs)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if triad_gbps is None:
        triad_gbps = stream_triad_bandwidth()
    reasons = available_backends()
    records: list[dict] = []
    for n in sizes:
        h5ad = atlas_h5ad(n, n_lineages=n_lineages, n_genes=n_genes, folder=atlas_dir)
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
    meta = {
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


# --------------------------------------------------------------------------- reporting
def gpu_projection(
    df: pd.DataFrame,
    sizes: Sequence[int] = (100_000, 1_000_000, 10_000_000),
    bandwidths: dict[str, float] | None = None,
    k: int = 20,
    restart: int = 30,
) -> pd.DataFrame:
    r"""Projected GPU seconds of the SpMV-bound steps: bytes moved / HBM bandwidth.

    From the largest measured size of the first ``cellfate_gpu`` tool, take the matvec count
    :math:`m` of each step and the stored entries per row :math:`z/n` of T; at :math:`N` cells,
    assuming the same matvec count and entries per row,

    .. math::

        t = \frac{m \, (12 z_N + 4 N + 16 N) + m \cdot 4 \bar{j} N \cdot 8}{\mathrm{BW}},
        \qquad z_N = N z/n,

    with :math:`\bar{j} = (k + n_{cv})/2`, :math:`n_{cv} = \max(2k, k + 15)`, basis vectors per
    orthogonalisation in Krylov-Schur and
    :math:`\bar{j} = \text{restart}/2` in GMRES. A lower bound: launch latency, host round trips
    of the projected problems and the kernels' construction are not included.
    """
    from cellfate_gpu.linalg.krylov_schur import default_ncv

    bandwidths = HBM_BANDWIDTH_GBPS if bandwidths is None else bandwidths
    ours = df[df["tool"].astype(str).str.startswith("cellfate_gpu") & df.get("matvecs", pd.Series(dtype=float)).notna()]
    if ours.empty or "matvecs" not in df:
        return pd.DataFrame()
    n_ref = int(ours["n_cells"].max())
    ref = ours[(ours["n_cells"] == n_ref) & (ours["tool"] == ours["tool"].iloc[0])]
    nnz_per_row = float(ref["nnz"].dropna().iloc[0]) / n_ref if ref["nnz"].notna().any() else 30.0
    records = []
    for N in sizes:
        for _, r in ref.iterrows():
            if r["step"] not in SPMV_BOUND:
                continue
            m = float(r["matvecs"])
            jbar = (k + default_ncv(k, N)) / 2 if r["step"] == "schur_20" else restart / 2
            spmv = m * (12 * nnz_per_row * N + 4 * N + 16 * N)
            orth = m * 4 * jbar * N * 8
            rec = {"n_cells": N, "step": r["step"], "matvecs": int(m), "GB_spmv": spmv / 1e9, "GB_orth": orth / 1e9}
            for gpu, bw in bandwidths.items():
                rec[f"{gpu} s"] = (spmv + orth) / (bw * 1e9)
            records.append(rec)
    proj = pd.DataFrame.from_records(records)
    if not proj.empty:
        total = proj.groupby("n_cells", as_index=False).sum(numeric_only=True)
        total["step"] = "total (SpMV-bound steps)"
        proj = pd.concat([proj, total], ignore_index=True)
        proj.attrs["nnz_per_row"] = nnz_per_row
        proj.attrs["reference_n"] = n_ref
    return proj


def _md_table(df: pd.DataFrame, floatfmt: str = ".3g") -> str:
    """A GitHub Markdown table without optional dependencies."""
    cols = [str(c) for c in df.columns]

    def fmt(v: Any) -> str:
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return ""
        if isinstance(v, float | np.floating):
            return format(float(v), floatfmt)
        return str(v)

    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for row in df.itertuples(index=False):
        lines.append("| " + " | ".join(fmt(v) for v in row) + " |")
    return "\n".join(lines)


def _ok_steps(timed_rows: pd.DataFrame) -> pd.Series:
    """The set of steps with status ``ok`` per ``(tool, n_cells)``."""
    return timed_rows[timed_rows["status"].astype(str) == "ok"].groupby(["tool", "n_cells"])["step"].agg(set)


def _targets(df: pd.DataFrame) -> list[dict]:
    timed_rows = df[df["tool"] != "parity"]
    status = timed_rows["status"].astype(str)
    # a CellRank end-to-end time with abandoned steps is a lower bound: a speed-up from it is one too
    usable = (status == "ok") | ((timed_rows["step"] == "end_to_end") & status.str.startswith("lower bound"))
    sec = timed_rows[usable].pivot_table(index=["n_cells", "step"], columns="tool", values="seconds", aggfunc="first")
    ok_steps = _ok_steps(timed_rows)
    results = []

    def add(name: str, value: float, target: float, higher_better: bool, detail: str) -> None:
        met = None if value is None or math.isnan(value) else (value >= target if higher_better else value <= target)
        results.append({"target": name, "goal": ("≥ " if higher_better else "≤ ") + f"{target:g}",
                        "measured": value, "status": {True: "met", False: "MISSED", None: "not measured"}[met],
                        "detail": detail})  # fmt: skip

    ours_tools = [t for t in sec.columns if str(t).startswith("cellfate_gpu")]
    cr = [t for t in sec.columns if str(t).startswith("cellrank")]
    for t in ours_tools:
        for step, key, label in (
            ("kernel_pseudotime", "kernel_pseudotime_speedup_100k", "pseudotime kernel speed-up at 100k"),
            ("kernel_velocity", "kernel_velocity_speedup_100k", "velocity kernel speed-up at 100k"),
            ("end_to_end", "end_to_end_speedup_100k", "end-to-end speed-up at 100k"),
        ):
            val = math.nan
            detail = "CellRank not run at 100k"
            if cr and (100_000, step) in sec.index:
                a, b = sec.loc[(100_000, step), cr[0]], sec.loc[(100_000, step), t]
                val = float(a / b) if b and not math.isnan(a) else math.nan
                detail = f"{t} {b:.3g}s vs CellRank {a:.3g}s"
                if step == "end_to_end":
                    st = timed_rows[(timed_rows["tool"] == cr[0]) & (timed_rows["step"] == "end_to_end")
                                    & (timed_rows["n_cells"] == 100_000)]["status"]  # fmt: skip
                    if len(st) and str(st.iloc[0]) != "ok":
                        detail += f" (CellRank {st.iloc[0]}: its time and this speed-up are lower bounds)"
            add(f"{label} ({t})", val, TARGETS[key], True, detail)
        ran_1m = ok_steps.get((t, 1_000_000), set())
        missing_1m = [s for s in STEPS if s not in ran_1m]
        if (1_000_000, "end_to_end") in sec.index and not missing_1m:
            v = float(sec.loc[(1_000_000, "end_to_end"), t])
            add(f"1M cells end to end ({t})", v, TARGETS["end_to_end_seconds_1M"], False, "seconds")
        elif ran_1m:  # a subset of the pipeline is not the end-to-end figure the target asks for
            part = float(sum(sec.loc[(1_000_000, step), t] for step in ran_1m - {"end_to_end"}))
            # the steps that ran bound the whole from below: past the target, the target is missed
            bound = part if part > TARGETS["end_to_end_seconds_1M"] else math.nan
            add(f"1M cells end to end ({t})", bound, TARGETS["end_to_end_seconds_1M"], False,
                f"partial run: {part:.0f} s for the steps that ran (a lower bound); "
                f"not run: {', '.join(missing_1m)}")  # fmt: skip
        else:
            add(f"1M cells end to end ({t})", math.nan, TARGETS["end_to_end_seconds_1M"], False, "not run")
        if "bw_pct_spmm" in df:
            # SpMM time below 10 ms (a direct solve's residual check) is timer noise, not a bandwidth
            sub = df[(df["tool"] == t) & df["bw_pct_spmm"].notna() & (df["spmm_seconds"] >= BW_MIN_SPMM_SECONDS)]
            for _, r in sub[sub["n_cells"] == sub["n_cells"].max()].iterrows():
                add(f"{r['step']} SpMM bandwidth % of triad ({t}, n={r['n_cells']})", float(r["bw_pct_spmm"]),
                    TARGETS["spmv_bandwidth_pct"], True,
                    f"whole step incl. orthogonalisation: {r.get('bw_pct_step', math.nan):.1f}%")  # fmt: skip
    return results


def write_report(df: pd.DataFrame, out_dir: str | os.PathLike) -> Path:
    """Write ``results.json``, ``results.md`` and ``time_vs_cells.png`` into ``out_dir``.

    The Markdown file has: seconds per step and tool, speed-ups over CellRank (CellRank seconds /
    ours), peak memory, matvecs and bandwidth efficiency, the parity rows, every target with
    ``met`` / ``MISSED`` / ``not measured``, and the projected GPU table (:func:`gpu_projection`).
    Returns the path of ``results.md``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _write_json(df, out)
    meta = df.attrs.get("meta", {})
    timed_rows = df[df["tool"] != "parity"].copy()
    lines = [
        "# cellfate_gpu benchmark results",
        "",
        f"- machine: {meta.get('machine', _machine())}",
        f"- triad bandwidth (NumPy, all cores): {meta.get('triad_gbps', math.nan):.2f} GB/s",
        f"- when: {meta.get('time', '')}; solver options: {meta.get('solve_kwargs', '')}",
        *([f"- runs: {', '.join(meta['sources'])}"] if meta.get("sources") else []),
        "",
        "## Seconds per step",
        "",
    ]
    ok = timed_rows[timed_rows["status"].astype(str).isin(["ok"]) | (timed_rows["step"] == "end_to_end")]
    sec = ok.pivot_table(index=["n_cells", "step"], columns="tool", values="seconds", aggfunc="first")
    order = {s: i for i, s in enumerate((*STEPS, "end_to_end"))}
    sec = sec.reset_index()
    sec["_o"] = sec["step"].map(order)
    sec = sec.sort_values(["n_cells", "_o"]).drop(columns="_o")
    cr_cols = [c for c in sec.columns if str(c).startswith("cellrank")]
    ours_cols = [c for c in sec.columns if str(c).startswith("cellfate_gpu")]
    for c in ours_cols:
        for crc in cr_cols:
            sec[f"speed-up {c.split('[')[-1].rstrip(']')} vs CellRank"] = sec[crc] / sec[c]
    lines += [_md_table(sec), ""]
    bad = timed_rows[~timed_rows["status"].astype(str).isin(["ok"])]
    if len(bad):
        lines += ["Steps that did not run or ran partially:", ""]
        lines += [_md_table(bad[["n_cells", "tool", "step", "status"]]), ""]
    extra = [c for c in ("matvecs", "spmm_seconds", "bw_pct_spmm", "bw_pct_step", "nnz") if c in timed_rows]
    mem = timed_rows[["n_cells", "tool", "step", "peak_rss_mib", *extra]].dropna(subset=["peak_rss_mib"])
    lines += ["## Peak memory (MiB during the step), matvecs and bandwidth efficiency", "", _md_table(mem), ""]
    parity = df[df["tool"] == "parity"]
    if len(parity):
        cols = [c for c in parity.columns if c.startswith("diff_") or c in ("n_cells", "notes")]
        lines += ["## Largest absolute differences vs CellRank", "", _md_table(parity[cols], ".2e"), ""]
    lines += ["## Targets", "", _md_table(pd.DataFrame(_targets(df)), ".3g"), ""]
    proj = gpu_projection(df)
    if not proj.empty:
        lines += [
            "## Projected GPU seconds of the SpMV-bound steps (bytes moved / HBM bandwidth)",
            "",
            f"Reference: matvec counts measured at n={proj.attrs['reference_n']}, "
            f"{proj.attrs['nnz_per_row']:.1f} stored entries per row of T; "
            "t = [m (12 z + 20 N) + m 32 j N] / BW (see `cellfate_gpu.benchmarking.gpu_projection`).",
            "",
            _md_table(proj, ".3g"),
            "",
        ]
    md = out / "results.md"
    md.write_text("\n".join(lines) + "\n")

    e2e = timed_rows[timed_rows["step"] == "end_to_end"].pivot_table(
        index="n_cells", columns="tool", values="seconds", aggfunc="first"
    )
    ok_steps = _ok_steps(timed_rows)

    def whole(tool: Any, n: Any) -> bool:  # every pipeline step ran: not a partial sum or a lower bound
        return set(STEPS) <= ok_steps.get((tool, n), set())

    fig, ax = plt.subplots(figsize=(5.5, 4))
    for tool in e2e.columns:
        s = e2e[tool].dropna()
        if len(s):
            (line,) = ax.loglog(s.index, s.to_numpy(), marker="o", label=str(tool))
            part = [n for n in s.index if not whole(tool, n)]
            if part:  # hollow markers: a partial pipeline or a lower bound (timed-out steps)
                ax.loglog(part, s.loc[part].to_numpy(), "o", mfc="white", mec=line.get_color(), zorder=3)
    ax.set_xlabel("cells")
    ax.set_ylabel("end-to-end seconds")
    ax.set_title("Pipeline time vs cells (hollow: partial run or lower bound)", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    if len(e2e.columns):
        ax.legend(frameon=False)
    fig.savefig(out / "time_vs_cells.png", bbox_inches="tight", dpi=120)
    plt.close(fig)
    return md
