"""Gene-trend models: the batched penalised-spline GAM against pygam, gene by gene."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from cellfate_gpu.lineage import Lineage
from cellfate_gpu.models import GAM, Family, SKLearnModel, SplineBasis, fit_splines, fit_trends, lineage_design
from cellfate_gpu.models._spline import penalty_matrix

# pygam's deviance statistics take log(y) of the zero counts (irrelevant to the fit compared here)
pytestmark = [
    pytest.mark.filterwarnings("ignore:divide by zero encountered in log:RuntimeWarning"),
    pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning"),
]


def _adata(n_cells: int = 500, n_genes: int = 12, seed: int = 0, zeros: float = 0.3):
    """Cells with a pseudotime, three lineages' soft fate probabilities and sparse counts with zeros."""
    import anndata as ad

    rng = np.random.default_rng(seed)
    t = rng.uniform(0, 1, n_cells)
    t[:20] = t[20:40]  # repeated pseudotimes: only the first occurrence is fitted
    branch = rng.integers(0, 3, n_cells)
    logits = np.where(np.arange(3)[None, :] == branch[:, None], 4.0 * t[:, None], 0.0) + rng.normal(
        0, 0.3, (n_cells, 3)
    )
    P = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    freq = rng.uniform(1, 6, n_genes)
    mean = np.exp(np.sin(np.outer(t, freq)) + rng.normal(0, 0.1, n_genes))
    Y = mean * rng.gamma(3.0, 1 / 3.0, (n_cells, n_genes))
    Y[rng.uniform(size=Y.shape) < zeros] = 0.0
    Y[0, 0] = 1.0  # an exact one (pygam nudges it in its initial estimate)
    adata = ad.AnnData(sp.csr_matrix(Y.astype(np.float32)))
    adata.var_names = [f"g{i}" for i in range(n_genes)]
    adata.obs["latent_time"] = t
    adata.layers["Ms"] = Y + 0.05
    Lineage(P, names=["Alpha", "Beta", "Gamma"]).to_adata(adata, "lineages_fwd")
    return adata


def _pygam_model(distribution: str, link: str):
    pg = pytest.importorskip("pygam")
    term = pg.s(0, spline_order=3, n_splines=6, lam=3, penalties=["derivative", "l2"])
    cls = {("normal", "identity"): pg.LinearGAM, ("gamma", "log"): pg.GammaGAM, ("poisson", "log"): pg.PoissonGAM}
    return cls[distribution, link](term, max_iter=2000, verbose=False)


def _close(ours: np.ndarray, ref: np.ndarray) -> float:
    """Largest error relative to the curve's scale (max(1, max|ref|))."""
    return float(np.max(np.abs(ours - ref)) / max(1.0, float(np.max(np.abs(ref)))))


def test_basis_and_penalty_are_pygams():
    pytest.importorskip("pygam")
    rng = np.random.default_rng(1)
    x = np.sort(rng.uniform(-2, 5, 300))
    gam = _pygam_model("gamma", "log").fit(x[:, None], rng.gamma(2, 1, 300))
    np.testing.assert_allclose(SplineBasis(x.min(), x.max())(x), gam._modelmat(x[:, None]).toarray(), atol=1e-12)
    np.testing.assert_array_equal(penalty_matrix(6), gam._P().toarray())
    outside = np.array([-3.0, 6.0])  # linear extrapolation beyond the edge knots
    np.testing.assert_allclose(
        SplineBasis(x.min(), x.max())(outside), gam._modelmat(outside[:, None]).toarray(), atol=1e-6
    )


@pytest.mark.parametrize(("distribution", "link"), [("gamma", "log"), ("normal", "identity"), ("poisson", "log")])
def test_batched_trends_equal_pygam_per_gene(distribution, link):
    """Every gene of every lineage: curves and 95% intervals equal pygam's per-gene fit to 1e-6."""
    adata = _adata()
    genes = list(adata.var_names)
    model = GAM(adata, distribution=distribution, link=link)
    trends = fit_trends(adata, model, genes, ["Alpha", "Beta", "Gamma"], "latent_time", show_progress_bar=False)
    worst_mean = worst_ci = 0.0
    for lin, tr in trends.items():
        d = lineage_design(adata, lin, "latent_time")
        Y = adata.X[d.cells].toarray().astype(np.float64)
        for j, gene in enumerate(genes):
            ref = _pygam_model(distribution, link).fit(d.x[:, None], Y[:, j], weights=d.w)
            worst_mean = max(worst_mean, _close(tr.mean[gene].to_numpy(), ref.predict(d.x_test[:, None])))
            worst_ci = max(worst_ci, _close(tr.conf_int[:, j], ref.confidence_intervals(d.x_test[:, None])))
        assert tr.converged.all()
    assert worst_mean < 1e-6, worst_mean
    assert worst_ci < 1e-6, worst_ci


