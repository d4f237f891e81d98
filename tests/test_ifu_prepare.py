"""From a MUSE-format cube with known kinematics to the global fit (cubefit.ifu.prepare)."""
import h5py
import numpy as np
import pytest

from cubefit import C_KMS
from cubefit.ifu.binning import bin_cube
from cubefit.ifu.losvds import losvds_from_moments, velocity_grid
from cubefit.ifu.prepare import broaden_templates, prepare_global_fit
from cubefit.ifu.readers import FWHM_PER_SIGMA, muse_lsf_fwhm, read_muse
from cubefit.mock import forward_model, synthetic_templates
from cubefit.runner import PipelineRunner
from cubefit.science import analyse, write_truth
from cubefit.templates import TemplateLibrary
from ifu_fits import write_muse


def test_broadening_gives_the_quadrature_width():
    """A one-pixel spike becomes a Gaussian whose variance is the quadrature difference
    of the FWHMs (in pixels of the log grid), also where the width varies with λ."""
    ln_lam = np.log(4000.0) + 1e-4 * np.arange(6000)         # 30 km/s pixels, 4000-7288 Å
    lam = np.exp(ln_lam)
    spikes = np.zeros((2, lam.size))
    at = [1500, 4500]
    spikes[0, at[0]] = spikes[1, at[1]] = 1.0
    target = 2.0 + 1e-3 * (lam - 4000.0)                     # FWHM 2.6-5.3 Å
    out = broaden_templates(spikes, ln_lam, target, 1.0)
    np.testing.assert_allclose(out.sum(axis=1), 1.0, rtol=1e-3)   # normalised weights
    for p, i in enumerate(at):
        k = np.arange(lam.size) - i
        var = np.sum(out[p] * k**2) / out[p].sum()
        # The kernel of output pixel t has the width at t: moments of the response to a
        # spike at i are those of the kernels near i (width changes by 0.1 % per σ).
        sig = np.sqrt(target[i] ** 2 - 1.0) / FWHM_PER_SIGMA / (lam[i] * 1e-4)
        np.testing.assert_allclose(np.sqrt(var), sig, rtol=0.01)
    # No sharpening: templates finer than the target are left as they are.
    np.testing.assert_array_equal(broaden_templates(spikes, ln_lam, 1.0, 2.0), spikes)


Z = 0.01
POP = (3, 2)


@pytest.fixture(scope="module")
def muse_galaxy(tmp_path_factory):
    """3×3-spaxel MUSE-format cube (air, linear 1.25 Å pixels, z = 0.01) of two
    counter-rotating components of different ages, S/N 150 per pixel, made by the
    forward model from templates broadened to the MUSE LSF."""
    tmp = tmp_path_factory.mktemp("muse")
    flux, ln_lam, axes = synthetic_templates(n_age=POP[0], n_metal=POP[1], lam=(4400.0, 6400.0),
                                             velscale=20.0)
    lam_obs = 4900.0 + 1.25 * np.arange(800)                 # 4900-5899 Å observed (air)
    fwhm_rest = muse_lsf_fwhm(np.exp(ln_lam) * (1 + Z)) / (1 + Z)
    data_templates = broaden_templates(flux, ln_lam, fwhm_rest, 0.0)
    yy, xx = np.mgrid[0:3, 0:3]
    x, y = (xx - 1.0).ravel(), (yy - 1.0).ravel()
    r = np.hypot(x, y)
    moments = np.zeros((9, 2, 2))
    moments[:, 0] = np.column_stack([120.0 * x, np.full(9, 160.0)])
    moments[:, 1] = np.column_stack([-90.0 * x, np.full(9, 60.0)])
    light = np.column_stack([np.exp(-r / 2.0), 0.7 * np.exp(-r / 3.0)])
    vel = velocity_grid(moments, velscale=20.0)
    H = losvds_from_moments(moments, light, vel)
    x_true = np.zeros((2, 6))
    x_true[0, [4, 5]] = [0.6, 0.4]                            # old
    x_true[1, [0, 2]] = [0.7, 0.3]                            # young
    x_true /= (x_true @ flux).mean(axis=1, keepdims=True)
    model = forward_model(data_templates, ln_lam, np.log(lam_obs / (1 + Z)), vel, H, x_true)
    sigma = model.mean(axis=1, keepdims=True) / 150.0 * np.ones_like(model)
    data = model + sigma * np.random.default_rng(4).standard_normal(model.shape)
    write_muse(tmp / "cube.fits", data.reshape(3, 3, -1), (sigma**2).reshape(3, 3, -1), 4900.0)
    lib = TemplateLibrary(flux=flux, ln_lam=ln_lam, velscale=20.0, pop_axes=axes, grid_shape=POP,
                          axis_units={"age": "Gyr", "metal": "dex"}, fwhm=None, flux_unit="")
    return dict(path=tmp / "cube.fits", lib=lib, H=H, vel=vel, x_true=x_true, light=light)


