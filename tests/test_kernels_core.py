"""Connectivity/Pseudotime/Precomputed kernels against plain per-row references (CellRank 2.3.3
semantics written out row by row), the expression algebra, reprs and AnnData round trips."""

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp

from cellfate_gpu.backends import get_backend
from cellfate_gpu.datasets import synthetic_atlas
from cellfate_gpu.kernels import ConnectivityKernel, Kernel, PrecomputedKernel, PseudotimeKernel
from cellfate_gpu.kernels._rowwise import rank_within_rows, row_normalize, row_softmax


@pytest.fixture(scope="module")
def small():
    """200 cells; a few connectivities tied on purpose so the hard scheme's tie rule matters."""
    adata = synthetic_atlas(n_cells=200, n_lineages=2, n_genes=10, n_neighbors=10, seed=3)
    C = sp.csr_matrix(adata.obsp["connectivities"])
    C.data[::7] = 1.0  # ties at the top of many rows (UMAP graphs have many weights equal to 1)
    C = sp.csr_matrix(C.maximum(C.T))
    adata.obsp["connectivities"] = C
    return adata


def _dense(k):
    return k.transition_matrix.toarray()


def _rows(C):
    for i in range(C.shape[0]):
        lo, hi = C.indptr[i], C.indptr[i + 1]
        yield i, C.indices[lo:hi], C.data[lo:hi]


def _ref_hard(C, t, frac):
    """CellRank's HardThresholdScheme, one row at a time (ties as flip(stable argsort))."""
    out = np.zeros(C.shape)
    for i, cols, vals in _rows(C):
        k = max(0, min(30, int(np.floor(len(vals) * frac))))
        ixs = np.flip(np.argsort(vals, kind="stable"))
        close, far = ixs[:k], ixs[k:]
        keep = np.concatenate([close, far[t[i] <= t[cols[far]]]])
        out[i, cols[keep]] = vals[keep]
    return out / out.sum(axis=1, keepdims=True)


def _ref_soft(C, t, b, nu):
    out = np.zeros(C.shape)
    for i, cols, vals in _rows(C):
        w = np.ones_like(vals)
        past = t[cols] < t[i]
        w[past] = 2.0 / (1.0 + np.exp(b * (t[i] - t[cols[past]]))) ** (1.0 / nu)
        out[i, cols] = vals * w
    return out / out.sum(axis=1, keepdims=True)


def _ref_connectivity(C, dnorm):
    K = C.toarray()
    if dnorm:
        q = K.sum(axis=0)
        K = np.diag(1 / q) @ K @ np.diag(1 / q)
    return K / K.sum(axis=1, keepdims=True)


def _check_stochastic(T):
    assert T.min() >= 0
    np.testing.assert_allclose(np.asarray(T.sum(axis=1)).ravel(), 1.0, atol=1e-12)


# ------------------------------------------------------------------ kernels vs references
@pytest.mark.parametrize("frac", [0.1, 0.3, 1.0])
def test_pseudotime_hard_matches_cellrank_rows(small, backend, frac):
    k = PseudotimeKernel(small).compute_transition_matrix("hard", frac_to_keep=frac, backend=backend)
    C, t = small.obsp["connectivities"], small.obs["dpt_pseudotime"].to_numpy()
    np.testing.assert_allclose(_dense(k), _ref_hard(C, t, frac), atol=1e-12)
    _check_stochastic(k.transition_matrix)
    assert k.backend.name == backend


def test_pseudotime_hard_backward_uses_reversed_time(small, backend):
    k = PseudotimeKernel(small, backward=True).compute_transition_matrix(backend=backend)
    C, t = small.obsp["connectivities"], small.obs["dpt_pseudotime"].to_numpy()
    np.testing.assert_allclose(_dense(k), _ref_hard(C, t.max() - t, 0.3), atol=1e-12)
    np.testing.assert_allclose(k.pseudotime, t.max() - t)


