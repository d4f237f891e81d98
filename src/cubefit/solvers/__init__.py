"""Global NNLS solvers: ``min_{x ≥ 0} ½‖Ã x − ỹ‖²`` (docs/fitting.md).

All solvers take the problem as ``(A, y)`` — a :class:`cubefit.operator.LOSVDOperator`
(``y`` defaults to its weighted data), a :class:`scipy.sparse.linalg.LinearOperator`
or a matrix — plus a warm start ``x0``, and return a :class:`SolverResult` whose
``optimality`` is the relative projected-gradient norm (:mod:`.result`).  They stop on
the KKT test ``optimality ≤ gtol`` (default 1e-6), on a cost-change test, or on a
safety limit, never on an iteration count alone.

* :func:`nnls_gram` — exact: full Gram matrix + primal-dual active set (well
  conditioned) or pivoted Cholesky + Lawson–Hanson (small ``C·P``).
* :func:`nnls_working_set` — exact and matrix-free: column generation with Gram
  blocks of the working set only.
* :func:`fista` — accelerated projected gradient with restart (baseline).
* :func:`newton_cg` — active-set Newton–CG (GPCG: gradient projection + CG on the
  free face), matrix-free and second order.
* :func:`lbfgsb` — L-BFGS-B (:func:`scipy.optimize.minimize`).
* :func:`lsq_trf` — :func:`scipy.optimize.lsq_linear`'s TRF + LSMR on the operator.
* :func:`lsq_bvls` — :func:`scipy.optimize.lsq_linear`'s BVLS on the dense matrix
  (small problems).
"""
import time

import numpy as np

from .bounded_lsq import lsq_bvls, lsq_trf
from .exact import nnls_gram, nnls_on_gram
from .fista import fista
from .lbfgsb import lbfgsb
from .newton import newton_cg
from .problem import DEADLINE, PROGRESS, LeastSquares
from .result import STATUS, SolverResult, projected_gradient, relative_optimality
from .working_set import nnls_working_set

__all__ = ["solve", "METHODS", "auto_method", "GRAM_MAX_UNKNOWNS", "nnls_gram", "nnls_on_gram", "nnls_working_set", "fista",
           "newton_cg", "lbfgsb", "lsq_trf", "lsq_bvls",
           "LeastSquares", "SolverResult", "STATUS", "projected_gradient", "relative_optimality"]

METHODS = {"gram": nnls_gram, "working_set": nnls_working_set, "fista": fista,
           "newton_cg": newton_cg, "lbfgsb": lbfgsb, "trf": lsq_trf, "bvls": lsq_bvls}
"""Solver name -> function."""

GRAM_MAX_UNKNOWNS = 3000
"""``auto`` forms the full Gram matrix (``n²`` float64, 72 MB at this size) only up to here."""


def auto_method(A) -> str:
    """The solver ``method="auto"`` runs for problem ``A`` (measured: docs/benchmarks.md).

    On the CPU, without Tikhonov or ridge rows the solution is sparse (tens of weights
    out of thousands) and the working set wins: 1.4 s vs 3.4 s for the full Gram matrix
    on the E-MILES 64×8×150×858 mock, 22 s vs 70 s at 256×16×150×1500.  Smoothing
    priors make it dense (865 of 1200 non-zero): the full Gram matrix then wins (4.0 s
    vs 35 s for the working set) while it fits; beyond, the working set stays the
    certified choice (Newton-CG, L-BFGS-B and FISTA stall 4e-4…2e-3 above the optimum
    on E-MILES).  When the operator runs on a GPU backend the Gram matrix is formed
    there (2.6 s vs 19 s for the working set at 256×16×150×1500 on an H100), so it is
    used up to :data:`GRAM_MAX_UNKNOWNS` with or without priors.
    """
    blocks = getattr(A, "blocks", None) or {}
    smooth = any(name in blocks for name in ("regul", "ridge"))
    op = getattr(A, "base", A)                          # a PriorProblem wraps the operator
    on_device = getattr(op, "backend", "numpy") != "numpy"
    fits = A.shape[1] <= GRAM_MAX_UNKNOWNS
    return "gram" if fits and (smooth or on_device) else "working_set"


def solve(A, y=None, *, method: str = "auto", callback=None, time_limit: float | None = None,
          **options) -> SolverResult:
    """Solve with ``method`` in :data:`METHODS` or ``"auto"`` (:func:`auto_method`).
    ``options`` go to the solver (``x0``, ``gtol``, ...).  ``callback(step, x, cost)`` is
    called after every recorded iteration (:data:`.problem.PROGRESS`).  ``time_limit``
    (seconds): the iterative solvers stop at their next limit check after it, with
    status 0 and their best point so far (the exact solve of ``gram`` and ``bvls`` is
    not interrupted)."""
    if method == "auto":
        method = auto_method(A)
    if method not in METHODS:
        raise ValueError(f"method: expected 'auto' or one of {sorted(METHODS)}, got {method!r}")
    if time_limit is not None and not (np.isfinite(time_limit) and time_limit > 0):
        raise ValueError(f"time_limit: expected a positive number of seconds, got {time_limit!r}")
    token = PROGRESS.set(callback)
    deadline = DEADLINE.set(None if time_limit is None else time.monotonic() + float(time_limit))
    try:
        return METHODS[method](A, y, **options)
    finally:
        DEADLINE.reset(deadline)
        PROGRESS.reset(token)
