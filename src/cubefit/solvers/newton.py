"""Active-set Newton–CG: the second-order matrix-free solver.

An active-set method for ``f(x) = ½‖Ã x − ỹ‖²``, ``x ≥ 0``, whose subproblems —
the Newton systems on the current face — are solved by conjugate gradients, so that
only operator applications are needed: no Gram matrix, no explicit column, memory
``O(S·L + C·P)``.  It is the method for problems too large for explicit columns;
where the optimum is sparse and columns are affordable, the working set
(:func:`cubefit.solvers.nnls_working_set`) is much faster (docs/benchmarks.md).

One iteration, at ``x`` with gradient ``g = Ãᵀ(Ã x − ỹ)``:

1. **Admission.**  The free set is ``F = {x_j > 0}`` plus the ``k`` zero weights with
   the most negative gradient (below ``−vtol·‖∇f(0)‖∞``), ``k = max(10, |x > 0|)``:
   the face at most doubles, as in the working set, because on nearly collinear
   templates most violators are neighbours of weights already in, and admitting all
   of them (a gradient-projection step) makes hundreds of weights positive that
   must then leave again one projection at a time.
2. **Newton direction on F** by CGLS (CG on the normal equations written with ``Ã``
   and ``Ãᵀ``, which keeps the rounding of ``Ã`` rather than of ``ÃᵀÃ``) on
   ``min_d ½‖Ã_F d + r‖²``, ``r = Ã x − ỹ``: one forward and one adjoint pass per step
   (a Hessian-vector product); the residual and gradient at ``x + d`` come out of
   the recurrences.  CG stops when the face gradient has fallen by the forcing term
   ``η = min(eta_max, sqrt(optimality))`` (inexact Newton: loose far from the
   solution, tight near it; the phase has then *converged*), when a step gains less
   than ``progress`` times the phase's best step (the face is probably wrong: more
   steps would be cut by the bounds anyway), or after ``max_cg`` steps.
3. **Projected search.**  If ``x + d ≥ 0`` it is the new point.  Otherwise
   ``x(α) = max(x + α d, 0)``, ``α = 1, ½, ¼, …`` until the Armijo condition
   ``f(x(α)) ≤ f(x) + σ·gᵀ(x(α) − x)`` holds (two passes per trial: the cost, then the
   gradient); the projection removes many weights at once.

Small faces (``direct_face``, 32 weights by default) skip steps 2–3: they are minimised
directly from their explicit columns (an SVD least-squares solve, stepping to the first
bound and dropping the weights that reach it, as in Lawson–Hanson's inner loop).  CG
solves a face of ``k`` weights in ``k`` steps only in exact arithmetic; on nearly
collinear templates its loss of conjugacy depends on the machine's rounding, and a
2-weight face that converged on one CPU stalled 1e-5 above the optimum on another.

Stopping
    :class:`.stopping.Convergence` with ``window = 1``, applied only after CG phases
    that converged (or found the face gradient already ``1000×`` below the KKT
    level): on nearly collinear templates a phase cut short by the progress test
    can gain almost nothing while the face still hides cost decreases of 1e-3
    relative, and counting it would stop the run there.  The certificate is then
    evaluated afresh with the operator (two passes: the recurrences carry rounding);
    if it fails the run goes on from the fresh values, and stops with status 2 only
    when that happens twice at the same cost.

Tried and dropped (docs/benchmarks.md): Bertsekas' projected Newton on the full free
set (the Newton direction sends small positive weights far below zero, the bent
projection arc shrinks the Armijo step to 2⁻¹⁰ and below) and Moré & Toraldo's GPCG
(its gradient-projection phase makes nearly every weight positive at the first
step; they then leave a few per CG phase): both needed several times more passes.
"""
from __future__ import annotations

import numpy as np

from .problem import LeastSquares, as_problem
from .result import SolverResult
from .stopping import Convergence, limit_reached

__all__ = ["newton_cg"]

_SMALL_FACE = 10
"""Faces of at most this many weights solved by CG get all their CG steps (no progress
test)."""

_FACE_BYTES = 256 * 2**20
"""Most memory the explicit columns of a directly solved face may take."""


