r"""Closed communicating classes of a stochastic matrix, and the invariant subspace of its eigenvalue 1.

A row-stochastic :math:`T` (``n x n``, :math:`T \ge 0`, :math:`T \mathbf 1 = \mathbf 1`) is the
transition matrix of a Markov chain on the graph with an edge :math:`i \to j` for every stored
:math:`T_{ij} > 0`. Its strongly connected components are the *communicating classes*; a class is
*closed* when no edge leaves it (it is a sink of the condensation), and the states outside the
closed classes are *transient*. Ordering the states closed classes first,

.. math::

    T = \begin{pmatrix} P_1 & & & \\ & \ddots & & \\ & & P_r & \\ R_1 & \cdots & R_r & Q \end{pmatrix},

with irreducible stochastic :math:`P_c` and a transient block :math:`Q` of spectral radius
:math:`< 1`. So the eigenvalue 1 is semisimple with multiplicity :math:`r`, the number of closed
classes, and its right invariant subspace is spanned by the absorption probabilities

.. math::

    h_c = \mathbf 1_{C_c} \text{ on the closed states}, \qquad (I - Q)\, h_{c,S} = R_c \mathbf 1,

which sum to :math:`\mathbf 1`. A single-vector Krylov method cannot find a multiple eigenvalue
(its Krylov space holds one direction of the eigenspace), so :func:`unit_eigenspace` computes
this subspace exactly and the Krylov-Schur iteration runs on its orthogonal complement. For the
transpose (column-stochastic :math:`T^\top`, left eigenvectors) the subspace is spanned by the
stationary distributions :math:`\pi_c` of the classes, each supported on :math:`C_c`.

Everything here is :math:`O(\mathrm{nnz})` graph work on the host sparsity pattern
(:func:`scipy.sparse.csgraph.connected_components`) plus, when there are transient states, one
block solve with :math:`I - Q` on the backend.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components

from cellfate_gpu._logging import debug, info

__all__ = ["ChainClasses", "ReducibleChainError", "chain_classes", "stochastic_kind", "unit_eigenspace"]

#: Row sums within this relative distance of 1 count as stochastic.
_STOCHASTIC_RTOL = 1e-8


class ReducibleChainError(ValueError):
    """A step cannot give a right answer on a reducible chain (the message names the classes)."""


@dataclasses.dataclass(frozen=True)
class ChainClasses:
    """Communicating-class structure of a Markov chain.

    Attributes
    ----------
    labels
        Strongly connected component of every state (``n`` integers).
    closed
        The states of every closed class, largest class first (sorted index arrays).
    transient
        The transient states (sorted), those outside every closed class.
    """

    labels: np.ndarray
    closed: tuple[np.ndarray, ...]
    transient: np.ndarray

    @property
    def n_closed(self) -> int:
        """Number of closed classes = multiplicity of the eigenvalue 1."""
        return len(self.closed)

    @property
    def sizes(self) -> list[int]:
        """Sizes of the closed classes, largest first."""
        return [int(c.size) for c in self.closed]

    def describe(self, limit: int = 8) -> str:
        """``'3 closed classes of sizes [1300, 1100, 4] and 12 transient states'`` (for messages)."""
        sizes = self.sizes
        shown = f"{sizes[:limit]}" if len(sizes) <= limit else f"{sizes[:limit]} (+{len(sizes) - limit} more)"
        many, t = self.n_closed != 1, self.transient.size
        return (
            f"{self.n_closed} closed communicating class{'es' if many else ''} of size{'s' if many else ''} "
            f"{shown} and {t} transient state{'s' if t != 1 else ''}"
        )


def chain_classes(A: sp.spmatrix | sp.sparray) -> ChainClasses:
    r"""Closed communicating classes and transient states of the graph of a sparse ``A``, in :math:`O(\mathrm{nnz})`.

    Edges are the stored entries with :math:`A_{ij} \ne 0`. A strongly connected component is
    closed iff no edge leaves it, i.e. it has no out-edge in the condensation.

    Parameters
    ----------
    A
        Square SciPy sparse matrix (host).
    """
    A = sp.csr_matrix(A)
    if A.shape[0] != A.shape[1]:
        raise ValueError(f"A must be square, got shape {A.shape}.")
    n = A.shape[0]
    # Copies of the index arrays: eliminate_zeros works in place, and A may be the caller's matrix
    # (sp.csr_matrix(A) does not copy a CSR input), which would be left with a corrupted indptr.
    pattern = sp.csr_matrix((A.data != 0, A.indices.copy(), A.indptr.copy()), shape=A.shape)
    pattern.eliminate_zeros()
    n_comp, labels = connected_components(pattern, directed=True, connection="strong")
    rows = np.repeat(np.arange(n), np.diff(pattern.indptr))
    leaves = labels[rows] != labels[pattern.indices]
    open_ = np.zeros(n_comp, dtype=bool)
    open_[labels[rows[leaves]]] = True
    closed_ids = np.flatnonzero(~open_)
    order = np.argsort(labels, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(np.bincount(labels, minlength=n_comp))])
    members = [order[bounds[c] : bounds[c + 1]] for c in closed_ids]
    members.sort(key=lambda c: (-c.size, int(c[0])))
    closed_mask = np.zeros(n, dtype=bool)
    for c in members:
        closed_mask[c] = True
    closed = tuple(np.sort(c) for c in members)
    return ChainClasses(labels=labels, closed=closed, transient=np.flatnonzero(~closed_mask))


def stochastic_kind(backend, A: Any) -> str | None:
    """``"rows"`` if native ``A`` is non-negative with unit row sums, ``"columns"`` for unit column sums, else ``None``.

    One pass over the stored values on the backend and one small host read.
    """
    xp = backend.xp
    data, _, _ = backend.csr_components(A)
    if int(data.shape[0]) == 0 or float(backend.to_host(xp.min(data))) < 0:
        return None
    n = int(A.shape[0])
    rows = backend.to_host(backend.row_sums(A))
    if np.all(np.abs(rows - 1.0) <= _STOCHASTIC_RTOL):
        return "rows"
    cols = backend.to_host(backend.spmm(backend.transpose(A), backend.asarray(np.ones(n))))
    if np.all(np.abs(cols - 1.0) <= _STOCHASTIC_RTOL):
        return "columns"
    return None


def unit_eigenspace(backend, A: Any, *, kind: str, tol: float) -> tuple[np.ndarray, ChainClasses] | None:
    r"""Orthonormal basis ``W`` (host, ``n x r``) of the invariant subspace of the eigenvalue 1, or ``None``.

    ``None`` when the chain has a single closed class and no known basis helps (column-stochastic
    ``A``); for a row-stochastic ``A`` with one closed class ``W`` is the normalised constant vector.

    Parameters
    ----------
    backend
        The backend that holds ``A``.
    A
        Native stochastic matrix: ``kind="rows"`` (a transition matrix :math:`T`) or
        ``kind="columns"`` (its transpose, for left eigenvectors).
    tol
        Relative tolerance of the Schur decomposition; the transient solve is asked for ``tol / 10``.

    Returns
    -------
    W, classes
        ``W`` spans :math:`\{h_c\}` (rows) or :math:`\{\pi_c\}` (columns), so that
        :math:`A W = W`; its first column is the normalised constant vector for ``kind="rows"``.
    """
    n = int(A.shape[0])
    classes = chain_classes(backend.to_scipy_csr(A) if kind == "rows" else backend.to_scipy_csr(backend.transpose(A)))
    r = classes.n_closed
    debug("chain structure: %s", classes.describe())
    if r == 1:
        if kind == "columns":
            return None
        return np.full((n, 1), 1.0 / np.sqrt(n)), classes
    info("    The chain is reducible: %s; the eigenvalue 1 has multiplicity %d", classes.describe(), r)
    if kind == "rows":
        H = _absorption_basis(backend, A, classes, tol)
        # the constant vector (= sum of the h_c) first, then the rest orthonormalised against it
        H = np.column_stack([np.ones(n), H])
    else:
        H = _stationary_basis(backend, A, classes, tol)
    W, _ = np.linalg.qr(H)
    W = W[:, :r]
    if kind == "rows":
        W[:, 0] *= np.sign(W[0, 0])
    return W, classes


def _absorption_basis(backend, A: Any, classes: ChainClasses, tol: float) -> np.ndarray:
    r"""Absorption probabilities :math:`h_c` into each closed class (``n x r``, host)."""
    n = int(A.shape[0])
    r = classes.n_closed
    H = np.zeros((n, r))
    for c, members in enumerate(classes.closed):
        H[members, c] = 1.0
    S = classes.transient
    if S.size == 0:
        return H
    from cellfate_gpu.linalg import SolveError, solve

    # R_c 1 = (T 1_{C_c}) restricted to the transient states: one SpMM with the indicator block
    rhs = backend.to_host(backend.spmm(A, backend.asarray(H)))[S]
    Qs = backend.submatrix(A, S, S)
    IQ = backend.linear_combination([1.0, -1.0], [backend.eye(S.size), Qs])
    result = solve(IQ, backend.asarray(rhs), tol=max(tol / 10, 1e-14), backend=backend, throw=False)
    if not result.converged:
        raise SolveError(
            f"The chain is reducible ({classes.describe()}) and the absorption solve that gives the "
            f"eigenvectors of the eigenvalue 1 did not converge (status={result.status.value}). "
            "Restrict T to its largest closed class, or compute fewer Schur vectors on each component."
        )
    H[S] = backend.to_host(result.X).reshape(S.size, r)
    return H


def _stationary_basis(backend, At: Any, classes: ChainClasses, tol: float) -> np.ndarray:
    r"""Stationary distributions :math:`\pi_c` of the closed classes (``n x r``, host), from :math:`A = T^\top`."""
    from cellfate_gpu.linalg.krylov_schur import krylov_schur

    n = int(At.shape[0])
    Pi = np.zeros((n, classes.n_closed))
    for c, members in enumerate(classes.closed):
        if members.size <= 2:
            # exact: a single state, or the 2-state chain [[1-a, a], [b, 1-b]] with pi ~ (b, a)
            sub = backend.to_scipy_csr(backend.submatrix(At, members, members)).toarray()
            w, V = np.linalg.eig(sub)
            v = np.real(V[:, np.argmin(np.abs(w - 1.0))])
        else:
            sub = backend.submatrix(At, members, members)
            res = krylov_schur(backend, sub, 1, which="LR", tol=tol)
            if res.Q is None:
                raise ReducibleChainError(
                    f"The stationary distribution of the closed class of {members.size} states could not be computed "
                    f"(status={res.status.value}); restrict T to its largest closed class."
                )
            v = backend.to_host(res.Q)[:, 0]
        Pi[members, c] = np.abs(v) / np.abs(v).sum()
    return Pi
