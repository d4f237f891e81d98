"""IFU cube readers: MUSE, MaNGA ``LOGCUBE`` and generic 3-D FITS cubes (docs/ifu.md).

Every reader returns an :class:`IFUCube` with the spectra as ``(ny, nx, L)`` arrays
(spaxel row, spaxel column, wavelength), the variance, a good-pixel mask, the pixel
wavelengths in Å in the file's medium (air or vacuum), the spaxel scale in arcsec, and
the instrumental resolution ``fwhm (L,)`` in Å at each observed wavelength.

Formats
-------
* **MUSE** (ESO pipeline ``DATACUBE`` products): image extensions ``DATA`` (flux density,
  ``BUNIT`` usually ``10**(-20)*erg/s/cm**2/Angstrom``) and ``STAT`` (its variance),
  optionally ``DQ`` (non-zero = bad).  The wavelength axis is the third WCS axis of
  ``DATA`` (``CTYPE3 = 'AWAV'``: air wavelengths, linear, ``CD3_3`` Å per pixel); the
  spaxel scale comes from the celestial WCS (0.2″ in WFM).  The line-spread function
  is not in the file: its FWHM is taken from the polynomial fitted to the MUSE Ultra
  Deep Field data by Bacon et al. (2017, A&A 608, A1, eq. 8),

      FWHM(λ) = 5.866·10⁻⁸ λ² − 9.187·10⁻⁴ λ + 6.040   (Å, λ in Å),

  about 2.9 Å at 5000 Å and 2.5 Å at 7000 Å; pass ``lsf_coeffs=`` for another fit.
* **MaNGA** ``LOGCUBE`` (SDSS DRP): extensions ``FLUX`` (``1E-17 erg/s/cm^2/Ang/spaxel``),
  ``IVAR``, ``MASK`` (``MANGA_DRP3PIXMASK`` bits; bits 0 NOCOV, 1 LOWCOV, 2 DEADFIBER,
  3 FORESTAR and 10 DONOTUSE make a pixel bad), ``WAVE`` (vacuum Å, log-spaced) and the
  resolution: ``LSFPOST`` (Gaussian σ of the LSF in Å per spaxel and pixel; its median
  over the good spaxels × 2.3548 is the FWHM) when present, else ``SPECRES`` (λ/FWHM).
  Spaxels are 0.5″.  The arrays are stored ``(L, ny, nx)`` like every FITS cube.
* **Generic**: the first 3-D image HDU (or ``data_ext``) with the wavelength from its
  WCS (or a 1-D ``WAVE``/``LAMBDA`` extension), and a variance (``STAT``, ``VAR``,
  ``VARIANCE``), inverse variance (``IVAR``) or 1-σ error (``ERR``, ``ERROR``, ``NOISE``)
  extension; medium from ``CTYPE3`` (``AWAV``: air) or ``medium=``; resolution from
  ``fwhm=`` (a number or a ``(L,)`` array, Å), else unknown (None).

Selections
----------
:meth:`IFUCube.select` crops a wavelength range (observed or rest frame),
:meth:`IFUCube.mask_ranges` flags windows (emission lines in the rest frame, sky lines in
the observed frame; :data:`SKY_LINES` lists the strong night-sky lines),
:meth:`IFUCube.snr` gives each spaxel's median S/N per pixel and
:meth:`IFUCube.spaxels` the spaxels above a minimum S/N.  The redshift ``z`` sets the
rest frame ``λ/(1 + z)``.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

__all__ = ["IFUCube", "read_muse", "read_manga", "read_generic", "read_cube", "muse_lsf_fwhm",
           "MUSE_LSF_COEFFS", "MANGA_BAD_BITS", "SKY_LINES", "FWHM_PER_SIGMA"]

FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))
"""FWHM of a Gaussian in units of its standard deviation (≈ 2.3548)."""

MUSE_LSF_COEFFS = (5.866e-8, -9.187e-4, 6.040)
"""``(a, b, c)`` of the MUSE LSF FWHM ``a λ² + b λ + c`` (Å, λ in Å): Bacon et al. 2017, eq. 8."""

MANGA_BAD_BITS = (0, 1, 2, 3, 10)
"""``MANGA_DRP3PIXMASK`` bits that make a pixel unusable: NOCOV, LOWCOV, DEADFIBER, FORESTAR,
DONOTUSE."""

SKY_LINES = {"air": (5577.338, 5889.950, 5895.924, 6300.304, 6363.776),
             "vacuum": (5578.887, 5891.583, 5897.558, 6302.046, 6365.536)}
"""Strong night-sky emission lines (Å): [O I] 5577, Na D 5890/5896, [O I] 6300/6364."""

_VAR_NAMES = ("STAT", "VAR", "VARIANCE")
_IVAR_NAMES = ("IVAR",)
_ERR_NAMES = ("ERR", "ERROR", "NOISE", "SIGMA")
_WAVE_NAMES = ("WAVE", "LAMBDA", "WAVELENGTH")


def muse_lsf_fwhm(lam, coeffs=MUSE_LSF_COEFFS) -> np.ndarray:
    """FWHM (Å) of the MUSE line-spread function at ``lam`` (Å), module docstring."""
    lam = np.asarray(lam, dtype=np.float64)
    a, b, c = coeffs
    return a * lam**2 + b * lam + c


@dataclass
class IFUCube:
    """An IFU cube as read from a file (module docstring).

    ``flux (ny, nx, L)`` flux density in ``flux_unit``; ``var (ny, nx, L)`` its variance
    (``inf`` where unknown); ``good (ny, nx, L)`` usable pixels; ``lam (L,)`` Å in
    ``medium`` (``"air"`` or ``"vacuum"``), increasing; ``pixscale`` arcsec per spaxel;
    ``fwhm (L,)`` instrumental FWHM in Å at ``lam`` (None: unknown) and ``lsf`` where it
    came from; ``z`` redshift; ``source`` the file; ``instrument``.
    """

    flux: np.ndarray
    var: np.ndarray
    good: np.ndarray
    lam: np.ndarray
    medium: str
    pixscale: float
    fwhm: np.ndarray | None
    flux_unit: str = ""
    z: float = 0.0
    source: str = ""
    instrument: str = ""
    lsf: str = ""
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        what = f"{self.instrument or 'IFU'} cube {self.source}"
        self.flux = np.asarray(self.flux, dtype=np.float64)
        if self.flux.ndim != 3:
            raise ValueError(f"{what}: flux must be (ny, nx, L), got shape {self.flux.shape}")
        ny, nx, L = self.flux.shape
        self.var = np.asarray(self.var, dtype=np.float64)
        self.good = np.asarray(self.good, dtype=bool)
        self.lam = np.asarray(self.lam, dtype=np.float64)
        for name, a in (("var", self.var), ("good", self.good)):
            if a.shape != self.flux.shape:
                raise ValueError(f"{what}: {name} has shape {a.shape}, flux {self.flux.shape}")
        if self.lam.shape != (L,) or not np.all(np.isfinite(self.lam)) or np.any(np.diff(self.lam) <= 0):
            raise ValueError(f"{what}: wavelengths must be ({L},) finite and increasing, got shape "
                             f"{self.lam.shape}")
        if self.medium not in ("air", "vacuum"):
            raise ValueError(f"{what}: medium must be 'air' or 'vacuum', got {self.medium!r}")
        if not (np.isfinite(self.pixscale) and self.pixscale > 0):
            raise ValueError(f"{what}: spaxel scale must be a positive number of arcsec, got "
                             f"{self.pixscale!r}")
        if self.fwhm is not None:
            self.fwhm = np.broadcast_to(np.asarray(self.fwhm, dtype=np.float64), (L,)).copy()
            if not np.all(np.isfinite(self.fwhm) & (self.fwhm > 0)):
                raise ValueError(f"{what}: instrumental FWHM must be positive (Å)")
        if not (np.isfinite(self.z) and self.z > -1):
            raise ValueError(f"{what}: redshift z must be > -1, got {self.z!r}")
        # A pixel is usable only with a finite flux and a finite, positive variance.
        self.good &= np.isfinite(self.flux) & np.isfinite(self.var) & (self.var > 0)

    @property
    def shape(self) -> tuple:
        """``(ny, nx, L)``."""
        return self.flux.shape

    @property
    def lam_rest(self) -> np.ndarray:
        """Rest-frame wavelengths ``lam / (1 + z)`` (Å, same medium)."""
        return self.lam / (1.0 + self.z)

    def xy(self, centre=None) -> np.ndarray:
        """Spaxel centres ``(ny·nx, 2)`` in arcsec, row-major (``s = iy·nx + ix``):
        ``x`` along the array's columns, ``y`` along its rows, from ``centre`` = (ix, iy)
        in pixels (default the middle of the field)."""
        ny, nx, _ = self.shape
        cx, cy = ((nx - 1) / 2, (ny - 1) / 2) if centre is None else centre
        yy, xx = np.mgrid[0:ny, 0:nx]
        return np.column_stack([(xx.ravel() - cx) * self.pixscale, (yy.ravel() - cy) * self.pixscale])

    def _window(self, lo, hi, frame):
        if frame not in ("obs", "rest"):
            raise ValueError(f"frame: expected 'obs' or 'rest', got {frame!r}")
        lam = self.lam if frame == "obs" else self.lam_rest
        return (lam >= lo) & (lam <= hi)

    def select(self, lam_min: float, lam_max: float, frame: str = "rest") -> "IFUCube":
        """The cube cropped to ``[lam_min, lam_max]`` Å (``frame`` "rest" or "obs")."""
        keep = self._window(lam_min, lam_max, frame)
        if keep.sum() < 2:
            raise ValueError(f"{self.source}: [{lam_min}, {lam_max}] Å ({frame} frame) holds "
                             f"{keep.sum()} pixels; the cube covers {self.lam[0]:.1f}-"
                             f"{self.lam[-1]:.1f} Å observed (z = {self.z})")
        return dataclasses.replace(self, flux=self.flux[..., keep], var=self.var[..., keep],
                                   good=self.good[..., keep], lam=self.lam[keep],
                                   fwhm=None if self.fwhm is None else self.fwhm[keep])

    def mask_ranges(self, ranges, frame: str = "obs") -> "IFUCube":
        """The cube with the pixels inside each ``(lo, hi)`` Å window flagged bad."""
        bad = np.zeros(self.lam.size, bool)
        for lo, hi in ranges:
            bad |= self._window(lo, hi, frame)
        return dataclasses.replace(self, good=self.good & ~bad)

    def mask_sky_lines(self, half_width: float = 6.0) -> "IFUCube":
        """The cube with ±``half_width`` Å around each of :data:`SKY_LINES` flagged bad."""
        return self.mask_ranges([(c - half_width, c + half_width) for c in SKY_LINES[self.medium]])

    def snr(self) -> np.ndarray:
        """Median S/N per pixel of each spaxel ``(ny, nx)`` over its good pixels (0 if none):
        median flux over median 1-σ error."""
        f = np.where(self.good, self.flux, np.nan)
        e = np.sqrt(np.where(self.good, self.var, np.nan))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)         # spaxels with no good pixel
            s = np.nanmedian(f, axis=2) / np.nanmedian(e, axis=2)
        return np.where(np.isfinite(s), s, 0.0)

    def spaxels(self, min_sn: float = 0.0, min_good: float = 0.5) -> np.ndarray:
        """``(ny, nx)`` bool: spaxels with a positive S/N ≥ ``min_sn`` and at least a
        fraction ``min_good`` of good pixels."""
        sn = self.snr()
        return (sn >= min_sn) & (sn > 0) & (self.good.mean(axis=2) >= min_good)


# ----------------------------------------------------------------------------- helpers

def _hdu(hdul, names, path, required=True):
    for n in names:
        if n in hdul:
            return hdul[n]
    if required:
        found = [h.name for h in hdul]
        raise ValueError(f"{path}: no {'/'.join(names)} extension (found {found})")
    return None


def _spectral_axis(header, path) -> tuple[np.ndarray, str | None]:
    """Pixel wavelengths (Å) of the third WCS axis and the medium its CTYPE implies."""
    from astropy import units as u
    from astropy.wcs import WCS
    w = WCS(header)
    if w.naxis < 3 or not w.has_spectral:
        raise ValueError(f"{path}: the cube's header has no spectral WCS axis (CTYPE3); give a "
                         "WAVE extension or use read_generic(..., wave=...)")
    spec = w.spectral
    n = int(header.get("NAXIS3", 0))
    vals = np.asarray(spec.pixel_to_world_values(np.arange(n)), dtype=np.float64)
    unit = u.Unit(spec.wcs.cunit[0] or "m")
    lam = vals * unit.to(u.AA)
    ctype = spec.wcs.ctype[0].upper()
    medium = "air" if ctype.startswith("AWAV") else ("vacuum" if ctype.startswith("WAVE") else None)
    return lam, medium


def _pixscale(header, path) -> float:
    from astropy.wcs import WCS
    from astropy.wcs.utils import proj_plane_pixel_scales
    w = WCS(header)
    if not w.has_celestial:
        raise ValueError(f"{path}: no celestial WCS in the cube header; pass pixscale= (arcsec)")
    scales = proj_plane_pixel_scales(w.celestial) * 3600.0          # deg -> arcsec
    if not np.isclose(scales[0], scales[1], rtol=1e-3):
        log.warning("%s: spaxels are not square (%.4g x %.4g arcsec); using their mean", path,
                    *scales)
    return float(np.mean(scales))


def _cube(a) -> np.ndarray:
    """A FITS cube ``(L, ny, nx)`` as ``(ny, nx, L)`` float64."""
    a = np.asarray(a)
    if a.ndim != 3:
        raise ValueError(f"expected a 3-D cube, got shape {a.shape}")
    return np.moveaxis(a.astype(np.float64), 0, -1)


# ----------------------------------------------------------------------------- readers

def read_muse(path, *, z: float = 0.0, lsf_coeffs=MUSE_LSF_COEFFS) -> IFUCube:
    """Read a MUSE ``DATACUBE`` FITS file (module docstring)."""
    from astropy.io import fits
    path = Path(path)
    with fits.open(path) as hdul:
        data = _hdu(hdul, ("DATA",), path)
        stat = _hdu(hdul, ("STAT",), path)
        dq = _hdu(hdul, ("DQ",), path, required=False)
        lam, medium = _spectral_axis(data.header, path)
        if medium != "air":
            log.warning("%s: CTYPE3 = %r, not 'AWAV'; MUSE cubes are in air wavelengths — "
                        "taken as air", path, data.header.get("CTYPE3"))
        flux, var = _cube(data.data), _cube(stat.data)
        good = np.ones(flux.shape, bool) if dq is None else _cube(dq.data) == 0
        return IFUCube(flux=flux, var=var, good=good, lam=lam, medium="air",
                       pixscale=_pixscale(data.header, path), fwhm=muse_lsf_fwhm(lam, lsf_coeffs),
                       flux_unit=str(data.header.get("BUNIT", "")), z=z, source=str(path),
                       instrument="MUSE", lsf="Bacon et al. 2017 eq. 8 polynomial"
                       if tuple(lsf_coeffs) == MUSE_LSF_COEFFS else f"polynomial {tuple(lsf_coeffs)}",
                       meta={"object": str(hdul[0].header.get("OBJECT", ""))})


def read_manga(path, *, z: float = 0.0, pixscale: float = 0.5) -> IFUCube:
    """Read a MaNGA DRP ``LOGCUBE`` FITS file (module docstring)."""
    from astropy.io import fits
    path = Path(path)
    with fits.open(path) as hdul:
        flux_hdu = _hdu(hdul, ("FLUX",), path)
        ivar = _cube(_hdu(hdul, ("IVAR",), path).data)
        mask = _hdu(hdul, ("MASK",), path, required=False)
        lam = np.asarray(_hdu(hdul, ("WAVE",), path).data, dtype=np.float64)
        flux = _cube(flux_hdu.data)
        if lam.shape != (flux.shape[2],):
            raise ValueError(f"{path}: WAVE has {lam.size} pixels, FLUX {flux.shape[2]}")
        bits = sum(1 << b for b in MANGA_BAD_BITS)
        good = np.ones(flux.shape, bool) if mask is None else \
            (np.moveaxis(np.asarray(mask.data).astype(np.int64), 0, -1) & bits) == 0
        good &= ivar > 0
        var = np.divide(1.0, ivar, out=np.full(ivar.shape, np.inf), where=ivar > 0)
        if "LSFPOST" in hdul:
            sig = _cube(hdul["LSFPOST"].data)
            use = good & np.isfinite(sig) & (sig > 0)
            fwhm = FWHM_PER_SIGMA * np.array([np.median(sig[..., l][use[..., l]])
                                              if use[..., l].any() else np.nan
                                              for l in range(lam.size)])
            fwhm = np.interp(lam, lam[np.isfinite(fwhm)], fwhm[np.isfinite(fwhm)])
            lsf = "LSFPOST (median Gaussian sigma over good spaxels)"
        elif "SPECRES" in hdul:
            fwhm = lam / np.asarray(hdul["SPECRES"].data, dtype=np.float64)
            lsf = "SPECRES (lambda / FWHM)"
        else:
            raise ValueError(f"{path}: no LSFPOST or SPECRES extension: the instrumental "
                             "resolution is unknown")
        return IFUCube(flux=flux, var=var, good=good, lam=lam, medium="vacuum", pixscale=pixscale,
                       fwhm=fwhm, flux_unit=str(flux_hdu.header.get("BUNIT", "")), z=z,
                       source=str(path), instrument="MaNGA", lsf=lsf,
                       meta={"plateifu": str(hdul[0].header.get("PLATEIFU", ""))})


def read_generic(path, *, data_ext=None, z: float = 0.0, medium: str | None = None,
                 fwhm=None, pixscale: float | None = None, wave=None) -> IFUCube:
    """Read a 3-D FITS cube with a variance, inverse-variance or error extension
    (module docstring).  ``wave (L,)`` Å overrides the wavelength axis."""
    from astropy.io import fits
    path = Path(path)
    with fits.open(path) as hdul:
        if data_ext is not None:
            data = hdul[data_ext]
        else:
            data = next((h for h in hdul if h.data is not None and np.ndim(h.data) == 3
                         and h.name not in _VAR_NAMES + _IVAR_NAMES + _ERR_NAMES), None)
            if data is None:
                raise ValueError(f"{path}: no 3-D image extension to read as the cube")
        flux = _cube(data.data)
        if (h := _hdu(hdul, _VAR_NAMES, path, required=False)) is not None:
            var = _cube(h.data)
        elif (h := _hdu(hdul, _IVAR_NAMES, path, required=False)) is not None:
            iv = _cube(h.data)
            var = np.divide(1.0, iv, out=np.full(iv.shape, np.inf), where=iv > 0)
        elif (h := _hdu(hdul, _ERR_NAMES, path, required=False)) is not None:
            var = _cube(h.data) ** 2
        else:
            raise ValueError(f"{path}: no variance ({'/'.join(_VAR_NAMES)}), inverse variance "
                             f"(IVAR) or error ({'/'.join(_ERR_NAMES)}) extension")
        ctype = str(data.header.get("CTYPE3", "")).upper()
        medium_wcs = "air" if ctype.startswith("AWAV") else ("vacuum" if ctype.startswith("WAVE")
                                                             else None)
        if wave is not None:
            lam = np.asarray(wave, dtype=np.float64)
        elif (h := _hdu(hdul, _WAVE_NAMES, path, required=False)) is not None and np.ndim(h.data) == 1:
            lam = np.asarray(h.data, dtype=np.float64)
        else:
            lam, _ = _spectral_axis(data.header, path)
        medium = medium or medium_wcs
        if medium is None:
            raise ValueError(f"{path}: cannot tell air from vacuum wavelengths (CTYPE3 is neither "
                             "AWAV nor WAVE); pass medium='air' or 'vacuum'")
        scale = pixscale if pixscale is not None else _pixscale(data.header, path)
        return IFUCube(flux=flux, var=var, good=np.ones(flux.shape, bool), lam=lam, medium=medium,
                       pixscale=scale, fwhm=fwhm, flux_unit=str(data.header.get("BUNIT", "")),
                       z=z, source=str(path), instrument=str(hdul[0].header.get("INSTRUME", "")),
                       lsf="given" if fwhm is not None else "unknown")


def read_cube(path, **kwargs) -> IFUCube:
    """Read any supported cube: MUSE (``DATA`` + ``STAT``), MaNGA (``FLUX`` + ``IVAR`` +
    ``WAVE``) or :func:`read_generic`; ``kwargs`` go to the reader."""
    from astropy.io import fits
    with fits.open(path) as hdul:
        names = {h.name for h in hdul}
        instrument = str(hdul[0].header.get("INSTRUME", "")).upper()
    if {"DATA", "STAT"} <= names and instrument in ("MUSE", ""):
        return read_muse(path, **kwargs)
    if {"FLUX", "IVAR", "WAVE"} <= names:
        return read_manga(path, **kwargs)
    return read_generic(path, **kwargs)
