"""Kernels against plain per-row references, algebra identities, reprs, AnnData round trips, walks."""

import itertools

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp

from cellfate_gpu.kernels import ConnectivityKernel, Kernel, PrecomputedKernel, PseudotimeKernel


def _dense(k):
    return k.transition_matrix.toarray()


def _reference_hard(C, t, frac):
    C = sp.csr_matrix(C)
    out = np.zeros(C.shape)
    for i in range(C.shape[0]):
        cols, vals = C.indices[C.indptr[i] : C.indptr[i + 1]], C.data[C.indptr[i] : C.indptr[i + 1]]
        k_keep = max(0, min(30, int(np.floor(len(vals) * frac))))
        order = np.argsort(-vals, kind="stable")
        keep = np.zeros(len(vals), bool)
        keep[order[:k_keep]] = True
        keep |= t[cols] >= t[i]
        out[i, cols[keep]] = vals[keep]
    return out / out.sum(axis=1, keepdims=True)


def _reference_soft(C, t, b, nu):
    C = sp.csr_matrix(C)
    out = np.zeros(C.shape)
    for i in range(C.shape[0]):
        cols, vals = C.indices[C.indptr[i] : C.indptr[i + 1]], C.data[C.indptr[i] : C.indptr[i + 1]]
        dt = t[i] - t[cols]
        w = np.where(dt > 0, 2.0 / (1.0 + np.exp(b * dt)) ** (1.0 / nu), 1.0)
        out[i, cols] = vals * w
    return out / out.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("frac", [0.3, 1.0])
def test_pseudotime_hard_matches_per_row_reference(atlas, backend, frac):
    k = PseudotimeKernel(atlas, time_key="pseudotime").compute_transition_matrix(frac_to_keep=frac, backend=backend)
    ref = _reference_hard(atlas.obsp["connectivities"], atlas.obs["pseudotime"].to_numpy(), frac)
    np.testing.assert_allclose(_dense(k), ref, atol=1e-12)


def test_thresholding_that_empties_rows_is_an_error(atlas):
    # frac_to_keep=0 leaves the latest cells (no later neighbour) without any edge.
    with pytest.raises(ValueError, match=r"\d+ row\(s\) of the pseudotime-biased kNN graph sum to zero"):
        PseudotimeKernel(atlas, time_key="pseudotime").compute_transition_matrix(frac_to_keep=0.0)


def test_pseudotime_soft_and_backward(atlas, backend):
    k = PseudotimeKernel(atlas, time_key="pseudotime").compute_transition_matrix("soft", b=5.0, nu=0.7, backend=backend)
    t = atlas.obs["pseudotime"].to_numpy()
    np.testing.assert_allclose(_dense(k), _reference_soft(atlas.obsp["connectivities"], t, 5.0, 0.7), atol=1e-12)
    kb = PseudotimeKernel(atlas, time_key="pseudotime", backward=True).compute_transition_matrix(
        "soft", backend=backend
    )
    np.testing.assert_allclose(
        _dense(kb), _reference_soft(atlas.obsp["connectivities"], t.max() - t, 10.0, 0.5), atol=1e-12
    )
    assert repr(kb).startswith("~PseudotimeKernel[")


def test_connectivity_density_normalisation(atlas, backend):
    C = atlas.obsp["connectivities"].toarray()
    q = C.sum(axis=0)
    ref = (C / q[None, :]) / q[:, None]
    ref /= ref.sum(axis=1, keepdims=True)
    k = ConnectivityKernel(atlas).compute_transition_matrix(backend=backend)
    np.testing.assert_allclose(_dense(k), ref, atol=1e-12)
    plain = ConnectivityKernel(atlas).compute_transition_matrix(density_normalize=False, backend=backend)
    np.testing.assert_allclose(_dense(plain), C / C.sum(axis=1, keepdims=True), atol=1e-12)


def test_reprs_follow_cellrank(atlas):
    pk = PseudotimeKernel(atlas, time_key="pseudotime")
    assert repr(pk) == "PseudotimeKernel[n=600]"
    pk.compute_transition_matrix()
    ck = ConnectivityKernel(atlas).compute_transition_matrix()
    assert repr(pk) == "PseudotimeKernel[n=600, dnorm=False, scheme='hard', frac_to_keep=0.3]"
    assert repr(ck) == "ConnectivityKernel[n=600, dnorm=True, key='connectivities']"
    assert repr(0.8 * pk + 0.2 * ck) == f"(0.8 * {pk!r} + 0.2 * {ck!r})"


