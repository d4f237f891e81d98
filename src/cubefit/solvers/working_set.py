"""Working-set (column-generation) NNLS on the matrix-free operator (docs/fitting.md).

Unregularised population fits are sparse (tens of non-zero weights out of thousands),
so the optimum is found by solving small problems exactly:

1. ``x``, its cost and full gradient ``∇f = Ãᵀ(Ã x − ỹ)`` cost one forward and one
   adjoint pass;
2. if no column outside ``W`` has a negative gradient (beyond rounding), no column
   can lower the cost: stop, certified by the KKT test (``optimality ≤ gtol``);
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

import time

import numpy as np

from .exact import nnls_on_gram
from .problem import LeastSquares, as_problem
from .result import SolverResult
from .stopping import limit_reached

__all__ = ["nnls_working_set"]


def nnls_working_set(A, y=None, *, x0=None, gtol: float = 1e-6, ftol: float = 1e-12,
                     vtol: float = 1e-12, max_add: int | None = None, max_iter: int = 500,
                     max_passes: int | None = None,
                     column_cache_bytes: int = 2 * 1024**3) -> SolverResult:
    """Certified NNLS by column generation; see the module docstring.

    Parameters
    ----------
    A, y : the problem (:class:`cubefit.solvers.problem.LeastSquares`).
    x0 : warm start ``(n,)``, ``≥ 0``; its support seeds the working set.
    gtol : KKT tolerance on the relative projected gradient (status 1 needs it).
    ftol : stop when a round lowers the cost by no more than ``ftol·cost``: only
        rounding can cause that, since each round is exact.
    vtol : a column enters when ``∇f_j < −vtol·‖∇f(0)‖∞``.  Rounding level by default:
        on nearly collinear templates a gradient far below ``gtol`` can still hide a
        cost decrease far above it (the decrease is ``≈ ∇f_j² / (2·curvature)``), so
        the method runs until no column can lower the cost rather than stopping as
        soon as ``gtol`` is met.
    max_add : columns added per round.  Default: 10 in the first round, then 5 on a
        matrix-free operator (forming that many columns costs about a round's two
        passes, :func:`_columns_per_round`) and ``max(10, |W|)`` on a stored matrix
        (the set at most doubles).  Nearly collinear templates give many violators
        whose neighbours will enter too; adding only a few per round keeps ``|W|`` (and
        the column work) near the final support.  The rule uses no timing, so results
        do not depend on the machine's load.
    max_iter, max_passes : safety limits (status 0).
    column_cache_bytes : the explicit columns ``Ã_W`` (``m·|W|`` float64) are kept while
        they fit, so that a round forms only its new columns; beyond, each round's
        Gram rows are formed from scratch (``Ã_W`` columns recomputed chunk by chunk).

    Status: 1 when no column can enter (or the cost has settled, ``ftol``) and the KKT
    test passes; 2 when it has settled but the test fails (rounding in the restricted
    Gram solve); 0 at a limit.
    """
    prob = as_problem(A, y)
    n = prob.n
    b = prob.b
    tau = vtol * prob.grad0_norm
    x = np.zeros(n) if x0 is None else prob.check_x0(x0)
    cost, grad = prob.cost_at_zero, -b
    W = np.flatnonzero(x > 0)
    cache = _ColumnCache(prob, column_cache_bytes)
    Q = cache.gram_rows(W[:0], W)
    if W.size:
        # A warm start only seeds W: its values are not the restricted optimum (a snapshot
        # of an iterative run is not), and the KKT loop below assumes they are.
        x = np.zeros(n)
        x[W] = nnls_on_gram(Q, b[W])
        cost, grad, _ = prob.evaluate(x)
    in_W = np.zeros(n, bool)
    in_W[W] = True
    nit, status, message, prev = 0, 0, None, None
    while True:
        opt = prob.optimality(x, grad)
        prob.record(cost, opt)
        viol = np.flatnonzero(~in_W & (grad < -tau))
        settled = prev is not None and prev - cost <= ftol * prev
        if viol.size == 0 or settled:
            status = 1 if opt <= gtol else 2
            if status == 2:
                message = (f"stalled at optimality {opt:.3g} > gtol={gtol:g}: "
                           + ("no column outside the working set can enter; rounding in the "
                              "restricted Gram solve" if viol.size == 0 else
                              "the last round did not lower the cost (rounding)"))
            break
        if limit_reached(prob, nit, max_iter, max_passes):
            break
        k = max_add or _columns_per_round(prob, nit == 0, W.size)
        new = viol[np.argsort(grad[viol], kind="stable")[:k]]
        # Extend the Gram block: only the rows and columns of the new columns are formed.
        allW = np.concatenate([W, new])
        cross = cache.gram_rows(W, new)                                # (|W|+k, k)
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


def _columns_per_round(prob: LeastSquares, first: bool, w_size: int) -> int:
    """Columns to add in one round when ``max_add`` is not given.

    Forming a column of the matrix-free operator costs about as much as a fraction of a
    pass: the ratio of a round's two passes to one column measured 1.2–6.5 from
    16×4×150×400 to 256×16×150×1500 (E-MILES), so adding ≈ 5 columns balances a round's
    two costs.  A stored matrix's columns are slices, so there the set doubles.  A
    fixed rule, never a timing: the same inputs give the same rounds and the same ``x``
    on any machine and under any load.
    """
    if first:
        return 10
    if prob.stored_matrix:
        return max(10, w_size)
    return 5


class _ColumnCache:
    """Gram rows ``[Ã_W, Ã_new]ᵀ Ã_new`` for a growing working set ``W``.

    While ``Ã_W`` fits in ``max_bytes`` its columns are kept, one block per round
    (appending a block copies nothing, so the cache never holds more than
    ``max_bytes``), and each round forms only the new columns and one matrix product
    per block; once they do not fit, the blocks are dropped and every round's rows
    come from :meth:`LeastSquares.gram`, which recomputes the columns of ``W``.
    """

    def __init__(self, prob: LeastSquares, max_bytes: int):
        self.prob = prob
        # Local columns of a distributed problem cannot make Gram rows alone: use prob.gram.
        self.max_cols = int(max_bytes) // (8 * max(prob.m, 1)) if prob.columns_are_global else 0
        self.blocks: list[np.ndarray] | None = []    # Ã_Wᵀ by rounds: rows are columns of Ã
        self.k = 0                                    # columns held

    def gram_rows(self, W, new) -> np.ndarray:
        prob = self.prob
        if self.blocks is not None and W.size + new.size > self.max_cols:
            self.blocks = None
        if self.blocks is None:
            return prob.gram(np.concatenate([W, new]), new)
        A_new = prob.columns(new)                                        # (m, k_new)
        t = time.perf_counter()
        self.blocks.append(np.ascontiguousarray(A_new.T))
        self.k += new.size
        rows = np.concatenate([blk @ A_new for blk in self.blocks]) if new.size else \
            np.empty((self.k, 0))
        prob.timings["gram"] += time.perf_counter() - t
        return rows
