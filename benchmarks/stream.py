"""STREAM-like triad bandwidth of this machine, measured with NumPy.

The triad ``a = b + 3 c`` runs as two NumPy passes per slice (``a = 3 c``; ``a += b``), which move
``5 x 8`` bytes per element; NumPy releases the GIL inside large ufunc loops, so one thread per core
runs truly in parallel. The all-core number is the denominator of the bandwidth-efficiency column of
``cellfate-gpu bench`` (see :func:`cellfate_gpu.benchmarking.stream_triad_bandwidth`).

Usage: ``python benchmarks/stream.py [--n 20000000] [--repeats 5] [--json out.json]``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

from cellfate_gpu.benchmarking import stream_triad_bandwidth


def copy_bandwidth(n: int, repeats: int) -> float:
    """Single-thread ``b[:] = a`` bandwidth in GB/s (``2 x 8`` bytes per element), for reference."""
    a, b = np.ones(n), np.zeros(n)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        np.copyto(b, a)
        best = min(best, time.perf_counter() - t0)
    return 16 * n / best / 1e9


def main(argv: list[str] | None = None) -> int:
    """Print (and optionally write as JSON) triad bandwidth for 1..all threads and the copy bandwidth."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=20_000_000, help="elements per array (float64)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--json", default=None, help="write the results here")
    args = p.parse_args(argv)
    cores = os.cpu_count() or 1
    results = {"n": args.n, "cores": cores, "copy_1thread_gbps": copy_bandwidth(args.n, args.repeats)}
    for threads in sorted({1, cores}):
        results[f"triad_{threads}threads_gbps"] = stream_triad_bandwidth(args.n, args.repeats, threads)
    for key, value in results.items():
        print(f"{key:24s} {value:.2f}" if isinstance(value, float) else f"{key:24s} {value}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
