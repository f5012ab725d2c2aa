"""VelocityKernel and CytoTRACEKernel against plain per-row / direct NumPy references.

Real data: ``cellrank_toy_50.h5ad`` (CellRank's ``adata_50.h5ad`` test file, BSD 3-Clause,
Copyright (c) 2019, Theis Lab; see ``../shared/data/README.md``), via the ``toy_adata`` fixture.
"""

import numpy as np
import pytest
import scipy.sparse as sp
import scipy.stats as st

from cellfate_gpu.kernels._cytotrace import CytoTRACEKernel
from cellfate_gpu.kernels._velocity import VelocityKernel

SIMILARITIES = ["correlation", "cosine", "dot_product"]


# --------------------------------------------------------------------------- references
def _sim_row(v, W, similarity):
    """CellRank's per-row similarity: v (n_genes,) or (k, n_genes) against rows of W; returns sims, mask."""
    V = np.broadcast_to(v, W.shape).astype(np.float64)
    W = W.astype(np.float64)
    if similarity == "correlation":
        V = V - V.mean(axis=1, keepdims=True)
        W = W - W.mean(axis=1, keepdims=True)
    dot = (V * W).sum(axis=1)
    if similarity == "dot_product":
        return dot, np.zeros(len(dot), bool)
    denom = np.linalg.norm(V, axis=1) * np.linalg.norm(W, axis=1)
    mask = denom == 0
    return dot / np.where(mask, 1.0, denom), mask


def reference_velocity(X, V, C, similarity, scale=None, mode="forward"):
    """Per-row loop in CellRank's way; returns dense T and the scale used."""
    C = sp.csr_matrix(C)
    n = C.shape[0]
    sims, masks = [], []
    for i in range(n):
        nb = C.indices[C.indptr[i] : C.indptr[i + 1]]
        W = X[nb] - X[i]
        if mode == "transpose":
            s, m = _sim_row(V[nb], -W, similarity)
        else:
            s, m = _sim_row(-V[i] if mode == "negate" else V[i], W, similarity)
        sims.append(s)
        masks.append(m)
    if scale is None:
        a = np.abs(np.concatenate(sims))
        scale = 1.0 / np.median(a[a != 0])
    T = np.zeros((n, n))
    for i in range(n):
        nb = C.indices[C.indptr[i] : C.indptr[i + 1]]
        s, m = sims[i], masks[i]
        if m.all():
            T[i, nb] = 1.0 / len(nb)
            continue
        e = np.where(m, 0.0, np.exp(scale * s - np.max(scale * s[~m])))
        T[i, nb] = e / e.sum()
    return T, scale


def _data(adata, xkey="Ms", vkey="velocity"):
    mask = adata.var["velocity_genes"].to_numpy()
    X = np.asarray(adata.layers[xkey])[:, mask].astype(np.float64)
    V = np.asarray(adata.layers[vkey])[:, mask].astype(np.float64)
    keep = ~np.isnan(V).any(axis=0)
    return X[:, keep], V[:, keep]


@pytest.fixture(scope="module")
def atlas200():
    from cellfate_gpu.datasets import synthetic_atlas

    return synthetic_atlas(n_cells=200, n_lineages=2, n_genes=30, seed=3)


# --------------------------------------------------------------------------- VelocityKernel
@pytest.mark.parametrize("similarity", SIMILARITIES)
def test_velocity_matches_per_row_reference_on_toy_data(toy_adata, backend, similarity):
    k = VelocityKernel(toy_adata).compute_transition_matrix(similarity=similarity, backend=backend)
    X, V = _data(toy_adata)
    ref, scale = reference_velocity(X, V, toy_adata.obsp["connectivities"], similarity)
    np.testing.assert_allclose(k.params["softmax_scale"], scale, rtol=1e-10)
    T = k.transition_matrix
    np.testing.assert_allclose(T.toarray(), ref, atol=1e-12)
    np.testing.assert_allclose(np.asarray(T.sum(axis=1)).ravel(), 1.0, atol=1e-12)
    # Same pattern as the kNN graph (no self loops added).
    assert T.nnz == toy_adata.obsp["connectivities"].nnz


@pytest.mark.parametrize("similarity", SIMILARITIES)
def test_velocity_matches_reference_on_synthetic_atlas_with_fixed_scale(atlas200, backend, similarity):
    k = VelocityKernel(atlas200).compute_transition_matrix(similarity=similarity, softmax_scale=4.0, backend=backend)
    X, V = _data(atlas200)
    ref, _ = reference_velocity(X, V, atlas200.obsp["connectivities"], similarity, scale=4.0)
    np.testing.assert_allclose(k.transition_matrix.toarray(), ref, atol=1e-12)
    assert k.params["softmax_scale"] == 4.0


