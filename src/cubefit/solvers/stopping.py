"""The stopping rule of the iterative solvers: KKT test plus a cost-change test.

:mod:`.result` explains why the KKT test alone (``optimality ≤ gtol``) is not enough
on nearly collinear templates: a small projected gradient along a flat direction can
hide a cost decrease far above ``gtol``.  So an iterative solver stops only when its
cost has *settled* — the best cost fell by at most ``ftol·cost`` over the last
``window`` iterations — and reports

* status 1 (success) when the KKT test passes at that point,
* status 2 when the cost settled but the KKT test fails (a stall),
* status 0 when a safety limit (iterations, operator passes) came first.

The test is relative, with a floor at the rounding level of ``½‖ỹ‖²`` so that a
noiseless problem (optimal cost 0) can settle too.  This is the rule of
:func:`cubefit.solvers.fista`, shared here by the solvers added after it.
"""
from __future__ import annotations

import numpy as np

from .problem import LeastSquares

__all__ = ["Convergence", "limit_reached"]


class Convergence:
    """Cost-change bookkeeping of one solve; call :meth:`update` once per iteration.

    Parameters
    ----------
    prob : the problem (for the cost floor ``eps²·½‖ỹ‖²``).
    gtol : KKT tolerance on the relative projected gradient (:mod:`.result`).
    ftol : relative cost change that counts as settled.
    window : iterations the change is measured over (1 for Newton-type methods,
        whose last decrease estimates the remaining one; more for quasi-Newton and
        first-order methods, whose progress comes in bursts).
    """

    def __init__(self, prob: LeastSquares, gtol: float, ftol: float, window: int):
        for name, v in (("gtol", gtol), ("ftol", ftol)):
            if not (np.isfinite(v) and v >= 0):
                raise ValueError(f"{name}: expected a finite tolerance >= 0, got {v!r}")
        if int(window) < 1:
            raise ValueError(f"window: expected at least 1 iteration, got {window!r}")
        self.gtol, self.ftol, self.window = float(gtol), float(ftol), int(window)
        self.floor = np.finfo(np.float64).eps ** 2 * prob.cost_at_zero
        self.best: list[float] = []

    def settled(self) -> bool:
        """Whether the best cost fell by at most ``ftol·cost`` over the last ``window`` updates."""
        b = self.best
        return len(b) > self.window and b[-self.window - 1] - b[-1] <= self.ftol * max(b[-1], self.floor)

    def update(self, cost: float, optimality: float) -> int | None:
        """Record an iterate's cost; return its status (1 or 2) once settled, else None."""
        self.best.append(min(float(cost), self.best[-1]) if self.best else float(cost))
        if not self.settled():
            return None
        return 1 if optimality <= self.gtol else 2

    def restart(self) -> None:
        """Forget the costs so far: the next ``window`` iterations must settle again."""
        self.best = self.best[-1:]


def limit_reached(prob: LeastSquares, nit: int, max_iter: int, max_passes: int | None) -> bool:
    """Whether a safety limit stops the solve (status 0): iterations, passes, or the
    solve's time limit (:data:`.problem.DEADLINE`)."""
    return (nit >= max_iter or (max_passes is not None and prob.passes >= max_passes)
            or prob.out_of_time)
