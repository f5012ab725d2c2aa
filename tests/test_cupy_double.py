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
    # cupy/_core/_kernel.pyx:1465-1474 (v14.0.0): reduceat exists for add only.
    with pytest.raises(NotImplementedError):
        cupy.maximum.reduceat(cupy.asarray(np.ones(3)), cupy.asarray(np.array([0, 2])))
    # cupy/_core/_kernel.pyx:1428-1438: ``at`` needs a scatter kernel; multiply has none.
    with pytest.raises(NotImplementedError):
        cupy.multiply.at(cupy.ones(3), cupy.asarray(np.array([0])), 2.0)
    with pytest.raises(ValueError, match="repeats"):
        cupy.repeat(cupy.arange(3), cupy.asarray(np.array([1, 2, 0])))


# ---------------------------------------------------------------------------------------- CuPy 14, not NumPy 2
@pytest.mark.parametrize(
    "name", ["vecdot", "matrix_transpose", "isdtype", "unstack", "cumulative_sum", "cumulative_prod", "vecmat"]
)
def test_double_lacks_numpy2_names_cupy14_lacks(cupy, name):
    """cupy/__init__.py (v14.0.0) neither imports nor assigns these; its ``__getattr__`` (:1132-1136)
    raises AttributeError. (array_api_compat.cupy supplies its own versions over CuPy's primitives.)"""
    assert not hasattr(cupy, name)
    with pytest.raises(AttributeError):
        getattr(cupy, name)


@pytest.mark.parametrize("name", ["concat", "permute_dims", "astype", "bitwise_left_shift", "pow", "acos"])
def test_double_has_the_array_api_aliases_cupy14_has(cupy, name):
    """cupy/__init__.py (v14.0.0): ``concat = concatenate`` (:274), ``permute_dims = transpose`` (:254),
    ``astype`` (:191), ``bitwise_left_shift`` (:324), ``pow`` (:664), ``acos`` (:572)."""
    assert callable(getattr(cupy, name))


def test_double_ufunc_at_dtype_limits(cupy):
    """cupy/_core/_routines_indexing.pyx:925-934 (v14.0.0): ``add.at`` supports int32, float16, float32,
    float64, uint32, uint64 (the check is on the target's dtype, the values are cast to it at :900-903);
    int64 raises TypeError. maximum.at: int32, float32, float64, uint32, uint64 (:946-953)."""
    idx = cupy.asarray(np.array([0, 0, 1]))
    for dtype in (np.int32, np.float32, np.float64, np.uint64):
        out = cupy.zeros(2, dtype=dtype)
        cupy.add.at(out, idx, 1)
        np.testing.assert_array_equal(out.get(), [2, 1])
    with pytest.raises(TypeError, match=r"add\.at only supports"):
        cupy.add.at(cupy.zeros(2, dtype=np.int64), idx, 1)
    with pytest.raises(TypeError, match=r"maximum\.at only supports"):
        cupy.maximum.at(cupy.zeros(2, dtype=np.int64), idx, cupy.ones(3, dtype=np.int64))
    with pytest.raises(TypeError, match=r"maximum\.at only supports"):
        cupy.maximum.at(cupy.zeros(2, dtype=np.float16), idx, 1.0)
    out = cupy.zeros(2, dtype=np.int64)  # bitwise ops do support int64 (:966-977)
    cupy.bitwise_or.at(out, idx, cupy.asarray(np.array([1, 2, 4])))
    np.testing.assert_array_equal(out.get(), [3, 4])


def test_double_sort_kind_is_none_or_stable(cupy):
    """cupy/_core/core.pyx:1065-1067 (v14.0.0): ``kind can only be None or 'stable'``; cupy.sort and
    cupy.argsort forward ``kind`` to it (cupy/_sorting/sort.py:11-38, :93-114)."""
    x = cupy.asarray(np.array([3.0, 1.0, 2.0, 1.0]))
    np.testing.assert_array_equal(cupy.argsort(x).get(), [1, 3, 2, 0])
    np.testing.assert_array_equal(cupy.sort(x, kind="stable").get(), [1.0, 1.0, 2.0, 3.0])
    calls = (
        lambda: cupy.sort(x, kind="quicksort"),
        lambda: x.argsort(kind="mergesort"),
        lambda: x.sort(kind="heapsort"),
    )
    for call in calls:
        with pytest.raises(ValueError, match="kind can only be None or 'stable'"):
            call()


