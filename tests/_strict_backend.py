"""A test-only backend over ``array_api_strict``: proves the generic Krylov code uses nothing but the
array API, and counts every device-to-host read."""

from __future__ import annotations

import array_api_strict as xps
import numpy as np

from cellfate_gpu.backends import Backend


class StrictMatrix:
    """A 'sparse' matrix stored dense as a strict array (enough for the linalg contract)."""

    def __init__(self, dense):
        self.dense = dense
        self.shape = tuple(dense.shape)
        self.dtype = dense.dtype


class StrictBackend(Backend):
    name = "strict"
    host_is_free = False

    def __init__(self):
        self.reads = 0
        self.writes = 0

    @classmethod
    def why_unavailable(cls):
        return None

    @property
    def xp(self):
        return xps

    def asarray(self, x, dtype=None):
        self.writes += 1
        return xps.asarray(np.asarray(x, dtype=dtype))

    def to_host(self, x):
        self.reads += 1
        return np.from_dlpack(x).copy()

    def from_scipy_csr(self, A, dtype=None):
        return StrictMatrix(xps.asarray(A.toarray()))

    def to_scipy_csr(self, A):
        import scipy.sparse as sp

        return sp.csr_matrix(np.from_dlpack(A.dense))

    def is_native(self, A):
        return isinstance(A, StrictMatrix)

    def csr_components(self, A):
        # the CSR arrays of the dense storage, as strict arrays (the structure checks of linalg use them)
        import scipy.sparse as sp

        csr = sp.csr_matrix(np.from_dlpack(A.dense))
        return xps.asarray(csr.data), xps.asarray(csr.indices), xps.asarray(csr.indptr)

    def csr_from_components(self, data, indices, indptr, shape):
        raise NotImplementedError

    def segment_sum(self, values, indptr):
        raise NotImplementedError

    def segment_max(self, values, indptr):
        raise NotImplementedError

    def row_sums(self, A):
        return xps.sum(A.dense, axis=1)

    def _spmm(self, A, X):
        return A.dense @ X

    def transpose(self, A):
        return StrictMatrix(xps.matrix_transpose(A.dense))

    def linear_combination(self, coeffs, mats):
        out = coeffs[0] * mats[0].dense
        for c, M in zip(coeffs[1:], mats[1:], strict=True):
            out = out + c * M.dense
        return StrictMatrix(out)

    def multiply(self, A, B):
        return StrictMatrix(A.dense * B.dense)

    def submatrix(self, A, rows, cols):
        raise NotImplementedError

    def eye(self, n, dtype=None):
        return StrictMatrix(xps.eye(n, dtype=xps.float64))
