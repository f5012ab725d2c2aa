"""Kernel base class and the kernel expression algebra (``0.8 * pk + 0.2 * ck``, ``pk * ck``, ``~pk``).

A kernel computes a row-stochastic transition matrix ``T`` on a backend and keeps it there;
:attr:`Kernel.transition_matrix` is the host copy (an explicit, logged transfer) and
:attr:`Kernel.native_transition_matrix` the backend object that estimators use.

Expressions follow CellRank 2.3.3: ``c * k`` attaches a weight, ``k1 + k2`` adds weighted
terms whose constants are renormalised to sum to one (a term without a constant counts 1),
``k1 * k2`` multiplies element-wise, and only the top-level expression is row-normalised
(nested sums and products are combined unnormalised, as CellRank does).
"""

from __future__ import annotations

import abc
import copy as _copy
import functools
from typing import Any

import numpy as np
import scipy.sparse as sp

from cellfate_gpu import _keys
from cellfate_gpu._logging import debug, info
from cellfate_gpu.backends import Backend, get_backend
from cellfate_gpu.kernels._rowwise import row_normalize

__all__ = ["Kernel", "UnidirectionalKernel", "BidirectionalKernel", "KernelExpression", "validate_transition_matrix"]

#: Rows of T must sum to one within this tolerance.
ROW_SUM_TOL = 1e-6

_JOBLIB_BACKENDS = ("loky", "threading", "multiprocessing")


def validate_transition_matrix(backend: Backend, T: Any, n: int | None = None) -> None:
    """Check that native ``T`` is square, finite, non-negative and row-stochastic (on its backend).

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


def _format_value(value: Any) -> str:
    """One parameter value as CellRank prints it: floats rounded to 3 digits, everything else ``repr``."""
    if isinstance(value, bool | np.bool_):
        return repr(bool(value))
    if isinstance(value, float | np.floating):
        return repr(round(float(value), 3))
    if isinstance(value, np.integer):
        return repr(int(value))
    return repr(value)


def _format_constant(c: float) -> str:
    """A weight as CellRank's ``Constant`` prints it: ``repr(round(c, 3))``."""
    return repr(round(c, 3)) if isinstance(c, float) else repr(c)


def _serialisable(params: dict[str, Any]) -> dict[str, Any]:
    """``params`` in a form h5ad can store: ``None`` dropped, callables and other objects stringified."""
    out: dict[str, Any] = {}
    for k, v in params.items():
        if v is None:
            continue
        if isinstance(v, bool | int | float | str | np.bool_ | np.integer | np.floating):
            out[str(k)] = v
        elif isinstance(v, dict):
            out[str(k)] = _serialisable(v)
        elif isinstance(v, list | tuple) and v and all(isinstance(x, int | float | str) for x in v):
            if len({type(x) for x in v}) == 1:
                out[str(k)] = list(v)
            else:
                out[str(k)] = str(list(v))
        elif isinstance(v, np.ndarray) and v.dtype.kind in "biuf":
            out[str(k)] = v
        else:
            out[str(k)] = getattr(v, "__name__", None) or str(v)
    return out


