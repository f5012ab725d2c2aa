r"""The one dense real-Schur reordering: wanted eigenvalues first, conjugate pairs kept together.

Every partial Schur decomposition in the package (the generic Krylov-Schur, the SLEPc path of the
``petsc`` backend, the dense references of the tests) orders its small projected problem here.
A real Schur form :math:`S = Z T Z^\top` has a quasi-upper-triangular :math:`T` whose diagonal
blocks are 1x1 (real eigenvalues) or 2x2 (complex-conjugate pairs). The blocks are moved one at a
time with LAPACK ``dtrexc`` (each swap is an orthogonal similarity, so :math:`Z T Z^\top` stays
:math:`S`), most wanted first, as ranked by :func:`sort_key`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import scipy.linalg as sla
import scipy.sparse as sp
from scipy.linalg import lapack

__all__ = [
    "WHICH",
    "block_starts",
    "dense_sorted_schur",
    "order_schur",
    "schur_eigenvalues",
    "sort_key",
    "sorted_real_schur",
    "split_safe",
]

#: The eigenvalue selections, as in ARPACK and SLEPc (``LI``/``SI``: imaginary parts by magnitude).
WHICH = ("LR", "LM", "SR", "SM", "LI", "SI")

_KEYS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "LR": lambda z: z.real,
    "SR": lambda z: -z.real,
    "LM": lambda z: np.abs(z),
    "SM": lambda z: -np.abs(z),
    "LI": lambda z: np.abs(z.imag),
    "SI": lambda z: -np.abs(z.imag),
}


def sort_key(which: str) -> Callable[[np.ndarray], np.ndarray]:
    """Return ``key(eigenvalues) -> scores``; a larger score means more wanted.

    This is the one place ``which`` is validated. ``LI``/``SI`` use the absolute imaginary part so
    that both members of a conjugate pair score the same (a pair is never split by the selection).

    Raises
    ------
    ValueError
        If ``which`` is not one of :data:`WHICH`.
    """
    if which not in _KEYS:
        raise ValueError(f"which must be one of {list(WHICH)}, got {which!r}.")
    return _KEYS[which]


def _is_pair(T: np.ndarray, i: int) -> bool:
    return i + 1 < T.shape[0] and T[i + 1, i] != 0.0


def block_starts(T: np.ndarray) -> list[tuple[int, int]]:
    """``(start, size)`` of the 1x1 and 2x2 diagonal blocks of a quasi-upper-triangular ``T``."""
    out, i, n = [], 0, T.shape[0]
    while i < n:
        size = 2 if _is_pair(T, i) else 1
        out.append((i, size))
        i += size
    return out


def _block_eigenvalue(T: np.ndarray, start: int, size: int) -> complex:
    """The eigenvalue of a diagonal block (for a 2x2 block, the one with positive imaginary part)."""
    if size == 1:
        return complex(T[start, start])
    a, b, c, d = T[start, start], T[start, start + 1], T[start + 1, start], T[start + 1, start + 1]
    disc = complex((a - d) ** 2 / 4.0 + b * c)
    root = np.sqrt(disc)
    lam = complex((a + d) / 2.0) + root
    return lam if lam.imag >= 0 else lam.conjugate()


def schur_eigenvalues(T: np.ndarray) -> np.ndarray:
    """Eigenvalues of a quasi-upper-triangular ``T`` in diagonal order (pairs: ``+i`` part first)."""
    out: list[complex] = []
    for start, size in block_starts(T):
        lam = _block_eigenvalue(T, start, size)
        out.extend([lam, lam.conjugate()] if size == 2 else [lam])
    return np.asarray(out, dtype=np.complex128)


def split_safe(T: np.ndarray, p: int) -> int:
    """Smallest ``p' >= p`` that does not cut a 2x2 diagonal block of ``T``."""
    return p + 1 if 0 < p < T.shape[0] and T[p, p - 1] != 0.0 else p


def order_schur(
    T: np.ndarray, Z: np.ndarray, which: str, count: int | None = None, *, strict: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Reorder a real Schur form ``S = Z T Z^T`` so that the most wanted blocks come first.

    Selection sort over the diagonal blocks with LAPACK ``dtrexc``; ties keep their order. Only the
    leading ``count`` eigenvalues are placed (all by default).

    Parameters
    ----------
    T, Z
        Quasi-upper-triangular ``T`` and orthogonal ``Z`` (copied, not modified).
    which
        Selection, see :func:`sort_key`.
    count
        How many leading eigenvalues to place.
    strict
        Raise :class:`numpy.linalg.LinAlgError` when ``dtrexc`` refuses an ill-conditioned swap;
        by default the rest is left as it is (the order so far is kept) rather than lose accuracy.
    """
    key = sort_key(which)
    T, Z = np.array(T, dtype=np.float64, order="F"), np.array(Z, dtype=np.float64, order="F")
    n = T.shape[0]
    count = n if count is None else min(count, n)
    pos = 0
    while pos < count:
        blocks = [b for b in block_starts(T) if b[0] >= pos]
        scores = key(np.array([_block_eigenvalue(T, *b) for b in blocks]))
        best = blocks[int(np.argmax(scores))]
        if best[0] != pos:
            T, Z, info = lapack.dtrexc(T, Z, best[0] + 1, pos + 1)
            if info != 0:
                if strict:
                    raise np.linalg.LinAlgError(f"LAPACK trexc failed to reorder the Schur form (info={info}).")
                break
        pos += 2 if _is_pair(T, pos) else 1
    return T, Z


def sorted_real_schur(R: np.ndarray, which: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    r"""Real Schur form :math:`R = Z T Z^\top` of a small dense ``R``, diagonal blocks ordered by ``which``.

    Returns
    -------
    T, Z, eigenvalues
        Quasi-upper-triangular :math:`T` (rounding below the first subdiagonal cleared), orthogonal
        :math:`Z`, and the eigenvalues of :math:`T` in diagonal order (complex).
    """
    sort_key(which)
    T, Z = sla.schur(np.asarray(R, dtype=np.float64), output="real")
    T, Z = order_schur(T, Z, which, strict=True)
    T = np.triu(T, -1)
    return T, Z, schur_eigenvalues(T)


def dense_sorted_schur(A: Any, k: int, which: str = "LR") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    r"""Dense reference: the leading ``k`` Schur vectors of ``A`` for ``which`` (small ``n`` only).

    ``scipy.linalg.schur`` of the whole matrix and :func:`order_schur`; if the ``k``-th eigenvalue
    is one of a conjugate pair, ``k + 1`` columns are returned.

    Returns
    -------
    Q, R, eigenvalues
        ``n x k'`` orthonormal, ``k' x k'`` quasi-upper-triangular (:math:`A Q = Q R`), the ``k'``
        eigenvalues in order.
    """
    dense = A.toarray() if sp.issparse(A) else np.asarray(A, dtype=np.float64)
    T, Z = sla.schur(dense, output="real")
    T, Z = order_schur(T, Z, which, count=k + 1)
    kk = split_safe(T, k)
    return Z[:, :kk], T[:kk, :kk], schur_eigenvalues(T[:kk, :kk])