@pytest.mark.parametrize(("b", "nu"), [(10.0, 0.5), (3.0, 2.0)])
def test_pseudotime_soft_matches_cellrank_rows(small, backend, b, nu):
    k = PseudotimeKernel(small).compute_transition_matrix("soft", b=b, nu=nu, backend=backend)
    C, t = small.obsp["connectivities"], small.obs["dpt_pseudotime"].to_numpy()
    np.testing.assert_allclose(_dense(k), _ref_soft(C, t, b, nu), atol=1e-12)
    assert k.params == {"dnorm": False, "scheme": "soft", "b": b, "nu": nu}


def test_pseudotime_custom_scheme_is_called_per_row_like_cellrank(small):
    calls = []

    def only_future(cell_t, neigh_t, conn, power=1.0):
        calls.append(len(conn))
        return np.where(neigh_t >= cell_t, conn**power, conn * 1e-3)

    k = PseudotimeKernel(small).compute_transition_matrix(only_future, power=2.0)
    C, t = small.obsp["connectivities"], small.obs["dpt_pseudotime"].to_numpy()
    ref = np.zeros(C.shape)
    for i, cols, vals in _rows(C):
        ref[i, cols] = only_future(t[i], t[cols], vals, power=2.0)
    np.testing.assert_allclose(_dense(k), ref / ref.sum(axis=1, keepdims=True), atol=1e-12)
    assert len(calls) == 2 * small.n_obs  # the reference above made the other half
    assert k.params == {"dnorm": False, "scheme": "only_future", "power": 2.0}


@pytest.mark.parametrize("dnorm", [True, False])
def test_connectivity_kernel_matches_reference(small, backend, dnorm):
    k = ConnectivityKernel(small).compute_transition_matrix(density_normalize=dnorm, backend=backend)
    np.testing.assert_allclose(_dense(k), _ref_connectivity(small.obsp["connectivities"], dnorm), atol=1e-12)
    _check_stochastic(k.transition_matrix)


def test_native_matrix_stays_on_backend(small, backend):
    k = PseudotimeKernel(small).compute_transition_matrix(backend=backend)
    be = get_backend(backend)
    assert be.is_native(k.native_transition_matrix)
    assert sp.isspmatrix_csr(k.transition_matrix)


# ------------------------------------------------------------------ row-wise helpers
def test_rowwise_helpers_against_loops(backend):
    be = get_backend(backend)
    rng = np.random.default_rng(0)
    A = sp.random(30, 30, density=0.3, random_state=1, format="csr")
    A.data = np.round(A.data * 4) / 4 + 0.25  # many ties
    A.indices = A.indices.astype(np.int32)
    native = be.from_scipy_csr(A)
    data, _, indptr = be.csr_components(native)
    ranks = be.to_host(rank_within_rows(be, data, indptr))
    logits = rng.normal(size=A.nnz)
    probs = be.to_host(row_softmax(be, be.asarray(logits), indptr, scale=2.5))
    for i in range(30):
        lo, hi = A.indptr[i], A.indptr[i + 1]
        if hi == lo:
            continue
        order = np.flip(np.argsort(A.data[lo:hi], kind="stable"))
        expected = np.empty(hi - lo, dtype=np.int64)
        expected[order] = np.arange(hi - lo)
        np.testing.assert_array_equal(ranks[lo:hi], expected)
        e = np.exp(2.5 * logits[lo:hi] - np.max(2.5 * logits[lo:hi]))
        np.testing.assert_allclose(probs[lo:hi], e / e.sum(), rtol=1e-12)
    empty_rows = int(np.sum(np.diff(A.indptr) == 0))
    if empty_rows:
        with pytest.raises(ValueError, match=f"{empty_rows} row"):
            row_normalize(be, native)


# ------------------------------------------------------------------ algebra
@pytest.fixture(scope="module")
def computed(small):
    pk = PseudotimeKernel(small).compute_transition_matrix()
    ck = ConnectivityKernel(small).compute_transition_matrix()
    return pk, ck


