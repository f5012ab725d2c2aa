"""The kernel base: what every kernel is, and how it holds its transition matrix.

A kernel computes a row-stochastic transition matrix ``T`` on a backend and keeps it there;
:attr:`Kernel.transition_matrix` is the host copy (an explicit, logged transfer) and
:attr:`Kernel.native_transition_matrix` the backend object that estimators use. Every matrix a
kernel stores passes :func:`~cellfate_gpu.kernels._validation.validate_transition_matrix`
(square, ``n_cells x n_cells``, finite, non-negative, rows summing to one).

This module holds :class:`Kernel` (abstract), the two direction classes, and the two concrete
kernels that :class:`Kernel`'s own methods return: :class:`KernelExpression`, the kernel of
``0.8 * pk + 0.2 * ck`` (what ``*`` and ``+`` make), and :class:`PrecomputedKernel`, the kernel
of a given matrix (what :meth:`Kernel.from_adata` loads). A class and the subclasses its methods
construct must share a module, or their modules would import each other; everything else lives
beside it:

* :mod:`~cellfate_gpu.kernels._algebra` — the expression algebra (nodes, weights, combination,
  repr), which :class:`KernelExpression` composes;
* :mod:`~cellfate_gpu.kernels._io` — CellRank's AnnData/h5ad layout (write and read);
* :mod:`~cellfate_gpu.kernels._validation` — the transition-matrix invariants and input checks;
* :mod:`~cellfate_gpu.kernels._random_walk`, :mod:`~cellfate_gpu.kernels._projection` and
  :func:`cellfate_gpu.pl.plot_random_walks` — functions of a kernel that :class:`Kernel` binds
  as methods (one signature, one docstring).

How ``~k`` recomputes: a concrete kernel passes the keyword arguments that reproduce its
computation to :meth:`Kernel._set_native` (``recompute=``); ``~k`` copies the kernel, flips the
direction and recomputes with those arguments on first use. No method is rewritten behind the
subclass's back.
"""

from __future__ import annotations

import abc
import copy as _copy
from collections.abc import Mapping
from typing import Any, final

import numpy as np
import scipy.sparse as sp

from cellfate_gpu import _keys
from cellfate_gpu._logging import debug, info
from cellfate_gpu.backends import Backend, get_backend
from cellfate_gpu.kernels import _algebra, _io, _projection, _random_walk
from cellfate_gpu.kernels._rowwise import row_normalize
from cellfate_gpu.kernels._validation import (
    JOBLIB_BACKENDS,
    check_no_options,
    host_transition_csr,
    validate_transition_matrix,
)
from cellfate_gpu.pl import _random_walks

__all__ = [
    "BidirectionalKernel",
    "Kernel",
    "KernelExpression",
    "PrecomputedKernel",
    "UnidirectionalKernel",
]


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
        Called on :class:`Kernel` (or when that fails), a :class:`PrecomputedKernel` is returned
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
    def __mul__(self, other: Any) -> Kernel:
        if _algebra.is_scalar(other):
            return KernelExpression(_algebra.make_scaled(other, self))
        if isinstance(other, Kernel):
            return KernelExpression(_algebra.make_product([self, other]))
        return NotImplemented

    def __rmul__(self, other: Any) -> Kernel:
        return self.__mul__(other)

    def __add__(self, other: Any) -> Kernel:
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


def _leaf_native(kernel: Kernel, backend: Backend) -> Any:
    T = kernel.native_transition_matrix
    if kernel.backend is backend or (backend.is_native(T) and kernel.backend.name == backend.name):
        return T
    info("Moving the transition matrix of %r from backend %r to %r", kernel, kernel.backend.name, backend.name)
    return backend.from_scipy_csr(kernel.transition_matrix)


def _first_backend(kernels: list[Kernel]) -> Backend:
    for k in kernels:
        if k.backend is not None:
            return k.backend
    if kernels:  # only lazily pending ones left: computing the first one picks the backend
        kernels[0].native_transition_matrix  # noqa: B018
        return kernels[0].backend
    return get_backend(None)


def _common_adata(operands: list[Kernel]):
    """The one AnnData all operands describe (placeholder AnnData of bare matrices aside).

    Raises
    ------
    ValueError
        Operands have different numbers of cells, or are built on different AnnData objects
        (same size or not: their cells need not be the same cells).
    """
    n = len(operands[0])
    for op in operands[1:]:
        if len(op) != n:
            raise ValueError(f"Kernels have different numbers of cells: {n} vs {len(op)}.")
    real = []
    for leaf in (leaf for op in operands for leaf in op.kernels):
        if not leaf._placeholder_adata and all(leaf.adata is not a for a in real):
            real.append(leaf.adata)
    if len(real) > 1:
        raise ValueError(
            f"Cannot combine kernels built on {len(real)} different AnnData objects (each with {n} cells): "
            "the cells of one need not be the cells of the other. Build every kernel of the expression on the "
            "same AnnData object."
        )
    return real[0] if real else operands[0].adata


