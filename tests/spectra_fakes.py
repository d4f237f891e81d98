"""Small DESI Redrock + coadd file pairs for the spectra tests, built from the real DESI
spectrum in ../shared/data/desi (one galaxy): every fake target is that galaxy's
spectrum with fresh Gaussian noise drawn from its own ivar, so the targets differ."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

DESI_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "desi"
REDROCK = DESI_DIR / "redrock-4-80613-thru20210324.fits"
COADD = DESI_DIR / "coadd-4-80613-thru20210324.fits"
TARGETID = 39633345008634465
Z_TRUE = 0.36874355163716493

needs_desi = pytest.mark.skipif(not REDROCK.exists(), reason=f"real DESI files not found in {DESI_DIR} "
                                "(the repository's ../shared/data/desi)")


def small_templates(folder, n: int = 4) -> Path:
    """A folder with links to ``n`` E-MILES SSPs of solar [M/H] spread in age (fetched
    into the cache on first use): enough for fits whose equality across runs is tested,
    and quick to prepare in every worker."""
    from cubefit.templates import fetch_emiles
    src = Path(fetch_emiles())
    names = sorted(src.glob("Eun1.30Zp0.00T*_iPp0.00_baseFe_linear_FWHM_variable.fits"))
    folder = Path(folder)
    folder.mkdir(exist_ok=True)
    for f in names[:: max(1, len(names) // n)][:n]:
        (folder / f.name).symlink_to(f)
    return folder


def write_desi_pair(folder, n: int, *, name: str = "4-80613-fake", z=None, objtype=None, zwarn=None,
                    seed: int = 0, cameras=("B", "R", "Z"), crop: int | None = None, edit=None):
    """Write ``redrock-NAME.fits`` and ``coadd-NAME.fits`` with ``n`` targets in ``folder``.

    ``z``, ``objtype``, ``zwarn``: per-target sequences (default: the real values);
    ``crop``: keep only the first ``crop`` pixels of each camera (small files);
    ``edit(arrays)``: change the per-camera dict ``{"B": {"FLUX": (n, npix), ...}}`` in
    place before writing.  Returns ``(redrock_path, coadd_path, targetids)``.
    """
    from astropy.io import fits
    from astropy.table import Table
    folder = Path(folder)
    rng = np.random.default_rng(seed)
    tids = TARGETID + np.arange(n, dtype=np.int64)
    with fits.open(REDROCK) as rr, fits.open(COADD) as co:
        zb = Table(rr["REDSHIFTS"].data)
        fm = Table(co["FIBERMAP"].data)
        phdr = co[0].header.copy()
        arrays = {}
        for cam in cameras:
            sl = slice(None, crop)
            wave = np.asarray(co[f"{cam}_WAVELENGTH"].data[sl], dtype=np.float64)
            flux = np.asarray(co[f"{cam}_FLUX"].data[0, sl], dtype=np.float32)
            ivar = np.asarray(co[f"{cam}_IVAR"].data[0, sl], dtype=np.float32)
            sig = np.where(ivar > 0, 1.0 / np.sqrt(np.where(ivar > 0, ivar, 1.0)), 0.0)
            arrays[cam] = {
                "WAVELENGTH": wave,
                "FLUX": (flux + sig * rng.standard_normal((n, wave.size))).astype(np.float32),
                "IVAR": np.repeat(ivar[None], n, axis=0),
                "MASK": np.repeat(np.asarray(co[f"{cam}_MASK"].data[0, sl], dtype=np.int32)[None], n, axis=0),
                "RESOLUTION": np.repeat(np.asarray(co[f"{cam}_RESOLUTION"].data[0][:, sl],
                                                   dtype=np.float32)[None], n, axis=0),
            }
    if edit is not None:
        edit(arrays)
    zb = zb[np.zeros(n, dtype=int)]
    fm = fm[np.zeros(n, dtype=int)]
    zb["TARGETID"] = tids
    fm["TARGETID"] = tids
    if z is not None:
        zb["Z"] = np.asarray(z, dtype=np.float64)
    if zwarn is not None:
        zb["ZWARN"] = np.asarray(zwarn, dtype=np.int64)
    if objtype is not None:
        fm["OBJTYPE"] = np.asarray(objtype, dtype="U3")
    redrock = folder / f"redrock-{name}.fits"
    coadd = folder / f"coadd-{name}.fits"
    fits.HDUList([fits.PrimaryHDU(), fits.table_to_hdu(zb)]).writeto(redrock, overwrite=True)
    hdus = [fits.PrimaryHDU(header=phdr), fits.table_to_hdu(fm)]
    hdus[1].name = "FIBERMAP"
    for cam, a in arrays.items():
        for key in ("WAVELENGTH", "FLUX", "IVAR", "MASK", "RESOLUTION"):
            hdus.append(fits.ImageHDU(a[key], name=f"{cam}_{key}"))
    fits.HDUList(hdus).writeto(coadd, overwrite=True)
    with fits.open(redrock, mode="update") as rr:
        rr[1].name = "REDSHIFTS"
    return redrock, coadd, tids