def test_sums_renormalise_constants(computed):
    pk, ck = computed
    P, C = _dense(pk), _dense(ck)
    np.testing.assert_allclose(_dense(0.8 * pk + 0.2 * ck), 0.8 * P + 0.2 * C, atol=1e-14)
    np.testing.assert_allclose(_dense(pk + ck), _dense(0.5 * pk + 0.5 * ck), atol=1e-14)
    np.testing.assert_allclose(_dense(3 * pk + ck), 0.75 * P + 0.25 * C, atol=1e-14)
    np.testing.assert_allclose(_dense(pk * 3 + ck * 9), 0.25 * P + 0.75 * C, atol=1e-14)
    np.testing.assert_allclose(_dense(2 * (3 * pk)), P, atol=1e-14)  # a lone constant cancels
    np.testing.assert_allclose(_dense(pk + ck + pk), (2 * P + C) / 3, atol=1e-14)


def test_products_and_nesting_normalise_only_at_the_top(computed):
    pk, ck = computed
    P, C = _dense(pk), _dense(ck)
    prod = P * C
    np.testing.assert_allclose(_dense(pk * ck), prod / prod.sum(axis=1, keepdims=True), atol=1e-14)
    mixed = 0.5 * (pk * ck) + 0.5 * ck  # CellRank: the inner product is not normalised
    raw = 0.5 * prod + 0.5 * C
    np.testing.assert_allclose(_dense(mixed), raw / raw.sum(axis=1, keepdims=True), atol=1e-14)
    _check_stochastic(mixed.transition_matrix)


def test_direction_rules(small, computed):
    pk, ck = computed
    assert (~pk).backward is True and (~~pk).backward is False
    np.testing.assert_allclose(_dense(~~pk), _dense(pk), atol=1e-14)  # recomputed lazily
    ref = PseudotimeKernel(small, backward=True).compute_transition_matrix()
    np.testing.assert_allclose(_dense(~pk), _dense(ref), atol=1e-14)
    with pytest.raises(ValueError, match="forward and backward"):
        pk + ~pk
    with pytest.raises(ValueError, match="forward and backward"):
        pk * ~pk
    with pytest.raises(TypeError, match="only bidirectional"):
        ~ck
    assert (pk + ck).backward is False and (~pk + ck).backward is True
    inv = ~(0.8 * pk + 0.2 * ck)
    assert inv.backward is True and repr(inv).startswith("~(0.8 * PseudotimeKernel[")


def test_expression_needs_computed_children(small, computed):
    _, ck = computed
    fresh = PseudotimeKernel(small)
    with pytest.raises(RuntimeError, match=r"Compute the transition matrices of PseudotimeKernel\[n=200\]"):
        (fresh + ck).transition_matrix
    with pytest.raises(ValueError, match="positive"):
        0 * ck
    with pytest.raises(ValueError, match="different numbers of cells"):
        ck + PrecomputedKernel(sp.identity(3, format="csr"))


def test_expression_mixing_backends_moves_matrices(small):
    pk = PseudotimeKernel(small).compute_transition_matrix(backend="scipy")
    ck = ConnectivityKernel(small).compute_transition_matrix(backend="jax")
    expr = (0.8 * pk + 0.2 * ck).compute_transition_matrix()
    assert expr.backend.name == "scipy"
    np.testing.assert_allclose(_dense(expr), 0.8 * _dense(pk) + 0.2 * _dense(ck), atol=1e-14)


