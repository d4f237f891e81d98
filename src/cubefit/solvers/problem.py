"""``½‖Ã x − ỹ‖², x ≥ 0`` with counted operator passes: what every solver works on.

:class:`LeastSquares` accepts

* a :class:`cubefit.operator.LOSVDOperator` (its ``weighted_data()`` is the default
  ``ỹ`` and its ``gram(rows, cols)`` forms Gram blocks from explicit columns),
* any object with ``shape``, ``matvec`` and ``rmatvec`` (e.g. a
  :class:`scipy.sparse.linalg.LinearOperator`) and optionally ``gram(rows, cols)`` and
  ``columns(idx)``; without them explicit columns come from ``matvec`` of unit
  vectors,
* a dense or sparse matrix.

Everything the solvers compute is float64, whatever the operator's precision.
"""
from __future__ import annotations

import contextvars
import time
from typing import Protocol, runtime_checkable

import numpy as np
import scipy.sparse as sp
from scipy.sparse.linalg import aslinearoperator

from .result import SolverResult, STATUS, relative_optimality

__all__ = ["LeastSquares", "Problem", "BlockOperator", "as_problem", "PROGRESS", "DEADLINE"]

PROGRESS: contextvars.ContextVar = contextvars.ContextVar("cubefit_solver_progress", default=None)
"""Progress callback ``fn(step, x, cost)`` of the solve in progress, installed by
:func:`cubefit.solvers.solve`.  ``step`` is the iteration just recorded (``it``, ``time``,
``passes``, ``cost``, ``optimality``); ``x`` and ``cost`` are the latest point the solver
evaluated (a copy; None before the first evaluation).  A context variable rather than an
argument of every solver, so that each solver streams its iterations (to a
:class:`cubefit.tracking.FitTracker`) without threading a callback through its signature."""

DEADLINE: contextvars.ContextVar = contextvars.ContextVar("cubefit_solver_deadline", default=None)
"""``time.monotonic()`` after which the solve in progress stops at its next limit check
(status 0), installed by :func:`cubefit.solvers.solve` from its ``time_limit``."""


@runtime_checkable
class Problem(Protocol):
    """What a solver may ask of its problem: the contract between the solvers and
    :class:`LeastSquares` (or any replacement, e.g. one whose rows live on several MPI
    ranks).

    Row vectors (``(m,)``: ``A x``, residuals) are opaque to a solver: it may add and scale
    them, but every sum over rows goes through :meth:`half_sq`, :meth:`row_dot`,
    :attr:`cost_at_zero` or :attr:`y_norm`.  Column-space vectors (``(n,)``: ``x``,
    gradients) are ordinary arrays, identical on every process.
    """

    m: int
    n: int
    passes: int
    gram_columns: int
    y: np.ndarray

    def matvec(self, x) -> np.ndarray: ...              # A x (one pass)
    def rmatvec(self, r) -> np.ndarray: ...             # Aᵀ r (one pass)
    def residual(self, Ax) -> np.ndarray: ...           # A x − y
    def half_sq(self, r) -> float: ...                  # ½‖r‖²
    def row_dot(self, u, v) -> float: ...               # u · v
    @property
    def cost_at_zero(self) -> float: ...
    @property
    def y_norm(self) -> float: ...
    @property
    def b(self) -> np.ndarray: ...                      # Aᵀ y
    @property
    def grad0_norm(self) -> float: ...
    def evaluate(self, x): ...                          # (cost, gradient, A x)
    def optimality(self, x, grad) -> float: ...
    def columns(self, idx) -> np.ndarray: ...           # explicit columns A[:, idx]
    def gram(self, rows=None, cols=None) -> np.ndarray: ...
    def record(self, cost: float, optimality: float = np.nan, x=None) -> None: ...
    def check_x0(self, x0) -> np.ndarray: ...
    def result(self, method: str, x, cost, optimality, nit, status, message=None): ...


