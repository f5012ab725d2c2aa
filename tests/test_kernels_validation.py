"""The transition-matrix invariants and input checks every kernel applies (kernels/_validation.py)."""

import numpy as np
import pytest
import scipy.sparse as sp

from cellfate_gpu.backends import get_backend
from cellfate_gpu.kernels._validation import (
    ROW_SUM_TOL,
    check_no_options,
    host_transition_csr,
    validate_transition_matrix,
)


def test_host_transition_csr_sums_duplicates_and_casts():
    # (0, 1) stored twice: CSR arithmetic means their sum
    A = sp.coo_matrix(([0.25, 0.25, 1, 1], ([0, 0, 0, 1], [1, 1, 0, 1])), shape=(2, 2)).astype(np.float32)
    host = host_transition_csr(A)
    assert host.format == "csr" and host.dtype == np.float64 and host.nnz == 3
    np.testing.assert_array_equal(host.toarray(), [[1.0, 0.5], [0.0, 1.0]])
    np.testing.assert_array_equal(host_transition_csr([[0.5, 0.5], [1, 0]]).toarray(), [[0.5, 0.5], [1, 0]])


@pytest.mark.parametrize(
    ("bad", "error", "match"),
    [
        ([["a", "b"], ["c", "d"]], TypeError, "must be numeric"),
        (np.ones(3), ValueError, "must be 2-D"),
        (np.ones((2, 3)) / 3, ValueError, r"must be square, got shape \(2, 3\)"),
        (sp.csr_matrix(np.ones((3, 2))), ValueError, "must be square"),
    ],
)
def test_host_transition_csr_refuses_by_name(bad, error, match):
    with pytest.raises(error, match=match):
        host_transition_csr(bad)


def test_validate_counts_each_violation():
    be = get_backend("scipy")
    T = sp.csr_matrix(np.full((4, 4), 0.25))
    validate_transition_matrix(be, T, 4)
    off = T.copy()
    off.data[:2] += 2 * ROW_SUM_TOL  # row 0 sums to 1 + 4e-6
    with pytest.raises(ValueError, match=r"^1 row\(s\) of the transition matrix do not sum to 1"):
        validate_transition_matrix(be, off)
    within = T.copy()
    within.data[0] += ROW_SUM_TOL / 2
    validate_transition_matrix(be, within)
    neg = sp.csr_matrix(np.array([[1.5, -0.5], [-0.5, 1.5]]))
    with pytest.raises(ValueError, match="has 2 negative entries"):
        validate_transition_matrix(be, neg)
    with pytest.raises(ValueError, match=r"expected \(5, 5\) for 5 cells"):
        validate_transition_matrix(be, T, 5)
    with pytest.raises(ValueError, match="no cells"):
        validate_transition_matrix(be, sp.csr_matrix((0, 0)))


def test_check_no_options_names_unknown_and_accepted():
    check_no_options("f", {"a": 1}, allowed=("a",))
    with pytest.raises(TypeError, match=r"f got unknown option\(s\) \['x', 'y'\]; accepted here: \['a'\]"):
        check_no_options("f", {"y": 1, "x": 2, "a": 3}, allowed=("a",))
    with pytest.raises(TypeError, match=r"unknown option\(s\) \['x'\]\.$"):
        check_no_options("f", {"x": 1})
