"""Physical quantities from a photometric (or joint) fit, and the catalogue columns.

Cosmology
---------
Distances come from ``astropy.cosmology``.  Default: ``Planck18`` (flat ΛCDM,
H0 = 67.66 km/s/Mpc, Ωm = 0.30966); any astropy realisation name (``WMAP9``,
``Planck15``, ...), ``"H0=70,Om0=0.3"`` (a flat ΛCDM) or a ``Cosmology`` object may be
given (:func:`get_cosmology`).  FastSpecFit quotes masses and magnitudes for h = 1:
``LOGMSTAR(h=1) = LOGMSTAR + 2 log10 h`` and ``ABSMAG(h=1) = ABSMAG − 5 log10 h``.

Stellar mass
------------
``LOGMSTAR = log10 Σ_p w_p μ_p`` with ``w_p`` the initial mass (M_sun) put into
template ``p`` by the fit and ``μ_p`` the mass in living stars and remnants per unit
initial mass (E-MILES mass table, unimodal IMF of slope 1.3 = Salpeter; for a
Chabrier IMF, as FastSpecFit, subtract ≈ 0.24 dex).  Light-weighted means use the
templates' V-band luminosity; the definitions are those of :mod:`cubefit.science`.

Absolute magnitudes and K-corrections (as FastSpecFit)
------------------------------------------------------
For an output band ``R`` blue-shifted to ``z_b`` (``ABSMAG{10·z_b:02d}_<BAND>``; e.g.
``ABSMAG01_SDSS_R`` is SDSS r shifted to z = 0.1) the model's synthesised absolute
magnitude is ``M_R^synth``: the AB magnitude of the rest-frame model SED placed at
10 pc, through the shifted filter.  From the observed band ``Q`` nearest to it in
rest-frame effective wavelength with S/N > 2:

    K_QR = m_Q^model − M_R^synth − DM(z),      M_R = m_Q^obs − DM(z) − K_QR,

with ``DM`` the distance modulus and ``m_Q^model`` the model's observed-frame magnitude;
``ABSMAG*_IVAR`` is then the inverse variance of ``m_Q^obs``.  Without such a band,
``M_R = M_R^synth`` and its inverse variance is 0.  (With ``z_b = z`` a band-shifted
K-correction is ``−2.5 log10(1 + z)`` for every SED, the convention of Blanton & Roweis
2007.)

Aperture correction
-------------------
``APERCORR_<b> = FLUX_<b> / FLUX_SYNTH_<b>`` for b = g, r, z (total photometry over the
flux synthesised from the spectrum), ``APERCORR`` their median over the bands where both
are positive (1 when none is).  The joint fit scales the spectrum by ``APERCORR``.
"""
from __future__ import annotations

import functools
import math

import numpy as np

from .filters import band_matrix, effective_wavelengths, nanomaggies_to_mag
from .sed import L_SUN_ERG_S, SEDFit, SEDTemplates

__all__ = ["get_cosmology", "luminosity_distance_cm", "distance_modulus", "ABSMAG_BANDS",
           "absmag_name", "synth_absmag", "kcorrect", "aperture_correction", "PHOT_COLUMNS",
           "FASTPHOT_COLUMNS", "phot_columns", "fastphot_columns", "derived_row", "stellar_mass",
           "DEFAULT_COSMOLOGY", "PC_CM", "mc_ivar"]

DEFAULT_COSMOLOGY = "Planck18"
PC_CM = 3.0856775814913673e18
_LN10_04 = 0.4 * math.log(10.0)

ABSMAG_BANDS = (
    ("DECAM_G", "decam2014-g", 1.0), ("DECAM_R", "decam2014-r", 1.0), ("DECAM_Z", "decam2014-z", 1.0),
    ("U", "bessell-U", 0.0), ("B", "bessell-B", 0.0), ("V", "bessell-V", 0.0),
    ("SDSS_U", "sdss2010-u", 0.1), ("SDSS_G", "sdss2010-g", 0.1), ("SDSS_R", "sdss2010-r", 0.1),
    ("SDSS_I", "sdss2010-i", 0.1), ("SDSS_Z", "sdss2010-z", 0.1), ("W1", "wise2010-W1", 0.1),
)
"""``(label, speclite filter, band_shift)`` of the rest-frame bands (FastSpecFit's set)."""


