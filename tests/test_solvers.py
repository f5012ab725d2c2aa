"""Solvers as values on every backend, and absorbing-chain properties.

* Every solver value a backend offers equals ``numpy.linalg.solve`` on ``I - Q`` of a random
  absorbing chain; every value it does not offer raises :class:`SolverUnavailableError` with the
  backend's reason (never a silent run elsewhere).
* :meth:`Auto.choose` decides by matrix and backend, and the choice is logged.
* Hypothesis over random absorbing chains on every backend: fate probabilities in ``[0, 1]``, rows
  summing to one, ``F = T F`` on the transient cells, ``(I - Q) m = 1`` for the mean absorption
  times; and kernel sums renormalise their weights.
* Fault injection through the estimator: a NaN that appears mid-iteration and a solve that stops
  early surface as errors that say what to try, and leave the estimator and the AnnData untouched.
"""

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cellfate_gpu import settings as cf_settings
from cellfate_gpu.backends import Status, get_backend
from cellfate_gpu.estimators import GPCCA
from cellfate_gpu.estimators._absorption import absorption_times, fate_probabilities
from cellfate_gpu.kernels import PrecomputedKernel
from cellfate_gpu.linalg import SolveError, solve
from cellfate_gpu.linalg.solvers import (
    AMG,
    GMRES,
    ILU,
    KSP,
    Auto,
    Direct,
    Jacobi,
    Krylov,
    SolverUnavailableError,
)


def absorbing_chain(n_transient, group_sizes, seed, *, density=0.3, leak=0.2):
    """Random row-stochastic chain: absorbing groups of ``group_sizes`` states, then transient states.

    Every transient state steps into a random absorbing state with weight ``leak`` (so every one of
    them reaches a terminal state), and to random other states otherwise; every group receives such
    a step from some transient state (so no terminal state is unreachable). Absorbing states only
    move within their own group (each group is one closed class). States are not permuted:
    the terminal states come first.

    Returns ``T`` (CSR) and the terminal-state series (categories ``"A"``, ``"B"``, ...).
    """
    rng = np.random.default_rng(seed)
    n_abs = int(sum(group_sizes))
    n = n_abs + n_transient
    T = np.zeros((n, n))
    start = 0
    for s in group_sizes:
        g = slice(start, start + s)
        T[g, g] = rng.uniform(0.1, 1.0, (s, s))
        start += s
    tr = slice(n_abs, n)
    T[tr] = rng.uniform(0.0, 1.0, (n_transient, n)) * (rng.random((n_transient, n)) < density)
    T[np.arange(n_abs, n), rng.integers(0, n_abs, n_transient)] += leak
    starts = np.cumsum([0, *group_sizes[:-1]])
    T[n_abs + np.arange(len(group_sizes)) % n_transient, starts] += leak  # every group can be reached
    T /= T.sum(axis=1, keepdims=True)
    labels = np.full(n, None, dtype=object)
    start = 0
    names = [chr(ord("A") + i) for i in range(len(group_sizes))]
    for name, s in zip(names, group_sizes, strict=True):
        labels[start : start + s] = name
        start += s
    terminal = pd.Series(pd.Categorical(labels, categories=names), index=[f"c{i}" for i in range(n)])
    return sp.csr_matrix(T), terminal


def _system(seed=0, n_transient=60):
    """``I - Q`` of an absorbing chain and a block right-hand side ``R S`` (one column per lineage)."""
    T, terminal = absorbing_chain(n_transient, [3, 4, 2], seed)
    n_abs = int(terminal.notna().sum())
    Q = T[n_abs:, n_abs:]
    A = sp.csr_matrix(sp.identity(Q.shape[0]) - Q)
    groups = [np.flatnonzero(terminal.to_numpy() == name) for name in terminal.cat.categories]
    RS = np.stack([np.asarray(T[n_abs:][:, g].sum(axis=1)).ravel() for g in groups], axis=1)
    return A, RS


