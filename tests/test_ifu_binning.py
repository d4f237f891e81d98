"""Spatial binning to a target S/N (PowerBin) and the bin map figure."""
import numpy as np
import pytest

from cubefit.ifu.binning import bin_cube, plot_bin_map
from cubefit.ifu.readers import read_muse
from ifu_fits import write_muse


@pytest.fixture
def galaxy_cube(tmp_path):
    """24×20 MUSE-format cube of an exponential disk: S/N ~ 70 in the centre, ~3 at the edge."""
    rng = np.random.default_rng(11)
    ny, nx, L = 20, 24, 120
    yy, xx = np.mgrid[0:ny, 0:nx]
    r = np.hypot(xx - 11.5, (yy - 9.5) / 0.8)
    level = 70.0 * np.exp(-r / 4.0)
    sigma = np.ones((ny, nx, L))
    flux = level[..., None] * (1 + 0.1 * np.sin(np.arange(L) / 5.0)) + rng.standard_normal((ny, nx, L))
    dq = np.zeros((ny, nx, L), int)
    dq[10, 12, 30:40] = 1                                   # a few bad pixels in one spaxel
    write_muse(tmp_path / "c.fits", flux, sigma**2, 5000.0, dq=dq)
    return read_muse(tmp_path / "c.fits")


def test_bins_reach_the_target_and_conserve_flux(galaxy_cube, tmp_path):
    cube = galaxy_cube
    b = bin_cube(cube, target_sn=25.0, min_sn=1.0)
    use = cube.spaxels(1.0)
    assert np.array_equal(b.bin_map >= 0, use)              # every usable spaxel in one bin
    assert b.bin_map.max() + 1 == b.S and np.bincount(b.bin_map[use]) .tolist() == b.n_spaxels.tolist()
    multi = b.n_spaxels > 1
    assert multi.sum() >= 5 and (~multi).sum() >= 1        # binned outskirts, single centre
    # S/N of the summed spectra, recomputed by brute force from the cube.
    for s in np.flatnonzero(multi):
        iy, ix = np.nonzero(b.bin_map == s)
        f = cube.flux[iy, ix].sum(axis=0)
        e = np.sqrt(cube.var[iy, ix].sum(axis=0))
        if cube.good[iy, ix].all():
            np.testing.assert_allclose(b.flux[s], f, rtol=1e-10)
            np.testing.assert_allclose(b.noise[s], e, rtol=1e-10)
        np.testing.assert_allclose(b.sn[s], np.median(b.flux[s]) / np.median(b.noise[s]))
        np.testing.assert_allclose(b.xy[s], cube.xy()[iy * cube.shape[1] + ix].mean(axis=0))
    assert abs(np.median(b.sn[multi]) / 25.0 - 1) < 0.2
    assert np.all(b.sn[multi] > 0.6 * 25.0)
    # The bad pixels of spaxel (10, 12): summed over the good members and rescaled.
    s = b.bin_map[10, 12]
    if b.n_spaxels[s] == 1:
        assert not b.good[s, 30:40].any() and np.isinf(b.noise[s, 30:40]).all()
    png = plot_bin_map(b.bin_map, cube.pixscale, tmp_path / "bins.png", values=b.sn, label="S/N")
    assert png.stat().st_size > 2000
    assert plot_bin_map(b.bin_map, cube.pixscale, tmp_path / "ids.png").exists()


def test_applying_an_existing_bin_map(galaxy_cube):
    cube = galaxy_cube
    ny, nx, _ = cube.shape
    bm = np.full((ny, nx), -1)
    bm[:2, :3] = 0
    bm[5, 5] = 1
    b = bin_cube(cube, target_sn=1.0, bin_map=bm)
    assert b.S == 2 and b.n_spaxels.tolist() == [6, 1]
    np.testing.assert_allclose(b.flux[0], cube.flux[:2, :3].reshape(6, -1).sum(axis=0))
    bm[5, 5] = 2
    with pytest.raises(ValueError, match=r"bins \[1\] have no spaxel"):
        bin_cube(cube, target_sn=1.0, bin_map=bm)
    with pytest.raises(ValueError, match="no spaxel has S/N >= 1000"):
        bin_cube(cube, target_sn=10.0, min_sn=1000)