# ------------------------------------------------------------------ reprs
def test_reprs_are_cellrank_strings(small, computed):
    pk, ck = computed
    assert repr(PseudotimeKernel(small)) == "PseudotimeKernel[n=200]"
    assert repr(pk) == "PseudotimeKernel[n=200, dnorm=False, scheme='hard', frac_to_keep=0.3]"
    assert repr(ck) == "ConnectivityKernel[n=200, dnorm=True, key='connectivities']"
    assert str(pk) == "PseudotimeKernel[n=200]"
    assert repr(0.8 * pk + 0.2 * ck) == (
        "(0.8 * PseudotimeKernel[n=200, dnorm=False, scheme='hard', frac_to_keep=0.3]"
        " + 0.2 * ConnectivityKernel[n=200, dnorm=True, key='connectivities'])"
    )
    assert str(pk + ck) == "(0.5 * PseudotimeKernel[n=200] + 0.5 * ConnectivityKernel[n=200])"
    assert str(3 * pk) == "3 * PseudotimeKernel[n=200]"
    assert str(pk * ck) == "(PseudotimeKernel[n=200] * ConnectivityKernel[n=200])"
    assert str(~pk) == "~PseudotimeKernel[n=200]"
    soft = PseudotimeKernel(small, backward=True).compute_transition_matrix("soft", b=1 / 3)
    assert repr(soft) == "~PseudotimeKernel[n=200, dnorm=False, scheme='soft', b=0.333, nu=0.5]"
    assert repr(PrecomputedKernel(ck)).startswith("PrecomputedKernel[n=200, dnorm=True, key='connectivities', origin=")


# ------------------------------------------------------------------ validation
def test_bad_inputs_name_the_problem(small):
    a = small.copy()
    with pytest.raises(KeyError, match="nope"):
        PseudotimeKernel(a, time_key="nope")
    a.obs["bad"] = a.obs["dpt_pseudotime"].to_numpy().copy()
    a.obs.iloc[:4, a.obs.columns.get_loc("bad")] = [np.nan, np.inf, -np.inf, np.nan]
    with pytest.raises(ValueError, match="4 non-finite"):
        PseudotimeKernel(a, time_key="bad")
    with pytest.raises(KeyError, match="missing"):
        ConnectivityKernel(a, conn_key="missing")
    with pytest.raises(ValueError, match="frac_to_keep"):
        PseudotimeKernel(a).compute_transition_matrix(frac_to_keep=1.5)
    with pytest.raises(ValueError, match="threshold_scheme"):
        PseudotimeKernel(a).compute_transition_matrix("medium")
    with pytest.raises(ValueError, match=r"\d+ row\(s\) of the pseudotime-biased kNN graph sum to zero"):
        PseudotimeKernel(a).compute_transition_matrix(frac_to_keep=0.0)
    with pytest.raises(RuntimeError, match="compute the transition matrix first"):
        PseudotimeKernel(a).native_transition_matrix


def test_setter_validates(computed):
    pk, _ = computed
    k = pk.copy()
    T = k.transition_matrix
    bad = T.copy()
    bad.data[: bad.indptr[6]] *= 2  # rows 0..5
    with pytest.raises(ValueError, match="6 row"):
        k.transition_matrix = bad
    neg = T.copy()
    neg.data[0] = -0.1
    with pytest.raises(ValueError, match="1 negative"):
        k.transition_matrix = neg
    nan = T.copy()
    nan.data[:3] = np.nan
    with pytest.raises(ValueError, match="3 non-finite"):
        k.transition_matrix = nan
    with pytest.raises(ValueError, match="expected"):
        k.transition_matrix = sp.identity(5, format="csr")
    k.transition_matrix = sp.identity(200, format="csr")
    np.testing.assert_array_equal(k.transition_matrix.toarray(), np.eye(200))


# ------------------------------------------------------------------ precomputed + I/O
def test_precomputed_inputs(small, computed):
    _, ck = computed
    C = _dense(ck)
    small = small.copy()
    small.obsp["T_fwd"] = ck.transition_matrix
    for k in (
        PrecomputedKernel(ck),
        PrecomputedKernel(ck.transition_matrix, adata=small),
        PrecomputedKernel(C),
        PrecomputedKernel(adata=small, obsp_key="T_fwd"),
        PrecomputedKernel(small),
        PrecomputedKernel("T_fwd", adata=small),
    ):
        np.testing.assert_allclose(_dense(k), C, atol=1e-15)
    assert PrecomputedKernel(C).params == {"origin": "array"}
    assert PrecomputedKernel(small).params == {"origin": "adata.obsp['T_fwd']"}
    with pytest.raises(ValueError, match="do not sum to 1"):
        PrecomputedKernel(np.ones((4, 4)))
    with pytest.raises(KeyError, match="T_bwd"):
        PrecomputedKernel(adata=small, backward=True)


