"""A battery of bad and edge inputs for kernels, the estimators' state handling, drivers and Lineage.

Every *bad* case is (setup, call, expected exception type, message fragment): ``setup`` plants the
bad input in a fresh AnnData, ``call`` must raise the expected type with a message naming the key,
shape or value, and the AnnData must be unchanged afterwards. Every *edge* case is a valid but
unusual input (CSC/COO/int/float32 ``obsp``, views, backed AnnData) whose answer must equal the
plain answer. A per-case time budget (SIGALRM) only detects hangs; it is not a performance assert.

``python tests/test_validation.py`` prints the counts that docs/reliability.md reports.
"""

from __future__ import annotations

import dataclasses
import signal
from collections.abc import Callable
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from cellfate_gpu.datasets import synthetic_atlas
from cellfate_gpu.estimators import CFLARE, GPCCA
from cellfate_gpu.kernels import (
    ConnectivityKernel,
    CytoTRACEKernel,
    Kernel,
    PrecomputedKernel,
    PseudotimeKernel,
    RealTimeKernel,
    VelocityKernel,
)
from cellfate_gpu.lineage import Lineage

#: Seconds after which a case counts as a hang (generous: the machine is shared).
HANG_BUDGET_S = 120


# --------------------------------------------------------------------------- fixtures and harness
_BASE = synthetic_atlas(n_cells=120, n_lineages=2, n_genes=20, seed=0)


def fresh() -> ad.AnnData:
    """A private copy of the 120-cell atlas (obs 'clusters', 'pseudotime'; obsp 'connectivities')."""
    return _BASE.copy()


def fingerprint(adata: ad.AnnData) -> dict[str, Any]:
    """Everything a failing call must leave as it was: keys and content digests of every slot."""

    def digest(x: Any) -> Any:
        if x is None:
            return None
        if sp.issparse(x):
            x = sp.csr_matrix(x)
            return (x.shape, x.nnz, float(np.nan_to_num(x.data, nan=7.0, posinf=8.0, neginf=9.0).sum()))
        if isinstance(x, pd.DataFrame):
            return tuple(pd.util.hash_pandas_object(x, index=True).to_numpy().tolist())
        arr = np.asarray(x)
        if arr.dtype.kind in "biuf":
            return (arr.shape, float(np.nan_to_num(arr.astype(np.float64), nan=7.0, posinf=8.0, neginf=9.0).sum()))
        return (arr.shape, repr(arr.tolist())[:2000])

    return {
        "shape": adata.shape,
        "obs": tuple(pd.util.hash_pandas_object(adata.obs, index=True).to_numpy().tolist()),
        "obs_cols": tuple(adata.obs.columns),
        "var_cols": tuple(adata.var.columns),
        "X": digest(adata.X),
        "layers": {k: digest(v) for k, v in adata.layers.items()},
        "obsm": {k: digest(v) for k, v in adata.obsm.items()},
        "obsp": {k: digest(v) for k, v in adata.obsp.items()},
        "varm": {k: digest(v) for k, v in adata.varm.items()},
        "uns": tuple(sorted(adata.uns.keys())),
    }


class Hang(Exception):
    pass


def _alarm(signum, frame):  # pragma: no cover - only when a case hangs
    raise Hang(f"no answer within {HANG_BUDGET_S} s")


@dataclasses.dataclass
class Case:
    """One bad input: ``setup(adata)`` plants it and returns the call that must fail."""

    id: str
    setup: Callable[[ad.AnnData], Callable[[], Any]]
    exc: type[BaseException] | tuple[type[BaseException], ...]
    match: str


def run_case(case: Case) -> tuple[str, str]:
    """``(outcome, detail)``; outcome is 'clear', 'wrong_error', 'silent', 'hang' or 'damaged'."""
    adata = fresh()
    call = case.setup(adata)
    before = fingerprint(adata)
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(HANG_BUDGET_S)
    try:
        call()
    except Hang as e:
        return "hang", str(e)
    except Exception as e:  # the battery classifies every exception
        outcome = "clear" if isinstance(e, case.exc) and case.match.lower() in str(e).lower() else "wrong_error"
        detail = f"{type(e).__name__}: {e}"
    else:
        outcome, detail = "silent", "no exception"
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    if fingerprint(adata) != before:
        return "damaged", detail
    return outcome, detail