#: Solver values, and the backends on which each one runs (the others must refuse it by name).
_VALUES = {
    "Direct()": (Direct(), {"scipy", "petsc"}),
    "GMRES()": (GMRES(), {"scipy", "cupy", "jax", "petsc"}),
    "GMRES(Jacobi)": (GMRES(preconditioner=Jacobi()), {"scipy", "cupy", "jax", "petsc"}),
    "GMRES(restart=5,Jacobi)": (GMRES(restart=5, preconditioner=Jacobi()), {"scipy", "cupy", "jax", "petsc"}),
    "GMRES(ILU)": (GMRES(preconditioner=ILU()), {"scipy", "petsc"}),
    "GMRES(AMG-sa)": (GMRES(preconditioner=AMG()), {"scipy", "petsc"}),  # petsc: PCGAMG
    "GMRES(AMG-rs)": (GMRES(preconditioner=AMG(kind="rs")), {"scipy", "petsc"}),
    "Krylov(lgmres)": (Krylov("lgmres"), {"scipy", "petsc"}),
    "Krylov(bicgstab)": (Krylov("bicgstab"), {"scipy", "petsc"}),
    "Krylov(gcrotmk,ILU)": (Krylov("gcrotmk", preconditioner=ILU()), {"scipy", "petsc"}),
    "KSP(gmres)": (KSP(), {"petsc"}),
    "KSP(bcgs,jacobi)": (KSP(ksp_type="bcgs", pc_type="jacobi"), {"petsc"}),
    "KSP(preonly,lu)": (KSP(ksp_type="preonly", pc_type="lu"), {"petsc"}),
    "Auto()": (Auto(), {"scipy", "cupy", "jax", "petsc"}),
}


@pytest.mark.parametrize("name", list(_VALUES))
def test_every_solver_value_equals_a_dense_solve_or_is_refused_by_name(name, backend):
    value, runs_on = _VALUES[name]
    A, RS = _system()
    be = get_backend(backend)
    if backend not in runs_on:
        with pytest.raises(SolverUnavailableError, match=f"{backend}|pyamg|PETSc|petsc"):
            solve(A, RS, solver=value, backend=backend)
        return
    res = solve(A, RS, solver=value, tol=1e-11, backend=backend)
    assert res.status is Status.CONVERGED
    assert res.residual_norms.shape == (RS.shape[1],) and np.all(res.residual_norms <= 1e-10)
    X = be.to_host(res.X)
    assert X.shape == RS.shape
    np.testing.assert_allclose(X, np.linalg.solve(A.toarray(), RS), atol=1e-9)
    assert res.prepared is not None and res.prepared.backend == backend


@pytest.mark.parametrize("name", ["Direct()", "GMRES(AMG-sa)", "GMRES(Jacobi)", "KSP(gmres)"])
def test_a_prepared_solver_is_reused_and_refuses_another_matrix(name, backend):
    value, runs_on = _VALUES[name]
    if backend not in runs_on:
        pytest.skip(f"{name} does not run on {backend} (refusal tested above)")
    be = get_backend(backend)
    A, RS = _system(seed=1)
    first = solve(A, RS, solver=value, tol=1e-11, backend=backend)
    again = solve(A, 2.0 * RS, solver=first.prepared, tol=1e-11, backend=backend)
    assert again.prepared is first.prepared
    np.testing.assert_allclose(be.to_host(again.X), 2.0 * be.to_host(first.X), rtol=1e-8, atol=1e-10)
    other = A.copy()
    other.data[0] += 0.5
    with pytest.raises(ValueError, match="another matrix"):
        solve(other, RS, solver=first.prepared, backend=backend)


def test_auto_chooses_by_size_and_backend_and_logs_why(backend, log_messages):
    be = get_backend(backend)
    small, RS = _system()
    chosen, reason = Auto().choose(be.ensure_native(small), be)
    expected = {"scipy": Direct, "petsc": KSP, "cupy": GMRES, "jax": GMRES}[backend]
    assert isinstance(chosen, expected), (chosen, reason)
    assert reason
    if backend == "petsc":  # small: PETSc's default PC; large: PCGAMG (the default PC stalls at 300k on 2 ranks)
        assert chosen.pc_type is None and "default PC" in reason
        big, why = Auto(direct_max_n=10).choose(small, be)
        assert big.pc_type == "gamg" and "PCGAMG" in why
    if backend == "scipy":
        assert "direct_max_n" in reason
        big, why = Auto(direct_max_n=10).choose(small, be)
        assert big == GMRES(preconditioner=AMG()) and "AMG" in why
    with cf_settings.using(verbosity="info"):
        res = solve(small, RS, solver=Auto(), tol=1e-11, backend=backend)
    assert res.prepared.solver == chosen
    assert any("Auto() chose" in m and reason in m for m in log_messages), log_messages


