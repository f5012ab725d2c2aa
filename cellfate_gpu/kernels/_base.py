"""Kernel base class and the kernel expression algebra (``0.8 * pk + 0.2 * ck``, ``pk * ck``, ``~pk``).

A kernel computes a row-stochastic transition matrix ``T`` on a backend and keeps it there;
:attr:`Kernel.transition_matrix` is the host copy (an explicit, logged transfer) and
:attr:`Kernel.native_transition_matrix` the backend object that estimators use.
"""

from __future__ import annotations

import abc
import copy as _copy
from typing import Any

import numpy as np
import scipy.sparse as sp

from cellfate_gpu import _keys
from cellfate_gpu._logging import debug, info
from cellfate_gpu.backends import Backend, get_backend
from cellfate_gpu.kernels._rowwise import row_normalize

__all__ = ["Kernel", "UnidirectionalKernel", "BidirectionalKernel", "KernelExpression"]

#: Rows of T must sum to one within this tolerance.
ROW_SUM_TOL = 1e-6


def validate_transition_matrix(backend: Backend, T: Any, n: int | None = None) -> None:
    """Check ``T`` is square, finite, non-negative and row-stochastic; errors name what and how many."""
    shape = tuple(T.shape)
    if len(shape) != 2 or shape[0] != shape[1]:
        raise ValueError(f"Transition matrix must be square, got shape {shape}.")
    if n is not None and shape[0] != n:
        raise ValueError(f"Transition matrix has shape {shape}, expected ({n}, {n}) for {n} cells.")
    xp = backend.xp
    data, _, indptr = backend.csr_components(T)
    bad = backend.to_host(
        xp.stack(
            [
                xp.sum(xp.astype(~xp.isfinite(data), xp.int64)),
                xp.sum(xp.astype(data < 0, xp.int64)),
                xp.sum(
                    xp.astype(
                        xp.abs(backend.segment_sum(xp.astype(data, xp.float64), indptr) - 1.0) > ROW_SUM_TOL, xp.int64
                    )
                ),
            ]
        )
    )
    if bad[0]:
        raise ValueError(f"Transition matrix has {int(bad[0])} non-finite entries.")
    if bad[1]:
        raise ValueError(f"Transition matrix has {int(bad[1])} negative entries.")
    if bad[2]:
        raise ValueError(f"{int(bad[2])} row(s) of the transition matrix do not sum to 1 (tolerance {ROW_SUM_TOL:g}).")


def _format_value(value: Any) -> str:
    if isinstance(value, float | np.floating):
        return repr(round(float(value), 3))
    if isinstance(value, str):
        return repr(value)
    return str(value)


