"""Priors of the global fit as extra least-squares rows (docs/fitting.md, "Priors").

Every prior here is a quadratic penalty ``½‖B x‖²`` with a constant matrix ``B`` and a
zero right-hand side, so the regularised problem

    min_{x ≥ 0}  ½‖Ã x − ỹ‖² + Σ_k ½‖B_k x‖²  =  min_{x ≥ 0}  ½‖[Ã; B] x − [ỹ; 0]‖²

is again a non-negative least-squares problem: :func:`with_priors` returns it as a
:class:`PriorProblem` (``shape``, ``matvec``, ``rmatvec``, ``weighted_data``, ``gram``),
which every solver of :mod:`cubefit.solvers` accepts unchanged.  The result's ``cost``
is then the total; :meth:`PriorProblem.data_cost` and :meth:`PriorProblem.penalties`
split it into the data term and one term per prior.

Component light
---------------
The light of component ``c`` is the model flux it contributes over the good (unmasked)
pixels of all spaxels, ``L_c(x) = Σ_p ℓ[c,p] x[c,p]`` with

    ℓ[c,p] = Σ_s Σ_{l good} A[s,c,p,l]          (unweighted model of unit weight),

in data flux units × pixels.  ``ℓ`` is one adjoint of the *weighted* operator: with the
row scales ``d = sqrt(m w ι)`` and ``r = m / d`` (0 where ``d = 0``), ``Ãᵀ r = Aᵀ m``
because ``Ãᵀ = Aᵀ diag(d)``.  The same row functional gives the light of the data,
``L_data = rᵀ ỹ = Σ_s Σ_{l good} Y[s,l]``, so model and data light are measured
alike.  Pixels that carry no weight at all (infinite noise, ``d = 0``) do not count.
For an operator without row scales (a matrix, a ``LinearOperator``) ``r = 1``: ``ℓ`` is
the column sums of the matrix as given.  A different ``ℓ`` (e.g. the light in one band)
can be passed as ``light=``.

Normalisations (why a strength of 1 means what it says)
-------------------------------------------------------
* **Orbit weights** (``orbit_weights = f (C,)``, normalised to unit sum): ``C`` rows

      μ · (L_c(x) − f_c Σ_c' L_c'(x)) = μ · L(x) · (F_c(x) − f_c),   μ = s · ‖ỹ‖ / L_data,

  with ``F_c = L_c / L`` the light fraction and ``s = orbit_strength``.  Near a fit
  ``L(x) ≈ L_data``, so the penalty is ``½ s² ‖ỹ‖² Σ_c (F_c − f_c)²``: with ``s = 1`` a
  fraction error ``e`` costs as much as scaling the whole model by ``1 + e`` costs in
  the data term (``½ e² ‖ỹ‖²`` when the model matches the data).  ``s ≈ 1`` thus lets
  the targets compete with the data on equal terms; ``s ≫ 1`` enforces them, ``s ≪ 1``
  only breaks ties between equally good fits.  The rows are homogeneous in ``x`` (a
  fraction does not depend on the overall scale), so the penalty never biases the
  total flux.  (A scale from the columns, ``sqrt(mean diag ÃᵀÃ) / mean ℓ``, would need
  the Gram diagonal and means the same only when the columns are collinear; ``μ`` from
  the data is exact and costs nothing.)  ``L_data ≤ 0`` (e.g. continuum-subtracted
  data) has no light fractions: pass ``light=`` and ``data_light=`` in a positive light
  measure, or drop the orbit weights.
* **Tikhonov** ``regul`` (order 1 or 2 differences along each axis of each component's
  population grid ``pop_shape``, row-major, so ``p = i_age·n_metal + i_metal`` for
  ``(n_age, n_metal)``) and **ridge**: rows ``sqrt(regul)·σ·D_axis`` and
  ``sqrt(ridge)·σ·I`` with the column scale

      σ = sqrt(mean_j (ÃᵀÃ)_jj)         (root-mean-square norm of a weighted column).

  Then ``regul`` is dimensionless: a roughness ``‖D x‖`` costs as much as the misfit
  of a typical column with weight ``‖D x‖`` times ``sqrt(regul)``.  The mean is exact
  for up to :data:`SCALE_COLUMNS` unknowns and otherwise taken over that many columns
  drawn with a fixed seed (reproducible; the column energies of SSP libraries vary by
  a factor of a few, so the estimate is good to a few per cent).  Pass ``scale=`` to
  fix ``σ`` yourself.

  *Compared with pPXF*: pPXF appends rows ``regul_ppxf · D w`` to its χ² system
  (``χ² + regul_ppxf² ‖D w‖²``), with templates and spectrum normalised by the user
  so that the weights are of order one; its ``regul`` therefore depends on those
  normalisations, and the recipe is to raise it until χ² grows by ``sqrt(2 N_pix)``.
  Here the penalty is ``½ regul σ² ‖D x‖²`` next to ``½ χ²``, so the same rows are
  obtained with ``regul = (regul_ppxf / σ)²`` (``σ`` of the χ²-weighted problem); the
  χ² recipe applies unchanged.  Here every full difference stencil that fits inside
  the grid gives one row (no special rows at the grid edges).
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from .problem import LeastSquares

__all__ = ["with_priors", "PriorProblem", "unit_light", "SCALE_COLUMNS"]

SCALE_COLUMNS = 512
"""The column scale ``σ`` is exact up to this many unknowns, sampled above (docstring)."""


def _light_rows(A, m: int) -> np.ndarray:
    """The row functional ``r (m,)`` whose adjoint is the unit light (module docstring)."""
    if hasattr(A, "row_weights") and hasattr(A, "mask"):          # a LOSVDOperator
        d = np.asarray(A.row_weights, dtype=np.float64)
        good = np.broadcast_to(np.asarray(A.mask, dtype=np.float64), d.shape)
        return np.divide(good, d, out=np.zeros(d.shape), where=d > 0).ravel()
    return np.ones(m)


def unit_light(A) -> np.ndarray:
    """``ℓ (n,)``: the light over good pixels of a unit weight in each column (one adjoint).

    See the module docstring; ``A`` is anything :class:`LeastSquares` accepts.
    """
    ls = LeastSquares(A, np.zeros(A.shape[0]))
    return ls.rmatvec(_light_rows(A, ls.m))


def _difference_matrix(n: int, order: int) -> sp.csr_matrix:
    """``(n - order, n)`` finite differences of ``order`` (rows ``[-1, 1]`` or ``[1, -2, 1]``)."""
    if n <= order:
        return sp.csr_matrix((0, n))
    stencil = np.diff(np.eye(order + 1), order, axis=0)[0]             # [-1, 1] / [1, -2, 1]
    return sp.diags(list(stencil), list(range(order + 1)), shape=(n - order, n), format="csr")


class PriorProblem:
    """``[Ã; B]`` and ``[ỹ; 0]``: the data operator with prior rows appended.

    Made by :func:`with_priors`.  Shapes: ``(m + k, n)`` with ``m`` data rows, ``k``
    prior rows, ``n = C·P`` unknowns.  Attributes: ``base`` (the data operator as
    given), ``C``, ``P``, ``pop_shape``, ``orbit_weights`` (normalised, or None),
    ``mu`` (orbit row scale μ), ``scale`` (column scale σ, None if not needed),
    ``blocks`` (name → number of rows: ``"orbit"``, ``"regul"``, ``"ridge"``).
    """

    def __init__(self, A, y, C: int, P: int, pop_shape: tuple, light=None, scale=None):
        self.base = A
        self._ls = LeastSquares(A, y)
        self.C, self.P, self.pop_shape = C, P, pop_shape
        self.m, self.n = self._ls.m, self._ls.n
        self._light = light
        self._scale = scale
        self.orbit_weights = None
        self.mu = None
        self._blocks: list[tuple[str, np.ndarray | None, sp.csr_matrix, int]] = []

    # -- construction ------------------------------------------------------------------
    def _add(self, name: str, D: sp.spmatrix, mix: np.ndarray | None = None) -> None:
        """Append the rows ``mix @ D`` (``mix`` dense and small, or None for ``D``).

        The orbit rows ``μ(I − f 1ᵀ) Λ`` are dense in ``x``; kept as the product of a
        ``C×C`` matrix and the sparse ``Λ (C, n)`` they cost ``O(n)`` instead of ``O(C·n)``.
        """
        k = D.shape[0] if mix is None else mix.shape[0]
        if k:
            self._blocks.append((name, mix, sp.csr_matrix(D), k))

    @property
    def blocks(self) -> dict[str, int]:
        return {name: k for name, _, _, k in self._blocks}

    @property
    def shape(self) -> tuple[int, int]:
        return (self.m + sum(self.blocks.values()), self.n)

    @property
    def light(self) -> np.ndarray:
        """``ℓ (n,)``, unit light per column (computed on first use: one adjoint)."""
        if self._light is None:
            self._light = self._ls.rmatvec(_light_rows(self.base, self.m))
        return self._light

    @property
    def scale(self) -> float:
        """Column scale ``σ = sqrt(mean diag ÃᵀÃ)`` (computed on first use)."""
        if self._scale is None:
            n = self.n
            if hasattr(self.base, "column_energy") and n <= SCALE_COLUMNS:
                energy = np.asarray(self.base.column_energy(), dtype=np.float64).ravel()
            else:
                idx = np.arange(n) if n <= SCALE_COLUMNS else np.sort(
                    np.random.default_rng(0).choice(n, SCALE_COLUMNS, replace=False))
                energy = np.diag(self._ls.gram(idx, idx))
            self._scale = float(np.sqrt(energy.mean()))
        return self._scale

    # -- the operator ------------------------------------------------------------------
    def matvec(self, x) -> np.ndarray:
        """``[Ã x; B x]`` as ``(m + k,)``."""
        x = np.asarray(x, dtype=np.float64).ravel()
        parts = [self._ls.matvec(x)]
        for _, mix, D, _ in self._blocks:
            Dx = D @ x
            parts.append(Dx if mix is None else mix @ Dx)
        return np.concatenate(parts)

    def rmatvec(self, r) -> np.ndarray:
        """``Ãᵀ r_data + Bᵀ r_prior`` as ``(n,)`` for ``r (m + k,)``."""
        r = np.asarray(r, dtype=np.float64).ravel()
        if r.shape != (self.shape[0],):
            raise ValueError(f"r: expected ({self.shape[0]},) = data rows {self.m} + prior rows "
                             f"{self.shape[0] - self.m}, got shape {np.shape(r)}")
        out = self._ls.rmatvec(r[:self.m])
        i = self.m
        for _, mix, D, k in self._blocks:
            ri = r[i:i + k]
            out += D.T @ (ri if mix is None else mix.T @ ri)
            i += k
        return out

    def weighted_data(self) -> np.ndarray:
        """``[ỹ; 0]`` as ``(m + k,)``."""
        return np.concatenate([self._ls.y, np.zeros(self.shape[0] - self.m)])

    def gram(self, rows=None, cols=None) -> np.ndarray:
        """``[Ã; B][:, rows]ᵀ [Ã; B][:, cols] = Ã_rᵀ Ã_c + Σ_k B_k,rᵀ B_k,c`` in float64."""
        rows = np.arange(self.n) if rows is None else np.asarray(rows, dtype=np.intp)
        cols = np.arange(self.n) if cols is None else np.asarray(cols, dtype=np.intp)
        G = self._ls.gram(rows, cols)
        for _, mix, D, _ in self._blocks:
            Dr, Dc = D[:, rows], D[:, cols]
            G += (Dr.T @ Dc).toarray() if mix is None else Dr.T @ ((mix.T @ mix) @ Dc.toarray())
        return G

    # -- reporting ---------------------------------------------------------------------
    def data_cost(self, x) -> float:
        """``½‖Ã x − ỹ‖²``: the data term alone (one forward pass)."""
        return self._ls.half_sq(self._ls.residual(self._ls.matvec(np.asarray(x, dtype=np.float64).ravel())))

    def penalties(self, x) -> dict[str, float]:
        """``{name: ½‖B_k x‖²}`` for each prior (no operator pass)."""
        x = np.asarray(x, dtype=np.float64).ravel()
        out = {}
        for name, mix, D, _ in self._blocks:
            Bx = D @ x if mix is None else mix @ (D @ x)
            out[name] = 0.5 * float(Bx @ Bx)
        return out

    def component_light(self, x) -> np.ndarray:
        """``L_c(x) (C,)``: light of each component over good pixels (data flux × pixels)."""
        return (self.light * np.asarray(x, dtype=np.float64).ravel()).reshape(self.C, self.P).sum(1)

    def light_fractions(self, x) -> np.ndarray:
        """``F_c = L_c / Σ L (C,)``; NaN when the total light is not positive."""
        Lc = self.component_light(x)
        total = Lc.sum()
        return Lc / total if total > 0 else np.full(self.C, np.nan)


def _layout(A, n: int, orbit_weights, pop_shape) -> tuple[int, int, tuple]:
    """``(C, P, pop_shape)`` from the operator, the orbit weights or the population grid."""
    if hasattr(A, "C") and hasattr(A, "P"):
        C = int(A.C)
    elif orbit_weights is not None:
        C = int(np.size(orbit_weights))
    elif pop_shape is not None:
        C = n // max(1, int(np.prod(pop_shape)))
    else:
        C = 1
    if C < 1 or n % C:
        raise ValueError(f"{n} unknowns cannot be split into {C} components of equal size; pass "
                         "orbit_weights (C,) or pop_shape so that C·prod(pop_shape) = n")
    P = n // C
    shape = (P,) if pop_shape is None else tuple(int(v) for v in np.atleast_1d(pop_shape))
    if int(np.prod(shape)) != P or min(shape) < 1:
        raise ValueError(f"pop_shape: expected a grid of P = {P} populations per component "
                         f"(n = {n} = C·P with C = {C}), got {shape}; order templates row-major "
                         "over the grid, e.g. pop_shape=(n_age, n_metal)")
    return C, P, shape


def with_priors(A, y=None, *, orbit_weights=None, orbit_strength: float = 1.0,
                regul: float = 0.0, regul_order: int = 2, pop_shape=None, ridge: float = 0.0,
                light=None, data_light: float | None = None,
                scale: float | None = None) -> PriorProblem:
    """The NNLS problem ``(A, y)`` with prior rows appended (module docstring).

    Parameters
    ----------
    A, y : the data problem as :class:`cubefit.solvers.LeastSquares` takes it (``y``
        defaults to ``A.weighted_data()``).
    orbit_weights : ``(C,)`` target light fractions (any positive sum; normalised).
    orbit_strength : ``s ≥ 0`` in ``μ = s·‖ỹ‖/L_data``.
    regul : Tikhonov strength ``≥ 0`` (dimensionless, see the docstring).
    regul_order : 1 (first differences: flat) or 2 (second differences: linear trends
        are free).
    pop_shape : population grid of one component, ``prod(pop_shape) = P`` (default
        ``(P,)``: one axis).
    ridge : ridge strength ``≥ 0`` (same scale as ``regul``).
    light : ``(C, P)`` or ``(C·P,)`` unit light ``ℓ`` (default: :func:`unit_light`).
    data_light : the data's light ``L_data`` in the measure of ``light`` (default: the
        good-pixel flux sum ``rᵀỹ``); required with ``light=`` and ``orbit_weights``,
        since ``μ`` compares the two.
    scale : column scale ``σ`` for ``regul``/``ridge`` (default ``sqrt(mean diag ÃᵀÃ)``).

    ``C`` comes from ``A.C`` (a :class:`cubefit.operator.LOSVDOperator`), else from
    ``orbit_weights``, else from ``pop_shape``; else all unknowns are one component.
    """
    n = int(A.shape[1])
    C, P, shape = _layout(A, n, orbit_weights, pop_shape)
    for name, v in (("orbit_strength", orbit_strength), ("regul", regul), ("ridge", ridge)):
        if not (np.isfinite(v) and v >= 0):
            raise ValueError(f"{name}: expected a finite strength >= 0, got {v!r}")
    if regul_order not in (1, 2):
        raise ValueError(f"regul_order: expected 1 (first differences) or 2 (second), got "
                         f"{regul_order!r}")
    if light is not None:
        light = np.asarray(light, dtype=np.float64).ravel()
        if light.shape != (n,) or not np.all(np.isfinite(light)):
            raise ValueError(f"light: expected finite unit light per column, (C, P) = ({C}, {P}) "
                             f"or ({n},), got shape {np.shape(light)}")
    if scale is not None and not (np.isfinite(scale) and scale > 0):
        raise ValueError(f"scale: expected a positive column scale, got {scale!r}")
    prob = PriorProblem(A, y, C, P, shape, light=light, scale=scale)

    if orbit_weights is not None:
        f = np.asarray(orbit_weights, dtype=np.float64).ravel()
        if f.shape != (C,) or not np.all(np.isfinite(f)) or np.any(f < 0) or f.sum() <= 0:
            raise ValueError(f"orbit_weights: expected {C} finite non-negative light fractions "
                             f"with a positive sum (one per component), got "
                             f"{np.array2string(f, precision=3)}")
        f = f / f.sum()
        if light is not None and data_light is None:
            raise ValueError("data_light: with light= and orbit_weights, also pass the data's "
                             "light in the same measure (it sets the orbit strength mu)")
        if data_light is None:
            data_light = float(_light_rows(A, prob.m) @ prob._ls.y)
        if not (np.isfinite(data_light) and data_light > 0):
            raise ValueError(f"orbit_weights: the data's light is {data_light:.6g} <= 0, so light "
                             "fractions are undefined; pass light= and data_light= with a "
                             "positive light measure, or drop orbit_weights")
        prob.orbit_weights = f
        prob.mu = float(orbit_strength) * float(np.linalg.norm(prob._ls.y)) / data_light
        if prob.mu > 0:
            # Λ (C, n): row c holds ℓ on component c's columns; rows μ(I − f 1ᵀ) Λ x.
            Lam = sp.csr_matrix((prob.light, np.arange(n), np.arange(0, n + 1, P)), shape=(C, n))
            prob._add("orbit", Lam, prob.mu * (np.eye(C) - np.outer(f, np.ones(C))))

    if regul > 0:
        if max(shape) <= regul_order:
            fix = ("use regul_order=1, " if regul_order > 1 and max(shape) > 1 else "")
            raise ValueError(f"regul: the population grid {shape} has no axis longer than "
                             f"regul_order={regul_order}, so there is nothing to regularise; "
                             f"{fix}pass the grid as pop_shape, or set regul=0")
        eye = lambda k: sp.identity(k, format="csr")  # noqa: E731
        axes = [sp.kron(sp.kron(eye(int(np.prod(shape[:a]))), _difference_matrix(na, regul_order)),
                        eye(int(np.prod(shape[a + 1:]))))
                for a, na in enumerate(shape)]
        D = sp.kron(eye(C), sp.vstack(axes))
        prob._add("regul", np.sqrt(regul) * prob.scale * D)
    if ridge > 0:
        prob._add("ridge", np.sqrt(ridge) * prob.scale * sp.identity(n, format="csr"))
    return prob