def newton_cg(A, y=None, *, x0=None, gtol: float = 1e-6, ftol: float = 1e-12,
              vtol: float = 1e-12, eta_max: float = 0.1, progress: float = 0.01,
              max_cg: int | None = None, armijo: float = 1e-4, max_iter: int = 100_000,
              max_passes: int | None = None, direct_face: int = 32) -> SolverResult:
    """NNLS by active-set Newton–CG; see the module docstring.

    Parameters
    ----------
    A, y : the problem (:class:`cubefit.solvers.problem.LeastSquares`).
    x0 : warm start ``(n,) ≥ 0`` (default 0): its positive weights are the first face.
    gtol, ftol : stopping rule (:class:`.stopping.Convergence`, window 1 over
        converged CG phases).
    vtol : a zero weight is admitted when ``∇f_j < −vtol·‖∇f(0)‖∞``: rounding level by
        default, as in the working set, because on nearly collinear templates a
        gradient far below ``gtol`` can hide a cost decrease far above it.
    eta_max : largest CG forcing term (relative fall of the face gradient).
    progress : a CG phase ends when a step gains less than this fraction of its best.
    max_cg : CG steps per phase (default ``2·|F| + 10``; two passes each).
    armijo : sufficient-decrease constant σ of the projected search.
    max_iter, max_passes : safety limits (status 0).
    direct_face : faces of at most this many weights are minimised directly from their
        explicit columns (an SVD least-squares solve and Lawson–Hanson's inner loop)
        instead of by CG, while the columns take at most 256 MiB; 0 = CG always.

    ``nit`` counts Newton iterations (CG phases); the history has one entry per iterate.
    """
    if not 0 < eta_max < 1:
        raise ValueError(f"eta_max: expected a forcing term in (0, 1), got {eta_max!r}")
    if not 0 <= progress < 1:
        raise ValueError(f"progress: expected a fraction in [0, 1), got {progress!r}")
    if max_cg is not None and int(max_cg) < 1:
        raise ValueError(f"max_cg: expected at least 1 CG step, got {max_cg!r}")
    prob = as_problem(A, y)
    conv = Convergence(prob, gtol, ftol, 1)
    if x0 is None:
        x = np.zeros(prob.n)
        r = prob.residual(np.zeros_like(prob.y))
        cost, grad = prob.cost_at_zero, -prob.b
    else:
        x = prob.check_x0(x0)
        cost, grad, Ax = prob.evaluate(x)
        r = prob.residual(Ax)
    opt = prob.optimality(x, grad)
    prob.record(cost, opt)
    tau = vtol * prob.grad0_norm
    y_norm = prob.y_norm
    nit, status, message, failed_at = 0, 0, None, None
    while True:
        free = x > 0
        viol = np.flatnonzero(~free & (grad < -tau))
        k = max(10, int(np.count_nonzero(free)))
        free[viol[np.argsort(grad[viol], kind="stable")[:k]]] = True
        x, r, cost, grad, converged = _newton_step(
            prob, x, free, r, cost, grad, min(eta_max, np.sqrt(opt)), progress, max_cg,
            1e-3 * gtol * prob.grad0_norm, armijo, y_norm, direct_face)
        nit += 1
        opt = prob.optimality(x, grad)
        prob.record(cost, opt)
        settled = conv.update(cost, opt) if converged else None
        limit = limit_reached(prob, nit, max_iter, max_passes)
        if settled is None and not limit:
            continue
        # Certify with the operator: the recurrences carry rounding.
        cost, grad, Ax = prob.evaluate(x)
        r = prob.residual(Ax)
        opt = prob.optimality(x, grad)
        prob.record(cost, opt)
        if settled is not None and opt <= gtol:
            status = 1
            break
        if limit:
            break
        if failed_at is not None and cost >= failed_at * (1 - ftol):
            status = 2
            message = (f"stalled at optimality {opt:.3g} > gtol={gtol:g}: CG on the face no "
                       "longer lowers the cost (rounding)")
            break
        failed_at = cost
        conv.restart()
    return prob.result("newton_cg", x, cost, opt, nit, status, message)


def _newton_step(prob: LeastSquares, x, free, r, cost, grad, eta, progress, max_cg, small,
                 armijo, y_norm, direct_face):
    """The Newton step on the face ``free`` (CGLS, or a direct solve on small faces),
    then the projected search (module docstring).

    Returns ``(x, r, f, g, converged)``; ``converged``: CG met the forcing test (or the
    face gradient was below ``small`` to begin with).  Recurrences: ``s = −(r + Ã d)``
    is the residual of ``Ã_F d = −r`` and ``g(x + d) = −Ãᵀ s``, whose face part is CG's
    normal residual; a step lowers the model by exactly ``½·a·γ``.
    """
    z = np.where(free, -grad, 0.0)
    gamma0 = float(z @ z)
    if gamma0 == 0.0 or np.abs(z).max() <= small:
        return x, r, cost, grad, True
    n_free = int(free.sum())
    if n_free <= direct_face and 8 * prob.m * n_free <= _FACE_BYTES and prob.columns_are_global:
        x, r, g = _exact_face_step(prob, x, free, r)
        return x, r, prob.half_sq(r), g, True
    else:
        d, s, g, converged = _cgls_face_step(prob, free, r, grad, z, gamma0, eta, progress,
                                             n_free, max_cg)
    if np.all(x + d >= 0):
        return x + d, -s, prob.half_sq(s), g, converged
    # Rounding in the two costs (relative to f, and to the residual-data product for
    # f ≈ 0) must not reject a step that only rounding makes look uphill.
    slack = 1e-12 * cost + 1e-13 * np.sqrt(2.0 * cost) * y_norm
    alpha = 1.0
    for _ in range(40):
        xt = np.maximum(x + alpha * d, 0.0)
        rt = prob.residual(prob.matvec(xt))
        ft = prob.half_sq(rt)
        if ft <= cost + armijo * float(grad @ (xt - x)) + slack:
            return xt, rt, ft, prob.rmatvec(rt), converged
        alpha *= 0.5
    return x, r, cost, grad, converged


