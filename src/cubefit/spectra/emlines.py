"""Emission-line measurements of one target: :func:`fit_emlines`, :class:`EmlineResult`.

The lines of a line list (:mod:`cubefit.spectra.linelist`) are fitted to the spectrum
minus its continuum model, on each camera's own pixels, with the model of
:mod:`cubefit.spectra.emline_model` (pixel-integrated Gaussians in ln λ through the
camera's resolution; one velocity shift and one dispersion per kinematic group; fixed
or bounded doublet ratios) and the solver of :mod:`cubefit.spectra.emline_fit`.

Broad Balmer component
----------------------
When ``broad=True`` and the list has a group with ``broad: true`` whose lines fall on
unmasked pixels, the fit is done twice: narrow lines only, then narrow + broad
(warm-started from the narrow fit).  The broad component is kept only if all of

1. ``Δχ² = χ²_narrow − χ²_broad ≥ broad_dchi2`` (default 25), χ² over every unmasked
   pixel of the spectrum;
2. the highest S/N (flux over its formal error) among the broad lines is
   ``≥ broad_snr`` (default 5);
3. the broad dispersion is ``≥ broad_min_sigma`` (default 550 km/s, i.e. FWHM
   ≳ 1300 km/s, above the group's lower bound of 500 km/s so that a broad component
   pinned at its bound — a narrow line with wings — is refused);
4. neither the broad velocity shift nor the broad dispersion sits at (within 1 % of)
   its upper bound: a component pushed to ``|v| = vshift_max`` or ``σ = sigma_max`` is
   soaking up a continuum mismatch, not fitting a line (seen on real DESI galaxies).

``DELTA_LINECHI2`` and ``DELTA_LINENDOF`` record the test.

Per-line quantities (``<LINE>_...``, FastSpecFit's names)
---------------------------------------------------------
``FLUX`` integrated flux; ``AMP`` peak flux density of the observed (instrument-broadened)
Gaussian, ``F/(√(2π) σ_obs)`` with ``σ_obs`` in Å; ``VSHIFT``/``SIGMA`` the group's
kinematics (σ intrinsic, instrument removed); ``CONT`` mean continuum model within
±3 σ_obs of the line centre; ``EW = FLUX/(CONT·(1+z))`` rest-frame equivalent width
(positive in emission, 0 where ``CONT ≤ 0``); ``BOXFLUX`` the sum of ``(flux − continuum)·Δλ``
over the unmasked pixels within ±3 σ_obs; ``CHI2`` χ²/pixel of the line model there and
``NPIX`` their number.  ``_IVAR`` columns are formal inverse variances (Jacobian at the
optimum), replaced by Monte-Carlo ones when :mod:`cubefit.spectra.montecarlo` runs.
A line not fitted (out of range, masked, fewer than ``min_pixels`` pixels) has zeros.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .. import C_KMS
from .data import FWHM_PER_SIGMA, Spectrum
from .emline_fit import chi2_full, covariance, solve
from .emline_model import LineModel
from .linelist import LineList, default_linelist

__all__ = ["fit_emlines", "EmlineResult", "EMLINE_COLUMNS", "emline_columns", "EMLINE_STATUS",
           "line_columns_for"]

EMLINE_STATUS = {"ok": 0, "no_lines": 1, "fit_failed": 2}
"""``EMLINE_STATUS`` codes: 0 fitted; 1 no line of the list on unmasked pixels (zeros
written); 2 the solver failed (its message in ``EMLINE_MESSAGE``; zeros written)."""

_FLUX = "1e-17 erg / (s cm2)"
_FLUX_IVAR = "1e+34 s2 cm4 / erg2"
_FDENS = "1e-17 erg / (s cm2 Angstrom)"
_FDENS_IVAR = "1e+34 s2 cm4 Angstrom2 / erg2"

_PER_LINE = (
    ("FLUX", "f4", _FLUX, "integrated flux of {label}"),
    ("FLUX_IVAR", "f4", _FLUX_IVAR, "inverse variance of the {label} flux"),
    ("EW", "f4", "Angstrom", "rest-frame equivalent width of {label} (positive in emission)"),
    ("EW_IVAR", "f4", "Angstrom-2", "inverse variance of the {label} equivalent width"),
    ("VSHIFT", "f4", "km / s", "velocity shift of {label} relative to the redshift (its group's)"),
    ("SIGMA", "f4", "km / s", "intrinsic velocity dispersion of {label} (its group's)"),
    ("CONT", "f4", _FDENS, "continuum flux density at {label}"),
    ("AMP", "f4", _FDENS, "peak flux density of {label} after the instrumental broadening"),
    ("AMP_IVAR", "f4", _FDENS_IVAR, "inverse variance of the {label} peak flux density"),
    ("BOXFLUX", "f4", _FLUX, "box-car flux of the continuum-subtracted data within ±3σ of {label}"),
    ("BOXFLUX_IVAR", "f4", _FLUX_IVAR, "inverse variance of the {label} box-car flux"),
    ("CHI2", "f4", "", "chi2 per pixel of the line model within ±3σ of {label}"),
    ("NPIX", "i4", "", "unmasked pixels within ±3σ of {label} (0: not fitted)"),
)
_PER_GROUP = (
    ("VSHIFT", "f4", "km / s", "velocity shift of the {name} lines relative to the redshift"),
    ("VSHIFT_IVAR", "f4", "s2 / km2", "inverse variance of the {name} velocity shift"),
    ("SIGMA", "f4", "km / s", "intrinsic velocity dispersion of the {name} lines"),
    ("SIGMA_IVAR", "f4", "s2 / km2", "inverse variance of the {name} velocity dispersion"),
)
_GLOBAL = (
    ("EMLINE_STATUS", "i2", "", "emission-line fit status (0 ok, 1 no line on unmasked pixels, 2 solver failed)"),
    ("EMLINE_MESSAGE", "U80", "", "why the emission-line fit did not succeed (empty when it did)"),
    ("EMLINE_NLINES", "i2", "", "number of lines fitted"),
    ("RCHI2_LINE", "f4", "", "reduced chi2 of the line model over the pixels near the lines"),
    ("DELTA_LINECHI2", "f4", "", "chi2 without minus with the broad Balmer component (0: not tried)"),
    ("DELTA_LINENDOF", "i4", "", "number of parameters the broad Balmer component adds"),
    ("BROAD_BALMER", "i2", "", "1 if the broad Balmer component was kept, else 0"),
)


def emline_columns(linelist: LineList | None = None) -> tuple[tuple[str, str, str, str], ...]:
    """``(name, numpy dtype, unit, description)`` of every column :meth:`EmlineResult.to_row`
    writes for ``linelist`` (default: the packaged list), in catalogue order."""
    ll = linelist or default_linelist()
    cols = list(_GLOBAL)
    for gname in ll.groups:
        for suffix, dt, unit, desc in _PER_GROUP:
            cols.append((f"{gname.upper()}_{suffix}", dt, unit, desc.format(name=gname.replace("_", " "))))
    for line in ll:
        for suffix, dt, unit, desc in _PER_LINE:
            cols.append((f"{line.column}_{suffix}", dt, unit, desc.format(label=line.label or line.name)))
    return tuple(cols)


EMLINE_COLUMNS = emline_columns()
"""Columns of :meth:`EmlineResult.to_row` for the packaged line list."""


def line_columns_for(name: str) -> tuple[str, ...]:
    """The catalogue column names of line ``name`` (for readers of the catalogue)."""
    return tuple(f"{name.upper()}_{suffix}" for suffix, *_ in _PER_LINE)


@dataclass
class EmlineResult:
    """Emission-line fit of one target.

    ``lines`` maps each line name of the list to its quantities (keys as the column
    suffixes: ``FLUX``, ``FLUX_IVAR``, …); ``groups`` maps each group name to
    ``VSHIFT``, ``VSHIFT_IVAR``, ``SIGMA``, ``SIGMA_IVAR``; ``models`` the line model on
    every pixel of every camera; ``line_models`` per camera ``(nlines_fitted, npix)``;
    ``theta``/``param_names``/``cov`` the fitted parameters, their names and formal
    covariance; ``broad`` whether the broad Balmer component was kept; ``model`` the
    :class:`LineModel` that was fitted (reused by Monte-Carlo refits; not pickled).
    """

    status: int
    message: str
    linelist: LineList
    z: float
    lines: dict
    groups: dict
    rchi2: float = 0.0
    delta_chi2: float = 0.0
    delta_ndof: int = 0
    broad: bool = False
    models: list = field(default_factory=list)
    line_models: list = field(default_factory=list)
    fitted: tuple = ()
    theta: np.ndarray = field(default_factory=lambda: np.zeros(0))
    param_names: tuple = ()
    cov: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    nfev: int = 0
    model: LineModel | None = field(default=None, repr=False)

    def to_row(self) -> dict:
        """One catalogue row: every key of :func:`emline_columns` for this line list."""
        row = {"EMLINE_STATUS": int(self.status), "EMLINE_MESSAGE": str(self.message)[:80],
               "EMLINE_NLINES": len(self.fitted), "RCHI2_LINE": float(self.rchi2),
               "DELTA_LINECHI2": float(self.delta_chi2), "DELTA_LINENDOF": int(self.delta_ndof),
               "BROAD_BALMER": int(self.broad)}
        for gname in self.linelist.groups:
            g = self.groups.get(gname, {})
            for suffix, *_ in _PER_GROUP:
                row[f"{gname.upper()}_{suffix}"] = float(g.get(suffix, 0.0))
        for line in self.linelist:
            vals = self.lines.get(line.name, {})
            for suffix, dt, *_ in _PER_LINE:
                v = vals.get(suffix, 0)
                row[f"{line.column}_{suffix}"] = int(v) if dt.startswith("i") else float(v)
        return row

    def __getstate__(self):
        state = dict(self.__dict__)
        state["model"] = None
        return state

    def params(self) -> dict:
        """``{parameter name: value}`` (for warm starts)."""
        return dict(zip(self.param_names, np.asarray(self.theta, dtype=float)))


def _empty(status: str, message: str, ll: LineList, spec: Spectrum) -> EmlineResult:
    return EmlineResult(EMLINE_STATUS[status], message, ll, float(spec.z), {}, {},
                        models=[np.zeros(c.npix) for c in spec.cameras],
                        line_models=[np.zeros((0, c.npix)) for c in spec.cameras])


def _start(model: LineModel, params: dict | None) -> np.ndarray:
    x = model.x0.copy()
    if params:
        for i, name in enumerate(model.param_names):
            if name in params and np.isfinite(params[name]):
                x[i] = params[name]
    return x


def _instrumental_sigma(spec: Spectrum, cam_index: int, lam: float, cache: dict) -> float:
    """Instrumental Gaussian σ (Å) of camera ``cam_index`` at observed ``lam`` (Å);
    ``cache`` keeps each camera's FWHM array."""
    cam = spec.cameras[cam_index]
    if cam.resolution is None:
        return 0.0
    if cam_index not in cache:
        cache[cam_index] = cam.resolution.fwhm_at(cam.wave)
    return float(np.interp(lam, cam.wave, cache[cam_index])) / FWHM_PER_SIGMA


