"""SciPy's bounded least-squares methods (:func:`scipy.optimize.lsq_linear`) on the problem.

Two engines of ``lsq_linear`` with the bounds ``x ≥ 0``:

* :func:`lsq_trf` — Trust Region Reflective with LSMR on the matrix-free operator
  (Branch, Coleman & Li): an interior-point-like Newton method whose scaled
  subproblems LSMR solves with forward and adjoint passes only.
* :func:`lsq_bvls` — Bounded-Variable Least Squares (Stark & Parker), an active-set
  method on a dense matrix: the weighted columns are formed once
  (:meth:`cubefit.solvers.problem.LeastSquares.columns`), so only for problems whose
  ``(S·L) × (C·P)`` matrix fits in ``max_dense_bytes``.

Why the engines are called directly
-----------------------------------
The public ``lsq_linear`` takes no start point: it starts from the *unconstrained*
least-squares solution (an LSMR or ``lstsq`` solve that on nearly collinear templates
is expensive and lands far outside ``x ≥ 0``).  Its engines ``trf_linear`` and
``bvls`` (``scipy.optimize._lsq``, private) take the start point as an argument, which
gives the warm start ``x0`` and, cold, a cheap feasible start.  They are imported when
called, with a clear error if a SciPy release moves them.

Scaling
-------
The engines use a few absolute thresholds, so the problem is scaled first:

* TRF moves its start strictly inside the bounds, putting every weight at the bound
  at ``0.1`` (absolute).  Weights are therefore measured in units of ``κ = 10⁻³ s``
  with ``s`` the weight scale (``‖x0‖∞``, or cold the best multiple of ``Ãᵀỹ``,
  clipped at 0), so a zero starts at ``10⁻⁴ s``; the data are divided by ``‖ỹ‖``.
* BVLS uses one ``tol`` for an absolute KKT violation and a relative cost change;
  rows are scaled so that ``‖∇f(0)‖∞ = 1``, which makes its KKT violation our
  relative optimality (:mod:`.result`).

Stopping
--------
TRF iterates are strictly interior: a weight that belongs at the bound is tiny but
positive, and its positive gradient fails the KKT test however close the cost is.
So once the cost has settled (:class:`.stopping.Convergence`) the weights whose
gradient exceeds ``gtol·‖∇f(0)‖∞`` are set to 0 and the KKT test is evaluated there
(two passes); if it passes, the run stops with that point, else TRF goes on (its own
path is not changed).  SciPy's own tolerance is set to 0, so it never stops first
except at ``max_iter``.  The gradient TRF evaluates at each iterate is recognised
as the adjoint applied to the residual of the latest forward product, which gives
the history at no extra pass.  BVLS is exact: it runs to its own end and the answer
is certified with the operator.
"""
from __future__ import annotations

import importlib

import numpy as np
from scipy.sparse.linalg import LinearOperator

from .problem import LeastSquares, as_problem
from .result import SolverResult
from .stopping import Convergence, limit_reached

__all__ = ["lsq_trf", "lsq_bvls", "DENSE_BYTES"]

DENSE_BYTES = 2 * 1024**3
"""Default limit on the dense ``(m, n)`` float64 matrix :func:`lsq_bvls` forms."""


def _engine(module: str, name: str):
    """``scipy.optimize._lsq.<module>.<name>``, or a clear error if SciPy moved it."""
    try:
        return getattr(importlib.import_module(f"scipy.optimize._lsq.{module}"), name)
    except (ImportError, AttributeError) as e:
        raise RuntimeError(f"scipy.optimize._lsq.{module}.{name} (the engine of "
                           "scipy.optimize.lsq_linear) is not available in this SciPy; use "
                           "method='newton' or 'lbfgsb' instead") from e


class _Stop(Exception):
    """Ends a TRF run from inside an operator call: ``(x, cost, optimality, status)``."""

    def __init__(self, x, cost, opt, status, message=None):
        super().__init__(message)
        self.x, self.cost, self.opt, self.status, self.message = x, cost, opt, status, message


