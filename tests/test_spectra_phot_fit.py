"""Photometric fits (cubefit.spectra.sed/derived): synthetic magnitudes of E-MILES SSPs by
direct integration, K-corrections, mocks with known mass and dust, the joint design vs a
brute-force bounded least-squares, and fastphot on the real DESI target.

Tests that need the E-MILES SSPs are marked ``network`` (fetched once into the user cache)."""
import math

import numpy as np
import pytest
from scipy.optimize import lsq_linear

from cubefit.spectra.derived import (ABSMAG_BANDS, absmag_name, aperture_correction, derived_row,
                                     distance_modulus, get_cosmology, kcorrect, luminosity_distance_cm,
                                     synth_absmag)
from cubefit.spectra.filters import filter_curve, filter_names, nanomaggies_to_mag
from cubefit.spectra.photometry import Photometry
from cubefit.spectra.sed import L_SUN_ERG_S, PhotDesign, calzetti_k, fit_photometry, sed_templates, stack_design
from spectra_fakes import COADD, REDROCK, TARGETID, needs_desi

C_AA = 2.99792458e18


def direct_mag(lam, flam, name, shift=0.0):
    """AB magnitude by direct integration: both curves interpolated onto a dense grid."""
    fl, fr, _ = filter_curve(name)
    fl = fl / (1 + shift)
    x = np.linspace(fl[0], fl[-1], 200001)
    r = np.interp(x, fl, fr)
    num = np.trapezoid(np.interp(x, lam, flam) * r * x, x)
    den = np.trapezoid(3631e-23 * C_AA / x**2 * r * x, x)
    return -2.5 * np.log10(num / den)


def air_to_vac(lam_air):
    """IAU air→vacuum (Morton 1991 refractive index, one fixed-point step)."""
    s2 = (1e4 / lam_air) ** 2
    n = 1 + 8.34254e-5 + 2.406147e-2 / (130 - s2) + 1.5998e-4 / (38.9 - s2)
    return lam_air * n


def phot_of(names, flux, snr=20.0):
    flux = np.asarray(flux, dtype=np.float64)
    iv = (snr / flux) ** 2
    return Photometry(bands=tuple(n.split("-")[1].upper() for n in names), filters=tuple(names), flux=flux,
                      ivar=iv, ivar_stat=iv, mw_transmission=np.ones(flux.size))


@pytest.fixture(scope="module")
def ssp():
    return sed_templates("ssp")


@pytest.fixture(scope="module")
def bins():
    return sed_templates("bins")


@pytest.mark.network
def test_emiles_ssp_magnitudes_match_direct_integration(ssp):
    from astropy.cosmology import Planck18
    from astropy.io import fits
    from cubefit.templates import fetch_emiles
    path = fetch_emiles() / "Eun1.30Zp0.00T10.0000_iPp0.00_baseFe_linear_FWHM_variable.fits"
    with fits.open(path) as h:
        L = np.asarray(h[0].data, dtype=np.float64)           # L_sun/Å per M_sun, linear air λ
        hdr = h[0].header
    lam = air_to_vac(hdr["CRVAL1"] + hdr["CDELT1"] * (np.arange(L.size) + 1 - hdr["CRPIX1"]))
    z, mass, tau = 0.2, 3e10, 0.4
    dl = Planck18.luminosity_distance(z).to_value("cm")
    names = filter_names("S", ("G", "R", "Z", "W1", "W2")) + filter_names("N", ("G", "R", "Z"))
    lam_obs = lam * (1 + z)
    flam = mass * L * L_SUN_ERG_S / (4 * math.pi * dl**2 * (1 + z))
    ref = np.array([direct_mag(lam_obs, flam, n) for n in names])
    p = ssp.names.index(path.stem)
    d = PhotDesign(ssp, z, names, dl)
    assert d.valid.all() and p in d.templates
    w = np.zeros(d.templates.size)
    w[list(d.templates).index(p)] = mass
    np.testing.assert_allclose(nanomaggies_to_mag(d.matrix(0.0) @ w), ref, atol=0.005)
    # Calzetti attenuation applied in the rest frame (optical bands: rest λ < 2.2 µm).
    from extinction import calzetti00
    att = np.exp(-tau * calzetti00(lam, 1.0, 4.05))
    ref_tau = np.array([direct_mag(lam_obs, flam * att, n) for n in names[:3]])
    np.testing.assert_allclose(nanomaggies_to_mag(d.matrix(tau) @ w)[:3], ref_tau, atol=0.005)
    # The interpolated A(τ) used by the search is within 3e-4 (0.3 mmag) of the exact one.
    np.testing.assert_allclose(d.interp(tau + 0.037), d.matrix(tau + 0.037), rtol=3e-4)


