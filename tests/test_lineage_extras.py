"""Lineage.reduce (CellRank's scale and dist modes, every distance measure) and Lineage.plot_pie."""

import matplotlib
import numpy as np
import pandas as pd
import pytest
import scipy.stats as st
from scipy.spatial.distance import jensenshannon

from cellfate_gpu.lineage import Lineage

matplotlib.use("Agg")

NAMES = ["A", "B", "C", "D"]


@pytest.fixture
def lin():
    rng = np.random.default_rng(0)
    X = rng.random((30, 4)) + 0.01
    X /= X.sum(axis=1, keepdims=True)
    return Lineage(X, names=NAMES, colors=["red", "green", "blue", "orange"])


def test_scale_mode_renormalises_over_the_kept_lineages(lin):
    out = lin.reduce("A", "C", mode="scale")
    X = lin.X
    ref = X[:, [0, 2]] / X[:, [0, 2]].sum(axis=1, keepdims=True)
    np.testing.assert_allclose(out.X, ref, atol=1e-15)
    assert out.names == ["A", "C"] and out.colors == [lin.colors[0], lin.colors[2]]
    np.testing.assert_allclose(out.X.sum(axis=1), 1.0)
    out, w = lin.reduce("A", "C", mode="scale", return_weights=True)
    assert w is None
    # a merged key: "A, B" is one reference column, C keeps its own; D is the only query
    out = lin.reduce("A, B", "C", mode="scale")
    R = np.c_[X[:, 0] + X[:, 1], X[:, 2]]
    np.testing.assert_allclose(out.X, R / R.sum(axis=1, keepdims=True), atol=1e-15)
    assert out.names == ["A, B", "C"]


def test_dist_mode_equal_and_cosine_weights(lin):
    X = lin.X
    R, Q = X[:, [0, 1]], X[:, [2, 3]]
    out, w = lin.reduce("A", "B", mode="dist", dist_measure="equal", normalize_weights="scale", return_weights=True)
    np.testing.assert_allclose(w.to_numpy(), 0.5)
    np.testing.assert_allclose(out.X, R + Q.sum(axis=1, keepdims=True) / 2, atol=1e-15)
    assert list(w.index) == ["C", "D"] and list(w.columns) == ["A", "B"]

    cos = np.array([[q @ r / (np.linalg.norm(q) * np.linalg.norm(r)) for r in R.T] for q in Q.T])
    out, w = lin.reduce("A", "B", dist_measure="cosine_sim", normalize_weights="scale", return_weights=True)
    wn = cos / cos.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(w.to_numpy(), wn, atol=1e-14)
    np.testing.assert_allclose(out.X, R + Q @ wn, atol=1e-14)
    # softmax normalisation of the scaled weights, with a temperature
    out, w = lin.reduce("A", "B", dist_measure="cosine_sim", softmax_scale=5.0, return_weights=True)
    e = np.exp(5.0 * wn)
    sm = e / e.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(w.to_numpy(), sm, atol=1e-14)
    np.testing.assert_allclose(out.X, R + Q @ sm, atol=1e-14)
    np.testing.assert_allclose(out.X.sum(axis=1), 1.0)


@pytest.mark.parametrize(
    ("measure", "dist"),
    [("wasserstein_dist", st.wasserstein_distance), ("kl_div", st.entropy), ("js_div", jensenshannon)],
)
def test_pointwise_distance_weights(lin, measure, dist):
    X = lin.X.copy()
    X[0, 3] = 0.0  # one row with a zero: dropped before the distances
    X[0] /= X[0].sum()
    lin = Lineage(X, names=NAMES)
    keep = np.arange(1, X.shape[0])
    R, Q = X[keep][:, [0, 2]], X[keep][:, [1, 3]]
    R, Q = R / R.sum(axis=0), Q / Q.sum(axis=0)
    W = np.array([[1.0 / dist(q, r) for r in R.T] for q in Q.T])
    out, w = lin.reduce("A", "C", dist_measure=measure, normalize_weights="scale", return_weights=True)
    wn = W / W.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(w.to_numpy(), wn, rtol=1e-12)
    np.testing.assert_allclose(out.X, X[:, [0, 2]] + X[:, [1, 3]] @ wn, atol=1e-14)


