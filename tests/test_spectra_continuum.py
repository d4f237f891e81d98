"""Continuum fitter on synthetic templates (no download): forward model against brute-force
convolution and binning, Jacobian against finite differences, exact recovery of noiseless
mocks, per-target failures, catalogue rows, Dn4000."""
import math

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from cubefit import C_KMS
from cubefit.mock import synthetic_templates
from cubefit.spectra import (CONTINUUM_COLUMNS, STATUS, Camera, ContinuumOptions, Resolution, Spectrum,
                             continuum_columns, dn4000, fit_continuum, fit_spectrum, prepare_templates,
                             vacuum_to_air)
from cubefit.spectra.data import FWHM_PER_SIGMA
from cubefit.spectra.model import TargetModel
from cubefit.templates import TemplateLibrary

VS = 20.0            # template pixel, km/s
SIG_T = 25.0         # templates' own dispersion, km/s (constant in velocity)
Z = 0.05


@pytest.fixture(autouse=True)
def one_thread():
    """Small dense problems: threaded BLAS only adds contention on a shared machine."""
    with threadpool_limits(limits=1):
        yield


@pytest.fixture(scope="module")
def pt():
    flux, ln_lam, axes = synthetic_templates(n_age=3, n_metal=2, lam=(3900.0, 7000.0), velscale=5.0)
    lib = TemplateLibrary(flux=flux, ln_lam=ln_lam, velscale=5.0, pop_axes=axes, grid_shape=(3, 2),
                          axis_units={"age": "Gyr", "metal": "dex"}, fwhm=None, flux_unit="arbitrary",
                          masses=np.linspace(0.5, 0.9, 6), mass_to_light=np.linspace(0.5, 5.0, 6))
    fwhm = FWHM_PER_SIGMA * SIG_T / C_KMS * lib.lam            # constant in velocity
    return prepare_templates(lib, velscale=VS, lam_range=(4000.0, 6900.0), library_air=False,
                             fwhm=fwhm, vel_max=600.0, sigma_max=400.0, block_kms=8000.0)


def gh_density(u, v, s, h3=0.0, h4=0.0):
    y = (u - v) / s
    H3 = (2 * math.sqrt(2) * y ** 3 - 3 * math.sqrt(2) * y) / math.sqrt(6)
    H4 = (4 * y ** 4 - 12 * y ** 2 + 3) / math.sqrt(24)
    return np.exp(-0.5 * y * y) / (s * math.sqrt(2 * math.pi)) * (1 + h3 * H3 + h4 * H4)


def brute_model(pt, p, v, s, h3, h4, delta, var_extra=0.0):
    """Template p convolved (direct sums) with the LOSVD sampled at the shifts and, if
    var_extra > 0 (km²/s²), with a sampled Gaussian of that variance; evaluated at template
    pixel o + delta, rest frame: (T ⊛ L)(o + δ) = Σ_m T[o - m] L(m + δ)."""
    m = np.arange(-120, 121)
    kern = gh_density((m + delta) * pt.velscale, v, s, h3, h4) * pt.velscale
    if var_extra > 0:
        kern = np.convolve(kern, gh_density(m * pt.velscale, 0.0, math.sqrt(var_extra)) * pt.velscale,
                           mode="same")
    return np.convolve(pt.flux[p], kern, mode="same")


def camera_grid(pt, i0, n, ratio, delta):
    """Observed wavelengths of n log pixels of `ratio` template pixels, starting at template
    pixel i0, shifted by delta template pixels, at redshift Z."""
    d = pt.dlog
    edge0 = pt.ln_lam[0] - 0.5 * d + (i0 + delta) * d
    centres = edge0 + (np.arange(n) + 0.5) * ratio * d
    return np.exp(centres + math.log1p(Z))


@pytest.mark.parametrize("delta", [0.0, 0.3])
@pytest.mark.parametrize("moments", [2, 4])
def test_forward_model_matches_brute_force_log_camera(pt, delta, moments):
    """Aligned log camera (2 template pixels per pixel), FWHM resolution constant in velocity:
    every template column equals direct convolution with the LOSVD and a Gaussian of variance
    σ_R² − σ_T², binned."""
    ratio, i0, n = 2, 900, 1500
    wave = camera_grid(pt, i0, n, ratio, delta)
    sig_r = 60.0
    res = Resolution.from_R(C_KMS / (FWHM_PER_SIGMA * sig_r), wave)
    spec = Spectrum([Camera("c", wave, np.ones(n), np.ones(n), res)], z=Z)
    model = TargetModel(spec, pt, moments=moments, degree=-1, mdegree=0, line_half_width=0.0)
    assert model.cameras[0].ratio == ratio
    assert model.delta == pytest.approx(delta, abs=1e-6)
    theta = [37.0, 95.0] + ([0.06, -0.04] if moments == 4 else [])
    h3, h4 = (theta[2], theta[3]) if moments == 4 else (0.0, 0.0)
    cols = model.evaluate(theta)["cols"][0]                    # (P, n_good)
    good = model.cameras[0].good
    for p in (0, 5):
        fine = brute_model(pt, p, 37.0, 95.0, h3, h4, delta, sig_r ** 2 - SIG_T ** 2)
        ref = fine[i0:i0 + ratio * n].reshape(n, ratio).mean(axis=1)
        np.testing.assert_allclose(cols[p], ref[good], rtol=2e-6, atol=1e-7 * ref.max())


