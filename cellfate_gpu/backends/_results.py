"""Result values of the heavy operations: frozen, with a status and the work they cost."""

from __future__ import annotations

import dataclasses
import enum
from typing import Any

import numpy as np

__all__ = ["EigResult", "SchurResult", "SolveResult", "Status"]


class Status(enum.Enum):
    """How an iterative computation ended."""

    CONVERGED = "converged"
    MAX_ITER = "max_iter"
    BREAKDOWN = "breakdown"
    NONFINITE_INPUT = "nonfinite_input"

    @property
    def ok(self) -> bool:
        """Whether the result can be used as it is."""
        return self is Status.CONVERGED


def _host(x: Any) -> Any:
    """Bring one result field to NumPy without knowing its backend (explicit, named transfer)."""
    if x is None or isinstance(x, np.ndarray | int | float | str):
        return x
    if hasattr(x, "get"):  # CuPy and its test double
        return x.get()
    if hasattr(x, "to_host"):
        return x.to_host()
    if hasattr(x, "__dlpack__"):
        try:
            return np.from_dlpack(x)
        except (TypeError, RuntimeError, BufferError):
            pass
    return np.asarray(x)


@dataclasses.dataclass(frozen=True)
class _Result:
    status: Status
    iterations: int
    matvecs: int
    seconds: float
    backend: str

    @property
    def converged(self) -> bool:
        """Whether :attr:`status` is :attr:`Status.CONVERGED`."""
        return self.status is Status.CONVERGED

    def to_host(self):
        """Return a copy whose array fields are NumPy arrays on the host."""
        changes = {
            f.name: _host(getattr(self, f.name))
            for f in dataclasses.fields(self)
            if f.name not in {"status", "iterations", "matvecs", "seconds", "backend", "method", "message", "prepared"}
        }
        return dataclasses.replace(self, **changes)


@dataclasses.dataclass(frozen=True)
class SolveResult(_Result):
    r"""Solution of :math:`A X = B` for a block of right-hand sides.

    Attributes
    ----------
    X
        Solution, ``(n, m)`` (or ``(n,)`` for a vector right-hand side), on the backend.
    residual_norms
        Host array of relative residuals :math:`\\|b_j - A x_j\\| / \\|b_j\\|`, one per column.
    method
        The method actually used (``"gmres"``, ``"direct"``, ``"ksp:gmres"``, ...).
    message
        Why the status is not ``CONVERGED`` (empty otherwise).
    prepared
        The :class:`~cellfate_gpu.linalg.solvers.Prepared` solver that produced ``X``: pass it as
        ``solver=`` to solve again with the same matrix without repeating the set-up (the
        factorisation or multigrid hierarchy lives here, not in a global).
    """

    X: Any = None
    residual_norms: np.ndarray | None = None
    method: str = ""
    message: str = ""
    prepared: Any = dataclasses.field(default=None, repr=False, compare=False)


@dataclasses.dataclass(frozen=True)
class SchurResult(_Result):
    r"""Partial real Schur decomposition :math:`A Q = Q R`.

    Attributes
    ----------
    Q
        ``(n, k')`` orthonormal basis of the invariant subspace, on the backend.
    R
        ``(k', k')`` quasi-upper-triangular real Schur factor (host array).
    eigenvalues
        ``(k',)`` complex host array, the eigenvalues of ``R`` in the order of its diagonal
        blocks, sorted by ``which``.
    residual_norms
        Host array, :math:`\\|A q_j - (Q R)_j\\|` per column (Ritz estimates).
    """

    Q: Any = None
    R: np.ndarray | None = None
    eigenvalues: np.ndarray | None = None
    residual_norms: np.ndarray | None = None
    which: str = "LR"


@dataclasses.dataclass(frozen=True)
class EigResult(_Result):
    r"""Partial eigendecomposition :math:`A V = V \\Lambda` (and :math:`W^H A = \\Lambda W^H`).

    Attributes
    ----------
    eigenvalues
        ``(k,)`` complex host array sorted by ``which``.
    vectors
        ``(n, k)`` right eigenvectors on the backend (``None`` if not requested).
    left_vectors
        ``(n, k)`` left eigenvectors on the backend (``None`` unless ``left=True``).
    """

    eigenvalues: np.ndarray | None = None
    vectors: Any = None
    left_vectors: Any = None
    residual_norms: np.ndarray | None = None
    which: str = "LR"
