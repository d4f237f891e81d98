"""IFU cube readers on small FITS files with the MUSE and MaNGA header layouts."""
import numpy as np
import pytest
from astropy.io import fits

from cubefit.ifu.readers import (FWHM_PER_SIGMA, SKY_LINES, muse_lsf_fwhm, read_cube, read_generic,
                                 read_manga, read_muse)
from ifu_fits import write_manga, write_muse


def _random_cube(rng, ny=4, nx=5, L=300, level=100.0, sigma=2.0):
    flux = level + sigma * rng.standard_normal((ny, nx, L))
    return flux, np.full((ny, nx, L), sigma**2)


def test_muse_layout(tmp_path, rng):
    flux, var = _random_cube(rng)
    flux[1, 2] *= 3.0                        # a brighter spaxel: tests the axis order
    dq = np.zeros(flux.shape, int)
    dq[0, 0, 10:20] = 1
    lam_true = write_muse(tmp_path / "m.fits", flux, var, 4749.76, dq=dq)
    cube = read_muse(tmp_path / "m.fits", z=0.01)
    assert cube.shape == (4, 5, 300) and cube.medium == "air" and cube.instrument == "MUSE"
    np.testing.assert_allclose(cube.lam, lam_true, rtol=1e-12)       # CRVAL3 + CD3_3·i, in Å
    np.testing.assert_allclose(cube.pixscale, 0.2, rtol=1e-9)
    np.testing.assert_allclose(cube.flux, flux.astype(np.float32), rtol=0)
    np.testing.assert_allclose(cube.var, var.astype(np.float32), rtol=0)
    assert not cube.good[0, 0, 10:20].any() and cube.good[0, 0, 20:].all()
    assert cube.flux_unit.startswith("10**(-20)")
    # Bacon et al. (2017) LSF: 2.913 Å at 5000 Å, 2.4834 Å at 7000 Å (evaluated by hand).
    np.testing.assert_allclose(muse_lsf_fwhm([5000.0, 7000.0]), [2.91300, 2.48344], atol=1e-5)
    np.testing.assert_allclose(cube.fwhm, muse_lsf_fwhm(cube.lam))
    np.testing.assert_allclose(cube.lam_rest, cube.lam / 1.01)
    assert read_cube(tmp_path / "m.fits").instrument == "MUSE"


def test_selections_and_snr(tmp_path, rng):
    flux, var = _random_cube(rng, L=400, level=50.0, sigma=1.0)
    flux[3, 4] = 2.0 + rng.standard_normal(400)                # S/N 2 spaxel
    write_muse(tmp_path / "m.fits", flux, var, 5500.0)
    cube = read_muse(tmp_path / "m.fits", z=0.05)
    sub = cube.select(5300.0, 5500.0, frame="rest")            # 5565-5775 Å observed
    assert sub.lam[0] >= 5565.0 - 1e-9 and sub.lam[-1] <= 5775.0 + 1e-9
    assert sub.flux.shape[2] == sub.lam.size == sub.fwhm.size
    sky = cube.mask_sky_lines(half_width=5.0)
    near = np.any([np.abs(cube.lam - c) <= 5.0 for c in SKY_LINES["air"]], axis=0)
    assert near.any() and not sky.good[..., near].any() and sky.good[..., ~near].all()
    sn = cube.snr()
    np.testing.assert_allclose(sn[0, 0], np.median(flux[0, 0].astype(np.float32)) / 1.0, rtol=1e-6)
    sel = cube.spaxels(min_sn=10)
    assert sel.sum() == 19 and not sel[3, 4]
    with pytest.raises(ValueError, match="holds 0 pixels"):
        cube.select(8000, 9000, frame="obs")
    xy = cube.xy()
    np.testing.assert_allclose(xy[1] - xy[0], [0.2, 0.0], rtol=1e-9)        # x along columns
    np.testing.assert_allclose(xy[5] - xy[0], [0.0, 0.2], rtol=1e-9)        # next row
    np.testing.assert_allclose(xy.mean(axis=0), 0.0, atol=1e-12)