def test_auto_on_petsc_repeats_a_failed_gamg_set_up_with_the_default_pc(log_messages):
    pytest.importorskip("petsc4py")
    # Q = [[0, 0], [0.82, 0]]: PCGAMG's set-up fails on I - Q (DIVERGED_PCSETUP_FAILED), found by
    # the property test below when Auto chose GAMG for every size.
    T, terminal = absorbing_chain(2, [1], 0, density=0.5)
    n_abs = int(terminal.notna().sum())
    A = sp.csr_matrix(sp.eye(2) - T[n_abs:, n_abs:])
    R = T[n_abs:, :n_abs].toarray()
    with pytest.raises(SolveError, match="DIVERGED_PCSETUP_FAILED"):
        solve(A, R, solver=KSP(pc_type="gamg"), tol=1e-12, backend="petsc")
    res = solve(A, R, solver=Auto(direct_max_n=1), tol=1e-12, backend="petsc")
    assert res.status is Status.CONVERGED
    np.testing.assert_allclose(res.X, np.linalg.solve(A.toarray(), R), atol=1e-12)
    assert any("PCGAMG's set-up failed" in m for m in log_messages), log_messages


def test_auto_without_pyamg_bounds_the_fill(monkeypatch):
    be = get_backend("scipy")
    monkeypatch.setattr(type(be), "implements", be.implements - {"precond.amg"})
    A, _ = _system()
    chosen, reason = Auto(direct_max_n=10).choose(A, be)
    assert chosen == Direct() and "fill bound" in reason
    chosen, reason = Auto(direct_max_n=10, fill_limit=1e-3).choose(A, be)
    assert chosen == GMRES(preconditioner=ILU()) and "fill_limit" in reason


def test_cellrank_solver_names_map_to_values():
    from cellfate_gpu.linalg.solvers import solver_from_name

    assert solver_from_name("direct") == Direct()
    assert solver_from_name("gmres", preconditioner="ilu", restart=40) == GMRES(restart=40, preconditioner=ILU())
    assert solver_from_name("lgmres") == Krylov("lgmres")
    assert solver_from_name("bicgstab") == Krylov("bicgstab")
    assert solver_from_name("gcrotmk") == Krylov("gcrotmk")
    assert solver_from_name("auto") == Auto()
    assert solver_from_name("auto", preconditioner="amg") == GMRES(preconditioner=AMG())
    with pytest.raises(ValueError, match="method must be one of"):
        solver_from_name("cg")


# --------------------------------------------------------------------------- absorbing chains
_FAST = {"scipy": 40, "petsc": 15, "cupy": 15}  # examples per backend (JAX compiles each new size: 5)


def _chains():
    return st.tuples(
        st.integers(1, 25),  # transient states
        st.lists(st.integers(1, 4), min_size=1, max_size=4),  # absorbing groups
        st.integers(0, 2**16),  # seed
        st.floats(0.05, 0.8),  # density of the transient rows
    )


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(chain=_chains(), data=st.data())
def test_property_fate_probabilities_and_absorption_times(chain, data, backend):
    n_transient, groups, seed, density = chain
    if data.draw(st.integers(0, 39), label="subsample") >= _FAST.get(backend, 5):
        return  # backends that compile per size see fewer examples
    T, terminal = absorbing_chain(n_transient, groups, seed, density=density)
    n_abs, n = int(terminal.notna().sum()), T.shape[0]
    F, res = fate_probabilities(backend, T, terminal, tol=1e-12)
    assert res.status is Status.CONVERGED
    F = F.X
    assert F.shape == (n, len(groups))
    assert np.all(F >= 0.0) and np.all(F <= 1.0)
    np.testing.assert_allclose(F.sum(axis=1), 1.0, atol=1e-12)
    np.testing.assert_allclose((T @ F)[n_abs:], F[n_abs:], atol=1e-9)  # harmonic on the transient cells
    for j, name in enumerate(terminal.cat.categories):  # one-hot on the terminal cells
        np.testing.assert_array_equal(F[:n_abs, j], (terminal.to_numpy()[:n_abs] == name).astype(float))
    times = absorption_times(backend, T, terminal, tol=1e-12)
    means = times[[f"{name}_mean" for name in terminal.cat.categories]].to_numpy()
    m = np.nansum(F * np.where(np.isnan(means), 0.0, means), axis=1)  # E[tau] = sum_l P(l) E[tau | l]
    Q = T[n_abs:, n_abs:].toarray()
    np.testing.assert_allclose((np.eye(n_transient) - Q) @ m[n_abs:], 1.0, rtol=1e-7, atol=1e-7)
    assert np.all(m[:n_abs] == 0.0) and np.all(m[n_abs:] >= 1.0 - 1e-9)  # at least one step to absorb