def test_calzetti_curve_is_positive_and_continuous_beyond_its_range():
    lam = np.array([1500.0, 5500.0, 21999.0, 22001.0, 30000.0, 50000.0])
    k = calzetti_k(lam)
    assert k[1] == pytest.approx(1.0, abs=2e-3)
    assert np.all(k > 0) and np.all(np.diff(k) < 0)
    assert k[3] == pytest.approx(k[2], rel=1e-3)
    assert k[5] / k[4] == pytest.approx((5 / 3) ** -1.75)


@pytest.mark.network
def test_kcorrection_recovers_the_rest_frame_absolute_magnitude(bins):
    from astropy.cosmology import Planck18
    z, tau = 0.25, 0.3
    w = np.array([1e8, 0.0, 2e9, 0.0, 4e10])
    dl = Planck18.luminosity_distance(z).to_value("cm")
    dm = Planck18.distmod(z).value
    # Rest-frame SED (L_sun/Å) by direct means, placed at 10 pc.
    rest = (w @ bins.flux) * np.exp(-tau * calzetti_k(bins.lam))
    f10 = rest * L_SUN_ERG_S / (4 * math.pi * (10 * 3.0856775814913673e18) ** 2)
    names = filter_names("S", ("G", "R", "Z", "W1", "W2"))
    obs = rest * L_SUN_ERG_S / (4 * math.pi * dl**2 * (1 + z))
    m_obs = np.array([direct_mag(bins.lam * (1 + z), obs, n) for n in names])
    nmgy = 10 ** (-0.4 * (m_obs - 22.5))
    model = PhotDesign(bins, z, names, dl).matrix(tau) @ w
    synth = synth_absmag(bins, w, tau)
    kc, M, iv = kcorrect(z, distance_modulus(z), names, nmgy, (50 / nmgy) ** 2, model, synth)
    for i, (label, name, shift) in enumerate(ABSMAG_BANDS):
        if name == "decam2014-z":       # its blue leak reaches below the templates' 1690 Å
            continue
        M_direct = direct_mag(bins.lam, f10, name, shift)
        # M = m − DM − K with the observed magnitude, astropy's DM and our K:
        lam_obs = np.array([np.trapezoid(filter_curve(n)[1] * filter_curve(n)[0] ** 2, filter_curve(n)[0]) /
                            np.trapezoid(filter_curve(n)[1] * filter_curve(n)[0], filter_curve(n)[0])
                            for n in names]) / (1 + z)
        fl, fr, _ = filter_curve(name, shift)
        q = int(np.argmin(np.abs(lam_obs - np.trapezoid(fr * fl**2, fl) / np.trapezoid(fr * fl, fl))))
        assert m_obs[q] - dm - kc[i] == pytest.approx(M_direct, abs=0.01), label
        assert M[i] == pytest.approx(M_direct, abs=0.01) and iv[i] > 0
        assert synth[i] == pytest.approx(M_direct, abs=0.01)
    # No band with S/N > 2: the synthesised value, with zero inverse variance.
    kc0, M0, iv0 = kcorrect(z, dm, names, nmgy, np.full(5, 1e-6), model, synth)
    np.testing.assert_array_equal(M0, synth) and np.testing.assert_array_equal(iv0, 0.0)
    assert np.all(np.isnan(kc0))


@pytest.mark.network
def test_band_shifted_kcorrection_identity(bins):
    # Observed SDSS bands at z = 0.1 and rest-frame bands shifted to 0.1: K = −2.5 log10(1.1)
    # for any SED (Blanton & Roweis 2007).
    z, tau = 0.1, 0.6
    w = np.array([5e8, 1e9, 0.0, 3e9, 2e10])
    names = ["sdss2010-g", "sdss2010-r", "sdss2010-i", "sdss2010-z"]
    dl = luminosity_distance_cm(z)
    model = PhotDesign(bins, z, names, dl).matrix(tau) @ w
    out = [b for b in ABSMAG_BANDS if b[1] in names]
    kc, M, _ = kcorrect(z, distance_modulus(z), names, model, (30 / model) ** 2, model,
                        synth_absmag(bins, w, tau, out), bands=out)
    np.testing.assert_allclose(kc, -2.5 * np.log10(1.1), atol=1e-3)


def test_cosmology_choices():
    assert get_cosmology().name == "Planck18"
    assert get_cosmology("WMAP9").name == "WMAP9"
    c = get_cosmology("H0=100,Om0=0.3")
    assert c.H0.value == 100 and c.Om0 == 0.3
    with pytest.raises(ValueError, match="Planck18"):
        get_cosmology("Planck99")
    from astropy.cosmology import Planck18
    assert distance_modulus(0.3) == pytest.approx(Planck18.distmod(0.3).value, abs=1e-9)