def test_double_reduceat_is_a_cumsum_difference(cupy):
    """cupy/_core/_routines_indexing.pyx:1225-1240 (v14.0.0): ``add.reduceat`` is
    ``acc[idx[1:]] - acc[idx[:-1]]`` of a cumulative sum ``acc``, so small segments after a large
    prefix lose digits, unlike NumPy's exact per-segment sums."""
    values = np.array([1e16, -1e16, 1.0, 2.0, 3.0])
    starts = np.array([0, 2, 3])
    exact = np.add.reduceat(values, starts)
    np.testing.assert_array_equal(exact, [0.0, 1.0, 5.0])
    got = cupy.add.reduceat(cupy.asarray(values), cupy.asarray(starts)).get()
    acc = np.concatenate([[0.0], np.cumsum(values)])
    np.testing.assert_array_equal(got, acc[[2, 3, 5]] - acc[[0, 2, 3]])  # CuPy's arithmetic, bit for bit
    # empty segments (start >= next start) give values[start] as in NumPy (the where at :1236-1240)
    np.testing.assert_array_equal(
        cupy.add.reduceat(cupy.asarray(np.arange(5.0)), cupy.asarray(np.array([0, 2, 2, 4]))).get(),
        np.add.reduceat(np.arange(5.0), [0, 2, 2, 4]),
    )


def test_double_counts_matmul_contiguity_copies(cupy):
    """cupy/_core/_routines_linalg.pyx (v14.0.0): 2-D operands neither C- nor F-contiguous are copied
    (:461-473); batched (>2-D) operands that are not C-contiguous are copied (:903-904)."""
    A = cupy.asarray(np.random.default_rng(0).standard_normal((6, 8)))
    v = cupy.ones(8)
    cupy.reset_transfers()
    _ = A @ v
    _ = A.T @ cupy.ones(6)  # F-contiguous: cuBLAS takes it transposed, no copy
    assert cupy.TRANSFERS["copy"] == 0
    _ = A[:, ::2] @ cupy.ones(4)  # strided: copied
    assert cupy.TRANSFERS["copy"] == 1 and cupy.TRANSFER_BYTES["copy"] == 6 * 4 * 8
    _ = A @ A[0:1, :].T[:, 0]  # a contiguous column view is fine; a strided vector is copied:
    _ = A[:, :4] @ A[:4, 0]
    assert cupy.TRANSFERS["copy"] == 3  # A[:, :4] (row stride 8) and the column A[:4, 0]
    B = cupy.asarray(np.random.default_rng(1).standard_normal((2, 3, 5)))
    cupy.reset_transfers()
    _ = B @ B.transpose(0, 2, 1)  # batched: the transposed (not C-contiguous) operand is copied
    assert cupy.TRANSFERS["copy"] == 1


def test_double_counts_implicit_index_copies_and_wraps(cupy):
    """CuPy copies host index arrays to the device itself (``core.array(s)``,
    cupy/_core/_routines_indexing.pyx:276; take :841-842; scatter values :900-901): counted as
    ``implicit_h2d``, not refused. Integer-array indices wrap around instead of raising."""
    x = cupy.asarray(np.arange(5.0))
    cupy.reset_transfers()
    np.testing.assert_array_equal(x[np.array([0, 4])].get(), [0.0, 4.0])
    np.testing.assert_array_equal(cupy.take(x, np.array([1, 2])).get(), [1.0, 2.0])
    x[np.array([0])] = np.array([9.0])
    assert cupy.TRANSFERS["implicit_h2d"] == 4  # index, index, index and values
    np.testing.assert_array_equal(x[cupy.asarray(np.array([5, -6]))].get(), [9.0, 4.0])  # wraps: 5 -> 0, -6 -> 4
    with pytest.raises(TypeError, match="Unsupported type"):
        x[0:2] = np.zeros(2)  # basic slices refuse host values (gh-2079, :1066-1070)


