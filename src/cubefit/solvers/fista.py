"""Accelerated projected gradient (FISTA) with adaptive restart: the first-order baseline.

Beck & Teboulle's FISTA on ``½‖Ã x − ỹ‖², x ≥ 0`` with

* step ``1/L`` from a power-iteration estimate of ``‖Ã‖²``, raised by backtracking
  when the sufficient-decrease test fails (the test is free: ``Ã x⁺`` is needed for
  the next extrapolated point anyway, and ``Ã y`` follows from linearity);
* the gradient-mapping restart of O'Donoghue & Candès (momentum reset when
  ``(y − x⁺)·(x⁺ − x) > 0``), which restores linear convergence on strongly convex
  problems.

Each iteration costs two passes (``Ãᵀ`` at ``y``, ``Ã`` at ``x⁺``).  The KKT test
needs ``∇f(x⁺)``: after a restart ``y = x⁺`` so it comes with the next iteration; it
is also computed every ``check_every`` iterations (one extra adjoint).  The problem
is ill-conditioned for real SSP libraries, so FISTA can need thousands of passes;
it is here as a reference, not as the default.
"""
from __future__ import annotations

import numpy as np

from .problem import LeastSquares, as_problem
from .result import SolverResult
from .stopping import limit_reached

__all__ = ["fista", "power_lipschitz"]


def power_lipschitz(prob: LeastSquares, iters: int = 15, rtol: float = 1e-3) -> float:
    """Estimate ``‖ÃᵀÃ‖₂`` by power iteration from a positive start (2 passes per step).

    Returns a lower bound (the Rayleigh quotient); FISTA's backtracking raises it
    if it is too small.
    """
    v = np.full(prob.n, 1.0 / np.sqrt(prob.n))
    lam = 0.0
    for _ in range(iters):
        w = prob.rmatvec(prob.matvec(v))
        new = float(np.linalg.norm(w))
        if new == 0.0:
            return 1.0
        v = w / new
        if abs(new - lam) <= rtol * new:
            return new
        lam = new
    return lam


def fista(A, y=None, *, x0=None, gtol: float = 1e-6, ftol: float = 1e-10, window: int = 50,
          check_every: int = 10, max_iter: int = 100_000, max_passes: int | None = None,
          lipschitz: float | None = None) -> SolverResult:
    """FISTA with restart.

    A first-order method can meet ``gtol`` far from the optimal cost on an
    ill-conditioned problem (small gradient along flat directions), so convergence
    (status 1) needs both the KKT test and the cost-change test: the best cost fell
    by at most ``ftol·cost`` over the last ``window`` iterations.  A settled cost that
    fails the KKT test stops with status 2; ``max_iter`` / ``max_passes`` with
    status 0.  ``x0``: warm start ``(n,) ≥ 0``.  ``lipschitz``: ``‖Ã‖²`` if known
    (skips the power iteration).
    """
    prob = as_problem(A, y)
    L = float(lipschitz) if lipschitz is not None else power_lipschitz(prob)
    x = np.zeros(prob.n) if x0 is None else prob.check_x0(x0)
    Ax = prob.matvec(x) if x.any() else np.zeros(prob.m)
    r = prob.residual(Ax)
    cost = prob.half_sq(r)
    g_x = prob.rmatvec(r)
    opt = prob.optimality(x, g_x)
    prob.record(cost, opt, x)
    yv, Ay, f_y, g_y, t = x, Ax, cost, g_x, 1.0
    best = [cost]
    # The cost-change test is relative, with a floor at the rounding level of ½‖ỹ‖²
    # so that a noiseless problem (optimal cost 0) can settle too.
    y_norm = prob.y_norm
    floor = np.finfo(np.float64).eps ** 2 * 0.5 * y_norm**2
    status, nit = 0, 0
    while True:
        if g_y is None:                  # gradient at the extrapolated point
            r_y = prob.residual(Ay)
            f_y, g_y = prob.half_sq(r_y), prob.rmatvec(r_y)
        # Backtracking on the quadratic upper bound.  The slack covers rounding in the
        # two costs (relative to f and to the residual-data product, for f ≈ 0), and
        # the doubling is capped because only rounding can defeat the test for L ≥ ‖Ã‖².
        slack = 1e-12 * f_y + 1e-13 * np.sqrt(2.0 * f_y) * y_norm
        for _ in range(60):
            xn = np.maximum(yv - g_y / L, 0.0)
            Axn = prob.matvec(xn)
            rn = prob.residual(Axn)
            cost_n = 0.5 * float(rn @ rn)
            step = xn - yv
            if cost_n <= f_y + float(g_y @ step) + 0.5 * L * float(step @ step) + slack:
                break
            L *= 2.0
        nit += 1
        if float((yv - xn) @ (xn - x)) > 0:     # momentum points uphill: restart it
            t = 1.0
        tn = 0.5 * (1.0 + np.sqrt(1.0 + 4.0 * t * t))
        beta = (t - 1.0) / tn
        yv = xn if beta == 0.0 else xn + beta * (xn - x)
        Ay = Axn if beta == 0.0 else Axn + beta * (Axn - Ax)
        t = tn
        x, Ax, cost = xn, Axn, cost_n
        best.append(min(best[-1], cost))
        g_y = None
        settled = len(best) > window and best[-window - 1] - best[-1] <= ftol * max(best[-1], floor)
        limit = limit_reached(prob, nit, max_iter, max_passes)
        if yv is x or settled or limit or nit % check_every == 0:
            g_x = prob.rmatvec(rn)
            opt = prob.optimality(x, g_x)
            prob.record(cost, opt, x)
            if yv is x:
                f_y, g_y = cost, g_x
            if settled:
                status = 1 if opt <= gtol else 2
                break
            if limit:
                break
        else:
            prob.record(cost, x=x)
    return prob.result("fista", x, cost, opt, nit, status)