def _record_compute(fn):
    """Wrap a concrete ``compute_transition_matrix`` to remember its arguments (for lazy recompute after ``~``)."""

    @functools.wraps(fn)
    def compute(self, *args: Any, **kwargs: Any):
        out = fn(self, *args, **kwargs)
        self._compute_call = (args, dict(kwargs))
        self._pending = None
        return out

    compute._records_call = True  # type: ignore[attr-defined]
    return compute


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
        self._compute_call: tuple[tuple, dict] | None = None
        self._pending: tuple[tuple, dict] | None = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        fn = cls.__dict__.get("compute_transition_matrix")
        if fn is not None and not getattr(fn, "__isabstractmethod__", False) and not hasattr(fn, "_records_call"):
            cls.compute_transition_matrix = _record_compute(fn)

    # ---------------------------------------------------------------- properties
    @property
    def adata(self):
        """The annotated data object."""
        return self._adata

    @property
    def backward(self) -> bool | None:
        """Direction of the process (``None``: the kernel has no direction)."""
        return self._backward

    @property
    def backend(self) -> Backend | None:
        """Backend where the transition matrix lives (``None`` before it is computed)."""
        return self._backend

    @property
    def params(self) -> dict[str, Any]:
        """Parameters of the last :meth:`compute_transition_matrix` (CellRank's names)."""
        return dict(self._params)

    @property
    def kernels(self) -> list[Kernel]:
        """The leaf kernels (``[self]`` for a kernel)."""
        return [self]

    @property
    def shape(self) -> tuple[int, int]:
        """``(n_cells, n_cells)``."""
        n = len(self)
        return (n, n)

    def __len__(self) -> int:
        return self._adata.n_obs

    @property
    def native_transition_matrix(self) -> Any:
        """The transition matrix on its backend (what estimators use).

        Raises
        ------
        RuntimeError
            If it has not been computed yet.
        """
        if self._T is None and self._pending is not None:
            args, kwargs = self._pending
            debug(
                "Recomputing the transition matrix of %s with the arguments of the inverted kernel", type(self).__name__
            )
            self.compute_transition_matrix(*args, **kwargs)
        if self._T is None:
            raise RuntimeError(
                f"{type(self).__name__}: compute the transition matrix first (`.compute_transition_matrix()`)."
            )
        return self._T

    @property
    def transition_matrix(self) -> sp.csr_matrix:
        """Host copy of the transition matrix as SciPy CSR (a logged transfer off non-host backends)."""
        T = self.native_transition_matrix
        if self._backend.name != "scipy":
            debug("Copying the transition matrix from backend %r to the host", self._backend.name)
        return self._backend.to_scipy_csr(T)

    @transition_matrix.setter
    def transition_matrix(self, matrix: Any) -> None:
        backend = self._backend or get_backend(None)
        if not sp.issparse(matrix) and not backend.is_native(matrix):
            matrix = np.asarray(matrix, dtype=np.float64)
            if matrix.ndim != 2:
                raise ValueError(f"Transition matrix must be 2-D, got shape {matrix.shape}.")
            matrix = sp.csr_matrix(matrix)
        if sp.issparse(matrix):
            matrix = sp.csr_matrix(matrix, dtype=np.float64)
            matrix.sum_duplicates()
        self._set_native(backend.ensure_native(matrix), backend, self._params)

    def _set_native(self, T: Any, backend: Backend, params: dict[str, Any]) -> None:
        """Validate native ``T`` on ``backend`` (square n x n, finite, non-negative, stochastic) and store it."""
        validate_transition_matrix(backend, T, len(self))
        self._T, self._backend, self._params = T, backend, dict(params)
        self._pending = None

    @staticmethod
    def _resolve_backend(backend: str | Backend | None) -> Backend:
        """``backend=`` argument → backend instance (default ``settings.backend``; unusable raises).

        CellRank's joblib backend names (``"loky"``, ``"threading"``, ``"multiprocessing"``) are
        accepted for compatibility and mean the default backend.
        """
        if isinstance(backend, str) and backend in _JOBLIB_BACKENDS:
            debug("Ignoring the joblib backend %r (CellRank's parallelisation); using settings.backend", backend)
            backend = None
        return get_backend(backend)

    def _is_computed(self) -> bool:
        return self._T is not None or self._pending is not None

    # ---------------------------------------------------------------- computation
    @abc.abstractmethod
    def compute_transition_matrix(self, *args: Any, **kwargs: Any) -> Kernel:
        """Compute the transition matrix (stored on the chosen backend); returns ``self``."""

    # ---------------------------------------------------------------- I/O
    def _init_kwargs(self) -> dict[str, Any]:
        """Constructor arguments CellRank stores under ``uns[f"{key}_params"]["init"]``."""
        return {} if self.backward is None else {"backward": bool(self.backward)}

    def write_to_adata(self, key: str | None = None, copy: bool = False) -> None:
        """Write T to ``adata.obsp[key]`` (default ``T_fwd``/``T_bwd``) and its parameters to ``uns[f"{key}_params"]``.

        The layout is CellRank's: ``uns[f"{key}_params"] = {"params": ..., "init": ...}`` (an existing
        dict there is updated, not replaced), plus ``"repr"`` with this kernel's repr. ``None`` values
        are dropped and objects stringified so the result can be written to ``.h5ad``; the order of
        the parameters (which h5ad sorts) is kept in ``"params_order"``.

        Parameters
        ----------
        key
            ``obsp`` key; default ``T_bwd`` for backward kernels and ``T_fwd`` otherwise.
        copy
            Store a copy of the host matrix.
        """
        key = key or _keys.transition_matrix(bool(self.backward))
        T = self.transition_matrix
        adata = self.adata
        adata.obsp[key] = T.copy() if copy else T
        pkey = _keys.transition_params(key)
        adata.uns[pkey] = {
            **dict(adata.uns.get(pkey, {}) or {}),
            "params": (params := _serialisable(self.params)),
            "params_order": np.array(list(params), dtype=object) if params else np.array([], dtype=str),
            "init": _serialisable(self._init_kwargs()),
            "repr": repr(self),
        }
        info("Writing the transition matrix to adata.obsp[%r] and its parameters to adata.uns[%r]", key, pkey)

    @classmethod
    def from_adata(cls, adata, key: str, copy: bool = False) -> Kernel:
        """Load a transition matrix written by CellRank or by :meth:`write_to_adata`.

        Called on a concrete kernel class (e.g. ``PseudotimeKernel.from_adata``), the kernel is
        rebuilt as CellRank does, ``cls(adata, **init)``, with the stored matrix and parameters.
        Called on :class:`Kernel` (or when that fails), a
        :class:`~cellfate_gpu.kernels.PrecomputedKernel` is returned whose ``params`` are the
        stored ones plus ``origin``.

        Parameters
        ----------
        adata
            Annotated data with ``obsp[key]`` and, optionally, ``uns[f"{key}_params"]``.
        key
            ``obsp`` key of the matrix.
        copy
            Copy the matrix instead of sharing it with ``adata``.
        """
        from cellfate_gpu.kernels._precomputed import PrecomputedKernel

        if key not in adata.obsp:
            raise KeyError(f"No transition matrix in adata.obsp[{key!r}]; available: {list(adata.obsp.keys())}.")
        stored = dict(adata.uns.get(_keys.transition_params(key), {}) or {})
        params = _to_plain(stored.get("params", {}) or {})
        order = [str(k) for k in stored.get("params_order", [])]  # h5ad sorts keys; restore the written order
        params = {k: params[k] for k in [*order, *params] if k in params}
        init = _to_plain(stored.get("init", {}) or {})
        T = adata.obsp[key]
        T = T.copy() if copy else T
        if not inspect_abstract(cls) and cls is not PrecomputedKernel:
            try:
                kernel = cls(adata, **init)
            except (TypeError, KeyError, ValueError) as e:
                info(
                    "Could not rebuild %s from adata.uns[%r]['init'] (%s); using a PrecomputedKernel",
                    cls.__name__,
                    key,
                    e,
                )
            else:
                kernel.transition_matrix = T
                kernel._params = params
                return kernel
        backward = init.get("backward", True if key.endswith("_bwd") else False if key.endswith("_fwd") else None)
        kernel = PrecomputedKernel(T, adata=adata, backward=backward)
        kernel._params = {**params, "origin": f"adata.obsp[{key!r}]"}
        kernel._stored_repr = stored.get("repr")
        return kernel

    def copy(self, *, deep: bool = False) -> Kernel:
        """Copy of the kernel; the AnnData is shared unless ``deep``, the matrix is shared unless ``deep``."""
        out = _copy.copy(self)
        out._params = dict(self._params)
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
        cmap: str = "gnuplot",
        linewidth: float = 1.0,
        linealpha: float = 0.3,
        ixs_legend_loc: str | None = None,
        figsize: tuple[float, float] | None = None,
        dpi: int | None = None,
        save: Any = None,
        ax: Any = None,
        **kwargs: Any,
    ):
        """Simulate random walks and draw them on an embedding; see :func:`.plot_random_walks`."""
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
            cmap=cmap,
            linewidth=linewidth,
            linealpha=linealpha,
            ixs_legend_loc=ixs_legend_loc,
            figsize=figsize,
            dpi=dpi,
            save=save,
            ax=ax,
            **kwargs,
        )

    # ---------------------------------------------------------------- algebra
    def __mul__(self, other: Any) -> Kernel:
        if isinstance(other, int | float | np.integer | np.floating) and not isinstance(other, bool):
            c = other.item() if isinstance(other, np.generic) else other
            if isinstance(self, _Scaled):  # c1 * (c2 * k) is (c1 c2) * k
                return _Scaled(c * self.constant, self._children[0])
            return _Scaled(c, self)
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
        """``k=v, ...`` of :attr:`params` in CellRank's format (subclasses may override)."""
        return ", ".join(f"{k}={_format_value(v)}" for k, v in self._params.items())

    def _format(self, *, top: bool, short: bool = False) -> str:
        prefix = "~" if self.backward and top else ""
        extra = self._repr_params() if (self._T is not None and not short) else ""
        return f"{prefix}{type(self).__name__}[n={len(self)}{', ' + extra if extra else ''}]"

    def __repr__(self) -> str:
        return self._format(top=True)

    def __str__(self) -> str:
        """The short form CellRank prints with ``str``: ``PseudotimeKernel[n=5780]``."""
        return self._format(top=True, short=True)


