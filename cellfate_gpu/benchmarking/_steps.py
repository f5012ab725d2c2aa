"""The benchmark pipeline's step names and their prerequisites, shared by our runner and CellRank's.

This module imports nothing (not even NumPy): :mod:`cellfate_gpu.benchmarking.cellrank_runner` loads
it by file path inside CellRank's own Python 3.12 environment, where cellfate_gpu is not installed,
so that both runners use one list of steps.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["DEPENDS", "SPMV_BOUND", "STEPS", "closure"]

#: The pipeline steps, in order (the CellRank runner uses the same names).
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
#: The steps each step needs first.
DEPENDS: dict[str, tuple[str, ...]] = {
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


def closure(steps: Iterable[str] | None) -> list[str]:
    """The requested steps plus every step they depend on, in pipeline order (all steps for ``None``)."""
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
            stack.extend(DEPENDS.get(s, ()))
    return [s for s in STEPS if s in todo]