def test_many_cells_start_and_stop_like_pygam():
    r"""30k cells: pygam's first iterate, its iteration count and its curves to 1e-10, sparse and dense.

    :math:`B^\top B` is singular up to its :math:`\sqrt\epsilon` load (the B-splines sum to one, as the
    intercept does), condition ~1e12 here; an explicit inverse for the start moved the linear predictor
    by ~1e-4 and the curves by up to 7e-9, and at 100k cells (gene_1669, Lineage_3 of the CellRank benchmark)
    stopped one iteration before pygam (1.2e-6).
    """
    pg = pytest.importorskip("pygam")
    rng = np.random.default_rng(0)
    n, g = 30_000, 4
    x = np.sort(rng.uniform(0, 1, n))
    w = np.clip(1 / (1 + np.exp(-8 * (x - 0.5))) + rng.normal(0, 0.05, n), 0.01, 1)
    Y = np.exp(np.sin(np.outer(x, rng.uniform(1, 6, g)) + rng.uniform(0, np.pi, g))) * rng.gamma(3, 1 / 3, (n, g))
    Y[rng.uniform(size=Y.shape) < 0.7] = 0.0
    basis, x_test = SplineBasis(x.min(), x.max()), np.linspace(x.min(), x.max(), 200)
    fits = [
        fit_splines(x, Yin, w, basis=basis, family=Family(), penalty=penalty_matrix(6)) for Yin in (sp.csc_matrix(Y), Y)
    ]
    B = basis(x)
    for j in range(g):
        ref = _pygam_model("gamma", "log")
        ref.callbacks = [pg.callbacks.Diffs()]
        ref.fit(x[:, None], Y[:, j], weights=w)
        # the first iterate from pygam's start (its component along the null direction of B is arbitrary)
        first = _pygam_model("gamma", "log")
        first.max_iter = 1
        first.fit(x[:, None], Y[:, j], weights=w)
        one = fit_splines(x, Y[:, j : j + 1], w, basis=basis, family=Family(), penalty=penalty_matrix(6), max_iter=1)
        assert _close(B @ one.coef[:, 0], B @ first.coef_) < 1e-10
        for fit in fits:
            assert fit.n_iter[j] == len(ref.logs_["diffs"])
            assert _close(fit.predict(x_test)[:, j], ref.predict(x_test[:, None])) < 1e-10
            assert _close(fit.confidence_intervals(x_test)[:, j], ref.confidence_intervals(x_test[:, None])) < 1e-10


def test_single_gam_matches_batched_and_pygam():
    adata = _adata()
    gam = GAM(adata).prepare("g3", "Beta", "latent_time", data_key="Ms")
    gam.fit()
    y = gam.predict()
    ci = gam.confidence_interval()
    assert y.shape == (200,) and ci.shape == (200, 2) and gam.x_test.shape == (200, 1)
    assert np.all(ci[:, 0] <= y) and np.all(y <= ci[:, 1])
    batched = fit_trends(adata, GAM(adata), ["g3"], ["Beta"], "latent_time", data_key="Ms", show_progress_bar=False)
    np.testing.assert_allclose(batched["Beta"].mean["g3"].to_numpy(), y, rtol=1e-12)
    if pytest.importorskip("pygam"):
        ref = _pygam_model("gamma", "log").fit(gam.x, gam.y.ravel(), weights=gam.w)
        assert _close(y, ref.predict(gam.x_test)) < 1e-6
        assert _close(ci, ref.confidence_intervals(gam.x_test)) < 1e-6


def test_lineage_design_follows_cellranks_prepare():
    adata = _adata()
    d = lineage_design(adata, "Alpha", "latent_time")
    t = adata.obs["latent_time"].to_numpy()
    w_raw = adata.obsm["lineages_fwd"][:, 0]
    # repeated times keep their first cell; cells are sorted by time
    assert np.all(np.diff(d.x) > 0)
    np.testing.assert_array_equal(t[d.cells], d.x)
    assert not np.isin(np.arange(20, 40), d.cells).any()
    # weights below 0.01 become 0.01, others are the fate probabilities
    np.testing.assert_allclose(d.w, np.where(w_raw[d.cells] < 0.01, 0.01, w_raw[d.cells]))
    # the end of the range: where the running mean of the above-median weights peaks
    x, first = np.unique(t, return_index=True)
    w = np.where(w_raw[first] < 0.01, 0.01, w_raw[first])
    above = w >= np.median(w)
    running = np.convolve(np.pad(w[above], (4, 5), mode="edge"), np.ones(10) / 10, mode="valid")
    assert d.x_test[-1] == x[above][np.argmax(running)]
    assert d.x_test[0] == x.min() and d.x_test.size == 200 and d.x.max() <= d.x_test[-1]
    # an explicit range, and all-ones weights for lineage=None
    d2 = lineage_design(adata, None, "latent_time", time_range=(0.2, 0.6), n_test_points=50)
    assert d2.x.min() >= 0.2 and d2.x.max() <= 0.6 and d2.x_test.size == 50 and np.all(d2.w == 1)
    with pytest.raises(KeyError, match="nope"):
        lineage_design(adata, "Alpha", "nope")