def test_muse_cube_to_global_fit(muse_galaxy, tmp_path):
    g = muse_galaxy
    cube = read_muse(g["path"], z=Z)
    ones = np.arange(9).reshape(3, 3)                        # one bin per spaxel
    binned = bin_cube(cube, target_sn=1.0, bin_map=ones)
    h5 = tmp_path / "galaxy.h5"
    dims = prepare_global_fit(h5, binned, g["lib"], g["H"], g["vel"], template_fwhm=0.0,
                              template_medium="air", names=["old disk", "young disk"])
    assert (dims.nSpat, dims.nComp, dims.nPop) == (9, 2, 6)
    with h5py.File(h5, "r") as f:
        obs = f["/ObsPix"][...]
        # Rest-frame grid inside the observed range / (1 + z), cube's pixel count.
        assert np.exp(obs[0]) >= (4900 - 0.625) / (1 + Z) - 1e-6
        assert np.exp(obs[-1]) <= (4900 + 1.25 * 799 + 0.625) / (1 + Z) + 1e-6
        np.testing.assert_allclose(C_KMS * np.diff(obs).mean(),
                                   C_KMS * np.log((4900 + 1.25 * 799.5) / 4899.375) / 800, rtol=1e-3)
        np.testing.assert_array_equal(f["/BinMap"][...], ones)
        assert f["/BinMap"].attrs["z"] == Z and f["/SpaxelXY"].attrs["units"] == "arcsec"
        np.testing.assert_allclose(f["/SpaxelXY"][...], cube.xy())
        np.testing.assert_array_equal(f["/LOSVD"][...], g["H"])
        # The rebin conserves each spectrum's integrated flux (rest frame, Å).
        from cubefit.grids import edges_from_centres
        width = np.diff(np.exp(edges_from_centres(obs)))
        np.testing.assert_allclose(f["/DataCube"][...] @ width, binned.flux.sum(axis=1) * 1.25 / (1 + Z),
                                   rtol=2e-3)
    write_truth(h5, g["x_true"], norm_mode="model")
    PipelineRunner(h5).solve_all_mp_batched(norm_mode="model", track=False)
    rows = analyse(h5).comparison()
    for r in rows:
        if r["quantity"] == "light fraction":
            assert abs(r["diff"]) < 0.03, r
        if r["quantity"] == "<log age>_L [dex]":
            assert abs(r["diff"]) < 0.1, r
    assert {r["quantity"] for r in rows} >= {"light fraction", "<log age>_L [dex]"}


def test_wrong_losvd_count_is_refused(muse_galaxy, tmp_path):
    g = muse_galaxy
    binned = bin_cube(read_muse(g["path"], z=Z), target_sn=1.0, bin_map=np.arange(9).reshape(3, 3))
    with pytest.raises(ValueError, match=r"losvd: expected \(S, V, C\) with S = 9"):
        prepare_global_fit(tmp_path / "x.h5", binned, g["lib"], g["H"][:4], g["vel"],
                           template_fwhm=0.0)
    with pytest.raises(ValueError, match="template_fwhm"):
        prepare_global_fit(tmp_path / "x.h5", binned, g["lib"], g["H"], g["vel"])
    assert not (tmp_path / "x.h5").exists()