def test_mutual_info_default_and_edge_cases(lin):
    pytest.importorskip("sklearn")
    out, w = lin.reduce("A", "B", return_weights=True)  # CellRank's defaults: dist, mutual_info, softmax
    np.testing.assert_allclose(w.to_numpy().sum(axis=1), 1.0)
    assert (w.to_numpy() > 0).all()
    np.testing.assert_allclose(out.X.sum(axis=1), 1.0)
    again = lin.reduce("A", "B")
    np.testing.assert_allclose(again.X, out.X)  # seeded: reproducible
    # one key: a column of ones
    one = lin.reduce("C")
    np.testing.assert_array_equal(one.X, np.ones((lin.shape[0], 1)))
    assert one.names == ["C"]
    # every lineage kept: the selection itself
    all_ = lin.reduce("A", "B", "C, D", mode="scale")
    np.testing.assert_allclose(all_.X, np.c_[lin.X[:, :2], lin.X[:, 2] + lin.X[:, 3]])


def test_reduce_validation(lin):
    with pytest.raises(ValueError, match="no keys"):
        lin.reduce()
    with pytest.raises(ValueError, match="mode"):
        lin.reduce("A", "B", mode="project")
    with pytest.raises(ValueError, match="dist_measure"):
        lin.reduce("A", "B", dist_measure="euclid")
    with pytest.raises(KeyError, match="Z"):
        lin.reduce("A", "Z")
    bad = Lineage(lin.X * 2, names=NAMES)
    with pytest.raises(ValueError, match="sum to one"):
        bad.reduce("A", "B")
    X = lin.X.copy()
    X[0] = [0, 0, 0.5, 0.5]
    with pytest.raises(ValueError, match="no mass"):
        Lineage(X, names=NAMES).reduce("A", "B", mode="scale")


def test_plot_pie_wedges_are_the_reduction(lin, tmp_path):
    import matplotlib.pyplot as plt

    lin.plot_pie(np.mean, save=tmp_path / "pie.png")
    assert (tmp_path / "pie.png").is_file()
    ax = plt.gcf().axes[0]
    wedges = [p for p in ax.patches if isinstance(p, matplotlib.patches.Wedge)]
    spans = np.array([(w.theta2 - w.theta1) / 360.0 for w in wedges])
    a = lin.X.mean(axis=0)
    np.testing.assert_allclose(spans, a / a.sum(), atol=1e-6)
    assert [matplotlib.colors.to_hex(w.get_facecolor()) for w in wedges] == lin.colors
    texts = [t.get_text() for t in ax.texts]
    assert all(n in texts for n in NAMES)  # "on data": names next to the wedges
    assert all(f"{v:.4f}" in texts for v in a)  # values (not percentages) on the wedges
    assert ax.get_title() == "mean"
    plt.close("all")

    lin.plot_pie(np.max, title="max", legend_loc="upper right", legend_kwargs={"fontsize": 6}, autopct="%1.0f%%")
    ax = plt.gcf().axes[0]
    legend = ax.get_legend()
    assert [t.get_text() for t in legend.get_texts()] == NAMES and legend.get_title().get_text() == "lineages"
    wedges = [p for p in ax.patches if isinstance(p, matplotlib.patches.Wedge)]
    m = lin.X.max(axis=0)
    np.testing.assert_allclose([(w.theta2 - w.theta1) / 360 for w in wedges], m / m.sum(), atol=1e-6)
    assert any(t.get_text().endswith("%") for t in ax.texts) and ax.get_title() == "max"
    plt.close("all")
    with pytest.raises(ValueError, match="only 1 lineage"):
        lin[:, ["A"]].plot_pie()
    with pytest.raises(ValueError, match="one per lineage"):
        lin.plot_pie(lambda X, axis: X.mean())
    plt.close("all")


def test_plot_pie_default_reduction_is_the_mean(lin):
    import matplotlib.pyplot as plt

    lin.plot_pie()
    ax = plt.gcf().axes[0]
    a = pd.Series(lin.X.mean(axis=0))
    spans = [(w.theta2 - w.theta1) / 360 for w in ax.patches if isinstance(w, matplotlib.patches.Wedge)]
    np.testing.assert_allclose(spans, a / a.sum(), atol=1e-6)
    plt.close("all")
