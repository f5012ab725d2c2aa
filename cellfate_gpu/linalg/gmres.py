r"""Batched GMRES: every right-hand side advances together, one SpMM per iteration.

Each column :math:`b_c` has its own Krylov space
:math:`\mathcal K_m(A M^{-1}, r_c) = \mathrm{span}\{r_c, A M^{-1} r_c, \dots\}` (right
preconditioning, so the residual that GMRES minimises is the true one). The bases of all columns
are stored as one ``(m + 1, n, s)`` block, so each iteration costs one sparse-times-block product
and batched dot products. The small least-squares problems
:math:`\min_y \|\beta_c e_1 - \bar H_c y\|` are solved on the host, once per restart cycle on a
device backend (one read of the ``(m + 1) x m x s`` Hessenberg block and the ``s`` residual
norms), or every iteration on a host backend, where reads are free and early exits save work.

Memory layout. The basis is one ``(s, m + 1, n)`` buffer; column ``c``'s first ``j + 1`` vectors
``buffer[c, :j + 1]`` are a C-contiguous prefix, so the Gram-Schmidt products
``V_c w_c`` and ``h_c^T V_c`` are plain GEMVs on contiguous memory, with no copies (a batched
``(s, j + 1, n)`` product on the strided slice ``buffer[:, :j + 1]`` makes CuPy copy the whole
basis, four times per step with CGS2).

Precision policy. Krylov vectors, the Hessenberg matrix, the least-squares problems and ``X``
are float64 whatever the matrix's storage type: a float32 matrix (``settings.dtype``) is widened
inside each product by the backend's SpMM, never the vectors narrowed, so the orthogonality of
the basis and the attainable residual are those of float64 arithmetic.

Progress. Long solves show a tqdm bar (at INFO verbosity, after two seconds) with the worst
relative residual, and log a line about every ten seconds with the iterations done, the residual
and an estimate of the iterations still needed (from the observed rate of residual decrease).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
from array_api_compat import array_namespace

from cellfate_gpu.backends._results import SolveResult, Status

__all__ = ["block_gmres", "jacobi_preconditioner"]


def jacobi_preconditioner(backend, A: Any) -> Callable[[Any], Any]:
    """Inverse diagonal of ``A`` as a block operator (zero diagonal entries are left unscaled)."""
    xp = backend.xp
    data, indices, indptr = backend.csr_components(A)
    rows = backend.row_ids(indptr, int(data.shape[0]))  # nnz known: no device read
    on_diag = xp.astype(indices == xp.astype(rows, indices.dtype), xp.float64)
    diag = backend.segment_sum(xp.astype(data, xp.float64) * on_diag, indptr)
    one = xp.ones_like(diag)
    inv = xp.where(diag != 0, one / xp.where(diag != 0, diag, one), one)

    def apply(X: Any) -> Any:
        return X * inv[:, None]

    apply.is_diagonal = True  # lets a backend's compiled GMRES sweep (gmres_sweep hook) read the diagonal
    return apply


class _BatchedBasis:
    """Krylov bases of ``s`` columns as one ``(s, size, n)`` block (preallocated where arrays are mutable).

    :meth:`project` and :meth:`subtract` compute :math:`h_c = V_c^T w_c` and :math:`w_c - V_c h_c`
    per column on the contiguous prefix ``buffer[c, :j]``; immutable arrays (JAX) keep a list of
    ``(s, n)`` vectors and use batched products.
    """

    def __init__(self, xp: Any, s: int, n: int, size: int, mutable: bool, device: Any):
        self.xp, self.mutable, self.s = xp, mutable, s
        self.buffer = xp.zeros((s, size, n), dtype=xp.float64, device=device) if mutable else None
        self.vectors: list[Any] = []

    def set(self, j: int, v: Any) -> None:
        if self.mutable:
            self.buffer[:, j, :] = v
        else:
            self.vectors.append(v)

    def get(self, j: int) -> Any:
        return self.buffer[:, j, :] if self.mutable else self.vectors[j]

    def project(self, j: int, w: Any) -> Any:
        """``(s, j)``: ``h[c] = V_c[:j] @ w[c]``."""
        xp = self.xp
        if self.mutable:
            return xp.stack([self.buffer[c, :j, :] @ w[c, :] for c in range(self.s)], axis=0)
        Vs = xp.stack(self.vectors[:j], axis=1)
        return (Vs @ w[:, :, None])[:, :, 0]

    def combine(self, j: int, h: Any) -> Any:
        """``(s, n)``: ``out[c] = h[c] @ V_c[:j]``."""
        xp = self.xp
        if self.mutable:
            return xp.stack([h[c, :] @ self.buffer[c, :j, :] for c in range(self.s)], axis=0)
        Vs = xp.stack(self.vectors[:j], axis=1)
        return (h[:, None, :] @ Vs)[:, 0, :]


# Pure functions of one cycle's start and end. ``backend.fuse`` compiles each into one program where
# the backend compiles (JAX: ``jax.jit``, one XLA program per shape instead of one per operation);
# elsewhere they run as they are. Their namespace is the arrays' own, so no ``xp`` or device is passed.
def _column_norms(R: Any) -> Any:
    """``||r_c||`` of every column of ``R``."""
    return array_namespace(R).linalg.vector_norm(R, axis=0)


def _cycle_start(R: Any) -> tuple[Any, Any]:
    """``(V_0, beta)``: the normalised residuals as rows ``(s, n)`` and their norms ``beta_c = ||r_c||``."""
    xp = array_namespace(R)
    beta = xp.linalg.vector_norm(R, axis=0)
    return (R / xp.where(beta > 0, beta, xp.ones_like(beta))).T, beta


def _residual(B: Any, AX: Any) -> Any:
    return B - AX


def _residual_norms(B: Any, AX: Any) -> Any:
    return array_namespace(B).linalg.vector_norm(B - AX, axis=0)


def _pack(H: Any, beta: Any, bnorm: Any) -> Any:
    """``H`` ``(steps + 1, used, s)`` with two more columns, ``beta`` and ``bnorm`` in row 0: one host read."""
    xp = array_namespace(H)
    zeros = xp.zeros_like(H[:, 0, :])  # (steps + 1, s), on H's device
    col_beta = xp.concat([beta[None, :], zeros[1:, :]], axis=0)
    col_bnorm = xp.concat([bnorm[None, :], zeros[1:, :]], axis=0)
    return xp.concat([H, xp.stack([col_beta, col_bnorm], axis=1)], axis=1)


def _lstsq_columns(H: np.ndarray, beta: np.ndarray, j: int) -> tuple[np.ndarray, np.ndarray]:
    """Solve ``min ||beta e1 - H[:j+1, :j, c] y||`` for every column ``c``; return ``y`` and residuals."""
    s = beta.shape[0]
    Y = np.zeros((j, s))
    res = np.zeros(s)
    for c in range(s):
        rhs = np.zeros(j + 1)
        rhs[0] = beta[c]
        y, *_ = np.linalg.lstsq(H[: j + 1, :j, c], rhs, rcond=None)
        Y[:, c] = y
        res[c] = np.linalg.norm(rhs - H[: j + 1, :j, c] @ y)
    return Y, res


def block_gmres(
    backend,
    A: Any,
    B: Any,
    *,
    tol: float = 1e-10,
    maxiter: int | None = None,
    restart: int | None = None,
    preconditioner: str | Callable | None = None,
    x0: Any = None,
) -> SolveResult:
    r"""Solve :math:`A X = B` for all columns of ``B`` with restarted, right-preconditioned GMRES.

    Parameters
    ----------
    backend
        The :class:`~cellfate_gpu.backends.Backend` that owns ``A`` and ``B``.
    A
        Native square matrix ``n x n`` (float64 or float32 storage; the vectors are float64 either
        way, see the module docstring).
    B
        ``(n,)`` or ``(n, s)`` backend array.
    tol
        Per-column relative residual target :math:`\|b_c - A x_c\| \le tol\,\|b_c\|` (checked on the
        true residual at the end of each cycle).
    maxiter
        Total number of GMRES iterations over all cycles (default ``min(20 n, 20000)``).
    restart
        Cycle length ``m`` (default ``min(30, n)``); memory is ``(m + 1) n s`` float64 values.
    preconditioner
        ``None``, ``"jacobi"`` or a callable applying :math:`M^{-1}` to an ``(n, s)`` block.
    x0
        Initial guess shaped like ``B``.

    Returns
    -------
    SolveResult
        ``X`` shaped like ``B``; ``iterations`` counts GMRES steps; ``residual_norms`` are the true
        relative residuals. ``status`` is ``BREAKDOWN`` (with the iteration in ``message``) if
        NaN or inf appear during the iteration (from the matrix, the preconditioner or overflow).
    """
    start_time = time.perf_counter()
    xp = backend.xp
    n = int(A.shape[0])
    vector = B.ndim == 1
    B2 = xp.astype(xp.reshape(B, (n, 1)) if vector else B, xp.float64)
    s = int(B2.shape[1])
    if restart is not None and restart < 1:
        raise ValueError(f"restart must be a positive integer, got {restart!r}.")
    m = min(restart or 30, n)
    maxiter = maxiter if maxiter is not None else min(20 * n, 20_000)
    if preconditioner is None or preconditioner == "none":
        precond = None
    elif preconditioner == "jacobi":
        precond = jacobi_preconditioner(backend, A)
    elif callable(preconditioner):
        precond = preconditioner
    else:
        raise ValueError(
            f"preconditioner={preconditioner!r} is not offered by the {backend.name!r} backend; "
            "use None, 'jacobi' or a callable."
        )
    apply_m = (lambda V: xp.astype(precond(V), xp.float64)) if precond is not None else (lambda V: V)

    def matmat(V: Any) -> Any:
        # float64 vectors always; a float32 matrix is widened inside the backend's SpMM.
        return xp.astype(backend.spmm(A, V), xp.float64)

    X = xp.zeros_like(B2) if x0 is None else xp.astype(xp.reshape(x0, (n, s)), xp.float64)
    device = getattr(B2, "device", None)
    one = xp.ones((s,), dtype=xp.float64, device=device)
    fuse = getattr(backend, "fuse", lambda fn: fn)
    column_norms, cycle_start, residual = fuse(_column_norms), fuse(_cycle_start), fuse(_residual)
    residual_norms, pack = fuse(_residual_norms), fuse(_pack)
    bnorm_dev = column_norms(B2)
    iterations = matvecs = 0
    status = Status.MAX_ITER
    message = ""
    bnorm = beta = None
    res_final = None
    start_from_zero = x0 is None
    mutable = getattr(backend, "mutable_arrays", True)
    monitor = _Monitor(tol, maxiter, s, n)
    # Backend hook: ``backend.gmres_sweep(A, m, s, precond)`` may return a fixed-shape basis whose
    # ``extend(steps)`` runs a whole cycle as one compiled program and returns its (m+1, m, s)
    # Hessenberg block (JAX: one XLA program per cycle length instead of one per step and shape).
    # Without it (the default, and on host backends) the generic loop below runs.
    hook = getattr(backend, "gmres_sweep", None)
    sweep = hook(A, m, s, precond) if hook is not None and not backend.host_is_free else None

    try:
        while iterations < maxiter:
            if start_from_zero:
                R = B2
                start_from_zero = False
            else:
                R = residual(B2, matmat(X))
                matvecs += s
            V0, beta_dev = cycle_start(R)
            steps = min(m, maxiter - iterations)
            basis = sweep if sweep is not None else _BatchedBasis(xp, s, n, steps + 1, mutable, device)
            basis.set(0, V0)
            H_cols: list[Any] = []
            host_H = np.zeros((steps + 1, steps, s))
            if backend.host_is_free:
                beta, bnorm = backend.to_host(beta_dev), backend.to_host(bnorm_dev)
            est = None
            H_block = None
            if sweep is not None:
                H_block = sweep.extend(steps)[: steps + 1, :steps, :]
                iterations += steps
                matvecs += s * steps
                monitor.step(iterations, None)
            for j in range(steps) if sweep is None else ():
                w = xp.asarray(matmat(apply_m(basis.get(j).T)).T, copy=True)  # (s, n) contiguous: one SpMM
                matvecs += s
                h = basis.project(j + 1, w)  # (s, j+1)
                w = w - basis.combine(j + 1, h)
                h2 = basis.project(j + 1, w)  # CGS2: the second pass restores orthogonality
                w = w - basis.combine(j + 1, h2)
                h = (h + h2).T  # (j+1, s)
                hn = xp.linalg.vector_norm(w, axis=1)
                basis.set(j + 1, w / xp.where(hn > 0, hn, one)[:, None])
                pad = xp.zeros((steps - j - 1, s), dtype=xp.float64, device=device)
                H_cols.append(xp.concat([h, hn[None, :], pad], axis=0))
                iterations += 1
                if backend.host_is_free:
                    # Reads are free on the host: test the least-squares residual every step, stop early.
                    host_H[:, j, :] = backend.to_host(H_cols[-1])
                    if not np.all(np.isfinite(host_H[:, j, :])):
                        break
                    _, est = _lstsq_columns(host_H, beta, j + 1)
                    monitor.step(iterations, est / np.where(bnorm > 0, bnorm, 1.0))
                    if np.all(est <= 0.5 * tol * np.where(bnorm > 0, bnorm, 1.0)) or np.all(host_H[j + 1, j, :] == 0):
                        break
                else:
                    monitor.step(iterations, None)
            used = steps if sweep is not None else len(H_cols)
            if not backend.host_is_free:
                # The one read of this cycle: the Hessenberg block with the start and right-hand-side norms.
                H_new = H_block if H_block is not None else xp.stack(H_cols, axis=1)
                packed = backend.to_host(pack(H_new, beta_dev, bnorm_dev))
                host_H = packed[:, :used, :]
                beta, bnorm = packed[0, used, :], packed[0, used + 1, :]
            if not (np.all(np.isfinite(host_H[:, :used, :])) and np.all(np.isfinite(beta))):
                status = Status.BREAKDOWN
                message = (
                    f"non-finite values (NaN or inf) appeared by iteration {iterations}: the matrix, the "
                    "preconditioner or an overflow produced them"
                )
                break
            Y, est = _lstsq_columns(host_H, beta, used)
            Yd = backend.asarray(np.ascontiguousarray(Y.T))  # (s, used)
            update = basis.combine(used, Yd).T  # (n, s)
            X = X + apply_m(update)
            scale = np.where(bnorm > 0, bnorm, 1.0)
            monitor.cycle(iterations, est / scale)
            if np.all(est <= tol * scale) or iterations >= maxiter:
                # Only the true residual decides convergence; the least-squares estimate can drift from it.
                res_final = backend.to_host(residual_norms(B2, matmat(X))) / scale
                matvecs += s
                if np.all(res_final <= tol):
                    status = Status.CONVERGED
                    break
    finally:
        monitor.close()

    if res_final is None or status is Status.BREAKDOWN:
        bn = backend.to_host(bnorm_dev) if bnorm is None else bnorm
        res_final = backend.to_host(residual_norms(B2, matmat(X))) / np.where(bn > 0, bn, 1.0)
    Xout = xp.reshape(X, (n,)) if vector else X
    return SolveResult(
        status=status,
        iterations=iterations,
        matvecs=matvecs,
        seconds=time.perf_counter() - start_time,
        backend=backend.name,
        X=Xout,
        residual_norms=res_final,
        method="gmres",
        message=message,
    )


class _Monitor:
    """Progress of a long solve: a tqdm bar and a log line about every ten seconds, with an estimate."""

    LOG_EVERY = 10.0

    def __init__(self, tol: float, maxiter: int, s: int, n: int):
        from cellfate_gpu._logging import progress_bar

        self.tol, self.maxiter = tol, maxiter
        self.bar = progress_bar(total=maxiter, desc=f"GMRES ({s} rhs, n={n})", unit="it")
        self.started = self.last_log = time.perf_counter()
        self.history: list[tuple[int, float]] = []
        self.shown = 0

    def _estimate(self) -> int | None:
        """Iterations still needed, from the rate of decrease of the worst residual over the last cycles."""
        if len(self.history) < 2:
            return None
        (i0, r0), (i1, r1) = self.history[max(0, len(self.history) - 4)], self.history[-1]
        if not (r1 > 0 and r0 > r1 and i1 > i0):
            return None
        rate = (np.log(r0) - np.log(r1)) / (i1 - i0)
        left = max(np.log(r1 / self.tol), 0.0) / rate
        # a stagnating residual (rate ~ 1e-300) gives inf or an absurd count: no estimate then
        return int(np.ceil(left)) if np.isfinite(left) and left <= 100 * self.maxiter else None

    def step(self, iterations: int, residuals: np.ndarray | None) -> None:
        self.bar.update(iterations - self.shown)
        self.shown = iterations
        if residuals is not None:
            worst = float(np.max(residuals))
            if not self.history or iterations - self.history[-1][0] >= 10:
                self.history.append((iterations, worst))
            self._report(iterations, worst)

    def cycle(self, iterations: int, residuals: np.ndarray) -> None:
        worst = float(np.max(residuals))
        if not self.history or self.history[-1][0] != iterations:
            self.history.append((iterations, worst))
        self._report(iterations, worst)

    def _report(self, iterations: int, worst: float) -> None:
        from cellfate_gpu._logging import info

        left = self._estimate()
        more = f", ~{left} more" if left is not None else ""
        self.bar.set_postfix_str(f"residual {worst:.2e}{more}", refresh=False)
        now = time.perf_counter()
        if now - self.last_log >= self.LOG_EVERY:
            self.last_log = now
            per_it = (now - self.started) / max(iterations, 1)
            eta = f", about {left} more iterations (~{left * per_it:.0f}s)" if left is not None else ""
            msg = "    GMRES: %d iterations, worst relative residual %.2e (tol %.1e)%s"
            info(msg, iterations, worst, self.tol, eta)

    def close(self) -> None:
        self.bar.close()