def inspect_abstract(cls: type) -> bool:
    """Whether ``cls`` cannot be instantiated (abstract methods left)."""
    return bool(getattr(cls, "__abstractmethods__", None))


def _to_plain(d: Any) -> dict[str, Any]:
    """A mapping read back from h5ad (values may be NumPy scalars) as a plain dict."""
    out = {}
    for k, v in dict(d).items():
        if isinstance(v, dict):
            out[k] = _to_plain(v)
        elif isinstance(v, np.generic):
            out[k] = v.item()
        else:
            out[k] = v
    return out


class UnidirectionalKernel(Kernel):
    """A kernel without direction (connectivities, precomputed matrices, real time): ``~k`` raises ``TypeError``."""


class BidirectionalKernel(Kernel):
    """A kernel with a direction: ``~k`` is a copy for the reversed process.

    The copy has no matrix yet; if ``k`` had been computed, the copy recomputes its matrix lazily,
    with the same arguments, on first use. Subclasses whose stored state depends on the direction
    override :meth:`_reversed` (the default copies and flips :attr:`backward`).
    """

    def _reversed(self) -> BidirectionalKernel:
        out = self.copy()
        out._backward = not self._backward
        return out

    def __invert__(self) -> BidirectionalKernel:
        out = self._reversed()
        out._T, out._backend, out._params = None, None, {}
        out._pending = self._compute_call if self._T is not None else self._pending
        out._compute_call = None
        return out


