"""Krylov-Schur: restarted Arnoldi for a partial real Schur form (Stewart 2001).

Written against the backend's array namespace so NumPy, CuPy and JAX arrays all work. The only
host visits are the small projected problem, once per restart: the ``(m + 1) x m`` matrix
:math:`H` of the Krylov-Schur relation is read, Schur-factorised and reordered on the host
(:func:`scipy.linalg.schur`, LAPACK ``trexc``), and the ``m x p`` rotation :math:`Z` goes back.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import scipy.linalg as sla
from scipy.linalg import lapack

from cellfate_gpu.backends._results import SchurResult, Status

__all__ = ["default_ncv", "krylov_schur", "order_schur", "sort_key"]


def default_ncv(k: int, n: int) -> int:
    """Default Krylov subspace size for ``k`` wanted eigenvalues: SLEPc's ``max(2k, k + 15)``, capped at ``n``.

    The 15 spare vectors matter for small ``k`` with clustered spectra: with ARPACK's ``2k + 1``
    a random 800x800 stochastic matrix (``which='LM'``, ``k=10``, moduli ratio 0.996 at the cut)
    stalled for 380 restarts; with ``k + 15`` it converges, and in fewer matvecs on the test
    matrices (tests/test_linalg_generic.py).
    """
    return min(n, max(2 * k, k + 15))


def sort_key(which: str):
    """Return ``key(eigenvalues) -> scores``; larger score means more wanted.

    ``LI``/``SI`` use the absolute imaginary part so that both members of a conjugate pair score
    the same (a pair is never split by the selection).
    """
    keys = {
        "LR": lambda z: z.real,
        "SR": lambda z: -z.real,
        "LM": lambda z: np.abs(z),
        "SM": lambda z: -np.abs(z),
        "LI": lambda z: np.abs(z.imag),
        "SI": lambda z: -np.abs(z.imag),
    }
    if which not in keys:
        raise ValueError(f"which must be one of {sorted(keys)}, got {which!r}.")
    return keys[which]


def _blocks(T: np.ndarray) -> list[tuple[int, int]]:
    """``(start, size)`` of the 1x1 and 2x2 diagonal blocks of a quasi-triangular matrix."""
    out, i, n = [], 0, T.shape[0]
    while i < n:
        size = 2 if i + 1 < n and T[i + 1, i] != 0.0 else 1
        out.append((i, size))
        i += size
    return out


def _block_eigenvalue(T: np.ndarray, start: int, size: int) -> complex:
    if size == 1:
        return complex(T[start, start])
    a, b, c, d = T[start, start], T[start, start + 1], T[start + 1, start], T[start + 1, start + 1]
    disc = complex((a - d) ** 2 / 4.0 + b * c)
    return complex((a + d) / 2.0) + np.sqrt(disc) * (1 if disc.imag >= 0 else -1)


def order_schur(T: np.ndarray, Z: np.ndarray, which: str, count: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Reorder a real Schur form ``S = Z T Z^T`` so that the most wanted blocks come first.

    Selection sort over diagonal blocks with LAPACK ``dtrexc`` (each swap is orthogonal, so
    ``Z T Z^T`` is unchanged); conjugate pairs stay in their 2x2 blocks. Only the leading
    ``count`` eigenvalues are sorted (all by default).
    """
    key = sort_key(which)
    T, Z = np.array(T, dtype=np.float64, order="F"), np.array(Z, dtype=np.float64, order="F")
    n = T.shape[0]
    count = n if count is None else min(count, n)
    pos = 0
    while pos < count:
        blocks = [b for b in _blocks(T) if b[0] >= pos]
        scores = [key(np.array([_block_eigenvalue(T, *b)]))[0] for b in blocks]
        best = blocks[int(np.argmax(scores))]
        if best[0] != pos:
            T, Z, info = lapack.dtrexc(T, Z, best[0] + 1, pos + 1)
            if info != 0:  # ill-conditioned swap: leave the rest as it is rather than lose accuracy
                break
        pos += 2 if pos + 1 < n and T[pos + 1, pos] != 0.0 else 1
    return T, Z


def _eigenvalues(T: np.ndarray) -> np.ndarray:
    out = []
    for start, size in _blocks(T):
        lam = _block_eigenvalue(T, start, size)
        out.extend([lam, lam.conjugate()] if size == 2 else [lam])
    return np.asarray(out, dtype=np.complex128)


def _split_safe(T: np.ndarray, p: int) -> int:
    """Smallest ``p' >= p`` that does not cut a 2x2 block of ``T``."""
    return p + 1 if 0 < p < T.shape[0] and T[p, p - 1] != 0.0 else p


