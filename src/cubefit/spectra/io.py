"""Reading survey spectra: what every reader shares, and generic inputs.

* :class:`InputError` — a problem with a whole input file (missing coadd, unknown
  TARGETID, unreadable layout): the run stops before any output is written.
* :class:`TargetProblem` — a problem with one target (no usable pixel, corrupt
  values): the target gets a catalogue row with this status (the fitter's
  :data:`cubefit.spectra.model.STATUS` codes) and message.
* :class:`SelectedFile` — one input file after target selection (metadata rows,
  header facts), read target by target with :meth:`SelectedFile.spectra`.
* :func:`clean_camera` — the per-camera clean-up every reader applies: drop a
  camera with no inverse variance, zero the inverse variance of masked pixels and of
  the first and last few pixels, add a fractional error floor.
* :func:`spectrum_from_arrays` and :func:`read_table` — generic 1-D spectra.

Units: wavelengths in Å (observed frame), flux densities per Å in the file's unit
(DESI and SDSS: 1e-17 erg s⁻¹ cm⁻² Å⁻¹), ``ivar`` the inverse variance of the flux.
Spectra declared in air are moved to vacuum wavelengths with
:func:`cubefit.spectra.data.air_to_vacuum` (IAU standard formula).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from .data import Camera, Resolution, Spectrum, air_to_vacuum
from .extinction import DEFAULT_RV, deredden_camera
from .model import STATUS

__all__ = ["InputError", "TargetProblem", "SelectedFile", "STATUS_NO_GOOD_PIXELS",
           "STATUS_BAD_VALUES", "clean_camera", "spectrum_from_arrays", "read_table", "header_dependency"]

STATUS_NO_GOOD_PIXELS = STATUS["no_pixels"]
"""Row status: every camera of the target is fully masked (no pixel with ivar > 0)."""
STATUS_BAD_VALUES = STATUS["bad_input"]
"""Row status: the target's pixels hold NaN/inf flux or ivar, or a negative ivar."""


class InputError(ValueError):
    """A problem with an input file as a whole; the message names the file and the fix."""


@dataclass
class TargetProblem:
    """A target that cannot be fitted, found while reading it."""

    targetid: int
    status: int
    message: str


@dataclass
class SelectedFile:
    """One input file after target selection.

    ``path`` : the file named by the user (Redrock file, SDSS ``spec-*.fits``, table);
    ``kind`` : ``"desi"``, ``"sdss"`` or ``"table"``; ``cameras`` : the camera names
    its spectra can have (``b``, ``r``, ``z`` for DESI); ``meta`` : one
    :data:`cubefit.spectra.catalog.METADATA_COLUMNS` row (dict) per selected target, in
    fitting order; ``header`` : file-level facts for the catalogue's primary header
    (e.g. ``SPECPROD``); ``reader`` : called with the clean-up settings, yields one
    :class:`Spectrum` or :class:`TargetProblem` per selected target, in order;
    ``photometry`` : the file carries broadband photometry of its targets (a DESI
    FIBERMAP with Legacy Surveys fluxes; each Spectrum's ``meta["fibermap"]`` row).
    """

    path: Path
    kind: str
    cameras: list[str]
    meta: list[dict]
    header: dict = field(default_factory=dict)
    reader: Callable[..., Iterator[Spectrum | TargetProblem]] | None = None
    photometry: bool = False

    @property
    def ntargets(self) -> int:
        return len(self.meta)

    def spectra(self, *, edge_pixels: int = 3, uncertainty_floor: float = 0.01,
                rv: float = DEFAULT_RV) -> Iterator[Spectrum | TargetProblem]:
        """Each selected target's spectrum (cleaned, Milky-Way corrected, vacuum λ)."""
        return self.reader(edge_pixels=edge_pixels, uncertainty_floor=uncertainty_floor, rv=rv)


# --------------------------------------------------------------------------- clean-up
def bad_pixel_message(name: str, wave, flux, ivar) -> str | None:
    """Why the pixels of camera ``name`` are unusable as numbers, or None if they are fine.

    Bad: a non-finite or negative ``ivar``, or a non-finite ``flux`` where ``ivar > 0``
    (a non-finite flux with ``ivar = 0`` is a masked pixel and harmless).
    """
    with np.errstate(invalid="ignore"):
        bad = ~np.isfinite(ivar) | (ivar < 0) | (~np.isfinite(flux) & (ivar > 0))
    if not bad.any():
        return None
    i = int(np.flatnonzero(bad)[0])
    return (f"camera {name}: {int(bad.sum())} pixel(s) with NaN/inf flux or ivar or negative ivar "
            f"(first at {wave[i]:.2f} A: flux={flux[i]!r}, ivar={ivar[i]!r})")


