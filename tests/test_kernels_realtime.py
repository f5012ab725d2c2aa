"""RealTimeKernel: block structure against a dense per-cell reference, sparsity, thresholds, self
transitions, WOT round trip and shape errors."""

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from _time_course import SIZES, cells_of_day, random_couplings, time_course_adata

from cellfate_gpu.kernels._realtime import RealTimeKernel


@pytest.fixture
def tdata():
    """30+ cells with shuffled time points and a kNN graph."""
    return time_course_adata()


def _conn_tmat(adata, cells):
    C = adata.obsp["connectivities"].toarray()[np.ix_(cells, cells)]
    q = C.sum(axis=0)
    inv = np.where(q > 0, 1 / np.where(q > 0, q, 1), 0)
    C = inv[:, None] * C * inv[None, :]
    iso = C.sum(axis=1) == 0
    C[iso, iso] = 1.0
    return C / C.sum(axis=1, keepdims=True)


def reference(adata, couplings, threshold, self_transitions, conn_weight=None):
    """Dense per-block reference of CellRank's stitching."""
    blocks = {k: np.asarray(v.toarray() if sp.issparse(v) else v, dtype=float) for k, v in couplings.items()}
    if threshold == "auto":
        thr = min(B.max(axis=1).min() for B in blocks.values())
        blocks = {k: np.where(B < thr, 0, B) for k, B in blocks.items()}
    elif threshold == "auto_local":
        blocks = {k: np.where(B < B.max(axis=1).min(), 0, B) for k, B in blocks.items()}
    elif threshold is not None:
        out = {}
        for k, B in blocks.items():
            vals = sp.csr_matrix(couplings[k]).data if sp.issparse(couplings[k]) else B.ravel()
            out[k] = np.where(B < np.percentile(vals, threshold), 0, B)
        blocks = out
    n = adata.n_obs
    M = np.zeros((n, n))
    for (a, b), B in blocks.items():
        B = B.copy()
        empty = B.sum(axis=1) == 0
        B[empty] = 1.0 / B.shape[1]
        ra, rb = cells_of_day(adata, a), cells_of_day(adata, b)
        if self_transitions == "all" or (isinstance(self_transitions, list) and a in self_transitions):
            M[np.ix_(ra, ra)] = conn_weight * _conn_tmat(adata, ra)
            B = (1 - conn_weight) * B / B.sum(axis=1, keepdims=True)
        M[np.ix_(ra, rb)] = B
    ref = cells_of_day(adata, 2)
    if self_transitions == "diagonal":
        M[ref, ref] = 1.0
    elif self_transitions == "uniform":
        M[np.ix_(ref, ref)] = 1.0 / ref.size
    else:
        M[np.ix_(ref, ref)] = _conn_tmat(adata, ref)
    return M / M.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("self_transitions", ["uniform", "diagonal", "connectivities", "all"])
@pytest.mark.parametrize("threshold", [None, "auto", "auto_local", 40.0])
def test_matches_dense_block_reference(tdata, backend, threshold, self_transitions):
    cp = random_couplings()
    k = RealTimeKernel(tdata, "day", couplings=cp).compute_transition_matrix(
        threshold=threshold, self_transitions=self_transitions, conn_weight=0.3, backend=backend
    )
    T = k.transition_matrix
    np.testing.assert_allclose(T.toarray(), reference(tdata, cp, threshold, self_transitions, 0.3), atol=1e-12)
    np.testing.assert_allclose(np.asarray(T.sum(axis=1)).ravel(), 1.0, atol=1e-12)
    assert k.params == {"threshold": threshold, "self_transitions": self_transitions}


def test_self_transitions_for_listed_sources_only(tdata, backend):
    cp = random_couplings()
    k = RealTimeKernel(tdata, "day", couplings=cp).compute_transition_matrix(
        None, self_transitions=[1], conn_weight=0.25, backend=backend
    )
    np.testing.assert_allclose(k.transition_matrix.toarray(), reference(tdata, cp, None, [1], 0.25), atol=1e-12)
    assert k.params["self_transitions"] == "[1]"


def test_block_structure_goes_forward_in_time(tdata):
    T = RealTimeKernel(tdata, "day", couplings=random_couplings()).compute_transition_matrix("auto", "diagonal")
    T = T.transition_matrix.tocoo()
    day = tdata.obs["day"].to_numpy()
    src, tgt = day[T.row], day[T.col]
    assert np.all((tgt == src + 1) | ((src == 2) & (tgt == 2)))
    np.testing.assert_array_equal(T.row[src == 2], T.col[src == 2])  # last time point: identity


def test_sparse_couplings_stay_sparse(tdata):
    cp = random_couplings(sparse=True)
    k = RealTimeKernel(tdata, "day", couplings=cp).compute_transition_matrix(
        threshold=None, self_transitions="diagonal"
    )
    T = k.transition_matrix
    assert sp.issparse(T)
    assert T.nnz == sum(c.nnz for c in cp.values()) + SIZES[2]
    np.testing.assert_allclose(T.toarray(), reference(tdata, cp, None, "diagonal"), atol=1e-12)


