"""The solvers' common result object and the optimality (KKT) measure.

Optimality
----------
For ``f(x) = ½‖Ã x − ỹ‖²`` subject to ``x ≥ 0`` the KKT conditions are ``x ≥ 0``,
``∇f ≥ 0`` and ``x ⊙ ∇f = 0``.  The *projected gradient* is

    pg_j = ∇f_j            where x_j > 0,
    pg_j = min(∇f_j, 0)    where x_j = 0,

which vanishes exactly at the optimum.  The solvers report and test the relative
projected-gradient norm

    optimality = ‖pg(x)‖∞ / max(‖∇f(0)‖∞, tiny),      ∇f(0) = −Ãᵀỹ,

a dimensionless number that does not depend on the units of the data or of the
weights, and is unchanged when the problem is scaled.  It is evaluated with the
operator (one forward and one adjoint pass), never with a Gram matrix, so an exact
solver's certificate is as strong as an iterative one's.  The default tolerance is
``gtol = 1e-6``.

A first-order test does not bound the cost: along a flat direction (nearly collinear
SSP templates) the remaining decrease is ``≈ pg² / (2·curvature)``, and on a 64×8×150
SSP-like mock a point with ``optimality = 6e-7`` still had a cost 1.3e-3 above the
optimum.  So the exact solvers run until no column can lower the cost (they end near
1e-11), and the iterative ones add a cost-change test (status 1 needs both).
"""
from __future__ import annotations

import numpy as np
from scipy.optimize import OptimizeResult

__all__ = ["SolverResult", "projected_gradient", "relative_optimality", "STATUS"]

STATUS = {
    1: "KKT test passed: relative projected gradient <= gtol",
    2: "stalled: the cost stopped decreasing (cost-change test) before the KKT test passed",
    0: "stopped at an iteration or pass limit (or an exact solve missed gtol) without a KKT certificate",
    -1: "numerical failure",
    -2: "degenerate: the fitted model is zero although the data are not",
}
"""Meaning of :attr:`SolverResult.status`; only ``1`` sets ``success``."""


class SolverResult(OptimizeResult):
    """Result of a global NNLS solve (a :class:`scipy.optimize.OptimizeResult`).

    Fields
    ------
    x : ``(C·P,)`` float64 non-negative weights, row-major ``(C, P)``.
    cost : ``f(x) = ½‖Ã x − ỹ‖²`` (the weighted objective of docs/data-model.md, no priors).
    optimality : relative projected-gradient norm (module docstring).
    nit : outer iterations (solver specific: FISTA steps, working-set rounds, 1 for
        the exact Gram solve).
    passes : operator applications (each ``Ã x`` or ``Ãᵀ r`` counts 1).
    gram_columns : columns of ``Ã`` formed explicitly to build Gram blocks.
    status, success, message : see :data:`STATUS`; ``success`` is ``status == 1``.  A
        solve that ends (KKT test passed or stalled) with a zero model of non-zero data
        gets status -2 and a message saying why (all columns zero or orthogonal to the
        data; or none correlating positively with it): such an ``x`` certifies nothing.
    method : solver name.
    timings : seconds: ``total``, ``operator`` (applies), ``gram`` (Gram blocks),
        ``solve`` (the rest: restricted solves, vector work).
    history : dict of equal-length lists ``time`` (s since start), ``passes``,
        ``cost``, ``optimality`` (NaN where not evaluated), one entry per iteration.
    """


def projected_gradient(x, grad) -> np.ndarray:
    """``pg = ∇f`` where ``x > 0`` and ``min(∇f, 0)`` where ``x = 0`` (bound ``x ≥ 0``)."""
    return np.where(x > 0, grad, np.minimum(grad, 0.0))


def relative_optimality(x, grad, grad0_norm: float) -> float:
    """``‖pg(x)‖∞ / max(grad0_norm, tiny)`` with ``grad0_norm = ‖∇f(0)‖∞ = ‖Ãᵀỹ‖∞``."""
    pg = projected_gradient(x, grad)
    return float(np.max(np.abs(pg), initial=0.0) / max(grad0_norm, np.finfo(np.float64).tiny))
