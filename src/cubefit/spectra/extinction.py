"""Milky-Way (foreground) dust correction of observed spectra.

The Galactic extinction curve is Fitzpatrick (1999) with ``R_V = 3.1``, taken from the
maintained ``dust_extinction`` package, on the Schlafly & Finkbeiner (2011)
recalibration of the Schlegel, Finkbeiner & Davis (1998, SFD) E(B-V) map — DESI's own
convention (``desiutil.dust``; the FIBERMAP's ``EBV`` column is SFD's value):

    A(λ) = 1.029 · E(B-V)_SFD · k(λ) / k(1 µm),      k(λ) = A(λ)/E(B-V) of F99,

which uses only monochromatic extinctions and amounts to ``0.881 · k(λ) · E(B-V)_SFD``
at R_V = 3.1 (close to the "0.86 × SFD" of that paper's abstract).  The broadband
corrections of the photometry (:func:`cubefit.spectra.photometry.mw_coefficient`)
integrate the same curve over each filter, so the spectrum and the photometry are
corrected alike (DECam g, r, z: 3.241, 2.166, 1.212 mag per mag of E(B-V)_SFD, within
1 % of DESI's published 3.212, 2.164, 1.211).

A spectrum observed through a foreground screen is ``f_obs = f_true · T(λ)`` with the
transmission ``T(λ) = 10^(-0.4 · A(λ))``; the correction divides the flux by ``T`` and
multiplies the inverse variance by ``T²`` (so the signal-to-noise of every pixel is
unchanged).
"""
from __future__ import annotations

import functools

import numpy as np

from .data import Camera

__all__ = ["mw_transmission", "mw_extinction_curve", "sfd_recalibration", "deredden_camera",
           "DEFAULT_RV", "SF11_A1MICRON"]

DEFAULT_RV = 3.1
SF11_A1MICRON = 1.029
"""A(1 µm) per unit SFD E(B-V) in the Schlafly & Finkbeiner (2011) calibration (desiutil)."""


def _f99(rv: float):
    from dust_extinction.parameter_averages import F99
    return F99(Rv=rv)


@functools.lru_cache(maxsize=16)
def sfd_recalibration(rv: float = DEFAULT_RV) -> float:
    """``1.029 / k(1 µm)``: the factor turning the F99 curve per unit true E(B-V) into
    extinction per unit SFD E(B-V) (0.881 at R_V = 3.1)."""
    import astropy.units as u
    k1 = float(_f99(rv)(1e4 * u.AA)) * rv                       # A(1 µm)/A_V · R_V = A/E(B-V)
    return SF11_A1MICRON / k1


def mw_extinction_curve(wave, rv: float = DEFAULT_RV) -> np.ndarray:
    """``A(λ) / E(B-V)_SFD`` (mag per mag) at observed vacuum wavelengths ``wave`` (Å, any
    shape, 1000–33 333 Å; module docstring).  Raises ``ValueError`` outside that range."""
    import astropy.units as u
    w = np.asarray(wave, dtype=np.float64)
    model = _f99(rv)
    lo, hi = (1e4 / x for x in model.x_range[::-1])            # x_range is 1/µm
    if w.size and (np.nanmin(w) < lo or np.nanmax(w) > hi):
        raise ValueError(f"Milky-Way correction: wavelengths {np.nanmin(w):.1f}–{np.nanmax(w):.1f} Å "
                         f"leave the Fitzpatrick (1999) curve's range {lo:.0f}–{hi:.0f} Å; "
                         "give observed-frame wavelengths in Å")
    return np.asarray(model(w * u.AA), dtype=np.float64) * rv * sfd_recalibration(rv)


def mw_transmission(wave, ebv: float, rv: float = DEFAULT_RV) -> np.ndarray:
    """Milky-Way transmission ``T(λ) = 10^(-0.4 A(λ))`` (dimensionless, ≤ 1 for ``ebv ≥ 0``).

    ``wave`` : observed vacuum wavelengths in Å, any shape, within the curve's
    validity (1000–33 333 Å); ``ebv`` : SFD E(B-V) in magnitudes (the DESI FIBERMAP's
    ``EBV``; module docstring); ``rv`` : R_V.  Raises ``ValueError`` for a non-finite
    or negative E(B-V) or wavelengths outside the curve's range.
    """
    ebv = float(ebv)
    if not np.isfinite(ebv) or ebv < 0:
        raise ValueError(f"E(B-V) = {ebv!r} mag: expected a finite, non-negative colour excess "
                         "(the FIBERMAP's EBV column or your own value)")
    curve = mw_extinction_curve(wave, rv)
    if ebv == 0.0:
        return np.ones_like(curve)
    return 10.0 ** (-0.4 * ebv * curve)


def deredden_camera(camera: Camera, ebv: float, rv: float = DEFAULT_RV) -> Camera:
    """A new :class:`Camera` with flux divided by ``T(λ)`` and ivar multiplied by ``T²``."""
    t = mw_transmission(camera.wave, ebv, rv)
    return Camera(name=camera.name, wave=camera.wave, flux=camera.flux / t, ivar=camera.ivar * t**2,
                  resolution=camera.resolution)
