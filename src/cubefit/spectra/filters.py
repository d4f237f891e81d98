"""Broadband filters and synthetic AB photometry (nanomaggies).

Filter response curves come from the ``speclite`` package, which ships them inside
the wheel (no download at run time).  The Legacy Surveys photometry that DESI
FIBERMAPs carry uses two optical systems, chosen by the target's ``PHOTSYS``:

* ``N`` (north, Dec ≳ 32.375°): BASS g, r (``BASS-g``, ``BASS-r``) and MzLS z (``MzLS-z``);
* ``S`` (south): DECam g, r, z (``decam2014-g/r/z``);

and WISE W1–W4 (``wise2010-W1`` … ``W4``) for both.

Synthetic photometry (AB system, Oke & Gunn 1983), for a flux density ``f_λ`` at
observed wavelengths ``λ`` and a photon-counting response ``R(λ)``::

    maggies = ∫ f_λ R λ dλ  /  ∫ f_λ^AB R λ dλ,      f_λ^AB = 3631 Jy · c / λ²

and ``nanomaggies = 1e9 · maggies`` (AB magnitude ``m = 22.5 − 2.5 log10(nanomaggies)``).
:func:`synth_nanomaggies` evaluates it with speclite (linear interpolation of both
curves, trapezoid rule); :func:`band_matrix` builds the same integral as a matrix
``W (n_band, n_pix)`` on a fixed wavelength grid, so that ``W @ f`` gives the fluxes of
many spectra at once (the fitter's template photometry).
"""
from __future__ import annotations

import functools

import numpy as np

__all__ = ["BANDS", "OPTICAL_BANDS", "WISE_BANDS", "PHOTSYS_FILTERS", "WISE_FILTERS", "filter_names",
           "load_filters", "filter_curve", "effective_wavelengths", "synth_nanomaggies", "band_matrix",
           "band_support", "nanomaggies_to_mag", "mag_to_nanomaggies", "AB_FNU_CGS", "C_ANGSTROM_S"]

OPTICAL_BANDS = ("G", "R", "Z")
WISE_BANDS = ("W1", "W2", "W3", "W4")
BANDS = OPTICAL_BANDS + WISE_BANDS
"""Band labels of the Legacy Surveys photometry, in wavelength order (column suffixes of
the DESI FIBERMAP: ``FLUX_G``, ``FLUX_IVAR_W1``, ...)."""

PHOTSYS_FILTERS = {
    "N": {"G": "BASS-g", "R": "BASS-r", "Z": "MzLS-z"},
    "S": {"G": "decam2014-g", "R": "decam2014-r", "Z": "decam2014-z"},
}
"""speclite names of the optical filters of each Legacy Surveys photometric system."""

WISE_FILTERS = {b: f"wise2010-{b}" for b in WISE_BANDS}

AB_FNU_CGS = 3631e-23
"""AB zero-point flux density, erg s⁻¹ cm⁻² Hz⁻¹ (3631 Jy)."""
C_ANGSTROM_S = 2.99792458e18
"""Speed of light in Å/s."""


def filter_names(photsys: str, bands=BANDS) -> list[str]:
    """speclite filter names of ``bands`` (labels from :data:`BANDS`) for ``photsys``
    (``'N'`` or ``'S'``; bytes accepted).  Raises ``ValueError`` naming the fix."""
    ps = photsys.decode() if isinstance(photsys, bytes) else str(photsys)
    ps = ps.strip().upper()
    out = []
    for b in bands:
        b = str(b).upper()
        if b in WISE_FILTERS:
            out.append(WISE_FILTERS[b])
        elif b in OPTICAL_BANDS:
            if ps not in PHOTSYS_FILTERS:
                raise ValueError(f"PHOTSYS={photsys!r}: expected 'N' (BASS/MzLS) or 'S' (DECam) to choose "
                                 f"the optical filters of band {b}")
            out.append(PHOTSYS_FILTERS[ps][b])
        else:
            raise ValueError(f"band {b!r}: expected one of {', '.join(BANDS)}")
    return out


