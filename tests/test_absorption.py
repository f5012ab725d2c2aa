"""Fate probabilities and absorption times: analytic absorbing chains, dense references, error paths."""

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from conftest import random_stochastic

from cellfate_gpu.backends import get_backend
from cellfate_gpu.estimators._absorption import (
    absorption_times,
    fate_probabilities,
    lineage_priming,
    terminal_indicator,
)
from cellfate_gpu.lineage import Lineage


def _walk(n: int, p: float, *, stay: float = 0.0) -> sp.csr_matrix:
    """Birth-death chain on 0..n-1 with absorbing ends: right w.p. p(1-stay), left (1-p)(1-stay), stay."""
    T = np.zeros((n, n))
    T[0, 0] = T[-1, -1] = 1.0
    for i in range(1, n - 1):
        T[i, i + 1], T[i, i - 1], T[i, i] = p * (1 - stay), (1 - p) * (1 - stay), stay
    return sp.csr_matrix(T)


def _terminal(n: int, groups: dict) -> pd.Series:
    labels = np.full(n, None, dtype=object)
    for name, idx in groups.items():
        labels[np.asarray(idx)] = name
    return pd.Series(pd.Categorical(labels, categories=list(groups)), index=[f"c{i}" for i in range(n)])


def _methods(backend):
    # sparse LU exists on the scipy backend only; GMRES is generic
    return ["direct", "gmres"] if backend == "scipy" else ["gmres"]


def _dense_fate(T, groups):
    absorbing = np.concatenate([np.asarray(g) for g in groups.values()])
    trans = np.setdiff1d(np.arange(T.shape[0]), absorbing)
    Td = T.toarray()
    RS = np.stack([Td[np.ix_(trans, np.asarray(g))].sum(axis=1) for g in groups.values()], axis=1)
    return trans, np.linalg.solve(np.eye(trans.size) - Td[np.ix_(trans, trans)], RS)


def test_gamblers_ruin_matches_closed_form(backend):
    n, p = 12, 0.4
    T = _walk(n, p)
    term = _terminal(n, {"ruin": [0], "win": [n - 1]})
    r, N = (1 - p) / p, n - 1
    win = np.array([(1 - r**i) / (1 - r**N) for i in range(n)])  # textbook ruin probability
    for method in _methods(backend):
        lin, res = fate_probabilities(backend, T, term, method=method, tol=1e-12)
        assert res.converged
        assert isinstance(lin, Lineage) and lin.names == ["ruin", "win"]
        np.testing.assert_allclose(lin["win"].X.ravel(), win, atol=1e-9)
        np.testing.assert_allclose(lin["ruin"].X.ravel(), 1 - win, atol=1e-9)


def test_symmetric_walk_absorption_time_mean_and_variance(backend):
    # Fair walk on 0..N: E[tau_i] = i (N - i); Var[tau_i] = i (N - i) ((N - i)^2 + i^2 - 2) / 3
    # (Kemeny & Snell; Feller I, XIV.3). With a lazy step (stay w.p. s) the number of moves is the
    # same and every move costs a Geometric(1 - s) number of steps.
    n = 11
    N = n - 1
    i = np.arange(1, N)
    m_ref = i * (N - i)
    v_ref = i * (N - i) * ((N - i) ** 2 + i**2 - 2) / 3
    both = _terminal(n, {"ends": [0, N]})
    for method in _methods(backend):
        df = absorption_times(backend, _walk(n, 0.5), both, calculate_variance=True, method=method, tol=1e-12)
        assert list(df.columns) == ["ends_mean", "ends_var"]
        assert list(df.index) == list(both.index)
        np.testing.assert_allclose(df["ends_mean"].to_numpy()[1:-1], m_ref, rtol=1e-9)
        np.testing.assert_allclose(df["ends_var"].to_numpy()[1:-1], v_ref, rtol=1e-8)
        assert df["ends_mean"].iloc[0] == 0 and df["ends_var"].iloc[-1] == 0


