"""Fitting broadband photometry with stellar-population templates (``fastphot``) and
the photometric rows of the joint spectrum + photometry fit.

Templates (:class:`SEDTemplates`)
---------------------------------
The E-MILES SSPs (or any :class:`cubefit.templates.TemplateLibrary` with masses) over
their whole range, 1690 Å – 5 µm rest frame, in physical units: ``flux (P, T)`` is
L_sun Å⁻¹ per M_sun of *initial* stellar mass; ``masses (P,)`` the mass in living
stars and remnants per initial M_sun (E-MILES mass table); ``lum_v (P,)`` the V-band
luminosity per initial M_sun.  They are converted to vacuum wavelengths, broadened to
a nominal velocity dispersion (default 250 km/s: irrelevant for broadband fluxes but
fixed, so that results do not depend on the sampling) and averaged onto a coarse
log-λ grid (default 300 km/s pixels, which keeps synthetic magnitudes exact to
< 1 mmag).  Where a template has no flux (E-MILES' young, metal-poor SSPs stop at
8950 Å), :attr:`SEDTemplates.red_edge` records it and the fit leaves that template out
for targets whose bands reach beyond.

Model
-----
For a target at redshift ``z`` with luminosity distance ``d_L`` the template ``p``
observed through band ``b`` gives (nanomaggies per initial M_sun)::

    A_bp(τ_V) = Σ_λ W_b(λ (1+z)) · L_p(λ) e^{-τ_V k(λ)} · L_sun / (4π d_L² (1+z))

with ``W_b`` the band's integration weights (:func:`cubefit.spectra.filters.band_matrix`)
and ``k(λ) = A_λ/A_V`` the Calzetti et al. (2000) attenuation curve (``R_V = 4.05``,
``extinction.calzetti00``, as the continuum fitter), continued beyond its 2.2 µm limit
by a power law ``∝ λ^-1.75`` matched at 2.2 µm (the formula itself turns negative
near 2.8 µm).  The fit minimises ``χ²(τ_V) = min_{w ≥ 0} Σ_b ((A(τ_V) w − f)_b / σ_b)²``:
NNLS for the weights inside (variable projection), a 1-D search over
``0 ≤ τ_V ≤ tau_max`` outside (a grid of step 0.1 to find the best basin, then a bounded
Brent search on a quadratic interpolation of ``A(τ_V)`` between grid nodes, exact to
≲ 3e-4; the final weights use the exact ``A``).  A band is modelled only when its whole rest-frame response lies inside the
templates' range (W2 needs z ≳ 0.11, W3/W4 never fit E-MILES); others are dropped and
listed in the result's ``dropped`` with the reason.

Monte Carlo: ``nmonte`` refits of the photometry perturbed by its Gaussian errors
(seeded) give the scatter of every derived quantity (:mod:`cubefit.spectra.derived`).
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

import numpy as np
from scipy.ndimage import gaussian_filter1d
from scipy.optimize import minimize_scalar, nnls

from .filters import band_matrix, band_support
from .photometry import Photometry

__all__ = ["SEDTemplates", "sed_templates", "calzetti_k", "PhotDesign", "SEDFit", "fit_photometry",
           "stack_design", "spectral_weight_rows", "L_SUN_ERG_S", "MPC_CM", "DEFAULT_TAU_MAX", "TAU_STEP", "DEFAULT_AGE_EDGES"]

L_SUN_ERG_S = 3.828e33
"""Nominal solar luminosity (IAU 2015 B3), erg/s."""
MPC_CM = 3.0856775814913673e24
DEFAULT_TAU_MAX = 3.0
DEFAULT_AGE_EDGES = (0.09, 0.3, 1.0, 3.0, 7.0, 16.0)
"""Age-bin edges (Gyr) of the default ``fastphot`` templates (E-MILES: 0.1–15.8 Gyr SSPs)."""
TAU_STEP = 0.1
_CALZETTI_RED = 22000.0
_IR_SLOPE = 1.75
_COVER_THRESHOLD = 0.01        # a template must cover each band where R > 1 % of its peak


def calzetti_k(lam_rest) -> np.ndarray:
    """``A_λ / A_V`` of Calzetti et al. (2000) at rest wavelengths ``lam_rest`` (Å), with the
    power-law continuation beyond 2.2 µm (module docstring)."""
    from extinction import calzetti00
    lam = np.asarray(lam_rest, dtype=np.float64)
    k = np.empty_like(lam)
    blue = lam <= _CALZETTI_RED
    if blue.any():
        k[blue] = calzetti00(lam[blue], 1.0, 4.05)
    if (~blue).any():
        k0 = calzetti00(np.array([_CALZETTI_RED]), 1.0, 4.05)[0]
        k[~blue] = k0 * (lam[~blue] / _CALZETTI_RED) ** -_IR_SLOPE
    return k


@dataclass(eq=False)
class SEDTemplates:
    """Templates for photometric fits (module docstring).

    ``lam (T,)`` rest-frame vacuum wavelengths (Å, uniform in ln λ, step ``velscale``);
    ``flux (P, T)`` L_sun/Å per initial M_sun; ``kdust (T,)`` ``A_λ/A_V``; ``masses (P,)``
    surviving mass per initial M_sun (or None); ``lum_v (P,)`` L_V per initial M_sun (or
    None); ``logage_lw``, ``logage_mw`` (log10 yr) and ``mh_lw``, ``mh_mw`` ([M/H] dex)
    ``(P,)`` each template's own V-light- and mass-weighted means (equal for an SSP), so
    that a mixture's means follow exactly; ``red_edge (P,)`` Å beyond which a template
    has no flux; ``sigma`` the nominal dispersion (km/s).
    """

    lam: np.ndarray
    flux: np.ndarray
    kdust: np.ndarray
    masses: np.ndarray | None
    lum_v: np.ndarray | None
    logage_lw: np.ndarray
    logage_mw: np.ndarray
    mh_lw: np.ndarray
    mh_mw: np.ndarray
    red_edge: np.ndarray
    velscale: float
    sigma: float
    names: list = field(default_factory=list)
    source: str = ""

    @property
    def P(self) -> int:
        return self.flux.shape[0]

    def select(self, keep) -> "SEDTemplates":
        """The templates where ``keep`` (bool or indices) selects them."""
        idx = np.arange(self.P)[keep]

        def take(a):
            return None if a is None else a[idx]
        return SEDTemplates(lam=self.lam, flux=self.flux[idx], kdust=self.kdust, masses=take(self.masses),
                            lum_v=take(self.lum_v), logage_lw=self.logage_lw[idx],
                            logage_mw=self.logage_mw[idx], mh_lw=self.mh_lw[idx], mh_mw=self.mh_mw[idx],
                            red_edge=self.red_edge[idx], velscale=self.velscale, sigma=self.sigma,
                            names=[self.names[i] for i in idx], source=f"{self.source}, {idx.size} selected")

    def age_bins(self, edges_gyr=DEFAULT_AGE_EDGES, metal: float = 0.0) -> "SEDTemplates":
        """Constant-star-formation templates in age bins, from the SSPs of [M/H] ``metal``.

        Each SSP stands for the ages between the geometric mid-points to its neighbours;
        a bin's template forms 1 M_sun at a constant rate over the SSPs whose ages fall in
        ``[edges[i], edges[i+1])`` (Gyr), each weighted by its time span.  Only SSPs that
        cover the whole wavelength range are used (E-MILES: from 0.1 Gyr at solar [M/H]).
        """
        sel = np.flatnonzero((np.abs(self.mh_mw - metal) < 1e-3) & (self.red_edge >= self.lam[-1]))
        if sel.size == 0:
            raise ValueError(f"{self.source}: no full-range SSP with [M/H] = {metal}")
        sel = sel[np.argsort(self.logage_mw[sel])]
        la = self.logage_mw[sel]
        mids = np.concatenate(([1.5 * la[0] - 0.5 * la[1]], 0.5 * (la[1:] + la[:-1]), [1.5 * la[-1] - 0.5 * la[-2]]))
        span = np.diff(10.0 ** mids)
        edges = np.log10(np.asarray(edges_gyr, dtype=np.float64)) + 9.0
        rows, names = [], []
        for lo, hi in zip(edges[:-1], edges[1:]):
            inb = (la >= lo) & (la < hi)
            if not inb.any():
                continue
            a = np.zeros(self.P)
            a[sel[inb]] = span[inb] / span[inb].sum()
            rows.append(a)
            names.append(f"CSF {10 ** (lo - 9):.3g}-{10 ** (hi - 9):.3g} Gyr [M/H]={metal:+.2f}")
        A = np.array(rows)                                    # (nbin, P): SSP mass fractions

        def mean(per, values):
            wt = A * per
            return (wt @ values) / wt.sum(axis=1)
        lv = None if self.lum_v is None else A @ self.lum_v
        ms = None if self.masses is None else A @ self.masses
        ones = np.ones(self.P)
        return SEDTemplates(
            lam=self.lam, flux=A @ self.flux, kdust=self.kdust, masses=ms, lum_v=lv,
            logage_lw=mean(self.lum_v if self.lum_v is not None else ones, self.logage_lw),
            logage_mw=mean(self.masses if self.masses is not None else ones, self.logage_mw),
            mh_lw=np.full(len(rows), float(metal)), mh_mw=np.full(len(rows), float(metal)),
            red_edge=np.full(len(rows), self.lam[-1]), velscale=self.velscale, sigma=self.sigma,
            names=names, source=f"{self.source}; {len(rows)} constant-SFR age bins at [M/H]={metal:+.2f}")

    @classmethod
    def from_library(cls, library=None, *, velscale: float = 300.0, sigma: float = 250.0,
                     lam_range=(1690.0, 49900.0), oversample: int = 6, air: bool = True,
                     cache_dir=None) -> "SEDTemplates":
        """Build from ``library`` (default: the E-MILES SSPs, read from the user cache).

        The library is read at ``velscale / oversample`` km/s, broadened by a Gaussian of
        ``sigma`` km/s and averaged in blocks of ``oversample`` pixels (exact bin
        averages on the uniform log grid).  ``air``: the library's wavelengths are in air.
        The library's flux must be per unit initial mass (E-MILES: L_sun/Å/M_sun).
        """
        from ..templates import TemplateLibrary
        from .data import air_to_vacuum
        fine = velscale / oversample
        if library is None:
            library = TemplateLibrary.from_emiles(velscale=fine, lam_range=lam_range, cache_dir=cache_dir)
        lib = library.normalise("none")
        if "age" not in lib.pop_axes or "metal" not in lib.pop_axes:
            raise ValueError(f"{lib.source}: SED templates need 'age' and 'metal' population axes")
        ln = lib.ln_lam
        flux = lib.flux
        if abs(lib.velscale - fine) > 1e-6 * fine:
            raise ValueError(f"{lib.source}: velscale {lib.velscale} km/s; build it at {fine} km/s "
                             "(velscale/oversample) or pass library=None")
        if sigma > 0:
            flux = gaussian_filter1d(flux, sigma / fine, axis=1, mode="nearest", truncate=5.0)
        n = (flux.shape[1] // oversample) * oversample
        flux = flux[:, :n].reshape(flux.shape[0], -1, oversample).mean(axis=2)
        ln = ln[:n].reshape(-1, oversample).mean(axis=1)
        lam = np.exp(ln)
        if air:
            lam = air_to_vacuum(lam)
        grid = np.meshgrid(*lib.pop_axes.values(), indexing="ij")
        axes = dict(zip(lib.pop_axes, (g.ravel() for g in grid)))
        if lib.axis_units.get("age", "Gyr") != "Gyr":
            raise ValueError(f"{lib.source}: the age axis must be in Gyr, got {lib.axis_units['age']!r}")
        logage = np.log10(axes["age"]) + 9.0
        tiny = 1e-6 * flux.max(axis=1, keepdims=True)
        empty = flux <= tiny
        red = np.where(empty.any(axis=1), lam[np.argmax(empty, axis=1)], lam[-1])
        masses = None if lib.masses is None else np.asarray(lib.masses, dtype=np.float64)
        lum_v = None
        if masses is not None and lib.mass_to_light is not None:
            lum_v = masses / np.asarray(lib.mass_to_light, dtype=np.float64)
        return cls(lam=lam, flux=np.ascontiguousarray(flux), kdust=calzetti_k(lam), masses=masses,
                   lum_v=lum_v, logage_lw=logage, logage_mw=logage.copy(), mh_lw=axes["metal"],
                   mh_mw=axes["metal"].copy(), red_edge=red,
                   velscale=float(fine * oversample), sigma=float(sigma), names=list(lib.names),
                   source=f"{lib.source} (vacuum, {fine * oversample:.4g} km/s, sigma {sigma:g} km/s)")


@functools.lru_cache(maxsize=4)
def sed_templates(basis: str = "bins", velscale: float = 300.0, sigma: float = 250.0,
                  cache_dir=None) -> SEDTemplates:
    """The default E-MILES :class:`SEDTemplates`, built once per process: ``basis='bins'``
    (default for ``fastphot``) the five solar-metallicity constant-SFR age bins
    (:data:`DEFAULT_AGE_EDGES`, :meth:`SEDTemplates.age_bins`), ``'ssp'`` all 150 SSPs."""
    if basis not in ("bins", "ssp"):
        raise ValueError(f"basis {basis!r}: expected 'bins' or 'ssp'")
    if basis == "bins":
        return sed_templates("ssp", velscale, sigma, cache_dir).age_bins()
    return SEDTemplates.from_library(None, velscale=velscale, sigma=sigma, cache_dir=cache_dir)


class PhotDesign:
    """The photometric model of one target: which bands and templates, and ``A(τ_V)``.

    ``z`` redshift, ``filters`` speclite names, ``dl_cm`` luminosity distance (cm);
    ``valid (n_band,)`` bands inside the templates' range, ``templates`` indices of
    the templates used (covering every valid band).  :meth:`matrix` is exact;
    :meth:`interp` interpolates the precomputed grid (step :data:`TAU_STEP`).
    """

    def __init__(self, sed: SEDTemplates, z: float, filters, dl_cm: float,
                 tau_max: float = DEFAULT_TAU_MAX):
        self.z, self.filters, self.tau_max = float(z), tuple(filters), float(tau_max)
        sup = band_support(self.filters) / (1.0 + z)
        self.valid = (sup[:, 0] >= sed.lam[0]) & (sup[:, 1] <= sed.lam[-1])
        core = band_support(self.filters, threshold=_COVER_THRESHOLD) / (1.0 + z)
        reach = core[self.valid, 1].max() if self.valid.any() else 0.0
        self.templates = np.flatnonzero(sed.red_edge >= reach)
        scale = L_SUN_ERG_S / (4 * math.pi * dl_cm**2 * (1.0 + z))
        names = [f for f, v in zip(self.filters, self.valid) if v]
        W = band_matrix(sed.lam * (1.0 + z), names, flux_unit=scale) if names else np.zeros((0, sed.lam.size))
        cols = np.flatnonzero(W.any(axis=0))
        self._W_all, self._k = W[:, cols], sed.kdust[cols]
        self._W = self._W_all
        self._F = np.ascontiguousarray(sed.flux[np.ix_(self.templates, cols)].T)      # (ncol, P')
        n = max(int(math.ceil(self.tau_max / TAU_STEP)), 2)
        self.tau_grid = np.linspace(0.0, n * TAU_STEP, n + 1)
        att = np.exp(-self.tau_grid[:, None] * self._k[None, :])                       # (J, ncol)
        J, B = att.shape[0], self._W.shape[0]
        self._grid_all = ((att[:, None, :] * self._W[None, :, :]).reshape(J * B, -1) @ self._F).reshape(J, B, -1)
        self.grid = self._grid_all

    @property
    def n_valid(self) -> int:
        return int(self.valid.sum())

    def restrict(self, keep) -> None:
        """Fit only the valid bands where ``keep (n_valid,)`` is True (:meth:`model` still
        predicts every valid band)."""
        keep = np.asarray(keep, dtype=bool)
        self._W = self._W_all[keep]
        self.grid = self._grid_all[:, keep]

    def model(self, tau: float, w) -> np.ndarray:
        """Model fluxes (nanomaggies) in every valid band for weights ``w (P',)``."""
        return (self._W_all * np.exp(-tau * self._k)) @ (self._F @ np.asarray(w, dtype=np.float64))

    def matrix(self, tau: float) -> np.ndarray:
        """``A(τ_V) (n_valid, P')`` in nanomaggies per initial M_sun (exact)."""
        return (self._W * np.exp(-tau * self._k)) @ self._F

    def matrix_dtau(self, tau: float) -> np.ndarray:
        """``∂A/∂τ_V (n_valid, P')`` at ``tau`` (exact; the joint fit's Jacobian)."""
        return (self._W * (-self._k * np.exp(-tau * self._k))) @ self._F

    def interp(self, tau: float) -> np.ndarray:
        """``A(τ_V)`` by quadratic interpolation between the three nearest grid nodes."""
        j = int(np.clip(round(tau / TAU_STEP), 1, len(self.tau_grid) - 2))
        t0, t1, t2 = self.tau_grid[j - 1:j + 2]
        l0 = (tau - t1) * (tau - t2) / ((t0 - t1) * (t0 - t2))
        l1 = (tau - t0) * (tau - t2) / ((t1 - t0) * (t1 - t2))
        l2 = (tau - t0) * (tau - t1) / ((t2 - t0) * (t2 - t1))
        return l0 * self.grid[j - 1] + l1 * self.grid[j] + l2 * self.grid[j + 1]

    def solve(self, flux, ivar) -> tuple[float, np.ndarray, float]:
        """Best ``(τ_V, weights (P',), χ²)`` for fluxes/ivars of the valid bands."""
        s = np.sqrt(ivar)
        b = flux * s

        def chi2_of(A):
            w, rnorm = nnls(A * s[:, None], b, maxiter=50 * A.shape[1])
            return rnorm**2, w

        chi = np.array([chi2_of(A)[0] for A in self.grid])
        inside = self.tau_grid <= self.tau_max + 1e-12
        j = int(np.argmin(np.where(inside, chi, np.inf)))
        lo, hi = self.tau_grid[max(j - 1, 0)], min(self.tau_grid[min(j + 1, len(chi) - 1)], self.tau_max)
        if hi > lo:
            r = minimize_scalar(lambda t: chi2_of(self.interp(t))[0], bounds=(lo, hi), method="bounded",
                                options={"xatol": 1e-3})
            tau = float(r.x) if r.fun <= chi[j] else float(self.tau_grid[j])
        else:
            tau = float(self.tau_grid[j])
        c2, w = chi2_of(self.matrix(tau))
        return tau, w, float(c2)


@dataclass
class SEDFit:
    """Result of :func:`fit_photometry`.

    ``weights (P,)`` initial M_sun per template (0 for templates left out); ``tau_v``;
    ``chi2`` over ``n_fit`` bands; ``model_flux (n_band,)`` model nanomaggies in every
    band of the input (NaN where not modelled); ``fitted (n_band,)`` bands used;
    ``dropped`` ``{band: reason}``; ``monte_weights (nmonte, P)`` and
    ``monte_tau (nmonte,)`` from the Monte-Carlo refits (empty without).
    """

    z: float
    dl_cm: float
    weights: np.ndarray
    tau_v: float
    chi2: float
    n_fit: int
    model_flux: np.ndarray
    fitted: np.ndarray
    dropped: dict
    templates: np.ndarray
    monte_weights: np.ndarray
    monte_tau: np.ndarray
    status: int = 0
    message: str = ""


def fit_photometry(phot: Photometry, z: float, sed: SEDTemplates, dl_cm: float, *,
                   tau_max: float = DEFAULT_TAU_MAX, nmonte: int = 0, seed: int = 0,
                   bands=None) -> SEDFit:
    """Fit ``phot`` at redshift ``z`` (module docstring); never raises for a target's data.

    ``dl_cm``: luminosity distance in cm (:func:`cubefit.spectra.derived.luminosity_distance_cm`);
    ``bands``: labels to fit (default all of ``phot``'s); ``nmonte``/``seed``: Monte Carlo.
    ``status`` 0 = ok, 1 = fewer than two bands usable, 2 = no positive model.
    """
    use = np.ones(phot.n, dtype=bool) if bands is None else np.isin(phot.bands, [b.upper() for b in bands])
    design = PhotDesign(sed, z, phot.filters, dl_cm, tau_max=tau_max)
    dropped = dict(phot.dropped)
    for b, v, u in zip(phot.bands, design.valid, use):
        if not u:
            dropped[b] = "not requested"
        elif not v:
            dropped[b] = f"outside the templates' range at z={z:.4g}"
    fit_mask = design.valid & use
    empty = SEDFit(z=z, dl_cm=dl_cm, weights=np.zeros(sed.P), tau_v=math.nan, chi2=math.nan, n_fit=0,
                   model_flux=np.full(phot.n, np.nan), fitted=fit_mask, dropped=dropped,
                   templates=design.templates, monte_weights=np.zeros((0, sed.P)), monte_tau=np.zeros(0))
    if fit_mask.sum() < 2 or design.templates.size == 0:
        empty.status, empty.message = 1, (f"only {int(fit_mask.sum())} band(s) usable at z={z:.4g} "
                                          f"(dropped: {dropped}); need at least two")
        return empty
    design.restrict(fit_mask[design.valid])
    flux, ivar = phot.flux[fit_mask], phot.ivar[fit_mask]
    tau, w, chi2 = design.solve(flux, ivar)
    if not np.any(w > 0):
        empty.status, empty.message = 2, "no non-negative template mixture has positive flux in the fitted bands"
        empty.tau_v, empty.chi2, empty.n_fit = tau, chi2, int(fit_mask.sum())
        return empty
    weights = np.zeros(sed.P)
    weights[design.templates] = w
    model = np.full(phot.n, np.nan)
    model[design.valid] = design.model(tau, w)
    rng = np.random.default_rng(seed)
    mw, mt = np.zeros((nmonte, sed.P)), np.zeros(nmonte)
    sig = 1.0 / np.sqrt(ivar)
    for k in range(nmonte):
        tk, wk, _ = design.solve(flux + sig * rng.standard_normal(flux.size), ivar)
        mt[k] = tk
        mw[k, design.templates] = wk
    return SEDFit(z=z, dl_cm=dl_cm, weights=weights, tau_v=tau, chi2=chi2, n_fit=int(fit_mask.sum()),
                  model_flux=model, fitted=fit_mask, dropped=dropped, templates=design.templates,
                  monte_weights=mw, monte_tau=mt)


def spectral_weight_rows(sed: SEDTemplates, z: float, filters, dl_cm: float, tau_v: float, scale,
                         flux_unit: float = 1e-17) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Photometric rows for the weights of a *spectral* fit (the joint fit's lower block).

    A spectral fit's weight ``w_p`` multiplies template ``p`` divided by ``scale[p]``
    (the factor the continuum fitter divided the library's flux by) to give the observed
    flux density in ``flux_unit`` erg s⁻¹ cm⁻² Å⁻¹ at rest wavelength × (1+z).  Returns
    ``(rows (n_valid, P), valid (n_band,), usable (P,))``: ``rows @ w`` are the model's
    nanomaggies in the valid bands (attenuated by ``tau_v``); ``usable`` marks templates
    that cover those bands (the others' rows are zero and they should be left out of a
    joint fit, or the red bands dropped).  ``sed`` must hold the same templates in the
    same order as the spectral fit (E-MILES: ``sed_templates('ssp')``).
    """
    scale = np.broadcast_to(np.asarray(scale, dtype=np.float64), (sed.P,))
    d = PhotDesign(sed, z, filters, dl_cm)
    per_mass = d.matrix(tau_v)                                  # nmgy per initial M_sun
    mass_per_w = flux_unit * 4 * math.pi * dl_cm**2 * (1.0 + z) / (L_SUN_ERG_S * scale[d.templates])
    rows = np.zeros((d.n_valid, sed.P))
    rows[:, d.templates] = per_mass * mass_per_w
    usable = np.zeros(sed.P, dtype=bool)
    usable[d.templates] = True
    return rows, d.valid, usable


def stack_design(spec_design, spec_data, phot_design, phot_flux, phot_ivar, *,
                 apercorr: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """One NNLS system for a joint spectrum + photometry fit.

    ``spec_design (npix, P)``: each template's model on every camera's good pixels, rows
    already divided by the pixel's σ; ``spec_data (npix,)`` the data divided by σ;
    ``phot_design (n_band, P)``: the same templates' fluxes in the photometric bands
    (nanomaggies per unit weight, e.g. :meth:`PhotDesign.matrix` times the
    templates' normalisation); ``phot_flux``, ``phot_ivar`` (n_band,) the photometry.
    ``apercorr``: the spectrum's aperture correction (total / fibre flux): the spectrum
    is scaled up by it, which divides its model rows by it (σ scales with the data).
    Returns ``(A (npix + n_band, P), b)`` with the photometric rows below the spectral
    ones, each divided by its σ; bands with ``ivar = 0`` get zero rows.  Minimising
    ``‖A w − b‖`` over ``w ≥ 0`` is the joint fit.
    """
    Ds, ds = np.asarray(spec_design, dtype=np.float64), np.asarray(spec_data, dtype=np.float64)
    Dp = np.asarray(phot_design, dtype=np.float64)
    f, iv = np.asarray(phot_flux, dtype=np.float64), np.asarray(phot_ivar, dtype=np.float64)
    if Ds.ndim != 2 or Dp.ndim != 2 or Ds.shape[1] != Dp.shape[1]:
        raise ValueError(f"stack_design: spec_design {Ds.shape} and phot_design {Dp.shape} must be "
                         "(rows, P) with the same P")
    if ds.shape != (Ds.shape[0],) or f.shape != iv.shape or f.shape != (Dp.shape[0],):
        raise ValueError(f"stack_design: data shapes {ds.shape}, {f.shape}, {iv.shape} do not match the "
                         f"designs {Ds.shape}, {Dp.shape}")
    if not (np.isfinite(apercorr) and apercorr > 0):
        raise ValueError(f"stack_design: apercorr = {apercorr!r}; expected a finite positive factor")
    s = np.sqrt(np.where(np.isfinite(iv) & (iv > 0), iv, 0.0))
    A = np.vstack([Ds / apercorr, Dp * s[:, None]])
    b = np.concatenate([ds, np.where(s > 0, f, 0.0) * s])
    return A, b