def absmag_name(label: str, shift: float, kind: str = "") -> str:
    """Column name, e.g. ``ABSMAG01_SDSS_R`` (kind ''), ``ABSMAG01_IVAR_SDSS_R``, ``KCORR01_SDSS_R``."""
    ss = f"{int(round(10 * shift)):02d}"
    if kind == "KCORR":
        return f"KCORR{ss}_{label}"
    return f"ABSMAG{ss}_{kind + '_' if kind else ''}{label}"


@functools.lru_cache(maxsize=8)
def _cosmology(spec: str):
    import astropy.cosmology as cosmo
    from astropy.cosmology import FlatLambdaCDM
    if "=" in spec:
        try:
            kw = {k.strip(): float(v) for k, v in (p.split("=") for p in spec.split(","))}
            return FlatLambdaCDM(**kw)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"cosmology {spec!r}: expected e.g. 'H0=70,Om0=0.3' ({exc})") from None
    if spec not in cosmo.realizations.available:
        raise ValueError(f"cosmology {spec!r}: expected one of {', '.join(cosmo.realizations.available)} "
                         "or 'H0=70,Om0=0.3' (flat ΛCDM)")
    return getattr(cosmo, spec)


def get_cosmology(cosmology=None):
    """An astropy ``Cosmology`` from None (Planck18), a name, ``'H0=..,Om0=..'`` or itself."""
    if cosmology is None:
        cosmology = DEFAULT_COSMOLOGY
    if isinstance(cosmology, str):
        return _cosmology(cosmology.strip())
    if not hasattr(cosmology, "luminosity_distance"):
        raise ValueError(f"cosmology {cosmology!r}: expected an astropy Cosmology or its name")
    return cosmology


def luminosity_distance_cm(z: float, cosmology=None) -> float:
    """Luminosity distance in cm."""
    if not (np.isfinite(z) and z > 0):
        raise ValueError(f"z = {z!r}: luminosity distances need a finite redshift > 0")
    return float(get_cosmology(cosmology).luminosity_distance(z).to_value("cm"))


def distance_modulus(z: float, cosmology=None) -> float:
    """``5 log10(d_L / 10 pc)`` in mag."""
    return 5.0 * math.log10(luminosity_distance_cm(z, cosmology) / (10 * PC_CM))


def stellar_mass(weights, masses) -> float:
    """``Σ w μ`` (M_sun) for initial masses ``weights`` and surviving fractions ``masses``."""
    return float(np.asarray(weights, dtype=np.float64) @ np.asarray(masses, dtype=np.float64))


def _rest_sed(sed: SEDTemplates, weights, tau) -> np.ndarray:
    """Rest-frame model L_λ (L_sun/Å) of ``weights (..., P)`` (initial M_sun) attenuated by
    ``tau`` (scalar or ``(...,)``); shape ``(..., T)``."""
    tau = np.asarray(tau, dtype=np.float64)[..., None]
    return (np.asarray(weights) @ sed.flux) * np.exp(-tau * sed.kdust)


@functools.lru_cache(maxsize=8)
def _absmag_matrix(sed: SEDTemplates, bands: tuple) -> np.ndarray:
    flux_unit = L_SUN_ERG_S / (4 * math.pi * (10 * PC_CM) ** 2)
    return np.vstack([band_matrix(sed.lam, [name], flux_unit=flux_unit, band_shift=shift,
                                  require_coverage=False) for _, name, shift in bands])


def synth_absmag(sed: SEDTemplates, weights, tau, bands=ABSMAG_BANDS) -> np.ndarray:
    """``M^synth`` (AB mag) of the model in each ``(label, filter, shift)`` of ``bands``:
    the rest-frame SED at 10 pc through the shifted filter (parts of a filter outside
    the templates' range are left out).  ``weights (..., P)``, ``tau`` scalar or
    ``(...,)``; returns ``(..., n_band)``."""
    return nanomaggies_to_mag(_rest_sed(sed, weights, tau) @ _absmag_matrix(sed, tuple(bands)).T)