def clean_camera(name: str, wave, flux, ivar, mask=None, resolution: Resolution | None = None, *,
                 edge_pixels: int = 3, uncertainty_floor: float = 0.01) -> Camera | None:
    """One camera ready to fit, or None when it has no usable pixel.

    ``mask`` (npix,) non-zero marks bad pixels (their ivar becomes 0, even where the
    pipeline left it positive); the first and last ``edge_pixels`` pixels are masked
    too; a fractional floor ``uncertainty_floor × |flux|`` is added in quadrature to
    the noise of every unmasked pixel.  Call :func:`bad_pixel_message` first: this
    function assumes finite values (non-finite masked fluxes are set to 0).
    """
    wave = np.asarray(wave, dtype=np.float64)
    flux = np.array(flux, dtype=np.float64)
    ivar = np.array(ivar, dtype=np.float64)
    if not np.any(ivar > 0):
        return None
    bad = np.zeros(wave.size, dtype=bool) if mask is None else np.asarray(mask) != 0
    if edge_pixels > 0:
        bad[:edge_pixels] = True
        bad[-edge_pixels:] = True
    ivar[bad] = 0.0
    flux[~np.isfinite(flux)] = 0.0
    good = ivar > 0
    if not good.any():
        return None
    if uncertainty_floor > 0:
        ivar[good] = 1.0 / (1.0 / ivar[good] + (uncertainty_floor * flux[good]) ** 2)
    return Camera(name=name, wave=wave, flux=flux, ivar=ivar, resolution=resolution)


def finish_spectrum(cameras: list[Camera], *, z: float, targetid: int, ebv: float,
                    rv: float = DEFAULT_RV, meta: dict | None = None) -> Spectrum:
    """Correct the cameras for Milky-Way dust (``ebv`` mag) and wrap them as a Spectrum
    (``meta["file"]``: the file it was read from, named in messages about the target)."""
    cams = [deredden_camera(c, ebv, rv) for c in cameras]
    return Spectrum(cameras=cams, z=float(z), targetid=int(targetid), air=False, ebv=float(ebv),
                    meta=dict(meta or {}))


# --------------------------------------------------------------------------- generic inputs
def as_resolution(wave, resolution=None, fwhm=None, R=None) -> Resolution | None:
    """A :class:`Resolution` from at most one of: a Resolution or DESI band matrix
    ``(ndiag, npix)``, a FWHM in Å (scalar or per pixel), a resolving power ``R``."""
    given = [x is not None for x in (resolution, fwhm, R)]
    if sum(given) > 1:
        raise ValueError("give at most one of resolution= (Resolution or (ndiag, npix) band), "
                         "fwhm= (Å) or R= (λ/FWHM)")
    if resolution is not None:
        return resolution if isinstance(resolution, Resolution) else Resolution.from_desi(resolution)
    if fwhm is not None:
        return Resolution.from_fwhm(fwhm, wave)
    if R is not None:
        return Resolution.from_R(R, wave)
    return None


def spectrum_from_arrays(wave, flux, ivar, z: float, *, resolution=None, fwhm=None, R=None,
                         mask=None, air: bool = False, ebv: float = 0.0, rv: float = DEFAULT_RV,
                         targetid: int = -1, name: str = "spec", edge_pixels: int = 0,
                         uncertainty_floor: float = 0.0) -> Spectrum:
    """A one-camera :class:`Spectrum` from arrays, cleaned and corrected like a file.

    ``wave (npix,)`` Å (in air if ``air``, converted to vacuum); ``flux``, ``ivar``
    ``(npix,)``; ``z`` redshift; resolution as in :func:`as_resolution` (on the input
    pixels; an air FWHM is kept as is, the difference is < 0.03 %); ``ebv`` the
    Milky-Way E(B-V) in mag to correct for (0: none).  Raises ``ValueError`` for
    NaN/inf or negative ivar, mismatched shapes, or no usable pixel.
    """
    wave = np.asarray(wave, dtype=np.float64)
    flux = np.asarray(flux, dtype=np.float64)
    ivar = np.asarray(ivar, dtype=np.float64)
    if not (wave.shape == flux.shape == ivar.shape) or wave.ndim != 1:
        raise ValueError(f"wave, flux and ivar must be 1-D arrays of one length, got shapes "
                         f"{wave.shape}, {flux.shape}, {ivar.shape}")
    if not np.isfinite(z) or z <= -1:
        raise ValueError(f"redshift z={z!r}: expected a finite value > -1")
    why = bad_pixel_message(name, wave, flux, ivar)
    if why:
        raise ValueError(f"{why}; set ivar = 0 at those pixels (they are then ignored)")
    res = as_resolution(wave, resolution, fwhm, R)
    if air:
        wave = air_to_vacuum(wave)
    cam = clean_camera(name, wave, flux, ivar, mask, res, edge_pixels=edge_pixels,
                       uncertainty_floor=uncertainty_floor)
    if cam is None:
        raise ValueError(f"camera {name}: no pixel has ivar > 0 once masked; nothing to fit")
    return finish_spectrum([cam], z=z, targetid=targetid, ebv=ebv, rv=rv)


