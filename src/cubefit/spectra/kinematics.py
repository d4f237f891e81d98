"""Several kinematic components in one spectrum, pPXF's ``component``/``moments`` interface.

:func:`fit_kinematics` fits a :class:`~cubefit.spectra.data.Spectrum` as a sum of ``C``
kinematic components, each a non-negative mixture of its own templates seen through its
own Gauss–Hermite LOSVD (v, σ [, h3, h4]); e.g. two counter-rotating stellar disks, or a
bulge and a disk.  The model of camera ``c`` is that of :mod:`cubefit.spectra.model` with
the template sum split by component::

    f_c = M_c · D_c · Σ_k Σ_{p ∈ k} w_p R_c B_c (T_p ⊛ L_{θ_k})  +  Σ_j a_j P_j

(multiplicative polynomial ``M``, dust ``D`` and additive polynomials shared by all
components).  One fit solves everything together: a trust-region least-squares search
over every component's free moments (and ``mdegree``, τ_V), each evaluation solving all
components' weights by NNLS and the additive polynomial exactly (variable projection),
with the Kaufman Jacobian: one inverse FFT per moment of each component's
weight-combined template.

Interface (as pPXF)
-------------------
* ``component``: which templates belong to which component, either an index per template
  of ``templates`` (``(P,)``: template ``p`` in component ``component[p]``), or an index
  per column when the templates are listed once per component (``(k·P,)``: column ``j``
  is template ``j mod P`` in component ``component[j]``; the prepared templates and their
  FFTs are shared, not copied), or an integer ``C``: every template in each of ``C``
  components.  Default: one component of all templates.
* ``moments``: per component (or one value for all) 2 (v, σ), 4 (v, σ, h3, h4), or
  −2 / −4: held fixed at ``start``.
* ``start``: per component ``[v, σ]`` or ``[v, σ, h3, h4]`` (km/s; v relative to the
  redshift, ``c·ln(1+Δz)`` as pPXF), or one such list for all.  Default ``[0, 150]``.
* ``bounds``: per component a list of ``(lo, hi)`` pairs, one per moment (None: the
  default ``±vel_max``, ``[sigma_min, sigma_max]``, ``±h_max``, clipped to what the
  templates' FFT windows allow).

Outputs (:class:`KinematicsResult`): v, σ, h3, h4 of each component with formal 1σ errors
(``sqrt(diag((JᵀJ)⁻¹))`` at the optimum, weights and polynomials marginalised; NaN for
fixed moments and for a component left without weight), the weights, each component's
light — its model flux summed over the fitted pixels, in data units (flux density ×
pixels), the additive polynomial belonging to no component — and light-weighted
⟨log age⟩ and ⟨[M/H]⟩ of each component's templates (:mod:`cubefit.science` definitions).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from numpy.polynomial import legendre
from scipy.linalg import solve_triangular
from scipy.optimize import least_squares

from ..science import populations
from .continuum import VDISP_FLAGS
from .data import Spectrum
from .model import STATUS, TargetModel, TargetProblem
from .templates_prep import PreparedTemplates

__all__ = ["fit_kinematics", "KinematicsResult", "ComponentModel", "component_columns"]


def component_columns(component, n_templates: int) -> tuple[np.ndarray, np.ndarray]:
    """``(template (n,), component (n,))`` of every fitted column from pPXF's ``component``
    (module docstring): None, an integer ``C``, or an index per template or per column."""
    P = int(n_templates)
    if component is None:
        return np.arange(P), np.zeros(P, dtype=np.int64)
    if np.ndim(component) == 0:
        C = int(component)
        if C < 1 or C != component:
            raise ValueError(f"component: expected a number of components >= 1, got {component!r}")
        return np.tile(np.arange(P), C), np.repeat(np.arange(C), P)
    comp = np.asarray(component)
    if comp.ndim != 1 or comp.size == 0 or comp.size % P or not np.issubdtype(comp.dtype, np.integer):
        raise ValueError(f"component: expected integers, one per template ({P},) or one per column "
                         f"when the {P} templates are listed once per component (k·{P},); got "
                         f"shape {comp.shape}, dtype {comp.dtype}")
    C = int(comp.max()) + 1
    missing = sorted(set(range(C)) - set(comp.tolist()))
    if comp.min() < 0 or missing:
        raise ValueError(f"component: indices must run over 0..C-1 without gaps; got min "
                         f"{int(comp.min())}, missing {missing}")
    return np.arange(comp.size) % P, comp.astype(np.int64)


def _per_component(value, C: int, name: str) -> list:
    """One entry per component from a scalar/short list (all alike) or a list of C."""
    if value is None or np.ndim(value) == 0:
        return [value] * C
    if np.ndim(value) == 1 and not isinstance(value[0], (list, tuple, np.ndarray)):
        return [value] * C
    if len(value) != C:
        raise ValueError(f"{name}: expected one entry per component ({C}), got {len(value)}")
    return list(value)


class ComponentModel(TargetModel):
    """:class:`~cubefit.spectra.model.TargetModel` with the templates split into kinematic
    components (module docstring).

    ``col_template``/``col_component (n,)``: template and component of every column (from
    :func:`component_columns`); ``moments (C,)`` signed; ``fixed (C, 4)`` the values of
    held moments (and zeros for h3, h4 of 2-moment components).  ``params`` order: the
    free moments of each component in turn, then m_1..m_mdegree, then τ_V.  Columns are
    kept grouped by component (``order`` maps them back to the caller's order).
    """

    def __init__(self, spec: Spectrum, pt: PreparedTemplates, col_template, col_component,
                 moments, fixed, **kwargs):
        col_template = np.asarray(col_template, dtype=np.int64)
        col_component = np.asarray(col_component, dtype=np.int64)
        self.order = np.argsort(col_component, kind="stable")
        self.col_template = col_template[self.order]
        C = len(moments)
        edges = np.searchsorted(col_component[self.order], np.arange(C + 1))
        self.groups = [slice(int(edges[c]), int(edges[c + 1])) for c in range(C)]
        # Rows of each block FFT a component uses: a view when they are consecutive.
        self.rows = []
        for g in self.groups:
            t = self.col_template[g]
            consecutive = t.size and np.all(np.diff(t) == 1)
            self.rows.append(slice(int(t[0]), int(t[-1]) + 1) if consecutive else t)
        self.comp_moments = [int(m) for m in moments]
        self.fixed = np.asarray(fixed, dtype=np.float64).reshape(C, 4)
        self.n_kin = sum(m for m in self.comp_moments if m > 0)
        super().__init__(spec, pt, moments=2, **kwargs)

    @property
    def C(self) -> int:
        return len(self.comp_moments)

    @property
    def n_params(self) -> int:
        return self.n_kin + self.mdegree + int(self.dust)

    def kinematics(self, theta) -> tuple[np.ndarray, np.ndarray, float]:
        """``(kin (C, 4) v, σ, h3, h4; mpoly; τ_V)`` from the parameter vector."""
        th = np.asarray(theta, dtype=np.float64)
        kin = self.fixed.copy()
        i = 0
        for c, m in enumerate(self.comp_moments):
            if m > 0:
                kin[c, :m] = th[i:i + m]
                i += m
        mp = th[i:i + self.mdegree]
        tau = float(th[i + self.mdegree]) if self.dust else 0.0
        return kin, mp, tau

    def _component_grid(self, cam, c, w_c, L_of_block):
        """Model grid of component ``c`` on camera ``cam``: every template of the component
        (``w_c`` None) or their combination with weights ``w_c``."""
        rows = self.rows[c]
        if w_c is None:
            return self._convolve(cam, lambda j: self.pt.block_rfft(j)[rows], L_of_block)
        comb = {}

        def combined(j):
            if j not in comb:
                comb[j] = w_c @ self.pt.block_rfft(j)[rows]
            return comb[j]
        return self._convolve(cam, combined, L_of_block)

    def evaluate(self, theta) -> dict:
        """Solve the linear problem at ``theta``; returns (and caches) the state."""
        key = np.asarray(theta, dtype=np.float64).tobytes()
        if self._state is not None and self._state["key"] == key:
            return self._state
        kin, mp, tau = self.kinematics(theta)
        cols, factors, losvd, clipped, parts = [], [], [], False, []
        for cam in self.cameras:
            per_comp, cc = [], []
            for c in range(self.C):
                Ls = [self._losvd(*kin[c], b.var) for b in cam.blocks]
                clipped |= any(cl and cam.good[(cam.centres >= b.o0) & (cam.centres < b.o1)].any()
                               for (_, _, cl), b in zip(Ls, cam.blocks))
                per_comp.append(Ls)
                grid = self._component_grid(cam, c, None, [L for L, _, _ in Ls])
                cc.append(self._camera_columns(cam, grid, full=False))
            col = np.concatenate(cc, axis=0)                                  # (n_col, n_good_c)
            fac = self._factor(cam, mp, tau, cam.good)
            losvd.append(per_comp)
            cols.append(col)
            factors.append(fac)
            parts.append(col * (fac * cam.sw[cam.good]))
        At = np.concatenate(parts, axis=1)
        w, a, AQ, _, _, fit = self._linear_optimum(At)
        self._state = dict(key=key, theta=np.array(theta, dtype=np.float64), w=w, a=a, At=At, AQ=AQ,
                           cols=cols, factors=factors, losvd=losvd, resid=self.y - fit, clipped=clipped)
        return self._state

    def jacobian(self, theta) -> np.ndarray:
        """Kaufman variable-projection Jacobian ``(n_good, n_params)`` at ``theta``."""
        st = self.evaluate(theta)
        w = st["w"]
        _, mp, tau = self.kinematics(theta)
        rows = []
        for ci, cam in enumerate(self.cameras):
            sw = cam.sw[cam.good]
            fac = st["factors"][ci]
            parts = []
            for c, m in enumerate(self.comp_moments):
                if m <= 0:
                    continue
                dgrid = self._component_grid(cam, c, w[self.groups[c]],
                                             [d[:m] for _, d, _ in st["losvd"][ci][c]])
                parts.append(self._camera_columns(cam, dgrid, full=False) * (fac * sw))
            base = w @ st["cols"][ci]
            if self.mdegree:
                dfac = legendre.legvander(cam.x[cam.good], self.mdegree)[:, 1:].T
                if self.dust:
                    dfac = dfac * np.exp(-tau * cam.kdust[cam.good])
                parts.append(dfac * (base * sw))
            if self.dust:
                parts.append((-cam.kdust[cam.good] * fac * base * sw)[None, :])
            rows.append(np.concatenate(parts, axis=0) if parts else np.zeros((0, sw.size)))
        D = np.concatenate(rows, axis=1).T
        Q = self.Q
        D -= Q @ (Q.T @ D)
        act = np.flatnonzero(w > 0)
        if act.size:
            Aa = st["At"][act].T - Q @ st["AQ"][act].T
            Qa = np.linalg.qr(Aa)[0]
            D -= Qa @ (Qa.T @ D)
        return -D

    def component_models(self, theta) -> list[np.ndarray]:
        """Each component's best-fit model at ``theta`` on every camera's pixels: one
        ``(C, npix)`` array per camera (data units, NaN where the templates do not reach);
        the additive polynomial is left out."""
        st = self.evaluate(theta)
        w = st["w"]
        _, mp, tau = self.kinematics(theta)
        out = []
        for ci, cam in enumerate(self.cameras):
            fac = self._factor(cam, mp, tau)
            m = np.empty((self.C, cam.npix))
            for c in range(self.C):
                grid = self._component_grid(cam, c, w[self.groups[c]],
                                            [L for L, _, _ in st["losvd"][ci][c]])
                m[c] = fac * self._camera_columns(cam, grid, full=True)[0]
            m[:, ~cam.valid] = np.nan
            out.append(m)
        return out

    def models(self, theta) -> list[np.ndarray]:
        """Best-fit total model at ``theta`` on every camera's pixels (components plus the
        additive polynomial; NaN where the templates do not reach)."""
        st = self.evaluate(theta)
        coef = solve_triangular(self.Rq, st["a"]) if self.degree >= 0 else None
        out = []
        for cam, m in zip(self.cameras, self.component_models(theta)):
            tot = m.sum(axis=0)
            if coef is not None:
                tot = tot + legendre.legval(cam.x, coef)
            out.append(tot)
        return out


@dataclass(eq=False)
class KinematicsResult:
    """Outcome of :func:`fit_kinematics` (module docstring for the definitions).

    ``params``/``errors (C, 4)``: v, σ (km/s), h3, h4 of each component and formal 1σ
    errors (NaN: not fitted or fixed); ``moments`` as given (signed); ``weights (n,)`` per
    column in the caller's column order, with ``template``/``component (n,)``; ``light (C,)``
    each component's model flux summed over the fitted pixels (data units × pixels), and
    ``template_light (C, P)`` that light split over the templates of ``templates``;
    ``logage_lw``/``mh_lw (C,)`` light-weighted ⟨log10 age/yr⟩ and ⟨[M/H]⟩ of each
    component (NaN without those axes or without light); ``flags (C,)`` σ bits of
    :data:`cubefit.spectra.continuum.VDISP_FLAGS`; ``models`` one ``(npix,)`` total model
    and ``component_models`` one ``(C, npix)`` per camera; ``good`` the fitted pixels;
    ``status``/``message`` as :data:`cubefit.spectra.model.STATUS`.
    """

    targetid: int | None
    z: float
    moments: list
    status: int = 0
    message: str = ""
    params: np.ndarray | None = None
    errors: np.ndarray | None = None
    weights: np.ndarray | None = None
    template: np.ndarray | None = None
    component: np.ndarray | None = None
    light: np.ndarray | None = None
    template_light: np.ndarray | None = None
    logage_lw: np.ndarray | None = None
    mh_lw: np.ndarray | None = None
    flags: np.ndarray | None = None
    mpoly: np.ndarray | None = None
    tau_v: float = math.nan
    tau_v_err: float = math.nan
    chi2: float = math.nan
    dof: int = 0
    npix: int = 0
    nfev: int = 0
    models: list = field(default_factory=list)
    component_models: list = field(default_factory=list)
    good: list = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status == 0

    @property
    def C(self) -> int:
        return len(self.moments)

    @property
    def rchi2(self) -> float:
        return self.chi2 / self.dof if self.dof > 0 else math.nan

    def _col(self, a, k):
        return np.full(self.C, np.nan) if a is None else a[:, k].copy()

    vel = property(lambda self: self._col(self.params, 0), doc="v of each component (C,) km/s")
    sigma = property(lambda self: self._col(self.params, 1), doc="σ of each component (C,) km/s")
    h3 = property(lambda self: self._col(self.params, 2), doc="h3 of each component (C,)")
    h4 = property(lambda self: self._col(self.params, 3), doc="h4 of each component (C,)")
    vel_err = property(lambda self: self._col(self.errors, 0), doc="1σ error of v (C,) km/s")
    sigma_err = property(lambda self: self._col(self.errors, 1), doc="1σ error of σ (C,) km/s")
    h3_err = property(lambda self: self._col(self.errors, 2), doc="1σ error of h3 (C,)")
    h4_err = property(lambda self: self._col(self.errors, 3), doc="1σ error of h4 (C,)")

    @property
    def light_fraction(self) -> np.ndarray:
        """Each component's share of the components' light ``(C,)``."""
        if self.light is None or not self.light.sum() > 0:
            return np.full(self.C, np.nan)
        return self.light / self.light.sum()


def _bounds(c, m, b, vmax, smin, smax, hmax):
    """``(lo (|m|,), hi (|m|,))`` of component ``c``: the defaults, narrowed by ``b``."""
    k = abs(m)
    lo = np.array([-vmax, smin, -hmax, -hmax][:k])
    hi = np.array([vmax, smax, hmax, hmax][:k])
    if b is not None:
        if len(b) != k:
            raise ValueError(f"bounds of component {c}: expected {k} (lo, hi) pairs, one per moment, "
                             f"got {len(b)}")
        for i, pair in enumerate(b):
            if pair is None:
                continue
            lo_i, hi_i = (float(x) for x in pair)
            if not lo_i < hi_i:
                raise ValueError(f"bounds of component {c}, moment {i}: need lo < hi, got {pair}")
            lo[i], hi[i] = max(lo[i], lo_i), min(hi[i], hi_i)
            if not lo[i] < hi[i]:
                raise ValueError(f"bounds of component {c}, moment {i}: {pair} lies outside what "
                                 f"the templates allow ([{[-vmax, smin, -hmax, -hmax][i]}, "
                                 f"{[vmax, smax, hmax, hmax][i]}])")
    return lo, hi


def fit_kinematics(spec: Spectrum, templates: PreparedTemplates, component=None, *, moments=2,
                   start=None, bounds=None, degree: int = -1, mdegree: int | None = None,
                   dust: bool = False, vel_max: float = 1000.0, sigma_min: float = 1.0,
                   sigma_max: float = 600.0, h_max: float = 0.3, tau_max: float = 5.0,
                   line_half_width: float = 800.0, ftol: float = 1e-7, xtol: float = 1e-7,
                   max_nfev: int = 200) -> KinematicsResult:
    """Fit ``spec`` with one or more kinematic components (module docstring).

    ``component``, ``moments``, ``start``, ``bounds``: the pPXF-style interface of the
    module docstring.  ``degree``, ``mdegree`` (None: one per 1000 Å of rest-frame range),
    ``dust``, ``vel_max``, ``sigma_min``, ``sigma_max``, ``h_max``, ``tau_max``,
    ``line_half_width``, ``ftol``, ``xtol``, ``max_nfev``: as
    :class:`cubefit.spectra.continuum.ContinuumOptions`.  With one component this is the
    fit of :func:`cubefit.spectra.fit_continuum`.

    Never raises for a problem of this spectrum (``status`` ≠ 0 and ``message``);
    ``ValueError`` for wrong arguments.
    """
    if not isinstance(spec, Spectrum) or not isinstance(templates, PreparedTemplates):
        raise ValueError("fit_kinematics(spec: Spectrum, templates: PreparedTemplates, component, ...)")
    col_t, col_c = component_columns(component, templates.P)
    C = int(col_c.max()) + 1
    if np.ndim(moments) == 0:
        moments = [moments] * C
    if np.ndim(moments) != 1 or len(moments) != C:
        raise ValueError(f"moments: expected one value or one per component ({C}), got {moments!r}")
    mom = [int(m) for m in moments]
    if any(m not in (2, 4, -2, -4) for m in mom):
        raise ValueError(f"moments: expected 2, 4 (free) or -2, -4 (fixed at start) per component, "
                         f"got {mom}")
    st = _per_component(start, C, "start")
    bd = [None] * C if bounds is None else list(bounds)
    if len(bd) != C:
        raise ValueError(f"bounds: expected one entry per component ({C}): a list of (lo, hi) "
                         f"pairs or None, got {len(bd)}")
    if not 0 < sigma_min < sigma_max:
        raise ValueError(f"need 0 < sigma_min < sigma_max (km/s), got {sigma_min}, {sigma_max}")
    fixed = np.zeros((C, 4))
    starts = []
    for c in range(C):
        s = [0.0, min(150.0, 0.5 * (sigma_min + sigma_max))] if st[c] is None else \
            [float(x) for x in st[c]]
        if len(s) not in (2, 4):
            raise ValueError(f"start of component {c}: expected [v, sigma] or [v, sigma, h3, h4] "
                             f"(h3 = h4 = 0 when left out), got {st[c]!r}")
        if not s[1] > 0:
            raise ValueError(f"start of component {c}: sigma must be > 0 km/s, got {s[1]}")
        s = (s + [0.0, 0.0])[:4]
        if mom[c] < 0:
            fixed[c, :abs(mom[c])] = s[:abs(mom[c])]
        starts.append(s[:abs(mom[c])])
    res = KinematicsResult(targetid=spec.targetid, z=float(spec.z), moments=mom)
    try:
        model = ComponentModel(spec, templates, col_t, col_c, mom, fixed, degree=degree,
                               mdegree=mdegree, dust=dust, line_half_width=line_half_width,
                               vel_max=vel_max, sigma_max=sigma_max)
    except TargetProblem as err:
        res.status, res.message = err.status, str(err)
        return res
    lo, hi, x0 = [], [], []
    for c in range(C):
        if mom[c] < 0:
            continue
        lc, hc = _bounds(c, mom[c], bd[c], model.vel_max, sigma_min, model.sigma_max, h_max)
        lo += list(lc)
        hi += list(hc)
        x0 += starts[c]
    md = model.mdegree
    lo, hi, x0 = lo + [-1.0] * md, hi + [1.0] * md, x0 + [0.0] * md
    if dust:
        lo, hi, x0 = lo + [0.0], hi + [tau_max], x0 + [0.1]
    lo, hi = np.array(lo), np.array(hi)
    x0 = np.clip(np.array(x0), lo + 1e-6 * (hi - lo), hi - 1e-6 * (hi - lo))
    try:
        if x0.size:
            sol = least_squares(model.residual, x0, jac=model.jacobian, bounds=(lo, hi), method="trf",
                                x_scale="jac", ftol=ftol, xtol=xtol, gtol=1e-10, max_nfev=max_nfev)
            x, nfev = sol.x, sol.nfev
        else:                                       # everything fixed: weights only
            x, nfev = x0, 1
        state = model.evaluate(x)
        J = model.jacobian(x)
        cov = np.linalg.pinv(J.T @ J) if x.size else np.zeros((0, 0))
    except (np.linalg.LinAlgError, ValueError, FloatingPointError) as err:
        res.status, res.message = STATUS["fit_failed"], f"kinematic fit failed: {err}"
        return res
    _fill(res, model, x, cov, state, nfev, (lo, hi), sigma_min, templates)
    return res


def _fill(res, model, x, cov, state, nfev, bounds, sigma_min, pt):
    """Copy the optimum and the derived quantities into ``res``."""
    C = model.C
    kin, mp, tau = model.kinematics(x)
    err = np.sqrt(np.clip(np.diag(cov), 0.0, None))
    w = state["w"]
    light_unit = model.light_per_weight()
    light = np.array([w[g] @ light_unit[g] for g in model.groups])
    res.params = kin.copy()
    res.errors = np.full((C, 4), np.nan)
    i = 0
    for c, m in enumerate(model.comp_moments):
        if abs(m) == 2:
            res.params[c, 2:] = np.nan                  # h3, h4 not part of this LOSVD
        if m > 0:
            if light[c] > 0:            # a component without weight has no measured moments
                res.errors[c, :m] = err[i:i + m]
            i += m
    res.mpoly = np.asarray(mp, dtype=np.float64)
    if model.dust:
        res.tau_v, res.tau_v_err = tau, float(err[-1])
    res.weights = np.empty_like(w)
    res.weights[model.order] = w
    res.template = model.col_template[np.argsort(model.order)]
    res.component = np.empty(w.size, dtype=np.int64)
    for c, g in enumerate(model.groups):
        res.component[model.order[g]] = c
    res.light = light
    res.chi2 = float(state["resid"] @ state["resid"])
    res.npix = model.n_good
    res.dof = model.n_good - model.n_params - int(np.count_nonzero(w > 0)) - (model.degree + 1)
    res.nfev = int(nfev)
    flags = np.zeros(C, dtype=np.int64)
    finer = any(cam.finer for cam in model.cameras)
    for c in range(C):
        s = res.params[c, 1]
        if finer:
            flags[c] |= VDISP_FLAGS["data_finer_than_templates"]
        if s <= sigma_min * 1.001:
            flags[c] |= VDISP_FLAGS["template_limited"]
        if s >= model.sigma_max * 0.999:
            flags[c] |= VDISP_FLAGS["at_upper_bound"]
    res.flags = flags
    # Populations of each component: weights and light per unit weight on the template grid.
    X = np.zeros((C, pt.P))
    L = np.zeros((C, pt.P))
    for c, g in enumerate(model.groups):
        np.add.at(X[c], model.col_template[g], w[g])
        np.add.at(L[c], model.col_template[g], w[g] * light_unit[g])
    res.template_light = L
    unit = np.divide(L, X, out=np.zeros_like(L), where=X > 0)
    pops = populations(X, unit, pt.pop_axes, pt.axis_units)
    age, mh = pops.mean_log_age("light"), pops.mean_metal("light")
    res.logage_lw = np.full(C, np.nan) if age is None else np.asarray(age, dtype=np.float64)
    res.mh_lw = np.full(C, np.nan) if mh is None else np.asarray(mh, dtype=np.float64)
    res.component_models = model.component_models(x)
    res.models = model.models(x)
    res.good = [cam.good.copy() for cam in model.cameras]