class Kernel(abc.ABC):
    """Abstract base of every kernel and kernel expression.

    Parameters
    ----------
    adata
        Annotated data; kernels read from it and write ``obsp['T_fwd']`` (``T_bwd``) back.
    backward
        Direction of the process (``None`` for direction-less kernels).
    """

    def __init__(self, adata, backward: bool | None = False):
        self._adata = adata
        self._backward = backward
        self._T: Any = None
        self._backend: Backend | None = None
        self._params: dict[str, Any] = {}

    # ---------------------------------------------------------------- properties
    @property
    def adata(self):
        """The annotated data object."""
        return self._adata

    @property
    def backward(self) -> bool | None:
        """Direction of the process."""
        return self._backward

    @property
    def backend(self) -> Backend | None:
        """Backend where the transition matrix lives (``None`` before it is computed)."""
        return self._backend

    @property
    def params(self) -> dict[str, Any]:
        """Parameters of the last :meth:`compute_transition_matrix`."""
        return dict(self._params)

    @property
    def shape(self) -> tuple[int, int]:
        """``(n_cells, n_cells)``."""
        n = self._adata.n_obs
        return (n, n)

    def __len__(self) -> int:
        return self._adata.n_obs

    @property
    def native_transition_matrix(self) -> Any:
        """The transition matrix on its backend (what estimators use)."""
        if self._T is None:
            raise RuntimeError(
                f"{type(self).__name__}: compute the transition matrix first (compute_transition_matrix)."
            )
        return self._T

    @property
    def transition_matrix(self) -> sp.csr_matrix:
        """Host copy of the transition matrix as SciPy CSR (a logged transfer off non-host backends)."""
        T = self.native_transition_matrix
        if self._backend is not None and self._backend.name != "scipy":
            debug("Copying the transition matrix from backend %r to the host", self._backend.name)
        return self._backend.to_scipy_csr(T)

    @transition_matrix.setter
    def transition_matrix(self, matrix: Any) -> None:
        backend = self._backend or get_backend(None)
        if not sp.issparse(matrix) and not backend.is_native(matrix):
            matrix = sp.csr_matrix(np.asarray(matrix, dtype=np.float64))
        native = backend.ensure_native(matrix)
        self._set_native(native, backend, self._params)

    def _set_native(self, T: Any, backend: Backend, params: dict[str, Any]) -> None:
        validate_transition_matrix(backend, T, self._adata.n_obs if self._adata is not None else None)
        self._T, self._backend, self._params = T, backend, dict(params)

    @staticmethod
    def _resolve_backend(backend: str | Backend | None) -> Backend:
        return get_backend(backend)

    # ---------------------------------------------------------------- computation
    @abc.abstractmethod
    def compute_transition_matrix(self, *args: Any, **kwargs: Any) -> Kernel:
        """Compute the transition matrix (stored on the chosen backend); returns ``self``."""

    # ---------------------------------------------------------------- I/O
    def write_to_adata(self, key: str | None = None, copy: bool = False) -> None:
        """Write T to ``adata.obsp[key]`` (default ``T_fwd``/``T_bwd``) and its parameters to ``uns[f"{key}_params"]``.

        The layout is CellRank's: ``uns[...] = {"params": ..., "init": {"backward": ...}}``.
        """
        key = key or _keys.transition_matrix(bool(self.backward))
        T = self.transition_matrix
        self._adata.obsp[key] = T.copy() if copy else T
        self._adata.uns[_keys.transition_params(key)] = {
            "params": _serialisable(self.params),
            "init": _serialisable({"backward": bool(self.backward)} if self.backward is not None else {}),
            "repr": repr(self),
        }
        info("Writing the transition matrix to adata.obsp[%r]", key)

    @classmethod
    def from_adata(cls, adata, key: str, copy: bool = False) -> Kernel:
        """Load a transition matrix written by CellRank or by :meth:`write_to_adata` as a precomputed kernel."""
        from cellfate_gpu.kernels._precomputed import PrecomputedKernel

        if key not in adata.obsp:
            raise KeyError(f"No transition matrix in adata.obsp[{key!r}]; available: {list(adata.obsp.keys())}.")
        stored = adata.uns.get(_keys.transition_params(key), {}) or {}
        init = dict(stored.get("init", {}) or {})
        backward = bool(init.get("backward", key.endswith("_bwd")))
        kernel = PrecomputedKernel(adata.obsp[key].copy() if copy else adata.obsp[key], adata=adata, backward=backward)
        kernel._params = dict(stored.get("params", {}) or {})
        kernel._origin = stored.get("repr")
        return kernel

    def copy(self, *, deep: bool = False) -> Kernel:
        """Copy of the kernel; the AnnData is shared unless ``deep``."""
        out = _copy.copy(self)
        if deep:
            out._adata = self._adata.copy()
            out._T = _copy.deepcopy(self._T) if self._T is not None else None
        return out

    # ---------------------------------------------------------------- random walks
    def simulate_random_walks(
        self,
        n_sims: int = 100,
        max_iter: int | float = 0.25,
        seed: int | None = None,
        successive_hits: int = 0,
        start_ixs: Any = None,
        stop_ixs: Any = None,
    ) -> list[np.ndarray]:
        """Simulate random walks on T; see :func:`cellfate_gpu.kernels._random_walk.simulate_random_walks`."""
        from cellfate_gpu.kernels._random_walk import simulate_random_walks

        return simulate_random_walks(
            self,
            n_sims=n_sims,
            max_iter=max_iter,
            seed=seed,
            successive_hits=successive_hits,
            start_ixs=start_ixs,
            stop_ixs=stop_ixs,
        )

    def plot_random_walks(
        self,
        n_sims: int = 100,
        max_iter: int | float = 0.25,
        seed: int | None = None,
        successive_hits: int = 0,
        start_ixs: Any = None,
        stop_ixs: Any = None,
        basis: str = "umap",
        **kwargs: Any,
    ):
        """Simulate and draw random walks on an embedding (start cells black, end cells yellow)."""
        from cellfate_gpu.kernels._random_walk import plot_random_walks

        return plot_random_walks(
            self,
            n_sims=n_sims,
            max_iter=max_iter,
            seed=seed,
            successive_hits=successive_hits,
            start_ixs=start_ixs,
            stop_ixs=stop_ixs,
            basis=basis,
            **kwargs,
        )

    # ---------------------------------------------------------------- algebra
    def __mul__(self, other: Any) -> Kernel:
        if isinstance(other, int | float | np.integer | np.floating):
            if isinstance(self, _Scaled):  # c1 * (c2 * k) is (c1 c2) * k
                return _Scaled(float(other) * self.constant, self._children[0])
            return _Scaled(float(other), self)
        if isinstance(other, Kernel):
            return _Product([self, other])
        return NotImplemented

    def __rmul__(self, other: Any) -> Kernel:
        return self.__mul__(other)

    def __add__(self, other: Any) -> Kernel:
        if not isinstance(other, Kernel):
            return NotImplemented
        return _Sum([self, other])

    def __radd__(self, other: Any) -> Kernel:
        return self.__add__(other)

    def __invert__(self) -> Kernel:
        raise TypeError(f"{type(self).__name__} has no direction; only bidirectional kernels support `~`.")

    # ---------------------------------------------------------------- repr
    def _repr_params(self) -> str:
        return ""

    def __repr__(self) -> str:
        prefix = "~" if self.backward else ""
        extra = self._repr_params() if self._T is not None else ""
        return f"{prefix}{type(self).__name__}[n={len(self)}{', ' + extra if extra else ''}]"

    def __str__(self) -> str:
        return repr(self)