class KernelExpression(Kernel):
    """Abstract base of scaled kernels, sums and products; T is computed from the children.

    Parameters
    ----------
    children
        The operands (kernels or expressions over the same cells).

    Raises
    ------
    ValueError
        Forward and backward operands are mixed, or the operands have different numbers of cells.
    """

    def __init__(self, children: list[Kernel]):
        if not children:
            raise ValueError("A kernel expression needs at least one kernel.")
        directions = {k.backward for k in children if k.backward is not None}
        if len(directions) > 1:
            raise ValueError(
                "Cannot combine forward and backward kernels "
                f"({', '.join(repr(k) for k in children)}); invert one of them with `~` first."
            )
        n = len(children[0])
        for child in children[1:]:
            if len(child) != n:
                raise ValueError(f"Kernels have different numbers of cells: {n} vs {len(child)}.")
        super().__init__(children[0].adata, backward=directions.pop() if directions else None)
        self._children = list(children)

    @property
    def adata(self):
        """The annotated data of the first operand."""
        return self._children[0].adata

    @property
    def kernels(self) -> list[Kernel]:
        """The leaf kernels of the expression, in order."""
        out: list[Kernel] = []
        for child in self._children:
            out.extend(child.kernels)
        return out

    def __len__(self) -> int:
        return len(self._children[0])

    def _is_computed(self) -> bool:
        return all(k._is_computed() for k in self.kernels)

    def compute_transition_matrix(self, *args: Any, backend: Any = None, **kwargs: Any) -> KernelExpression:
        """Combine the children's transition matrices (each must be computed); returns ``self``.

        Parameters
        ----------
        backend
            Backend for the result; default: where the first computed operand lives.
        """
        if args or kwargs:
            raise TypeError(
                "A kernel expression takes no parameters; compute each kernel first, e.g. "
                "`pk.compute_transition_matrix(...)`."
            )
        missing = [repr(k) for k in self.kernels if not k._is_computed()]
        if missing:
            raise RuntimeError(
                f"Compute the transition matrices of {', '.join(missing)} before combining them "
                "(call `.compute_transition_matrix()` on each)."
            )
        be = get_backend(backend) if backend is not None else _first_backend(self.kernels)
        raw = self._raw(be)
        self._T = row_normalize(be, raw, what=f"kernel expression {self!r}")
        self._backend = be
        validate_transition_matrix(be, self._T, len(self))
        return self

    @property
    def native_transition_matrix(self) -> Any:
        """The combined matrix on its backend, computed from the children on first use."""
        if self._T is None:
            self.compute_transition_matrix()
        return self._T

    @abc.abstractmethod
    def _raw(self, backend: Backend) -> Any:
        """The unnormalised combination of the children on ``backend`` (CellRank normalises only the top)."""

    @property
    def params(self) -> dict[str, Any]:
        """``{f"{KernelName}_{i}": kernel.params}`` over the leaf kernels."""
        return {f"{type(k).__name__}_{i}": k.params for i, k in enumerate(self.kernels)}

    def _init_kwargs(self) -> dict[str, Any]:
        return {} if self.backward is None else {"backward": bool(self.backward)}

    def _rebuild(self, children: list[Kernel]) -> KernelExpression:
        """The same operation over other operands."""
        raise NotImplementedError

    def copy(self, *, deep: bool = False) -> KernelExpression:
        """Copy of the expression and its operands."""
        return self._rebuild([c.copy(deep=deep) for c in self._children])

    def __invert__(self) -> KernelExpression:
        """Reverse every bidirectional operand (CellRank: direction-less ones are copied)."""
        if self.backward is None:
            return self.copy()
        return self._rebuild([~c if c.backward is not None else c.copy() for c in self._children])

    def _format(self, *, top: bool, short: bool = False) -> str:
        body = self._format_body(short=short)
        return f"~{body}" if self.backward and top else body

    @abc.abstractmethod
    def _format_body(self, *, short: bool) -> str:
        pass


