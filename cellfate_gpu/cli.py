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
import difflib
import inspect
import math
import os
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["CLIError", "KernelTerm", "kernel_options", "main", "parse_kernel_spec"]

_KERNELS = {
    "pseudotime": "PseudotimeKernel",
    "connectivity": "ConnectivityKernel",
    "velocity": "VelocityKernel",
    "cytotrace": "CytoTRACEKernel",
    "precomputed": "PrecomputedKernel",
}
#: Parameters the CLI sets itself (the data, ``--backend``), so a ``--kernel`` term may not.
_NOT_OPTIONS = {"self", "adata", "object", "backend"}


class CLIError(ValueError):
    """A bad command line or input file; :func:`main` prints it as ``cellfate-gpu <command>: error: ...``."""


@dataclasses.dataclass(frozen=True)
class KernelTerm:
    """One term of a ``--kernel`` expression: ``name:key=value:...``.

    ``weight`` multiplies the kernel in the sum; every other key is routed by the kernel's own
    signature: a constructor parameter (``time_key``, ``conn_key``, ``backward``, ...) goes to
    ``init``, a parameter of ``compute_transition_matrix`` (``frac_to_keep``, ``softmax_scale``,
    ...) to ``compute``, and for ``cytotrace`` a parameter of ``compute_cytotrace`` (``layer``,
    ``n_genes``, ...) to ``prepare``.
    """

    name: str
    weight: float | None
    init: dict[str, Any]
    compute: dict[str, Any]
    prepare: dict[str, Any] = dataclasses.field(default_factory=dict)


def _named_parameters(fn: Any) -> list[str]:
    """Names a caller may pass to ``fn`` by keyword (``**kwargs`` and the CLI's own parameters excluded)."""
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return [p.name for p in inspect.signature(fn).parameters.values() if p.kind in kinds and p.name not in _NOT_OPTIONS]


def kernel_options(name: str) -> dict[str, str]:
    """The options of kernel ``name`` in a ``--kernel`` term: ``{option: "init" | "compute" | "prepare"}``.

    Read from the kernel class's signatures (constructor first), so the CLI accepts exactly what
    the Python API accepts by name; ``weight`` is added by :func:`parse_kernel_spec`.
    """
    from cellfate_gpu import kernels

    cls = getattr(kernels, _KERNELS[name])
    where: dict[str, str] = {}
    stages = [("init", cls.__init__), ("compute", cls.compute_transition_matrix)]
    if hasattr(cls, "compute_cytotrace"):
        stages.append(("prepare", cls.compute_cytotrace))
    for stage, fn in stages:
        for option in _named_parameters(fn):
            where.setdefault(option, stage)
    return where


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


def _parse_weight(value: Any, raw: str) -> float:
    try:
        weight = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"weight={value!r} in kernel term {raw!r} is not a number.") from None
    if isinstance(value, bool) or not math.isfinite(weight) or weight <= 0:
        raise ValueError(f"weight={value!r} in kernel term {raw!r} must be a finite positive number.")
    return weight


