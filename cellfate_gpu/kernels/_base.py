"""The kernel base: what every kernel is, and how it holds its transition matrix.

A kernel computes a row-stochastic transition matrix ``T`` on a backend and keeps it there;
:attr:`Kernel.transition_matrix` is the host copy (an explicit, logged transfer) and
:attr:`Kernel.native_transition_matrix` the backend object that estimators use. Every matrix a
kernel stores passes :func:`~cellfate_gpu.kernels._validation.validate_transition_matrix`
(square, ``n_cells x n_cells``, finite, non-negative, rows summing to one).

This module holds :class:`Kernel` (abstract) and the two direction classes; everything else lives
beside it:

* :mod:`~cellfate_gpu.kernels._expression` — :class:`~cellfate_gpu.kernels.KernelExpression`, the
  kernel that ``*`` and ``+`` make, composing the expression algebra of
  :mod:`~cellfate_gpu.kernels._algebra` (nodes, weights, combination, repr);
* :mod:`~cellfate_gpu.kernels._precomputed` — :class:`~cellfate_gpu.kernels.PrecomputedKernel`,
  the kernel of a given matrix (what :meth:`Kernel.from_adata` falls back to);
* :mod:`~cellfate_gpu.kernels._io` — CellRank's AnnData/h5ad layout (write and read);
* :mod:`~cellfate_gpu.kernels._validation` — the transition-matrix invariants and input checks;
* :mod:`~cellfate_gpu.kernels._random_walk`, :mod:`~cellfate_gpu.kernels._projection` and
  :func:`cellfate_gpu.pl.plot_random_walks` — functions of a kernel that :class:`Kernel` binds
  as methods (one signature, one docstring).

Those two subclasses import this module, so the methods of :class:`Kernel` that construct them
import them where they run (after both modules are loaded), not at the top.

How ``~k`` recomputes: a concrete kernel passes the keyword arguments that reproduce its
computation to :meth:`Kernel._set_native` (``recompute=``); ``~k`` copies the kernel, flips the
direction and recomputes with those arguments on first use. No method is rewritten behind the
subclass's back.
"""

from __future__ import annotations

import abc
import copy as _copy
from collections.abc import Mapping
from typing import Any

import numpy as np
import scipy.sparse as sp

from cellfate_gpu import _keys
from cellfate_gpu._logging import debug, info
from cellfate_gpu.backends import Backend, get_backend
from cellfate_gpu.kernels import _algebra, _io, _projection, _random_walk
from cellfate_gpu.kernels._validation import JOBLIB_BACKENDS, host_transition_csr, validate_transition_matrix
from cellfate_gpu.pl import _random_walks

__all__ = ["BidirectionalKernel", "Kernel", "UnidirectionalKernel"]