class _Basis:
    """Krylov basis of ``n``-vectors, preallocated when the namespace allows item assignment.

    The buffer holds one basis vector per *row* (shape ``(size, n)``, C order): writing or reading
    a vector touches contiguous memory, and ``first(j)`` is the transposed view, which BLAS takes
    as is. Column storage (``(n, size)``) made every write strided: 2.4 of 26 s at 100k cells.
    """

    def __init__(self, xp: Any, template: Any, size: int, mutable: bool):
        self.xp, self.mutable = xp, mutable
        n = template.shape[0]
        self.buffer = xp.zeros((size, n), dtype=xp.float64, device=_device(template)) if mutable else None
        self.columns: list[Any] = []

    def set(self, j: int, v: Any) -> None:
        if self.mutable:
            self.buffer[j, :] = v
        elif j == len(self.columns):
            self.columns.append(v)
        else:
            self.columns[j] = v

    def first(self, j: int) -> Any:
        """The first ``j`` columns as an ``(n, j)`` array."""
        if self.mutable:
            return self.buffer[:j, :].T
        return self.xp.stack(self.columns[:j], axis=1)

    def column(self, j: int) -> Any:
        return self.buffer[j, :] if self.mutable else self.columns[j]

    def replace_first(self, V: Any, residual: Any) -> None:
        """Set the basis to the columns of ``V`` followed by ``residual``."""
        p = V.shape[1]
        if self.mutable:
            self.buffer[:p, :] = V.T
            self.buffer[p, :] = residual
        else:
            self.columns = [V[:, i] for i in range(p)] + [residual]


#: DGKS criterion for the second Gram-Schmidt pass (ARPACK's and SLEPc's choice, 1/sqrt(2)).
_DGKS_ETA = 1.0 / math.sqrt(2.0)


def _device(x: Any) -> Any:
    return getattr(x, "device", None)


