"""Stellar continuum and kinematics of one spectrum (variable projection).

:func:`fit_continuum` fits a :class:`~cubefit.spectra.data.Spectrum` with
:class:`~cubefit.spectra.templates_prep.PreparedTemplates`: a trust-region
least-squares search (:func:`scipy.optimize.least_squares`, ``trf``) over the
non-linear parameters — v, σ [, h3, h4], the multiplicative Legendre coefficients
(``mdegree``) and the Calzetti (2000) τ_V (``dust``) — each evaluation solving the
template weights (NNLS) and the additive Legendre polynomial (``degree``) exactly
(:mod:`cubefit.spectra.model`), with the analytic variable-projection Jacobian.

Formal 1σ errors are ``sqrt(diag((JᵀJ)⁻¹))`` with ``J`` that Jacobian at the optimum:
the errors of the non-linear parameters with the linear ones marginalised (weights
on the active set, polynomials), for the data's ivar taken at face value (not scaled
by χ²/dof).

Derived quantities (:class:`ContinuumResult`): χ²/dof with ``dof = n_pix − n_free``
(non-linear parameters, positive weights and polynomial terms); median S/N per
camera over pixels with ivar > 0; light- and mass-weighted ⟨log age⟩ and ⟨[M/H]⟩
with the definitions of :mod:`cubefit.science` (light of a template = its model flux
over the fitted pixels; mass from the library's mass table); the V-band stellar
M/L of the fitted population; Dn4000 on the data and on the model
(:mod:`cubefit.spectra.indices`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import least_squares

from .. import C_KMS
from ..science import populations
from .data import Camera, Resolution, Spectrum
from .indices import dn4000
from .model import STATUS, TargetModel, TargetProblem
from .templates_prep import PreparedTemplates, prepare_templates_cached

__all__ = ["ContinuumOptions", "ContinuumResult", "fit_continuum", "fit_spectrum", "continuum_basis",
           "continuum_columns", "CONTINUUM_COLUMNS", "VDISP_FLAGS"]

VDISP_FLAGS = {"data_finer_than_templates": 1, "template_limited": 2, "at_upper_bound": 4}
"""Bits of the VDISP_FLAG column: the data resolve finer than the templates over part of
the fit (σ below the templates' own dispersion is not measurable there); σ is at its
lower bound or below the templates' dispersion in fitted pixels; σ at its upper bound."""


@dataclass(frozen=True)
class ContinuumOptions:
    """Settings of a continuum fit.

    moments: 2 (v, σ) or 4 (v, σ, h3, h4).  degree: additive Legendre degree (-1: none).
    mdegree: multiplicative Legendre degree (0: none; None: one per 1000 Å of the
    rest-frame range fitted, rounded down — flux-calibration and dust residuals in survey
    spectra otherwise leak into σ).  dust: fit Calzetti τ_V ≥ 0.
    vel_start, sigma_start (km/s): start point.  vel_max: |v| bound, sigma_min,
    sigma_max: σ bounds (km/s; the upper ones are clipped to what the templates were
    prepared for).  h_max: |h3|, |h4| bound.  tau_max: τ_V bound.  line_half_width:
    half-width (km/s) of the emission-line windows masked (0: none).  ftol, xtol,
    max_nfev: stopping rules of :func:`scipy.optimize.least_squares`.
    """

    moments: int = 2
    degree: int = -1
    mdegree: int | None = None
    dust: bool = False
    vel_start: float = 0.0
    sigma_start: float = 150.0
    vel_max: float = 1000.0
    sigma_min: float = 1.0
    sigma_max: float = 600.0
    h_max: float = 0.3
    tau_max: float = 5.0
    line_half_width: float = 800.0
    ftol: float = 1e-7
    xtol: float = 1e-7
    max_nfev: int = 200

    def __post_init__(self):
        if self.moments not in (2, 4):
            raise ValueError(f"moments: expected 2 or 4, got {self.moments!r}")
        if not (0 < self.sigma_min < self.sigma_start < self.sigma_max):
            raise ValueError(f"need 0 < sigma_min < sigma_start < sigma_max (km/s), got "
                             f"{self.sigma_min}, {self.sigma_start}, {self.sigma_max}")
        if not abs(self.vel_start) < self.vel_max:
            raise ValueError(f"vel_start={self.vel_start} must lie within ±vel_max={self.vel_max} km/s")


def continuum_columns(n_templates: int = 150, camera_names=("b", "r", "z")) -> tuple:
    """Catalogue columns of :meth:`ContinuumResult.to_row`: ``(name, dtype, unit,
    description)`` in catalogue order, for ``n_templates`` weights and those cameras."""
    kms, ikms = "km/s", "s2/km2"
    cols = [
        ("TARGETID", "i8", "", "Unique target ID (-1 when not given)"),
        ("STATUS", "i2", "", "Continuum fit status: 0 ok, 1 bad input, 2 no usable pixels, "
                                       "3 outside the templates' range, 4 fit failed"),
        ("MESSAGE", "U160", "", "Why the continuum fit failed (empty when it succeeded)"),
        ("VSHIFT", "f8", kms, "Stellar velocity relative to the redshift Z, c·ln(1+Δz)"),
        ("VSHIFT_IVAR", "f8", ikms, "Inverse variance of VSHIFT"),
        ("VDISP", "f8", kms, "Stellar velocity dispersion"),
        ("VDISP_IVAR", "f8", ikms, "Inverse variance of VDISP"),
        ("VDISP_FLAG", "i2", "", "Bits: 1 data finer than the templates in part of the fit, 2 VDISP "
                                 "limited by the templates' resolution or at its lower bound, 4 at its "
                                 "upper bound"),
        ("H3", "f8", "", "Gauss-Hermite h3 of the stellar LOSVD (NaN when not fitted)"),
        ("H3_IVAR", "f8", "", "Inverse variance of H3"),
        ("H4", "f8", "", "Gauss-Hermite h4 of the stellar LOSVD (NaN when not fitted)"),
        ("H4_IVAR", "f8", "", "Inverse variance of H4"),
        ("TAU_V", "f8", "", "Calzetti (2000) V-band optical depth of the stellar continuum "
                            "(NaN when not fitted)"),
        ("TAU_V_IVAR", "f8", "", "Inverse variance of TAU_V"),
        ("RCHI2_CONT", "f8", "", "Reduced chi^2 of the continuum fit over its fitted pixels"),
        ("NPIX_CONT", "i4", "", "Number of pixels in the continuum fit"),
        ("NFEV_CONT", "i4", "", "Model evaluations of the continuum fit"),
    ]
    cols += [(f"SNR_{n.upper()}", "f8", "", f"Median S/N per pixel of camera {n}") for n in camera_names]
    cols += [
        ("DN4000", "f8", "", "Narrow 4000-A break (Balogh et al. 1999) of the data"),
        ("DN4000_IVAR", "f8", "", "Inverse variance of DN4000"),
        ("DN4000_MODEL", "f8", "", "Narrow 4000-A break of the best-fit continuum"),
        ("LOGAGE_LW", "f8", "dex", "Light-weighted mean log10(age/yr) of the fitted templates"),
        ("LOGAGE_MW", "f8", "dex", "Mass-weighted mean log10(age/yr)"),
        ("MH_LW", "f8", "dex", "Light-weighted mean [M/H]"),
        ("MH_MW", "f8", "dex", "Mass-weighted mean [M/H]"),
        ("ML_V", "f8", "solMass/solLum", "Stellar (living + remnants) mass-to-light ratio, V band"),
        ("CONTINUUM_COEFF", ("f8", (int(n_templates),)), "",
         "Template weights (data flux unit per normalised template)"),
    ]
    return tuple(cols)


CONTINUUM_COLUMNS = continuum_columns()
"""Columns for the 150 E-MILES templates and the DESI cameras b, r, z."""


@dataclass(eq=False)
class ContinuumResult:
    """Outcome of :func:`fit_continuum` (module docstring for the definitions).

    Kinematics in km/s; ``*_err`` formal 1σ errors (NaN when not measured);
    ``weights (P,)`` template weights; ``models`` one ``(npix,)`` best-fit continuum
    per camera (data units, NaN outside the templates); ``good`` the fitted-pixel
    mask of each camera; ``status``/``message`` as in :data:`model.STATUS`.
    ``theta`` the non-linear parameters in :class:`~cubefit.spectra.model.TargetModel`
    order, ``candidates`` the templates the search used (both for warm starts),
    ``options`` and ``mask_lines`` the settings of the fit (for :func:`continuum_basis`).
    """

    targetid: int | None
    z: float
    camera_names: list
    n_templates: int
    status: int = 0
    message: str = ""
    vel: float = math.nan
    vel_err: float = math.nan
    sigma: float = math.nan
    sigma_err: float = math.nan
    h3: float = math.nan
    h3_err: float = math.nan
    h4: float = math.nan
    h4_err: float = math.nan
    tau_v: float = math.nan
    tau_v_err: float = math.nan
    mpoly: np.ndarray | None = None
    weights: np.ndarray | None = None
    chi2: float = math.nan
    dof: int = 0
    npix: int = 0
    nfev: int = 0
    vdisp_flag: int = 0
    snr: dict = field(default_factory=dict)
    dn4000: float = math.nan
    dn4000_ivar: float = 0.0
    dn4000_model: float = math.nan
    logage_lw: float = math.nan
    logage_mw: float = math.nan
    mh_lw: float = math.nan
    mh_mw: float = math.nan
    ml_v: float = math.nan
    models: list = field(default_factory=list)
    good: list = field(default_factory=list)
    theta: np.ndarray | None = None
    candidates: np.ndarray | None = None
    options: ContinuumOptions | None = None
    mask_lines: tuple | None = None

    @property
    def ok(self) -> bool:
        return self.status == 0

    @property
    def rchi2(self) -> float:
        return self.chi2 / self.dof if self.dof > 0 else math.nan

    def columns(self, camera_names=None) -> tuple:
        """:func:`continuum_columns` matching :meth:`to_row`."""
        return continuum_columns(self.n_templates, camera_names or self.camera_names)

    def to_row(self, camera_names=None) -> dict:
        """One catalogue row ``{column: value}`` in :meth:`columns` order; SNR columns
        for ``camera_names`` (default: this target's cameras; absent ones NaN)."""
        def ivar(err):
            return 1.0 / err ** 2 if np.isfinite(err) and err > 0 else 0.0
        names = list(camera_names or self.camera_names)
        w = self.weights if self.weights is not None else np.zeros(self.n_templates)
        vals = {
            "TARGETID": -1 if self.targetid is None else int(self.targetid),
            "STATUS": int(self.status), "MESSAGE": str(self.message)[:160],
            "VSHIFT": self.vel, "VSHIFT_IVAR": ivar(self.vel_err),
            "VDISP": self.sigma, "VDISP_IVAR": ivar(self.sigma_err), "VDISP_FLAG": int(self.vdisp_flag),
            "H3": self.h3, "H3_IVAR": ivar(self.h3_err), "H4": self.h4, "H4_IVAR": ivar(self.h4_err),
            "TAU_V": self.tau_v, "TAU_V_IVAR": ivar(self.tau_v_err),
            "RCHI2_CONT": self.rchi2, "NPIX_CONT": int(self.npix), "NFEV_CONT": int(self.nfev),
        }
        for n in names:
            vals[f"SNR_{n.upper()}"] = float(self.snr.get(n, math.nan))
        vals.update({"DN4000": self.dn4000, "DN4000_IVAR": self.dn4000_ivar,
                     "DN4000_MODEL": self.dn4000_model, "LOGAGE_LW": self.logage_lw,
                     "LOGAGE_MW": self.logage_mw, "MH_LW": self.mh_lw, "MH_MW": self.mh_mw,
                     "ML_V": self.ml_v, "CONTINUUM_COEFF": np.asarray(w, dtype=np.float64)})
        return {name: vals[name] for name, *_ in continuum_columns(self.n_templates, names)}


def _snr(cam: Camera) -> float:
    ok = cam.ivar > 0
    return float(np.median(cam.flux[ok] * np.sqrt(cam.ivar[ok]))) if ok.any() else math.nan


def _mask_wavelengths(mask_lines):
    """Rest vacuum wavelengths (Å) of the lines to mask: a LineList, a sequence, or None
    (the packaged list)."""
    if mask_lines is None:
        return None
    if hasattr(mask_lines, "lines"):
        return tuple(float(line.restwave) for line in mask_lines)
    return tuple(float(x) for x in mask_lines)


def _target_model(spec, templates, opt, mask_lines, mdegree=None):
    return TargetModel(spec, templates, moments=opt.moments, degree=opt.degree,
                       mdegree=opt.mdegree if mdegree is None else mdegree, dust=opt.dust,
                       line_half_width=opt.line_half_width, vel_max=opt.vel_max,
                       sigma_max=opt.sigma_max, mask_lines=mask_lines)


LOOSE_TOL = 1e-4
"""``ftol``/``xtol`` of the first search on the screened templates (later ones use the
options' tolerances)."""

SUBSET_MAX_FRACTION = 1 / 3
"""The search uses a screened subset only when it holds at most this fraction of the
templates: a subset is several times cheaper per evaluation but its landscape has more
kinks (where templates outside it would enter), which can cost extra evaluations."""

SCREEN_MIN = 24
"""Templates besides the active ones kept in the search (at least; module docstring of
:func:`fit_continuum`)."""


def _screen(model: TargetModel, x, keep=()) -> np.ndarray:
    """Indices (into all templates) of the active templates at ``x`` (all templates in
    use), the templates of ``keep`` and the ``max(SCREEN_MIN, n_active)`` inactive ones
    nearest to entering the fit (smallest normalised NNLS multiplier)."""
    gaps = model.kkt_gaps(x)
    w = model.evaluate(x)["ws"]
    active = np.flatnonzero(w > 0)
    inactive = np.flatnonzero(w <= 0)
    near = inactive[np.argsort(gaps[inactive], kind="stable")[:max(SCREEN_MIN, active.size)]]
    return np.union1d(np.union1d(active, near), np.asarray(keep, dtype=np.intp))


def fit_continuum(spec: Spectrum, templates: PreparedTemplates,
                  options: ContinuumOptions | None = None, *, start: ContinuumResult | None = None,
                  mask_lines=None) -> ContinuumResult:
    """Fit the stellar continuum and kinematics of ``spec`` (module docstring).

    ``start``: a previous result for the same target and settings (a Monte-Carlo refit of
    a noisy copy): the search starts from its non-linear parameters (clipped into the
    bounds) and its templates.  ``mask_lines``: the emission lines masked, a
    :class:`~cubefit.spectra.linelist.LineList` or rest vacuum wavelengths (Å); default
    the packaged line list, the one :func:`cubefit.spectra.emlines.fit_emlines` fits.

    For speed the search runs on a subset of the templates when that leaves most of them
    out (:data:`SUBSET_MAX_FRACTION`): the active ones at the start point plus those
    nearest to entering the fit (:data:`SCREEN_MIN`, by their NNLS multipliers) — with
    the 150 E-MILES SSPs, of which a handful carry weight, each evaluation then convolves
    a fifth of them.  A cold start first searches loosely (:data:`LOOSE_TOL`), screens
    again near the optimum, then searches with the options' tolerances.  At the end the
    linear problem is solved with every template; if a template outside the subset
    enters, it is added and the search resumes from there.  The result is therefore the
    optimum of the full problem: where the full solution uses only templates of the
    subset, the two problems have the same residual and Jacobian.

    Never raises for a problem of this target: the result carries ``status`` ≠ 0
    and ``message``.  ``ValueError`` only for wrong arguments (options, types).
    """
    opt = options or ContinuumOptions()
    if not isinstance(spec, Spectrum) or not isinstance(templates, PreparedTemplates):
        raise ValueError("fit_continuum(spec: Spectrum, templates: PreparedTemplates, options)")
    lines = _mask_wavelengths(mask_lines)
    res = ContinuumResult(targetid=spec.targetid, z=float(spec.z),
                          camera_names=[c.name for c in spec.cameras], n_templates=templates.P,
                          snr={c.name: _snr(c) for c in spec.cameras}, options=opt, mask_lines=lines)
    warm = start is not None and start.status == 0 and start.theta is not None
    try:
        model = _target_model(spec, templates, opt, lines,
                              mdegree=start.mpoly.size if warm and start.mpoly is not None else None)
    except TargetProblem as err:
        res.status, res.message = err.status, str(err)
        return res
    vmax, smax = model.vel_max, model.sigma_max
    md = model.mdegree
    lo = [-vmax, opt.sigma_min] + [-opt.h_max] * (opt.moments - 2) + [-1.0] * md
    hi = [vmax, smax] + [opt.h_max] * (opt.moments - 2) + [1.0] * md
    x0 = [opt.vel_start, min(opt.sigma_start, 0.5 * (opt.sigma_min + smax))] + \
        [0.0] * (opt.moments - 2 + md)
    if opt.dust:
        lo, hi, x0 = lo + [0.0], hi + [opt.tau_max], x0 + [0.1]
    lo, hi = np.array(lo), np.array(hi)
    if warm and start.theta.size == lo.size:
        x0 = start.theta
    x = np.clip(np.array(x0, dtype=np.float64), lo + 1e-6 * (hi - lo), hi - 1e-6 * (hi - lo))
    try:
        subset = _screen(model, x, keep=start.candidates if warm and start.candidates is not None else ())
        if subset.size > SUBSET_MAX_FRACTION * templates.P:
            subset = None                     # too little to gain: search on every template
        # A cold start is far from the optimum: first a loose search on templates screened
        # there, then the search with the options' tolerances on templates screened near
        # the optimum.  A warm start goes to the second stage at once.
        tight, used = warm, 0
        while True:
            model.set_subset(subset)
            full = model.subset is None
            tight = tight or full
            tol = (opt.ftol, opt.xtol) if tight else (max(opt.ftol, LOOSE_TOL), max(opt.xtol, LOOSE_TOL))
            budget = opt.max_nfev - used
            sol = least_squares(model.residual, x, jac=model.jacobian, bounds=(lo, hi),
                                method="trf", x_scale="jac", ftol=tol[0], xtol=tol[1], gtol=1e-10,
                                max_nfev=max(budget, 1))
            x, used = sol.x, used + sol.nfev
            if full:
                break
            model.set_subset(None)
            inside = np.all(np.isin(np.flatnonzero(model.evaluate(x)["w"] > 0), subset))
            converged = sol.status > 0
            if (inside and tight and converged) or used >= opt.max_nfev:
                break
            # Screen again here: afresh after the loose stage, else adding to the subset.
            subset = _screen(model, x, keep=subset if tight else ())
            tight = tight or converged
        st = model.evaluate(x)
        J = model.jacobian(x)
        cov = np.linalg.pinv(J.T @ J)
    except (np.linalg.LinAlgError, ValueError, FloatingPointError) as err:
        res.status, res.message = STATUS["fit_failed"], f"continuum fit failed: {err}"
        return res
    err = np.sqrt(np.clip(np.diag(cov), 0.0, None))
    err[~np.isfinite(err)] = np.nan
    res.theta = np.array(x, dtype=np.float64)
    res.candidates = np.arange(templates.P) if subset is None else subset
    _fill(res, model, opt, x, err, st, model.n_eval, spec, templates)
    return res


def continuum_basis(spec: Spectrum, templates: PreparedTemplates, result: ContinuumResult, *,
                    additive: bool = False) -> list[np.ndarray]:
    """The continuum basis of a fitted target at its best-fit non-linear parameters.

    Returns per camera of ``spec`` an ``(npix, P)`` array: column ``p`` is template ``p``
    on every pixel of the camera exactly as the fit models it — shifted and broadened by
    the fitted LOSVD, binned, through the camera's resolution, times the fitted
    multiplicative polynomial and dust attenuation — so that ``basis @ result.weights``
    is the best-fit continuum (plus the additive polynomial, if one was fitted).  NaN
    where the templates do not reach.  ``additive=True`` appends, when the fit had an
    additive polynomial of degree ``d``, its ``d + 1`` Legendre columns and their
    negatives (``2(d + 1)`` columns: a non-negative solver can then give them either sign).

    ``result``: a successful :func:`fit_continuum` result of ``spec`` with ``templates``.
    For the joint stars + gas refit (:func:`cubefit.spectra.emline_joint.joint_refit`)
    and the joint photometric fit.
    """
    if result.status != 0 or result.theta is None:
        raise ValueError(f"continuum_basis needs a successful fit_continuum result (status {result.status}: "
                         f"{result.message or 'no parameters'})")
    if result.n_templates != templates.P:
        raise ValueError(f"continuum_basis: the result has {result.n_templates} templates, the templates "
                         f"given {templates.P}; pass the templates it was fitted with")
    opt = result.options or ContinuumOptions()
    model = _target_model(spec, templates, opt, result.mask_lines,
                          mdegree=0 if result.mpoly is None else result.mpoly.size)
    basis = model.basis(result.theta)
    if additive:
        basis = [np.hstack([b, a, -a]) for b, a in zip(basis, model.additive_basis())]
    return basis


def _fill(res, model, opt, x, err, st, nfev, spec, pt):
    """Copy the optimum and the derived quantities into ``res``."""
    k = opt.moments
    res.vel, res.sigma = float(x[0]), float(x[1])
    res.vel_err, res.sigma_err = float(err[0]), float(err[1])
    if k == 4:
        res.h3, res.h4, res.h3_err, res.h4_err = float(x[2]), float(x[3]), float(err[2]), float(err[3])
    res.mpoly = np.asarray(x[k:k + model.mdegree], dtype=np.float64)
    if opt.dust:
        res.tau_v, res.tau_v_err = float(x[-1]), float(err[-1])
    w = st["w"]
    res.weights = w.copy()
    res.chi2 = float(st["resid"] @ st["resid"])
    res.npix = model.n_good
    res.dof = model.n_good - model.n_params - int(np.count_nonzero(w > 0)) - (opt.degree + 1)
    res.nfev = int(nfev)
    flag = 0
    if any(c.finer for c in model.cameras):
        flag |= VDISP_FLAGS["data_finer_than_templates"]
    if st["clipped"] or res.sigma <= opt.sigma_min * 1.001:
        flag |= VDISP_FLAGS["template_limited"]
    if res.sigma >= model.sigma_max * 0.999:
        flag |= VDISP_FLAGS["at_upper_bound"]
    res.vdisp_flag = flag
    res.models = model.models(x)
    res.good = [c.good.copy() for c in model.cameras]
    # Populations: light of a template = its model flux over the fitted pixels.
    light_unit = model.light_per_weight()
    pops = populations(w[None, :], light_unit[None, :], pt.pop_axes, pt.axis_units,
                       mass_per_weight=pt.mass_per_weight)
    for attr, which, kind in (("logage_lw", "age", "light"), ("logage_mw", "age", "mass"),
                              ("mh_lw", "metal", "light"), ("mh_mw", "metal", "mass")):
        fn = pops.mean_log_age if which == "age" else pops.mean_metal
        val = fn(kind, total=True) if pops.weights(kind) is not None else None
        setattr(res, attr, math.nan if val is None else float(val))
    if pt.mass_per_weight is not None and pt.lv_per_weight is not None and (w @ pt.lv_per_weight) > 0:
        res.ml_v = float((w @ pt.mass_per_weight) / (w @ pt.lv_per_weight))
    # Dn4000: the camera giving the most precise measurement on the data.
    best = (math.nan, 0.0, math.nan)
    for cam, mod, c in zip(spec.cameras, res.models, model.cameras):
        rest = np.exp(c.ln_rest)
        known = np.isfinite(mod)
        d, iv = dn4000(rest, cam.flux, np.where(known, cam.ivar, 0.0))
        if np.isfinite(d) and iv >= best[1]:
            best = (d, iv, dn4000(rest, np.where(known, mod, 0.0), known.astype(float))[0])
    res.dn4000, res.dn4000_ivar, res.dn4000_model = best


def fit_spectrum(wave, flux, ivar, z, *, resolution=None, R=None, air: bool = False,
                 templates: PreparedTemplates | None = None, targetid=None,
                 **options) -> ContinuumResult:
    """Fit one spectrum given as arrays (one camera).

    ``wave (npix,)`` Å (vacuum unless ``air``), ``flux``, ``ivar`` (same shape),
    redshift ``z``.  ``resolution``: a :class:`Resolution`, a ``(ndiag, npix)``
    resolution-matrix band, or the FWHM in Å (scalar or per pixel); or ``R`` the
    resolving power.  None of them: the data are taken to share the templates'
    resolution.  ``templates``: default E-MILES prepared for this spectrum's pixel size
    (cached per process).  ``options``: :class:`ContinuumOptions` fields.
    """
    wave = np.asarray(wave, dtype=np.float64)
    if R is not None:
        if resolution is not None:
            raise ValueError("give either resolution= or R=, not both")
        resolution = Resolution.from_R(R, wave)
    elif resolution is not None and not isinstance(resolution, Resolution):
        r = np.asarray(resolution, dtype=np.float64)
        resolution = Resolution.from_desi(r) if r.ndim == 2 else Resolution.from_fwhm(r, wave)
    spec = Spectrum([Camera("spec", wave, flux, ivar, resolution)], z=float(z), targetid=targetid,
                    air=air)
    if templates is None:
        dln = np.diff(np.log(wave))
        vs = C_KMS * (float(np.median(dln)) if np.allclose(dln, dln[0], rtol=1e-4) else float(dln.min()))
        templates = prepare_templates_cached(velscale=vs / 2)
    return fit_continuum(spec, templates, ContinuumOptions(**options))