class _ScaledOperator:
    """``Ã κ / η`` as a LinearOperator for TRF, with iterate recognition.

    ``matvec(z) = Ã (κ z) / η`` and ``rmatvec(u) = (κ/η) Ãᵀ u`` (counted passes of
    ``prob``).  An adjoint applied to ``matvec(z) − ỹ/η`` is TRF evaluating its
    gradient at the iterate ``z``: ``on_iterate(x, cost, grad)`` is called with the
    unscaled ``x = κ z``, ``f = η²·½‖u‖²`` and ``∇f = η Ãᵀu``.
    """

    def __init__(self, prob: LeastSquares, kappa: float, eta: float, on_iterate):
        self.prob, self.kappa, self.eta, self.on_iterate = prob, kappa, eta, on_iterate
        self.y = prob.y / eta
        self._z = self._out = None

    def matvec(self, z):
        z = np.ravel(z)
        self._z = z.copy()
        self._out = self.prob.matvec(self.kappa * z) / self.eta
        return self._out

    def rmatvec(self, u):
        u = np.ravel(u)
        v = self.prob.rmatvec(u)
        if self._out is not None and np.array_equal(u, self._out - self.y):
            self.on_iterate(self.kappa * self._z, 0.5 * self.eta**2 * float(u @ u), self.eta * v)
        return (self.kappa / self.eta) * v

    def linear_operator(self) -> LinearOperator:
        return LinearOperator((self.prob.m, self.prob.n), matvec=self.matvec,
                              rmatvec=self.rmatvec, dtype=np.float64)


def _start(prob: LeastSquares, x0):
    """``(x_start, s)``: the start point and the weight scale ``s`` (module docstring)."""
    if x0 is not None:
        x = prob.check_x0(x0)
        if x.any():
            return x, float(x.max())
    b = prob.b
    Ab = prob.matvec(b)
    t = float(b @ b) / float(Ab @ Ab) if Ab.any() else 1.0
    x = np.maximum(t * b, 0.0)
    return x, float(x.max()) if x.any() else 1.0


def lsq_trf(A, y=None, *, x0=None, gtol: float = 1e-6, ftol: float = 1e-12, window: int = 3,
            lsmr_tol="auto", lsmr_maxiter: int | None = None, max_iter: int = 10_000,
            max_passes: int | None = None) -> SolverResult:
    """NNLS by ``lsq_linear``'s TRF + LSMR on the operator; see the module docstring.

    Parameters
    ----------
    A, y : the problem (:class:`cubefit.solvers.problem.LeastSquares`).
    x0 : warm start ``(n,) ≥ 0`` (default: the best multiple of ``Ãᵀỹ``, clipped).
    gtol, ftol, window : stopping rule (:class:`.stopping.Convergence`, with the
        bound-snapping certificate of the module docstring).
    lsmr_tol, lsmr_maxiter : LSMR settings of ``lsq_linear`` (``"auto"``: adaptive).
    max_iter, max_passes : safety limits (status 0).

    ``nit`` counts TRF iterations; the history has one entry per iterate (interior
    points, so their optimality is large until the weights at the bound are snapped).
    """
    trf_linear = _engine("trf_linear", "trf_linear")
    prob = as_problem(A, y)
    conv = Convergence(prob, gtol, ftol, window)
    if not np.any(prob.b > 0):
        # ∇f(0) = −Ãᵀỹ ≥ 0: x = 0 passes the KKT test and is the optimum (convexity).
        cost = prob.cost_at_zero
        prob.record(cost, 0.0)
        return prob.result("trf", np.zeros(prob.n), cost, 0.0, 0, 1)
    x_start, s = _start(prob, x0)
    kappa = 1e-3 * s
    eta = prob.y_norm or 1.0
    tau = gtol * prob.grad0_norm
    state = {"nit": -1, "best": None}            # best: (cost, x) of the snapped candidates

    def snapped(x, grad):
        """The KKT test at ``x`` with the weights that fail it by a positive gradient at 0."""
        xs = np.where(grad > tau, 0.0, x)
        cost, g, _ = prob.evaluate(xs)
        opt = prob.optimality(xs, g)
        if state["best"] is None or cost < state["best"][0]:
            state["best"] = (cost, xs, opt)
        return xs, cost, opt

    def on_iterate(x, cost, grad):
        state["nit"] += 1
        opt = prob.optimality(x, grad)
        prob.record(cost, opt)
        status = conv.update(cost, opt)
        if status == 1:
            raise _Stop(x, cost, opt, 1)
        if status == 2:
            xs, cost_s, opt_s = snapped(x, grad)
            if opt_s <= gtol:
                prob.record(cost_s, opt_s)
                raise _Stop(xs, cost_s, opt_s, 1)
            conv.restart()
        if limit_reached(prob, state["nit"], max_iter, max_passes):
            raise _Stop(x, cost, opt, 0)

    op = _ScaledOperator(prob, kappa, eta, on_iterate)
    zeros = np.zeros(prob.n)
    try:
        res = trf_linear(op.linear_operator(), op.y, x_start / kappa, zeros, np.full(prob.n, np.inf),
                         0.0, "lsmr", lsmr_tol, int(max_iter) + 1, 0, lsmr_maxiter=lsmr_maxiter)
    except _Stop as stop:
        return prob.result("trf", stop.x, stop.cost, stop.opt, state["nit"], stop.status,
                           stop.message)
    # TRF ended by itself: at max_iter, or its step was no longer a descent direction.
    x = kappa * res.x
    cost, grad, _ = prob.evaluate(x)
    opt = prob.optimality(x, grad)
    snapped(x, grad)
    cost, x, opt = min(state["best"], (cost, x, opt), key=lambda c: c[0])
    prob.record(cost, opt)
    status = 0 if res.status == 0 else (1 if opt <= gtol else 2)
    return prob.result("trf", x, cost, opt, state["nit"], status,
                       None if status != 2 else f"TRF stopped by itself (status {res.status}); "
                       f"optimality {opt:.3g} > gtol={gtol:g}")


