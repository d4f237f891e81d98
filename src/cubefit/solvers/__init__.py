"""Global NNLS solvers: ``min_{x ≥ 0} ½‖Ã x − ỹ‖²`` (DESIGN §3).

All solvers take the problem as ``(A, y)`` — a :class:`cubefit.operator.LOSVDOperator`
(``y`` defaults to its weighted data), a :class:`scipy.sparse.linalg.LinearOperator`
or a matrix — plus a warm start ``x0``, and return a :class:`SolverResult` whose
``optimality`` is the relative projected-gradient norm (:mod:`.result`).  They stop on
the KKT test ``optimality ≤ gtol`` (default 1e-6), on a cost-change test, or on a
safety limit, never on an iteration count alone.

* :func:`nnls_gram` — exact: full Gram matrix + pivoted Cholesky + Lawson–Hanson
  (small ``C·P``).
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
from .bounded_lsq import lsq_bvls, lsq_trf
from .exact import nnls_gram, nnls_on_gram
from .fista import fista
from .lbfgsb import lbfgsb
from .newton import newton_cg
from .problem import PROGRESS, LeastSquares
from .result import STATUS, SolverResult, projected_gradient, relative_optimality
from .working_set import nnls_working_set

__all__ = ["solve", "METHODS", "AUTO_METHOD", "nnls_gram", "nnls_on_gram", "nnls_working_set", "fista",
           "newton_cg", "lbfgsb", "lsq_trf", "lsq_bvls",
           "LeastSquares", "SolverResult", "STATUS", "projected_gradient", "relative_optimality"]

METHODS = {"gram": nnls_gram, "working_set": nnls_working_set, "fista": fista,
           "newton_cg": newton_cg, "lbfgsb": lbfgsb, "trf": lsq_trf, "bvls": lsq_bvls}
"""Solver name -> function."""

AUTO_METHOD = "working_set"
"""What ``method="auto"`` runs.  On a 64×8×150 SSP-like mock (L=770, 15 of 1200
weights non-zero) the working set reached the optimum in 1.1 s, the full Gram matrix
in 4.8 s and ``scipy.optimize.nnls`` on the dense matrix in 5.5 s (2 cores); revisit
with the solver benchmark of issue #4 (regularised fits are not sparse)."""


def solve(A, y=None, *, method: str = "auto", callback=None, **options) -> SolverResult:
    """Solve with ``method`` in :data:`METHODS` or ``"auto"`` (:data:`AUTO_METHOD`).
    ``options`` go to the solver (``x0``, ``gtol``, ...).  ``callback(step, x, cost)`` is
    called after every recorded iteration (:data:`.problem.PROGRESS`)."""
    if method == "auto":
        method = AUTO_METHOD
    if method not in METHODS:
        raise ValueError(f"method: expected 'auto' or one of {sorted(METHODS)}, got {method!r}")
    token = PROGRESS.set(callback)
    try:
        return METHODS[method](A, y, **options)
    finally:
        PROGRESS.reset(token)
