"""Continuum-fit pieces the fastspec pipeline relies on (synthetic templates, no download):
the search on a screened subset of templates reaches the optimum of the full problem,
warm starts (Monte-Carlo refits) land on the same optimum in fewer evaluations, the
continuum basis reproduces the best-fit model, and the line mask follows the line list."""
import math

import numpy as np
import pytest
from scipy.optimize import nnls
from threadpoolctl import threadpool_limits

from cubefit import C_KMS
from cubefit.mock import synthetic_templates
from cubefit.spectra import Camera, ContinuumOptions, Resolution, Spectrum, prepare_templates
from cubefit.spectra import continuum as continuum_mod
from cubefit.spectra.continuum import continuum_basis, fit_continuum
from cubefit.spectra.data import FWHM_PER_SIGMA
from cubefit.spectra.model import EMISSION_LINES, TargetModel
from cubefit.spectra.linelist import default_linelist
from cubefit.templates import TemplateLibrary

Z = 0.05


@pytest.fixture(autouse=True)
def one_thread():
    with threadpool_limits(limits=1):
        yield


@pytest.fixture(scope="module")
def pt():
    """50 smooth SSP-like templates: enough for the screening to leave most of them out."""
    flux, ln_lam, axes = synthetic_templates(n_age=10, n_metal=5, lam=(3900.0, 7000.0), velscale=5.0)
    lib = TemplateLibrary(flux=flux, ln_lam=ln_lam, velscale=5.0, pop_axes=axes, grid_shape=(10, 5),
                          axis_units={"age": "Gyr", "metal": "dex"}, fwhm=None, flux_unit="arbitrary",
                          masses=np.linspace(0.5, 0.9, 50), mass_to_light=np.linspace(0.5, 5.0, 50))
    fwhm = FWHM_PER_SIGMA * 25.0 / C_KMS * lib.lam
    return prepare_templates(lib, velscale=20.0, lam_range=(4000.0, 6900.0), library_air=False,
                             fwhm=fwhm, vel_max=600.0, sigma_max=400.0, block_kms=8000.0)


def _mock(pt, theta, weights, *, noise, seed, mdeg=(0.05, -0.03)):
    """A linear-λ camera (resolution R = 3000) drawn from the model at ``theta``."""
    wave = np.linspace(4300.0, 7000.0, 2500)
    res = Resolution.from_R(3000.0, wave)
    spec = Spectrum([Camera("c", wave, np.ones(wave.size), np.ones(wave.size), res)], z=Z)
    m = TargetModel(spec, pt, moments=2, degree=-1, mdegree=len(mdeg), line_half_width=0.0)
    st = m.evaluate(list(theta) + list(mdeg))
    flux = np.asarray(weights) @ st["cols"][0] * st["factors"][0]
    sig = noise * np.median(flux)
    flux = flux + np.random.default_rng(seed).normal(0.0, sig, flux.size)
    return Spectrum([Camera("c", wave, flux, np.full(wave.size, sig ** -2.0), res)], z=Z)


WEIGHTS = np.zeros(50)
WEIGHTS[[3, 17, 31, 44]] = [0.6, 0.3, 0.5, 0.2]
OPT = ContinuumOptions(mdegree=2, line_half_width=0.0)


@pytest.mark.parametrize("seed", [3, 4])
def test_screened_search_reaches_the_full_optimum(pt, monkeypatch, seed):
    """Screened subsets of 8 and of 1 inactive template besides the active ones (templates
    must then enter in later rounds), against the search on all 50: the same optimum —
    to the precision the stopping rule gives in this degenerate library (a small fraction
    of the formal error), the same χ² and model."""
    spec = _mock(pt, [35.0, 140.0], WEIGHTS, noise=0.02, seed=seed)
    full = fit_continuum(spec, pt, OPT)                       # 24 + active > 50/3: no subset
    assert full.status == 0 and full.candidates.size == 50
    monkeypatch.setattr(continuum_mod, "SUBSET_MAX_FRACTION", 1.0)
    for smin in (8, 1):
        monkeypatch.setattr(continuum_mod, "SCREEN_MIN", smin)
        r = fit_continuum(spec, pt, OPT)
        assert r.candidates.size < 50
        assert set(np.flatnonzero(r.weights > 0)) <= set(r.candidates)
        assert abs(r.vel - full.vel) < 0.05 * full.vel_err
        assert abs(r.sigma - full.sigma) < 0.05 * full.sigma_err
        assert r.chi2 == pytest.approx(full.chi2, rel=1e-6)
        np.testing.assert_allclose(r.models[0], full.models[0], atol=0.05 * spec.cameras[0].ivar[0] ** -0.5)
    assert abs(full.vel - 35.0) < 4 * full.vel_err and abs(full.sigma - 140.0) < 4 * full.sigma_err


