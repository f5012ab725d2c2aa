"""Atlas-scale benchmarks behind ``cellfate-gpu bench`` and ``cellfate-gpu report``.

For every size and backend, :func:`run_benchmarks` runs the pipeline of CellRank's "Getting
started" tutorial on a generated atlas and records, per step, the wall time, the peak resident
memory, the matrix-vector products and, for the SpMV-bound steps, the achieved memory bandwidth as
a fraction of a STREAM-like triad bandwidth measured on the same machine (the model is in
:mod:`cellfate_gpu.benchmarking._measure`). Optionally it runs CellRank 2.3.3 on the same ``.h5ad``
in its own Python 3.12 environment (``cellfate_gpu/benchmarking/setup_cellrank_env.sh``; the runner script ships in
this package, :data:`CELLRANK_RUNNER`) and records the largest differences of T, of the Schur
eigenvalues and of the fate probabilities. :func:`write_report` writes ``results.json``,
``results.md`` (tables, ratios, targets met or missed, a projected GPU table) and ``time_vs_cells.png``.

Modules: ``_steps`` (the step list, shared with the CellRank runner), ``_measure`` (bandwidth,
SpMM counts, peak memory), ``_pipeline`` (our pipeline), ``_cellrank`` (CellRank's), ``_run``
(sizes x backends into one table), ``_report`` (tables and plot), ``cellrank_runner`` (the script
run in CellRank's environment).
"""

from cellfate_gpu.backends._counting import counting_backend as counting_backend
from cellfate_gpu.benchmarking._cellrank import CELLRANK_TOOL as CELLRANK_TOOL
from cellfate_gpu.benchmarking._cellrank import _runner_path
from cellfate_gpu.benchmarking._measure import MatvecCounter as MatvecCounter
from cellfate_gpu.benchmarking._measure import PeakMemory as PeakMemory
from cellfate_gpu.benchmarking._measure import spmv_bytes as spmv_bytes
from cellfate_gpu.benchmarking._measure import stream_triad_bandwidth as stream_triad_bandwidth
from cellfate_gpu.benchmarking._pipeline import ATLAS_KINDS as ATLAS_KINDS
from cellfate_gpu.benchmarking._pipeline import _true_terminal_states as _true_terminal_states
from cellfate_gpu.benchmarking._pipeline import atlas_h5ad as atlas_h5ad
from cellfate_gpu.benchmarking._pipeline import run_pipeline as run_pipeline
from cellfate_gpu.benchmarking._report import BW_MIN_SPMM_SECONDS as BW_MIN_SPMM_SECONDS
from cellfate_gpu.benchmarking._report import HBM_BANDWIDTH_GBPS as HBM_BANDWIDTH_GBPS
from cellfate_gpu.benchmarking._report import TARGETS as TARGETS
from cellfate_gpu.benchmarking._report import gpu_projection as gpu_projection
from cellfate_gpu.benchmarking._report import write_report as write_report
from cellfate_gpu.benchmarking._run import read_results as read_results
from cellfate_gpu.benchmarking._run import run_benchmarks as run_benchmarks
from cellfate_gpu.benchmarking._steps import DEPENDS as DEPENDS
from cellfate_gpu.benchmarking._steps import SPMV_BOUND as SPMV_BOUND
from cellfate_gpu.benchmarking._steps import STEPS as STEPS
from cellfate_gpu.benchmarking._steps import closure as closure

#: Path of the CellRank runner script (run with CellRank's Python: ``$CELLRANK_PYTHON CELLRANK_RUNNER ...``).
CELLRANK_RUNNER = _runner_path()

__all__ = [
    "ATLAS_KINDS",
    "CELLRANK_RUNNER",
    "CELLRANK_TOOL",
    "DEPENDS",
    "HBM_BANDWIDTH_GBPS",
    "STEPS",
    "SPMV_BOUND",
    "TARGETS",
    "MatvecCounter",
    "PeakMemory",
    "atlas_h5ad",
    "closure",
    "counting_backend",
    "gpu_projection",
    "read_results",
    "run_benchmarks",
    "run_pipeline",
    "spmv_bytes",
    "stream_triad_bandwidth",
    "write_report",
]