def test_aperture_correction():
    per, med = aperture_correction({"G": 2.0, "R": 4.0, "Z": 9.0}, {"G": 1.0, "R": 1.0, "Z": 3.0})
    assert per == {"G": 2.0, "R": 4.0, "Z": 3.0} and med == 3.0
    per, med = aperture_correction({"G": 2.0, "R": -1.0}, {"G": 0.0, "R": 1.0, "Z": 3.0})
    assert all(math.isnan(v) for v in per.values()) and med == 1.0


def test_stack_design_matches_bounded_least_squares_on_the_whole_chi2():
    rng = np.random.default_rng(11)
    P, npix, nb = 6, 300, 5
    templates = np.abs(rng.normal(1, 0.3, (P, npix))) + np.linspace(0, 1, npix)
    sigma = rng.uniform(0.05, 0.2, npix)
    apercorr = 1.7
    w_true = np.array([0.0, 2.0, 0.0, 1.0, 0.5, 0.0])
    spec = (w_true @ templates) / apercorr + sigma * rng.standard_normal(npix)   # fibre spectrum
    phot_rows = np.abs(rng.normal(3, 1, (nb, P)))
    pf = phot_rows @ w_true
    pivar = 1 / (0.05 * pf) ** 2
    pivar[2] = 0.0                                                               # unobserved band
    pf_obs = pf * (1 + 0.05 * rng.standard_normal(nb))
    A, b = stack_design(templates.T / sigma[:, None], spec / sigma, phot_rows, pf_obs, pivar, apercorr=apercorr)
    assert A.shape == (npix + nb, P)
    from scipy.optimize import nnls
    w, _ = nnls(A, b)

    # Brute force: the total χ² of the apercorr-scaled spectrum and the photometry, built
    # row by row in physical units, minimised by a different bounded solver.
    rows, rhs = [], []
    for i in range(npix):
        s = apercorr * sigma[i]
        rows.append(templates[:, i] / s)
        rhs.append(apercorr * spec[i] / s)
    for j in range(nb):
        if pivar[j] > 0:
            rows.append(phot_rows[j] * math.sqrt(pivar[j]))
            rhs.append(pf_obs[j] * math.sqrt(pivar[j]))
    ref = lsq_linear(np.array(rows), np.array(rhs), bounds=(0, np.inf), method="bvls", tol=1e-14)
    np.testing.assert_allclose(w, ref.x, rtol=1e-8, atol=1e-10)
    with pytest.raises(ValueError, match="same P"):
        stack_design(np.ones((3, 2)), np.ones(3), np.ones((2, 3)), np.ones(2), np.ones(2))
    with pytest.raises(ValueError, match="apercorr"):
        stack_design(np.ones((3, 2)), np.ones(3), np.ones((2, 2)), np.ones(2), np.ones(2), apercorr=0.0)


@pytest.mark.network
def test_spectral_weight_rows_give_the_synthetic_photometry_of_the_spectral_model(ssp):
    from cubefit.spectra.filters import synth_nanomaggies
    from cubefit.spectra.sed import spectral_weight_rows
    z, tau = 0.37, 0.4
    names = filter_names("N", ("G", "R", "Z", "W1", "W2"))
    dl = luminosity_distance_cm(z)
    scale = np.full(ssp.P, 0.37)                        # a spectral fit's template normalisation
    rows, valid, usable = spectral_weight_rows(ssp, z, names, dl, tau, scale)
    assert valid.all() and usable.sum() == 124          # E-MILES' young metal-poor SSPs stop at 8950 Å
    w = np.zeros(ssp.P)
    w[np.flatnonzero(usable)[[3, 60, 100]]] = [2.0, 5.0, 9.0]
    # The spectral model in 1e-17 erg/s/cm²/Å at the observed wavelengths, synthesised directly.
    model = (w @ (ssp.flux / scale[:, None])) * np.exp(-tau * ssp.kdust)
    ref = synth_nanomaggies(ssp.lam * (1 + z), model, names)
    np.testing.assert_allclose(rows @ w, ref, rtol=1e-3)


@pytest.mark.network
def test_noiseless_mock_is_recovered_exactly(bins):
    # Seven bands for five templates and τ_V: the optimum is unique (with five bands and
    # five templates a range of τ_V fits exactly).
    z, tau = 0.3, 0.8
    names = ["sdss2010-u", "sdss2010-g", "sdss2010-r", "sdss2010-i", "sdss2010-z", "wise2010-W1", "wise2010-W2"]
    dl = luminosity_distance_cm(z)
    w = np.array([0.0, 3e8, 0.0, 6e9, 3e10])
    flux = PhotDesign(bins, z, names, dl).matrix(tau) @ w
    fit = fit_photometry(phot_of(names, flux, snr=100), z, bins, dl)
    assert fit.status == 0 and fit.chi2 < 1e-6
    assert fit.tau_v == pytest.approx(tau, abs=2e-3)
    assert math.log10(fit.weights @ bins.masses) == pytest.approx(math.log10(w @ bins.masses), abs=2e-3)
    np.testing.assert_allclose(fit.model_flux, flux, rtol=1e-4)


