"""Milky-Way (foreground) dust correction of observed spectra.

The Galactic extinction curve is Fitzpatrick (1999) with ``R_V = 3.1`` (the curve
DESI's own pipelines use), taken from the maintained ``dust_extinction`` package.
A spectrum observed through a foreground screen of colour excess ``E(B-V)`` is
``f_obs = f_true · T(λ)`` with the transmission ``T(λ) = 10^(-0.4 · k(λ) · E(B-V))``
and ``k(λ) = A(λ)/E(B-V)``; the correction divides the flux by ``T`` and multiplies
the inverse variance by ``T²`` (so the signal-to-noise of every pixel is unchanged).
"""
from __future__ import annotations

import numpy as np

from .data import Camera

__all__ = ["mw_transmission", "deredden_camera"]

DEFAULT_RV = 3.1


def mw_transmission(wave, ebv: float, rv: float = DEFAULT_RV) -> np.ndarray:
    """Milky-Way transmission ``T(λ)`` (dimensionless, ≤ 1 for ``ebv ≥ 0``).

    ``wave`` : observed vacuum wavelengths in Å, any shape, within the curve's
    validity (1000–33 333 Å); ``ebv`` : E(B-V) in magnitudes; ``rv`` : R_V.
    Raises ``ValueError`` for a non-finite or negative E(B-V) or wavelengths outside
    the curve's range.
    """
    import astropy.units as u
    from dust_extinction.parameter_averages import F99

    ebv = float(ebv)
    if not np.isfinite(ebv) or ebv < 0:
        raise ValueError(f"E(B-V) = {ebv!r} mag: expected a finite, non-negative colour excess "
                         "(the FIBERMAP's EBV column or your own value)")
    w = np.asarray(wave, dtype=np.float64)
    if ebv == 0.0:
        return np.ones_like(w)
    model = F99(Rv=rv)
    lo, hi = (1e4 / x for x in model.x_range[::-1])            # x_range is 1/µm
    if np.nanmin(w) < lo or np.nanmax(w) > hi:
        raise ValueError(f"Milky-Way correction: wavelengths {np.nanmin(w):.1f}–{np.nanmax(w):.1f} Å "
                         f"leave the Fitzpatrick (1999) curve's range {lo:.0f}–{hi:.0f} Å; "
                         "give observed-frame wavelengths in Å")
    return np.asarray(model.extinguish(w * u.AA, Ebv=ebv), dtype=np.float64)


def deredden_camera(camera: Camera, ebv: float, rv: float = DEFAULT_RV) -> Camera:
    """A new :class:`Camera` with flux divided by ``T(λ)`` and ivar multiplied by ``T²``."""
    t = mw_transmission(camera.wave, ebv, rv)
    return Camera(name=camera.name, wave=camera.wave, flux=camera.flux / t, ivar=camera.ivar * t**2,
                  resolution=camera.resolution)
