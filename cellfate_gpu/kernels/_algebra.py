r"""The kernel expression algebra: weighted sums and element-wise products of transition matrices.

CellRank 2.3.3's rules, written once:

* ``c * k`` attaches a weight :math:`c > 0` (``c1 * (c2 * k)`` is ``(c1 c2) * k``);
* ``k_1 + \dots + k_m`` is :math:`\sum_i w_i T_i` with :math:`w_i = c_i / \sum_j c_j`, the
  constants renormalised to sum to one (a term without a constant counts :math:`c_i = 1`, so
  ``k1 + k2`` is ``0.5 * k1 + 0.5 * k2``); nested sums are flattened first;
* ``k_1 * \dots * k_m`` is the element-wise (Hadamard) product :math:`T_1 \circ \dots \circ T_m`;
  nested products are flattened first;
* only the top-level expression is row-normalised (the caller does that); nested sums and
  products are combined unnormalised, as CellRank does.

This module holds the algebra as data (:class:`Expression`, a frozen tree node) and the
operations on it; it knows nothing about kernels beyond the public protocol that every
:class:`~cellfate_gpu.kernels.Kernel` offers: ``operand.expression`` is ``None`` for a leaf
kernel and the :class:`Expression` of an expression. The
:class:`~cellfate_gpu.kernels.KernelExpression` that holds the combined matrix composes an
:class:`Expression`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np

__all__ = [
    "Expression",
    "Operation",
    "check_weight",
    "combine",
    "format_expression",
    "format_constant",
    "is_scalar",
    "make_product",
    "make_scaled",
    "make_sum",
    "sum_weights",
    "terms",
]

Operation = Literal["scale", "sum", "product"]


def is_scalar(x: Any) -> bool:
    """Whether ``x`` is a real number (Python or NumPy, booleans excluded): ``x * k`` scales a kernel."""
    return isinstance(x, int | float | np.integer | np.floating) and not isinstance(x, bool | np.bool_)


def check_weight(constant: Any) -> float | int:
    """A kernel weight as a Python number; it must be a finite positive real (not a bool).

    Raises
    ------
    ValueError
        For zero, negative, NaN or infinite weights, and for booleans.
    """
    if not is_scalar(constant):
        raise ValueError(f"Kernel weights must be finite positive numbers, got {constant!r}.")
    c = constant.item() if isinstance(constant, np.generic) else constant
    if not np.isfinite(c) or c <= 0:
        raise ValueError(f"Kernel weights must be finite and positive, got {constant!r}.")
    return c


@dataclasses.dataclass(frozen=True)
class Expression:
    """One node of the expression tree.

    Attributes
    ----------
    operation
        ``"scale"`` (one operand times :attr:`constant`), ``"sum"`` or ``"product"``.
    operands
        The operands: kernels or kernel expressions (opaque to this module).
    constant
        The weight of a ``"scale"`` node (``None`` otherwise).
    """

    operation: Operation
    operands: tuple[Any, ...]
    constant: float | int | None = None

    def __post_init__(self) -> None:
        if self.operation not in ("scale", "sum", "product"):
            raise ValueError(f"Unknown kernel operation {self.operation!r}.")
        if not self.operands:
            raise ValueError("A kernel expression needs at least one kernel.")
        if (self.operation == "scale") != (self.constant is not None) or (
            self.operation == "scale" and len(self.operands) != 1
        ):
            raise ValueError("A 'scale' node has exactly one operand and a constant; other nodes have none.")

    def with_operands(self, operands: Sequence[Any]) -> Expression:
        """The same operation (and constant) over other operands."""
        return dataclasses.replace(self, operands=tuple(operands))


def _node(operand: Any) -> Expression | None:
    return operand.expression


def make_scaled(constant: Any, operand: Any) -> Expression:
    """``constant * operand``; a scaled operand is folded (``c1 * (c2 * k)`` is ``(c1 c2) * k``)."""
    c = check_weight(constant)
    inner = _node(operand)
    if inner is not None and inner.operation == "scale":
        return Expression("scale", inner.operands, c * inner.constant)
    return Expression("scale", (operand,), c)


def _flatten(operation: Operation, operands: Sequence[Any]) -> tuple[Any, ...]:
    flat: list[Any] = []
    for op in operands:
        inner = _node(op)
        flat.extend(inner.operands if inner is not None and inner.operation == operation else [op])
    return tuple(flat)


def make_sum(operands: Sequence[Any]) -> Expression:
    """``operands[0] + operands[1] + ...`` with nested sums flattened."""
    return Expression("sum", _flatten("sum", operands))


def make_product(operands: Sequence[Any]) -> Expression:
    """``operands[0] * operands[1] * ...`` (element-wise) with nested products flattened."""
    return Expression("product", _flatten("product", operands))


def terms(expr: Expression) -> list[tuple[float, Any]]:
    r"""The ``(weight, operand)`` pairs of a sum with :math:`w_i = c_i / \sum_j c_j`.

    A ``"scale"`` operand contributes its constant and its inner operand; any other operand
    counts with :math:`c_i = 1`.
    """
    if expr.operation != "sum":
        raise ValueError(f"terms() is defined for sums, not for a {expr.operation!r} node.")
    constants, inner = [], []
    for op in expr.operands:
        node = _node(op)
        if node is not None and node.operation == "scale":
            constants.append(float(node.constant))
            inner.append(node.operands[0])
        else:
            constants.append(1.0)
            inner.append(op)
    return list(zip((float(w) for w in sum_weights(constants)), inner, strict=True))


def sum_weights(constants: Sequence[float]) -> np.ndarray:
    r"""Renormalised weights :math:`w_i = c_i / \sum_j c_j` (every :math:`c_i` finite and positive)."""
    c = np.asarray([float(check_weight(x)) for x in constants], dtype=np.float64)
    return c / c.sum()


def combine(backend: Any, expr: Expression, raw_of: Callable[[Any], Any]) -> Any:
    r"""The unnormalised matrix of ``expr`` on ``backend``.

    ``raw_of(operand)`` gives an operand's (unnormalised) native matrix. ``"scale"``:
    :math:`c\,T`; ``"sum"``: :math:`\sum_i w_i T_i` (:func:`terms`); ``"product"``:
    :math:`T_1 \circ T_2 \circ \dots`.
    """
    if expr.operation == "scale":
        return backend.linear_combination([float(expr.constant)], [raw_of(expr.operands[0])])
    if expr.operation == "sum":
        pairs = terms(expr)
        return backend.linear_combination([w for w, _ in pairs], [raw_of(op) for _, op in pairs])
    out = raw_of(expr.operands[0])
    for op in expr.operands[1:]:
        out = backend.multiply(out, raw_of(op))
    return out


def format_constant(c: float) -> str:
    """A weight as CellRank's ``Constant`` prints it: ``repr(round(c, 3))``."""
    return repr(round(c, 3)) if isinstance(c, float) else repr(c)


def format_expression(expr: Expression, fmt: Callable[[Any], str]) -> str:
    """CellRank's repr of a node: ``0.8 * K``, ``(0.8 * K1 + 0.2 * K2)``, ``(K1 * K2)``; ``fmt`` formats an operand."""
    if expr.operation == "scale":
        return f"{format_constant(expr.constant)} * {fmt(expr.operands[0])}"
    if expr.operation == "sum":
        return "(" + " + ".join(f"{format_constant(w)} * {fmt(op)}" for w, op in terms(expr)) + ")"
    return "(" + " * ".join(fmt(op) for op in expr.operands) + ")"
