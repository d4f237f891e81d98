"""Active-set Newton–CG (GPCG): the second-order matrix-free solver.

Moré & Toraldo's GPCG (SIAM J. Optim. 1, 1991) for the bound-constrained quadratic
``f(x) = ½‖Ã x − ỹ‖²``, ``x ≥ 0``: gradient-projection steps find the active set
(many bounds change in one step), conjugate gradients solve the Newton system on the
face of the free variables.  Only operator applications are used — no Gram matrix,
no explicit column — so memory is ``O(S·L + C·P)``.

Gradient projection (GP) phase
    Steps ``x ← max(x − α g, 0)`` from the Cauchy length ``α = ‖pg‖²/‖Ã pg‖²`` (the
    exact minimiser along the projected gradient ``pg`` before any bound is hit),
    halved until the Armijo condition ``f(x⁺) ≤ f(x) + σ·gᵀ(x⁺ − x)`` holds.  A step
    costs about three passes: ``Ã pg``, the trial point (free when nothing is
    clipped: ``Ã x⁺ = Ã x − α Ã pg``) and the gradient.  The phase ends when the set
    of zero weights stops changing or a step gains less than ``gp_progress`` times
    the phase's best step.  It runs only when a zero weight has a negative gradient
    (wants to enter); otherwise the face is right and CG goes on.

CG phase on the face ``F = {x_j > 0}``
    CGLS (CG on the normal equations written with ``Ã`` and ``Ãᵀ``, which keeps the
    rounding of ``Ã`` rather than of ``ÃᵀÃ``) on ``min_d ½‖Ã_F d + r‖²``,
    ``r = Ã x − ỹ``: one forward and one adjoint pass per step (a Hessian-vector
    product).  The residual and the gradient at ``x + d`` come out of the recurrence,
    so the phase needs no extra pass.  A step that would take a free weight below
    zero is cut at the bound (the gradient there is interpolated: it is affine
    along the step), that weight joins the zeros and the phase ends — the cost
    decrease along the cut step is exact, no line search is needed.  Otherwise CG
    runs until the face gradient has fallen by the forcing term
    ``η = min(eta_max, sqrt(optimality))`` (inexact Newton: loose far from the
    solution, tight near it), a step gains less than ``10⁻³·ftol·f`` (rounding), or
    ``max_cg`` steps.  There is deliberately no absolute gradient target: on nearly
    collinear templates a face gradient at the KKT level still hides cost decreases
    of 1e-7 relative, which only further CG steps collect.

Stopping
    :class:`.stopping.Convergence` with ``window = 1`` is applied at the end of each
    CG phase, to the cost change since the previous CG phase (GP steps included):
    a phase that ends a cycle with no decrease has solved the face problem.  The
    certificate is then evaluated afresh with the operator (two passes: the
    recurrences accumulate rounding); if it fails the run goes on from the fresh
    values, and stops with status 2 only when that happens twice at the same cost.

Why not Bertsekas' projected Newton: with nearly collinear templates the Newton
direction of the free subproblem sends weights that are small but positive far
below zero; clipping them bends the projection arc and the Armijo search shrinks
the step to ``2⁻¹⁰`` and below, iteration after iteration (tried on the test mock:
thousands of passes to 1e-7 where this method needs a few hundred).
"""
from __future__ import annotations

import numpy as np

from .problem import LeastSquares
from .result import SolverResult, projected_gradient
from .stopping import Convergence, limit_reached

__all__ = ["newton_cg"]


def newton_cg(A, y=None, *, x0=None, gtol: float = 1e-6, ftol: float = 1e-12,
              eta_max: float = 0.1, max_cg: int | None = None, gp_progress: float = 0.25,
              armijo: float = 1e-4, max_iter: int = 100_000,
              max_passes: int | None = None) -> SolverResult:
    """NNLS by gradient projection + CG on the free face (GPCG); see the module docstring.

    Parameters
    ----------
    A, y : the problem (:class:`cubefit.solvers.problem.LeastSquares`).
    x0 : warm start ``(n,) ≥ 0`` (default 0): its positive weights are the first face.
    gtol, ftol : stopping rule (:class:`.stopping.Convergence`, window 1 over CG phases).
    eta_max : largest CG forcing term (relative fall of the face gradient).
    max_cg : CG steps per phase (default ``2·|F| + 10``; two passes each).
    gp_progress : a GP phase ends when a step gains less than this fraction of its
        best step.
    armijo : sufficient-decrease constant σ of the GP steps.
    max_iter, max_passes : safety limits (status 0).

    ``nit`` counts GP steps and CG phases; the history has one entry per iterate.
    """
    if not 0 < eta_max < 1:
        raise ValueError(f"eta_max: expected a forcing term in (0, 1), got {eta_max!r}")
    if max_cg is not None and int(max_cg) < 1:
        raise ValueError(f"max_cg: expected at least 1 CG step, got {max_cg!r}")
    prob = LeastSquares(A, y)
    conv = Convergence(prob, gtol, ftol, 1)
    if x0 is None:
        x = np.zeros(prob.n)
        r = -prob.y
        cost, grad = 0.5 * float(prob.y @ prob.y), -prob.b
    else:
        x = prob.check_x0(x0)
        cost, grad, Ax = prob.evaluate(x)
        r = Ax - prob.y
    opt = prob.optimality(x, grad)
    prob.record(cost, opt)
    tau = 0.1 * gtol * prob.grad0_norm          # face gradient at the KKT level
    y_norm = float(np.linalg.norm(prob.y))
    nit, status, message, failed_at = 0, 0, None, None
    while True:
        if np.any((x == 0) & (grad < -tau)):
            x, r, cost, grad, steps = _gp_phase(prob, x, r, cost, grad, armijo, gp_progress,
                                                y_norm, max_iter - nit)
            nit += steps
        x, r, cost, grad = _cg_phase(prob, x, r, cost, grad,
                                     min(eta_max, np.sqrt(prob.optimality(x, grad))), max_cg,
                                     1e-3 * ftol * max(cost, conv.floor))
        nit += 1
        opt = prob.optimality(x, grad)
        prob.record(cost, opt)
        settled = conv.update(cost, opt)
        limit = limit_reached(prob, nit, max_iter, max_passes)
        if settled is None and not limit:
            continue
        # Certify with the operator: the recurrences carry rounding.
        cost, grad, Ax = prob.evaluate(x)
        r = Ax - prob.y
        opt = prob.optimality(x, grad)
        prob.record(cost, opt)
        if settled is not None and opt <= gtol:
            status = 1
            break
        if limit:
            break
        if failed_at is not None and cost >= failed_at * (1 - ftol):
            status = 2
            message = (f"stalled at optimality {opt:.3g} > gtol={gtol:g}: neither gradient "
                       "projection nor CG lowers the cost (rounding)")
            break
        failed_at = cost
        conv.restart()
    return prob.result("newton_cg", x, cost, opt, nit, status, message)