def kcorrect(z: float, dm: float, obs_filters, obs_flux, obs_ivar, model_obs_flux, absmag_synth,
             bands=ABSMAG_BANDS, snr_min: float = 2.0):
    """K-corrections and absolute magnitudes from the nearest good observed band.

    ``obs_filters`` speclite names of the observed bands, ``obs_flux``/``obs_ivar``
    (nanomaggies, statistical ivar), ``model_obs_flux`` the model in those bands (NaN
    where not modelled), ``absmag_synth`` from :func:`synth_absmag`, ``dm`` the distance
    modulus.  Returns ``(kcorr, absmag, absmag_ivar)`` arrays over ``bands`` (module
    docstring); ``kcorr`` is NaN and ``absmag_ivar`` 0 where no observed band qualifies.
    """
    f = np.asarray(obs_flux, dtype=np.float64)
    iv = np.asarray(obs_ivar, dtype=np.float64)
    mod = np.asarray(model_obs_flux, dtype=np.float64)
    good = (f * np.sqrt(np.clip(iv, 0, None)) > snr_min) & np.isfinite(mod) & (mod > 0)
    lam_obs = effective_wavelengths(obs_filters) / (1.0 + z) if len(obs_filters) else np.zeros(0)
    n = len(bands)
    kcorr, absmag, ivar = np.full(n, np.nan), np.array(absmag_synth, dtype=np.float64), np.zeros(n)
    for i, (_, name, shift) in enumerate(bands):
        if not good.any():
            break
        lam_out = effective_wavelengths([name], shift)[0]
        dist = np.where(good, np.abs(lam_obs - lam_out), np.inf)
        q = int(np.argmin(dist))
        kcorr[i] = nanomaggies_to_mag(mod[q]) - absmag_synth[i] - dm
        absmag[i] = nanomaggies_to_mag(f[q]) - dm - kcorr[i]
        ivar[i] = iv[q] * (f[q] * _LN10_04) ** 2
    return kcorr, absmag, ivar


def aperture_correction(phot_flux: dict, synth_flux: dict, bands=("G", "R", "Z")) -> tuple[dict, float]:
    """``({band: APERCORR_band}, APERCORR)`` from total fluxes and fluxes synthesised from the
    spectrum (both ``{band: nanomaggies}``); NaN for a band missing or not positive in
    either; the median over the valid bands, 1.0 when there is none."""
    out = {}
    for b in bands:
        f, s = phot_flux.get(b, np.nan), synth_flux.get(b, np.nan)
        out[b] = float(f / s) if (np.isfinite(f) and np.isfinite(s) and f > 0 and s > 0) else math.nan
    vals = [v for v in out.values() if np.isfinite(v)]
    return out, (float(np.median(vals)) if vals else 1.0)