def test_warm_start_lands_on_the_cold_optimum(pt, monkeypatch):
    """A Monte-Carlo-like refit (noise around the best-fit model) started from the best
    fit reaches the optimum a cold start finds, on all templates and on a subset; a
    failed result as the start is a cold start."""
    spec = _mock(pt, [-20.0, 90.0], WEIGHTS, noise=0.02, seed=5)
    cam = spec.cameras[0]
    for subset in (False, True):
        if subset:
            monkeypatch.setattr(continuum_mod, "SUBSET_MAX_FRACTION", 1.0)
            monkeypatch.setattr(continuum_mod, "SCREEN_MIN", 8)
        best = fit_continuum(spec, pt, OPT)
        noisy = best.models[0] + np.random.default_rng(9).normal(0.0, cam.ivar[0] ** -0.5, cam.npix)
        copy = Spectrum([Camera("c", cam.wave, noisy, cam.ivar, cam.resolution)], z=Z)
        cold = fit_continuum(copy, pt, OPT)
        warm = fit_continuum(copy, pt, OPT, start=best)
        assert warm.status == 0 and (warm.candidates.size < 50) == subset
        assert abs(warm.vel - cold.vel) < 0.05 * cold.vel_err
        assert abs(warm.sigma - cold.sigma) < 0.05 * cold.sigma_err
        assert warm.chi2 == pytest.approx(cold.chi2, rel=1e-6)
    nothing = fit_continuum(Spectrum([Camera("c", cam.wave, cam.flux, np.zeros(cam.npix))], z=Z), pt, OPT)
    assert nothing.status != 0
    again = fit_continuum(copy, pt, OPT, start=nothing)
    assert again.status == 0 and again.chi2 == pytest.approx(cold.chi2, rel=1e-6)


@pytest.mark.parametrize("degree", [-1, 2])
def test_continuum_basis_reproduces_the_model(pt, degree):
    spec = _mock(pt, [10.0, 120.0], WEIGHTS, noise=0.02, seed=7)
    opt = ContinuumOptions(mdegree=2, degree=degree, line_half_width=0.0)
    r = fit_continuum(spec, pt, opt)
    basis = continuum_basis(spec, pt, r)
    assert len(basis) == 1 and basis[0].shape == (2500, 50)
    if degree < 0:
        np.testing.assert_allclose(basis[0] @ r.weights, r.models[0], rtol=1e-10)
    # Templates + signed additive columns, solved by NNLS on the fitted pixels: the same χ².
    B = continuum_basis(spec, pt, r, additive=True)[0]
    assert B.shape == (2500, 50 + 2 * (degree + 1))
    cam, good = spec.cameras[0], r.good[0]
    sw = np.sqrt(cam.ivar[good])
    coef, rnorm = nnls(B[good] * sw[:, None], cam.flux[good] * sw, maxiter=5000)
    assert rnorm ** 2 == pytest.approx(r.chi2, rel=1e-6)
    np.testing.assert_allclose(B @ coef, r.models[0], rtol=1e-5, atol=1e-6 * np.abs(r.models[0]).max())
    bad = fit_continuum(Spectrum([Camera("c", cam.wave, cam.flux, np.zeros(2500))], z=Z), pt, opt)
    with pytest.raises(ValueError, match="successful fit_continuum"):
        continuum_basis(spec, pt, bad)


def test_line_mask_comes_from_the_line_list(pt):
    """The packaged line list is the default mask; a given list (or wavelengths) replaces it."""
    assert EMISSION_LINES == {line.name: line.restwave for line in default_linelist()}
    assert {"h8", "neiii_3967", "hei_4471", "oii_7320", "lyalpha"} <= set(EMISSION_LINES)
    spec = _mock(pt, [0.0, 100.0], WEIGHTS, noise=0.02, seed=1)
    wave = spec.cameras[0].wave
    opt = ContinuumOptions(mdegree=0)               # default ± 800 km/s windows
    packaged = fit_continuum(spec, pt, opt)
    mine = fit_continuum(spec, pt, opt, mask_lines=[5500.0])
    near = np.abs(np.log(wave / (5500.0 * (1 + Z)))) < 800.0 / C_KMS
    assert not mine.good[0][near].any() and mine.good[0][~near].all()
    hb = np.abs(np.log(wave / (EMISSION_LINES["hbeta"] * (1 + Z)))) < 800.0 / C_KMS
    assert not packaged.good[0][hb].any() and mine.good[0][hb].all()
    assert math.isclose(packaged.npix, int(packaged.good[0].sum()))
