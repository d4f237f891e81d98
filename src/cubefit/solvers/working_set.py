"""Working-set (column-generation) NNLS on the matrix-free operator (DESIGN §3).

Unregularised population fits are sparse (tens of non-zero weights out of thousands),
so the optimum is found by solving small problems exactly:

1. ``x``, its cost and full gradient ``∇f = Ãᵀ(Ã x − ỹ)`` cost one forward and one
   adjoint pass;
2. if the relative projected gradient is ``≤ gtol`` the KKT conditions hold: stop
   (certified);
3. otherwise the most violating columns (``x_j = 0``, ``∇f_j < 0``, most negative
   first) join the working set ``W``; only their Gram rows ``Ã_Wᵀ Ã_new`` are formed
   (explicit columns, :meth:`cubefit.operator.LOSVDOperator.gram`);
4. the restricted problem ``min_{z ≥ 0} ½‖Ã_W z − ỹ‖²`` is solved exactly from its
   Gram block (:func:`cubefit.solvers.exact.nnls_on_gram`), ``x = z`` on ``W``; go to 1.

Every round strictly lowers the cost (a violator is a descent direction the
restricted problem may use), so the loop ends; memory is ``O(|W|²)`` plus the
operator's, instead of ``(C·P)²`` for the full Gram matrix.
"""
from __future__ import annotations

import numpy as np

from .exact import nnls_on_gram
from .problem import LeastSquares
from .result import SolverResult

__all__ = ["nnls_working_set"]


def nnls_working_set(A, y=None, *, x0=None, gtol: float = 1e-6, ftol: float = 1e-15,
                     max_add: int | None = None, max_iter: int = 500,
                     max_passes: int | None = None) -> SolverResult:
    """Certified NNLS by column generation; see the module docstring.

    Parameters
    ----------
    A, y : the problem (:class:`cubefit.solvers.problem.LeastSquares`).
    x0 : warm start ``(n,)``, ``≥ 0``; its support seeds the working set.
    gtol : KKT tolerance on the relative projected gradient.
    ftol : cost-change test: stop (status 2) when a round lowers the cost by no more
        than ``ftol·cost`` — only rounding can cause that, since each round is exact.
    max_add : columns added per round (default ``max(10, |W|)``: the set at most
        doubles, so few rounds are needed and little is added in vain).
    max_iter, max_passes : safety limits (status 0).
    """
    prob = LeastSquares(A, y)
    n = prob.n
    b = prob.b
    if x0 is None:
        x = np.zeros(n)
        cost, grad = 0.5 * float(prob.y @ prob.y), -b
    else:
        x = prob.check_x0(x0)
        cost, grad, _ = prob.evaluate(x)
    W = np.flatnonzero(x > 0)
    Q = prob.gram(W, W) if W.size else np.zeros((0, 0))
    in_W = np.zeros(n, bool)
    in_W[W] = True
    nit = 0
    status = 0
    message = None
    prev = None
    while True:
        opt = prob.optimality(x, grad)
        prob.record(cost, opt)
        if opt <= gtol:
            status = 1
            break
        if prev is not None and prev - cost <= ftol * prev:
            status = 2
            break
        if nit >= max_iter or (max_passes is not None and prob.passes >= max_passes):
            break
        viol = np.flatnonzero(~in_W & (grad < 0))
        if viol.size == 0:
            status = 2
            message = ("stalled: no column outside the working set violates the KKT conditions, "
                       "but rounding in the restricted Gram solve leaves the projected gradient "
                       f"at {opt:.3g} > gtol={gtol:g}")
            break
        k = max_add or max(10, W.size)
        new = viol[np.argsort(grad[viol], kind="stable")[:k]]
        # Extend the Gram block: only the rows and columns of the new columns are formed.
        allW = np.concatenate([W, new])
        cross = prob.gram(allW, new)                                   # (|W|+k, k)
        Qn = np.empty((allW.size, allW.size))
        Qn[:W.size, :W.size] = Q
        Qn[:, W.size:] = cross
        Qn[W.size:, :W.size] = cross[:W.size].T
        Q, W = Qn, allW
        in_W[new] = True
        x = np.zeros(n)
        x[W] = nnls_on_gram(Q, b[W])
        prev = cost
        cost, grad, _ = prob.evaluate(x)
        nit += 1
    return prob.result("working_set", x, cost, opt, nit, status, message)