def _serialisable(params: dict[str, Any]) -> dict[str, Any]:
    """Drop ``None`` and stringify objects that h5ad cannot store (callables, enums)."""
    out = {}
    for k, v in params.items():
        if v is None:
            continue
        if isinstance(v, bool | int | float | str | np.integer | np.floating):
            out[k] = v
        elif isinstance(v, dict):
            out[k] = _serialisable(v)
        elif isinstance(v, list | tuple) and all(isinstance(x, int | float | str) for x in v):
            out[k] = list(v)
        else:
            out[k] = str(v)
    return out


class UnidirectionalKernel(Kernel):
    """A kernel without direction (connectivities, precomputed matrices, real time): ``~k`` raises."""


class BidirectionalKernel(Kernel):
    """A kernel with a direction: ``~k`` returns a copy for the reversed process (recompute it)."""

    def __invert__(self) -> Kernel:
        out = self.copy()
        out._backward = not self._backward
        out._T, out._params = None, {}
        return out


class KernelExpression(Kernel):
    """Abstract base of kernel sums, products and scaled kernels; T is computed from the children."""

    def __init__(self, children: list[Kernel]):
        directions = {k.backward for k in children if k.backward is not None}
        if len(directions) > 1:
            raise ValueError("Cannot combine forward and backward kernels; invert one of them with `~` first.")
        super().__init__(children[0].adata, backward=directions.pop() if directions else None)
        for child in children[1:]:
            if child.adata is not children[0].adata and child.adata.n_obs != children[0].adata.n_obs:
                raise ValueError(
                    f"Kernels have different numbers of cells: {children[0].adata.n_obs} vs {child.adata.n_obs}."
                )
        self._children = list(children)

    @property
    def kernels(self) -> list[Kernel]:
        """The leaf kernels of the expression."""
        out: list[Kernel] = []
        for child in self._children:
            out.extend(child.kernels if isinstance(child, KernelExpression) else [child])
        return out

    def compute_transition_matrix(self, *args: Any, **kwargs: Any) -> Kernel:
        """Combine the children's transition matrices (each must be computed)."""
        self._combine()
        return self

    @abc.abstractmethod
    def _combine_native(self, backend: Backend, mats: list[Any]) -> Any:
        """Combine the children's native matrices."""

    def _child_matrices(self) -> tuple[Backend, list[Any]]:
        missing = [repr(k) for k in self._children if not _is_computed(k)]
        if missing:
            raise RuntimeError(f"Compute the transition matrices of {', '.join(missing)} before combining them.")
        backend = _first_backend(self._children)
        mats = []
        for child in self._children:
            T = child.native_transition_matrix
            if child.backend is not backend and not backend.is_native(T):
                info("Moving the transition matrix of %r to backend %r", child, backend.name)
                T = backend.from_scipy_csr(child.transition_matrix)
            mats.append(T)
        return backend, mats

    def _combine(self) -> None:
        backend, mats = self._child_matrices()
        T = self._combine_native(backend, mats)
        self._T, self._backend = T, backend

    @property
    def native_transition_matrix(self) -> Any:
        if self._T is None:
            self._combine()
        return self._T

    @property
    def params(self) -> dict[str, Any]:
        return {f"{type(k).__name__}_{i}": k.params for i, k in enumerate(self.kernels)}

    def __len__(self) -> int:
        return len(self._children[0])


