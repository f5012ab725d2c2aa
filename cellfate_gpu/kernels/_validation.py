r"""What a kernel accepts: the transition-matrix invariants and the checks of its inputs.

Every matrix a kernel stores is a Markov transition matrix :math:`T \in \mathbb{R}^{n \times n}`:

.. math::

    T_{ij} \ge 0, \qquad T_{ij} \text{ finite}, \qquad
    \Bigl|\sum_j T_{ij} - 1\Bigr| \le \varepsilon \quad (i = 1, \dots, n),

with :math:`n` the number of cells (at least one) and :math:`\varepsilon` = :data:`ROW_SUM_TOL`.
:func:`validate_transition_matrix` checks this on the matrix's backend (one host read of three
counts); :func:`host_transition_csr` turns a user's matrix (SciPy sparse or array-like) into the
host CSR a kernel moves to its backend; :func:`check_no_options` refuses keyword options a
method does not know instead of swallowing them in ``**kwargs``; :data:`JOBLIB_BACKENDS` are the
``backend=`` names CellRank passes to joblib, which kernels and estimators accept and ignore.

Plain functions with no kernel state: :class:`~cellfate_gpu.kernels.Kernel`, the kernels and
the estimators call them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import scipy.sparse as sp

from cellfate_gpu.backends import Backend

__all__ = ["JOBLIB_BACKENDS", "ROW_SUM_TOL", "check_no_options", "host_transition_csr", "validate_transition_matrix"]

#: Rows of T must sum to one within this tolerance.
ROW_SUM_TOL = 1e-6

#: CellRank's joblib ``backend=`` names: accepted for compatibility, meaning the default backend.
JOBLIB_BACKENDS = ("loky", "threading", "multiprocessing")


def validate_transition_matrix(backend: Backend, T: Any, n: int | None = None) -> None:
    """Check that native ``T`` is square, finite, non-negative and row-stochastic (on its backend).

    Parameters
    ----------
    backend
        The backend ``T`` lives on.
    T
        Native CSR matrix of ``backend``.
    n
        Expected number of cells (``None``: any).

    Raises
    ------
    ValueError
        Naming the problem and how many entries or rows are affected.
    """
    shape = tuple(T.shape)
    if len(shape) != 2 or shape[0] != shape[1]:
        raise ValueError(f"Transition matrix must be square, got shape {shape}.")
    if n is not None and shape[0] != n:
        raise ValueError(f"Transition matrix has shape {shape}, expected ({n}, {n}) for {n} cells.")
    if shape[0] == 0:
        raise ValueError("Transition matrix has no cells (shape (0, 0)); a Markov chain needs at least one state.")
    xp = backend.xp
    data, _, indptr = backend.csr_components(T)
    row_sums = backend.segment_sum(xp.astype(data, xp.float64), indptr)
    bad = backend.to_host(
        xp.stack(
            [
                xp.sum(xp.astype(~xp.isfinite(data), xp.int64)),
                xp.sum(xp.astype(data < 0, xp.int64)),
                xp.sum(xp.astype(~(xp.abs(row_sums - 1.0) <= ROW_SUM_TOL), xp.int64)),
            ]
        )
    )
    if bad[0]:
        raise ValueError(f"Transition matrix has {int(bad[0])} non-finite entries.")
    if bad[1]:
        raise ValueError(f"Transition matrix has {int(bad[1])} negative entries.")
    if bad[2]:
        raise ValueError(f"{int(bad[2])} row(s) of the transition matrix do not sum to 1 (tolerance {ROW_SUM_TOL:g}).")


def host_transition_csr(matrix: Any) -> sp.csr_matrix:
    """A user's matrix (SciPy sparse, NumPy array or nested sequence) as square float64 SciPy CSR.

    Duplicate entries of a sparse input are summed (as CSR arithmetic would); a float64 CSR
    input may share its arrays with the result. Stochasticity is checked later, on the backend,
    by :func:`validate_transition_matrix`.

    Raises
    ------
    TypeError
        The input is not numeric.
    ValueError
        It is not 2-D, or not square.
    """
    if not sp.issparse(matrix):
        try:
            matrix = np.asarray(matrix, dtype=np.float64)
        except (TypeError, ValueError) as e:
            raise TypeError(
                f"A transition matrix must be numeric (sparse or dense), got {type(matrix).__name__}: {e}"
            ) from None
        if matrix.ndim != 2:
            raise ValueError(f"Transition matrix must be 2-D, got shape {matrix.shape}.")
    if matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"Transition matrix must be square, got shape {matrix.shape}.")
    host = sp.csr_matrix(matrix, dtype=np.float64)
    host.sum_duplicates()
    return host


def check_no_options(where: str, options: Mapping[str, Any], allowed: tuple[str, ...] = ()) -> None:
    """Refuse keyword options that ``where`` does not know (instead of swallowing them in ``**kwargs``).

    Parameters
    ----------
    where
        The method, as the message names it (``"PseudotimeKernel.compute_transition_matrix"``).
    options
        The keyword options it was given.
    allowed
        The ones it accepts.

    Raises
    ------
    TypeError
        Naming every unknown option (and the accepted ones, if any).
    """
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        valid = f"; accepted here: {sorted(allowed)}" if allowed else ""
        raise TypeError(f"{where} got unknown option(s) {unknown}{valid}.")