@functools.lru_cache(maxsize=64)
def _load(names: tuple):
    import speclite.filters
    try:
        return speclite.filters.load_filters(*names)
    except (ValueError, OSError) as exc:
        raise ValueError(f"filters {list(names)}: speclite cannot load them ({exc}); names look like "
                         "'decam2014-g', 'BASS-r', 'MzLS-z', 'wise2010-W1', 'sdss2010-r', 'bessell-V'") from None


def load_filters(names):
    """A ``speclite.filters.FilterSequence`` of ``names`` (cached per process)."""
    return _load(tuple(str(n) for n in names))


@functools.lru_cache(maxsize=128)
def _curve(name: str, band_shift: float):
    f = load_filters([name])[0]
    lam = np.asarray(f.wavelength, dtype=np.float64) / (1.0 + band_shift)
    resp = np.asarray(f.response, dtype=np.float64)
    # AB denominator ∫ f_AB R λ dλ = 3631 Jy · c · ∫ R/λ dλ on the curve's own grid.
    norm = AB_FNU_CGS * C_ANGSTROM_S * np.trapezoid(resp / lam, lam)
    return lam, resp, norm


def filter_curve(name: str, band_shift: float = 0.0):
    """``(wavelength Å, response, ab_norm)`` of a speclite filter, optionally blue-shifted
    to rest-frame redshift ``band_shift`` (wavelengths divided by ``1 + band_shift``, as
    speclite's ``create_shifted``); ``ab_norm`` = ∫ f_λ^AB R λ dλ in erg s⁻¹ cm⁻²
    (times the photon-counting constant the numerator shares)."""
    return _curve(str(name), float(band_shift))


def effective_wavelengths(names, band_shift: float = 0.0) -> np.ndarray:
    """Effective wavelengths (Å) ``∫ R λ² dλ / ∫ R λ dλ`` of ``names`` (photon-weighted mean
    wavelength, as speclite's ``effective_wavelength``)."""
    out = []
    for n in names:
        lam, r, _ = filter_curve(n, band_shift)
        out.append(np.trapezoid(r * lam**2, lam) / np.trapezoid(r * lam, lam))
    return np.array(out)


def band_support(names, band_shift: float = 0.0, threshold: float = 0.0) -> np.ndarray:
    """``(n_band, 2)`` wavelength range (Å) where each response exceeds ``threshold`` × its peak
    (``threshold=0``: the whole tabulated curve)."""
    out = []
    for n in names:
        lam, r, _ = filter_curve(n, band_shift)
        keep = r > threshold * r.max()
        out.append((lam[keep][0], lam[keep][-1]))
    return np.array(out)


def synth_nanomaggies(wave, flux, names, *, flux_unit: float = 1e-17, pad: bool = False) -> np.ndarray:
    """AB fluxes in nanomaggies of spectra ``flux`` through the filters ``names`` (speclite).

    ``wave (npix,)`` observed wavelengths in Å (increasing); ``flux (..., npix)`` flux density
    per Å in units of ``flux_unit`` erg s⁻¹ cm⁻² Å⁻¹ (DESI/SDSS: 1e-17); returns
    ``(..., n_band)``.  The spectrum must cover each filter's response unless ``pad``: then
    it is extended with its edge values (speclite's ``pad_spectrum``, ``method='edge'``),
    which is what a fibre spectrum needs for a z band reaching beyond 9800 Å.
    Raises ``ValueError`` when a filter is not covered and ``pad`` is False.
    """
    import astropy.units as u
    wave = np.asarray(wave, dtype=np.float64)
    flux = np.asarray(flux, dtype=np.float64)
    if wave.ndim != 1 or flux.shape[-1] != wave.size:
        raise ValueError(f"synth_nanomaggies: wave must be (npix,) and flux (..., npix); got {wave.shape} "
                         f"and {flux.shape}")
    seq = load_filters(names)
    flam = flux * flux_unit
    w = wave
    if pad:
        flam, w = seq.pad_spectrum(flam, w, method="edge")
        w = np.asarray(getattr(w, "value", w), dtype=np.float64)
    else:
        sup = band_support(names)
        bad = [n for n, (lo, hi) in zip(names, sup) if lo < wave[0] or hi > wave[-1]]
        if bad:
            raise ValueError(f"the spectrum ({wave[0]:.0f}–{wave[-1]:.0f} Å) does not cover the filters "
                             f"{bad}; extend it or pass pad=True to pad it with its edge values")
    unit = u.erg / (u.s * u.cm**2 * u.AA)
    tab = seq.get_ab_maggies(np.asarray(flam) * unit, w * u.AA)
    out = 1e9 * np.stack([np.asarray(tab[n], dtype=np.float64) for n in seq.names], axis=-1)
    return out.reshape(flux.shape[:-1] + (len(seq.names),))