def test_algebra_identities(atlas, backend):
    pk = PseudotimeKernel(atlas, time_key="pseudotime").compute_transition_matrix(backend=backend)
    ck = ConnectivityKernel(atlas).compute_transition_matrix(backend=backend)
    P, C = _dense(pk), _dense(ck)
    np.testing.assert_allclose(_dense(0.8 * pk + 0.2 * ck), 0.8 * P + 0.2 * C, atol=1e-12)
    np.testing.assert_allclose(_dense(pk + ck), _dense(0.5 * pk + 0.5 * ck), atol=1e-12)
    np.testing.assert_allclose(_dense(3 * pk + 1 * ck), 0.75 * P + 0.25 * C, atol=1e-12)  # renormalised
    prod = P * C
    np.testing.assert_allclose(_dense(pk * ck), prod / prod.sum(axis=1, keepdims=True), atol=1e-12)
    assert (~~pk).backward is False and (~pk).backward is True
    with pytest.raises(ValueError, match="forward and backward"):
        pk + ~pk
    with pytest.raises(TypeError, match="only bidirectional"):
        ~ck


def test_expression_needs_computed_children(atlas):
    pk = PseudotimeKernel(atlas, time_key="pseudotime")
    ck = ConnectivityKernel(atlas).compute_transition_matrix()
    with pytest.raises(RuntimeError, match="Compute the transition matrices of PseudotimeKernel"):
        (pk + ck).transition_matrix


def test_rows_stochastic_and_validation(atlas):
    k = PseudotimeKernel(atlas, time_key="pseudotime").compute_transition_matrix()
    T = k.transition_matrix
    assert T.min() >= 0 and np.allclose(T.sum(axis=1), 1.0)
    bad = T.copy()
    bad.data[:5] *= 2
    with pytest.raises(ValueError, match="do not sum to 1"):
        k.transition_matrix = bad
    neg = T.copy()
    neg.data[0] = -0.1
    with pytest.raises(ValueError, match="negative"):
        k.transition_matrix = neg


def test_bad_inputs_name_the_key(atlas_copy):
    with pytest.raises(KeyError, match="nope"):
        PseudotimeKernel(atlas_copy, time_key="nope")
    atlas_copy.obs.loc[atlas_copy.obs_names[:3], "pseudotime"] = np.nan
    with pytest.raises(ValueError, match="3 non-finite"):
        PseudotimeKernel(atlas_copy, time_key="pseudotime")
    with pytest.raises(KeyError, match="missing"):
        ConnectivityKernel(atlas_copy, conn_key="missing")
    with pytest.raises(ValueError, match="frac_to_keep"):
        PseudotimeKernel(atlas_copy, time_key="dpt_pseudotime").compute_transition_matrix(frac_to_keep=2)


def test_write_read_h5ad_round_trip(atlas_copy, tmp_path):
    pk = PseudotimeKernel(atlas_copy, time_key="pseudotime").compute_transition_matrix()
    ck = ConnectivityKernel(atlas_copy).compute_transition_matrix()
    combined = 0.8 * pk + 0.2 * ck
    combined.write_to_adata()
    assert "T_fwd" in atlas_copy.obsp and "params" in atlas_copy.uns["T_fwd_params"]
    path = tmp_path / "k.h5ad"
    atlas_copy.write_h5ad(path)
    back = ad.read_h5ad(path)
    loaded = Kernel.from_adata(back, "T_fwd")
    assert isinstance(loaded, PrecomputedKernel)
    np.testing.assert_allclose(loaded.transition_matrix.toarray(), combined.transition_matrix.toarray())
    assert loaded.params["PseudotimeKernel_0"]["frac_to_keep"] == 0.3


def test_precomputed_kernel_inputs(atlas):
    ck = ConnectivityKernel(atlas).compute_transition_matrix()
    for obj in (ck, ck.transition_matrix, ck.transition_matrix.toarray()):
        pk = PrecomputedKernel(obj, adata=atlas)
        np.testing.assert_allclose(pk.transition_matrix.toarray(), ck.transition_matrix.toarray())
    with pytest.raises(ValueError, match="do not sum to 1"):
        PrecomputedKernel(np.ones((4, 4)))


def test_random_walks_reproducible_and_stop(atlas):
    k = PseudotimeKernel(atlas, time_key="pseudotime").compute_transition_matrix()
    a = k.simulate_random_walks(n_sims=20, seed=3, start_ixs={"clusters": ["Root"]})
    b = k.simulate_random_walks(n_sims=20, seed=3, start_ixs={"clusters": ["Root"]})
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    roots = set(np.flatnonzero(atlas.obs["clusters"] == "Root"))
    assert all(w[0] in roots for w in a)
    T = k.transition_matrix
    for w in a:  # every step follows an edge of T
        assert all(T[i, j] > 0 for i, j in itertools.pairwise(w))
    terminal = atlas.obs["is_terminal"].to_numpy()
    stopped = k.simulate_random_walks(
        n_sims=20, seed=3, start_ixs={"clusters": ["Root"]}, stop_ixs=terminal, max_iter=1.0
    )
    for w in stopped:
        assert terminal[w[-1]] and not terminal[w[:-1]].any()


def test_plot_random_walks_draws(atlas, tmp_path):
    k = PseudotimeKernel(atlas, time_key="pseudotime").compute_transition_matrix()
    fig = k.plot_random_walks(n_sims=5, seed=0, start_ixs={"clusters": ["Root"]}, save=tmp_path / "rw.png")
    assert (tmp_path / "rw.png").stat().st_size > 0 and len(fig.axes) == 1