def test_auto_threshold_keeps_a_nonzero_in_every_row(tdata):
    cp = random_couplings(seed=5)
    k = RealTimeKernel(tdata, "day", couplings=cp).compute_transition_matrix("auto", "diagonal")
    T = k.transition_matrix
    assert np.all(np.diff(T.indptr) > 0)
    thr = min(B.max(axis=1).min() for B in cp.values())
    assert T.nnz == sum(int((B >= thr).sum()) for B in cp.values()) + SIZES[2]


def test_percentile_threshold_empty_rows_become_uniform(tdata):
    cp = random_couplings()
    k = RealTimeKernel(tdata, "day", couplings=cp).compute_transition_matrix(99.5, "diagonal")
    np.testing.assert_allclose(k.transition_matrix.toarray(), reference(tdata, cp, 99.5, "diagonal"), atol=1e-12)


def test_triu_policy_and_anndata_couplings_in_any_order(tdata):
    rng = np.random.default_rng(2)
    names = np.asarray(tdata.obs_names)
    cp = {}
    for a, b in [(0, 1), (0, 2), (1, 2)]:
        C = rng.random((SIZES[a], SIZES[b]))
        ra, rb = cells_of_day(tdata, a), cells_of_day(tdata, b)
        pr, pc = rng.permutation(ra.size), rng.permutation(rb.size)
        cp[a, b] = ad.AnnData(
            C[np.ix_(pr, pc)], obs=pd.DataFrame(index=names[ra][pr]), var=pd.DataFrame(index=names[rb][pc])
        )
        cp[a, b].uns["plain"] = C
    k = RealTimeKernel(tdata, "day", couplings=cp, policy="triu").compute_transition_matrix(None, "uniform")
    plain = {key: v.uns["plain"] for key, v in cp.items()}
    np.testing.assert_allclose(k.transition_matrix.toarray(), reference(tdata, plain, None, "uniform"), atol=1e-12)


def test_default_keys_from_policy(tdata):
    assert list(RealTimeKernel(tdata, "day").couplings) == [(0, 1), (1, 2)]
    assert list(RealTimeKernel(tdata, "day", policy="triu").couplings) == [(0, 1), (0, 2), (1, 2)]
    with pytest.raises(ValueError, match="not given"):
        RealTimeKernel(tdata, "day").compute_transition_matrix()


def test_bad_shapes_and_inputs(tdata):
    cp = random_couplings()
    cp[1, 2] = np.ones((SIZES[1], SIZES[2] + 1))
    with pytest.raises(ValueError, match=r"Coupling \(1, 2\) has shape \(15, 11\).*expected shape \(15, 10\)"):
        RealTimeKernel(tdata, "day", couplings=cp)
    with pytest.raises(ValueError, match="not in"):
        RealTimeKernel(tdata, "day", couplings={(0, 7): np.ones((12, 3))})
    with pytest.raises(TypeError, match="categorical"):
        tdata.obs["num"] = tdata.obs["day"].astype(int)
        RealTimeKernel(tdata, "num")
    k = RealTimeKernel(tdata, "day", couplings=random_couplings())
    with pytest.raises(ValueError, match="conn_weight"):
        k.compute_transition_matrix(self_transitions="all")
    with pytest.raises(ValueError, match="threshold"):
        k.compute_transition_matrix(threshold=120)
    with pytest.raises(TypeError, match="no direction"):
        ~k


def test_from_wot_round_trip(tdata, tmp_path, backend):
    cp = random_couplings()
    names = np.asarray(tdata.obs_names)
    for (a, b), C in cp.items():
        tm = ad.AnnData(
            C,
            obs=pd.DataFrame(index=names[cells_of_day(tdata, a)]),
            var=pd.DataFrame(index=names[cells_of_day(tdata, b)]),
        )
        tm.write_h5ad(tmp_path / f"tmaps_{float(a)}_{float(b)}.h5ad")
    k = RealTimeKernel.from_wot(tdata, tmp_path, time_key="day")
    assert set(k.couplings) == {(0, 1), (1, 2)}
    k.compute_transition_matrix("auto", "connectivities", backend=backend)
    np.testing.assert_allclose(
        k.transition_matrix.toarray(), reference(tdata, cp, "auto", "connectivities"), atol=1e-12
    )
    assert repr(k) == "RealTimeKernel[n=37, threshold='auto', self_transitions='connectivities']"


def test_realtime_on_the_cupy_double(tdata, monkeypatch):
    try:  # tests/ on sys.path (rootdir mode) or tests as a package
        from cupy_double import install
    except ImportError:
        from tests.cupy_double import install
    from cellfate_gpu.backends import get_backend

    cp = random_couplings(sparse=True)
    with install(monkeypatch) as cupy:
        be = get_backend("cupy")
        cupy.TRANSFERS.clear()
        k = RealTimeKernel(tdata, "day", couplings=cp).compute_transition_matrix("auto", "connectivities", backend=be)
        assert cupy.TRANSFERS.get("h2d", 0) <= 3  # the stitched matrix moves once
        T = k.transition_matrix
    np.testing.assert_allclose(T.toarray(), reference(tdata, cp, "auto", "connectivities"), atol=1e-12)
