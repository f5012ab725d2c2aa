"""Running CellRank 2.3.3 on the same ``.h5ad`` in its own Python 3.12 environment, and comparing."""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

CELLRANK_TOOL = "cellrank-2.3.3"


def _cellrank_python() -> Path:
    env = os.environ.get("CELLRANK_PYTHON")
    if env:
        return Path(env)
    venv = os.environ.get("CELLRANK_VENV", str(Path.home() / ".cache/cellfate_gpu/cellrank-venv"))
    return Path(venv) / "bin" / "python"


def _runner_path() -> Path:
    """The runner script, shipped inside the package (so that an installed wheel has it too)."""
    return Path(__file__).resolve().with_name("cellrank_runner.py")


def _run_cellrank(h5ad: Path, terminal: dict | None, out: Path, steps: Sequence[str]) -> dict | None:
    python, runner = _cellrank_python(), _runner_path()
    if not runner.is_file():
        print(f"CellRank runner not found at {runner}; skipping CellRank", file=sys.stderr)
        return None
    if not python.exists():
        print(
            f"CellRank environment not found ({python}); run cellfate_gpu/benchmarking/setup_cellrank_env.sh "
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
