"""MPI behaviour: the ``petsc`` backend on 2 ranks equals the serial answer; the ``_mpi`` helpers.

The ``mpi``-marked tests run under ``mpiexec -n 2`` (``ci/test_mpi.sh``); in a plain pytest run
they are skipped with the reason.  The unmarked tests check the helpers without MPI and, from a
serial run, launch a small 2-rank job to check that a failure on one rank aborts the whole job.
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg as sla
import scipy.sparse as sp

from cellfate_gpu import _mpi

UNDER_MPI = _mpi.size() > 1
needs_mpi = pytest.mark.skipif(
    not UNDER_MPI,
    reason="needs an MPI run with more than one rank: `mpiexec -n 2 python -m pytest -m mpi` (ci/test_mpi.sh)",
)


def _petsc_reason() -> str | None:
    from cellfate_gpu.backends._petsc import PetscBackend

    return PetscBackend.why_unavailable()


needs_petsc = pytest.mark.skipif(_petsc_reason() is not None, reason=f"petsc backend unavailable: {_petsc_reason()}")


def knn_transition(n: int = 240, k: int = 8, seed: int = 0) -> sp.csr_matrix:
    """Deterministic row-stochastic kNN transition matrix (every rank builds the same one)."""
    rng = np.random.default_rng(seed)
    t = np.sort(rng.uniform(0.0, 1.0, n))
    X = np.column_stack([t, 0.03 * rng.standard_normal(n)])
    D = np.linalg.norm(X[:, None, :] - X[None, :, :], axis=-1)
    nbrs = np.argsort(D, axis=1, kind="stable")[:, 1 : k + 1]
    rows = np.repeat(np.arange(n), k)
    cols = nbrs.ravel()
    d = D[rows, cols]
    w = np.exp(-((d / np.median(d)) ** 2)) * np.where(t[cols] > t[rows], 2.0, 1.0)
    T = sp.csr_matrix((w, (rows, cols)), shape=(n, n))
    return sp.csr_matrix(sp.diags(1.0 / np.asarray(T.sum(axis=1)).ravel()) @ T)


def _same_on_all_ranks(x: np.ndarray) -> bool:
    comm = _mpi.comm_world()
    everyone = comm.allgather(np.asarray(x))
    return all(np.array_equal(everyone[0], other) for other in everyone[1:])


# ----------------------------------------------------------------------------- helpers without MPI
@pytest.mark.skipif(UNDER_MPI, reason="checks the single-process behaviour")
def test_helpers_without_mpi(tmp_path):
    assert _mpi.rank() == 0 and _mpi.size() == 1 and _mpi.is_root()
    _mpi.barrier()
    out = _mpi.root_only_write(tmp_path / "a.txt", lambda p: p.write_text("hello"))
    assert out.read_text() == "hello"
    with pytest.raises(ZeroDivisionError), _mpi.abort_on_error("dividing"):
        _ = 1 / 0
    with pytest.raises(OSError):
        _mpi.root_only_write(tmp_path / "missing" / "b.txt", lambda p: p.write_text("x"))


_FAILING_JOB = textwrap.dedent(
    """
    import sys
    from cellfate_gpu import _mpi
    print("rank", _mpi.rank(), "started", flush=True)
    with _mpi.abort_on_error("the test step"):
        if _mpi.rank() == 1:
            def deep(n):
                if n == 0:
                    raise ValueError("rank one is broken")
                deep(n - 1)
            deep(int(sys.argv[1]))
        _mpi.barrier()  # rank 0 would wait here forever without the abort
    print("unreachable")
    """
)


def _clean_env(**extra: str) -> dict[str, str]:
    """The environment without the variables of an enclosing MPI job (so mpiexec starts a fresh one)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PMI_", "OMPI_", "PMIX_", "MPI_LOCAL", "HYDI_"))}
    return {**env, **extra}


def _run_failing_job(depth: int = 5, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["mpiexec", "-n", "2", sys.executable, "-c", _FAILING_JOB, str(depth)],
        capture_output=True,
        text=True,
        timeout=180,
        env=_clean_env(**env),
    )


def _assert_reported(proc: subprocess.CompletedProcess, run: str) -> None:
    where = f"{run}: exit {proc.returncode}, stderr {proc.stderr[-2000:]!r}"
    assert proc.returncode != 0, where
    assert "[rank 1/2] the test step failed: ValueError: rank one is broken" in proc.stderr, where
    assert "in deep\n" in proc.stderr and "Traceback (most recent call last)" in proc.stderr, where  # traceback too
    assert "[rank 1/2] calling MPI_Abort so that the other ranks do not hang" in proc.stderr, where
    assert "unreachable" not in proc.stdout, where