@final
class KernelExpression(Kernel):
    r"""A scaled kernel, a weighted sum or an element-wise product of kernels; T is computed from the operands.

    The expression is an :class:`~cellfate_gpu.kernels._algebra.Expression` node (public as
    :attr:`expression`: ``operation``, ``operands``, ``constant``). Its matrix is the
    row-normalised combination of the operands' matrices,
    :math:`T = \operatorname{rownorm}(\sum_i w_i T_i)` for a sum and
    :math:`\operatorname{rownorm}(T_1 \circ T_2 \circ \dots)` for a product.

    Parameters
    ----------
    expression
        The node (made by ``c * k``, ``k1 + k2``, ``k1 * k2``).

    Raises
    ------
    ValueError
        Forward and backward operands are mixed, the operands have different numbers of cells, or
        they were built on different AnnData objects.
    """

    def __init__(self, expression: _algebra.Expression):
        operands = list(expression.operands)
        directions = {k.backward for k in operands if k.backward is not None}
        if len(directions) > 1:
            raise ValueError(
                "Cannot combine forward and backward kernels "
                f"({', '.join(repr(k) for k in operands)}); invert one of them with `~` first."
            )
        adata = _common_adata(operands)
        super().__init__(adata, backward=directions.pop() if directions else None)
        self._expression = expression

    @property
    def expression(self) -> _algebra.Expression:
        """The algebra node: ``operation`` (``"scale"``, ``"sum"``, ``"product"``), ``operands``, ``constant``."""
        return self._expression

    @property
    def operands(self) -> list[Kernel]:
        """The direct operands of this node."""
        return list(self._expression.operands)

    @property
    def adata(self):
        """The annotated data the operands share."""
        return _common_adata(self.operands)

    @property
    def kernels(self) -> list[Kernel]:
        """The leaf kernels of the expression, in order."""
        return [leaf for op in self._expression.operands for leaf in op.kernels]

    def __len__(self) -> int:
        return len(self._expression.operands[0])

    def _is_computed(self) -> bool:
        return all(k._is_computed() for k in self.kernels)

    def compute_transition_matrix(self, *args: Any, backend: Any = None, **kwargs: Any) -> KernelExpression:
        """Combine the operands' transition matrices (each must be computed); returns ``self``.

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
        T = row_normalize(be, self._raw(be), what=f"kernel expression {self!r}")
        validate_transition_matrix(be, T, len(self))
        self._T, self._backend = T, be
        return self

    @property
    def native_transition_matrix(self) -> Any:
        """The combined matrix on its backend, computed from the operands on first use."""
        if self._T is None:
            self.compute_transition_matrix()
        return self._T

    def _raw(self, backend: Backend) -> Any:
        """The unnormalised combination on ``backend`` (CellRank normalises only the top)."""

        def raw_of(op: Kernel) -> Any:
            return op._raw(backend) if isinstance(op, KernelExpression) else _leaf_native(op, backend)

        return _algebra.combine(backend, self._expression, raw_of)

    @property
    def params(self) -> dict[str, Any]:
        """``{f"{KernelName}_{i}": kernel.params}`` over the leaf kernels."""
        return {f"{type(k).__name__}_{i}": k.params for i, k in enumerate(self.kernels)}

    def copy(self, *, deep: bool = False) -> KernelExpression:
        """Copy of the expression and its operands (``deep``: one copy of the AnnData, shared by all leaves)."""
        if not deep:
            return KernelExpression(self._expression.with_operands([op.copy() for op in self.operands]))
        return _deep_copy(self, _common_adata(self.operands).copy())

    def __invert__(self) -> KernelExpression:
        """Reverse every bidirectional operand (CellRank: direction-less ones are copied)."""
        if self.backward is None:
            return self.copy()
        return KernelExpression(
            self._expression.with_operands([~op if op.backward is not None else op.copy() for op in self.operands])
        )

    def _format(self, *, top: bool, short: bool = False) -> str:
        body = _algebra.format_expression(self._expression, lambda op: op._format(top=False, short=short))
        return f"~{body}" if self.backward and top else body


def _deep_copy(kernel: Kernel, adata) -> Kernel:
    """Deep copy of an expression tree whose leaves all get ``adata`` (bare-matrix placeholders keep theirs)."""
    if isinstance(kernel, KernelExpression):
        return KernelExpression(kernel.expression.with_operands([_deep_copy(op, adata) for op in kernel.operands]))
    out = kernel.copy()
    out._T = _copy.deepcopy(kernel._T) if kernel._T is not None else None
    out._adata = kernel.adata.copy() if kernel._placeholder_adata else adata
    return out


@final
class PrecomputedKernel(UnidirectionalKernel):
    """Wrap a row-stochastic matrix, ``adata.obsp[obsp_key]``, or another kernel's matrix (CellRank 2.3.3).

    Unlike CellRank, the matrix is not silently row-normalised: it must already be row-stochastic
    (rows summing to one within ``1e-6``), else a ``ValueError`` names the number of bad rows.

    Parameters
    ----------
    object
        A SciPy sparse or dense matrix, a computed :class:`Kernel` (its matrix, direction and
        parameters are taken), an :class:`~anndata.AnnData` (read ``obsp[obsp_key]``), an
        ``obsp`` key (with ``adata``), or ``None`` to read ``adata.obsp[obsp_key]``.
    adata
        Annotated data (an empty one with matching ``n_obs`` is made for a bare matrix).
    obsp_key
        Key in ``adata.obsp``; default ``T_bwd`` if ``backward`` else ``T_fwd``.
    backward
        Direction of the process the matrix describes (``None``: no direction).
    backend
        Where the matrix is stored (default ``settings.backend``).

    Notes
    -----
    ``params['origin']`` records where the matrix came from (``'array'``,
    ``"adata.obsp['T_fwd']"`` or the source kernel's repr), as in CellRank.
    """

    def __init__(
        self,
        object: Any = None,
        adata=None,
        obsp_key: str | None = None,
        backward: bool | None = False,
        *,
        backend: Any = None,
    ):
        import anndata as ad

        params: dict[str, Any] = {}
        if isinstance(object, ad.AnnData):
            object, adata = None, object
        if isinstance(object, str):
            object, obsp_key = None, object
        if isinstance(object, Kernel):
            adata = adata if adata is not None else object.adata
            backward = object.backward
            matrix = object.transition_matrix
            params = {**object.params, "origin": repr(object)}
        elif object is None:
            if adata is None:
                raise ValueError("Give a matrix, a kernel, or adata with obsp_key.")
            obsp_key = obsp_key or ("T_bwd" if backward else "T_fwd")
            if obsp_key not in adata.obsp:
                raise KeyError(
                    f"No transition matrix in adata.obsp[{obsp_key!r}]; available: {list(adata.obsp.keys())}."
                )
            matrix = adata.obsp[obsp_key]
            params = {"origin": f"adata.obsp[{obsp_key!r}]"}
        else:
            matrix = object
            params = {"origin": "array"}
        host = host_transition_csr(matrix)
        placeholder = adata is None
        if adata is None:
            adata = ad.AnnData(shape=(host.shape[0], 0))
        elif adata.n_obs != host.shape[0]:
            raise ValueError(f"Transition matrix has shape {host.shape} but adata has {adata.n_obs} cells.")
        super().__init__(adata, backward=None)
        self._placeholder_adata = placeholder
        self._direction = None if backward is None else bool(backward)
        self._obsp_key = obsp_key
        self._stored_repr: str | None = None
        be = get_backend(backend)
        self._set_native(be.ensure_native(host), be, params)
        info("Using a precomputed transition matrix (%d cells) on backend %r", host.shape[0], be.name)

    @property
    def backward(self) -> bool | None:
        """Direction of the process the matrix describes."""
        return self._direction

    def _init_kwargs(self) -> dict[str, Any]:
        return {} if self._direction is None else {"backward": self._direction}

    def compute_transition_matrix(self, *args: Any, backend: Any = None, **kwargs: Any) -> PrecomputedKernel:
        """Nothing to compute; moves T to ``backend`` if one is given. Returns ``self``.

        Raises
        ------
        TypeError
            For any other argument (a precomputed matrix has no parameters).
        """
        if args:
            raise TypeError(
                f"PrecomputedKernel.compute_transition_matrix takes no positional arguments, got {len(args)}."
            )
        check_no_options("PrecomputedKernel.compute_transition_matrix", kwargs)
        if backend is not None:
            be = self._resolve_backend(backend)
            if be is not self._backend:
                self._set_native(be.from_scipy_csr(self.transition_matrix), be, self._params)
        return self
