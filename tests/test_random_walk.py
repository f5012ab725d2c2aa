"""Random walks: reproducibility, start/stop semantics (CellRank's), selectors, and the plot."""

import itertools

import numpy as np
import pytest
import scipy.sparse as sp

from cellfate_gpu.kernels import PrecomputedKernel, PseudotimeKernel
from cellfate_gpu.kernels._random_walk import resolve_cells


@pytest.fixture(scope="module")
def pk(atlas):
    return PseudotimeKernel(atlas, time_key="pseudotime").compute_transition_matrix()


def test_reproducible_under_seed_and_follow_edges(pk, atlas):
    a = pk.simulate_random_walks(n_sims=25, seed=3, start_ixs={"clusters": ["Root"]})
    b = pk.simulate_random_walks(n_sims=25, seed=3, start_ixs={"clusters": ["Root"]})
    c = pk.simulate_random_walks(n_sims=25, seed=4, start_ixs={"clusters": ["Root"]})
    assert len(a) == 25 and all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert any(not np.array_equal(x, y) for x, y in zip(a, c, strict=True))
    roots = set(np.flatnonzero(atlas.obs["clusters"] == "Root"))
    T = pk.transition_matrix
    max_iter = int(np.ceil(0.25 * atlas.n_obs))
    for w in a:
        assert w[0] in roots and len(w) == max_iter + 1  # no stop cells: full length
        assert all(T[i, j] > 0 for i, j in itertools.pairwise(w))


def test_stop_cells_end_walks(pk, atlas):
    terminal = atlas.obs["is_terminal"].to_numpy()
    walks = pk.simulate_random_walks(
        n_sims=30, seed=0, start_ixs={"clusters": ["Root"]}, stop_ixs=terminal, max_iter=1.0
    )
    for w in walks:
        assert terminal[w[-1]] and not terminal[w[1:-1]].any()
    walks3 = pk.simulate_random_walks(
        n_sims=30, seed=0, start_ixs={"clusters": ["Root"]}, stop_ixs=terminal, max_iter=1.0, successive_hits=2
    )
    for w in walks3:
        assert terminal[w[-3:]].all()  # three steps in a row inside the stop set
        inside = np.r_[False, terminal[w[1:]]]
        runs = [len(list(g)) for k, g in itertools.groupby(inside) if k]
        assert max(runs[:-1], default=0) < 3 and runs[-1] >= 3


def test_start_in_stop_set_does_not_count():
    # 0 -> 1 -> 2 -> 2 ...; stop at {0, 2}: the start cell 0 is not a hit, the walk ends on 2.
    T = sp.csr_matrix(np.array([[0, 1.0, 0], [0, 0, 1.0], [0, 0, 1.0]]))
    k = PrecomputedKernel(T)
    (w,) = k.simulate_random_walks(n_sims=1, max_iter=10, start_ixs=[0], stop_ixs=[0, 2], seed=0)
    np.testing.assert_array_equal(w, [0, 1, 2])
    (w,) = k.simulate_random_walks(n_sims=1, max_iter=10, start_ixs=[0], stop_ixs=[2], successive_hits=3, seed=0)
    np.testing.assert_array_equal(w, [0, 1, 2, 2, 2, 2])


def test_transition_frequencies_match_T():
    T = sp.csr_matrix(np.array([[0.1, 0.6, 0.3], [0.5, 0.0, 0.5], [0.2, 0.2, 0.6]]))
    k = PrecomputedKernel(T)
    walks = k.simulate_random_walks(n_sims=200, max_iter=200, seed=1)
    counts = np.zeros((3, 3))
    for w in walks:
        np.add.at(counts, (w[:-1], w[1:]), 1)
    freq = counts / counts.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(freq, T.toarray(), atol=0.01)
    assert counts[1, 1] == 0  # a zero-probability move never happens


def test_selectors(atlas):
    n = atlas.n_obs
    roots = np.flatnonzero(atlas.obs["clusters"] == "Root")
    np.testing.assert_array_equal(resolve_cells(atlas, {"clusters": "Root"}, what="x"), roots)
    np.testing.assert_array_equal(resolve_cells(atlas, atlas.obs_names[roots].tolist(), what="x"), roots)
    np.testing.assert_array_equal(resolve_cells(atlas, atlas.obs["clusters"].eq("Root").to_numpy(), what="x"), roots)
    np.testing.assert_array_equal(resolve_cells(atlas, [3, -1, 3], what="x"), [3, n - 1])
    t = atlas.obs["pseudotime"].to_numpy()
    np.testing.assert_array_equal(
        resolve_cells(atlas, {"pseudotime": [0.1, 0.0]}, what="x"), np.flatnonzero((t >= 0) & (t <= 0.1))
    )
    np.testing.assert_array_equal(resolve_cells(atlas, None, what="x"), np.arange(n))
    with pytest.raises(ValueError, match="not found"):
        resolve_cells(atlas, {"clusters": ["Nope"]}, what="start_ixs")
    with pytest.raises(KeyError, match="nope"):
        resolve_cells(atlas, {"nope": ["a"]}, what="start_ixs")
    with pytest.raises(ValueError, match="boolean mask"):
        resolve_cells(atlas, np.ones(3, bool), what="start_ixs")
    with pytest.raises(IndexError):
        resolve_cells(atlas, [n], what="start_ixs")
    with pytest.raises(ValueError, match="selects no cells"):
        resolve_cells(atlas, np.zeros(n, bool), what="start_ixs")


def test_bad_parameters(pk):
    with pytest.raises(ValueError, match="n_sims"):
        pk.simulate_random_walks(n_sims=0)
    with pytest.raises(ValueError, match="max_iter"):
        pk.simulate_random_walks(max_iter=0)
    with pytest.raises(ValueError, match="successive_hits"):
        pk.simulate_random_walks(successive_hits=-1)


def test_plot_random_walks(pk, tmp_path):
    import matplotlib.pyplot as plt

    fig = pk.plot_random_walks(
        n_sims=5, seed=0, start_ixs={"clusters": ["Root"]}, ixs_legend_loc="best", save=tmp_path / "rw.png"
    )
    assert (tmp_path / "rw.png").stat().st_size > 0
    ax = fig.axes[0]
    assert len(ax.collections) == 1 + 5 + 2  # cells, one line collection per walk, start and end markers
    start, end = ax.collections[-2:]
    np.testing.assert_allclose(start.get_facecolor()[0][:3], [0, 0, 0])  # gnuplot(0): black
    np.testing.assert_allclose(end.get_facecolor()[0][:3], plt.get_cmap("gnuplot")(1.0)[:3])  # yellow
    with pytest.raises(KeyError, match="X_tsne"):
        pk.plot_random_walks(n_sims=2, basis="tsne")
    plt.close("all")