def lsq_bvls(A, y=None, *, x0=None, gtol: float = 1e-6, ftol: float = 1e-12,
             max_iter: int | None = None, max_dense_bytes: int = DENSE_BYTES) -> SolverResult:
    """NNLS by ``lsq_linear``'s BVLS on the dense weighted matrix; see the module docstring.

    Parameters
    ----------
    A, y : the problem (:class:`cubefit.solvers.problem.LeastSquares`).
    x0 : warm start ``(n,) ≥ 0``: its positive weights start free (default: all at 0,
        where BVLS adds the most violating weight one at a time, as Lawson–Hanson).
    gtol : KKT tolerance of the certificate (status 1).
    ftol : BVLS's own tolerance: it stops when an iteration lowers the cost by less
        than ``ftol·cost`` or its KKT violation (relative, after the scaling) is below.
    max_iter : BVLS iterations after its initialisation (default ``3·n``, as
        :func:`scipy.optimize.nnls`; ``lsq_linear``'s own default ``n`` stops a
        one-weight problem at its optimum with status 0).
    max_dense_bytes : the ``(m, n)`` float64 matrix must fit, else ``ValueError``.

    Costs ``n`` explicit columns (``gram_columns``), one adjoint for the scale and two
    passes for the certificate.
    """
    bvls = _engine("bvls", "bvls")
    prob = as_problem(A, y)
    need = 8 * prob.m * prob.n
    if need > max_dense_bytes:
        raise ValueError(f"bvls: the dense ({prob.m}, {prob.n}) matrix needs {need / 2**30:.2f} GiB, "
                         f"more than max_dense_bytes={max_dense_bytes / 2**30:.2f} GiB; use "
                         "method='working_set' or 'newton' (matrix-free), or raise the limit")
    x = np.zeros(prob.n) if x0 is None else prob.check_x0(x0)
    c = 1.0 / np.sqrt(prob.grad0_norm) if prob.grad0_norm > 0 else 1.0
    M = prob.columns(np.arange(prob.n))
    M *= c
    res = bvls(M, c * prob.y, x, np.zeros(prob.n), np.full(prob.n, np.inf), float(ftol),
               3 * prob.n if max_iter is None else max_iter, 0)
    del M
    x = np.maximum(res.x, 0.0)
    cost, grad, _ = prob.evaluate(x)
    opt = prob.optimality(x, grad)
    prob.record(cost, opt)
    status = 0 if res.status == 0 else (1 if opt <= gtol else 2)
    return prob.result("bvls", x, cost, opt, res.nit, status,
                       None if status != 2 else f"BVLS ended with optimality {opt:.3g} > "
                       f"gtol={gtol:g} (rounding in its least-squares solves)")