_WAVE_NAMES = ("WAVELENGTH", "WAVE", "LAMBDA", "LAM")


def _column(cols: dict, names, path, what: str, required: bool = True):
    for n in names:
        if n in cols:
            return cols[n]
    if required:
        raise InputError(f"{path}: no {what} column (looked for {', '.join(names)}); "
                         f"it has {', '.join(cols) or 'none'}")
    return None


def read_table(path, *, z: float | None = None, hdu=1, air: bool | None = None) -> SelectedFile:
    """A FITS table spectrum: columns WAVELENGTH (or WAVE/LAMBDA, Å), FLUX, IVAR and
    optionally MASK (non-zero = bad) and FWHM (Å per pixel); header keywords (table
    HDU or primary) ``Z``, ``TARGETID``, ``RA``, ``DEC``, ``EBV`` (mag, corrected for),
    ``R`` (resolving power) and ``AIRORVAC = 'air'`` or ``VACUUM = F`` for air λ.
    ``z`` and ``air`` override the header.  One target per file.
    """
    from astropy.io import fits
    path = Path(path)
    try:
        hdul = fits.open(path)
    except OSError as exc:
        raise InputError(f"{path}: not a FITS file ({exc}); give DESI Redrock files, SDSS spec-*.fits "
                         "files or FITS tables with WAVELENGTH, FLUX, IVAR columns") from None
    with hdul:
        try:
            tab = hdul[hdu]
        except (KeyError, IndexError):
            raise InputError(f"{path}: no HDU {hdu!r} holding the spectrum table") from None
        if not isinstance(tab, (fits.BinTableHDU, fits.TableHDU)):
            raise InputError(f"{path}: HDU {hdu!r} is not a table; expected columns "
                             "WAVELENGTH, FLUX, IVAR")
        hdr = dict(hdul[0].header)
        hdr.update(tab.header)
        cols = {c.upper(): np.asarray(tab.data[c], dtype=np.float64).ravel() for c in tab.columns.names
                if np.asarray(tab.data[c]).dtype.kind in "fiub"}
    wave = _column(cols, _WAVE_NAMES, path, "wavelength")
    flux = _column(cols, ("FLUX",), path, "flux")
    ivar = _column(cols, ("IVAR",), path, "inverse-variance")
    mask = _column(cols, ("MASK",), path, "mask", required=False)
    fwhm = _column(cols, ("FWHM",), path, "FWHM", required=False)
    if z is None:
        if "Z" not in hdr:
            raise InputError(f"{path}: no redshift: give it (--input-redshifts, or z= in Python) or "
                             "write a Z keyword in the header")
        z = float(hdr["Z"])
    if air is None:
        air = str(hdr.get("AIRORVAC", "vac")).strip().lower().startswith("air") or \
            hdr.get("VACUUM", True) is False
    targetid = int(hdr.get("TARGETID", -1))
    meta = {"TARGETID": targetid, "RA": float(hdr.get("RA", np.nan)), "DEC": float(hdr.get("DEC", np.nan)),
            "Z": float(z), "Z_RR": float(hdr.get("Z", z)), "EBV": float(hdr.get("EBV", 0.0)),
            "INPUT_FILE": path.name}
    R = hdr.get("R")

    def reader(*, edge_pixels, uncertainty_floor, rv):
        why = bad_pixel_message("spec", wave, flux, ivar)
        if why:
            yield TargetProblem(targetid, STATUS_BAD_VALUES,
                                f"{path}: target {targetid}: {why}; set IVAR = 0 at those pixels")
            return
        res = as_resolution(wave, fwhm=fwhm, R=None if fwhm is not None else R)
        w = air_to_vacuum(wave) if air else wave
        cam = clean_camera("spec", w, flux, ivar, mask, res, edge_pixels=edge_pixels,
                           uncertainty_floor=uncertainty_floor)
        if cam is None:
            yield TargetProblem(targetid, STATUS_NO_GOOD_PIXELS,
                                f"{path}: target {targetid}: every pixel is masked (IVAR = 0 or MASK != 0)")
            return
        yield finish_spectrum([cam], z=z, targetid=targetid, ebv=meta["EBV"], rv=rv,
                              meta={"file": str(path)})

    return SelectedFile(path=path, kind="table", cameras=["spec"], meta=[meta], header={}, reader=reader)


def header_dependency(header, name: str, default: str = "") -> str:
    """A DESI ``DEPNAMnn``/``DEPVERnn`` header dependency's value (e.g. ``SPECPROD``)."""
    for key, value in header.items():
        if key.startswith("DEPNAM") and str(value).strip() == name:
            return str(header.get("DEPVER" + key[6:], default)).strip()
    return default