def _exact_face_step(prob: LeastSquares, x, free, r):
    """Minimise over a small face directly, Lawson–Hanson's inner loop on explicit columns.

    ``d_F = argmin ‖Ã_F d + r‖`` by an SVD least-squares solve; if ``x + d`` leaves the
    orthant, step to the first bound (the cost falls along the whole segment: it is
    convex and ``d`` points to its face minimum), drop the weights that reached zero
    and solve again on the smaller face, with the columns already formed.

    CG needs as many steps as the face has weights only in exact arithmetic; on a face
    of nearly collinear templates its directions lose conjugacy at a rate set by the
    machine's rounding, so whether a run converged used to depend on the CPU (a 2-weight
    face stalled 1e-5 above the optimum on one machine and not on another).  The direct
    solve reaches the face minimum to rounding on any machine, for ``|F|`` column
    applications instead of ``2·|F|`` passes.  Returns ``(x, r, g)`` at the new point
    (``r = Ã x − ỹ``, ``g = Ãᵀ r``).
    """
    idx = np.flatnonzero(free)
    cols = prob.columns(idx)
    x = x.copy()
    keep = np.ones(idx.size, dtype=bool)
    for _ in range(idx.size):
        d = np.zeros(idx.size)
        d[keep] = np.linalg.lstsq(cols[:, keep], -r, rcond=None)[0]
        xf = x[idx]
        if np.all(xf + d >= 0):
            x[idx] = xf + d
            r = r + cols @ d
            break
        ratio = np.full(idx.size, np.inf)
        neg = d < 0
        ratio[neg] = xf[neg] / -d[neg]
        alpha = float(ratio.min())
        hit = ratio <= alpha * (1 + 1e-12)     # ties at the first bound leave together
        xn = np.maximum(xf + alpha * d, 0.0)
        xn[hit] = 0.0
        keep &= ~hit
        r = r + cols @ (xn - xf)
        x[idx] = xn
        if not keep.any():
            break
    return x, r, prob.rmatvec(r)


def _cgls_face_step(prob: LeastSquares, free, r, grad, z, gamma0, eta, progress, n_free, max_cg):
    """CGLS on the face ``free`` from ``d = 0`` (the module docstring's step 2), at most
    ``max_cg`` steps (default ``2·n_free + 10``).

    Returns ``(d, s, g, converged)``: the step, the residual ``s = −(r + Ã d)`` and
    gradient ``g = −Ãᵀ s`` at ``x + d``, and whether the forcing test was met.
    """
    steps = 2 * n_free + 10 if max_cg is None else int(max_cg)
    gamma = gamma0
    d, s, g, p = np.zeros_like(grad), -r, grad, z
    # On an ill-conditioned face the later CG steps gain little cost but are what
    # makes the directions conjugate: a face of a few weights is solved exactly in as
    # many steps, so there the progress test waits for them.
    min_steps = n_free if n_free <= _SMALL_FACE else 1
    best = 0.0
    for step in range(steps):
        w = prob.matvec(p)
        ww = prob.row_dot(w, w)
        if ww == 0.0:                            # p lies in the null space of Ã_F
            break
        a = gamma / ww
        d += a * p
        s = s - a * w
        g = -prob.rmatvec(s)
        z = np.where(free, -g, 0.0)
        gamma_new = float(z @ z)
        drop = 0.5 * a * gamma
        best = max(best, drop)
        if gamma_new <= eta**2 * gamma0:
            return d, s, g, True
        if drop <= progress * best and step + 1 >= min_steps:
            break
        p = z + (gamma_new / gamma) * p
        gamma = gamma_new
    return d, s, g, False
