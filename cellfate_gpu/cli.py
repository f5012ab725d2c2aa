r"""The ``cellfate-gpu`` command: ``demo``, ``run``, ``bench``, ``info``.

Examples
--------
.. code-block:: bash

    cellfate-gpu demo --out demo_out
    cellfate-gpu run in.h5ad --kernel pseudotime:time_key=dpt_pseudotime:weight=0.8 + connectivity:weight=0.2 \\
        --n-states 10 --terminal top_n:6 --backend scipy --out out.h5ad
    mpiexec -n 2 cellfate-gpu run in.h5ad --kernel pseudotime --backend petsc --out out.h5ad
    cellfate-gpu bench --sizes 10000 100000 --backends scipy jax --with-cellrank
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any

__all__ = ["main", "parse_kernel_spec", "KernelTerm"]

_KERNELS = {
    "pseudotime": "PseudotimeKernel",
    "connectivity": "ConnectivityKernel",
    "velocity": "VelocityKernel",
    "cytotrace": "CytoTRACEKernel",
    "precomputed": "PrecomputedKernel",
}


@dataclasses.dataclass(frozen=True)
class KernelTerm:
    """One term of a ``--kernel`` expression: ``name:key=value:...``.

    ``weight`` multiplies the kernel in the sum; constructor keys (``time_key``, ``conn_key``,
    ``xkey``, ``vkey``, ``obsp_key``, ``backward``) go to the constructor, everything else to
    ``compute_transition_matrix``.
    """

    name: str
    weight: float | None
    init: dict[str, Any]
    compute: dict[str, Any]


_INIT_KEYS = {"time_key", "conn_key", "xkey", "vkey", "attr", "obsp_key", "backward"}


def _parse_value(text: str) -> Any:
    lowered = text.lower()
    if lowered in {"true", "false"}:
        return lowered == "true"
    if lowered == "none":
        return None
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def parse_kernel_spec(spec: str) -> list[KernelTerm]:
    """Parse ``"pseudotime:time_key=t:weight=0.8 + connectivity:weight=0.2"`` into terms.

    Raises
    ------
    ValueError
        Unknown kernel name or a malformed ``key=value`` item (the message names it).
    """
    terms = []
    for raw in spec.split("+"):
        raw = raw.strip()
        if not raw:
            raise ValueError(f"Empty term in kernel specification {spec!r}.")
        name, *items = raw.split(":")
        name = name.strip().lower()
        if name not in _KERNELS:
            raise ValueError(f"Unknown kernel {name!r} in --kernel; choose from {sorted(_KERNELS)}.")
        init, compute, weight = {}, {}, None
        for item in items:
            key, sep, value = item.partition("=")
            if not sep or not key:
                raise ValueError(f"Malformed item {item!r} in kernel term {raw!r}; expected key=value.")
            key, parsed = key.strip(), _parse_value(value.strip())
            if key == "weight":
                weight = float(parsed)
            elif key in _INIT_KEYS:
                init[key] = parsed
            else:
                compute[key] = parsed
        terms.append(KernelTerm(name, weight, init, compute))
    return terms


def _build_kernel(adata, terms: list[KernelTerm], backend: str | None):
    from cellfate_gpu import kernels

    built = []
    for term in terms:
        cls = getattr(kernels, _KERNELS[term.name])
        kernel = cls(adata, **term.init)
        if term.name == "cytotrace":
            kernel.compute_cytotrace()
        built.append(kernel.compute_transition_matrix(backend=backend, **term.compute))
    if len(built) == 1:
        return built[0]
    weights = [t.weight for t in terms]
    if any(w is None for w in weights):
        weights = [1.0 / len(built)] * len(built)
    combined = weights[0] * built[0]
    for w, k in zip(weights[1:], built[1:], strict=True):
        combined = combined + w * k
    return combined


def _pipeline(adata, args, out_dir: Path | None):
    """Kernel → GPCCA (Schur, macrostates) → terminal states → fate probabilities → drivers."""
    from cellfate_gpu.estimators import GPCCA

    kernel = _build_kernel(adata, parse_kernel_spec(args.kernel), args.backend)
    print(kernel)
    g = GPCCA(kernel)
    g.fit(n_states=args.n_states, cluster_key=args.cluster_key)
    method, _, count = args.terminal.partition(":")
    g.predict_terminal_states(method=method, **({"n_states": int(count)} if count else {}))
    g.compute_fate_probabilities()
    drivers = None
    if args.drivers:
        lineage = g.terminal_states.cat.categories[0]
        drivers = g.compute_lineage_drivers(lineages=[lineage], cluster_key=args.cluster_key)
        print(drivers.head(args.drivers).to_string())
    return kernel, g, drivers


def _cmd_demo(args) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import cellfate_gpu as cf
    from cellfate_gpu.datasets import synthetic_atlas
    from cellfate_gpu.estimators import GPCCA
    from cellfate_gpu.kernels import ConnectivityKernel, PseudotimeKernel

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    adata = synthetic_atlas(n_cells=args.n_cells, n_lineages=args.n_lineages, seed=args.seed)
    print(adata)
    pk = PseudotimeKernel(adata, time_key="pseudotime").compute_transition_matrix(backend=args.backend)
    ck = ConnectivityKernel(adata).compute_transition_matrix(backend=args.backend)
    combined = 0.8 * pk + 0.2 * ck
    print(combined)
    combined.plot_random_walks(
        n_sims=100, max_iter=0.25, seed=args.seed, start_ixs={"clusters": ["Root"]}, save=out / "random_walks.png"
    )
    g = GPCCA(combined)
    g.fit(n_states=args.n_states, cluster_key="clusters")
    g.plot_macrostates(which="all", save=out / "macrostates.png")
    g.predict_terminal_states(method="top_n", n_states=args.n_terminal)
    g.plot_macrostates(which="terminal", save=out / "terminal_states.png")
    g.compute_fate_probabilities()
    g.plot_fate_probabilities(same_plot=False, save=out / "fate_probabilities.png")
    cf.pl.circular_projection(adata, keys="clusters", save=out / "circular_projection.png")
    lineage = next(iter(g.terminal_states.cat.categories))
    drivers = g.compute_lineage_drivers(lineages=[lineage], cluster_key="clusters")
    print(f"\nTop driver genes of lineage {lineage!r}:")
    print(drivers.head(10).to_string())
    g.plot_lineage_drivers(lineage, n_genes=8, save=out / "lineage_drivers.png")
    print(g)
    adata.write_h5ad(out / "demo.h5ad")
    print(f"\nWrote figures and demo.h5ad to {out.resolve()}")
    return 0


def _cmd_run(args) -> int:
    import anndata as ad

    from cellfate_gpu import _mpi

    adata = ad.read_h5ad(args.input)  # every rank reads (shared file system); only rank 0 writes
    with _mpi.abort_on_error("cellfate-gpu run"):
        _pipeline(adata, args, None)
    if _mpi.is_root():
        adata.write_h5ad(args.out)
        print(f"Wrote {args.out}")
    return 0


def _cmd_bench(args) -> int:
    from cellfate_gpu.benchmarking import run_benchmarks, write_report

    sizes = list(args.sizes) + ([1_000_000] if args.huge and 1_000_000 not in args.sizes else [])
    df = run_benchmarks(
        sizes=tuple(sizes),
        backends=tuple(args.backends),
        with_cellrank=args.with_cellrank,
        out_dir=args.out,
        steps=args.steps,
        n_genes=args.n_genes,
    )
    write_report(df, args.out)
    return 0


def _cmd_report(args) -> int:
    from cellfate_gpu.benchmarking import read_results, write_report

    md = write_report(read_results(*args.results), args.out)
    print(f"Wrote {md}")
    return 0


def _cmd_info(args) -> int:
    import platform

    import cellfate_gpu as cf
    from cellfate_gpu.backends import available_backends

    print(f"cellfate_gpu {cf.__version__} on Python {platform.python_version()} ({platform.machine()})")
    print(f"settings: {cf.settings!r}")
    for name, reason in available_backends().items():
        print(f"  {name:8s} {'available' if reason is None else 'unavailable: ' + reason}")
    return 0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cellfate-gpu", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo", help="run the CellRank 'Getting started' pipeline on the generated atlas")
    d.add_argument("--out", default="demo_out", help="folder for figures and demo.h5ad")
    d.add_argument("--backend", default=None, help="scipy, cupy, jax, petsc or auto (default: settings)")
    d.add_argument("--n-cells", type=int, default=6000)
    d.add_argument("--n-lineages", type=int, default=6)
    d.add_argument("--n-states", type=int, default=10)
    d.add_argument("--n-terminal", type=int, default=6)
    d.add_argument("--seed", type=int, default=0)
    d.set_defaults(func=_cmd_demo)

    r = sub.add_parser("run", help="run a configured pipeline on an .h5ad file")
    r.add_argument("input")
    r.add_argument("--kernel", nargs="+", default=["pseudotime"], help="e.g. pseudotime:weight=0.8 + connectivity")
    r.add_argument("--n-states", type=int, default=10)
    r.add_argument("--terminal", default="top_n:6", help="method[:n_states], e.g. stability or top_n:6")
    r.add_argument("--cluster-key", default=None)
    r.add_argument("--drivers", type=int, default=10, help="print this many drivers of the first lineage (0: skip)")
    r.add_argument("--backend", default=None)
    r.add_argument("--out", required=True)
    r.set_defaults(func=_cmd_run)

    b = sub.add_parser("bench", help="benchmark backends (and CellRank) on generated atlases")
    b.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    b.add_argument("--backends", nargs="+", default=["scipy"])
    b.add_argument("--with-cellrank", action="store_true")
    b.add_argument("--out", default="bench_out")
    b.add_argument("--huge", action="store_true", help="add the 1M-cell atlas (about 10 GB of RAM with --n-genes 200)")
    b.add_argument("--n-genes", type=int, default=2000, help="genes of the generated atlas (drivers use all)")
    b.add_argument("--steps", nargs="+", default=None, help="subset of the pipeline steps (prerequisites run too)")
    b.set_defaults(func=_cmd_bench)

    rp = sub.add_parser("report", help="one report (Markdown + PNG) from the results.json of earlier bench runs")
    rp.add_argument("results", nargs="+", help="results.json files or the bench output folders holding them")
    rp.add_argument("--out", required=True)
    rp.set_defaults(func=_cmd_report)

    i = sub.add_parser("info", help="versions and backend availability")
    i.set_defaults(func=_cmd_info)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``cellfate-gpu``."""
    args = _parser().parse_args(argv)
    if getattr(args, "kernel", None) is not None and isinstance(args.kernel, list):
        args.kernel = " ".join(args.kernel)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