def test_forward_model_linear_camera_with_resolution_matrix(pt):
    """Linear-λ camera (not aligned: exact-overlap binning) and a resolution matrix: the
    columns equal R @ (overlap average of the brute-force model), with σ_eff² = σ² − σ_T²."""
    n = 1400
    wave = np.linspace(4700.0, 6100.0, n) * (1 + Z)
    R = Resolution.from_fwhm(1.6, wave).to_matrix(wave)
    spec = Spectrum([Camera("b", wave, np.ones(n), np.ones(n), R)], z=Z)
    model = TargetModel(spec, pt, moments=2, degree=-1, mdegree=0, line_half_width=0.0)
    assert model.cameras[0].ratio == 0 and model.delta == 0.0
    cols = model.evaluate([-55.0, 120.0])["cols"][0]
    good = model.cameras[0].good
    fine = brute_model(pt, 3, -55.0, math.sqrt(120.0 ** 2 - SIG_T ** 2), 0.0, 0.0, 0.0)
    # average of the piecewise-constant model (template pixels, rest frame) over each pixel
    e_t = pt.ln_lam[0] - 0.5 * pt.dlog + pt.dlog * np.arange(pt.T + 1)
    cum = np.concatenate(([0.0], np.cumsum(fine * pt.dlog)))
    ln = np.log(wave) - math.log1p(Z)
    e = np.concatenate(([1.5 * ln[0] - 0.5 * ln[1]], 0.5 * (ln[1:] + ln[:-1]), [1.5 * ln[-1] - 0.5 * ln[-2]]))
    integ = np.interp(e, e_t, cum)
    ref = R.dense() @ (np.diff(integ) / np.diff(e))
    np.testing.assert_allclose(cols[3], ref[good], rtol=2e-6, atol=1e-7 * ref.max())


def _mock(pt, theta, weights, n=1500, ratio=2, noise=0.0, seed=0, mdeg_coef=(), tau=0.0):
    """Data drawn from the model itself at theta (exact recovery checks the optimiser)."""
    wave = camera_grid(pt, 900, n, ratio, 0.37)
    res = Resolution.from_R(3000.0, wave)
    spec = Spectrum([Camera("c", wave, np.ones(n), np.ones(n), res)], z=Z)
    md = len(mdeg_coef)
    m = TargetModel(spec, pt, moments=len(theta), degree=-1, mdegree=md, dust=tau > 0, line_half_width=0.0)
    st = m.evaluate(list(theta) + list(mdeg_coef) + ([tau] if tau > 0 else []))
    flux = np.asarray(weights) @ st["cols"][0] * st["factors"][0]
    rng = np.random.default_rng(seed)
    err = noise * np.median(flux) if noise else 1e-3
    flux = flux + (rng.normal(0.0, err, flux.size) if noise else 0.0)
    return Spectrum([Camera("c", wave, flux, np.full(n, err ** -2.0), res)], z=Z)