def band_matrix(wave, names, *, flux_unit: float = 1e-17, band_shift: float = 0.0,
                require_coverage: bool = True) -> np.ndarray:
    """``W (n_band, npix)`` such that ``W @ flux`` are the AB fluxes in nanomaggies.

    ``wave (npix,)`` increasing wavelengths in Å where ``flux`` (per Å, in ``flux_unit``
    erg s⁻¹ cm⁻² Å⁻¹) is sampled; the response is linearly interpolated onto ``wave`` and
    the numerator integrated with the trapezoid rule on ``wave`` (the grid should resolve
    the filter: a few pixels across its edges).  With ``require_coverage`` a filter whose
    response reaches beyond ``wave`` raises ``ValueError``; otherwise the uncovered part is
    left out (the caller flags such bands).
    """
    wave = np.asarray(wave, dtype=np.float64)
    if wave.ndim != 1 or wave.size < 2 or np.any(np.diff(wave) <= 0):
        raise ValueError(f"band_matrix: wave must be a strictly increasing 1-D grid (Å), got shape {wave.shape}")
    # Trapezoid weights of each sample on the (non-uniform) grid.
    tw = np.empty_like(wave)
    d = np.diff(wave)
    tw[0], tw[-1] = d[0] / 2, d[-1] / 2
    tw[1:-1] = (d[1:] + d[:-1]) / 2
    out = np.zeros((len(names), wave.size))
    for i, n in enumerate(names):
        lam, r, norm = filter_curve(n, band_shift)
        if require_coverage and (lam[r > 0][0] < wave[0] or lam[r > 0][-1] > wave[-1]):
            raise ValueError(f"filter {n}{'' if not band_shift else f' shifted to z={band_shift}'} "
                             f"({lam[0]:.0f}–{lam[-1]:.0f} Å) is not covered by the grid "
                             f"{wave[0]:.0f}–{wave[-1]:.0f} Å")
        lo, hi = np.searchsorted(wave, [lam[0], lam[-1]])
        sl = slice(max(lo - 1, 0), min(hi + 1, wave.size))
        resp = np.interp(wave[sl], lam, r, left=0.0, right=0.0)
        out[i, sl] = 1e9 * flux_unit * resp * wave[sl] * tw[sl] / norm
    return out


def nanomaggies_to_mag(nmgy) -> np.ndarray:
    """AB magnitude ``22.5 − 2.5 log10(nmgy)`` (NaN for non-positive fluxes)."""
    f = np.asarray(nmgy, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(f > 0, 22.5 - 2.5 * np.log10(np.where(f > 0, f, 1.0)), np.nan)


def mag_to_nanomaggies(mag) -> np.ndarray:
    """Nanomaggies of an AB magnitude."""
    return 10.0 ** (-0.4 * (np.asarray(mag, dtype=np.float64) - 22.5))