@settings(max_examples=30, deadline=None)
@given(
    n=st.integers(2, 30),
    seeds=st.tuples(st.integers(0, 2**16), st.integers(0, 2**16)),
    weights=st.tuples(st.floats(0.01, 100.0), st.floats(0.01, 100.0)),
)
def test_property_kernel_sums_renormalise_their_weights(n, seeds, weights):
    adata = ad.AnnData(np.zeros((n, 1)))
    mats = []
    for s in seeds:
        rng = np.random.default_rng(s)
        M = rng.uniform(0, 1, (n, n)) * (rng.random((n, n)) < 0.5) + np.eye(n) * 1e-3
        mats.append(M / M.sum(axis=1, keepdims=True))
    a, b = weights
    k1, k2 = (PrecomputedKernel(sp.csr_matrix(M), adata=adata) for M in mats)
    T = (a * k1 + b * k2).transition_matrix
    T = T.toarray() if sp.issparse(T) else np.asarray(T)
    np.testing.assert_allclose(T, (a * mats[0] + b * mats[1]) / (a + b), atol=1e-13)
    np.testing.assert_allclose(T.sum(axis=1), 1.0, atol=1e-13)


# --------------------------------------------------------------------------- fault injection
def _estimator_with_terminal_states(backend="scipy"):
    T, terminal = absorbing_chain(80, [5, 5, 5], seed=3)
    adata = ad.AnnData(np.zeros((T.shape[0], 1)))
    adata.obs_names = list(terminal.index)
    g = GPCCA(PrecomputedKernel(T, adata=adata, backend=backend))
    g.set_terminal_states({name: list(terminal.index[terminal == name]) for name in terminal.cat.categories})
    return g, adata


def _fingerprint(adata):
    return (sorted(adata.obs.columns), sorted(adata.obsm.keys()), sorted(adata.uns.keys()))


def test_a_nan_that_appears_mid_iteration_surfaces_through_the_estimator():
    g, adata = _estimator_with_terminal_states()
    before = _fingerprint(adata)
    calls = [0]

    def poisoned(X):  # a preconditioner that goes bad on its third application
        calls[0] += 1
        Y = np.array(X, dtype=np.float64, copy=True)
        if calls[0] == 3:
            Y[0] = np.nan
        return Y

    with pytest.raises(RuntimeError, match=r"did not converge.*breakdown.*Try:"):
        g.compute_fate_probabilities(solver=GMRES(preconditioner=poisoned), tol=1e-12)
    assert calls[0] >= 3
    assert g.fate_probabilities is None and _fingerprint(adata) == before
    lin = g.compute_fate_probabilities(solver=Direct())  # a good solver afterwards works
    np.testing.assert_allclose(lin.X.sum(axis=1), 1.0, atol=1e-12)


def test_a_solve_that_stops_early_says_what_to_try_and_writes_nothing():
    g, adata = _estimator_with_terminal_states()
    before = _fingerprint(adata)
    with pytest.raises(RuntimeError, match=r"status=max_iter.*Try:.*AMG"):
        g.compute_fate_probabilities(solver=GMRES(maxiter=2), tol=1e-14)
    with pytest.raises(RuntimeError, match=r"did not converge.*Try:"):
        g.compute_absorption_times(solver=GMRES(maxiter=2), tol=1e-14)
    assert g.fate_probabilities is None and g.absorption_times is None and _fingerprint(adata) == before


def test_an_unavailable_solver_is_refused_through_the_estimator_by_name():
    g, _ = _estimator_with_terminal_states()
    with pytest.raises(SolverUnavailableError, match=r"petsc|solve\.ksp"):
        g.compute_fate_probabilities(solver=KSP())