# --------------------------------------------------------------------------- helpers for setups
def _set(adata, where: str, key: str, value: Any) -> None:
    getattr(adata, where)[key] = value


def _pk(adata, **kw):
    return PseudotimeKernel(adata, time_key="pseudotime", **kw).compute_transition_matrix()


def _ck(adata):
    return ConnectivityKernel(adata).compute_transition_matrix()


def _gpcca(adata):
    return GPCCA(_pk(adata))


def _cflare(adata):
    return CFLARE(_pk(adata))


def _with_fates(adata):
    g = CFLARE(0.8 * _pk(adata) + 0.2 * _ck(adata))
    g.set_terminal_states({"A": adata.obs_names[:5], "B": adata.obs_names[-5:]})
    g.compute_fate_probabilities()
    return g


def _prepared(make, call):
    """A setup that builds ``make(adata)`` (which may write to it) before the fingerprint; ``call`` must fail."""

    def setup(adata):
        obj = make(adata)
        return lambda: call(obj)

    return setup


def _obsp_mutated(fn):
    def setup(adata):
        C = sp.csr_matrix(adata.obsp["connectivities"], dtype=np.float64, copy=True)
        fn(C)
        adata.obsp["connectivities"] = C
        return lambda: ConnectivityKernel(adata).compute_transition_matrix()

    return setup


def _nan_data(C):
    C.data[3] = np.nan


def _inf_data(C):
    C.data[3] = np.inf


def _neg_data(C):
    C.data[3] = -0.5


def _tiny(n: int) -> ad.AnnData:
    a = ad.AnnData(X=np.ones((n, 3)))
    a.obsp["connectivities"] = sp.csr_matrix((n, n))
    a.obs["pseudotime"] = np.linspace(0, 1, n) if n else np.zeros(0)
    return a


def _stoch(n: int) -> np.ndarray:
    return np.full((n, n), 1.0 / n)


def _lineage() -> Lineage:
    return Lineage(np.array([[0.2, 0.8], [0.5, 0.5], [1.0, 0.0]]), names=["A", "B"])


def _setup_adata_pair(adata):
    other = fresh()
    pk, ck = _pk(adata), _ck(other)
    return lambda: pk + ck


def _setup_dtime(adata):
    adata.obs["pseudotime"] = adata.obs["pseudotime"].astype(str)
    return lambda: PseudotimeKernel(adata, time_key="pseudotime")


def _setup_realtime_kwargs(adata):
    adata.obs["day"] = pd.Categorical(np.where(np.arange(adata.n_obs) < 60, "d0", "d1"))
    k = RealTimeKernel(adata, time_key="day", couplings={("d0", "d1"): np.ones((60, 60))})
    return lambda: k.compute_transition_matrix(self_transitions="diagonal", epsilon=0.1)