def _is_computed(kernel: Kernel) -> bool:
    if isinstance(kernel, KernelExpression):
        return all(_is_computed(c) for c in kernel._children)
    return kernel._T is not None


def _first_backend(children: list[Kernel]) -> Backend:
    for child in children:
        if isinstance(child, KernelExpression):
            return _first_backend(child._children)
        if child.backend is not None:
            return child.backend
    return get_backend(None)


class _Scaled(KernelExpression):
    """``c * k``: the constant matters only inside a sum, where constants are renormalised."""

    def __init__(self, constant: float, kernel: Kernel):
        if not np.isfinite(constant) or constant < 0:
            raise ValueError(f"Kernel weights must be finite and non-negative, got {constant!r}.")
        super().__init__([kernel])
        self.constant = constant

    def _combine_native(self, backend, mats):
        return mats[0]

    def __repr__(self) -> str:
        return f"{_format_number(self.constant)} * {self._children[0]!r}"


def _format_number(c: float) -> str:
    return str(int(c)) if float(c).is_integer() else repr(round(c, 3))


class _Sum(KernelExpression):
    r"""``Σ c_i k_i`` with :math:`c_i` renormalised to sum to one, as CellRank does (unweighted terms count 1)."""

    def __init__(self, terms: list[Kernel]):
        flat: list[Kernel] = []
        for t in terms:
            flat.extend(t._children if isinstance(t, _Sum) else [t])
        super().__init__(flat)

    def _weights(self) -> np.ndarray:
        w = np.array([c.constant if isinstance(c, _Scaled) else 1.0 for c in self._children])
        if w.sum() <= 0:
            raise ValueError("Kernel weights sum to zero.")
        return w / w.sum()

    def _combine_native(self, backend, mats):
        combined = backend.linear_combination([float(x) for x in self._weights()], mats)
        return row_normalize(backend, combined)

    def __repr__(self) -> str:
        return "(" + " + ".join(repr(c) for c in self._children) + ")"


class _Product(KernelExpression):
    """Element-wise product ``k1 * k2``, row-normalised."""

    def __init__(self, factors: list[Kernel]):
        flat: list[Kernel] = []
        for f in factors:
            flat.extend(f._children if isinstance(f, _Product) else [f])
        super().__init__(flat)

    def _combine_native(self, backend, mats):
        out = mats[0]
        for M in mats[1:]:
            out = backend.multiply(out, M)
        return row_normalize(backend, out, what="element-wise product of transition matrices")

    def __repr__(self) -> str:
        return "(" + " * ".join(repr(c) for c in self._children) + ")"