def test_h5ad_round_trip(small, computed, tmp_path):
    pk, ck = computed
    adata = small.copy()
    expr = 0.8 * pk + 0.2 * ck
    for kernel, key in ((expr, None), (~pk, "T_bwd"), (ck, "T_conn")):
        k = kernel.copy()
        for leaf in k.kernels:
            leaf._adata = adata
        k.write_to_adata(key)
    assert adata.uns["T_fwd_params"]["init"] == {"backward": False}
    assert adata.uns["T_bwd_params"]["params"] == {"dnorm": False, "scheme": "hard", "frac_to_keep": 0.3}
    path = tmp_path / "kernels.h5ad"
    adata.write_h5ad(path)
    back = ad.read_h5ad(path)

    loaded = Kernel.from_adata(back, "T_fwd")
    assert isinstance(loaded, PrecomputedKernel) and loaded.backward is False
    np.testing.assert_allclose(_dense(loaded), _dense(expr), atol=1e-15)
    assert loaded.params["PseudotimeKernel_0"]["frac_to_keep"] == 0.3
    assert loaded.params["origin"] == "adata.obsp['T_fwd']"

    rebuilt = PseudotimeKernel.from_adata(back, "T_bwd")
    assert type(rebuilt) is PseudotimeKernel and rebuilt.backward is True
    assert repr(rebuilt) == "~PseudotimeKernel[n=200, dnorm=False, scheme='hard', frac_to_keep=0.3]"
    np.testing.assert_allclose(_dense(rebuilt), _dense(~pk), atol=1e-15)

    conn = ConnectivityKernel.from_adata(back, "T_conn", copy=True)
    assert repr(conn) == repr(ck)
    np.testing.assert_allclose(_dense(conn), _dense(ck), atol=1e-15)


def test_kernels_pickled_under_the_old_module_still_load(computed, monkeypatch):
    # KernelExpression and PrecomputedKernel lived in kernels._base; pickles made then name that module
    import pickle

    from cellfate_gpu import kernels
    from cellfate_gpu.kernels import _base

    pk, ck = computed
    originals = (kernels.PrecomputedKernel(pk), 0.8 * pk + 0.2 * ck)
    for cls in (kernels.PrecomputedKernel, kernels.KernelExpression):
        assert getattr(_base, cls.__name__) is cls and cls.__module__ != _base.__name__
        monkeypatch.setattr(cls, "__module__", _base.__name__)  # pickle as the previous layout did
    old = [pickle.dumps(k) for k in originals]
    monkeypatch.undo()
    for blob, original in zip(old, originals, strict=True):
        assert b"cellfate_gpu.kernels._base" in blob and b"cellfate_gpu.kernels._precomputed" not in blob
        back = pickle.loads(blob)
        assert type(back) is type(original) and repr(back) == repr(original)
        np.testing.assert_array_equal(_dense(back), _dense(original))
    with pytest.raises(AttributeError, match="NoSuchKernel"):
        _base.NoSuchKernel


def test_write_to_adata_keeps_h5ad_safe_params(small, tmp_path):
    adata = small.copy()

    def scheme(cell_t, neigh_t, conn, note=None):
        return conn

    k = PseudotimeKernel(adata).compute_transition_matrix(scheme, note=None)
    k.write_to_adata(copy=True)
    assert adata.uns["T_fwd_params"]["params"] == {"dnorm": False, "scheme": "scheme"}
    adata.write_h5ad(tmp_path / "a.h5ad")  # no None inside uns
