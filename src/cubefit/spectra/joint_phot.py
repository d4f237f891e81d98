"""The joint fit of a spectrum and its broadband photometry (``fastspec --phot``).

:func:`fit_with_photometry` refits the stellar continuum of one target on one
stacked system: the spectrum's fitted pixels (scaled by the aperture correction)
above the photometric bands, every row divided by its σ, at the kinematics of the
spectrum-only fit (:func:`cubefit.spectra.continuum.fit_continuum`).

Model
-----
Template ``p`` contributes, with weight ``w_p ≥ 0`` (the spectral fit's unit: data
flux per normalised template, for the *total* light of the galaxy)::

    spectrum pixel i:  M(x_i) e^{-τ_V k_i} (R B (T_p ⊛ L))_i / APERCORR
    band b:            A_bp(τ_V) = Σ_λ W_b(λ(1+z)) L_p(λ) e^{-τ_V k(λ)} / (4π d_L² (1+z))

with ``T_p ⊛ L`` the template broadened by the LOSVD and binned/resolution-matched
exactly as in the continuum fit, on the pixels it fitted (the rows come from
:func:`cubefit.spectra.continuum.continuum_basis` at the fitted v, σ [, h3, h4]), ``k`` the
Calzetti (2000) curve of both fits, ``L_p`` the same template in physical units
(:class:`cubefit.spectra.sed.SEDTemplates`, matched by name) and ``W_b`` the band's
synthetic-photometry weights.  ``M(x) = 1 + Σ_k m_k P_k(x)`` is the multiplicative
Legendre polynomial of the spectrum only (flux calibration and the colour difference
between fibre and galaxy, which the photometry does not share); ``mdegree=0`` drops it
(FastSpecFit's model).  The weights are solved exactly (NNLS on the Gram matrix of the
stacked rows) for given ``θ = (m_1..m_D, τ_V)``, and θ by a bounded trust-region
least-squares search (variable projection, Kaufman's Jacobian), started from
``τ_V`` of a photometry-only fit of the same templates and the polynomial of the
spectrum-only fit divided by that attenuation.

Aperture correction: ``APERCORR_<b> = FLUX_<b> / FLUX_SYNTH_<b>`` for g, r, z (the total
photometry over the flux synthesised from the Milky-Way-corrected spectrum,
:func:`cubefit.spectra.photometry.spectrum_synth_flux`), ``APERCORR`` their median
(:func:`cubefit.spectra.derived.aperture_correction`): the spectrum and its σ are
multiplied by it in the joint fit only.

Bands and templates: a band is fitted when its whole rest-frame response lies inside
the templates (E-MILES: 1690 Å – 5 µm; W2 needs z ≳ 0.11, W3/W4 are never modelled);
others are dropped (``PHOT_FLAG`` bit 1, listed in ``PHOT_MESSAGE``).  E-MILES' 26
young metal-poor SSPs have no flux beyond 8950 Å: when a fitted band reaches there
(W1/W2, or z at z ≲ 0.05) they are left out of the joint fit (bit 2) unless they carry
more than ``young_light_max`` of the spectrum-only fit's light, in which case those
bands are dropped instead (bit 4).

Errors: ``nmonte`` refits (warm-started, seeded) of the stacked data perturbed by its
Gaussian errors, each with the aperture correction recomputed from its perturbed g, r, z
photometry, give ``LOGMSTAR_IVAR``, ``TAU_V_JOINT_IVAR`` and the ``*_SYNTH_IVAR``
of absolute magnitudes.  χ² are reported apart: ``RCHI2_CONT_JOINT`` (spectral pixels,
per degree of freedom: pixels − non-linear parameters − positive weights) and
``RCHI2_PHOT`` (per fitted band).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import numpy as np
from numpy.polynomial import legendre
from scipy.optimize import least_squares

from ..solvers.exact import nnls_on_gram_warm
from .continuum import ContinuumOptions, ContinuumResult, continuum_basis
from .data import Spectrum, air_to_vacuum
from .derived import (PHOT_COLUMNS, aperture_correction, derived_row, get_cosmology, luminosity_distance_cm,
                      mc_ivar)
from .filters import BANDS, OPTICAL_BANDS, band_support, filter_names
from .model import TargetProblem
from .photometry import Photometry, photometry_from_fibermap, spectrum_synth_flux
from .sed import (DEFAULT_TAU_MAX, L_SUN_ERG_S, PhotDesign, SEDFit, SEDTemplates, calzetti_k, fit_photometry,
                  sed_templates)
from .templates_prep import PreparedTemplates

__all__ = ["PhotOptions", "PhotResult", "fit_with_photometry", "JOINT_STATUS", "PHOT_FLAGS"]

JOINT_STATUS = {"ok": 0, "few_bands": 1, "no_model": 2, "no_photometry": 3, "not_possible": 4}
"""``PHOT_STATUS`` codes of the joint fit."""
PHOT_FLAGS = {"band_outside_templates": 1, "templates_left_out": 2, "red_bands_dropped": 4}
"""Bits of ``PHOT_FLAG`` (module docstring)."""
_COVER = 0.01                 # a band "reaches" λ where its response exceeds 1 % of its peak


@dataclass(frozen=True)
class PhotOptions:
    """Settings of :func:`fit_with_photometry`.

    ``cosmology``: see :func:`cubefit.spectra.derived.get_cosmology` (default Planck18).
    ``floors``: ``{band: mag}`` error floors overriding
    :data:`cubefit.spectra.photometry.DEFAULT_FLOORS`.  ``bands``: FIBERMAP bands read.
    ``nmonte``, ``seed``: Monte-Carlo refits and their seed (plus the TARGETID).
    ``tau_max``: upper bound of τ_V.  ``mdegree``: degree of the spectrum's
    multiplicative polynomial (None: the spectrum-only fit's; 0: none).
    ``young_light_max``: light fraction above which templates without red flux are kept
    and the red bands dropped.  ``sed``: photometric templates holding the spectral templates by name
    (default: the E-MILES SSPs, :func:`cubefit.spectra.sed.sed_templates`).
    ``flux_unit``: the spectrum's flux unit, erg s⁻¹ cm⁻² Å⁻¹.
    """

    cosmology: object = None
    floors: dict | None = None
    bands: tuple = BANDS
    nmonte: int = 0
    seed: int = 0
    tau_max: float = DEFAULT_TAU_MAX
    mdegree: int | None = None
    young_light_max: float = 0.1
    sed: SEDTemplates | None = None
    flux_unit: float = 1e-17

    def __post_init__(self):
        if self.nmonte < 0 or not self.tau_max > 0 or (self.mdegree is not None and self.mdegree < 0):
            raise ValueError(f"PhotOptions: nmonte={self.nmonte}, tau_max={self.tau_max}, mdegree={self.mdegree}: "
                             "expected nmonte ≥ 0, tau_max > 0 and mdegree ≥ 0 (or None)")
        if not 0.0 <= self.young_light_max <= 1.0:
            raise ValueError(f"PhotOptions: young_light_max={self.young_light_max} is a fraction in [0, 1]")


@dataclass(eq=False)
class PhotResult:
    """Outcome of :func:`fit_with_photometry` (module docstring for the definitions).

    ``status``/``message`` (:data:`JOINT_STATUS`); ``photometry`` the Milky-Way-corrected
    :class:`~cubefit.spectra.photometry.Photometry` (None without); ``fit`` the joint fit
    seen as a photometric fit (:class:`~cubefit.spectra.sed.SEDFit`: initial M_sun per
    template of ``sed``, τ_V, photometric χ², model fluxes, Monte-Carlo samples), ``sed``
    the photometric templates in the spectral templates' order; ``weights (P,)`` the
    spectral weights (total light); ``mpoly`` the spectrum's polynomial coefficients;
    ``apercorr``/``apercorr_bands``/``flux_synth`` (nanomaggies) the aperture correction;
    ``chi2_spec``, ``npix``, ``dof_spec``, ``chi2_phot``; ``flag`` (:data:`PHOT_FLAGS`);
    ``nfev`` model evaluations of the best fit.
    """

    targetid: int | None
    z: float
    status: int = 0
    message: str = ""
    photometry: Photometry | None = None
    fit: SEDFit | None = None
    sed: SEDTemplates | None = None
    weights: np.ndarray | None = None
    mpoly: np.ndarray | None = None
    tau_v: float = math.nan
    apercorr: float = math.nan
    apercorr_bands: dict = field(default_factory=dict)
    flux_synth: dict = field(default_factory=dict)
    chi2_spec: float = math.nan
    npix: int = 0
    dof_spec: int = 0
    chi2_phot: float = math.nan
    flag: int = 0
    nfev: int = 0

    @property
    def ok(self) -> bool:
        return self.status == 0

    def to_row(self) -> dict:
        """One catalogue row ``{column: value}`` with exactly the columns of
        :data:`cubefit.spectra.derived.PHOT_COLUMNS`, in that order."""
        row = {}
        for name, dtype, *_ in PHOT_COLUMNS:
            row[name] = ("" if str(dtype).startswith("U") else 0 if str(dtype).startswith("i")
                         else 0.0 if name.endswith("_IVAR") else math.nan)
        ph = self.photometry
        if ph is not None and self.fit is not None and self.sed is not None:
            row.update({k: v for k, v in derived_row(self.fit, self.sed, ph).items() if k in row})
        elif ph is not None:
            row["PHOTSYS"] = ph.photsys
        row["PHOT_STATUS"] = int(self.status)
        if self.status != 0 or not row["PHOT_MESSAGE"]:
            row["PHOT_MESSAGE"] = str(self.message)[:160]
        row["PHOT_FLAG"] = int(self.flag)
        row["APERCORR"] = self.apercorr
        for b in OPTICAL_BANDS:
            row[f"APERCORR_{b}"] = self.apercorr_bands.get(b, math.nan)
            row[f"FLUX_SYNTH_{b}"] = self.flux_synth.get(b, math.nan)
        if self.status == 0:
            row["TAU_V_JOINT"] = self.tau_v
            mt = self.fit.monte_tau
            # Most refits at the τ_V = 0 bound: the scatter says nothing of the error.
            at_bound = mt.size and np.mean(mt < 1e-6) > 0.5
            row["TAU_V_JOINT_IVAR"] = 0.0 if at_bound else mc_ivar(mt)
            row["RCHI2_CONT_JOINT"] = self.chi2_spec / self.dof_spec if self.dof_spec > 0 else math.nan
            row["NPIX_JOINT"] = int(self.npix)
        return {k: row[k] for k, *_ in PHOT_COLUMNS}


# --------------------------------------------------------------------------- the problem
class _Joint:
    """The stacked system at fixed kinematics and its variable projection in θ."""

    def __init__(self, C, sw, x, kd, y, apercorr, design: PhotDesign, per_weight, flux, ivar, mdegree):
        self.C, self.sw, self.kd, self.y, self.a = C, sw, kd, y, apercorr       # C (P, n): fixed columns
        self.V = legendre.legvander(x, mdegree)[:, 1:].T if mdegree else np.zeros((0, x.size))
        self.design, self.per_weight, self.D = design, per_weight, mdegree
        self.s = np.sqrt(ivar)
        self.bp = flux * self.s
        self.rhs = np.concatenate([y, self.bp])
        self._key, self._rhs_seen, self._active = None, None, None

    def phot_rows(self, tau):                       # (nb, P) nanomaggies per unit weight / σ
        return self.design.matrix(tau) * self.per_weight * self.s[:, None]

    def evaluate(self, theta, rhs=None):
        rhs = self.rhs if rhs is None else rhs
        key = np.asarray(theta, dtype=np.float64).tobytes()
        if self._key == key and self._rhs_seen is rhs:
            return self._st
        th = np.asarray(theta, dtype=np.float64)
        m, tau = th[:self.D], th[self.D]
        att = np.exp(-tau * self.kd)
        poly = 1.0 + m @ self.V if self.D else np.ones_like(att)
        u = self.sw * poly * att / self.a
        As = self.C * u                              # (P, n)
        Ap = self.phot_rows(tau).T                   # (P, nb)
        n = self.y.size
        G = As @ As.T + Ap @ Ap.T
        c = As @ rhs[:n] + Ap @ rhs[n:]
        w = self._nnls(G, c)
        cw = w @ self.C
        fit = np.concatenate([u * cw, w @ Ap])
        self._key, self._rhs_seen = key, rhs
        self._st = dict(w=w, resid=rhs - fit, As=As, Ap=Ap, cw=cw, u=u, att=att, tau=tau)
        return self._st

    def _nnls(self, G, c) -> np.ndarray:
        """NNLS on the Gram matrix, first on the previous active set (kept when it is a KKT
        point: positive weights, every other multiplier ``(Gw − c)_j ≥ −tol``), which is
        what nearby evaluations of a least-squares search and Monte-Carlo refits share."""
        w, self._active = nnls_on_gram_warm(G, c, self._active)
        return w

    def residual(self, theta, rhs=None):
        return self.evaluate(theta, rhs)["resid"]

    def jacobian(self, theta, rhs=None):
        st = self.evaluate(theta, rhs)
        w = st["w"]
        cols = []
        base = self.sw * st["att"] * st["cw"] / self.a
        for k in range(self.D):
            cols.append(np.concatenate([self.V[k] * base, np.zeros(self.s.size)]))
        dphot = (self.design.matrix_dtau(st["tau"]) * self.per_weight * self.s[:, None]) @ w
        cols.append(np.concatenate([-self.kd * st["u"] * st["cw"], dphot]))
        Dm = np.column_stack(cols)
        act = np.flatnonzero(w > 0)
        if act.size:
            Aa = np.vstack([st["As"][act].T, st["Ap"][act].T])           # (n + nb, n_act)
            Qa = np.linalg.qr(Aa)[0]
            Dm -= Qa @ (Qa.T @ Dm)
        return -Dm

    def solve(self, x0, lo, hi, rhs=None):
        x0 = np.clip(x0, lo + 1e-9 * (hi - lo), hi - 1e-9 * (hi - lo))
        sol = least_squares(self.residual, x0, jac=self.jacobian, bounds=(lo, hi), method="trf",
                            x_scale="jac", ftol=1e-8, xtol=1e-8, gtol=1e-10, max_nfev=100,
                            args=() if rhs is None else (rhs,))
        return sol.x, sol.nfev


_SED_CACHE: dict = {}


def _matching_sed(sed: SEDTemplates, names) -> SEDTemplates | None:
    """``sed`` restricted to and ordered as ``names`` (cached), or None if one is missing."""
    key = (id(sed), tuple(names))
    if key not in _SED_CACHE:
        index = {n: i for i, n in enumerate(sed.names)}
        if any(n not in index for n in names):
            return None
        idx = [index[n] for n in names]
        _SED_CACHE.clear()                            # one library per process in practice
        _SED_CACHE[key] = (sed, sed if idx == list(range(sed.P)) else sed.select(idx))
    return _SED_CACHE[key][1]


def _fail(res: PhotResult, status: str, message: str) -> PhotResult:
    res.status, res.message = JOINT_STATUS[status], message
    return res


def fit_with_photometry(spec: Spectrum, templates: PreparedTemplates, continuum_result: ContinuumResult,
                        fibermap_row, options: PhotOptions | None = None) -> PhotResult:
    """Joint fit of ``spec`` and the photometry of its FIBERMAP row (module docstring).

    ``spec``: the Milky-Way-corrected spectrum that ``continuum_result`` was fitted to
    with ``templates``; ``fibermap_row``: its DESI FIBERMAP row (astropy Row, numpy
    record or dict with ``FLUX_<band>``, ``FLUX_IVAR_<band>``, ``PHOTSYS``, ``EBV``) or an
    already built :class:`~cubefit.spectra.photometry.Photometry`; ``options`` a
    :class:`PhotOptions` or None (defaults; a ``ContinuumOptions`` also means the
    defaults: the continuum fit's options travel with ``continuum_result``).  Never raises for a problem of this target:
    the result carries ``status`` ≠ 0 and ``message``; ``TypeError`` for wrong options.
    """
    # The continuum fit's own options travel with its result: a ContinuumOptions given
    # here (a caller passing the run's options along) means the default PhotOptions.
    opt = PhotOptions() if options is None or isinstance(options, ContinuumOptions) else options
    if not isinstance(opt, PhotOptions):
        raise TypeError(f"fit_with_photometry: options must be a PhotOptions (cosmology, floors, nmonte, seed, "
                        f"...) or None, got {type(options).__name__}")
    cont = continuum_result
    res = PhotResult(targetid=spec.targetid, z=float(spec.z))
    if isinstance(fibermap_row, Photometry):
        ph = fibermap_row
    else:
        try:
            ph = photometry_from_fibermap(fibermap_row, bands=opt.bands, floors=opt.floors,
                                          where=f"FIBERMAP of TARGETID {spec.targetid}")
        except ValueError as exc:
            return _fail(res, "no_photometry", str(exc))
    res.photometry = ph
    if ph.n == 0:
        return _fail(res, "no_photometry", f"no usable band (dropped: {ph.dropped})")
    # Aperture correction from the spectrum's synthesised g, r, z.
    if ph.photsys in ("N", "S"):
        try:
            synth = spectrum_synth_flux(spec, filter_names(ph.photsys, OPTICAL_BANDS), flux_unit=opt.flux_unit)
            res.flux_synth = {b: float(f) for b, f in zip(OPTICAL_BANDS, synth)}
        except ValueError:
            res.flux_synth = {}
    res.apercorr_bands, res.apercorr = aperture_correction(dict(zip(ph.bands, ph.flux)), res.flux_synth)
    if not cont.ok or cont.weights is None or cont.theta is None:
        return _fail(res, "not_possible", f"no joint fit: the continuum fit failed ({cont.message})"[:160])
    if not (np.isfinite(res.z) and res.z > 0):
        return _fail(res, "not_possible", f"no joint fit at redshift {res.z!r}: luminosity distances need z > 0")
    sed = _matching_sed(opt.sed or sed_templates("ssp"), templates.names)
    if sed is None or sed.masses is None or templates.mass_per_weight is None:
        return _fail(res, "not_possible", "no joint fit: the photometric templates do not hold every spectral "
                     "template by name with a mass table (pass PhotOptions(sed=...))")
    try:
        return _joint(res, spec, templates, cont, ph, sed, opt)
    except TargetProblem as exc:
        return _fail(res, "not_possible", f"no joint fit: {exc}")
    except (np.linalg.LinAlgError, ValueError, FloatingPointError) as exc:
        return _fail(res, "not_possible", f"joint fit failed: {exc}")


def _joint(res: PhotResult, spec, pt: PreparedTemplates, cont: ContinuumResult, ph: Photometry,
           sed: SEDTemplates, opt: PhotOptions) -> PhotResult:
    z = res.z
    dl = luminosity_distance_cm(z, get_cosmology(opt.cosmology))
    mpoly0 = np.zeros(0) if cont.mpoly is None else np.asarray(cont.mpoly, dtype=np.float64)
    D = mpoly0.size if opt.mdegree is None else int(opt.mdegree)
    C, sw, y, x, kd = _spectral_rows(spec, pt, cont)
    # Bands inside the templates; templates covering them (or red bands dropped).
    design = PhotDesign(sed, z, ph.filters, dl, tau_max=opt.tau_max)
    fitted = design.valid.copy()
    dropped = dict(ph.dropped)
    for b, v in zip(ph.bands, design.valid):
        if not v:
            dropped[b] = f"outside the templates' range at z={z:.4g}"
            res.flag |= PHOT_FLAGS["band_outside_templates"]
    left_out = np.setdiff1d(np.arange(sed.P), design.templates)
    if left_out.size and fitted.any():
        poly0 = 1.0 + mpoly0 @ legendre.legvander(x, mpoly0.size)[:, 1:].T if mpoly0.size else 1.0
        light = cont.weights * (C @ (poly0 * np.ones_like(x)))
        frac = float(light[left_out].sum() / light.sum()) if light.sum() > 0 else 0.0
        if frac > opt.young_light_max:
            reach = band_support(ph.filters, threshold=_COVER)[:, 1] / (1.0 + z)
            red = fitted & (reach > sed.red_edge[left_out].min())
            for b in np.asarray(ph.bands)[red]:
                dropped[b] = (f"rest > {sed.red_edge[left_out].min():.0f} Å, where templates with "
                              f"{100 * frac:.0f} % of the light have no flux")
            fitted &= ~red
            res.flag |= PHOT_FLAGS["red_bands_dropped"]
            design = PhotDesign(sed, z, [f for f, k in zip(ph.filters, fitted) if k], dl, tau_max=opt.tau_max)
        else:
            res.flag |= PHOT_FLAGS["templates_left_out"]
            design.restrict(fitted[design.valid])
    else:
        design.restrict(fitted[design.valid])
    if not fitted.any():
        return _fail(res, "few_bands", f"no band inside the templates' range at z={z:.4g} (dropped: {dropped})")
    use = design.templates
    # Weights per unit spectral weight: initial M_sun (spectral normalisation → physical).
    mass_per_w = opt.flux_unit * 4 * math.pi * dl**2 * (1.0 + z) / (L_SUN_ERG_S * sed.masses / pt.mass_per_weight)
    flux, ivar = ph.flux[fitted], ph.ivar[fitted]
    prob = _Joint(C[use], sw, x, kd, y, res.apercorr, design, mass_per_w[use], flux, ivar, D)
    # Start: τ_V of a photometry-only fit of the same templates, the spectrum's polynomial
    # divided by that attenuation (its shape already holds the dust the spectrum saw).
    tau0 = _start_tau(ph, fitted, z, sed, use, dl, opt)
    m0 = _start_poly(mpoly0, x, kd, tau0, D)
    lo = np.r_[np.full(D, -1.0), 0.0]
    hi = np.r_[np.full(D, 1.0), opt.tau_max]
    theta, nfev = prob.solve(np.r_[m0, tau0], lo, hi)
    st = prob.evaluate(theta)
    w = st["w"]
    if not np.any(w > 0):
        return _fail(res, "no_model", "no non-negative template mixture fits the spectrum and photometry")
    n = sw.size
    res.weights = np.zeros(pt.P)
    res.weights[use] = w
    res.mpoly, res.tau_v, res.nfev = theta[:D], float(theta[D]), int(nfev)
    res.chi2_spec = float(st["resid"][:n] @ st["resid"][:n])
    res.chi2_phot = float(st["resid"][n:] @ st["resid"][n:])
    res.npix = n
    res.dof_spec = n - (D + 1) - int(np.count_nonzero(w > 0))
    # Monte Carlo: the spectrum and every band perturbed by their errors; the aperture
    # correction recomputed from the perturbed g, r, z (its noise moves the spectrum's level
    # against the photometry); refitted from the optimum.
    rng = np.random.default_rng(opt.seed + (0 if spec.targetid is None else int(spec.targetid) % 2**31))
    mw, mt = np.zeros((opt.nmonte, sed.P)), np.zeros(opt.nmonte)
    sig = 1.0 / np.sqrt(ph.ivar)
    for k in range(opt.nmonte):
        dspec, dphot = rng.standard_normal(n), rng.standard_normal(ph.n)
        rhs = prob.rhs + np.concatenate([dspec, dphot[fitted]])
        prob.a = aperture_correction(dict(zip(ph.bands, ph.flux + sig * dphot)), res.flux_synth)[1]
        th_k, _ = prob.solve(theta, lo, hi, rhs)
        mt[k] = th_k[D]
        mw[k, use] = prob.evaluate(th_k, rhs)["w"] * mass_per_w[use]
    prob.a = res.apercorr
    weights = np.zeros(sed.P)
    weights[use] = w * mass_per_w[use]
    model_flux = np.full(ph.n, np.nan)
    model_flux[fitted] = design.model(res.tau_v, weights[use])
    res.sed = sed
    res.fit = SEDFit(z=z, dl_cm=dl, weights=weights, tau_v=res.tau_v, chi2=res.chi2_phot,
                     n_fit=int(fitted.sum()), model_flux=model_flux, fitted=fitted, dropped=dropped,
                     templates=use, monte_weights=mw, monte_tau=mt)
    return res


def _spectral_rows(spec: Spectrum, pt: PreparedTemplates, cont: ContinuumResult):
    """The fitted pixels of the spectrum-only fit: ``C (P, n)`` every template at its
    kinematics (LOSVD, binning, resolution; no polynomial, no attenuation:
    :func:`cubefit.spectra.continuum.continuum_basis` at θ with those zeroed), ``sw``
    √ivar, ``y`` the data times √ivar, ``x`` the Legendre coordinate of the fit's
    polynomial (linear in ln λ over the fitted pixels) and ``kd`` A_λ/A_V (Calzetti)."""
    k = 4 if np.isfinite(cont.h3) else 2
    theta = np.array(cont.theta, dtype=np.float64)
    theta[k:] = 0.0                                   # polynomial and τ_V (if fitted): none
    basis = continuum_basis(spec, pt, dataclasses.replace(cont, theta=theta))
    ln = [np.log(air_to_vacuum(c.wave) if spec.air else c.wave) - math.log1p(cont.z) for c in spec.cameras]
    good = [np.asarray(g, dtype=bool) for g in cont.good]
    C = np.concatenate([b[g] for b, g in zip(basis, good)]).T
    sw = np.concatenate([np.sqrt(c.ivar[g]) for c, g in zip(spec.cameras, good)])
    y = np.concatenate([c.flux[g] for c, g in zip(spec.cameras, good)]) * sw
    lr = np.concatenate([v[g] for v, g in zip(ln, good)])
    x = 2.0 * (lr - lr.min()) / (lr.max() - lr.min()) - 1.0 if lr.max() > lr.min() else np.zeros_like(lr)
    if not np.all(np.isfinite(C)):
        raise ValueError("the continuum basis is not finite on the fitted pixels")
    return C, sw, y, x, calzetti_k(np.exp(lr))


def _start_tau(ph, fitted, z, sed, use, dl, opt) -> float:
    """τ_V of a photometry-only fit of the fitted bands with the joint fit's templates
    (0.1 when fewer than two bands)."""
    if fitted.sum() < 2:
        return 0.1
    f = fit_photometry(ph.select(fitted), z, sed.select(use), dl, tau_max=opt.tau_max)
    return float(f.tau_v) if f.status == 0 and np.isfinite(f.tau_v) else 0.1


def _start_poly(mpoly, x, kd, tau, D) -> np.ndarray:
    """Coefficients ``m`` of ``1 + Σ m_k P_k`` closest (least squares, up to a factor) to the
    spectrum-only polynomial times ``e^{τ k}``."""
    if D == 0:
        return np.zeros(0)
    target = legendre.legval(x, np.r_[1.0, mpoly]) * np.exp(tau * kd)
    coef = legendre.legfit(x, target, D)
    return np.clip(coef[1:] / coef[0], -0.99, 0.99) if coef[0] > 0 else np.zeros(D)
