"""L-BFGS-B (:func:`scipy.optimize.minimize`) on the matrix-free problem.

The bound-constrained quasi-Newton method of Byrd, Lu, Nocedal & Zhu, as shipped by
SciPy, with the bounds ``x ≥ 0``.  Each function evaluation returns the cost and the
gradient together, ``½‖r‖²`` and ``Ãᵀr`` with ``r = Ã x − ỹ``: one forward and one
adjoint pass.  SciPy's own tests (``ftol``/``gtol`` of L-BFGS-B) are switched off, so
that the KKT + cost-change rule of :mod:`.stopping` decides, once per L-BFGS-B
iteration, from the gradient of the accepted point (which the line search has just
evaluated, so the test costs no pass).  SciPy stops by itself only when its line
search cannot make progress along the quasi-Newton direction, or at the iteration /
evaluation limits; in the first case the run is restarted from that point with an
empty memory (on nearly collinear templates the stored curvature pairs can point
the search into a corner it cannot leave), until a whole run gains nothing.
"""
from __future__ import annotations

import numpy as np
from scipy.optimize import Bounds, minimize

from .problem import as_problem
from .result import SolverResult
from .stopping import Convergence, limit_reached

__all__ = ["lbfgsb"]


def lbfgsb(A, y=None, *, x0=None, gtol: float = 1e-6, ftol: float = 1e-12, window: int = 10,
           maxcor: int = 10, max_iter: int = 100_000, max_passes: int | None = None) -> SolverResult:
    """NNLS by L-BFGS-B; see the module docstring.

    Parameters
    ----------
    A, y : the problem (:class:`cubefit.solvers.problem.LeastSquares`).
    x0 : warm start ``(n,) ≥ 0`` (default 0).
    gtol, ftol, window : the stopping rule of :class:`.stopping.Convergence`: status 1
        needs the relative projected gradient ``≤ gtol`` once the best cost has
        fallen by at most ``ftol·cost`` over ``window`` iterations.
    maxcor : stored correction pairs (the memory of the quasi-Newton matrix, ``2·maxcor·n``
        numbers).
    max_iter, max_passes : safety limits (status 0); ``max_passes`` counts operator
        applications, two per function evaluation.

    ``nit`` counts L-BFGS-B iterations; the history has one entry for ``x0`` and one
    per iteration.
    """
    prob = as_problem(A, y)
    conv = Convergence(prob, gtol, ftol, window)
    x = np.zeros(prob.n) if x0 is None else prob.check_x0(x0)
    last = {}                        # the latest evaluation: SciPy asks for f and ∇f at x once

    def fun(z):
        if "x" in last and np.array_equal(z, last["x"]):
            return last["cost"], last["grad"]
        cost, grad, _ = prob.evaluate(z)
        last.update(x=z.copy(), cost=cost, grad=grad)
        return cost, grad

    state = {"status": None, "nit": 0}

    def check(z) -> bool:
        """Record the iterate ``z`` and apply the stopping rule; True stops SciPy."""
        cost, grad = fun(z)
        opt = prob.optimality(z, grad)
        prob.record(cost, opt)
        state["status"] = conv.update(cost, opt)
        return state["status"] is not None or limit_reached(prob, state["nit"], max_iter, max_passes)

    def callback(intermediate_result):
        state["nit"] += 1
        if check(intermediate_result.x):
            raise StopIteration      # SciPy ends the run and returns this iterate

    runs, status, message = 0, None, None
    if not check(x):
        while True:
            # 2 passes per evaluation, and Aᵀỹ already spent one.
            maxfun = 10**9 if max_passes is None else max(1, (max_passes - prob.passes) // 2)
            start_cost = fun(x)[0]
            res = minimize(fun, x, jac=True, method="L-BFGS-B",
                           bounds=Bounds(np.zeros(prob.n), np.inf), callback=callback,
                           options=dict(maxcor=int(maxcor), ftol=0.0, gtol=0.0,
                                        maxiter=max(1, int(max_iter) - state["nit"]),
                                        maxfun=maxfun, maxls=50))
            runs += 1
            x = np.maximum(res.x, 0.0)   # the bounds hold exactly; the max only guards -0.0
            status = state["status"]
            if status is not None or res.status == 1 or limit_reached(prob, state["nit"],
                                                                        max_iter, max_passes):
                break
            # SciPy's line search found no decrease along its quasi-Newton direction.  A
            # fresh start (steepest descent, empty memory) often goes on; stop when a
            # whole run gained nothing.
            if fun(x)[0] >= start_cost * (1 - ftol):
                break
    cost, grad = fun(x)
    opt = prob.optimality(x, grad)
    if status is None:
        if not limit_reached(prob, state["nit"], max_iter, max_passes) and runs and res.status != 1:
            status = 1 if opt <= gtol else 2        # settled: rounding stops every direction
            message = f"L-BFGS-B stopped by itself after {runs} run(s) ({res.message}); " + (
                "KKT test passed" if status == 1 else f"optimality {opt:.3g} > gtol={gtol:g}")
        else:
            status = 0
        if prob.history["cost"][-1] != cost:
            prob.record(cost, opt)
    return prob.result("lbfgsb", x, cost, opt, state["nit"], status, message)
