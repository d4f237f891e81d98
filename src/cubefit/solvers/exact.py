"""Exact NNLS from the Gram matrix: ``min_{z ≥ 0} ½ zᵀQz − cᵀz`` (docs/fitting.md).

With ``Q = ÃᵀÃ`` and ``c = Ãᵀỹ`` this is the global fit up to the constant ``½‖ỹ‖²``.
A (pivoted) Cholesky factor ``PᵀQP = UᵀU`` turns it back into a least-squares
problem of size ``n``: ``½‖U Pᵀz − d‖²`` with ``Uᵀd = Pᵀc`` has the same objective up
to a constant, so :func:`scipy.optimize.nnls` (Lawson–Hanson active set) on ``U`` finds
the same optimum as on the tall ``Ã`` — with ``n`` rows instead of ``S·L``.  ``U`` has
the condition number of ``Ã`` (not its square), which keeps the active-set
subproblems as accurate as on ``Ã`` itself.

Lawson–Hanson frees one weight per iteration, so a dense optimum (smoothing priors:
2053 of 2400 weights positive) costs thousands of least-squares updates.  When ``Q``
is well conditioned, a primal-dual active-set iteration (Hintermüller, Ito & Kunisch
2003) is tried first: it moves many weights per step, each step one Cholesky solve
on the free set, and its fixed point satisfies the KKT conditions exactly.  It is
accepted only when it settles with a well-conditioned free block; otherwise (nearly
collinear SSPs without priors, cycling, a singular block) Lawson–Hanson runs.
"""
from __future__ import annotations

import numpy as np
from scipy.linalg import LinAlgError, cho_factor, cho_solve, lapack, solve_triangular
from scipy.optimize import nnls

from .problem import as_problem
from .result import SolverResult

__all__ = ["nnls_on_gram", "nnls_on_gram_warm", "nnls_gram"]

PDAS_MAX_ITER = 30
"""Primal-dual active-set steps before :func:`nnls_on_gram` falls back to Lawson–Hanson."""
PDAS_MAX_COND = 1e8
"""Largest condition estimate of the free Gram block for which the primal-dual
active-set answer is kept (its rounding grows as the condition number of ``Q``,
the square of ``Ã``'s)."""


def nnls_on_gram(Q, c) -> np.ndarray:
    """Minimiser ``z ≥ 0`` of ``½ zᵀQz − cᵀz`` for a symmetric PSD ``Q (n, n)``, ``c (n,)``.

    Columns with a zero diagonal (absent components) get ``z = 0``.  Rank-deficient
    ``Q`` (exactly collinear templates) is handled by LAPACK's pivoted Cholesky
    (``dpstrf``): directions below ``n·eps·max(diag Q)`` are dropped, which changes
    the objective by less than that times ``‖z‖²``.
    """
    Q = np.asarray(Q, dtype=np.float64)
    c = np.asarray(c, dtype=np.float64)
    n = c.size
    z = np.zeros(n)
    live = np.flatnonzero(np.diag(Q) > 0)
    if live.size == 0:
        return z
    fast = _primal_dual_active_set(Q[np.ix_(live, live)], c[live])
    if fast is not None:
        z[live] = fast
        return z
    U, piv, rank, info = lapack.dpstrf(Q[np.ix_(live, live)], lower=0)
    if info < 0:
        raise ValueError(f"dpstrf: argument {-info} is invalid (Q must be a finite symmetric matrix)")
    piv = piv - 1                                                   # LAPACK is 1-based
    U = np.triu(U[:rank])                                           # (rank, |live|), pivoted order
    d = solve_triangular(U[:, :rank], c[live][piv][:rank], trans="T", lower=False)
    zp, _ = nnls(U, d, maxiter=50 * max(1, live.size))
    z[live[piv]] = zp
    return z


