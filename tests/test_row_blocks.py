"""The threaded CPU SpMM (backends/_row_blocks.py): bit-identical to SciPy's product, cache kept honest."""

import numpy as np
import pytest
import scipy.sparse as sp

from cellfate_gpu.backends import _row_blocks
from cellfate_gpu.backends._row_blocks import n_threads, threaded_spmm


@pytest.fixture(autouse=True)
def small_threshold(monkeypatch):
    monkeypatch.setattr(_row_blocks, "MIN_ROWS", 10)


def _matrix(n=3000, seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    A = sp.random(n, n, density=8 / n, format="csr", random_state=rng, dtype=dtype)
    A[rng.integers(0, n, 50), :] = 0.0  # empty rows, so blocks of equal nnz have unequal rows
    A.eliminate_zeros()
    return sp.csr_matrix(A)


@pytest.mark.parametrize("threads", [2, 3, 7])
@pytest.mark.parametrize("cols", [None, 1, 6])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_equals_scipys_product_bit_for_bit(threads, cols, dtype):
    A = _matrix(dtype=dtype)
    rng = np.random.default_rng(1)
    X = rng.standard_normal(A.shape[0] if cols is None else (A.shape[0], cols)).astype(dtype)
    Y = threaded_spmm(A, X, threads=threads)
    ref = A @ X
    assert Y.shape == ref.shape and Y.dtype == ref.dtype
    np.testing.assert_array_equal(Y, ref)
    np.testing.assert_array_equal(threaded_spmm(sp.csr_array(A), X, threads=threads), ref)


def test_in_place_data_changes_are_seen_and_structure_changes_rebuild():
    A = _matrix()
    X = np.random.default_rng(2).standard_normal((A.shape[0], 2))
    threaded_spmm(A, X, threads=2)  # builds the cached blocks
    A.data *= 3.0
    np.testing.assert_array_equal(threaded_spmm(A, X, threads=2), A @ X)
    A[0, 1] = 5.0  # a new stored entry: new index arrays, new blocks
    A = sp.csr_matrix(A)
    np.testing.assert_array_equal(threaded_spmm(A, X, threads=2), A @ X)


def test_small_or_non_csr_matrices_use_the_serial_product(monkeypatch):
    A = _matrix()
    X = np.ones(A.shape[0])
    monkeypatch.setattr(_row_blocks, "_blocks", lambda *a: pytest.fail("blocks built"))
    np.testing.assert_array_equal(threaded_spmm(A.tocsc(), X, threads=2), A @ X)
    np.testing.assert_array_equal(threaded_spmm(A, X, threads=1), A @ X)
    monkeypatch.setattr(_row_blocks, "MIN_ROWS", A.shape[0] + 1)
    np.testing.assert_array_equal(threaded_spmm(A, X, threads=2), A @ X)


def test_a_worker_error_is_raised_in_the_caller():
    A = _matrix()
    with pytest.raises(ValueError):
        threaded_spmm(A, np.ones(A.shape[0] + 1), threads=2)


def test_thread_count_from_the_environment(monkeypatch):
    monkeypatch.setenv("CELLFATE_NUM_THREADS", "3")
    assert n_threads() == 3
    for bad in ("0", "two", "-1"):
        monkeypatch.setenv("CELLFATE_NUM_THREADS", bad)
        with pytest.raises(ValueError, match="CELLFATE_NUM_THREADS"):
            n_threads()
    monkeypatch.delenv("CELLFATE_NUM_THREADS")
    assert n_threads() >= 1
