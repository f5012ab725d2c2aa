"""Counted SpMMs: which backend instances report their products, and to which recorders.

:meth:`Backend.spmm <cellfate_gpu.backends.Backend.spmm>` is a template method: it runs the
backend's own ``_spmm`` and, on a *counting* instance only, reports the product ``A @ X`` and the
seconds it took to every recorder open in the current context. A counting instance is a shallow
copy made by :func:`counting_backend` (same class, same state) whose private flag
``Backend._counts_spmm`` is set; every instance a backend class makes, and so every cached
instance :func:`~cellfate_gpu.backends.get_backend` hands out, has it unset and pays one attribute
read per product.

Recorders (:class:`~cellfate_gpu.benchmarking.MatvecCounter`, say: anything with
``record(A, X, seconds)``) are scoped like :meth:`settings.using
<cellfate_gpu._settings._Settings.using>`: :func:`open_recorder` pushes one onto a
:class:`contextvars.ContextVar` and :func:`close_recorder` pops it, so recorders nest (an outer one
sees the products of an inner one too) and threads or tasks with their own context do not see each
other's.
"""

from __future__ import annotations

import contextlib
import contextvars
import copy
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

if TYPE_CHECKING:
    from cellfate_gpu.backends._base import Backend

__all__ = ["SpmmRecorder", "close_recorder", "counted_spmm", "counting_backend", "open_recorder"]

B = TypeVar("B", bound="Backend")


class SpmmRecorder(Protocol):
    """What a counting backend reports each SpMM to."""

    def record(self, A: Any, X: Any, seconds: float) -> None:
        """Add one product ``A @ X`` that took ``seconds``."""


#: The recorders open in this context, innermost last (a tuple: contexts never share a mutable list).
_OPEN_RECORDERS: contextvars.ContextVar[tuple[SpmmRecorder, ...]] = contextvars.ContextVar(
    "cellfate_gpu_spmm_recorders", default=()
)


def open_recorder(recorder: SpmmRecorder) -> contextvars.Token:
    """Push ``recorder`` onto the recorders of the current context; give the token to :func:`close_recorder`."""
    return _OPEN_RECORDERS.set((*_OPEN_RECORDERS.get(), recorder))


def close_recorder(token: contextvars.Token) -> None:
    """Restore the recorders open before the :func:`open_recorder` call that returned ``token``."""
    _OPEN_RECORDERS.reset(token)


def counting_backend(backend: B) -> B:
    """A private view of ``backend`` whose SpMMs are reported to the open recorders.

    The view is a shallow copy of the backend instance (same class, same state: device handles,
    caches and options are shared, not duplicated) with ``Backend._counts_spmm`` set, so its
    :meth:`~cellfate_gpu.backends.Backend.spmm` reports each product to every recorder open in the
    current context, then returns the backend's own result; with none open it costs one
    context-variable read. The generic solvers the backend inherits call ``self.spmm``, so their
    products are counted too. ``backend`` itself, usually the cached instance
    :func:`~cellfate_gpu.backends.get_backend` hands everyone, is never modified: code that did not
    ask for the view is not counted, and no state outlives the view.

    Give the view as ``backend=`` to what is measured (kernels keep it; estimators use their
    kernel's backend).
    """
    view = copy.copy(backend)
    view._counts_spmm = True  # the documented flag of the private copy; no method is replaced
    return view


def counted_spmm(product: Callable[[Any, Any], Any], A: Any, X: Any) -> Any:
    """``product(A, X)``, timed and reported to every open recorder (what a counting backend's ``spmm`` runs)."""
    recorders = _OPEN_RECORDERS.get()
    if not recorders:
        return product(A, X)
    t0 = time.perf_counter()
    Y = product(A, X)
    with contextlib.suppress(Exception):  # wait for asynchronous devices where possible
        getattr(Y, "block_until_ready", lambda: None)()
    seconds = time.perf_counter() - t0
    for recorder in recorders:
        recorder.record(A, X, seconds)
    return Y