def test_manga_layout(tmp_path, rng):
    ny, nx, L = 3, 3, 200
    lam = 3621.6 * 10 ** (1e-4 * np.arange(L))                 # MaNGA: log10 step 1e-4
    flux, var = _random_cube(rng, ny, nx, L)
    ivar = 1.0 / var
    ivar[2, 2, :5] = 0.0
    mask = np.zeros((ny, nx, L), int)
    mask[0, 1, 50:60] = 1 << 10                                # DONOTUSE
    mask[1, 0, 70:75] = 1 << 5                                 # a bit that does not matter here
    sig = np.broadcast_to(1.1 + 1e-4 * (lam - lam[0]), (ny, nx, L)).copy()
    specres = lam / (FWHM_PER_SIGMA * sig[0, 0])
    write_manga(tmp_path / "g.fits", flux, ivar, mask, lam, specres=specres, lsf_sigma=sig)
    cube = read_manga(tmp_path / "g.fits", z=0.02)
    assert cube.medium == "vacuum" and cube.pixscale == 0.5 and cube.instrument == "MaNGA"
    np.testing.assert_allclose(cube.lam, lam)
    assert not cube.good[0, 1, 50:60].any() and cube.good[1, 0, 70:75].all()
    assert not cube.good[2, 2, :5].any() and np.isinf(cube.var[2, 2, 0])
    np.testing.assert_allclose(cube.var[0, 0], var[0, 0], rtol=1e-6)
    np.testing.assert_allclose(cube.fwhm, FWHM_PER_SIGMA * sig[0, 0], rtol=1e-6)   # from LSFPOST
    assert "LSFPOST" in cube.lsf
    # Without LSFPOST: SPECRES = λ / FWHM.
    write_manga(tmp_path / "h.fits", flux, ivar, mask, lam, specres=specres)
    cube2 = read_cube(tmp_path / "h.fits")
    assert cube2.instrument == "MaNGA" and "SPECRES" in cube2.lsf
    np.testing.assert_allclose(cube2.fwhm, lam / specres, rtol=1e-12)
    # The WCS says the same as WAVE (log-linear axis read through astropy.wcs).
    with fits.open(tmp_path / "h.fits") as hdul:
        fits.HDUList([h for h in hdul if h.name != "WAVE"]).writeto(tmp_path / "w.fits")
    gen = read_generic(tmp_path / "w.fits", data_ext="FLUX")
    np.testing.assert_allclose(gen.lam, lam, rtol=1e-6)
    assert gen.medium == "vacuum"


def test_generic_cube_with_error_extension(tmp_path, rng):
    flux, var = _random_cube(rng, 2, 2, 50)
    lam = np.linspace(6000, 6049, 50)
    prim = fits.PrimaryHDU(np.moveaxis(flux, -1, 0))
    fits.HDUList([prim, fits.ImageHDU(np.sqrt(np.moveaxis(var, -1, 0)), name="ERR"),
                  fits.ImageHDU(lam, name="WAVE")]).writeto(tmp_path / "c.fits")
    with pytest.raises(ValueError, match="medium='air' or 'vacuum'"):
        read_generic(tmp_path / "c.fits", pixscale=0.3)
    cube = read_cube(tmp_path / "c.fits", medium="air", pixscale=0.3, fwhm=2.5)
    np.testing.assert_allclose(cube.var, var)
    np.testing.assert_allclose(cube.lam, lam)
    np.testing.assert_array_equal(cube.fwhm, np.full(50, 2.5))
    fits.HDUList([fits.PrimaryHDU(np.moveaxis(flux, -1, 0))]).writeto(tmp_path / "d.fits")
    with pytest.raises(ValueError, match="no variance .* inverse variance .* error"):
        read_generic(tmp_path / "d.fits", medium="air", pixscale=0.3)