# --------------------------------------------------------------------------- columns
def phot_columns(bands=("G", "R", "Z", "W1", "W2", "W3", "W4"), joint: bool = True) -> tuple:
    """``(name, dtype, unit, description)`` of the photometric columns for ``bands``; with
    ``joint`` also the columns only the joint spectrum + photometry fit fills
    (:mod:`cubefit.spectra.joint_phot`: ``PHOT_FLAG``, ``TAU_V_JOINT``, ``TAU_V_JOINT_IVAR``,
    ``RCHI2_CONT_JOINT``, ``NPIX_JOINT``)."""
    cols = [
        ("PHOTSYS", "U1", "", "Legacy Surveys photometric system: N (BASS/MzLS) or S (DECam)"),
        ("PHOT_STATUS", "i2", "", "Photometric fit status: 0 ok, 1 too few usable bands, 2 no "
                                  "positive model, 3 no photometry, 4 joint fit not possible"),
        ("PHOT_MESSAGE", "U160", "", "Why the photometric fit failed, or which bands were dropped"),
        ("NBAND_PHOT", "i2", "", "Number of photometric bands in the fit"),
        ("RCHI2_PHOT", "f8", "", "Chi^2 of the fit to the broadband photometry per fitted band"),
    ]
    if joint:
        cols += [
            ("PHOT_FLAG", "i2", "", "Bits: 1 a band outside the templates' range was dropped, 2 templates "
                                    "without flux in a red band were left out, 4 red bands were dropped to "
                                    "keep those templates"),
            ("TAU_V_JOINT", "f8", "", "Calzetti (2000) V-band optical depth of the joint spectrum + "
                                      "photometry fit"),
            ("TAU_V_JOINT_IVAR", "f8", "", "Inverse variance of TAU_V_JOINT (Monte Carlo; 0 when not run or "
                                           "when most refits end at TAU_V_JOINT = 0)"),
            ("RCHI2_CONT_JOINT", "f8", "", "Reduced chi^2 of the spectral pixels in the joint fit"),
            ("NPIX_JOINT", "i4", "", "Number of spectral pixels in the joint fit"),
        ]
    cols += [
        ("LOGMSTAR", "f8", "dex(solMass)", "log10 stellar mass (living stars + remnants; E-MILES, "
                                           "Salpeter-like IMF; default cosmology Planck18)"),
        ("LOGMSTAR_IVAR", "f8", "1/dex2", "Inverse variance of LOGMSTAR (Monte Carlo; 0 when not run)"),
        ("APERCORR", "f8", "", "Median aperture correction (total over spectrum-synthesised flux, g r z)"),
    ]
    cols += [(f"APERCORR_{b}", "f8", "", f"Aperture correction in the {b.lower()} band")
             for b in ("G", "R", "Z")]
    cols += [(f"FLUX_SYNTH_{b}", "f8", "nanomaggy", f"{b.lower()}-band flux (PHOTSYS system) synthesised from "
              "the Milky-Way-corrected spectrum") for b in ("G", "R", "Z")]
    cols += [(f"FLUX_SYNTH_PHOTMODEL_{b}", "f8", "nanomaggy",
              f"{b}-band flux of the best-fit photometric model (NaN when not modelled)") for b in bands]
    for label, _, shift in ABSMAG_BANDS:
        cols += [
            (absmag_name(label, shift), "f8", "mag", f"Absolute AB magnitude in {label} shifted to "
             f"z={shift:g}, from the nearest observed band"),
            (absmag_name(label, shift, "IVAR"), "f8", "mag-2", "Inverse variance of the absolute "
             "magnitude (0: synthesised from the model)"),
            (absmag_name(label, shift, "SYNTH"), "f8", "mag", f"Absolute AB magnitude in {label} "
             f"shifted to z={shift:g}, synthesised from the model"),
            (absmag_name(label, shift, "SYNTH_IVAR"), "f8", "mag-2", "Inverse variance of the "
             "synthesised absolute magnitude (Monte Carlo; 0 when not run)"),
            (absmag_name(label, shift, "KCORR"), "f8", "mag", f"K-correction used for {label} "
             f"shifted to z={shift:g}"),
        ]
    return tuple(cols)


def fastphot_columns(bands=("G", "R", "Z", "W1", "W2", "W3", "W4")) -> tuple:
    """:func:`phot_columns` plus the quantities a photometry-only fit measures itself."""
    extra = [
        ("TAU_V", "f8", "", "Calzetti (2000) V-band optical depth of the stellar continuum"),
        ("TAU_V_IVAR", "f8", "", "Inverse variance of TAU_V (Monte Carlo; 0 when not run)"),
        ("LOGAGE_LW", "f8", "dex", "V-light-weighted mean log10(age/yr)"),
        ("LOGAGE_LW_IVAR", "f8", "1/dex2", "Inverse variance of LOGAGE_LW"),
        ("LOGAGE_MW", "f8", "dex", "Mass-weighted mean log10(age/yr)"),
        ("LOGAGE_MW_IVAR", "f8", "1/dex2", "Inverse variance of LOGAGE_MW"),
        ("MH_LW", "f8", "dex", "V-light-weighted mean [M/H]"),
        ("MH_LW_IVAR", "f8", "1/dex2", "Inverse variance of MH_LW"),
        ("MH_MW", "f8", "dex", "Mass-weighted mean [M/H]"),
        ("MH_MW_IVAR", "f8", "1/dex2", "Inverse variance of MH_MW"),
    ]
    base = phot_columns(bands, joint=False)
    return base[:5] + tuple(extra) + base[5:]


PHOT_COLUMNS = phot_columns()
"""Photometric columns for the Legacy Surveys bands (joint fit and fastphot)."""
FASTPHOT_COLUMNS = fastphot_columns()
"""Columns of a ``fastphot`` catalogue's SPECPHOT table (plus TARGETID)."""