needs_mpiexec = pytest.mark.skipif(shutil.which("mpiexec") is None, reason="mpiexec not found")


@contextlib.contextmanager
def _busy_cpus(n: int):
    """``n`` busy-loop processes: the loaded machine on which the launcher is slow to forward stderr."""
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]
    try:
        yield
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


@pytest.mark.skipif(UNDER_MPI, reason="launches its own 2-rank jobs")
@needs_mpiexec
def test_abort_on_error_ends_the_whole_job_and_says_why_every_time():
    """Six 2-rank failing jobs in a row, three on a quiet and three on an overloaded machine.

    Each must end with a non-zero status and the failing rank's message and traceback on
    mpiexec's stderr (captured through a pipe, as a batch system does).
    """
    pytest.importorskip("mpi4py", reason="mpi4py not installed")
    for i in range(3):
        _assert_reported(_run_failing_job(depth=5 + 40 * i), f"quiet run {i}")
    with _busy_cpus(2 * (os.cpu_count() or 1)):
        for i in range(3):
            _assert_reported(_run_failing_job(depth=5 + 40 * i), f"loaded run {i}")


@pytest.mark.skipif(UNDER_MPI, reason="launches its own 2-rank job")
@needs_mpiexec
def test_abort_on_error_also_writes_the_report_to_a_file(tmp_path):
    pytest.importorskip("mpi4py", reason="mpi4py not installed")
    proc = _run_failing_job(**{_mpi.ERROR_DIR_ENV: str(tmp_path)})
    _assert_reported(proc, "with CELLFATE_MPI_ERROR_DIR")
    report = (tmp_path / "cellfate-rank1-error.txt").read_text()
    assert "[rank 1/2] the test step failed: ValueError: rank one is broken" in report
    assert not (tmp_path / "cellfate-rank0-error.txt").exists()


@pytest.mark.skipif(sys.platform != "linux", reason="FIONREAD on a pipe's write end is Linux behaviour")
def test_unread_bytes_of_a_pipe():
    r, w = os.pipe()
    try:
        assert _mpi._unread_bytes(w) == 0
        os.write(w, b"twelve bytes")
        assert _mpi._unread_bytes(w) == 12
        os.read(r, 5)
        assert _mpi._unread_bytes(w) == 7
    finally:
        os.close(r)
        os.close(w)


