"""The strict CuPy double itself, and the cupy backend's behaviour that only the double can show:
refused implicit conversions, counted transfers, simulated device OOM, missing CuPy or device, and
AnnData moves."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from cellfate_gpu.backends import BackendUnavailableError, available_backends, get_backend

try:  # tests/ on sys.path (rootdir mode) or tests as a package
    from conftest import knn_chain, random_stochastic
except ImportError:
    from tests.conftest import knn_chain, random_stochastic
try:  # tests/ on sys.path (rootdir mode) or tests as a package
    from cupy_double import hidden, install
except ImportError:
    from tests.cupy_double import hidden, install

IMPLICIT = (
    "Implicit conversion to a NumPy array is not allowed. Please use `.get()` to construct a NumPy array explicitly."
)


@pytest.fixture
def cupy(monkeypatch):
    with install(monkeypatch) as module:
        yield module


# ---------------------------------------------------------------------------------------- the double
def test_double_refuses_implicit_conversion(cupy):
    x = cupy.asarray(np.arange(4.0))
    with pytest.raises(TypeError) as err:
        np.asarray(x)
    assert str(err.value) == IMPLICIT
    with pytest.raises(TypeError, match="Unsupported type"):
        _ = x + np.ones(4)  # host arrays cannot enter device arithmetic
    with pytest.raises(TypeError, match="Unsupported type"):
        _ = np.ones(4) + x
    with pytest.raises(TypeError, match="Unsupported type"):
        cupy.take(x, np.array([0, 1]))
    import cupyx.scipy.sparse as csp

    with pytest.raises(TypeError):
        np.asarray(csp.csr_matrix(sp.identity(3, format="csr")))


def test_double_counts_transfers_by_kind(cupy):
    x = cupy.asarray(np.arange(6.0))  # h2d
    y = (x * 2.0 + 1.0).sum()  # stays on the device (a 0-d array)
    assert isinstance(y, cupy.ndarray) and y.shape == ()
    assert dict(cupy.TRANSFERS) == {"h2d": 1}
    assert float(y) == 36.0  # sync
    assert bool(x[1] > 0) and int(x[2]) == 2 and x[3].item() == 3.0  # three syncs
    np.testing.assert_array_equal(x.get(), np.arange(6.0))  # d2h
    np.testing.assert_array_equal(cupy.asnumpy(x), np.arange(6.0))  # d2h
    assert dict(cupy.TRANSFERS) == {"h2d": 1, "sync": 4, "d2h": 2}
    assert cupy.TRANSFER_BYTES["h2d"] == 48
    cupy.reset_transfers()
    assert not cupy.TRANSFERS


def test_double_ufunc_methods_follow_cupy(cupy):
    out = cupy.full(3, -np.inf)
    cupy.maximum.at(out, cupy.asarray(np.array([0, 0, 2])), cupy.asarray(np.array([1.0, 5.0, -2.0])))
    np.testing.assert_array_equal(out.get(), [5.0, -np.inf, -2.0])
    with pytest.raises(NotImplementedError):
        cupy.maximum.reduceat(cupy.asarray(np.ones(3)), cupy.asarray(np.array([0, 2])))
    with pytest.raises(ValueError, match="repeats"):
        cupy.repeat(cupy.arange(3), cupy.asarray(np.array([1, 2, 0])))


def test_array_api_compat_serves_the_double(cupy):
    import array_api_compat

    x = cupy.asarray(np.ones((3, 2)))
    xp = array_api_compat.array_namespace(x)
    assert xp is get_backend("cupy").xp
    z = xp.zeros((2,), dtype=xp.float64, device=x.device)
    assert isinstance(z, cupy.ndarray)
    np.testing.assert_allclose(xp.linalg.vector_norm(x, axis=0).get(), np.sqrt([3.0, 3.0]))


# ---------------------------------------------------------------------------------------- availability
def test_cupy_backend_available_under_the_double(cupy):
    assert available_backends()["cupy"] is None
    assert get_backend("cupy").name == "cupy"


def test_no_cuda_device_is_reported(cupy):
    cupy.cuda.runtime.set_device_count(0)
    reason = available_backends()["cupy"]
    assert reason is not None and "CUDA" in reason
    with pytest.raises(BackendUnavailableError, match="cuda12"):
        get_backend("cupy")


def test_backend_cupy_without_cupy_names_the_extra(monkeypatch):
    with hidden(monkeypatch):
        assert available_backends()["cupy"] == "CuPy is not installed"
        with pytest.raises(BackendUnavailableError, match=r"cellfate_gpu\[cuda12\]"):
            get_backend("cupy")


# ---------------------------------------------------------------------------------------- memory
def test_simulated_oom_raises_device_memory_error(cupy):
    from cellfate_gpu.backends._cupy import DeviceMemoryError

    bk = get_backend("cupy")
    A = random_stochastic(2000, 0.01, seed=0)
    cupy.cuda.runtime.set_mem_info(free=10_000, total=16 * 2**30)
    with pytest.raises(DeviceMemoryError) as err:
        bk.from_scipy_csr(A)
    message = str(err.value)
    assert "settings.dtype='float32'" in message and "chunking" in message and "backend='petsc'" in message
    assert isinstance(err.value, MemoryError)
    assert cupy.TRANSFERS["h2d"] == 0  # refused before anything moved

    cupy.cuda.runtime.set_mem_info(free=2**30)
    M = bk.from_scipy_csr(A)
    B = bk.asarray(np.ones((2000, 8)))
    cupy.cuda.runtime.set_mem_info(free=1_000_000)  # the matrix fits, the GMRES basis does not
    with pytest.raises(DeviceMemoryError, match="GMRES Krylov basis"):
        bk.solve(M, B)
    with pytest.raises(DeviceMemoryError, match="Krylov-Schur basis"):
        bk.partial_schur(M, 3, ncv=200)


# ---------------------------------------------------------------------------------------- transfers
def test_krylov_reads_are_bounded(cupy):
    """Reads per restart, not per matvec: print the counts the report quotes."""
    bk = get_backend("cupy")
    n = 800
    P = knn_chain(n, seed=5)
    M = bk.from_scipy_csr(P)
    cupy.reset_transfers()
    res = bk.partial_schur(M, 5, which="LR", tol=1e-10)
    schur_counts = dict(cupy.TRANSFERS)
    assert res.converged
    assert res.matvecs > 3 * res.iterations  # many matvecs per restart ...
    assert schur_counts.get("d2h", 0) <= res.iterations + 2  # ... but one read per restart
    A = bk.linear_combination([1.0, -0.9], [bk.eye(n), M])
    B = bk.asarray(np.random.default_rng(0).standard_normal((n, 4)))
    cupy.reset_transfers()
    sol = bk.solve(A, B, tol=1e-10, restart=25)
    solve_counts = dict(cupy.TRANSFERS)
    assert sol.converged
    cycles = -(-sol.iterations // 25)
    assert solve_counts.get("d2h", 0) <= cycles + 2
    print(
        f"\nschur: restarts={res.iterations} matvecs={res.matvecs} transfers={schur_counts}; "
        f"gmres: iterations={sol.iterations} cycles={cycles} transfers={solve_counts}"
    )


# ---------------------------------------------------------------------------------------- AnnData
def test_anndata_round_trip(cupy, caplog, monkeypatch):
    import typing

    import anndata as ad
    import anndata.typing
    import cupyx.scipy.sparse as csp

    # AnnData resolves its CuPy types when it is first imported; in a full test run that happens
    # before the double is installed, so teach AnnData's type check the double's classes.
    monkeypatch.setattr(
        anndata.typing,
        "ArrayDataStructureTypes",
        typing.Union[anndata.typing.ArrayDataStructureTypes, cupy.ndarray, csp.csr_matrix],  # noqa: UP007
    )

    from cellfate_gpu.device import anndata_to_device, anndata_to_host

    rng = np.random.default_rng(1)
    conn = random_stochastic(30, 0.2, seed=1)
    adata = ad.AnnData(rng.standard_normal((30, 4)))
    adata.layers["velocity"] = rng.standard_normal((30, 4))
    adata.obsp["connectivities"] = conn
    adata.obsm["X_umap"] = rng.standard_normal((30, 2))
    anndata_to_device(adata, layers="velocity", obsp=["connectivities"], obsm="all")
    assert isinstance(adata.layers["velocity"], cupy.ndarray)
    assert isinstance(adata.obsp["connectivities"], csp.csr_matrix)
    assert isinstance(adata.obsm["X_umap"], cupy.ndarray)
    assert isinstance(adata.X, np.ndarray)  # not asked for
    assert cupy.TRANSFERS["h2d"] == 3
    velocity = adata.layers["velocity"].get()
    anndata_to_host(adata)
    assert isinstance(adata.layers["velocity"], np.ndarray)
    np.testing.assert_array_equal(adata.layers["velocity"], velocity)
    assert sp.issparse(adata.obsp["connectivities"])
    np.testing.assert_array_equal(adata.obsp["connectivities"].toarray(), conn.toarray())
    with pytest.raises(KeyError, match="spliced"):
        anndata_to_device(adata, layers="spliced")
    with pytest.raises(ValueError, match="AnnData cannot store"):
        anndata_to_device(adata, layers="velocity", backend="scipy")