def test_double_sparse_dtype_and_index_limits(cupy):
    """cupyx/scipy/sparse/_compressed.py (v14.0.0): values bool/float32/float64/complex only (:273-281);
    indices and indptr int32 (:229-230, :284-285). Fancy indices wrap (_index.py:490-497)."""
    import cupyx.scipy.sparse as csp

    A = sp.random(6, 6, density=0.5, random_state=0, format="csr")
    A.indices, A.indptr = A.indices.astype(np.int64), A.indptr.astype(np.int64)
    M = csp.csr_matrix(A)
    assert M.indices.dtype == np.int32 and M.indptr.dtype == np.int32
    for dtype in (np.float32, np.float64, np.complex128, np.bool_):
        assert csp.csr_matrix(A.astype(dtype)).dtype == dtype
    for dtype in (np.int64, np.int32, np.uint8):
        with pytest.raises(ValueError, match="Only bool, float32, float64"):
            csp.csr_matrix(A.astype(dtype))
    cupy.reset_transfers()
    rows = M[np.array([7, 0])].get().toarray()  # host indices: copied implicitly, 7 wraps to 1
    np.testing.assert_array_equal(rows, A[[1, 0]].toarray())
    assert cupy.TRANSFERS["implicit_h2d"] == 1


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
    # ... but one read per restart, plus the constant reads of the eigenvalue-1 classification
    # (linalg/_classes.py: stochastic_kind reads 3 vectors, unit_eigenspace the matrix once)
    assert schur_counts.get("d2h", 0) <= res.iterations + 2 + 5
    A = bk.linear_combination([1.0, -0.9], [bk.eye(n), M])
    B = bk.asarray(np.random.default_rng(0).standard_normal((n, 4)))
    cupy.reset_transfers()
    sol = bk.solve(A, B, tol=1e-10, restart=25)
    solve_counts = dict(cupy.TRANSFERS)
    assert sol.converged
    cycles = -(-sol.iterations // 25)
    # + 3: the prepared solver's fingerprint reads three strided samples (linalg/solvers.py _fingerprint)
    assert solve_counts.get("d2h", 0) <= cycles + 2 + 3
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


@pytest.fixture
def anndata_double(cupy, monkeypatch):
    """AnnData that accepts the double's arrays in its slots (as it accepts CuPy's)."""
    import typing

    import anndata.typing
    import cupyx.scipy.sparse as csp

    # AnnData resolves its CuPy types when it is first imported; in a full test run that happens
    # before the double is installed, so teach AnnData's type check the double's classes.
    monkeypatch.setattr(
        anndata.typing,
        "ArrayDataStructureTypes",
        typing.Union[anndata.typing.ArrayDataStructureTypes, cupy.ndarray, csp.csr_matrix],  # noqa: UP007
    )
    return cupy


def _device_atlas():
    from cellfate_gpu.datasets import synthetic_atlas

    host = synthetic_atlas(n_cells=300, n_lineages=3, n_genes=30, seed=2)
    return host, host.copy()


@pytest.mark.parametrize("kernel", ["connectivity", "pseudotime", "velocity"])
def test_kernels_read_a_device_anndata_without_host_copies(anndata_double, kernel):
    """After ``anndata_to_device(obsp=...)`` the graph stays on the device: the kernel's T on cupy equals
    the host kernel's, and building it moves nothing to the host (no d2h, no implicit copy)."""
    import cupyx.scipy.sparse as csp

    from cellfate_gpu.device import anndata_to_device
    from cellfate_gpu.kernels import ConnectivityKernel, PseudotimeKernel, VelocityKernel

    cupy = anndata_double
    host, dev = _device_atlas()
    anndata_to_device(dev, obsp=["connectivities"])
    assert isinstance(dev.obsp["connectivities"], csp.csr_matrix)
    before = dev.obsp["connectivities"].get()

    def build(adata, backend):
        if kernel == "connectivity":
            return ConnectivityKernel(adata).compute_transition_matrix(backend=backend)
        if kernel == "pseudotime":
            return PseudotimeKernel(adata, time_key="dpt_pseudotime").compute_transition_matrix(backend=backend)
        return VelocityKernel(adata).compute_transition_matrix(softmax_scale=4.0, backend=backend)

    T_ref = build(host, "scipy").transition_matrix
    cupy.reset_transfers()
    k = build(dev, "cupy")
    moved = dict(cupy.TRANSFERS)
    T_dev = k.native_transition_matrix
    assert isinstance(T_dev, csp.csr_matrix)
    assert moved.get("implicit_h2d", 0) == 0, moved
    # the graph never comes to the host; what does are a few counts read by the backend's to_host
    # (non-finite/negative/zero entries, isolated cells, the stochastic-matrix check) -- small reads
    graph_bytes = before.data.nbytes + before.indices.nbytes + before.indptr.nbytes
    assert cupy.TRANSFER_BYTES["d2h"] < graph_bytes / 10, (moved, dict(cupy.TRANSFER_BYTES))
    print(f"\n{kernel}: transfers {moved}, bytes {dict(cupy.TRANSFER_BYTES)}, graph {graph_bytes} bytes")
    np.testing.assert_allclose(k.transition_matrix.toarray(), T_ref.toarray(), rtol=1e-12, atol=1e-15)
    # the caller's device graph is unchanged (kernels work on a device copy)
    after = dev.obsp["connectivities"].get()
    assert (after != before).nnz == 0 and after.nnz == before.nnz


def test_device_graph_feeds_a_host_backend_through_named_transfers(anndata_double):
    """A device graph used by a scipy-backend kernel moves through cupy's to_scipy_csr (counted d2h)."""
    from cellfate_gpu.device import anndata_to_device
    from cellfate_gpu.kernels import ConnectivityKernel

    cupy = anndata_double
    host, dev = _device_atlas()
    anndata_to_device(dev, obsp="connectivities", layers=["Ms", "velocity"])
    cupy.reset_transfers()
    T = ConnectivityKernel(dev).compute_transition_matrix(backend="scipy").transition_matrix
    assert cupy.TRANSFERS["d2h"] >= 1 and cupy.TRANSFERS.get("implicit_h2d", 0) == 0
    ref = ConnectivityKernel(host).compute_transition_matrix(backend="scipy").transition_matrix
    np.testing.assert_allclose(T.toarray(), ref.toarray(), rtol=1e-12, atol=1e-15)
    # device layers are read by the velocity kernel through the backend's to_host (x and v), plus the
    # one read of the graph's counts (non-finite, negative, zero entries)
    from cellfate_gpu.kernels import VelocityKernel

    cupy.reset_transfers()
    vk = VelocityKernel(dev)
    assert cupy.TRANSFERS["d2h"] == 3 and cupy.TRANSFERS.get("implicit_h2d", 0) == 0, dict(cupy.TRANSFERS)
    np.testing.assert_allclose(
        vk.compute_transition_matrix(softmax_scale=4.0, backend="cupy").transition_matrix.toarray(),
        VelocityKernel(host).compute_transition_matrix(softmax_scale=4.0, backend="scipy").transition_matrix.toarray(),
        rtol=1e-12,
        atol=1e-15,
    )


def test_device_graph_is_checked_on_the_device(anndata_double):
    """Negative or non-finite device connectivities are refused, naming the key, without a host copy."""
    import cupyx.scipy.sparse as csp

    from cellfate_gpu.kernels import ConnectivityKernel

    del anndata_double  # AnnData accepting the double's matrices is all this test needs from it
    host, dev = _device_atlas()
    bad = host.obsp["connectivities"].copy()
    bad.data[3] = -1.0
    dev.obsp["connectivities"] = csp.csr_matrix(bad)
    with pytest.raises(ValueError, match=r"adata.obsp\['connectivities'\] has 1 negative entries"):
        ConnectivityKernel(dev)
    bad.data[3] = np.nan
    dev.obsp["connectivities"] = csp.csr_matrix(bad)
    with pytest.raises(ValueError, match="1 non-finite entries"):
        ConnectivityKernel(dev)
    with_zero = host.obsp["connectivities"].copy()
    with_zero.data[5] = 0.0  # an explicit zero is dropped on the kernel's copy, not in adata
    dev.obsp["connectivities"] = csp.csr_matrix(with_zero)
    k = ConnectivityKernel(dev)
    assert k.connectivities.nnz == with_zero.nnz - 1 and dev.obsp["connectivities"].nnz == with_zero.nnz


# ---------------------------------------------------------------------------------------- the backend on CuPy 14
def test_segment_sum_is_exact_per_row_not_a_cumsum_difference(cupy):
    """``cupy.add.reduceat`` would give ``c[p_{i+1}] - c[p_i]`` (the double computes it as CuPy does,
    cupy/_core/_routines_indexing.pyx:1225-1240); the backend sums each row on its own."""
    bk = get_backend("cupy")
    values = np.array([1e16, 1.0, -1e16, 1.0, 2.0])
    indptr = np.array([0, 1, 2, 3, 3, 5], dtype=np.int32)  # row 3 is empty
    got = bk.to_host(bk.segment_sum(bk.asarray(values), bk.asarray(indptr)))
    np.testing.assert_array_equal(got, [1e16, 1.0, -1e16, 0.0, 3.0])
    reduceat = cupy.add.reduceat(cupy.asarray(values), cupy.asarray(np.array([0, 1, 2, 3])))
    assert reduceat.get()[1] == 0.0  # the cumulative-sum difference loses the 1.0 entirely
    # row sums of a large stochastic matrix: exact to rounding per row
    P = random_stochastic(20_000, 0.0005, seed=3)
    data, _, ip = bk.csr_components(bk.from_scipy_csr(P, dtype=np.float64))
    row_sums = bk.to_host(bk.segment_sum(data, ip))
    np.testing.assert_allclose(row_sums, np.asarray(P.sum(axis=1)).ravel(), rtol=0, atol=1e-15)


def test_segment_max_and_scale_rows_do_not_sync(cupy):
    bk = get_backend("cupy")
    A = random_stochastic(300, 0.05, seed=4)
    M = bk.from_scipy_csr(A, dtype=np.float64)
    data, _, indptr = bk.csr_components(M)
    d = bk.asarray(np.arange(300.0))
    cupy.reset_transfers()
    mx = bk.segment_max(data, indptr)
    S = bk.scale_rows(M, d)
    assert cupy.TRANSFERS["sync"] == 0, dict(cupy.TRANSFERS)
    np.testing.assert_array_equal(bk.to_host(mx), A.max(axis=1).toarray().ravel())
    np.testing.assert_allclose(bk.to_scipy_csr(S).toarray(), (sp.diags(np.arange(300.0)) @ A).toarray())
    assert bk.csr_components(M)[2].dtype == np.int32  # cupyx indices are int32 (row ids too)


@pytest.mark.parametrize(("library", "match"), [("nvrtc", "NVRTC"), ("cublas", "cuBLAS"), ("cusparse", "cuSPARSE")])
def test_broken_cuda_library_is_reported_not_crashed_into(cupy, library, match):
    cupy.cuda.runtime.set_broken(library)
    reason = available_backends()["cupy"]
    assert reason is not None and match in reason and "does not work" in reason
    with pytest.raises(BackendUnavailableError, match=match):
        get_backend("cupy")


def test_memory_check_counts_cupy_pool(cupy):
    from cellfate_gpu.backends._cupy import DeviceMemoryError

    bk = get_backend("cupy")
    A = random_stochastic(2000, 0.01, seed=0)
    need = A.data.nbytes + 4 * (A.indices.size + A.indptr.size)
    cupy.cuda.runtime.set_mem_info(free=need // 2, total=16 * 2**30)
    with pytest.raises(DeviceMemoryError, match="memory pool"):
        bk.from_scipy_csr(A, dtype=np.float64)
    cupy.get_default_memory_pool().set_free_bytes(2 * need)  # freed blocks CuPy will reuse
    M = bk.from_scipy_csr(A, dtype=np.float64)
    assert M.nnz == A.nnz


def test_nnz_beyond_int32_is_refused_before_the_cast(cupy):
    bk = get_backend("cupy")
    with pytest.raises(ValueError, match=r"int32 indices.*petsc"):
        bk.check_index_range((2**20, 2**20), 2**31)
    with pytest.raises(ValueError, match="int32 indices"):
        bk.check_index_range((2**31, 1), 10)
    bk.check_index_range((2**20, 2**20), 2**31 - 1)  # the largest that fits


def test_submatrix_out_of_range_raises_instead_of_wrapping(cupy):
    """cupyx wraps fancy indices (``x % length``, cupyx/scipy/sparse/_index.py:497); the backend checks."""
    import cupyx.scipy.sparse as csp

    bk = get_backend("cupy")
    A = random_stochastic(50, 0.2, seed=5)
    M = bk.from_scipy_csr(A, dtype=np.float64)
    wrapped = csp.csr_matrix(A)[cupy.asarray(np.array([50]))].get().toarray()
    np.testing.assert_array_equal(wrapped, A[[0]].toarray())  # what cupyx itself does
    with pytest.raises(IndexError, match="rows index 50 is out of range"):
        bk.submatrix(M, np.array([1, 50]), np.arange(5))
    with pytest.raises(IndexError, match="cols index -51"):
        bk.submatrix(M, np.arange(5), np.array([-51]))
    rows, cols = np.array([3, -1, 0]), np.array([2, 4, -2])
    np.testing.assert_array_equal(bk.to_scipy_csr(bk.submatrix(M, rows, cols)).toarray(), A[rows][:, cols].toarray())


def test_precision_policy_float32_storage_float64_vectors(cupy):
    """float32 storage, float64 Krylov vectors: GMRES reaches float64 residuals of the stored matrix
    and the Schur vectors are orthonormal to float64 precision (no cast of the vectors to float32)."""
    from cellfate_gpu import settings

    bk = get_backend("cupy")
    n = 600
    P = knn_chain(n, seed=7)
    A = sp.csr_matrix(sp.identity(n) - 0.9 * P)
    with settings.using(dtype="float32"):
        A32 = bk.from_scipy_csr(A)
        P32 = bk.from_scipy_csr(P)
    assert A32.dtype == np.float32
    B = np.random.default_rng(0).standard_normal((n, 3))
    res = bk.solve(A32, bk.asarray(B), tol=1e-12, restart=40)
    X = bk.to_host(res.X)
    assert X.dtype == np.float64 and res.converged
    A_stored = bk.to_scipy_csr(A32).astype(np.float64)  # the float32-rounded matrix, exactly
    rel = np.linalg.norm(B - A_stored @ X, axis=0) / np.linalg.norm(B, axis=0)
    assert np.all(rel <= 1e-11), rel  # float32 vectors would stall near 1e-7
    schur = bk.partial_schur(P32, 4, which="LR", tol=1e-10)
    Q = bk.to_host(schur.Q)
    assert Q.dtype == np.float64
    np.testing.assert_allclose(Q.T @ Q, np.eye(Q.shape[1]), atol=1e-12)
    P_stored = bk.to_scipy_csr(P32).astype(np.float64)
    assert np.linalg.norm(P_stored @ Q - Q @ schur.R, 2) <= 1e-9


def test_gmres_progress_estimate_survives_a_stagnating_residual():
    """Found by the GPU smoke's dry run (block GMRES + Jacobi stagnating on the device): a residual that
    falls by 1e-300 per iteration made the progress estimate ``inf`` and crashed the solve."""
    from cellfate_gpu.linalg.gmres import _Monitor

    monitor = _Monitor(1e-12, 20_000, 2, 5000)
    try:
        monitor.history = [(30, 1.4e-2), (60, 1.4e-2 * (1 - 1e-16))]
        assert monitor._estimate() is None
        monitor.cycle(90, np.array([1.4e-2 * (1 - 2e-16), 1e-3]))  # must not raise
        monitor.history = [(30, 1e-2), (60, 1e-4)]  # a real rate: 1e-8 more needs 4 x 30 iterations
        assert monitor._estimate() in (120, 121)  # ceil of 120 up to rounding
    finally:
        monitor.close()


def test_krylov_products_make_no_contiguity_copies(cupy):
    """Block GMRES and Krylov-Schur keep their bases so that every product is a GEMV/GEMM on contiguous
    memory: CuPy's matmul copies nothing (the batched ``(s, j + 1, n)`` products on strided slices used
    to copy the basis four times per iteration, 30.9 GiB at n = 36k, 6 right-hand sides)."""
    bk = get_backend("cupy")
    n = 600
    A = sp.csr_matrix(sp.identity(n) - 0.9 * knn_chain(n, seed=7))
    M, B = bk.from_scipy_csr(A), bk.asarray(np.random.default_rng(0).standard_normal((n, 4)))
    cupy.reset_transfers()
    res = bk.solve(M, B, tol=1e-10, restart=20)
    assert res.converged and res.iterations > 20  # more than one cycle
    assert cupy.TRANSFERS.get("copy", 0) == 0, dict(cupy.TRANSFERS)
    cupy.reset_transfers()
    schur = bk.partial_schur(bk.from_scipy_csr(knn_chain(n, seed=3)), 4)
    assert schur.converged and schur.matvecs > 50
    assert cupy.TRANSFERS.get("copy", 0) == 0, dict(cupy.TRANSFERS)
