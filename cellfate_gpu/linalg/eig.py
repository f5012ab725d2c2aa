r"""Partial eigendecompositions from partial Schur forms.

With :math:`A Q = Q R` and :math:`R Y = Y \Lambda` (a small dense problem on the host), the
right eigenvectors are :math:`V = Q Y`. Left eigenvectors :math:`w^H A = \lambda w^H` are the right
eigenvectors of :math:`A^T`, from a second partial Schur form.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import scipy.linalg as sla

from cellfate_gpu.backends._results import EigResult, Status
from cellfate_gpu.linalg._schur_sort import sort_key

__all__ = ["eig_from_schur", "vectors_from_schur"]


def vectors_from_schur(backend, schur, k: int) -> tuple[np.ndarray, Any]:
    """Eigenvalues (host, sorted by ``schur.which``) and eigenvectors ``Q Y`` (backend) of the first ``k``.

    Vectors are real when every selected eigenvalue is real, else complex; each has unit norm.
    """
    lam, Y = sla.eig(schur.R)
    order = np.argsort(-sort_key(schur.which)(lam), kind="stable")[:k]
    lam, Y = lam[order], Y[:, order]
    if np.all(lam.imag == 0):
        lam, Y = lam.real, Y.real
    Y = Y / np.linalg.norm(Y, axis=0)
    xp = backend.xp
    Q = schur.Q
    if np.iscomplexobj(Y):
        Yr, Yi = backend.asarray(np.ascontiguousarray(Y.real)), backend.asarray(np.ascontiguousarray(Y.imag))
        V = xp.astype(Q @ Yr, xp.complex128) + 1j * xp.astype(Q @ Yi, xp.complex128)
    else:
        V = Q @ backend.asarray(np.ascontiguousarray(Y))
    return lam, V


def _match(lam: np.ndarray, mu: np.ndarray) -> list[int]:
    """For every ``lam_j`` the index of the nearest unused ``mu_i``.

    A repeated eigenvalue (1 on a reducible chain) so gets distinct left vectors.
    """
    free = np.ones(mu.size, dtype=bool)
    out = []
    for lam_j in lam:
        dist = np.where(free, np.abs(mu - lam_j), np.inf)
        i = int(np.argmin(dist)) if free.any() else int(np.argmin(np.abs(mu - lam_j)))
        free[i] = False
        out.append(i)
    return out


def eig_from_schur(
    backend,
    A: Any,
    k: int,
    *,
    which: str = "LR",
    tol: float = 1e-10,
    maxiter: int | None = None,
    left: bool = False,
    vectors: bool = True,
) -> EigResult:
    """The ``k`` eigenvalues selected by ``which`` with right (and optionally left) eigenvectors."""
    start = time.perf_counter()
    right = backend.partial_schur(A, k, which=which, tol=tol, maxiter=maxiter)
    if right.R is None:
        return EigResult(
            status=right.status,
            iterations=right.iterations,
            matvecs=right.matvecs,
            seconds=time.perf_counter() - start,
            backend=backend.name,
            which=which,
        )
    lam, V = vectors_from_schur(backend, right, k)
    status, iterations, matvecs = right.status, right.iterations, right.matvecs
    W = None
    if left:
        lschur = backend.partial_schur(backend.transpose(A), k, which=which, tol=tol, maxiter=maxiter)
        iterations, matvecs = iterations + lschur.iterations, matvecs + lschur.matvecs
        if lschur.status is not Status.CONVERGED:
            status = lschur.status
        if lschur.R is not None:
            # A^T v = mu v  =>  w = conj(v) satisfies w^H A = mu w^H; pair every lambda_j with its mu.
            mu, Wt = vectors_from_schur(backend, lschur, lschur.R.shape[0])
            pick = _match(np.atleast_1d(lam), np.asarray(mu))
            W = backend.xp.take(Wt, backend.asarray(np.asarray(pick)), axis=1)
            if np.iscomplexobj(np.asarray(mu)):
                W = backend.xp.conj(W)
    return EigResult(
        status=status,
        iterations=iterations,
        matvecs=matvecs,
        seconds=time.perf_counter() - start,
        backend=backend.name,
        eigenvalues=np.asarray(lam),
        vectors=V if vectors else None,
        left_vectors=W,
        residual_norms=right.residual_norms,
        which=which,
    )
