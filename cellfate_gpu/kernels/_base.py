"""The kernel base: what every kernel is, and how it holds its transition matrix.

A kernel computes a row-stochastic transition matrix ``T`` on a backend and keeps it there;
:attr:`Kernel.transition_matrix` is the host copy (an explicit, logged transfer) and
:attr:`Kernel.native_transition_matrix` the backend object that estimators use. Every matrix a
kernel stores passes :func:`validate_transition_matrix` (square, ``n_cells x n_cells``, finite,
non-negative, rows summing to one).

This module holds :class:`Kernel` (abstract), the two direction classes, the
:class:`KernelExpression` that holds the matrix of ``0.8 * pk + 0.2 * ck`` (the algebra itself
is :mod:`cellfate_gpu.kernels._algebra`), and :class:`PrecomputedKernel`, the kernel of a given
matrix, which :meth:`Kernel.from_adata` returns (it lives here so that the root class and the
kernel it loads need no import cycle). Serialisation is :mod:`cellfate_gpu.kernels._io`.

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
from cellfate_gpu.kernels import _algebra, _io
from cellfate_gpu.kernels._random_walk import simulate_random_walks
from cellfate_gpu.kernels._rowwise import row_normalize

__all__ = [
    "BidirectionalKernel",
    "Kernel",
    "KernelExpression",
    "PrecomputedKernel",
    "UnidirectionalKernel",
    "check_no_options",
    "validate_transition_matrix",
]

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


def check_no_options(where: str, options: Mapping[str, Any], allowed: tuple[str, ...] = ()) -> None:
    """Refuse keyword options that ``where`` does not know (instead of swallowing them in ``**kwargs``).

    Raises
    ------
    TypeError
        Naming every unknown option (and the accepted ones, if any).
    """
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        valid = f"; accepted here: {sorted(allowed)}" if allowed else ""
        raise TypeError(f"{where} got unknown option(s) {unknown}{valid}.")


def _format_value(value: Any) -> str:
    """One parameter value as CellRank prints it: floats rounded to 3 digits, everything else ``repr``."""
    if isinstance(value, bool | np.bool_):
        return repr(bool(value))
    if isinstance(value, float | np.floating):
        return repr(round(float(value), 3))
    if isinstance(value, np.integer):
        return repr(int(value))
    return repr(value)


def _is_number(x: Any) -> bool:
    return isinstance(x, int | float | np.integer | np.floating) and not isinstance(x, bool | np.bool_)


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
        if not sp.issparse(matrix) and not backend.is_native(matrix):
            matrix = np.asarray(matrix, dtype=np.float64)
            if matrix.ndim != 2:
                raise ValueError(f"Transition matrix must be 2-D, got shape {matrix.shape}.")
            matrix = sp.csr_matrix(matrix)
        if sp.issparse(matrix):
            matrix = sp.csr_matrix(matrix, dtype=np.float64)
            matrix.sum_duplicates()
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
        return simulate_random_walks(
            self,
            n_sims=n_sims,
            max_iter=max_iter,
            seed=seed,
            successive_hits=successive_hits,
            start_ixs=start_ixs,
            stop_ixs=stop_ixs,
        )

    def compute_projection(
        self, basis: str = "umap", key_added: str | None = None, recompute: bool = False, connectivities: Any = None
    ):
        """Project the transition matrix onto an embedding (``obsm["T_fwd_<basis>"]``), as CellRank."""
        from cellfate_gpu.kernels._projection import compute_projection

        return compute_projection(
            self, basis=basis, key_added=key_added, recompute=recompute, connectivities=connectivities
        )

    def plot_projection(self, basis: str = "umap", stream: bool = True, **kwargs: Any):
        """Streamlines (or grid arrows) of the projected transition matrix, as CellRank."""
        from cellfate_gpu.kernels._projection import plot_projection

        return plot_projection(self, basis=basis, stream=stream, **kwargs)

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
        """Simulate random walks and draw them on an embedding; see :func:`cellfate_gpu.pl.plot_random_walks`."""
        from cellfate_gpu.pl._random_walks import plot_random_walks

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
        if _is_number(other):
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
        placeholder = adata is None
        if adata is None:
            adata = ad.AnnData(shape=(matrix.shape[0], 0))
        elif adata.n_obs != matrix.shape[0]:
            raise ValueError(f"Transition matrix has shape {matrix.shape} but adata has {adata.n_obs} cells.")
        super().__init__(adata, backward=None)
        self._placeholder_adata = placeholder
        self._direction = None if backward is None else bool(backward)
        self._obsp_key = obsp_key
        self._stored_repr: str | None = None
        be = get_backend(backend)
        host = sp.csr_matrix(matrix, dtype=np.float64)
        host.sum_duplicates()
        self._set_native(be.ensure_native(host), be, params)
        info("Using a precomputed transition matrix (%d cells) on backend %r", matrix.shape[0], be.name)

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
