"""The kernel of a kernel expression: ``0.8 * pk + 0.2 * ck``, ``k1 * k2``, what ``*`` and ``+`` make.

:class:`KernelExpression` holds an :class:`~cellfate_gpu.kernels._algebra.Expression` node (the
algebra: operations, weights, combination, repr) and computes its transition matrix from the
operands' matrices on one backend; the operators of :class:`~cellfate_gpu.kernels.Kernel` build it.
"""

from __future__ import annotations

import copy as _copy
from typing import Any, final

from cellfate_gpu._logging import info
from cellfate_gpu.backends import Backend, get_backend
from cellfate_gpu.kernels import _algebra
from cellfate_gpu.kernels._base import Kernel
from cellfate_gpu.kernels._rowwise import row_normalize
from cellfate_gpu.kernels._validation import validate_transition_matrix

__all__ = ["KernelExpression"]


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