@pytest.mark.skipif(sys.platform != "linux", reason="FIONREAD on a pipe's write end is Linux behaviour")
def test_report_waits_until_the_reader_has_taken_the_message():
    """The reporting rank does not go on (to MPI_Abort) while its message still sits in the stderr pipe."""
    child = textwrap.dedent(
        """
        from cellfate_gpu import _mpi
        print("writing", flush=True)
        _mpi._report_failure("x" * 5000 + "\\n", 1, drain_timeout=120, grace=0)
        print("returned", _mpi._unread_bytes(2), flush=True)
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", child], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_clean_env()
    )
    try:
        assert proc.stdout.readline() == b"writing\n"
        ready, _, _ = select.select([proc.stdout], [], [], 1.0)
        assert not ready, "the report returned while nobody had read stderr"
        assert proc.stderr.read(5001) == b"x" * 5000 + b"\n"
        assert proc.stdout.readline() == b"returned 0\n"
    finally:
        proc.kill()
        proc.communicate()


# ----------------------------------------------------------------------------- the CLI on 2 ranks vs serial
_PIPELINES = {
    # connected: one component, three branches
    "connected": ({"n_cells": 1000, "n_lineages": 3, "seed": 0}, ["--n-states", "6", "--terminal", "top_n:3"]),
    # the atlas: one communicating class, but four branch tips the walk practically never
    # leaves (eigenvalue 1 four times to 1e-12); 8 macrostates are not crisp (~0.5)
    "nearly_reducible": ({"n_cells": 4000, "n_lineages": 4, "seed": 3}, ["--n-states", "8", "--terminal", "top_n:4"]),
    # two components (no edge between them): two closed classes with two branch tips each
    "disconnected": ("two_atlases", ["--n-states", "6", "--terminal", "top_n:4"]),
}


def _make_atlas(params):
    from cellfate_gpu.datasets import synthetic_atlas

    return _two_component_atlas() if params == "two_atlases" else synthetic_atlas(**params)


def _two_component_atlas():
    """Two generated atlases side by side (block-diagonal kNN graphs): a reducible T."""
    import anndata as ad
    import scipy.sparse as sp

    from cellfate_gpu.datasets import synthetic_atlas

    parts = [synthetic_atlas(n_cells=900, n_lineages=2, seed=1), synthetic_atlas(n_cells=1100, n_lineages=2, seed=2)]
    for i, part in enumerate(parts):
        part.obs_names = [f"c{i}_{name}" for name in part.obs_names]
        part.obs["clusters"] = [f"{c}_{i}" for c in part.obs["clusters"].astype(str)]
    adata = ad.concat(parts, axis=0, merge="same")
    for key in ("connectivities", "distances"):
        adata.obsp[key] = sp.csr_matrix(sp.block_diag([p.obsp[key] for p in parts]))
    adata.obs["clusters"] = adata.obs["clusters"].astype("category")
    adata.uns["neighbors"] = parts[0].uns.get("neighbors", {})
    return adata


_CLI_KERNEL = ["--kernel", "pseudotime:weight=0.8 + connectivity:weight=0.2", "--drivers", "0"]
_SCIPY = ["--backend", "scipy", "--out"]


@pytest.fixture(scope="module")
def serial_runs(tmp_path_factory):
    """``cellfate-gpu run ... --backend scipy`` on each atlas (in this process), cached per module."""
    from cellfate_gpu.cli import main

    folder = tmp_path_factory.mktemp("cli_mpi")
    cache: dict[str, tuple[Path, Path | None, str]] = {}

    def get(name: str):
        if name not in cache:
            params, options = _PIPELINES[name]
            source = folder / f"{name}.h5ad"
            _make_atlas(params).write_h5ad(source)
            out = folder / f"{name}_scipy.h5ad"
            try:
                code, error = (
                    main(["run", str(source), *_CLI_KERNEL, *options, "--backend", "scipy", "--out", str(out)]),
                    "",
                )
            except Exception as err:  # the reference itself fails: reported by the test
                code, error = 1, f"{type(err).__name__}: {err}"
            cache[name] = (source, out if code == 0 else None, error)
        return cache[name]

    return get


def _states_and_fates(path: Path) -> tuple[dict[frozenset, str], dict[frozenset, np.ndarray]]:
    """Terminal states as {set of cells: name} and the fate probability column of each state."""
    import anndata as ad

    from cellfate_gpu.lineage import Lineage

    adata = ad.read_h5ad(path)
    states = adata.obs["term_states_fwd"]
    fates = Lineage.from_adata(adata, "lineages_fwd")
    by_cells, columns = {}, {}
    for j, name in enumerate(fates.names):
        cells = frozenset(states.index[states.astype(object) == name])
        by_cells[cells] = name
        columns[cells] = np.asarray(fates)[:, j]
    return by_cells, columns


def _assert_same_pipeline_result(path: Path, reference: Path, what: str) -> None:
    """Terminal states of ``path`` = those of ``reference`` (the same cells), fate probabilities to 1e-6."""
    ref_states, ref_fates = _states_and_fates(reference)
    states, fates = _states_and_fates(path)
    ref_cells, cells = set().union(*ref_states), set().union(*states)
    assert set(states) == set(ref_states), (
        f"{what}: terminal states differ from the serial scipy run ({len(cells ^ ref_cells)} of "
        f"{len(ref_cells)} terminal cells differ; states {sorted(map(len, states))} vs {sorted(map(len, ref_states))})"
    )
    for group in ref_states:
        np.testing.assert_allclose(
            fates[group], ref_fates[group], rtol=0, atol=1e-6, err_msg=f"{what}: {ref_states[group]}"
        )


@pytest.mark.skipif(UNDER_MPI, reason="launches its own MPI jobs")
@needs_mpiexec
@needs_petsc
@pytest.mark.parametrize("n_ranks", [1, 2], ids=["1rank", "2ranks"])
@pytest.mark.parametrize("atlas", list(_PIPELINES))
def test_cli_on_petsc_ranks_equals_serial_scipy(serial_runs, atlas, n_ranks):
    """``mpiexec -n N cellfate-gpu run --backend petsc`` = ``cellfate-gpu run --backend scipy``.

    Same terminal states (the same cells), fate probabilities equal to 1e-6, on a connected and a
    disconnected (reducible) atlas.
    """
    source, serial_out, error = serial_runs(atlas)
    assert serial_out is not None, f"the serial scipy run on the {atlas} atlas failed: {error}"
    out = source.with_name(f"{atlas}_petsc_{n_ranks}.h5ad")
    _, options = _PIPELINES[atlas]
    cmd = ["mpiexec", "-n", str(n_ranks), sys.executable, "-m", "cellfate_gpu.cli", "run", str(source)]
    proc = subprocess.run(
        [*cmd, *_CLI_KERNEL, *options, "--backend", "petsc", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        env=_clean_env(),
    )
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stderr[-4000:]}"
    _assert_same_pipeline_result(out, serial_out, f"petsc on {n_ranks} rank(s), {atlas} atlas")


# ----------------------------------------------------------------------------- 2 ranks vs serial
@pytest.mark.mpi
@needs_mpi
@needs_petsc
def test_helpers_under_mpi(tmp_path_factory):
    assert _mpi.size() >= 2 and _mpi.rank() == _mpi.comm_world().Get_rank()
    comm = _mpi.comm_world()
    path = comm.bcast(str(tmp_path_factory.mktemp("mpi") / "once.txt") if _mpi.is_root() else None, root=0)
    calls = []
    _mpi.root_only_write(path, lambda p: (calls.append(1), p.write_text(f"{_mpi.rank()}")))
    assert len(calls) == (1 if _mpi.is_root() else 0)
    with open(path) as fh:
        assert fh.read() == "0"
    bad = comm.bcast(str(tmp_path_factory.mktemp("mpi2") / "no" / "x.txt") if _mpi.is_root() else None, root=0)
    with pytest.raises(RuntimeError, match="Rank 0 failed to write"):
        _mpi.root_only_write(bad, lambda p: p.write_text("x"))


@pytest.mark.mpi
@needs_mpi
@needs_petsc
@pytest.mark.parametrize("distribution", ["replicated", "root"])
def test_solve_on_two_ranks_equals_serial(distribution):
    from cellfate_gpu.backends._petsc import PetscBackend
    from cellfate_gpu.backends._scipy import ScipyBackend

    A = sp.csr_matrix(sp.identity(240) - 0.95 * knn_transition())
    B = np.random.default_rng(7).standard_normal((240, 4))
    be = PetscBackend(distribution=distribution)
    mine = (A, B) if distribution == "replicated" or _mpi.is_root() else (None, None)
    res = be.solve(*mine, method="gmres", tol=1e-12, preconditioner="bjacobi")
    assert res.status.ok, res.message
    serial = ScipyBackend().solve(A, B, method="direct")
    np.testing.assert_allclose(res.X, serial.X, rtol=0, atol=1e-9 * np.abs(serial.X).max())
    assert np.all(res.residual_norms <= 1e-11)
    assert _same_on_all_ranks(res.X)


@pytest.mark.mpi
@needs_mpi
@needs_petsc
@pytest.mark.parametrize("method", ["gmres", "bcgs"])
def test_solve_methods_on_two_ranks(method):
    from cellfate_gpu.backends._petsc import PetscBackend

    A = sp.csr_matrix(sp.identity(240) - 0.9 * knn_transition(seed=1))
    b = np.linspace(0.0, 1.0, 240)
    res = PetscBackend().solve(A, b, method=method, tol=1e-12, preconditioner="ilu")  # ilu -> bjacobi/ILU on 2 ranks
    assert res.status.ok and res.X.shape == (240,)
    np.testing.assert_allclose(res.X, np.linalg.solve(A.toarray(), b), rtol=1e-9)
    assert "pc:bjacobi" in res.method


@pytest.mark.mpi
@needs_mpi
@needs_petsc
@pytest.mark.parametrize("distribution", ["replicated", "root"])
def test_schur_on_two_ranks_equals_dense(distribution):
    from cellfate_gpu.backends._petsc import PetscBackend

    A = knn_transition(seed=2)
    be = PetscBackend(distribution=distribution)
    res = be.partial_schur(A if distribution == "replicated" or _mpi.is_root() else None, 5, which="LR", tol=1e-12)
    assert res.status.ok
    kk = res.Q.shape[1]
    ev = np.linalg.eigvals(A.toarray())
    ref = ev[np.lexsort((-ev.imag, -ev.real))][:kk]
    np.testing.assert_allclose(res.eigenvalues, ref, atol=1e-10)
    np.testing.assert_allclose(res.Q.T @ res.Q, np.eye(kk), atol=1e-12)
    np.testing.assert_allclose(A @ res.Q, res.Q @ res.R, atol=1e-9)
    evd, V = np.linalg.eig(A.toarray())
    W = V[:, [int(np.argmin(np.abs(evd - lam))) for lam in ref]]
    assert np.max(sla.subspace_angles(res.Q, sla.orth(np.column_stack([W.real, W.imag])))) <= 1e-8
    assert _same_on_all_ranks(res.Q) and _same_on_all_ranks(res.R)


@pytest.mark.mpi
@needs_mpi
@needs_petsc
def test_slepc_start_vector_is_the_same_for_any_number_of_ranks():
    """SLEPc starts from our seeded host vector, split by rows, not from its rank-dependent random one.

    (SLEPc's own start on two ranks lost a whole direction of a 300k-cell chain; docs/reliability.md.)
    """
    from cellfate_gpu.backends._petsc import PetscBackend
    from cellfate_gpu.backends._petsc._eps import _start_vector

    A = knn_transition(seed=2)
    be = PetscBackend()
    M, ranges = be._petsc_matrix(A)
    try:
        v = _start_vector(M, ranges, seed=3)
        rows = be._gather_rows(v.getArray(readonly=True).reshape(-1, 1), ranges)[:, 0]
        v.destroy()
    finally:
        M.destroy()
    assert np.array_equal(rows, np.random.default_rng(3).standard_normal(A.shape[0]))


@pytest.mark.mpi
@needs_mpi
@needs_petsc
def test_replicated_mode_detects_different_matrices():
    from cellfate_gpu.backends._petsc import PetscBackend

    A = knn_transition(seed=10 + _mpi.rank())  # a different matrix on every rank
    with pytest.raises(ValueError, match="same matrix on every rank"):
        PetscBackend().solve(sp.csr_matrix(sp.identity(240) - 0.5 * A), np.ones(240))


@pytest.mark.mpi
@needs_mpi
@needs_petsc
@pytest.mark.parametrize("atlas", list(_PIPELINES))
def test_cli_pipeline_in_this_mpi_job_equals_serial(tmp_path_factory, atlas):
    """The same comparison inside the ``mpiexec -n 2 pytest -m mpi`` job: every rank calls ``main``."""
    from cellfate_gpu.cli import main

    comm = _mpi.comm_world()
    folder = Path(comm.bcast(str(tmp_path_factory.mktemp("cli_spmd")) if _mpi.is_root() else None, root=0))
    params, options = _PIPELINES[atlas]
    source, serial, parallel = folder / "in.h5ad", folder / "scipy.h5ad", folder / "petsc.h5ad"
    _mpi.root_only_write(source, lambda p: _make_atlas(params).write_h5ad(p))
    error = None
    if _mpi.is_root():  # the serial reference: a separate, non-MPI process (the CLI in this job is SPMD)
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "cellfate_gpu.cli",
                "run",
                str(source),
                *_CLI_KERNEL,
                *options,
                *_SCIPY,
                str(serial),
            ],
            capture_output=True,
            text=True,
            timeout=300,
            env=_clean_env(),
        )
        error = None if proc.returncode == 0 else proc.stderr[-3000:]
    error = comm.bcast(error, root=0)
    assert error is None, f"the serial scipy run on the {atlas} atlas failed: {error}"
    assert main(["run", str(source), *_CLI_KERNEL, *options, "--backend", "petsc", "--out", str(parallel)]) == 0
    _assert_same_pipeline_result(parallel, serial, f"petsc in this {_mpi.size()}-rank job, {atlas} atlas")


@pytest.mark.skipif(UNDER_MPI, reason="launches its own MPI job")
@needs_mpiexec
def test_failing_cli_run_on_two_ranks_says_why_and_leaves_no_file(tmp_path):
    pytest.importorskip("mpi4py", reason="mpi4py not installed")
    from cellfate_gpu.datasets import synthetic_atlas

    source = tmp_path / "in.h5ad"
    synthetic_atlas(n_cells=300, n_lineages=2, seed=0).write_h5ad(source)
    before = source.read_bytes()
    cmd = ["mpiexec", "-n", "2", sys.executable, "-m", "cellfate_gpu.cli", "run", str(source)]
    proc = subprocess.run(
        [*cmd, "--kernel", "pseudotime:time_key=no_such_key", "--backend", "scipy", "--out", str(source)],
        capture_output=True,
        text=True,
        timeout=300,
        env=_clean_env(),
    )
    assert proc.returncode != 0
    assert "cellfate-gpu run failed" in proc.stderr and "no_such_key" in proc.stderr, proc.stderr[-3000:]
    assert source.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["in.h5ad"]  # no temporary file left behind