@pytest.mark.parametrize("p,stay", [(0.3, 0.0), (0.55, 0.25)])
def test_absorption_times_equal_dense_fundamental_matrix(backend, p, stay):
    n = 15
    T = _walk(n, p, stay=stay)
    Q = T.toarray()[1:-1, 1:-1]
    Nf = np.linalg.inv(np.eye(n - 2) - Q)
    m = Nf @ np.ones(n - 2)
    v = (2 * Nf - np.eye(n - 2)) @ m - m * m
    merged = _terminal(n, {"left": [0], "right": [n - 1]})
    for method in _methods(backend):
        # "left, right" merges both ends into one lineage: the unconditional time
        df = absorption_times(backend, T, merged, ["left, right"], calculate_variance=True, method=method, tol=1e-12)
        np.testing.assert_allclose(df["left, right_mean"].to_numpy()[1:-1], m, rtol=1e-9)
        np.testing.assert_allclose(df["left, right_var"].to_numpy()[1:-1], v, rtol=1e-8)
        # per lineage: conditioned on the end, D^{-1} N D (Kemeny & Snell, conditioned chain)
        cond = absorption_times(backend, T, merged, calculate_variance=True, method=method, tol=1e-12)
        B = Nf @ T.toarray()[1:-1][:, [0, n - 1]]
        U = Nf @ B
        W = Nf @ (2 * U - B)
        np.testing.assert_allclose(cond["left_mean"].to_numpy()[1:-1], U[:, 0] / B[:, 0], rtol=1e-8)
        np.testing.assert_allclose(
            cond["right_var"].to_numpy()[1:-1], W[:, 1] / B[:, 1] - (U[:, 1] / B[:, 1]) ** 2, rtol=1e-7
        )
        # the law of total expectation ties the conditional means to the unconditional one
        np.testing.assert_allclose((B * cond[["left_mean", "right_mean"]].to_numpy()[1:-1]).sum(axis=1), m, rtol=1e-8)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fate_probabilities_equal_dense_solve(backend, seed):
    n = 300
    T = random_stochastic(n, 0.03, seed)
    rng = np.random.default_rng(seed)
    cells = rng.permutation(n)
    sets = [
        {"A": cells[:4], "B": cells[4:9], "C": cells[9:12]},
        {"A": cells[:1], "B": cells[1:2]},
        {"X": cells[:30], "Y": cells[30:31], "Z": cells[31:40], "W": cells[40:45]},
    ]
    for groups in sets:
        trans, ref = _dense_fate(T, groups)
        for method in _methods(backend):
            lin, _ = fate_probabilities(backend, T, _terminal(n, groups), method=method, tol=1e-12)
            np.testing.assert_allclose(lin.X[trans], ref, atol=1e-8)
            assert np.all((lin.X >= 0) & (lin.X <= 1))
            np.testing.assert_allclose(lin.X.sum(axis=1), 1.0, atol=1e-12)
            for j, g in enumerate(groups.values()):  # terminal cells are one-hot
                np.testing.assert_array_equal(lin.X[g, j], 1.0)


def test_merged_keys_sum_and_subset_keys_change_the_chain():
    n = 200
    T = random_stochastic(n, 0.04, 7)
    groups = {"A": [0, 1], "B": [2], "C": [3, 4]}
    term = _terminal(n, groups)
    full, _ = fate_probabilities("scipy", T, term, method="direct")
    merged, _ = fate_probabilities("scipy", T, term, keys=["A, B", "C"], method="direct")
    assert merged.names == ["A, B", "C"]
    np.testing.assert_allclose(merged.X[:, 0], full.X[:, 0] + full.X[:, 1], atol=1e-12)
    # keys naming only A and C: B's cells become transient
    sub, _ = fate_probabilities("scipy", T, term, keys=["A", "C"], method="direct")
    trans, ref = _dense_fate(T, {"A": [0, 1], "C": [3, 4]})
    np.testing.assert_allclose(sub.X[trans], ref, atol=1e-10)