def _gp_phase(prob: LeastSquares, x, r, cost, grad, armijo, progress, y_norm, max_steps):
    """Projected-gradient steps until the zero set settles; returns ``(x, r, f, g, steps)``."""
    best, steps = 0.0, 0
    while steps < max_steps:
        pg = projected_gradient(x, grad)
        w = prob.matvec(pg)
        ww = float(w @ w)
        if ww == 0.0:
            break
        alpha = float(pg @ pg) / ww
        # Rounding in the two costs (relative to f, and to the residual-data product
        # for f ≈ 0) must not reject a step that only rounding makes look uphill.
        slack = 1e-12 * cost + 1e-13 * np.sqrt(2.0 * cost) * y_norm
        for _ in range(40):
            z = x - alpha * pg
            xt = np.maximum(z, 0.0)
            rt = r - alpha * w if np.array_equal(xt, z) else prob.matvec(xt) - prob.y
            ft = 0.5 * float(rt @ rt)
            if ft <= cost + armijo * float(grad @ (xt - x)) + slack:
                break
            alpha *= 0.5
        else:
            break                        # no decrease left along the projected gradient
        changed = not np.array_equal(xt == 0, x == 0)
        drop = cost - ft
        x, r, cost, grad = xt, rt, ft, prob.rmatvec(rt)
        prob.record(cost, prob.optimality(x, grad))
        steps += 1
        best = max(best, drop)
        if not changed or drop <= progress * best:
            break
    return x, r, cost, grad, steps


def _cg_phase(prob: LeastSquares, x, r, cost, grad, eta, max_cg, floor):
    """CGLS on the face ``{x > 0}`` (module docstring); returns ``(x, r, f, g)``.

    A step whose exact model decrease ``½·a·γ`` is below ``floor`` ends the phase
    (rounding level: more steps cannot matter).  Recurrences: ``s = −(r + Ã d)`` is the residual of ``Ã_F d = −r`` and
    ``g(x + d) = −Ãᵀ s``; the face part of the latter is CG's normal residual.
    """
    free = x > 0
    z = np.where(free, -grad, 0.0)
    gamma = gamma0 = float(z @ z)
    if gamma == 0.0:
        return x, r, cost, grad
    steps = 2 * int(free.sum()) + 10 if max_cg is None else int(max_cg)
    xd, s, g, p = x.copy(), -r, grad, z
    for _ in range(steps):
        w = prob.matvec(p)
        ww = float(w @ w)
        if ww == 0.0:                            # p lies in the null space of Ã_F
            break
        a = gamma / ww
        if 0.5 * a * gamma <= floor:             # the step's exact decrease: rounding level
            break
        s_new = s - a * w
        g_new = -prob.rmatvec(s_new)
        neg = p < 0
        ratios = xd[neg] / -p[neg]
        cut = float(ratios.min()) if ratios.size else np.inf
        if cut < a:
            # Stop at the bound; the gradient is affine along the step.
            t = cut / a
            s = s - cut * w
            g = g + t * (g_new - g)
            xd = xd + cut * p
            xd[neg] = np.where(ratios <= cut, 0.0, np.maximum(xd[neg], 0.0))
            break
        xd = xd + a * p
        s, g = s_new, g_new
        z = np.where(free, -g, 0.0)
        gamma_new = float(z @ z)
        if gamma_new <= eta**2 * gamma0:
            break
        p = z + (gamma_new / gamma) * p
        gamma = gamma_new
    return xd, -s, 0.5 * float(s @ s), g