CASES: list[Case] = [
    # ---- kernels: graph input
    Case("conn/missing_key", lambda a: lambda: ConnectivityKernel(a, conn_key="nope"), KeyError, "nope"),
    Case(
        "conn/distances_as_affinities",
        lambda a: lambda: ConnectivityKernel(a, conn_key="distances"),
        ValueError,
        "distances",
    ),
    Case("conn/nan", _obsp_mutated(_nan_data), ValueError, "non-finite"),
    Case("conn/inf", _obsp_mutated(_inf_data), ValueError, "non-finite"),
    Case("conn/negative", _obsp_mutated(_neg_data), ValueError, "negative"),
    Case(
        "conn/empty_adata",
        lambda a: lambda: ConnectivityKernel(_tiny(0)).compute_transition_matrix(),
        ValueError,
        "no cells",
    ),
    Case(
        "conn/one_cell_no_edge",
        lambda a: lambda: ConnectivityKernel(_tiny(1)).compute_transition_matrix(),
        ValueError,
        "row",
    ),
    Case(
        "conn/isolated_cells",
        lambda a: lambda: ConnectivityKernel(_tiny(4)).compute_transition_matrix(),
        ValueError,
        "row",
    ),
    Case(
        "conn/unknown_backend",
        lambda a: lambda: ConnectivityKernel(a).compute_transition_matrix(backend="nope"),
        (ValueError, KeyError),
        "nope",
    ),
    Case("conn/invert", lambda a: lambda: ~_ck(a), TypeError, "direction"),
    # ---- kernels: pseudotime
    Case("pt/missing_key", lambda a: lambda: PseudotimeKernel(a, time_key="nope"), KeyError, "nope"),
    Case("pt/string_time", _setup_dtime, TypeError, "numeric"),
    Case(
        "pt/nan_time",
        lambda a: (
            _set(a, "obs", "pt", np.r_[np.nan, a.obs["pseudotime"].to_numpy()[1:]]),
            lambda: PseudotimeKernel(a, time_key="pt"),
        )[1],
        ValueError,
        "non-finite",
    ),
    Case(
        "pt/inf_time",
        lambda a: (
            _set(a, "obs", "pt", np.r_[np.inf, a.obs["pseudotime"].to_numpy()[1:]]),
            lambda: PseudotimeKernel(a, time_key="pt"),
        )[1],
        ValueError,
        "non-finite",
    ),
    Case(
        "pt/constant_time",
        lambda a: (_set(a, "obs", "pt", np.full(a.n_obs, 0.3)), lambda: PseudotimeKernel(a, time_key="pt"))[1],
        ValueError,
        "constant",
    ),
    Case(
        "pt/unknown_option",
        lambda a: lambda: PseudotimeKernel(a, time_key="pseudotime").compute_transition_matrix(frac_to_kep=0.9),
        TypeError,
        "frac_to_kep",
    ),
    Case(
        "pt/unknown_option_soft",
        lambda a: lambda: PseudotimeKernel(a, time_key="pseudotime").compute_transition_matrix("soft", foo=1),
        TypeError,
        "foo",
    ),
    Case(
        "pt/frac_out_of_range",
        lambda a: lambda: PseudotimeKernel(a, time_key="pseudotime").compute_transition_matrix(frac_to_keep=2),
        ValueError,
        "frac_to_keep",
    ),
    Case(
        "pt/bad_scheme",
        lambda a: lambda: PseudotimeKernel(a, time_key="pseudotime").compute_transition_matrix("medium"),
        ValueError,
        "threshold_scheme",
    ),
    Case(
        "pt/soft_nu_zero",
        lambda a: lambda: PseudotimeKernel(a, time_key="pseudotime").compute_transition_matrix("soft", nu=0),
        ValueError,
        "nu",
    ),
    Case(
        "pt/backward_not_bool",
        lambda a: lambda: PseudotimeKernel(a, time_key="pseudotime", backward="yes"),
        TypeError,
        "bool",
    ),
    Case(
        "pt/distances_key",
        lambda a: lambda: PseudotimeKernel(a, time_key="pseudotime", conn_key="distances"),
        ValueError,
        "distances",
    ),
    Case(
        "pt/custom_scheme_bad_shape",
        lambda a: lambda: PseudotimeKernel(a, time_key="pseudotime").compute_transition_matrix(lambda t, tn, c: c[:1]),
        ValueError,
        "shape",
    ),
    # ---- kernels: the algebra
    Case("expr/two_adatas_same_size", _setup_adata_pair, ValueError, "different AnnData"),
    Case("expr/forward_plus_backward", lambda a: lambda: _pk(a) + ~_pk(a), ValueError, "forward and backward"),
    Case(
        "expr/different_sizes",
        lambda a: lambda: _ck(a) + PrecomputedKernel(_stoch(5)),
        ValueError,
        "different numbers of cells",
    ),
    Case("expr/weight_zero", lambda a: lambda: 0 * _ck(a), ValueError, "positive"),
    Case("expr/weight_negative", lambda a: lambda: -0.5 * _ck(a), ValueError, "positive"),
    Case("expr/weight_nan", lambda a: lambda: float("nan") * _ck(a), ValueError, "positive"),
    Case("expr/weight_inf", lambda a: lambda: float("inf") * _ck(a), ValueError, "positive"),
    Case("expr/weight_bool", lambda a: lambda: True * _ck(a), TypeError, "unsupported"),
    Case(
        "expr/parameters",
        lambda a: lambda: (0.5 * _ck(a) + 0.5 * _pk(a)).compute_transition_matrix(frac_to_keep=1),
        TypeError,
        "no parameters",
    ),
    Case(
        "expr/uncomputed",
        lambda a: lambda: (ConnectivityKernel(a) + _pk(a)).compute_transition_matrix(),
        RuntimeError,
        "ConnectivityKernel",
    ),
    # ---- kernels: precomputed and I/O
    Case("pre/not_stochastic", lambda a: lambda: PrecomputedKernel(np.ones((4, 4))), ValueError, "sum to 1"),
    Case("pre/not_square", lambda a: lambda: PrecomputedKernel(np.ones((4, 3)) / 3), ValueError, "square"),
    Case(
        "pre/nan", lambda a: lambda: PrecomputedKernel(np.array([[np.nan, 1.0], [0.5, 0.5]])), ValueError, "non-finite"
    ),
    Case(
        "pre/negative", lambda a: lambda: PrecomputedKernel(np.array([[1.5, -0.5], [0.5, 0.5]])), ValueError, "negative"
    ),
    Case("pre/strings", lambda a: lambda: PrecomputedKernel(np.array([["a", "b"], ["c", "d"]])), TypeError, "numeric"),
    Case("pre/3d", lambda a: lambda: PrecomputedKernel(np.ones((2, 2, 2))), ValueError, "2-D"),
    Case("pre/empty", lambda a: lambda: PrecomputedKernel(np.zeros((0, 0))), ValueError, "no cells"),
    Case("pre/wrong_n_for_adata", lambda a: lambda: PrecomputedKernel(_stoch(5), adata=a), ValueError, "120"),
    Case("pre/missing_obsp", lambda a: lambda: PrecomputedKernel(adata=a), KeyError, "T_fwd"),
    Case(
        "pre/unknown_option",
        lambda a: lambda: PrecomputedKernel(_stoch(3)).compute_transition_matrix(foo=1),
        TypeError,
        "foo",
    ),
    Case(
        "pre/positional",
        lambda a: lambda: PrecomputedKernel(_stoch(3)).compute_transition_matrix("hard"),
        TypeError,
        "positional",
    ),
    Case("io/from_adata_missing", lambda a: lambda: Kernel.from_adata(a, "T_fwd"), KeyError, "T_fwd"),
    Case(
        "io/set_matrix_wrong_shape",
        lambda a: lambda: setattr(_ck(a), "transition_matrix", _stoch(5)),
        ValueError,
        "(120, 120)",
    ),
    Case(
        "io/set_matrix_nan",
        lambda a: lambda: setattr(_ck(a), "transition_matrix", np.full((120, 120), np.nan)),
        ValueError,
        "non-finite",
    ),
    # ---- kernels: CytoTRACE, real time, velocity
    Case(
        "ct/X_none",
        lambda a: (setattr(a, "X", None), lambda: CytoTRACEKernel(a).compute_cytotrace(layer="Ms"))[1],
        ValueError,
        "X is None",
    ),
    Case("ct/missing_layer", lambda a: lambda: CytoTRACEKernel(a).compute_cytotrace(layer="nope"), KeyError, "nope"),
    Case(
        "ct/bad_aggregation",
        lambda a: lambda: CytoTRACEKernel(a).compute_cytotrace(aggregation="max"),
        ValueError,
        "aggregation",
    ),
    Case("ct/n_genes_zero", lambda a: lambda: CytoTRACEKernel(a).compute_cytotrace(n_genes=0), ValueError, "n_genes"),
    Case(
        "ct/before_cytotrace",
        lambda a: lambda: CytoTRACEKernel(a).compute_transition_matrix(),
        RuntimeError,
        "compute_cytotrace",
    ),
    Case(
        "ct/string_time",
        lambda a: (_set(a, "obs", "ct_pseudotime", ["x"] * a.n_obs), lambda: CytoTRACEKernel(a))[1],
        TypeError,
        "numeric",
    ),
    Case("rt/missing_key", lambda a: lambda: RealTimeKernel(a, time_key="day"), KeyError, "day"),
    Case("rt/not_categorical", lambda a: lambda: RealTimeKernel(a, time_key="pseudotime"), TypeError, "categorical"),
    Case("rt/unknown_option", _setup_realtime_kwargs, TypeError, "epsilon"),
    Case("vk/missing_layer", lambda a: lambda: VelocityKernel(a, vkey="nope"), KeyError, "nope"),
    # ---- random walks
    Case(
        "rw/max_iter_negative",
        lambda a: lambda: _ck(a).simulate_random_walks(n_sims=2, max_iter=-1),
        ValueError,
        "max_iter",
    ),
    Case(
        "rw/unknown_obs_key",
        lambda a: lambda: _ck(a).simulate_random_walks(n_sims=2, start_ixs={"nope": ["x"]}),
        KeyError,
        "nope",
    ),
    Case(
        "rw/out_of_range",
        lambda a: lambda: _ck(a).simulate_random_walks(n_sims=2, start_ixs=[10_000]),
        IndexError,
        "10000",
    ),
    # ---- estimators: setting states
    Case(
        "states/overlap",
        lambda a: lambda: _cflare(a).set_terminal_states({"A": a.obs_names[:20], "B": a.obs_names[10:30]}),
        ValueError,
        "overlap: 'A' and 'B' share 10",
    ),
    Case(
        "states/overlap_indices",
        lambda a: lambda: _cflare(a).set_terminal_states({"A": [0, 1, 2], "B": [2, 3]}),
        ValueError,
        "overlap",
    ),
    Case("states/empty_dict", lambda a: lambda: _cflare(a).set_terminal_states({}), ValueError, "empty"),
    Case(
        "states/empty_list",
        lambda a: lambda: _cflare(a).set_terminal_states([], cluster_key="clusters"),
        ValueError,
        "empty",
    ),
    Case("states/empty_state", lambda a: lambda: _cflare(a).set_terminal_states({"A": []}), ValueError, "no cells"),
    Case("states/unknown_names", lambda a: lambda: _cflare(a).set_terminal_states({"A": ["nope"]}), KeyError, "nope"),
    Case(
        "states/index_out_of_range",
        lambda a: lambda: _cflare(a).set_terminal_states({"A": [10_000]}),
        IndexError,
        "10000",
    ),
    Case(
        "states/mask_wrong_length",
        lambda a: lambda: _cflare(a).set_terminal_states({"A": np.ones(5, bool)}),
        ValueError,
        "mask",
    ),
    Case("states/float_cells", lambda a: lambda: _cflare(a).set_terminal_states({"A": [0.5, 1.5]}), TypeError, "dtype"),
    Case(
        "states/unknown_cluster_key",
        lambda a: lambda: _cflare(a).set_terminal_states(["x"], cluster_key="nope"),
        KeyError,
        "nope",
    ),
    Case(
        "states/unknown_cluster",
        lambda a: lambda: _cflare(a).set_terminal_states(["nope"], cluster_key="clusters"),
        ValueError,
        "nope",
    ),
    Case("states/no_cluster_key", lambda a: lambda: _cflare(a).set_terminal_states(["x"]), ValueError, "cluster_key"),
    Case(
        "states/unknown_option", lambda a: lambda: _cflare(a).set_terminal_states({"A": [0]}, foo=1), TypeError, "foo"
    ),
    Case(
        "states/n_cells_zero",
        lambda a: lambda: _cflare(a).set_terminal_states({"A": [0]}, n_cells=0),
        ValueError,
        "n_cells",
    ),
    Case(
        "states/n_cells_float",
        lambda a: lambda: _cflare(a).set_terminal_states({"A": [0]}, n_cells=2.7),
        TypeError,
        "n_cells",
    ),
    Case(
        "states/n_cells_too_many",
        lambda a: lambda: _cflare(a).set_terminal_states({"A": [0]}, n_cells=10_000),
        ValueError,
        "n_cells",
    ),
    Case(
        "states/series_not_categorical",
        lambda a: lambda: _cflare(a).set_terminal_states(pd.Series(["A"] * a.n_obs, index=a.obs_names)),
        TypeError,
        "categorical",
    ),
    Case(
        "states/series_wrong_length",
        lambda a: lambda: _cflare(a).set_terminal_states(pd.Series(pd.Categorical(["A"] * 5))),
        ValueError,
        "5 entries",
    ),
    Case(
        "states/series_unknown_index",
        lambda a: (
            lambda: _cflare(a).set_terminal_states(
                pd.Series(pd.Categorical(["A"] * a.n_obs), index=[f"x{i}" for i in range(a.n_obs)])
            )
        ),
        ValueError,
        "index",
    ),
    Case("states/wrong_type", lambda a: lambda: _cflare(a).set_terminal_states(42), TypeError, "int"),
    Case(
        "states/initial_overlaps_terminal",
        _prepared(
            lambda a: _cflare(a).set_terminal_states({"A": [0, 1]}), lambda e: e.set_initial_states({"I": [1, 2]})
        ),
        ValueError,
        "both",
    ),
    Case(
        "states/rename_unknown",
        _prepared(lambda a: _cflare(a).set_terminal_states({"A": [0]}), lambda e: e.rename_terminal_states({"Z": "Y"})),
        KeyError,
        "Z",
    ),
    Case(
        "states/rename_duplicate",
        _prepared(
            lambda a: _cflare(a).set_terminal_states({"A": [0], "B": [1]}),
            lambda e: e.rename_terminal_states({"A": "B"}),
        ),
        ValueError,
        "duplicate",
    ),
    Case("est/not_a_kernel", lambda a: lambda: GPCCA("T_fwd"), TypeError, "str"),
    Case(
        "est/fates_without_states",
        lambda a: lambda: _cflare(a).compute_fate_probabilities(),
        RuntimeError,
        "terminal states",
    ),
    Case(
        "est/gpcca_predict_n_cells_zero",
        _prepared(
            lambda a: GPCCA(0.8 * _pk(a) + 0.2 * _ck(a)).fit(n_states=3),
            lambda g: g.predict_terminal_states(method="top_n", n_states=1, n_cells=0),
        ),
        ValueError,
        "cells",  # "n_cells" (GPCCA's own check) or "contain no cells" (the base's guard before any write)
    ),
    Case(
        "est/gpcca_fit_n_states_float",
        lambda a: lambda: _gpcca(a).fit(n_states=2.7),
        (TypeError, ValueError),
        "n_states",
    ),
    Case(
        "est/gpcca_fit_n_cells_negative", lambda a: lambda: _gpcca(a).fit(n_states=2, n_cells=-5), ValueError, "n_cells"
    ),
    Case(
        "est/gpcca_two_cells",
        lambda a: lambda: GPCCA(PrecomputedKernel(np.array([[0.5, 0.5], [0.5, 0.5]]))).fit(n_states=2),
        ValueError,
        "n_states",
    ),
    # ---- drivers and priming
    Case(
        "drv/without_fates", lambda a: lambda: _cflare(a).compute_lineage_drivers(), RuntimeError, "fate probabilities"
    ),
    Case(
        "drv/missing_layer", _prepared(_with_fates, lambda g: g.compute_lineage_drivers(layer="nope")), KeyError, "nope"
    ),
    Case(
        "drv/unknown_cluster_key",
        _prepared(_with_fates, lambda g: g.compute_lineage_drivers(cluster_key="nope", clusters=["x"])),
        KeyError,
        "nope",
    ),
    Case(
        "drv/unknown_cluster",
        _prepared(_with_fates, lambda g: g.compute_lineage_drivers(cluster_key="clusters", clusters=["nope"])),
        ValueError,
        "nope",
    ),
    Case(
        "drv/unknown_lineage",
        _prepared(_with_fates, lambda g: g.compute_lineage_drivers(lineages=["Z"])),
        KeyError,
        "Z",
    ),
    Case(
        "drv/bad_method", _prepared(_with_fates, lambda g: g.compute_lineage_drivers(method="t")), ValueError, "method"
    ),
    Case("drv/unknown_option", _prepared(_with_fates, lambda g: g.compute_lineage_drivers(foo=1)), TypeError, "foo"),
    Case(
        "drv/X_none",
        _prepared(lambda a: (_with_fates(a), setattr(a, "X", None))[0], lambda g: g.compute_lineage_drivers()),
        ValueError,
        "X is None",
    ),
    Case(
        "drv/raw_missing", _prepared(_with_fates, lambda g: g.compute_lineage_drivers(use_raw=True)), ValueError, "raw"
    ),
    Case(
        "prime/bad_method",
        _prepared(_with_fates, lambda g: g.compute_lineage_priming(method="nope")),
        ValueError,
        "method",
    ),
    Case(
        "prime/bad_mask",
        _prepared(_with_fates, lambda g: g.compute_lineage_priming(early_cells=np.ones(3, bool))),
        ValueError,
        "shape",
    ),
    # ---- Lineage
    Case("lin/3d", lambda a: lambda: Lineage(np.ones((2, 2, 2)), names=["A", "B"]), ValueError, "2-D"),
    Case("lin/names_count", lambda a: lambda: Lineage(np.ones((3, 2)), names=["A"]), ValueError, "1 names"),
    Case("lin/duplicate_names", lambda a: lambda: Lineage(np.ones((3, 2)), names=["A", "A"]), ValueError, "unique"),
    Case(
        "lin/colors_count",
        lambda a: lambda: Lineage(np.ones((3, 2)), names=["A", "B"], colors=["red"]),
        ValueError,
        "colors",
    ),
    Case(
        "lin/bad_color",
        lambda a: lambda: Lineage(np.ones((3, 2)), names=["A", "B"], colors=["red", "nocolor"]),
        ValueError,
        "nocolor",
    ),
    Case("lin/nan", lambda a: lambda: Lineage(np.array([[np.nan, 1.0]]), names=["A", "B"]), ValueError, "non-finite"),
    Case("lin/inf", lambda a: lambda: Lineage(np.array([[np.inf, 1.0]]), names=["A", "B"]), ValueError, "non-finite"),
    Case("lin/unknown_name", lambda a: lambda: _lineage()["Z"], KeyError, "Z"),
    Case("lin/merge_twice", lambda a: lambda: _lineage()[["A, A"]], ValueError, "twice"),
    Case("lin/priming_method", lambda a: lambda: _lineage().priming_degree(method="x"), ValueError, "method"),
    Case(
        "lin/priming_mask",
        lambda a: lambda: _lineage().priming_degree(early_cells=np.ones(2, bool)),
        ValueError,
        "shape",
    ),
    Case(
        "lin/priming_no_cells",
        lambda a: lambda: _lineage().priming_degree(early_cells=np.zeros(3, bool)),
        ValueError,
        "no cells",
    ),
    Case("lin/from_adata_missing", lambda a: lambda: Lineage.from_adata(a, "lineages_fwd"), KeyError, "lineages_fwd"),
    Case(
        "lin/from_adata_1d",
        lambda a: (
            _set(a, "obsm", "L", np.ones((a.n_obs, 2))),
            _set(a, "uns", "L_names", ["A"]),
            lambda: Lineage.from_adata(a, "nope"),
        )[2],
        KeyError,
        "nope",
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_gives_a_clear_error_and_leaves_adata_intact(case):
    outcome, detail = run_case(case)
    assert outcome == "clear", f"{case.id}: {outcome} ({detail})"


# --------------------------------------------------------------------------- edge inputs: same answer
def _reference_T() -> np.ndarray:
    return ConnectivityKernel(fresh()).compute_transition_matrix().transition_matrix.toarray()


def _with_obsp(convert):
    a = fresh()
    a.obsp["connectivities"] = convert(sp.csr_matrix(a.obsp["connectivities"]))
    return a


EDGE = {
    "obsp_csc": lambda: _with_obsp(sp.csc_matrix),
    "obsp_float32": lambda: _with_obsp(lambda C: C.astype(np.float32)),
    "obsp_dense": lambda: _with_obsp(lambda C: C.toarray()),
    "obsp_unsorted_duplicates": lambda: _with_obsp(
        lambda C: sp.csr_matrix(
            (
                np.r_[C.tocoo().data / 2, C.tocoo().data / 2],
                (np.r_[C.tocoo().row, C.tocoo().row], np.r_[C.tocoo().col, C.tocoo().col]),
            ),
            shape=C.shape,
        )
    ),
    "view": lambda: fresh()[:, :10],
}


@pytest.mark.parametrize("name", list(EDGE))
def test_edge_input_gives_the_plain_answer(name):
    a = EDGE[name]()
    T = ConnectivityKernel(a).compute_transition_matrix().transition_matrix.toarray()
    np.testing.assert_allclose(T, _reference_T(), rtol=1e-6 if "float32" in name else 1e-13, atol=1e-7)


@pytest.mark.parametrize("fmt", ["coo", "csc", "lil", "dense", "float32"])
def test_precomputed_formats_give_the_plain_answer(fmt):
    # anndata stores only CSR/CSC in obsp; a bare matrix may come in any format
    T = sp.csr_matrix(_reference_T())
    M = T.toarray() if fmt == "dense" else T.astype(np.float32) if fmt == "float32" else T.asformat(fmt)
    got = PrecomputedKernel(M).transition_matrix.toarray()
    np.testing.assert_allclose(got, T.toarray(), atol=1e-7 if fmt == "float32" else 0)


def test_int_obsp_is_a_valid_unweighted_graph():
    a = _with_obsp(lambda C: (C > 0).astype(np.int64))
    T = ConnectivityKernel(a).compute_transition_matrix(density_normalize=False).transition_matrix.toarray()
    B = (fresh().obsp["connectivities"].toarray() > 0).astype(float)
    np.testing.assert_allclose(T, B / B.sum(axis=1, keepdims=True), atol=1e-15)


def test_backed_adata_gives_the_plain_answer(tmp_path):
    fresh().write_h5ad(tmp_path / "a.h5ad")
    backed = ad.read_h5ad(tmp_path / "a.h5ad", backed="r")
    T = ConnectivityKernel(backed).compute_transition_matrix().transition_matrix.toarray()
    np.testing.assert_allclose(T, _reference_T(), atol=1e-13)
    before = (tmp_path / "a.h5ad").read_bytes()
    with pytest.raises(ValueError, match="overlap"):
        CFLARE(ConnectivityKernel(backed).compute_transition_matrix()).set_terminal_states({"A": [0, 1], "B": [1, 2]})
    assert (tmp_path / "a.h5ad").read_bytes() == before


def test_expression_deep_copy_keeps_one_adata():
    a = fresh()
    expr = 0.8 * _pk(a) + 0.2 * _ck(a)
    deep = expr.copy(deep=True)
    assert deep.adata is not a
    assert all(leaf.adata is deep.adata for leaf in deep.kernels)
    np.testing.assert_allclose(deep.transition_matrix.toarray(), expr.transition_matrix.toarray(), atol=1e-15)


def test_set_states_accepts_disjoint_sets_and_writes_them():
    a = fresh()
    est = _cflare(a).set_terminal_states({"A": a.obs_names[:20], "B": a.obs_names[20:30]})
    assert (a.obs["term_states_fwd"] == "A").sum() == 20 and (a.obs["term_states_fwd"] == "B").sum() == 10
    assert list(est.terminal_states.cat.categories) == ["A", "B"]


def battery_counts() -> dict[str, int]:
    """Run every case and count the outcomes (what docs/reliability.md reports)."""
    counts = {"bad inputs tried": len(CASES), "clear": 0, "wrong_error": 0, "silent": 0, "hang": 0, "damaged": 0}
    for case in CASES:
        outcome, detail = run_case(case)
        counts[outcome] += 1
        if outcome != "clear":
            print(f"  {case.id}: {outcome} - {detail}")
    counts["edge inputs (same answer)"] = len(EDGE) + 5 + 2
    return counts


if __name__ == "__main__":  # pragma: no cover
    for k, v in battery_counts().items():
        print(f"{k}: {v}")