def _primal_dual_active_set(Q, c):
    """``z ≥ 0`` minimising ``½ zᵀQz − cᵀz`` by the primal-dual active-set method, or
    None when it does not settle in :data:`PDAS_MAX_ITER` steps or a free block is not
    safely positive definite (module docstring).

    With multipliers ``λ = Qz − c``, the active set is ``{λ_j − z_j > 0}``; each step
    sets ``z = 0`` there and solves ``Q_FF z_F = c_F`` on the rest.  When the set
    repeats, ``z_F ≥ 0`` and ``λ_A > 0`` hold by construction: the KKT point.
    """
    scale = np.sqrt(np.diag(Q))                   # Jacobi scaling: κ of the scaled block
    Qs = Q / np.outer(scale, scale)
    cs = c / scale
    active = cs <= 0
    for _ in range(PDAS_MAX_ITER):
        free = ~active
        zs = np.zeros_like(cs)
        if free.any():
            try:
                L, low = cho_factor(Qs[np.ix_(free, free)], check_finite=False)
            except LinAlgError:
                return None
            d = np.abs(np.diag(L))
            if (d.max() / d.min()) ** 2 > PDAS_MAX_COND:
                return None
            zs[free] = cho_solve((L, low), cs[free], check_finite=False)
        lam = Qs @ zs - cs
        lam[free] = 0.0
        new_active = lam - zs > 0
        if np.array_equal(new_active, active):
            return np.maximum(zs, 0.0) / scale
        active = new_active
    return None


def nnls_gram(A, y=None, *, x0=None, gtol: float = 1e-6) -> SolverResult:
    """Exact NNLS through the full Gram matrix ``ÃᵀÃ`` (small ``C·P`` only).

    Cost: one adjoint for ``Ãᵀỹ``, the ``(C·P)²`` Gram matrix (``C·P`` explicit
    columns, :meth:`cubefit.operator.LOSVDOperator.gram`), :func:`nnls_on_gram`, and
    two passes to certify the answer with the operator.  ``x0`` is only used to skip
    the solve when it already passes the KKT test (resuming a finished fit); an exact
    solve does not need a start point.  ``status`` is 1 when the certificate holds,
    0 when rounding in the Gram matrix (condition number squared) leaves the
    projected gradient above ``gtol`` — then use :func:`nnls_working_set`.
    """
    prob = as_problem(A, y)
    if x0 is not None:
        x = prob.check_x0(x0)
        cost, grad, _ = prob.evaluate(x)
        opt = prob.optimality(x, grad)
        prob.record(cost, opt)
        if opt <= gtol:
            return prob.result("gram", x, cost, opt, 0, 1, "x0 already passes the KKT test")
    Q = prob.gram()
    x = nnls_on_gram(Q, prob.b)
    cost, grad, _ = prob.evaluate(x)
    opt = prob.optimality(x, grad)
    prob.record(cost, opt)
    return prob.result("gram", x, cost, opt, 1, 1 if opt <= gtol else 0)


def nnls_on_gram_warm(G, c, active=None, max_pivot_ratio: float | None = None):
    """:func:`nnls_on_gram` started from a guessed active set; returns ``(w, active)``.

    Between nearby evaluations of a non-linear search (or Monte-Carlo refits) the set of
    positive weights rarely changes: solve on ``active`` by Cholesky and keep the answer
    when it is a KKT point (every weight > 0, every other multiplier ``(Gw − c)_j ≥
    −tol``), else solve from scratch.  ``max_pivot_ratio``: also fall back when the
    Cholesky pivots of the active block spread by more than this (ill-conditioned).
    ``active`` is returned unchanged after a kept warm solve, else the new positive set.
    """
    if active is not None and active.size:
        try:
            L = cho_factor(G[np.ix_(active, active)], check_finite=False)
            dg = np.abs(np.diag(L[0]))
            if max_pivot_ratio is None or dg.max() < max_pivot_ratio * dg.min():
                z = cho_solve(L, c[active], check_finite=False)
                if np.all(z > 0):
                    w = np.zeros(c.size)
                    w[active] = z
                    lam = G @ w - c
                    lam[active] = 0.0
                    tol = 1e-9 * np.sqrt(np.clip(np.diag(G), 0, None) * max(float(c @ w), 1e-300))
                    if np.all(lam >= -tol):
                        return w, active
        except LinAlgError:
            pass
    w = nnls_on_gram(G, c)
    return w, np.flatnonzero(w > 0)