@runtime_checkable
class BlockOperator(Protocol):
    """An operator whose rows come in blocks that can be applied one at a time — what a
    row-action method (Kaczmarz) or a row-sharded (MPI) problem needs, with no private
    access: block ``i`` covers the rows :meth:`row_block` ``(i)`` of ``A``, and
    ``Σ_i rmatvec_block(r[row_block(i)], i) = rmatvec(r)``.
    :class:`cubefit.operator.LOSVDOperator` is one (a block is a tile of spaxels).
    """

    shape: tuple
    n_blocks: int

    def matvec(self, x) -> np.ndarray: ...
    def rmatvec(self, r) -> np.ndarray: ...
    def row_block(self, i: int) -> slice: ...
    def matvec_block(self, x, i: int) -> np.ndarray: ...
    def rmatvec_block(self, r_i, i: int) -> np.ndarray: ...


class LeastSquares:
    """The problem ``min_{x ≥ 0} ½‖A x − y‖²`` with bookkeeping for the result.

    ``A`` (see module docstring) has shape ``(m, n)``; ``y (m,)`` defaults to
    ``A.weighted_data()`` when ``A`` has it.  Counters: :attr:`passes` (operator
    applications), :attr:`gram_columns` (explicit columns formed for Gram blocks),
    and seconds spent in each (:attr:`timings`).
    """

    def __init__(self, A, y=None):
        if isinstance(A, np.ndarray) or sp.issparse(A):
            if A.ndim != 2:
                raise ValueError(f"A: expected a 2-D matrix (m, n), got shape {A.shape}")
            self._dense = A if sp.issparse(A) else np.asarray(A, dtype=np.float64)
            self._op = aslinearoperator(self._dense)
        else:
            if not all(hasattr(A, a) for a in ("shape", "matvec", "rmatvec")):
                raise ValueError(f"A: expected a LOSVDOperator, a LinearOperator (shape, matvec, "
                                 f"rmatvec) or a matrix, got {type(A).__name__}")
            self._dense = None
            self._op = A
        self.m, self.n = (int(s) for s in A.shape)
        if y is None:
            if not hasattr(A, "weighted_data"):
                raise ValueError("y: no data given and A has no weighted_data(); pass the "
                                 f"weighted data vector y ({self.m},)")
            y = A.weighted_data()
        y = np.asarray(y, dtype=np.float64)
        if y.shape != (self.m,):
            raise ValueError(f"y: expected the weighted data as ({self.m},) (rows of A), got "
                             f"shape {y.shape}")
        if not np.all(np.isfinite(y)):
            raise ValueError("y: expected finite values; mask or zero-weight non-finite pixels")
        self.y = y
        self.passes = 0
        self.gram_columns = 0
        self.timings = {"operator": 0.0, "gram": 0.0}
        self._t0 = time.perf_counter()
        self.history = {"time": [], "passes": [], "cost": [], "optimality": []}
        self._b = None
        self._progress = PROGRESS.get()
        self._deadline = DEADLINE.get()
        self._last = (None, None)

    @property
    def out_of_time(self) -> bool:
        """Whether the solve's ``time_limit`` (:data:`DEADLINE`) has passed."""
        return self._deadline is not None and time.monotonic() >= self._deadline

    @property
    def shape(self) -> tuple:
        """``(m, n)``: rows (this process's, for a distributed problem) and unknowns."""
        return (self.m, self.n)

    columns_are_global = True
    """Whether :meth:`columns` returns whole columns (all rows).  A problem whose rows are
    spread over processes returns only its own rows there: solvers then take their
    explicit-column products from :meth:`gram`, which reduces them."""

    @property
    def stored_matrix(self) -> bool:
        """Whether ``A`` is a stored matrix, whose columns are slices (no operator work)."""
        return self._dense is not None

    # -- operator applications, counted ---------------------------------------------------
    def matvec(self, x) -> np.ndarray:
        t = time.perf_counter()
        out = np.asarray(self._op.matvec(x), dtype=np.float64).ravel()
        self.timings["operator"] += time.perf_counter() - t
        self.passes += 1
        return out

    def rmatvec(self, r) -> np.ndarray:
        t = time.perf_counter()
        out = np.asarray(self._op.rmatvec(r), dtype=np.float64).ravel()
        self.timings["operator"] += time.perf_counter() - t
        self.passes += 1
        return out

    @property
    def b(self) -> np.ndarray:
        """``Aᵀy = −∇f(0)`` (one pass, computed once)."""
        if self._b is None:
            self._b = self.rmatvec(self.y)
        return self._b

    @property
    def grad0_norm(self) -> float:
        """``‖∇f(0)‖∞``, the scale of :func:`relative_optimality`."""
        return float(np.max(np.abs(self.b), initial=0.0))

    # -- row space: the only place where row vectors (m,) are combined --------------------
    # Solvers treat matvec's output and residuals as opaque row vectors and ask for their
    # sums here, so that a problem whose rows are spread over processes (MPI) can reduce
    # each sum once, and nothing else has to change.
    def residual(self, Ax) -> np.ndarray:
        """``A x − y`` from ``A x`` (a row vector)."""
        return Ax - self.y

    def half_sq(self, r) -> float:
        """``½‖r‖²`` of a row vector: the cost of a residual."""
        return 0.5 * float(r @ r)

    def row_dot(self, u, v) -> float:
        """``u · v`` of two row vectors."""
        return float(u @ v)

    @property
    def cost_at_zero(self) -> float:
        """``f(0) = ½‖y‖²``."""
        return 0.5 * float(self.y @ self.y)

    @property
    def y_norm(self) -> float:
        """``‖y‖``, the scale of rounding in row-space sums."""
        return float(np.linalg.norm(self.y))

    def evaluate(self, x):
        """``(cost, gradient, A x)`` at ``x`` (two passes)."""
        Ax = self.matvec(x)
        r = self.residual(Ax)
        cost = self.half_sq(r)
        if self._progress is not None:  # solvers update x in place: keep a copy for snapshots
            self._last = (np.array(x, dtype=np.float64), cost)
        return cost, self.rmatvec(r), Ax

    def optimality(self, x, grad) -> float:
        return relative_optimality(x, grad, self.grad0_norm)

    def columns(self, idx) -> np.ndarray:
        """Explicit columns ``A[:, idx]`` as a float64 ``(m, k)`` array."""
        t = time.perf_counter()
        idx = np.asarray(idx, dtype=np.intp)
        if self._dense is not None:
            cols = self._dense[:, idx]
            cols = cols.toarray() if sp.issparse(cols) else cols
        elif hasattr(self._op, "columns"):
            cols = self._op.columns(idx)
        else:
            cols = np.empty((self.m, idx.size))
            for i, j in enumerate(idx):
                e = np.zeros(self.n)
                e[j] = 1.0
                cols[:, i] = self._op.matvec(e)
            self.passes += idx.size
        self.gram_columns += idx.size
        self.timings["gram"] += time.perf_counter() - t
        return np.asarray(cols, dtype=np.float64)

    def gram(self, rows=None, cols=None) -> np.ndarray:
        """``A[:, rows]ᵀ A[:, cols]`` in float64 (default all columns).

        Uses the operator's own ``gram`` when it has one (the LOSVD operator forms the
        columns chunk by chunk and never holds them all), else :meth:`columns`.
        """
        rows = np.arange(self.n) if rows is None else np.asarray(rows, dtype=np.intp)
        cols = np.arange(self.n) if cols is None else np.asarray(cols, dtype=np.intp)
        if self._dense is None and hasattr(self._op, "gram"):
            t = time.perf_counter()
            G = np.asarray(self._op.gram(rows=rows, cols=cols), dtype=np.float64)
            self.gram_columns += np.union1d(rows, cols).size
            self.timings["gram"] += time.perf_counter() - t
            return G
        union = np.union1d(rows, cols)
        Au = self.columns(union)
        t = time.perf_counter()
        G = Au[:, np.searchsorted(union, rows)].T @ Au[:, np.searchsorted(union, cols)]
        self.timings["gram"] += time.perf_counter() - t
        return G

    # -- bookkeeping ----------------------------------------------------------------------
    def elapsed(self) -> float:
        return time.perf_counter() - self._t0

    def record(self, cost: float, optimality: float = np.nan, x=None) -> None:
        """Append one iteration to :attr:`history` and report it to the progress callback,
        with the iterate ``x`` when the solver gives it (else the last evaluated point)."""
        h = self.history
        h["time"].append(self.elapsed())
        h["passes"].append(self.passes)
        h["cost"].append(float(cost))
        h["optimality"].append(float(optimality))
        if self._progress is not None:
            if x is not None:
                self._last = (np.array(x, dtype=np.float64), float(cost))
            step = {k: v[-1] for k, v in h.items()}
            self._progress(dict(step, it=len(h["cost"]) - 1), *self._last)

    def check_x0(self, x0) -> np.ndarray:
        """A validated float64 copy of a warm start ``x0 (n,)`` (finite, ≥ 0)."""
        x = np.asarray(x0, dtype=np.float64).ravel()
        if x.shape != (self.n,):
            raise ValueError(f"x0: expected ({self.n},) weights, got shape {np.shape(x0)}")
        if not np.all(np.isfinite(x)) or np.any(x < 0):
            raise ValueError("x0: expected finite non-negative weights; clip a start point with "
                             "np.maximum(x0, 0)")
        return x.copy()

    def degenerate(self, x) -> str | None:
        """Why the model ``A x`` is zero although the data ``y`` are not; None when it is not.

        Zero when every column is zero or orthogonal to the data (``Aᵀy = 0``: all-zero
        LOSVDs or templates, infinite noise, a mask removing the light), or when ``x = 0``
        because no column correlates positively with the data (``Aᵀy ≤ 0``).
        """
        if not np.any(self.y):
            return None
        if self.grad0_norm == 0:
            return ("every model column is zero or orthogonal to the weighted data (A^T y = 0): "
                    "check for LOSVDs or templates that are zero, infinite noise, or a mask that "
                    "removes the light")
        if not np.any(np.asarray(x) > 0):
            return ("no model column correlates positively with the weighted data (A^T y <= 0), so "
                    "x = 0 is the best non-negative fit: check the sign and units of the data")
        return None

    def result(self, method: str, x, cost, optimality, nit, status, message=None) -> SolverResult:
        if status >= 1:          # a claimed optimum that explains nothing is not a success
            why = self.degenerate(x)
            if why is not None:
                status, message = -2, f"{STATUS[-2]}: {why}"
        total = self.elapsed()
        timings = dict(self.timings, total=total)
        timings["solve"] = max(0.0, total - timings["operator"] - timings["gram"])
        if status == 0 and message is None and self.out_of_time:
            message = "stopped at its time limit without a KKT certificate"
        return SolverResult(x=x, cost=float(cost), optimality=float(optimality), nit=int(nit),
                            passes=self.passes, gram_columns=self.gram_columns, status=int(status),
                            success=status == 1, message=message or STATUS[status], method=method,
                            timings=timings, history=self.history)


def as_problem(A, y=None) -> LeastSquares:
    """``A`` itself when it is already a :class:`LeastSquares` (e.g. a distributed one,
    :class:`cubefit.mpi.DistributedLeastSquares`) and no ``y`` is given, else
    ``LeastSquares(A, y)``: what every solver calls first."""
    if isinstance(A, LeastSquares):
        if y is not None:
            raise ValueError("y: a LeastSquares problem carries its own data; pass y=None")
        return A
    return LeastSquares(A, y)
