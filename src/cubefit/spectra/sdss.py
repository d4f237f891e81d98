"""SDSS/BOSS ``spec-PLATE-MJD-FIBER.fits`` files (one spectrum each).

HDU ``COADD``: ``loglam`` (log10 of the vacuum wavelength in Å, uniform steps of
1e-4 dex), ``flux`` (1e-17 erg s⁻¹ cm⁻² Å⁻¹), ``ivar``, ``and_mask`` (non-zero: bad in
every exposure) and ``wdisp`` (the Gaussian σ of the line spread in units of the
1e-4 dex pixel).  HDU ``SPECOBJ``: the pipeline's redshift ``Z``, ``ZWARNING``,
``CLASS``, ``SPECOBJID``, ``PLUG_RA``/``PLUG_DEC``, ``SURVEY``, ``PROGRAMNAME``.

SDSS spectra are not corrected for Milky-Way dust; ``ebv`` (mag) asks for it.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from .data import FWHM_PER_SIGMA, Resolution
from .io import (STATUS_BAD_VALUES, STATUS_NO_GOOD_PIXELS, InputError, SelectedFile, TargetProblem,
                 bad_pixel_message, clean_camera, finish_spectrum)

__all__ = ["is_sdss", "read_sdss"]


def is_sdss(path) -> bool:
    """True if ``path`` is a FITS file whose ``COADD`` table has a ``loglam`` column."""
    from astropy.io import fits
    try:
        with fits.open(path) as hdul:
            return "COADD" in hdul and "loglam" in [c.lower() for c in hdul["COADD"].columns.names]
    except (OSError, AttributeError):
        return False


def _log_grid(loglam: np.ndarray) -> np.ndarray:
    """The uniform log10 grid the float32 ``loglam`` column rounds, in float64 (the
    column's own values if they are not uniform)."""
    i = np.arange(loglam.size, dtype=np.float64)
    b, a = np.polyfit(i, loglam.astype(np.float64), 1)
    fit = a + b * i
    return fit if np.max(np.abs(fit - loglam)) < 1e-6 else loglam.astype(np.float64)


def _specobjid(value) -> int:
    text = (value.decode() if isinstance(value, bytes) else str(value)).strip()
    try:
        v = int(text)
    except ValueError:
        return -1
    return v if 0 <= v < 2**63 else -1


def read_sdss(path, *, z: float | None = None, ebv: float = 0.0) -> SelectedFile:
    """Select the one target of an SDSS ``spec-*.fits`` file.

    ``z`` overrides the pipeline redshift (SPECOBJ ``Z``); TARGETID is the SPECOBJID.
    The resolution is a per-pixel Gaussian FWHM from ``wdisp`` when the column is there.
    """
    from astropy.io import fits
    path = Path(path)
    try:
        hdul = fits.open(path)
    except OSError as exc:
        raise InputError(f"{path}: cannot read it as FITS ({exc})") from None
    with hdul:
        if "COADD" not in hdul:
            raise InputError(f"{path}: no COADD HDU, so this is not an SDSS spec-*.fits file")
        c = hdul["COADD"].data
        names = {n.lower(): n for n in c.columns.names}
        for need in ("loglam", "flux", "ivar"):
            if need not in names:
                raise InputError(f"{path}: COADD has no {need} column; is it an SDSS spec-*.fits file?")
        loglam = _log_grid(np.asarray(c[names["loglam"]]))
        flux = np.asarray(c[names["flux"]], dtype=np.float64)
        ivar = np.asarray(c[names["ivar"]], dtype=np.float64)
        mask = np.asarray(c[names["and_mask"]]) if "and_mask" in names else None
        wdisp = np.asarray(c[names["wdisp"]], dtype=np.float64) if "wdisp" in names else None
        so = hdul["SPECOBJ"].data[0] if "SPECOBJ" in hdul else None
    if z is None:
        if so is None:
            raise InputError(f"{path}: no SPECOBJ HDU with the redshift; give it (--input-redshifts, "
                             "or z= in Python)")
        z = float(so["Z"])
    wave = 10.0 ** loglam

    def get(key, default):
        return so[key] if so is not None and key in so.array.names else default

    def text(key):
        v = get(key, "")
        return (v.decode() if isinstance(v, bytes) else str(v)).strip()

    targetid = _specobjid(get("SPECOBJID", ""))
    meta = {"TARGETID": targetid, "SURVEY": text("SURVEY"), "PROGRAM": text("PROGRAMNAME"),
            "RA": float(get("PLUG_RA", np.nan)), "DEC": float(get("PLUG_DEC", np.nan)),
            "Z": float(z), "Z_RR": float(get("Z", z)), "ZWARN": int(get("ZWARNING", 0)),
            "SPECTYPE": text("CLASS"), "EBV": float(ebv), "INPUT_FILE": path.name}
    res = None
    if wdisp is not None:
        dlnlam = (loglam[-1] - loglam[0]) / (loglam.size - 1) * math.log(10.0)
        fwhm = FWHM_PER_SIGMA * wdisp * dlnlam * wave
        ok = np.isfinite(fwhm) & (fwhm > 0)
        if ok.any():
            # wdisp is 0 where no exposure covered the pixel: carry the neighbours' value
            res = Resolution.from_fwhm(np.interp(wave, wave[ok], fwhm[ok]), wave)

    def reader(*, edge_pixels, uncertainty_floor, rv):
        why = bad_pixel_message("sdss", wave, flux, ivar)
        if why:
            yield TargetProblem(targetid, STATUS_BAD_VALUES,
                                f"{path}: target {targetid}: {why}; set ivar = 0 at those pixels")
            return
        cam = clean_camera("sdss", wave, flux, ivar, mask, res, edge_pixels=edge_pixels,
                           uncertainty_floor=uncertainty_floor)
        if cam is None:
            yield TargetProblem(targetid, STATUS_NO_GOOD_PIXELS,
                                f"{path}: target {targetid}: every pixel is masked (ivar = 0 or "
                                "and_mask != 0); nothing to fit")
            return
        yield finish_spectrum([cam], z=z, targetid=targetid, ebv=ebv, rv=rv, meta={"file": str(path)})

    return SelectedFile(path=path, kind="sdss", cameras=["sdss"], meta=[meta], header={}, reader=reader)