def test_chunking_does_not_change_the_result(atlas200):
    whole = VelocityKernel(atlas200).compute_transition_matrix(backend="scipy").transition_matrix
    tiny = VelocityKernel(atlas200).compute_transition_matrix(backend="scipy", max_chunk_bytes=1).transition_matrix
    np.testing.assert_allclose(tiny.toarray(), whole.toarray(), atol=1e-15)


@pytest.mark.parametrize("mode", ["transpose", "negate"])
@pytest.mark.parametrize("similarity", ["correlation", "cosine"])
def test_velocity_backward_modes(toy_adata, backend, mode, similarity):
    k = VelocityKernel(toy_adata, backward=True).compute_transition_matrix(
        similarity=similarity, backward_mode=mode, backend=backend
    )
    X, V = _data(toy_adata)
    ref, scale = reference_velocity(X, V, toy_adata.obsp["connectivities"], similarity, mode=mode)
    np.testing.assert_allclose(k.transition_matrix.toarray(), ref, atol=1e-12)
    np.testing.assert_allclose(k.params["softmax_scale"], scale, rtol=1e-10)
    assert k.params["bwd_mode"] == mode
    assert repr(k).startswith("~VelocityKernel[n=50, model='deterministic'")


def test_negate_mode_does_not_mutate_velocities(toy_adata):
    # CellRank's negate mode flips its stored velocities in place (twice with softmax_scale=None).
    k = VelocityKernel(toy_adata, backward=True)
    before = k._vdata.copy()
    k.compute_transition_matrix(backward_mode="negate")
    first = k.transition_matrix.toarray()
    k.compute_transition_matrix(backward_mode="negate")
    np.testing.assert_array_equal(k._vdata, before)
    np.testing.assert_allclose(k.transition_matrix.toarray(), first, atol=0)
    fwd = VelocityKernel(toy_adata).compute_transition_matrix().transition_matrix.toarray()
    assert np.abs(first - fwd).max() > 1e-3  # really the reversed process


def test_invert_flips_direction(toy_adata):
    k = VelocityKernel(toy_adata).compute_transition_matrix(softmax_scale=2.0)
    kb = ~k
    assert kb.backward and not k.backward
    kb.compute_transition_matrix(softmax_scale=2.0)
    ref = VelocityKernel(toy_adata, backward=True).compute_transition_matrix(softmax_scale=2.0)
    np.testing.assert_allclose(kb.transition_matrix.toarray(), ref.transition_matrix.toarray(), atol=0)


def test_softmax_scale_estimate_and_repr(toy_adata):
    k = VelocityKernel(toy_adata)
    assert repr(k) == "VelocityKernel[n=50]"
    k.compute_transition_matrix()
    X, V = _data(toy_adata)
    a = np.abs(np.concatenate([_sim_row(V[i], X[nb] - X[i], "correlation")[0] for i, nb in _rows(toy_adata)]))
    expected = 1.0 / np.median(a[a != 0])
    assert k.params["softmax_scale"] == pytest.approx(expected, rel=1e-12)
    assert repr(k) == (
        f"VelocityKernel[n=50, model='deterministic', similarity='correlation', softmax_scale={round(expected, 3)}]"
    )


def _rows(adata):
    C = sp.csr_matrix(adata.obsp["connectivities"])
    for i in range(C.shape[0]):
        yield i, C.indices[C.indptr[i] : C.indptr[i + 1]]


def test_nan_genes_dropped_with_warning(toy_adata, log_messages):
    a = toy_adata.copy()
    used = np.flatnonzero(a.var["velocity_genes"].to_numpy())
    V = np.array(a.layers["velocity"], dtype=np.float64)
    V[3, used[:2]] = np.nan
    V[7, used[5]] = np.nan
    a.layers["velocity"] = V
    k = VelocityKernel(a)
    assert any("Dropping 3 of" in m and "NaN" in m for m in log_messages)
    assert k.n_features == len(used) - 3
    k.compute_transition_matrix(similarity="cosine")
    X, Vv = _data(a)
    assert X.shape[1] == k.n_features
    ref, _ = reference_velocity(X, Vv, a.obsp["connectivities"], "cosine")
    np.testing.assert_allclose(k.transition_matrix.toarray(), ref, atol=1e-12)


def test_zero_velocity_rows_are_uniform(toy_adata):
    a = toy_adata.copy()
    V = np.array(a.layers["velocity"], dtype=np.float64)
    V[0] = 0.0
    V[1] = 0.5  # constant: zero after centring (CellRank: NaN row, error)
    a.layers["velocity"] = V
    T = VelocityKernel(a).compute_transition_matrix().transition_matrix
    for i in (0, 1):
        row = T.getrow(i)
        np.testing.assert_allclose(row.data, 1.0 / row.nnz)