def _format_value(value: Any) -> str:
    """One parameter value as CellRank prints it: floats rounded to 3 digits, everything else ``repr``."""
    if isinstance(value, bool | np.bool_):
        return repr(bool(value))
    if isinstance(value, float | np.floating):
        return repr(round(float(value), 3))
    if isinstance(value, np.integer):
        return repr(int(value))
    return repr(value)


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
        self._recompute: dict[str, Any] | None = None  # keyword arguments that reproduce T (for ~)
        self._pending: dict[str, Any] | None = None  # recompute with these on first use (after ~)
        self._placeholder_adata = False  # True when the kernel made an empty AnnData for a bare matrix

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
    def expression(self) -> _algebra.Expression | None:
        """The algebra node of an expression (operation, operands, constant); ``None`` for a leaf kernel."""
        return None

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
            debug(
                "Recomputing the transition matrix of %s with the arguments of the inverted kernel", type(self).__name__
            )
            self.compute_transition_matrix(**self._pending)
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
        if sp.issparse(matrix) or not backend.is_native(matrix):  # SciPy input: float64, duplicates summed
            matrix = host_transition_csr(matrix)
        self._set_native(backend.ensure_native(matrix), backend, self._params)

    def _set_native(
        self, T: Any, backend: Backend, params: dict[str, Any], *, recompute: Mapping[str, Any] | None = None
    ) -> None:
        """Validate native ``T`` on ``backend`` (square n x n, finite, non-negative, stochastic) and store it.

        Parameters
        ----------
        recompute
            Keyword arguments of ``compute_transition_matrix`` that reproduce ``T``; ``~self``
            recomputes with them. ``None``: ``~self`` must be computed explicitly.
        """
        validate_transition_matrix(backend, T, len(self))
        self._T, self._backend, self._params = T, backend, dict(params)
        self._recompute = None if recompute is None else dict(recompute)
        self._pending = None

    @staticmethod
    def _resolve_backend(backend: str | Backend | None) -> Backend:
        """``backend=`` argument → backend instance (default ``settings.backend``; unusable raises).

        CellRank's joblib backend names (``"loky"``, ``"threading"``, ``"multiprocessing"``) are
        accepted for compatibility and mean the default backend.
        """
        if isinstance(backend, str) and backend in JOBLIB_BACKENDS:
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
        the parameters (which h5ad sorts) is kept in ``"params_order"``. See
        :mod:`cellfate_gpu.kernels._io`.

        Parameters
        ----------
        key
            ``obsp`` key; default ``T_bwd`` for backward kernels and ``T_fwd`` otherwise.
        copy
            Store a copy of the host matrix.
        """
        key = key or _keys.transition_matrix(bool(self.backward))
        _io.write_kernel(
            self.adata, key, self.transition_matrix, self.params, self._init_kwargs(), repr(self), copy=copy
        )

    @classmethod
    def from_adata(cls, adata, key: str, copy: bool = False) -> Kernel:
        """Load a transition matrix written by CellRank or by :meth:`write_to_adata`.

        Called on a concrete kernel class (e.g. ``PseudotimeKernel.from_adata``), the kernel is
        rebuilt as CellRank does, ``cls(adata, **init)``, with the stored matrix and parameters.
        Called on :class:`Kernel` (or when that fails), a :class:`~cellfate_gpu.kernels.PrecomputedKernel` is returned
        whose ``params`` are the stored ones plus ``origin``.

        Parameters
        ----------
        adata
            Annotated data with ``obsp[key]`` and, optionally, ``uns[f"{key}_params"]``.
        key
            ``obsp`` key of the matrix.
        copy
            Copy the matrix instead of sharing it with ``adata``.
        """
        from cellfate_gpu.kernels._precomputed import PrecomputedKernel  # a subclass: its module imports this one

        stored = _io.read_kernel(adata, key, copy=copy)
        if not getattr(cls, "__abstractmethods__", None) and cls is not PrecomputedKernel:
            try:
                kernel = cls(adata, **stored.init)
            except (TypeError, KeyError, ValueError) as e:
                info(
                    "Could not rebuild %s from adata.uns[%r]['init'] (%s); using a PrecomputedKernel",
                    cls.__name__,
                    key,
                    e,
                )
            else:
                kernel.transition_matrix = stored.matrix
                kernel._params = stored.params
                return kernel
        kernel = PrecomputedKernel(stored.matrix, adata=adata, backward=stored.backward)
        kernel._params = {**stored.params, "origin": f"adata.obsp[{key!r}]"}
        kernel._stored_repr = stored.repr
        return kernel

    def copy(self, *, deep: bool = False) -> Kernel:
        """Copy of the kernel; the AnnData is shared unless ``deep``, the matrix is shared unless ``deep``."""
        out = _copy.copy(self)
        out._params = dict(self._params)
        if deep:
            out._adata = self._adata.copy()
            out._T = _copy.deepcopy(self._T) if self._T is not None else None
        return out

    # ---------------------------------------------------------------- functions of a kernel, as methods
    # Each is a module-level function whose first parameter is the kernel; bound here, it keeps one
    # signature and one docstring (CellRank's names and order).
    simulate_random_walks = _random_walk.simulate_random_walks
    plot_random_walks = _random_walks.plot_random_walks
    compute_projection = _projection.compute_projection
    plot_projection = _projection.plot_projection

    # ---------------------------------------------------------------- algebra
    # KernelExpression is a Kernel, so its module imports this one: imported where the operators run.
    def __mul__(self, other: Any) -> Kernel:
        from cellfate_gpu.kernels._expression import KernelExpression

        if _algebra.is_scalar(other):
            return KernelExpression(_algebra.make_scaled(other, self))
        if isinstance(other, Kernel):
            return KernelExpression(_algebra.make_product([self, other]))
        return NotImplemented

    def __rmul__(self, other: Any) -> Kernel:
        return self.__mul__(other)

    def __add__(self, other: Any) -> Kernel:
        from cellfate_gpu.kernels._expression import KernelExpression

        if not isinstance(other, Kernel):
            return NotImplemented
        return KernelExpression(_algebra.make_sum([self, other]))

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


class UnidirectionalKernel(Kernel):
    """A kernel without direction (connectivities, precomputed matrices, real time): ``~k`` raises ``TypeError``."""


class BidirectionalKernel(Kernel):
    """A kernel with a direction: ``~k`` is a copy for the reversed process.

    The copy has no matrix yet; if ``k`` had been computed (and its ``compute_transition_matrix``
    passed ``recompute=`` to :meth:`_set_native`), the copy recomputes its matrix lazily, with the
    same arguments, on first use. Subclasses whose stored state depends on the direction
    override :meth:`_reversed` (the default copies and flips :attr:`backward`).
    """

    def _reversed(self) -> BidirectionalKernel:
        out = self.copy()
        out._backward = not self._backward
        return out

    def __invert__(self) -> BidirectionalKernel:
        out = self._reversed()
        out._T, out._backend, out._params = None, None, {}
        out._pending = self._recompute if self._T is not None else self._pending
        out._recompute = None
        return out


# Pickles written before KernelExpression and PrecomputedKernel had their own modules name them as
# attributes of this one; pickle looks them up with getattr, which lands here (PEP 562).
_MOVED = {
    "KernelExpression": "cellfate_gpu.kernels._expression",
    "PrecomputedKernel": "cellfate_gpu.kernels._precomputed",
}


def __getattr__(name: str) -> Any:
    if name in _MOVED:
        import importlib

        return getattr(importlib.import_module(_MOVED[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
