"""Exact NNLS from the Gram matrix: ``min_{z ≥ 0} ½ zᵀQz − cᵀz`` (DESIGN §3).

With ``Q = ÃᵀÃ`` and ``c = Ãᵀỹ`` this is the global fit up to the constant ``½‖ỹ‖²``.
A (pivoted) Cholesky factor ``PᵀQP = UᵀU`` turns it back into a least-squares
problem of size ``n``: ``½‖U Pᵀz − d‖²`` with ``Uᵀd = Pᵀc`` has the same objective up
to a constant, so :func:`scipy.optimize.nnls` (Lawson–Hanson active set) on ``U`` finds
the same optimum as on the tall ``Ã`` — with ``n`` rows instead of ``S·L``.  ``U`` has
the condition number of ``Ã`` (not its square), which keeps the active-set
subproblems as accurate as on ``Ã`` itself.
"""
from __future__ import annotations

import numpy as np
from scipy.linalg import lapack, solve_triangular
from scipy.optimize import nnls

from .problem import LeastSquares
from .result import SolverResult

__all__ = ["nnls_on_gram", "nnls_gram"]


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
    U, piv, rank, info = lapack.dpstrf(Q[np.ix_(live, live)], lower=0)
    if info < 0:
        raise ValueError(f"dpstrf: argument {-info} is invalid (Q must be a finite symmetric matrix)")
    piv = piv - 1                                                   # LAPACK is 1-based
    U = np.triu(U[:rank])                                           # (rank, |live|), pivoted order
    d = solve_triangular(U[:, :rank], c[live][piv][:rank], trans="T", lower=False)
    zp, _ = nnls(U, d, maxiter=50 * max(1, live.size))
    z[live[piv]] = zp
    return z


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
    prob = LeastSquares(A, y)
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