def _line_quantities(spec: Spectrum, model: LineModel, theta, cov, continuum, models) -> dict:
    """Per fitted line: the quantities of the module docstring."""
    z = model.z
    F = model.fluxes(theta)
    coef = model.coefficients(theta)
    out = {}
    fwhm_cache: dict = {}
    for k, line in enumerate(model.lines):
        gname = line.group
        iv, isg = model.v_of[gname], model.s_of[gname]
        v, sig = theta[iv], theta[isg]
        lam = line.restwave * (1.0 + z) * math.exp(v / C_KMS)
        # gradient of F_k with respect to θ (amplitude, and ratio when fitted)
        gF = np.zeros(model.nparams)
        gF[model.amp_of[k]] = coef[k]
        if model.ratio_of[k] >= 0:
            gF[model.ratio_of[k]] = theta[model.amp_of[k]]
        varF = float(gF @ cov @ gF)
        cams = [ci for ci, c in enumerate(model.cams) if c.edges[0] < lam < c.edges[-1]]
        if not cams:
            continue
        s_inst = _instrumental_sigma(spec, cams[0], lam, fwhm_cache)
        s_int = lam * sig / C_KMS
        s_obs = math.hypot(s_int, s_inst)
        amp = F[k] / (math.sqrt(2 * math.pi) * s_obs)
        gA = gF / (math.sqrt(2 * math.pi) * s_obs)
        gA[isg] -= amp * s_int * (lam / C_KMS) / s_obs ** 2   # ∂AMP/∂σ through σ_obs
        varA = float(gA @ cov @ gA)
        cont_vals, box, box_var, chi2, npix = [], 0.0, 0.0, 0.0, 0
        for cj in cams:
            c = model.cams[cj]
            near = np.abs(c.wave - lam) <= 3.0 * s_obs
            if not np.any(near):
                near[np.argmin(np.abs(c.wave - lam))] = True
            good = near & (c.ivar > 0)
            cont_vals.append(np.asarray(continuum[cj])[near])
            dl = np.diff(c.edges)[good]
            box += float(np.sum(c.y[good] * dl))
            box_var += float(np.sum(dl ** 2 / c.ivar[good]))
            chi2 += float(np.sum(c.ivar[good] * (c.y[good] - models[cj][good]) ** 2))
            npix += int(np.count_nonzero(good))
        cv = np.concatenate(cont_vals)
        cv = cv[np.isfinite(cv)]                    # a continuum may be NaN outside its templates
        cont = float(np.mean(cv)) if cv.size else 0.0
        scale = cont * (1.0 + z)
        ew = F[k] / scale if cont > 0 else 0.0
        out[line.name] = {
            "FLUX": F[k], "FLUX_IVAR": 1.0 / varF if varF > 0 else 0.0,
            "EW": ew, "EW_IVAR": scale ** 2 / varF if (varF > 0 and cont > 0) else 0.0,
            "VSHIFT": v, "SIGMA": sig, "CONT": cont,
            "AMP": amp, "AMP_IVAR": 1.0 / varA if varA > 0 else 0.0,
            "BOXFLUX": box, "BOXFLUX_IVAR": 1.0 / box_var if box_var > 0 else 0.0,
            "CHI2": chi2 / npix if npix else 0.0, "NPIX": npix,
        }
    return out