def mc_ivar(samples) -> float:
    """Inverse variance of Monte-Carlo ``samples`` (finite ones; 0 when fewer than two or no
    scatter: "not measured")."""
    s = np.asarray(samples, dtype=np.float64)
    s = s[np.isfinite(s)]
    if s.size < 2:
        return 0.0
    v = float(np.var(s, ddof=1))
    return 1.0 / v if v > 0 else 0.0


def _populations(sed: SEDTemplates, w) -> dict:
    """V-light- and mass-weighted mean log age (yr) and [M/H] of weights ``w (..., P)``
    (values of shape ``(...)``; NaN where unknown)."""
    w = np.asarray(w, dtype=np.float64)
    out = {}
    for kind, per, age, mh in (("LW", sed.lum_v, sed.logage_lw, sed.mh_lw),
                               ("MW", sed.masses, sed.logage_mw, sed.mh_mw)):
        if per is None:
            out[f"LOGAGE_{kind}"] = out[f"MH_{kind}"] = np.full(w.shape[:-1], np.nan)
            continue
        wt = w * per
        tot = wt.sum(axis=-1)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[f"LOGAGE_{kind}"] = np.where(tot > 0, (wt @ age) / tot, np.nan)
            out[f"MH_{kind}"] = np.where(tot > 0, (wt @ mh) / tot, np.nan)
    return out


def derived_row(fit: SEDFit, sed: SEDTemplates, phot, *, bands=None) -> dict:
    """The :data:`FASTPHOT_COLUMNS` values of one photometric fit (without APERCORR/FLUX_SYNTH,
    which need the spectrum).  ``phot``: the :class:`~cubefit.spectra.photometry.Photometry`
    that was fitted; ``bands`` the labels of the FLUX_SYNTH_PHOTMODEL columns."""
    bands = tuple(bands or ("G", "R", "Z", "W1", "W2", "W3", "W4"))
    row = {"PHOTSYS": phot.photsys, "PHOT_STATUS": fit.status, "NBAND_PHOT": fit.n_fit}
    notes = "; ".join(f"{b}: {why}" for b, why in fit.dropped.items() if why != "column absent")
    row["PHOT_MESSAGE"] = (fit.message or (f"dropped {notes}" if notes else ""))[:160]
    for b in bands:
        row[f"FLUX_SYNTH_PHOTMODEL_{b}"] = math.nan
    if fit.status != 0:
        return row
    for b, m in zip(phot.bands, fit.model_flux):
        if b in bands:
            row[f"FLUX_SYNTH_PHOTMODEL_{b}"] = float(m)
    row["RCHI2_PHOT"] = fit.chi2 / max(fit.n_fit, 1)
    row["TAU_V"] = fit.tau_v
    row["TAU_V_IVAR"] = mc_ivar(fit.monte_tau)
    mono = fit.monte_weights
    if sed.masses is not None:
        row["LOGMSTAR"] = math.log10(stellar_mass(fit.weights, sed.masses))
        with np.errstate(divide="ignore"):
            row["LOGMSTAR_IVAR"] = mc_ivar(np.log10(mono @ sed.masses)) if len(mono) else 0.0
    pops, pops_mc = _populations(sed, fit.weights), _populations(sed, mono)
    for k, v in pops.items():
        row[k] = float(v)
        row[f"{k}_IVAR"] = mc_ivar(pops_mc[k])
    dm = 5.0 * math.log10(fit.dl_cm / (10 * PC_CM))
    synth = synth_absmag(sed, fit.weights, fit.tau_v)
    ok = fit.fitted
    kc, am, amiv = kcorrect(fit.z, dm, [f for f, g in zip(phot.filters, ok) if g], phot.flux[ok],
                            phot.ivar_stat[ok], fit.model_flux[ok], synth)
    synth_mc = synth_absmag(sed, mono, fit.monte_tau) if len(mono) else None
    for i, (label, _, shift) in enumerate(ABSMAG_BANDS):
        row[absmag_name(label, shift)] = am[i]
        row[absmag_name(label, shift, "IVAR")] = amiv[i]
        row[absmag_name(label, shift, "SYNTH")] = synth[i]
        row[absmag_name(label, shift, "SYNTH_IVAR")] = mc_ivar(synth_mc[:, i]) if synth_mc is not None else 0.0
        row[absmag_name(label, shift, "KCORR")] = kc[i]
    return row
