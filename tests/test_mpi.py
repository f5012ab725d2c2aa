"""MPI behaviour: the ``petsc`` backend on 2 ranks equals the serial answer; the ``_mpi`` helpers.

The ``mpi``-marked tests run under ``mpiexec -n 2`` (``ci/test_mpi.sh``); in a plain pytest run
they are skipped with the reason.  The unmarked tests check the helpers without MPI and, from a
serial run, launch a small 2-rank job to check that a failure on one rank aborts the whole job.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap

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


@pytest.mark.skipif(UNDER_MPI, reason="launches its own 2-rank job")
@pytest.mark.skipif(shutil.which("mpiexec") is None, reason="mpiexec not found")
def test_abort_on_error_ends_the_whole_job():
    pytest.importorskip("mpi4py", reason="mpi4py not installed")
    script = textwrap.dedent(
        """
        from cellfate_gpu import _mpi
        with _mpi.abort_on_error("the test step"):
            if _mpi.rank() == 1:
                raise ValueError("rank one is broken")
            _mpi.barrier()  # rank 0 would wait here forever without the abort
        print("unreachable")
        """
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PMI_", "OMPI_", "PMIX_", "MPI_LOCAL"))}
    proc = subprocess.run(
        ["mpiexec", "-n", "2", sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env
    )
    assert proc.returncode != 0
    assert "[rank 1/2] the test step failed: ValueError: rank one is broken" in proc.stderr
    assert "unreachable" not in proc.stdout


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
def test_replicated_mode_detects_different_matrices():
    from cellfate_gpu.backends._petsc import PetscBackend

    A = knn_transition(seed=10 + _mpi.rank())  # a different matrix on every rank
    with pytest.raises(ValueError, match="same matrix on every rank"):
        PetscBackend().solve(sp.csr_matrix(sp.identity(240) - 0.5 * A), np.ones(240))
