"""Several kinematic components per spectrum (cubefit.spectra.kinematics), on mocks made by
the package's direct forward model (cubefit.mock.forward_model: LOSVD histograms sampled on
the template pixels, direct convolution, exact-overlap binning), independent of the
fitter's analytic Fourier transform; and side by side with pPXF 9.5.2.

Network: six E-MILES SSPs (1, 3.2, 10 Gyr × [M/H] −0.4, 0), fetched once into the cache.
Rest-frame data (z = 0), two template pixels per data pixel (60 km/s), 4800–5500 Å.
"""
import dataclasses

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from cubefit.losvd import gauss_hermite_losvd
from cubefit.mock import forward_model
from cubefit.spectra import Camera, ContinuumOptions, Spectrum, fit_continuum, prepare_templates
from cubefit.spectra.kinematics import component_columns, fit_kinematics
from ifu_mocks import emiles_folder, library

pytestmark = pytest.mark.network
VS = 60.0                                       # km/s per data pixel
TRUTH = {"v": (150.0, -120.0), "sigma": (150.0, 60.0)}
OLD, YOUNG = [2, 3, 4, 5], [0, 1]               # template indices: 3.2 + 10 Gyr, 1 Gyr SSPs
COMP = np.array([1, 1, 0, 0, 0, 0])             # component of each template: young = 1


@pytest.fixture(autouse=True)
def one_thread():
    with threadpool_limits(limits=1):
        yield


@pytest.fixture(scope="module")
def pt(tmp_path_factory):
    lib = library(emiles_folder(tmp_path_factory.mktemp("ssp")), velscale=VS / 8,
                  lam_range=(4400.0, 6000.0))
    return prepare_templates(lib, velscale=VS / 2, lam_range=(4500.0, 5900.0), vel_max=800.0,
                             sigma_max=500.0)


@pytest.fixture(scope="module")
def clean(pt):
    """Noise-free two-component spectrum: the old disk (v, σ) = (150, 150) km/s on the
    3.2 and 10 Gyr SSPs, the young counter-rotating one (−120, 60) at 0.6 of its light on the
    1 Gyr SSPs; data pixels = pairs of template pixels.  Every template of a component has
    a positive weight: no NNLS bound is active at the truth, so the estimates are unbiased
    to first order in the noise."""
    ln_t = pt.ln_lam
    i0 = int(np.searchsorted(ln_t, np.log(4800.0)))
    n = int((np.log(5500.0) - ln_t[i0]) / (2 * pt.dlog))
    obs = ln_t[i0] - 0.5 * pt.dlog + (np.arange(n) + 0.5) * 2 * pt.dlog
    vel = pt.velscale * np.arange(-40, 41)
    H = np.zeros((1, vel.size, 2))
    for c in range(2):
        H[0, :, c] = (1.0, 0.6)[c] * gauss_hermite_losvd(vel, TRUTH["v"][c], TRUTH["sigma"][c])
    x = np.zeros((2, pt.P))
    x[0, OLD] = x[1, YOUNG] = 1.0
    x /= (x @ pt.flux).mean(axis=1, keepdims=True)                     # unit mean flux each
    return np.exp(obs), forward_model(pt.flux, ln_t, obs, vel, H, x)[0]


def spectrum(clean, snr, rng):
    wave, flux = clean
    sig = np.median(flux) / snr
    noisy = flux + rng.normal(0.0, sig, flux.size)
    return Spectrum([Camera("mock", wave, noisy, np.full(wave.size, sig ** -2.0))], z=0.0)


FIT = dict(mdegree=0, line_half_width=0.0, start=[[100.0, 100.0], [-80.0, 80.0]])


def test_one_component_is_fit_continuum(pt, clean):
    spec = spectrum(clean, 50.0, np.random.default_rng(1))
    a = fit_continuum(spec, pt, ContinuumOptions(degree=2, mdegree=3, line_half_width=0.0,
                                                 sigma_start=120.0, vel_start=20.0))
    b = fit_kinematics(spec, pt, degree=2, mdegree=3, line_half_width=0.0, start=[20.0, 120.0])
    assert a.ok and b.ok and b.C == 1
    np.testing.assert_allclose([b.vel[0], b.sigma[0], b.vel_err[0], b.sigma_err[0], b.chi2],
                               [a.vel, a.sigma, a.vel_err, a.sigma_err, a.chi2], rtol=1e-7)
    np.testing.assert_allclose(b.weights, a.weights, rtol=1e-6, atol=1e-9 * a.weights.max())
    np.testing.assert_allclose(b.models[0], a.models[0], rtol=1e-7)
    assert b.dof == a.dof and b.logage_lw[0] == pytest.approx(a.logage_lw, abs=1e-9)
    # The component's light is its model flux over the fitted pixels (no additive part).
    good = b.good[0]
    np.testing.assert_allclose(b.light[0], np.nansum(b.component_models[0][0][good]), rtol=1e-9)