def test_noiseless_mock_recovered_exactly(pt):
    w = np.array([0.0, 1.0, 0.0, 0.5, 0.0, 0.3])
    spec = _mock(pt, [42.0, 130.0, 0.05, -0.03], w, mdeg_coef=(0.1, -0.05), tau=0.3)
    r = fit_continuum(spec, pt, ContinuumOptions(moments=4, mdegree=2, dust=True, line_half_width=0.0))
    assert r.status == 0, r.message
    np.testing.assert_allclose([r.vel, r.sigma, r.h3, r.h4, r.tau_v], [42.0, 130.0, 0.05, -0.03, 0.3],
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(r.mpoly, [0.1, -0.05], atol=1e-5)
    np.testing.assert_allclose(r.weights, w, rtol=1e-4, atol=1e-6)
    assert r.chi2 < 1e-6


def test_jacobian_matches_finite_differences(pt):
    """With the weights frozen at the optimum, −P⊥ ∂(A w)/∂θ from finite differences of the
    model equals the analytic Kaufman Jacobian (LOSVD, multiplicative polynomial, dust)."""
    spec = _mock(pt, [10.0, 90.0, 0.0, 0.0], [0.2, 0.0, 1.0, 0.0, 0.4, 0.1], noise=0.02)
    m = TargetModel(spec, pt, moments=4, degree=3, mdegree=2, dust=True, line_half_width=0.0)
    theta = np.array([15.0, 100.0, 0.03, 0.02, 0.05, -0.02, 0.2])
    st = m.evaluate(theta)
    w, J = st["w"].copy(), m.jacobian(theta)
    act = w > 0
    assert act.sum() >= 2

    def Aw(th):
        s = m.evaluate(th)
        return w @ s["At"]
    D = np.empty_like(J)
    for k, h in enumerate([0.01, 0.01, 1e-5, 1e-5, 1e-6, 1e-6, 1e-6]):
        e = np.zeros(theta.size)
        e[k] = h
        D[:, k] = (Aw(theta + e) - Aw(theta - e)) / (2 * h)
    st = m.evaluate(theta)
    B = np.concatenate([m.Q, st["At"][act].T], axis=1)
    Qb = np.linalg.qr(B)[0]
    ref = -(D - Qb @ (Qb.T @ D))
    for k in range(theta.size):
        np.testing.assert_allclose(J[:, k], ref[:, k], rtol=1e-5, atol=1e-6 * np.abs(ref[:, k]).max())


def test_additive_polynomial_and_models(pt):
    """An additive Legendre polynomial in the data is absorbed exactly; models() reproduces
    the data on every pixel, also the masked ones."""
    spec = _mock(pt, [0.0, 150.0], [1.0, 0, 0, 0, 0.5, 0])
    cam = spec.cameras[0]
    x = np.linspace(-1, 1, cam.npix)
    cam.flux = cam.flux + 0.05 * np.median(cam.flux) * (1 + 0.5 * x - 0.3 * (1.5 * x * x - 0.5))
    cam.ivar[100:120] = 0.0
    r = fit_continuum(spec, pt, ContinuumOptions(degree=2, mdegree=0, line_half_width=0.0))
    assert r.status == 0
    np.testing.assert_allclose([r.vel, r.sigma], [0.0, 150.0], atol=1e-4)
    np.testing.assert_allclose(r.models[0], cam.flux, rtol=1e-6)
    assert not r.good[0][100:120].any()


def test_formal_errors_match_scatter_small(pt):
    """Formal errors agree with the scatter over noise realisations (40: a quick check)."""
    truth = [20.0, 110.0]
    w = [0.0, 1.0, 0.0, 0.0, 0.6, 0.0]
    vals, errs = [], []
    for seed in range(40):
        r = fit_continuum(_mock(pt, truth, w, noise=0.05, seed=seed), pt,
                          ContinuumOptions(mdegree=0, line_half_width=0.0))
        vals.append([r.vel, r.sigma])
        errs.append([r.vel_err, r.sigma_err])
    vals, errs = np.array(vals), np.array(errs)
    scatter = vals.std(axis=0, ddof=1)
    np.testing.assert_allclose(np.median(errs, axis=0), scatter, rtol=0.35)
    assert np.all(np.abs(vals.mean(axis=0) - truth) < 3 * scatter / math.sqrt(40))


def test_air_wavelengths_are_converted(pt):
    spec = _mock(pt, [25.0, 100.0], [0, 1.0, 0, 0, 0, 0])
    cam = spec.cameras[0]
    air = Spectrum([Camera("c", vacuum_to_air(cam.wave), cam.flux, cam.ivar,
                           Resolution.from_R(3000.0, vacuum_to_air(cam.wave)))], z=Z, air=True)
    opt = ContinuumOptions(mdegree=0, line_half_width=0.0)
    a, b = fit_continuum(spec, pt, opt), fit_continuum(air, pt, opt)
    assert abs(a.vel - b.vel) < 0.05 and abs(a.sigma - b.sigma) < 0.05


def test_per_target_failures_give_status_not_exceptions(pt):
    good = _mock(pt, [0.0, 100.0], [1.0, 0, 0, 0, 0, 0])
    cam = good.cameras[0]
    bad_flux = cam.flux.copy()
    bad_flux[5] = np.nan
    cases = {
        "bad_input": Spectrum([Camera("c", cam.wave, bad_flux, cam.ivar)], z=Z),
        "no_pixels": Spectrum([Camera("c", cam.wave, cam.flux, np.zeros(cam.npix))], z=Z),
        "out_of_range": Spectrum([Camera("c", cam.wave, cam.flux, cam.ivar)], z=1.5),
    }
    for status, spec in cases.items():
        r = fit_continuum(spec, pt)
        assert r.status == STATUS[status], (status, r.message)
        assert r.message
        row = r.to_row()
        assert row["STATUS"] == STATUS[status] and math.isnan(row["VDISP"]) and row["VDISP_IVAR"] == 0.0
    neg = cam.ivar.copy()
    neg[3] = -1.0
    r = fit_continuum(Spectrum([Camera("c", cam.wave, cam.flux, neg)], z=Z), pt)
    assert r.status == STATUS["bad_input"] and "negative" in r.message
    with pytest.raises(ValueError, match="moments"):
        ContinuumOptions(moments=3)


def test_row_matches_columns(pt):
    r = fit_continuum(_mock(pt, [5.0, 100.0], [0.3, 1.0, 0, 0, 0, 0.2], noise=0.02), pt,
                      ContinuumOptions(moments=4, mdegree=0, line_half_width=0.0))
    row = r.to_row()
    cols = r.columns()
    assert list(row) == [c[0] for c in cols]
    assert row["VDISP"] == r.sigma and row["VDISP_IVAR"] == pytest.approx(r.sigma_err ** -2)
    assert row["CONTINUUM_COEFF"].shape == (pt.P,) and row["SNR_C"] > 0
    assert math.isnan(row["TAU_V"]) and row["TAU_V_IVAR"] == 0.0
    assert np.isfinite([row["LOGAGE_LW"], row["LOGAGE_MW"], row["MH_LW"], row["ML_V"]]).all()
    # Mass-weighted and M/L from the library's masses (independent sums)
    w = r.weights
    mass = w * np.linspace(0.5, 0.9, 6)
    ml = mass.sum() / (mass / np.linspace(0.5, 5.0, 6)).sum()
    assert row["ML_V"] == pytest.approx(ml, rel=1e-12)
    ages = np.repeat(np.log10(np.geomspace(0.1, 12.0, 3)) + 9.0, 2)
    assert row["LOGAGE_MW"] == pytest.approx((mass * ages).sum() / mass.sum(), rel=1e-12)
    names = [c[0] for c in CONTINUUM_COLUMNS]
    assert names[:3] == ["TARGETID", "STATUS", "MESSAGE"] and "SNR_B" in names and "DN4000_MODEL" in names
    assert len(set(names)) == len(names)
    assert [c[0] for c in continuum_columns(6, ["sdss"])].count("SNR_SDSS") == 1


def test_fit_spectrum_arrays(pt):
    spec = _mock(pt, [-30.0, 140.0], [0, 0, 1.0, 0, 0, 0.5])
    cam = spec.cameras[0]
    r = fit_spectrum(cam.wave, cam.flux, cam.ivar, Z, R=3000.0, templates=pt, mdegree=0,
                     line_half_width=0.0)
    assert r.status == 0 and r.vel == pytest.approx(-30.0, abs=1e-4) and r.sigma == pytest.approx(140.0, abs=1e-4)
    with pytest.raises(ValueError, match="either"):
        fit_spectrum(cam.wave, cam.flux, cam.ivar, Z, R=3000.0, resolution=2.0, templates=pt)


def test_dn4000_against_analytic_values():
    lam = np.linspace(3700.0, 4300.0, 3001)
    # F_ν constant (F_λ ∝ λ⁻²): Dn4000 = 1
    assert dn4000(lam, lam ** -2.0)[0] == pytest.approx(1.0, rel=1e-6)
    # F_λ constant: ratio of ∫λ² over the bands
    red = (4100 ** 3 - 4000 ** 3) / 3
    blue = (3950 ** 3 - 3850 ** 3) / 3
    assert dn4000(lam, np.ones_like(lam))[0] == pytest.approx(red / blue, rel=1e-6)
    # error propagation: ivar of the ratio against the linear formula by finite differences
    rng = np.random.default_rng(1)
    f = 1 + 0.1 * rng.random(lam.size)
    iv = np.full(lam.size, 400.0)
    d0, ivar = dn4000(lam, f, iv)
    grad = np.empty(lam.size)
    for i in range(lam.size):
        g = f.copy()
        g[i] += 1e-6
        grad[i] = (dn4000(lam, g, iv)[0] - d0) / 1e-6
    assert ivar == pytest.approx(1.0 / np.sum(grad ** 2 / iv), rel=1e-4)
    # a band not covered → NaN
    assert math.isnan(dn4000(lam[lam > 3900], np.ones(np.count_nonzero(lam > 3900)))[0])