def _leaf_native(kernel: Kernel, backend: Backend) -> Any:
    T = kernel.native_transition_matrix
    if kernel.backend is backend or (backend.is_native(T) and kernel.backend.name == backend.name):
        return T
    info("Moving the transition matrix of %r from backend %r to %r", kernel, kernel.backend.name, backend.name)
    return backend.from_scipy_csr(kernel.transition_matrix)


def _raw_of(kernel: Kernel, backend: Backend) -> Any:
    return kernel._raw(backend) if isinstance(kernel, KernelExpression) else _leaf_native(kernel, backend)


def _first_backend(kernels: list[Kernel]) -> Backend:
    for k in kernels:
        if k.backend is not None:
            return k.backend
    if kernels:  # only lazily pending ones left: computing the first one picks the backend
        kernels[0].native_transition_matrix  # noqa: B018
        return kernels[0].backend
    return get_backend(None)


class _Scaled(KernelExpression):
    r"""``c * k``. Inside a sum the constants are renormalised; alone (or in a product) ``c`` cancels."""

    def __init__(self, constant: float, kernel: Kernel):
        if isinstance(constant, bool) or not np.isfinite(constant) or constant <= 0:
            raise ValueError(f"Kernel weights must be finite and positive, got {constant!r}.")
        super().__init__([kernel])
        self.constant = constant

    def _rebuild(self, children):
        return _Scaled(self.constant, children[0])

    def _raw(self, backend):
        return backend.linear_combination([float(self.constant)], [_raw_of(self._children[0], backend)])

    def _format_body(self, *, short: bool) -> str:
        return f"{_format_constant(self.constant)} * {self._children[0]._format(top=False, short=short)}"


class _Sum(KernelExpression):
    r"""``Σ c_i k_i`` with the :math:`c_i` renormalised to sum to one, as CellRank does.

    A term without a constant counts as ``1 * k`` (so ``k1 + k2`` is ``0.5 * k1 + 0.5 * k2``).
    """

    def __init__(self, terms: list[Kernel]):
        flat: list[Kernel] = []
        for t in terms:
            flat.extend(t._children if isinstance(t, _Sum) else [t])
        super().__init__(flat)

    def _rebuild(self, children):
        return _Sum(children)

    def _weights(self) -> np.ndarray:
        w = np.array([c.constant if isinstance(c, _Scaled) else 1.0 for c in self._children], dtype=np.float64)
        return w / w.sum()

    def _raw(self, backend):
        terms = [c._children[0] if isinstance(c, _Scaled) else c for c in self._children]
        return backend.linear_combination([float(x) for x in self._weights()], [_raw_of(t, backend) for t in terms])

    def _format_body(self, *, short: bool) -> str:
        parts = []
        for w, c in zip(self._weights(), self._children, strict=True):
            term = c._children[0] if isinstance(c, _Scaled) else c
            parts.append(f"{_format_constant(float(w))} * {term._format(top=False, short=short)}")
        return "(" + " + ".join(parts) + ")"


class _Product(KernelExpression):
    """Element-wise product ``k1 * k2`` (row-normalised only at the top of an expression)."""

    def __init__(self, factors: list[Kernel]):
        flat: list[Kernel] = []
        for f in factors:
            flat.extend(f._children if isinstance(f, _Product) else [f])
        super().__init__(flat)

    def _rebuild(self, children):
        return _Product(children)

    def _raw(self, backend):
        out = _raw_of(self._children[0], backend)
        for child in self._children[1:]:
            out = backend.multiply(out, _raw_of(child, backend))
        return out

    def _format_body(self, *, short: bool) -> str:
        return "(" + " * ".join(c._format(top=False, short=short) for c in self._children) + ")"