@pytest.mark.network
def test_mocks_recover_mass_and_dust_with_matching_errors(bins):
    z, tau, snr = 0.15, 0.5, 20.0
    names = filter_names("S", ("G", "R", "Z", "W1", "W2"))
    dl = luminosity_distance_cm(z)
    w = np.array([2e9, 0.0, 0.0, 2e10, 6e10])
    flux0 = PhotDesign(bins, z, names, dl).matrix(tau) @ w
    logm = math.log10(w @ bins.masses)
    rng = np.random.default_rng(2024)
    est, err, taus, terr = [], [], [], []
    from threadpoolctl import threadpool_limits
    with threadpool_limits(1):                      # tiny matrices: threads only add overhead
        for k in range(60):
            ph = phot_of(names, flux0, snr)
            ph.flux = flux0 + flux0 / snr * rng.standard_normal(flux0.size)
            fit = fit_photometry(ph, z, bins, dl, nmonte=30, seed=k)
            row = derived_row(fit, bins, ph)
            est.append(row["LOGMSTAR"])
            err.append(row["LOGMSTAR_IVAR"] ** -0.5)
            taus.append(row["TAU_V"])
            terr.append(row["TAU_V_IVAR"] ** -0.5)
    est, err, taus, terr = map(np.array, (est, err, taus, terr))
    assert abs(np.median(est) - logm) < 0.1 and abs(np.mean(est) - logm) < 0.1
    assert abs(np.median(taus) - tau) < 0.1 and abs(np.mean(taus) - tau) < 0.1
    # Monte-Carlo errors (rms over the mocks) against the scatter of the estimates.
    assert np.sqrt(np.mean(err**2)) / np.std(est) == pytest.approx(1.0, abs=0.25)
    assert np.sqrt(np.mean(terr**2)) / np.std(taus) == pytest.approx(1.0, abs=0.25)


@pytest.mark.network
def test_bands_outside_the_templates_are_dropped_with_a_reason(bins):
    names = filter_names("S", ("G", "R", "Z", "W1", "W2"))
    z = 0.05                                  # W2 (to 5.5 µm) ends beyond E-MILES' 5 µm
    dl = luminosity_distance_cm(z)
    d = PhotDesign(bins, z, names, dl)
    assert d.valid.tolist() == [True, True, True, True, False]
    flux = np.r_[d.matrix(0.2) @ np.array([0, 0, 1e9, 0, 1e10]), 1.0]
    fit = fit_photometry(phot_of(names, flux), z, bins, dl)
    assert fit.status == 0 and not fit.fitted[4] and "outside the templates' range" in fit.dropped["W2"]
    assert np.isnan(fit.model_flux[4]) and fit.n_fit == 4
    row = derived_row(fit, bins, phot_of(names, flux))
    assert "W2" in row["PHOT_MESSAGE"] and math.isnan(row["FLUX_SYNTH_PHOTMODEL_W2"])
    one = fit_photometry(phot_of(names[:1], flux[:1]), z, bins, dl)
    assert one.status == 1 and "need at least two" in one.message


@needs_desi
@pytest.mark.network
def test_real_desi_target_aperture_correction_and_mass(bins):
    from cubefit.spectra.desi import select_desi
    from cubefit.spectra.photometry import read_fibermap_photometry, spectrum_synth_flux
    spec = next(iter(select_desi(REDROCK, targetids=[TARGETID]).spectra()))
    ph = read_fibermap_photometry(COADD, [TARGETID])[TARGETID]
    synth = spectrum_synth_flux(spec, ph.filters[:3])
    per, med = aperture_correction(dict(zip(ph.bands, ph.flux)), dict(zip("GRZ", synth)))
    for v in list(per.values()) + [med]:
        assert np.isfinite(v) and 1 / 3 < v < 3
    dl = luminosity_distance_cm(spec.z)
    fit = fit_photometry(ph, spec.z, bins, dl, nmonte=30, seed=1)
    row = derived_row(fit, bins, ph)
    assert fit.status == 0 and row["NBAND_PHOT"] == 5
    assert 9.5 < row["LOGMSTAR"] < 12.5 and 0 < row["LOGMSTAR_IVAR"] < np.inf
    assert np.isfinite(row["RCHI2_PHOT"]) and row[absmag_name("SDSS_R", 0.1, "IVAR")] > 0