def _group_quantities(model: LineModel, theta, cov) -> dict:
    out = {}
    for gname in model.groups:
        iv, isg = model.v_of[gname], model.s_of[gname]
        out[gname] = {"VSHIFT": theta[iv], "VSHIFT_IVAR": 1.0 / cov[iv, iv] if cov[iv, iv] > 0 else 0.0,
                      "SIGMA": theta[isg], "SIGMA_IVAR": 1.0 / cov[isg, isg] if cov[isg, isg] > 0 else 0.0}
    return out


def build_result(spec: Spectrum, model: LineModel, theta, cov, continuum, linelist: LineList, *, status: int = 0,
                 message: str = "", delta_chi2: float = 0.0, delta_ndof: int = 0, broad: bool = False,
                 nfev: int = 0) -> EmlineResult:
    """An :class:`EmlineResult` from a fitted ``model`` at ``theta`` with covariance ``cov``;
    ``linelist`` the full list the catalogue columns follow."""
    models, per_line = model.camera_models(theta, per_line=True)
    r = model.residual(theta)
    ndof = max(model.nrows - model.nparams, 1)
    return EmlineResult(
        status, message, linelist, model.z, _line_quantities(spec, model, theta, cov, continuum, models),
        _group_quantities(model, theta, cov), rchi2=float(r @ r) / ndof, delta_chi2=delta_chi2,
        delta_ndof=delta_ndof, broad=broad, models=models, line_models=per_line,
        fitted=tuple(line.name for line in model.lines), theta=np.asarray(theta, dtype=float),
        param_names=model.param_names, cov=cov, nfev=nfev, model=model)


