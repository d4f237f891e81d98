"""LOSVD histograms from kinematic moments, and LOSVDs imported with cubefit init --losvd."""
import h5py
import numpy as np
import pytest
from astropy.io import fits

from cubefit.ifu.losvds import losvds_from_moments, read_losvd_file, velocity_grid


def _moments_of(H, vel):
    """Zeroth, first and (square root of the) second central moment along axis 1."""
    m0 = np.where(H.sum(axis=1) > 0, H.sum(axis=1), np.nan)
    mean = np.einsum("svc,v->sc", H, vel) / m0
    var = np.einsum("svc,svc->sc", H, (vel[None, :, None] - mean[:, None, :]) ** 2) / m0
    return m0, mean, np.sqrt(var)


def test_gaussians_have_the_analytic_moments():
    vel = 20.0 * np.arange(-100, 101)                        # ±2000 km/s, 20 km/s bins
    v = np.array([[0.0, 150.0], [-230.0, 40.0], [75.0, 310.0]])
    sig = np.array([[200.0, 60.0], [45.0, 120.0], [90.0, 250.0]])
    light = np.array([[1.0, 0.5], [2.5, 0.0], [0.3, 7.0]])
    H = losvds_from_moments(np.stack([v, sig], -1), light, vel)
    assert H.shape == (3, vel.size, 2) and np.all(H >= 0)
    m0, mean, std = _moments_of(H[:, :, :], vel)
    present = light > 0
    np.testing.assert_allclose(H.sum(axis=1), light, rtol=1e-12)   # amplitude = light
    assert not H[1, :, 1].any()                              # no light: no histogram
    np.testing.assert_allclose(mean[present], v[present], atol=1e-6 * sig[present].max())
    np.testing.assert_allclose(std[present], sig[present], rtol=1e-6)   # sampled at ≥ 2.25 bins/σ


def test_gauss_hermite_moments_to_first_order():
    """Small h3 shifts the mean by √3·h3·σ; small h4 widens the dispersion by √6·h4·σ
    (first order in h3, h4: van der Marel & Franx 1993)."""
    vel = 10.0 * np.arange(-150, 151)
    sig, h = 150.0, 0.01
    mom = np.array([[[0.0, sig, h, 0.0], [0.0, sig, 0.0, h]]])
    H = losvds_from_moments(mom, np.ones((1, 2)), vel)
    _, mean, std = _moments_of(H, vel)
    np.testing.assert_allclose(mean[0, 0], np.sqrt(3) * h * sig, rtol=0.02)
    np.testing.assert_allclose(std[0, 1] - sig, np.sqrt(6) * h * sig, rtol=0.05)


def test_grid_checks():
    mom = np.array([[[400.0, 150.0]]])
    vel = velocity_grid(mom, velscale=40.0)
    assert vel[0] < 0 < vel[-1] and np.allclose(np.diff(vel), 40.0) and vel[-1] >= 400 + 5 * 150
    H = losvds_from_moments(mom, [[2.0]], vel)
    np.testing.assert_allclose(H.sum(), 2.0)
    with pytest.raises(ValueError, match="bin 0, component 0 .* widen the grid"):
        losvds_from_moments(mom, [[1.0]], 40.0 * np.arange(-10, 11))
    with pytest.raises(ValueError, match="sigma must be > 0"):
        losvds_from_moments(np.array([[[0.0, 0.0]]]), [[1.0]], vel)
    with pytest.raises(ValueError, match=r"moments: expected \(S, C, 2\)"):
        losvds_from_moments(np.zeros((1, 1, 3)), [[1.0]], vel)


def test_import_losvds_with_cubefit_init(tmp_path, small_mock):
    from cubefit.cli import main
    m = small_mock
    np.savez(tmp_path / "in.npz", TemPix=m.tem_pix, ObsPix=m.obs_pix, Templates=m.templates,
             DataCube=m.datacube, Noise=m.noise, Mask=m.mask)
    # FITS: LOSVD (S, V, C) and VELPIX; HDF5: LOSVD and VelPix.
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(m.losvd, name="LOSVD"),
                  fits.ImageHDU(m.vel_pix, name="VELPIX")]).writeto(tmp_path / "l.fits")
    with h5py.File(tmp_path / "l.h5", "w") as f:
        f["model/LOSVD"] = m.losvd
        f["model/VelPix"] = m.vel_pix
    for src in ("l.fits", "l.h5"):
        H, vel = read_losvd_file(tmp_path / src)
        np.testing.assert_array_equal(H, m.losvd)
        np.testing.assert_array_equal(vel, m.vel_pix)
        out = tmp_path / f"g_{src}.h5"
        assert main(["init", str(tmp_path / "in.npz"), str(out), "--losvd", str(tmp_path / src)]) == 0
        with h5py.File(out, "r") as f:
            np.testing.assert_array_equal(f["/LOSVD"][...], m.losvd)
            np.testing.assert_array_equal(f["/VelPix"][...], m.vel_pix)
    # Without --losvd the input must hold the LOSVDs; a wrong axis order is refused.
    assert main(["init", str(tmp_path / "in.npz"), str(tmp_path / "x.h5")]) == 1
    with h5py.File(tmp_path / "bad.h5", "w") as f:
        f["LOSVD"] = np.moveaxis(m.losvd, 1, 2)
        f["VelPix"] = m.vel_pix
    with pytest.raises(ValueError, match=r"must be \(S, V, C\) with V = .* transpose"):
        read_losvd_file(tmp_path / "bad.h5")