class _WeightedLine:
    """A weighted least-squares straight line (a stand-in for a scikit-learn regressor)."""

    def fit(self, X, y, sample_weight=None):
        w = np.ones(len(y)) if sample_weight is None else sample_weight
        A = np.c_[np.ones(len(y)), X[:, 0]] * np.sqrt(w)[:, None]
        self.coef_ = np.linalg.lstsq(A, y * np.sqrt(w), rcond=None)[0]
        return self

    def predict(self, X):
        return self.coef_[0] + self.coef_[1] * X[:, 0]


class _Unweighted:
    def fit(self, X, y):
        return self

    def predict(self, X):
        return np.zeros(len(X))


def test_sklearn_model_uses_weights_and_default_interval():
    adata = _adata()
    m = SKLearnModel(adata, _WeightedLine()).prepare("g1", "Gamma", "latent_time").fit()
    y = m.predict()
    A = np.c_[np.ones(m.x.shape[0]), m.x[:, 0]] * np.sqrt(m.w)[:, None]
    coef = np.linalg.lstsq(A, m.y[:, 0] * np.sqrt(m.w), rcond=None)[0]
    np.testing.assert_allclose(y, coef[0] + coef[1] * m.x_test[:, 0])
    ci = m.confidence_interval()
    assert ci.shape == (200, 2) and np.all(ci[:, 1] > ci[:, 0])
    with pytest.raises(ValueError, match="no sample weights"):
        SKLearnModel(adata, _Unweighted())
    SKLearnModel(adata, _Unweighted(), ignore_raise=True)
    trends = fit_trends(adata, m, ["g1", "g2"], ["Gamma"], "latent_time", show_progress_bar=False)
    np.testing.assert_allclose(trends["Gamma"].mean["g1"].to_numpy(), y)
    assert set(trends["Gamma"].models) == {"g1", "g2"}


def test_bad_arguments_are_named():
    adata = _adata()
    with pytest.raises(NotImplementedError, match="binomial"):
        GAM(adata, distribution="binomial", link="logit")
    with pytest.raises(NotImplementedError, match="expectile"):
        GAM(adata, expectile=0.5)
    with pytest.raises(TypeError, match="bogus"):
        GAM(adata, bogus=1)
    with pytest.raises(RuntimeError, match="prepare"):
        GAM(adata).fit()
    with pytest.raises(KeyError, match="nogene"):
        GAM(adata).prepare("nogene", "Alpha", "latent_time")
    with pytest.raises(ValueError, match="cells"):
        fit_splines(
            np.arange(5.0),
            np.ones((4, 2)),
            np.ones(5),
            basis=SplineBasis(0, 4),
            family=Family(),
            penalty=penalty_matrix(6),
        )


def test_filter_cells_fits_per_gene():
    adata = _adata()
    tr = fit_trends(
        adata, GAM(adata), ["g0", "g4"], ["Alpha"], "latent_time", filter_cells=0.0, show_progress_bar=False
    )["Alpha"]
    one = GAM(adata).prepare("g4", "Alpha", "latent_time", filter_cells=0.0).fit()
    assert np.all(one.y > 0)
    np.testing.assert_allclose(tr.mean["g4"].to_numpy(), one.predict(), rtol=1e-12)
    assert isinstance(tr.mean, pd.DataFrame)


def test_sparse_and_dense_expression_give_the_same_fit():
    adata = _adata(n_cells=600, n_genes=10)
    d = lineage_design(adata, "Beta", "latent_time")
    Ys = adata.X[d.cells]
    gam = GAM(adata)
    fs, fd = gam.fit_many(d.x, Ys, d.w), gam.fit_many(d.x, Ys.toarray(), d.w)
    np.testing.assert_array_equal(fs.n_iter, fd.n_iter)
    np.testing.assert_allclose(fs.coef, fd.coef, rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(fs.scale, fd.scale, rtol=1e-9)
    np.testing.assert_allclose(fs.confidence_intervals(d.x_test), fd.confidence_intervals(d.x_test), rtol=1e-9)