def test_error_paths(backend):
    T = sp.csr_matrix(np.array([[0.5, 0.5, 0, 0], [0.5, 0.5, 0, 0], [0, 0, 1.0, 0], [0, 0, 0, 1.0]]))
    with pytest.raises(ValueError, match=r"\['B'\] cannot be reached"):
        fate_probabilities(backend, T, _terminal(4, {"A": [1], "B": [3]}))
    with pytest.raises(ValueError, match="No terminal states"):
        fate_probabilities(backend, T, _terminal(4, {}))
    with pytest.raises(KeyError, match="Unknown terminal state"):
        fate_probabilities(backend, T, _terminal(4, {"A": [1]}), keys=["Z"])
    with pytest.raises(ValueError, match="appears in two keys"):
        fate_probabilities(backend, T, _terminal(4, {"A": [1], "B": [3]}), keys=["A, B", "A"])
    with pytest.raises(ValueError, match="5 entries but T has 4"):
        fate_probabilities(backend, T, _terminal(5, {"A": [1]}))
    with pytest.raises(TypeError, match="categorical"):
        fate_probabilities(backend, T, pd.Series(["A", None, None, None]))


def test_reducible_chain_is_reported(backend):
    # cells 2 <-> 3 form a closed class that never reaches the terminal cell 1 -> singular I - Q
    T = np.zeros((6, 6))
    T[0, [0, 1, 2]] = [0.4, 0.3, 0.3]
    T[1, 1] = 1.0
    T[2, [2, 3]] = [0.5, 0.5]
    T[3, [2, 3]] = [0.5, 0.5]
    T[4, [0, 5]] = [0.5, 0.5]
    T[5, [4, 1]] = [0.5, 0.5]
    term = _terminal(6, {"A": [1]})
    for method in _methods(backend):
        with pytest.raises(ValueError, match=r"2 transient cell\(s\) reach no terminal state.*'c2', 'c3'"):
            fate_probabilities(backend, sp.csr_matrix(T), term, method=method)


def test_non_convergence_says_what_to_try():
    T = random_stochastic(300, 0.03, 3)
    term = _terminal(300, {"A": [0], "B": [1]})
    with pytest.raises(RuntimeError, match="preconditioner='ilu'"):
        fate_probabilities("scipy", T, term, method="gmres", tol=1e-14, maxiter=1)


def test_terminal_indicator_groups():
    term = _terminal(6, {"A": [0, 5], "B": [2]})
    absorbing, names, groups = terminal_indicator(term, ["B, A"])
    assert names == ["B, A"]
    np.testing.assert_array_equal(absorbing, [0, 2, 5])
    np.testing.assert_array_equal(np.sort(groups[0]), [0, 2, 5])


def test_lineage_priming_orders_committed_above_naive():
    probs = Lineage(np.array([[1.0, 0.0, 0.0], [0.6, 0.2, 0.2], [1 / 3, 1 / 3, 1 / 3], [0.0, 0.5, 0.5]]), list("ABC"))
    for method in ("kl_divergence", "entropy"):
        d = lineage_priming(probs, method)
        assert d.min() == 0 and d.max() == 1
        assert d[0] == 1 and d[0] > d[3]
    # entropy: the uniform cell is the least primed, the committed one the most
    d = lineage_priming(probs, "entropy")
    assert d[2] == 0 and d[0] > d[1] > d[2]
    # KL to the population mean (0.48, 0.26, 0.26): cell 1 sits closest to it, so it is the least primed
    d = lineage_priming(probs, "kl_divergence")
    assert d[1] == 0 and d[0] > d[3] > d[2] > d[1]
    # KL against the early cells' mean, by hand (log2, then min-max scaled)
    early = np.array([False, False, True, True])
    ref = probs.X[early].mean(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        kl = np.nansum(np.where(probs.X > 0, probs.X * np.log2(probs.X / ref), 0.0), axis=1)
    np.testing.assert_allclose(lineage_priming(probs, "kl_divergence", early), (kl - kl.min()) / np.ptp(kl))
    with pytest.raises(ValueError, match="method must be"):
        lineage_priming(probs, "nope")


def test_backend_instance_and_native_matrix_are_accepted():
    be = get_backend("scipy")
    T = _walk(8, 0.5)
    lin, _ = fate_probabilities(be, be.from_scipy_csr(T), _terminal(8, {"L": [0], "R": [7]}), method="direct")
    np.testing.assert_allclose(lin["R"].X.ravel(), np.arange(8) / 7, atol=1e-12)