def test_gene_subset_and_obsm(toy_adata):
    a = toy_adata.copy()
    names = list(a.var_names[a.var["velocity_genes"].to_numpy()][:20])
    k = VelocityKernel(a, gene_subset=names)
    assert k.n_features == 20
    a.obsm["X_test"] = np.asarray(a.layers["Ms"])[:, :5]
    a.obsm["V_test"] = np.nan_to_num(np.asarray(a.layers["velocity"])[:, :5])
    k = VelocityKernel(a, attr="obsm", xkey="X_test", vkey="V_test").compute_transition_matrix(similarity="cosine")
    ref, _ = reference_velocity(a.obsm["X_test"], a.obsm["V_test"], a.obsp["connectivities"], "cosine")
    np.testing.assert_allclose(k.transition_matrix.toarray(), ref, atol=1e-12)


def test_bad_inputs_are_named(toy_adata):
    with pytest.raises(KeyError, match=r"adata\.layers\['nope'\]"):
        VelocityKernel(toy_adata, vkey="nope")
    k = VelocityKernel(toy_adata)
    with pytest.raises(ValueError, match="similarity"):
        k.compute_transition_matrix(similarity="euclid")
    with pytest.raises(ValueError, match="model"):
        k.compute_transition_matrix(model="stochastics")
    with pytest.raises(ValueError, match="softmax_scale"):
        k.compute_transition_matrix(softmax_scale=-1.0)


def test_write_to_adata_round_trip(toy_adata):
    k = VelocityKernel(toy_adata).compute_transition_matrix()
    k.write_to_adata()
    assert toy_adata.uns["T_fwd_params"]["params"]["similarity"] == "correlation"
    np.testing.assert_allclose(toy_adata.obsp["T_fwd"].toarray(), k.transition_matrix.toarray())


# --------------------------------------------------------------------------- CytoTRACEKernel
def reference_cytotrace(X, E, n_genes, aggregation):
    X = X.toarray() if sp.issparse(X) else np.asarray(X)
    E = E.toarray() if sp.issparse(E) else np.asarray(E)
    counts = (X > 0).sum(axis=1)
    corr = np.array([np.corrcoef(X[:, g], counts)[0, 1] if X[:, g].std() > 0 else np.nan for g in range(X.shape[1])])
    order = np.argsort(np.where(np.isnan(corr), -np.inf, -corr), kind="stable")[:n_genes]
    sub = E[:, order].astype(np.float64)
    score = {
        "mean": lambda a: a.mean(axis=1),
        "median": lambda a: np.median(a, axis=1),
        "gmean": lambda a: st.gmean(a, axis=1),
        "hmean": lambda a: st.hmean(a, axis=1),
    }[aggregation](sub)
    score = (score - score.min()) / (score - score.min()).max()
    return counts, corr, order, score


@pytest.mark.parametrize("aggregation", ["mean", "median", "gmean", "hmean"])
def test_cytotrace_score_matches_direct_numpy(atlas200, aggregation):
    a = atlas200.copy()
    a.layers["Ms"] = a.layers["Ms"] + 0.01  # strictly positive for the geometric/harmonic means
    CytoTRACEKernel(a).compute_cytotrace(layer="Ms", aggregation=aggregation, n_genes=10)
    counts, corr, order, score = reference_cytotrace(a.X, a.layers["Ms"], 10, aggregation)
    np.testing.assert_array_equal(a.obs["ct_num_exp_genes"].to_numpy(), counts)
    np.testing.assert_allclose(a.var["ct_gene_corr"].to_numpy(), corr, atol=1e-10, equal_nan=True)
    assert set(np.flatnonzero(a.var["ct_correlates"].to_numpy())) == set(order)
    np.testing.assert_allclose(a.obs["ct_score"].to_numpy(), score, atol=1e-10)
    np.testing.assert_allclose(a.obs["ct_pseudotime"].to_numpy(), 1 - score, atol=1e-10)
    assert a.uns["ct_params"] == {"aggregation": aggregation, "layer": "Ms", "use_raw": False, "n_genes": 10}


def test_cytotrace_sparse_layer_and_toy_data(toy_adata):
    a = toy_adata.copy()
    a.layers["Ms_sparse"] = sp.csr_matrix(np.asarray(a.layers["Ms"]))
    CytoTRACEKernel(a).compute_cytotrace(layer="Ms_sparse", aggregation="median", n_genes=30)
    sparse_score = a.obs["ct_score"].to_numpy().copy()
    _, _, _, score = reference_cytotrace(a.X, a.layers["Ms"], 30, "median")
    np.testing.assert_allclose(sparse_score, score, atol=1e-10)
    assert 0.0 == sparse_score.min() and sparse_score.max() == 1.0