def krylov_schur(
    backend,
    A: Any,
    k: int,
    *,
    which: str = "LR",
    tol: float = 1e-10,
    maxiter: int | None = None,
    ncv: int | None = None,
    v0: Any = None,
    seed: int = 0,
) -> SchurResult:
    r"""Partial real Schur form :math:`A Q = Q R` of the ``k`` eigenvalues selected by ``which``.

    Maintains the Krylov-Schur relation :math:`A V_m = V_m S + v_{m+1} b^T` with orthonormal
    :math:`[V_m, v_{m+1}]`. Each restart factorises :math:`S = Z T Z^T` (real Schur, wanted
    eigenvalues first), keeps the leading ``p`` Schur vectors :math:`V_m Z_{:, :p}` and the
    coupling :math:`b^T Z_{:, :p}`, and extends the basis again with Arnoldi steps
    (classical Gram-Schmidt applied twice, CGS2; on host arrays the second pass runs only when the
    DGKS test asks for it). A Schur vector is converged when its coupling
    :math:`|(b^T Z)_j| \le \tfrac{1}{2}\,tol\,\|A\| / \sqrt{k}`, so that
    :math:`\|A Q - Q R\|_2 \le tol \|A\|`; converged leading couplings are set to zero (locking).

    Parameters
    ----------
    backend
        A :class:`~cellfate_gpu.backends.Backend`; its ``xp``, ``spmm``, ``asarray`` and ``to_host``
        are all this function uses.
    A
        Native square matrix of the backend.
    k
        Number of wanted Schur vectors (``k + 1`` are returned if ``k`` would split a conjugate pair).
    which
        ``LR``, ``SR``, ``LM``, ``SM``, ``LI``, ``SI``.
    tol
        Relative tolerance (see above).
    maxiter
        Maximum number of restarts (default ``max(100, 10 * n // ncv)``).
    ncv
        Basis size ``m`` (default ``min(n, max(2 k + 1, 20))``).
    v0
        Start vector on the backend (default: seeded random, generated on the host).
    seed
        Seed of the default start vector (and of fresh vectors after an invariant subspace).

    Returns
    -------
    SchurResult
        ``iterations`` counts restarts; ``residual_norms`` are the final couplings ``|b_j|``.
    """
    start_time = time.perf_counter()
    xp = backend.xp
    n = int(A.shape[0])
    m = min(n, ncv) if ncv is not None else default_ncv(k, n)
    m = max(m, min(n, k + 2))
    maxiter = maxiter if maxiter is not None else max(100, 10 * n // max(m, 1))
    mutable = getattr(backend, "mutable_arrays", True)
    rng = np.random.default_rng(seed)
    sort_key(which)  # validates which

    def fresh_vector() -> Any:
        return backend.asarray(rng.standard_normal(n))

    def matvec(v: Any) -> Any:
        return xp.astype(backend.spmm(A, xp.astype(v, A.dtype) if A.dtype != xp.float64 else v), xp.float64)

    if v0 is None:
        v = fresh_vector()
    else:
        v = backend.asarray(v0) if isinstance(v0, np.ndarray) else v0
    v = xp.astype(v, xp.float64)
    v = v / xp.linalg.vector_norm(v)
    basis = _Basis(xp, v, m + 1, mutable)
    basis.set(0, v)
    H = np.zeros((m + 1, m))  # host copy of the projected matrix, refreshed once per restart
    H_dev_cols: list[Any] = []  # device columns of H produced by Arnoldi since the last restart
    p = 0  # number of kept (Schur) columns at the start of the current sweep
    matvecs, restarts, anorm = 0, 0, 0.0
    status = Status.MAX_ITER
    nconv = 0
    T = Z = b = None

    while True:
        # ---- Arnoldi extension from column p to m (all on the device)
        H_dev_cols = []
        for j in range(p, m):
            w = matvec(basis.column(j))
            matvecs += 1
            Vj = basis.first(j + 1)
            h = Vj.T @ w
            w_in = w
            w = w - Vj @ h
            beta = xp.linalg.vector_norm(w)
            # Second Gram-Schmidt pass (CGS2) restores orthogonality lost to cancellation. On host
            # arrays it runs only when needed (DGKS: the norm fell below 1/sqrt(2) of the input's,
            # as in ARPACK and SLEPc), which halves the orthogonalisation traffic. On a device the
            # test would be a host sync per matvec, so there both passes always run.
            if not (isinstance(w, np.ndarray) and float(beta) > _DGKS_ETA * float(np.linalg.norm(w_in))):
                h2 = Vj.T @ w
                w = w - Vj @ h2
                h = h + h2
                beta = xp.linalg.vector_norm(w)
            # A zero beta means an invariant subspace; it is detected on the host at the restart.
            safe = xp.where(beta > 0, beta, xp.asarray(1.0, dtype=xp.float64, device=_device(w)))
            basis.set(j + 1, w / safe)
            H_dev_cols.append(
                xp.concat([h, xp.reshape(beta, (1,)), xp.zeros(m - j - 1, dtype=xp.float64, device=_device(w))])
            )

        # ---- one host read per restart: the new columns of H
        if H_dev_cols:
            new = backend.to_host(xp.stack(H_dev_cols, axis=1))
            H[:, p:m] = new
        if not np.all(np.isfinite(H)):
            status = Status.NONFINITE_INPUT
            break
        anorm = max(anorm, float(np.linalg.norm(H[:m, :m], 2)) if m <= 200 else float(np.linalg.norm(H[:m, :m])))
        threshold = 0.5 * tol * max(anorm, np.finfo(float).tiny) / math.sqrt(k)

        # Invariant subspace: the first tiny subdiagonal entry in the new Arnoldi columns ends the basis.
        m_eff = m
        for j in range(p, m):
            if H[j + 1, j] <= np.finfo(float).eps * max(anorm, 1e-300) * 10:
                m_eff = j + 1
                break
        S = H[:m_eff, :m_eff]
        bvec = H[m_eff, :m_eff].copy() if m_eff == m else np.zeros(m_eff)
        T, Z = sla.schur(S, output="real")
        T, Z = order_schur(T, Z, which)
        b = bvec @ Z
        # converged prefix (in wanted order) of Schur vectors
        nconv = 0
        while nconv < min(k, m_eff) and abs(b[nconv]) <= threshold:
            nconv += 1
        restarts += 1
        k_out = _split_safe(T, min(k, m_eff))
        if nconv >= min(k, m_eff) and m_eff >= k:
            # converged: also the partner of a pair at the boundary must be converged
            if k_out == k or abs(b[k]) <= threshold:
                status = Status.CONVERGED
                break
        if restarts >= maxiter:
            status = Status.MAX_ITER
            break

        # ---- restart: keep p Schur vectors, lock the converged ones
        if m_eff < m:
            # Invariant subspace smaller than the basis: keep it all, continue from a fresh direction.
            p = m_eff
            b[:] = 0.0
            Zd = backend.asarray(Z)
            Vp = basis.first(m_eff) @ Zd
            r = fresh_vector()
            for _ in range(2):
                r = r - Vp @ (Vp.T @ r)
            r = r / xp.linalg.vector_norm(r)
            basis.replace_first(Vp, r)
        else:
            p = min(nconv + max((m - nconv) // 2, 1), m - 1)
            p = max(p, min(k, m - 1))
            p = _split_safe(T, p)
            if p >= m:
                p = m - 2 if T[m - 1, m - 2] != 0.0 else m - 1
            b[:nconv] = 0.0  # locking: converged couplings are deflated exactly
            Zd = backend.asarray(np.ascontiguousarray(Z[:, :p]))
            Vp = basis.first(m) @ Zd
            basis.replace_first(Vp, basis.column(m))
        H[:] = 0.0
        H[:p, :p] = T[:p, :p]
        H[p, :p] = b[:p]

    if T is None:  # non-finite values before the first restart
        return SchurResult(
            status=status,
            iterations=restarts,
            matvecs=matvecs,
            seconds=time.perf_counter() - start_time,
            backend=backend.name,
            which=which,
        )
    k_out = _split_safe(T, min(k, T.shape[0]))
    Zd = backend.asarray(np.ascontiguousarray(Z[:, :k_out]))
    Q = basis.first(Z.shape[0]) @ Zd
    R = np.array(T[:k_out, :k_out])
    eigenvalues = _eigenvalues(R)
    return SchurResult(
        status=status,
        iterations=restarts,
        matvecs=matvecs,
        seconds=time.perf_counter() - start_time,
        backend=backend.name,
        Q=Q,
        R=R,
        eigenvalues=eigenvalues,
        residual_norms=np.abs(b[:k_out]),
        which=which,
    )