def test_two_counter_rotating_components_recovered(pt, clean):
    """150 noise realisations at S/N 60 per pixel: v and σ of both components unbiased (mean
    error < 0.3 × scatter; measured ≤ 0.15) and the formal errors within 25 % of the scatter
    (measured 1–15 %)."""
    rng = np.random.default_rng(7)
    vals, errs, frac = [], [], []
    for _ in range(150):
        r = fit_kinematics(spectrum(clean, 60.0, rng), pt, COMP, **FIT)
        assert r.ok, r.message
        vals.append(np.r_[r.vel, r.sigma])
        errs.append(np.r_[r.vel_err, r.sigma_err])
        frac.append(r.light_fraction)
    vals, errs = np.array(vals), np.array(errs)
    truth = np.r_[TRUTH["v"], TRUTH["sigma"]]
    scatter = vals.std(axis=0, ddof=1)
    assert np.all(np.abs(vals.mean(axis=0) - truth) < 0.3 * scatter), (vals.mean(axis=0), scatter)
    ratio = np.median(errs, axis=0) / scatter
    assert np.all(np.abs(ratio - 1) < 0.25), ratio
    # The old component carries 1/1.6 of the light (both mixtures have unit mean flux).
    assert np.mean(frac, axis=0) == pytest.approx([1 / 1.6, 0.6 / 1.6], abs=0.02)


def test_templates_listed_once_per_component(pt, clean):
    """``component=2`` (every template in each component, FFTs shared) gives the fit of a
    library holding the templates twice with one index per template."""
    spec = spectrum(clean, 80.0, np.random.default_rng(3))
    a = fit_kinematics(spec, pt, 2, **FIT)
    twice = dataclasses.replace(pt, flux=np.vstack([pt.flux, pt.flux]), names=pt.names * 2,
                                mass_per_weight=None, lv_per_weight=None, pop_axes={},
                                axis_units={}, _rfft_cache={})
    b = fit_kinematics(spec, twice, np.repeat([0, 1], pt.P), **FIT)
    assert a.ok and b.ok
    np.testing.assert_allclose(a.params[:, :2], b.params[:, :2], rtol=1e-8)
    np.testing.assert_allclose(a.weights, b.weights, rtol=1e-6, atol=1e-9 * a.weights.max())
    t, c = component_columns(2, pt.P)
    np.testing.assert_array_equal(a.template, t)
    np.testing.assert_array_equal(a.component, c)


def test_fixed_moments(pt, clean):
    """moments=-2 holds a component at its start: its values come back unchanged, without
    errors; the other is fitted."""
    spec = spectrum(clean, 60.0, np.random.default_rng(5))
    r = fit_kinematics(spec, pt, COMP, moments=[2, -2], mdegree=0, line_half_width=0.0,
                       start=[[100.0, 100.0], [TRUTH["v"][1], TRUTH["sigma"][1]]])
    assert r.ok
    assert (r.vel[1], r.sigma[1]) == (TRUTH["v"][1], TRUTH["sigma"][1])
    assert np.isnan(r.vel_err[1]) and np.isnan(r.sigma_err[1]) and np.isnan(r.h3[0])
    assert abs(r.vel[0] - TRUTH["v"][0]) < 4 * r.vel_err[0]
    assert abs(r.sigma[0] - TRUTH["sigma"][0]) < 4 * r.sigma_err[0]


def test_ppxf_side_by_side(pt, clean):
    """pPXF 9.5.2 with the same templates, component, moments, start and pixels: v within
    3 km/s and σ within 2 % for both components (measured 0.03 km/s and 0.05 %)."""
    ppxf_mod = pytest.importorskip("ppxf.ppxf")
    spec = spectrum(clean, 150.0, np.random.default_rng(11))
    ours = fit_kinematics(spec, pt, COMP, **FIT)
    cam = spec.cameras[0]
    pp = ppxf_mod.ppxf(pt.flux.T, cam.flux, 1.0 / np.sqrt(cam.ivar), VS, FIT["start"],
                       component=COMP, moments=[2, 2], degree=-1, mdegree=0, velscale_ratio=2,
                       lam=cam.wave, lam_temp=np.exp(pt.ln_lam), quiet=True)
    theirs = np.array(pp.sol)
    assert ours.ok
    np.testing.assert_allclose(ours.vel, theirs[:, 0], atol=3.0)
    np.testing.assert_allclose(ours.sigma, theirs[:, 1], rtol=0.02)


def test_bad_arguments(pt, clean):
    spec = spectrum(clean, 60.0, np.random.default_rng(0))
    with pytest.raises(ValueError, match="without gaps"):
        fit_kinematics(spec, pt, np.array([0, 0, 2, 2, 2, 2]))
    with pytest.raises(ValueError, match="one per template"):
        fit_kinematics(spec, pt, np.array([0, 1, 0]))
    with pytest.raises(ValueError, match="moments"):
        fit_kinematics(spec, pt, COMP, moments=[2, 3])
    with pytest.raises(ValueError, match="one entry per component"):
        fit_kinematics(spec, pt, COMP, start=[[0, 100]] * 3)
    with pytest.raises(ValueError, match="bounds of component 1"):
        fit_kinematics(spec, pt, COMP, bounds=[None, [(-100, 100), (50, 40)]])