def parse_kernel_spec(spec: str) -> list[KernelTerm]:
    r"""Parse ``"pseudotime:time_key=t:weight=0.8 + connectivity:weight=0.2"`` into terms.

    Weights: give ``weight=`` on **every** term or on **none**.  With none, the terms are
    averaged, :math:`T = \frac1m \sum_i T_i`; with all, :math:`T = \sum_i w_i T_i / \sum_i w_i`
    (CellRank's renormalisation of a kernel sum, so ``0.8``/``0.2`` and ``4``/``1`` are the same).
    A weight on some terms only is refused: it used to be dropped silently for an unweighted
    average, and guessing the missing weight as "one minus the others" hides typos.

    Raises
    ------
    ValueError
        Unknown kernel name, an unknown option (the message lists the valid ones), a malformed
        ``key=value`` item, a repeated option, a non-positive weight, or weights on some terms only.
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
        where = kernel_options(name)
        stages: dict[str, dict[str, Any]] = {"init": {}, "compute": {}, "prepare": {}}
        weight, seen = None, set()
        for item in items:
            key, sep, value = item.partition("=")
            key = key.strip()
            if not sep or not key:
                raise ValueError(f"Malformed item {item!r} in kernel term {raw!r}; expected key=value.")
            if key in seen:
                raise ValueError(f"Option {key!r} is given twice in kernel term {raw!r}.")
            seen.add(key)
            parsed = _parse_value(value.strip())
            if key == "weight":
                weight = _parse_weight(parsed, raw)
            elif key in where:
                stages[where[key]][key] = parsed
            else:
                close = difflib.get_close_matches(key, [*where, "weight"], n=1)
                hint = f" Did you mean {close[0]!r}?" if close else ""
                raise ValueError(
                    f"Unknown option {key!r} for kernel {name!r} in {raw!r}.{hint} "
                    f"Valid options: {', '.join(sorted([*where, 'weight']))}."
                )
        terms.append(KernelTerm(name, weight, stages["init"], stages["compute"], stages["prepare"]))
    weighted = [t.weight is not None for t in terms]
    if len(terms) > 1 and any(weighted) and not all(weighted):
        missing = [t.name for t in terms if t.weight is None]
        raise ValueError(
            f"Kernel specification {spec!r} gives a weight to some terms but not to {missing}: give weight= "
            "to every term (they are renormalised to sum to one) or to none (equal weights)."
        )
    return terms


def _build_kernel(adata, terms: list[KernelTerm], backend: str | None):
    """The kernels of ``terms``, computed on ``backend``, combined as :func:`parse_kernel_spec` documents."""
    from cellfate_gpu import kernels

    built = []
    for term in terms:
        cls = getattr(kernels, _KERNELS[term.name])
        kernel = cls(adata, **term.init)
        if term.name == "cytotrace":
            kernel.compute_cytotrace(**term.prepare)
        built.append(kernel.compute_transition_matrix(backend=backend, **term.compute))
    if len(built) == 1:
        return built[0]
    weights = [t.weight for t in terms]
    if any(w is None for w in weights):
        weights = [1.0] * len(built)
    combined = weights[0] * built[0]
    for w, k in zip(weights[1:], built[1:], strict=True):
        combined = combined + w * k
    return combined


def _parse_terminal(spec: str) -> tuple[str, dict[str, int]]:
    """``--terminal method[:n]`` → ``(method, {"n_states": n})``; refuses a count that is not a positive integer."""
    method, sep, count = spec.partition(":")
    if not method:
        raise CLIError(f"--terminal {spec!r}: expected method[:n_states], e.g. stability or top_n:6.")
    if not sep:
        return method, {}
    try:
        n = int(count)
    except ValueError:
        raise CLIError(f"--terminal {spec!r}: the number of states {count!r} is not an integer.") from None
    if n < 1:
        raise CLIError(f"--terminal {spec!r}: the number of states must be at least 1, got {n}.")
    return method, {"n_states": n}


def _pipeline(adata, args, out_dir: Path | None):
    """Kernel → GPCCA (Schur, macrostates) → terminal states → fate probabilities → drivers.

    The kernel's transition matrix is written to ``adata.obsp['T_fwd']`` (``uns['T_fwd_params']``),
    so that ``GPCCA.from_adata`` can rebuild the estimator from the output file.
    """
    from cellfate_gpu.estimators import GPCCA

    kernel = _build_kernel(adata, parse_kernel_spec(args.kernel), args.backend)
    print(kernel)
    g = GPCCA(kernel)
    g.fit(n_states=args.n_states, cluster_key=args.cluster_key)
    method, options = _parse_terminal(args.terminal)
    g.predict_terminal_states(method=method, **options)
    g.compute_fate_probabilities()
    drivers = None
    if args.drivers:
        lineage = g.terminal_states.cat.categories[0]
        drivers = g.compute_lineage_drivers(lineages=[lineage], cluster_key=args.cluster_key)
        print(drivers.head(args.drivers).to_string())
    kernel.write_to_adata()
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


def _read_input(path: Path):
    """``anndata.read_h5ad(path)`` with errors that name the file."""
    import anndata as ad

    if not path.exists():
        raise CLIError(f"Input file {str(path)!r} does not exist.")
    if not path.is_file():
        raise CLIError(f"Input {str(path)!r} is not a file.")
    try:
        return ad.read_h5ad(path)
    except Exception as err:  # h5py/anndata raise OSError, KeyError, TypeError, ... for a file that is not h5ad
        raise CLIError(
            f"Cannot read {str(path)!r} as an .h5ad file ({type(err).__name__}: {err}). "
            "Is it an AnnData file written by anndata.write_h5ad?"
        ) from err


def _string_to_object(values: Any) -> Any:
    """Turn pandas ``string``/``str`` (Python or Arrow storage) values → object dtype; anything else unchanged."""
    import pandas as pd

    if isinstance(values, pd.Index):
        return pd.Index(values.astype(object), name=values.name) if isinstance(values.dtype, pd.StringDtype) else values
    dtype = getattr(values, "dtype", None)
    if isinstance(dtype, pd.CategoricalDtype) and isinstance(dtype.categories.dtype, pd.StringDtype):
        return values.cat.set_categories(dtype.categories.astype(object), ordered=dtype.ordered)
    if isinstance(dtype, pd.StringDtype):
        if values.isna().any():  # a categorical keeps the missing values (code -1), which every anndata reads
            return values.astype("category").cat.rename_categories(lambda c: str(c))
        return values.astype(object)
    return values


def _frame_to_object_strings(df: Any) -> Any:
    import pandas as pd

    if not isinstance(df, pd.DataFrame):
        return df
    out = df.copy(deep=False)
    out.index = _string_to_object(out.index)
    out.columns = _string_to_object(out.columns)
    for col in out.columns:
        out[col] = _string_to_object(out[col])
    return out


def _uns_to_object_strings(value: Any) -> Any:
    import pandas as pd

    if isinstance(value, dict):
        return {k: _uns_to_object_strings(v) for k, v in value.items()}
    if isinstance(value, pd.DataFrame):
        return _frame_to_object_strings(value)
    if isinstance(value, pd.api.extensions.ExtensionArray) and isinstance(value.dtype, pd.StringDtype):
        return value.to_numpy(dtype=object, na_value="")
    return value


def make_h5ad_writable(adata) -> None:
    """Turn pandas' nullable/Arrow string dtypes in ``adata`` into ones that every anndata can write.

    A file written by anndata >= 0.13 under pandas 3 holds string indices and columns as
    ``nullable-string-array``; anndata 0.11/0.12 read them back as ``pd.arrays.StringArray`` (or
    ``ArrowStringArray``) and then refuse to write them unless
    ``anndata.settings.allow_write_nullable_strings`` is set -- and a file written with that
    setting cannot be read by anndata < 0.11.  So, in place: the indices of ``obs``/``var`` (and of
    ``raw.var``), their column names, string columns (to ``object``; to ``category`` where values
    are missing, which keeps them missing) and the categories of categorical columns become
    ``object`` strings; DataFrames in ``obsm``/``varm``/``uns`` likewise.
    """
    adata.obs = _frame_to_object_strings(adata.obs)
    adata.var = _frame_to_object_strings(adata.var)
    if adata.raw is not None:
        raw_var = _frame_to_object_strings(adata.raw.var)
        if raw_var is not adata.raw.var:
            adata.raw._var = raw_var
    for mapping in (adata.obsm, adata.varm):
        for key in list(mapping.keys()):
            value = mapping[key]
            converted = _frame_to_object_strings(value)
            if converted is not value:
                converted.index = _string_to_object(converted.index)
                mapping[key] = converted
    for key in list(adata.uns.keys()):
        adata.uns[key] = _uns_to_object_strings(adata.uns[key])


class _AtomicOutput:
    """An output file that appears under its final name complete or not at all.

    The file is written to a temporary file beside the final one (same directory, so the same file
    system), flushed to disk and renamed over the final name with :func:`os.replace`, which is
    atomic on POSIX.  The temporary file is created at once, so a missing or read-only directory
    is reported before any work is done; :meth:`discard` removes it when the run fails or is
    interrupted.  A final name that is a symbolic link is resolved (the link's target is
    replaced, the link kept).
    """

    def __init__(self, final: str | os.PathLike[str]):
        final = Path(final)
        self.final = final.resolve() if final.is_symlink() else final
        parent = self.final.parent
        if not parent.is_dir():
            raise CLIError(f"Cannot write {str(final)!r}: the directory {str(parent)!r} does not exist.")
        if self.final.is_dir():
            raise CLIError(f"Cannot write {str(final)!r}: it is a directory.")
        try:
            fd, tmp = tempfile.mkstemp(dir=parent, prefix=f".{self.final.name}.", suffix=".partial")
        except OSError as err:
            raise CLIError(f"Cannot write {str(final)!r}: {err.strerror} in {str(parent)!r}.") from err
        os.close(fd)
        self.tmp: Path | None = Path(tmp)

    def commit(self, writer: Any) -> Path:
        """``writer(tmp)``, then move the finished file to the final name."""
        assert self.tmp is not None
        writer(self.tmp)
        with open(self.tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(self.tmp, 0o666 & ~umask)  # mkstemp makes 0600; give what a plain open() would
        os.replace(self.tmp, self.final)
        self.tmp = None
        return self.final

    def discard(self) -> None:
        """Remove the temporary file (no-op after :meth:`commit`)."""
        if self.tmp is not None:
            self.tmp.unlink(missing_ok=True)
            self.tmp = None


def _on_root(fn: Any) -> Any:
    """``fn()`` on rank 0; a :class:`CLIError` there is raised on every rank (so no rank runs on alone)."""
    from cellfate_gpu import _mpi

    comm = _mpi.comm_world()
    result, error = None, None
    if comm is None or comm.Get_rank() == 0:
        try:
            result = fn()
        except CLIError as err:
            error = str(err)
    if comm is not None and comm.Get_size() > 1:
        error = comm.bcast(error, root=0)
    if error is not None:
        raise CLIError(error)
    return result


def _on_every_rank(fn: Any) -> Any:
    """``fn()`` on every rank; a :class:`CLIError` on any rank is raised on all of them, naming the ranks.

    Without this, a rank that cannot read the input (a file system not mounted on its node) would
    exit while the others wait for it in the pipeline's first collective call.
    """
    from cellfate_gpu import _mpi

    comm = _mpi.comm_world()
    result, error = None, None
    try:
        result = fn()
    except CLIError as err:
        error = str(err)
    if comm is None or comm.Get_size() == 1:
        if error is not None:
            raise CLIError(error)
        return result
    errors = comm.allgather(error)
    failed = [(r, e) for r, e in enumerate(errors) if e is not None]
    if failed:
        ranks = ", ".join(str(r) for r, _ in failed)
        raise CLIError(f"{failed[0][1]} (on rank(s) {ranks} of {comm.Get_size()})")
    return result


def _raise_terminated(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def _cmd_run(args) -> int:
    from cellfate_gpu import _mpi

    try:  # refuse a bad command line before reading anything
        parse_kernel_spec(args.kernel)
    except ValueError as err:
        raise CLIError(f"--kernel: {err}") from None
    _parse_terminal(args.terminal)
    if args.n_states is not None and args.n_states < 1:
        raise CLIError(f"--n-states must be at least 1, got {args.n_states}.")
    source = Path(args.input)
    # SIGTERM (a batch system's time limit, a killed mpiexec) becomes SystemExit, so that the
    # temporary output is removed instead of left behind; SIGINT already raises KeyboardInterrupt.
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    output: _AtomicOutput | None = None
    try:
        output = _on_root(lambda: _AtomicOutput(args.out))  # a bad --out fails now, not after the pipeline
        adata = _on_every_rank(lambda: _read_input(source))  # every rank reads (shared file system)
        with _mpi.abort_on_error("cellfate-gpu run"):
            try:
                _pipeline(adata, args, None)
                make_h5ad_writable(adata)
            except BaseException:
                if output is not None:  # before abort_on_error's MPI_Abort, which skips every `finally`
                    output.discard()
                raise
        # rank 0 writes; a failure there is raised on every rank (no rank waits for a file that never comes)
        final = _mpi.root_only_write(args.out, lambda _: output.commit(adata.write_h5ad))
        if _mpi.is_root():
            print(f"Wrote {final}")
    finally:
        if output is not None:
            output.discard()
        signal.signal(signal.SIGTERM, previous)
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
        atlas=args.atlas,
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
    r.add_argument(
        "--kernel",
        nargs="+",
        default=["pseudotime"],
        help="kernel expression, e.g. 'pseudotime:time_key=dpt_pseudotime:weight=0.8 + connectivity:weight=0.2'; "
        "weights on every term (renormalised to sum to one) or on none (equal weights); options are the "
        "kernel's constructor and compute_transition_matrix parameters",
    )
    r.add_argument("--n-states", type=int, default=10)
    r.add_argument("--terminal", default="top_n:6", help="method[:n_states], e.g. stability or top_n:6")
    r.add_argument("--cluster-key", default=None)
    r.add_argument("--drivers", type=int, default=10, help="print this many drivers of the first lineage (0: skip)")
    r.add_argument("--backend", default=None)
    r.add_argument(
        "--out",
        required=True,
        help="output .h5ad (may be the input): written beside it under a temporary name, then renamed",
    )
    r.set_defaults(func=_cmd_run)

    b = sub.add_parser("bench", help="benchmark backends (and CellRank) on generated atlases")
    b.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    b.add_argument("--backends", nargs="+", default=["scipy"])
    b.add_argument("--with-cellrank", action="store_true")
    b.add_argument("--out", default="bench_out")
    b.add_argument("--huge", action="store_true", help="add the 1M-cell atlas (about 10 GB of RAM with --n-genes 200)")
    b.add_argument("--n-genes", type=int, default=2000, help="genes of the generated atlas (drivers use all)")
    b.add_argument("--steps", nargs="+", default=None, help="subset of the pipeline steps (prerequisites run too)")
    b.add_argument(
        "--atlas",
        choices=("synthetic", "user_like"),
        default="synthetic",
        help="generated atlas: synthetic (our generator) or user_like (kNN of PCA of noisy counts, as scanpy builds)",
    )
    b.set_defaults(func=_cmd_bench)

    rp = sub.add_parser("report", help="one report (Markdown + PNG) from the results.json of earlier bench runs")
    rp.add_argument("results", nargs="+", help="results.json files or the bench output folders holding them")
    rp.add_argument("--out", required=True)
    rp.set_defaults(func=_cmd_report)

    i = sub.add_parser("info", help="versions and backend availability")
    i.set_defaults(func=_cmd_info)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``cellfate-gpu``; a :class:`CLIError` is printed (no traceback) and exits with status 2."""
    args = _parser().parse_args(argv)
    if getattr(args, "kernel", None) is not None and isinstance(args.kernel, list):
        args.kernel = " ".join(args.kernel)
    try:
        return args.func(args)
    except CLIError as err:
        print(f"cellfate-gpu {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
