"""Small synthetic IFU cubes written with the real header layouts of MUSE and MaNGA.

MUSE (ESO pipeline DATACUBE): empty primary HDU with INSTRUME = 'MUSE'; image extensions
DATA and STAT (and DQ) holding (L, ny, nx) arrays with a 3-D WCS: RA---TAN/DEC--TAN with
a CD matrix of 0.2" spaxels, CTYPE3 = 'AWAV' (air), CUNIT3 = 'Angstrom', CD3_3 = 1.25 Å.

MaNGA DRP LOGCUBE: primary HDU; FLUX, IVAR, MASK (int32 MANGA_DRP3PIXMASK), LSFPOST (σ in Å)
cubes with CTYPE3 = 'WAVE-LOG' and 0.5" spaxels; 1-D WAVE (vacuum Å) and SPECRES (λ/FWHM).
"""
import numpy as np
from astropy.io import fits


def _celestial(h, scale_arcsec, nx, ny):
    d = scale_arcsec / 3600.0
    h.update({"CTYPE1": "RA---TAN", "CTYPE2": "DEC--TAN", "CUNIT1": "deg", "CUNIT2": "deg",
              "CRPIX1": (nx + 1) / 2, "CRPIX2": (ny + 1) / 2, "CRVAL1": 150.0, "CRVAL2": -30.0,
              "CD1_1": -d, "CD1_2": 0.0, "CD2_1": 0.0, "CD2_2": d})


def write_muse(path, flux, var, lam0, *, dq=None, step=1.25, bunit="10**(-20)*erg/s/cm**2/Angstrom"):
    """``flux``/``var`` as (ny, nx, L); wavelength lam0 + step·i (air, Å)."""
    ny, nx, L = flux.shape
    h = fits.Header()
    _celestial(h, 0.2, nx, ny)
    h.update({"CTYPE3": "AWAV", "CUNIT3": "Angstrom", "CRPIX3": 1.0, "CRVAL3": lam0,
              "CD3_3": step, "CD1_3": 0.0, "CD2_3": 0.0, "CD3_1": 0.0, "CD3_2": 0.0,
              "BUNIT": bunit})
    hs = h.copy()
    hs["BUNIT"] = f"({bunit})**2"
    prim = fits.PrimaryHDU()
    prim.header.update({"INSTRUME": "MUSE", "OBJECT": "MOCK", "TELESCOP": "ESO-VLT-U4"})
    hdus = [prim, fits.ImageHDU(np.moveaxis(flux, -1, 0).astype(np.float32), h, name="DATA"),
            fits.ImageHDU(np.moveaxis(var, -1, 0).astype(np.float32), hs, name="STAT")]
    if dq is not None:
        hdus.append(fits.ImageHDU(np.moveaxis(dq, -1, 0).astype(np.int32), h, name="DQ"))
    fits.HDUList(hdus).writeto(path, overwrite=True)
    return lam0 + step * np.arange(L)


def write_manga(path, flux, ivar, mask, lam, *, specres=None, lsf_sigma=None):
    """``flux``/``ivar``/``mask``/``lsf_sigma`` as (ny, nx, L); ``lam`` (L,) vacuum Å, log-spaced."""
    ny, nx, L = flux.shape
    h = fits.Header()
    _celestial(h, 0.5, nx, ny)
    h.update({"CTYPE3": "WAVE-LOG", "CUNIT3": "Angstrom", "CRPIX3": 1.0, "CRVAL3": float(lam[0]),
              "CD3_3": float(lam[0] * np.log(lam[1] / lam[0])),   # -LOG: λ = λr exp(w/λr)
              "BUNIT": "1E-17 erg/s/cm^2/Ang/spaxel"})
    prim = fits.PrimaryHDU()
    prim.header.update({"PLATEIFU": "0000-1901", "TELESCOP": "SDSS 2.5-M"})
    cube = lambda a, dt: np.moveaxis(a, -1, 0).astype(dt)  # noqa: E731
    hdus = [prim, fits.ImageHDU(cube(flux, np.float32), h, name="FLUX"),
            fits.ImageHDU(cube(ivar, np.float32), h, name="IVAR"),
            fits.ImageHDU(cube(mask, np.int32), h, name="MASK")]
    if lsf_sigma is not None:
        hdus.append(fits.ImageHDU(cube(lsf_sigma, np.float32), h, name="LSFPOST"))
    hdus.append(fits.ImageHDU(np.asarray(lam, np.float64), name="WAVE"))
    if specres is not None:
        hdus.append(fits.ImageHDU(np.asarray(specres, np.float64), name="SPECRES"))
    fits.HDUList(hdus).writeto(path, overwrite=True)