def _fit(spec, continuum, ll, allow_absorption, min_pixels, params, linear_start, reuse=None):
    model = None
    if reuse is not None:
        try:
            model = reuse.with_data(spec, continuum)
        except ValueError:          # other pixels or ivar: build the model afresh
            model = None
    if model is None:
        model = LineModel(spec, continuum, ll, allow_absorption=allow_absorption, min_pixels=min_pixels)
    if not model.lines or model.nrows == 0:
        return model, None, None
    theta, info = solve(model, _start(model, params), allow_absorption=allow_absorption,
                        linear_start=linear_start)
    return model, theta, info


def _broad_snr(model: LineModel, theta, cov) -> float:
    best = 0.0
    F = model.fluxes(theta)
    for k, line in enumerate(model.lines):
        if model.linelist.groups[line.group].broad:
            j = model.amp_of[k]
            var = cov[j, j] * model.coefficients(theta)[k] ** 2
            if var > 0:
                best = max(best, F[k] / math.sqrt(var))
    return best


def fit_emlines(spec: Spectrum, continuum, *, linelist: LineList | None = None, broad: bool = True,
                allow_absorption: bool = False, min_pixels: int = 3, broad_dchi2: float = 25.0,
                broad_snr: float = 5.0, broad_min_sigma: float = 550.0, scale_errors: bool = False,
                start: EmlineResult | None = None, errors: bool = True) -> EmlineResult:
    """Fit the emission lines of ``spec`` on ``flux − continuum``.

    Parameters
    ----------
    spec : the target; pixels with ``ivar = 0`` or non-finite flux are ignored.
    continuum : per camera, the continuum model ``(npix,)`` on the camera's pixels
        (same flux unit as the spectrum).
    linelist : lines to fit (default: the packaged list, :func:`default_linelist`).
    broad : try the broad Balmer component and keep it by the test of the module docstring.
    allow_absorption : let line amplitudes be negative.
    min_pixels : unmasked pixels a line needs near its centre to be fitted.
    broad_dchi2, broad_snr, broad_min_sigma : thresholds of the broad-line test.
    scale_errors : multiply the formal covariance by χ²/dof of the line fit.
    start : a previous result of the same target (Monte Carlo): its broad-line choice
        is kept, its parameters are the starting point and, when the cameras' pixels
        and ivar are the same, its compiled model is reused.
    errors : compute the formal covariance (``False`` in Monte-Carlo refits, whose
        ``_IVAR`` values are not used, leaves them 0).

    Never raises for problems of the data: a result with ``status ≠ 0`` says what went
    wrong; ``ValueError`` only for inconsistent arguments (continuum shapes).
    """
    ll = linelist or default_linelist()
    has_broad = any(ll.groups[line.group].broad for line in ll)
    narrow_ll = ll.without_broad()
    try_broad = broad and has_broad
    if start is not None:
        try_broad = bool(start.broad)
    warm = start.params() if start is not None else None

    model_n, theta_n, info_n = _fit(spec, continuum, narrow_ll if not (start and start.broad) else ll,
                                    allow_absorption, min_pixels, warm, linear_start=warm is None,
                                    reuse=start.model if start is not None else None)
    if theta_n is None:
        return _empty("no_lines", "no emission line of the list on unmasked pixels", ll, spec)
    if start is not None:
        model, theta, info, dchi2, dndof, chosen = model_n, theta_n, info_n, start.delta_chi2, start.delta_ndof, start.broad
    else:
        model, theta, info, dchi2, dndof, chosen = model_n, theta_n, info_n, 0.0, 0, False
        if try_broad:
            model_b, theta_b, info_b = _fit(spec, continuum, ll, allow_absorption, min_pixels,
                                            dict(zip(model_n.param_names, theta_n)), linear_start=True)
            if theta_b is not None and model_b.nparams > model_n.nparams and info_b.success:
                dchi2 = chi2_full(model_n, theta_n) - chi2_full(model_b, theta_b)
                dndof = model_b.nparams - model_n.nparams
                cov_b = covariance(model_b, theta_b)
                bgroups = [g for g in model_b.groups if ll.groups[g].broad]
                sig_b = max((theta_b[model_b.s_of[g]] for g in bgroups), default=0.0)
                inside = all(abs(theta_b[model_b.v_of[g]]) < 0.99 * ll.groups[g].vshift_max
                             and theta_b[model_b.s_of[g]] < 0.99 * ll.groups[g].sigma_max for g in bgroups)
                if (dchi2 >= broad_dchi2 and _broad_snr(model_b, theta_b, cov_b) >= broad_snr
                        and sig_b >= broad_min_sigma and inside):
                    model, theta, info, chosen = model_b, theta_b, info_b, True
    if not info.success and not np.all(np.isfinite(theta)):
        return _empty("fit_failed", f"least_squares: {info.message}", ll, spec)
    cov = covariance(model, theta) if errors else np.zeros((model.nparams, model.nparams))
    if scale_errors:
        r = model.residual(theta)
        cov = cov * float(r @ r) / max(model.nrows - model.nparams, 1)
    status, message = (0, "") if info.success else (EMLINE_STATUS["fit_failed"], f"least_squares: {info.message}")
    return build_result(spec, model, theta, cov, continuum, ll, status=status, message=message,
                        delta_chi2=dchi2, delta_ndof=dndof, broad=chosen, nfev=info.nfev)
