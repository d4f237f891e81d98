"""The SED panel of the per-target QA figure: photometry, its model and the spectrum.

:func:`plot_sed` draws, in AB magnitudes against observed wavelength (µm, log scale):
the best-fit model SED (observed frame, attenuated), the observed photometry with
1σ error bars (fitted bands filled, dropped bands open), the model's fluxes in the
bands (squares) and, if given, the spectrum scaled by its aperture correction.
:func:`plot_joint_sed` draws the same panel for the joint spectrum + photometry fit of
``fastspec --phot`` (:class:`cubefit.spectra.joint_phot.PhotResult`).
"""
from __future__ import annotations

import math

import numpy as np

from .filters import AB_FNU_CGS, C_ANGSTROM_S, effective_wavelengths, nanomaggies_to_mag
from .sed import L_SUN_ERG_S, SEDFit, SEDTemplates

__all__ = ["plot_sed", "plot_joint_sed", "model_sed_mag"]


def _flam_to_ab(lam, flam_cgs):
    fnu = flam_cgs * lam**2 / C_ANGSTROM_S
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(fnu > 0, -2.5 * np.log10(np.where(fnu > 0, fnu, 1.0) / AB_FNU_CGS), np.nan)


def model_sed_mag(fit: SEDFit, sed: SEDTemplates) -> tuple[np.ndarray, np.ndarray]:
    """``(observed wavelength Å, AB magnitude per unit frequency)`` of the best-fit model."""
    z = fit.z
    rest = (fit.weights @ sed.flux) * np.exp(-fit.tau_v * sed.kdust)
    flam = rest * L_SUN_ERG_S / (4 * math.pi * fit.dl_cm**2 * (1 + z))
    lam = sed.lam * (1 + z)
    return lam, _flam_to_ab(lam, flam)


def plot_sed(ax, phot, fit: SEDFit, sed: SEDTemplates, *, spectrum=None, apercorr: float = 1.0,
             flux_unit: float = 1e-17, title: str | None = None):
    """Draw the SED panel on matplotlib axes ``ax`` and return ``ax``.

    ``phot`` the fitted :class:`~cubefit.spectra.photometry.Photometry`, ``fit`` its
    :class:`~cubefit.spectra.sed.SEDFit`, ``sed`` the templates; ``spectrum`` an optional
    :class:`~cubefit.spectra.data.Spectrum` (observed frame, flux in ``flux_unit``
    erg s⁻¹ cm⁻² Å⁻¹) drawn times ``apercorr``.
    """
    lam_b = effective_wavelengths(phot.filters) if phot.n else np.zeros(0)
    if fit.status == 0:
        lam, mag = model_sed_mag(fit, sed)
        ax.plot(lam / 1e4, mag, color="0.5", lw=0.8, label="model SED", zorder=1)
        good = np.isfinite(fit.model_flux)
        ax.plot(lam_b[good] / 1e4, nanomaggies_to_mag(fit.model_flux[good]), "s", mfc="none", color="tab:blue",
                ms=8, label="model photometry", zorder=3)
    if spectrum is not None:
        for cam in spectrum.cameras:
            ok = np.asarray(cam.ivar) > 0
            w = np.asarray(cam.wave)[ok]
            ax.plot(w / 1e4, _flam_to_ab(w, apercorr * flux_unit * np.asarray(cam.flux)[ok]), color="tab:orange",
                    lw=0.4, alpha=0.7, zorder=2, label=None)
    if phot.n:
        mag = nanomaggies_to_mag(phot.flux)
        with np.errstate(divide="ignore", invalid="ignore"):
            err = 2.5 / math.log(10) / (phot.flux * np.sqrt(phot.ivar))
        used = np.asarray(fit.fitted, dtype=bool)
        for sel, style, label in ((used, "o", "photometry (fitted)"), (~used, "o", "photometry (not fitted)")):
            if sel.any():
                ax.errorbar(lam_b[sel] / 1e4, mag[sel], yerr=err[sel], fmt=style, color="k", ms=5,
                            mfc="k" if label.endswith("(fitted)") else "none", label=label, zorder=4)
    ax.set_xscale("log")
    ax.set_xlabel("observed wavelength (µm)")
    ax.set_ylabel("AB magnitude")
    finite = [m for m in (nanomaggies_to_mag(phot.flux) if phot.n else []) if np.isfinite(m)]
    if finite:
        ax.set_ylim(max(finite) + 1.5, min(finite) - 1.5)
    else:
        ax.invert_yaxis()
    ax.set_xlim(0.3, 6.0)
    if title is None and fit.status == 0:
        title = f"z = {fit.z:.4f}, τ_V = {fit.tau_v:.2f}, χ²/band = {fit.chi2 / max(fit.n_fit, 1):.2f}"
    if title:
        ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    return ax


def plot_joint_sed(ax, result, ph=None, spectrum=None, *, flux_unit: float = 1e-17):
    """The SED panel of the QA figure for a joint fit: ``result`` a
    :class:`~cubefit.spectra.joint_phot.PhotResult`, ``ph`` its photometry (default
    ``result.photometry``), ``spectrum`` the fitted
    :class:`~cubefit.spectra.data.Spectrum` (drawn times ``APERCORR``).  A result
    without photometry gets its message written in the panel.  Returns ``ax``."""
    ph = ph if ph is not None else result.photometry
    if ph is None or result.fit is None or result.sed is None:
        ax.text(0.5, 0.5, f"no SED fit: {result.message}"[:90], ha="center", va="center",
                transform=ax.transAxes, fontsize=8, wrap=True)
        ax.set_axis_off()
        return ax
    apercorr = result.apercorr if np.isfinite(result.apercorr) else 1.0
    dof = result.dof_spec if result.dof_spec > 0 else 1
    title = (f"z = {result.z:.4f}, τ_V = {result.tau_v:.2f}, χ²/dof spectrum {result.chi2_spec / dof:.2f}, "
             f"χ²/band {result.chi2_phot / max(result.fit.n_fit, 1):.2f}, APERCORR {apercorr:.2f}")
    return plot_sed(ax, ph, result.fit, result.sed, spectrum=spectrum, apercorr=apercorr, flux_unit=flux_unit,
                    title=title)