def test_cytotrace_transition_matrix_is_the_pseudotime_kernels(atlas200, backend):
    from cellfate_gpu.kernels import PseudotimeKernel

    a = atlas200.copy()
    k = CytoTRACEKernel(a)
    with pytest.raises(RuntimeError, match="compute_cytotrace"):
        k.compute_transition_matrix()
    k.compute_cytotrace(n_genes=10).compute_transition_matrix(frac_to_keep=0.3, backend=backend)
    pk = PseudotimeKernel(a, time_key="ct_pseudotime").compute_transition_matrix(frac_to_keep=0.3, backend=backend)
    np.testing.assert_allclose(k.transition_matrix.toarray(), pk.transition_matrix.toarray(), atol=0)
    assert repr(k) == "CytoTRACEKernel[n=200, dnorm=False, scheme='hard', frac_to_keep=0.3]"
    kb = (~k).compute_transition_matrix("soft", backend=backend)
    pkb = PseudotimeKernel(a, time_key="ct_pseudotime", backward=True).compute_transition_matrix(
        "soft", backend=backend
    )
    np.testing.assert_allclose(kb.transition_matrix.toarray(), pkb.transition_matrix.toarray(), atol=0)
    assert repr(kb).startswith("~CytoTRACEKernel[")


def test_cytotrace_errors(atlas200):
    a = atlas200.copy()
    with pytest.raises(KeyError, match="nope"):
        CytoTRACEKernel(a).compute_cytotrace(layer="nope")
    with pytest.raises(ValueError, match="aggregation"):
        CytoTRACEKernel(a).compute_cytotrace(aggregation="mode")
    a.X = sp.csr_matrix(np.ones(a.shape, dtype=np.float32))  # every gene constant: correlations NaN
    with pytest.raises(ValueError, match="NaN correlation"):
        CytoTRACEKernel(a).compute_cytotrace(n_genes=5)


def test_velocity_on_the_cupy_double_with_few_transfers(toy_adata, monkeypatch):
    try:  # tests/ on sys.path (rootdir mode) or tests as a package
        from cupy_double import install
    except ImportError:
        from tests.cupy_double import install
    from cellfate_gpu.backends import get_backend

    ref = VelocityKernel(toy_adata).compute_transition_matrix(backend="scipy").transition_matrix
    with install(monkeypatch) as cupy:
        be = get_backend("cupy")
        cupy.TRANSFERS.clear()
        k = VelocityKernel(toy_adata).compute_transition_matrix(backend=be)
        transfers = dict(cupy.TRANSFERS)
        T = k.transition_matrix
    # graph + x + v up; the softmax-scale median and validation read back a few scalars only.
    assert transfers.get("h2d", 0) <= 3 and transfers.get("d2h", 0) + transfers.get("sync", 0) <= 8
    np.testing.assert_allclose(T.toarray(), ref.toarray(), atol=1e-14)


def test_cells_without_neighbours_are_an_error(toy_adata):
    a = toy_adata.copy()
    C = sp.lil_matrix(a.obsp["connectivities"])
    C[4, :] = 0
    a.obsp["connectivities"] = sp.csr_matrix(C)
    with pytest.raises(ValueError, match=r"1 cell\(s\) have no neighbour"):
        VelocityKernel(a).compute_transition_matrix()


def test_cytotrace_use_raw_and_dense_counts(atlas200):
    import anndata as ad

    a = atlas200.copy()
    rng = np.random.default_rng(0)
    extra = rng.poisson(0.5, size=(a.n_obs, 5)).astype(np.float32)
    raw = ad.AnnData(X=np.hstack([a.X.toarray(), extra]))  # dense raw with 5 more genes
    raw.var_names = list(a.var_names) + [f"extra_{i}" for i in range(5)]
    a.raw = raw
    CytoTRACEKernel(a).compute_cytotrace(use_raw=True, n_genes=8)
    counts, corr, _, _ = reference_cytotrace(raw.X, raw.X, 8, "mean")
    np.testing.assert_array_equal(a.obs["ct_num_exp_genes"].to_numpy(), counts)
    np.testing.assert_allclose(a.var["ct_gene_corr"].to_numpy(), corr[: a.n_vars], atol=1e-10, equal_nan=True)
    # Top genes are chosen among the genes of adata (raw-only genes are skipped).
    ranked = [g for g in np.argsort(np.where(np.isnan(corr), -np.inf, -corr), kind="stable") if g < a.n_vars][:8]
    assert set(np.flatnonzero(a.var["ct_correlates"].to_numpy())) == set(ranked)
    assert a.uns["ct_params"]["use_raw"] is True
