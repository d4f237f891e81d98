"""The joint spectrum + photometry fit (cubefit.spectra.joint_phot): against a brute-force
stacked ``scipy.optimize.nnls``, mocks with known stellar mass and dust, the real DESI
target, its bookkeeping (flags, statuses, columns) and the SED panel.

The mocks are built without the fitter: raw E-MILES SSPs (air, linear λ) mixed with known
initial masses, moved to vacuum, attenuated (Calzetti 2000, rest frame), averaged exactly
onto a fine log grid, convolved by direct summation with a Gaussian LOSVD, averaged onto
120 km/s pixels, placed at z = 0.15 (flux from the luminosity distance) and seen through
a fibre holding 1/1.4 of the light; the photometry of the total light by direct
integration through the filter curves.  E-MILES is fetched once (``network``)."""
import math

import numpy as np
import pytest
from astropy.io import fits
from scipy.optimize import nnls
from threadpoolctl import threadpool_limits

from cubefit.spectra import Camera, Spectrum, fit_continuum, prepare_templates
from cubefit.spectra.derived import PHOT_COLUMNS, luminosity_distance_cm
from cubefit.spectra.filters import filter_curve, filter_names
from cubefit.spectra.joint_phot import JOINT_STATUS, PHOT_FLAGS, PhotOptions, fit_with_photometry
from cubefit.spectra.model import TargetModel
from cubefit.spectra.sed import L_SUN_ERG_S, sed_templates, spectral_weight_rows
from spectra_fakes import COADD, REDROCK, TARGETID, needs_desi

pytestmark = pytest.mark.network

C_KMS, C_AA = 299792.458, 2.99792458e18
Z, APER, SIGMA = 0.15, 1.4, 150.0
AGES = ("00.1000", "00.3162", "01.0000", "02.5119", "05.0119", "10.0000")   # Gyr, solar [M/H]
TRUE_MASS = {"01.0000": 2e9, "10.0000": 3e10}                                # initial M_sun
TAU = 0.5
VS_DATA, FINE = 120.0, 12
BANDS = ("G", "R", "Z", "W1", "W2")
NO_FLOORS = {b: 0.0 for b in BANDS}


def name(age):
    return f"Eun1.30Zp0.00T{age}_iPp0.00_baseFe_linear_FWHM_variable"


def air_to_vac(lam_air):
    """IAU air→vacuum (Morton 1991 refractive index, one fixed-point step)."""
    s2 = (1e4 / lam_air) ** 2
    return lam_air * (1 + 8.34254e-5 + 2.406147e-2 / (130 - s2) + 1.5998e-4 / (38.9 - s2))


def calzetti(lam):
    """Calzetti et al. (2000) k(λ)/R_V (A_λ/A_V), R_V = 4.05, written out (0.12–2.2 µm)."""
    x = 1e4 / np.asarray(lam, dtype=np.float64)
    k = np.where(lam < 6300, 2.659 * (-2.156 + 1.509 * x - 0.198 * x**2 + 0.011 * x**3) + 4.05,
                 2.659 * (-1.857 + 1.040 * x) + 4.05)
    return k / 4.05


def direct_nmgy(lam, flam, filt):
    """AB nanomaggies by direct integration: both curves interpolated onto a dense grid."""
    fl, fr, _ = filter_curve(filt)
    x = np.linspace(fl[0], fl[-1], 100001)
    r = np.interp(x, fl, fr)
    num = np.trapezoid(np.interp(x, lam, flam) * r * x, x)
    den = np.trapezoid(3631e-23 * C_AA / x**2 * r * x, x)
    return 1e9 * num / den


@pytest.fixture(autouse=True)
def one_thread():
    with threadpool_limits(limits=1):
        yield


@pytest.fixture(scope="module")
def galaxy():
    """Noise-free mock: ``(wave, fibre flux in 1e-17 erg/s/cm²/Å, total nanomaggies in
    BANDS, true log10 M*, library subset)``."""
    from cubefit.templates import TemplateLibrary, fetch_emiles
    folder = fetch_emiles()
    h = fits.getheader(folder / f"{name(AGES[0])}.fits")
    lam_air = h["CRVAL1"] + h["CDELT1"] * (np.arange(h["NAXIS1"]) + 1 - h.get("CRPIX1", 1))
    lam = air_to_vac(lam_air)
    mix = sum(m * fits.getdata(folder / f"{name(a)}.fits").astype(np.float64) for a, m in TRUE_MASS.items())
    k = np.zeros_like(lam)
    opt = lam < 22000
    k[opt] = calzetti(lam[opt])
    k[~opt] = calzetti(np.array([21999.0]))[0] * (lam[~opt] / 22000.0) ** -1.75
    mix = mix * np.exp(-TAU * k)                                        # L_sun/Å, rest frame
    dl = luminosity_distance_cm(Z)
    to_obs = L_SUN_ERG_S / (4 * math.pi * dl**2 * (1 + Z))
    # Photometry of the total light.
    filters = filter_names("S", BANDS)
    phot = np.array([direct_nmgy(lam * (1 + Z), mix * to_obs, f) for f in filters])
    # Spectrum: exact averages on a fine log grid (rest 3500–8400 Å), Gaussian LOSVD by
    # direct summation, 120 km/s pixels.
    dln = VS_DATA / FINE / C_KMS
    edges = np.exp(np.arange(math.log(3500.0), math.log(8400.0), dln))
    cum = np.concatenate(([0.0], np.cumsum(0.5 * (mix[1:] + mix[:-1]) * np.diff(lam))))
    fine = np.diff(np.interp(edges, lam, cum)) / np.diff(edges)
    s = SIGMA / (VS_DATA / FINE)
    u = np.arange(-int(6 * s), int(6 * s) + 1)
    kern = np.exp(-0.5 * (u / s) ** 2)
    conv = np.convolve(fine, kern / kern.sum(), mode="same")[len(u):-len(u)]
    e = edges[len(u):-len(u) + 1]
    n = (conv.size // FINE) * FINE
    flux = conv[:n].reshape(-1, FINE).mean(axis=1) * to_obs / 1e-17 / APER
    wave = np.sqrt(e[:n:FINE] * e[FINE:n + 1:FINE]) * (1 + Z)
    lib = TemplateLibrary.from_emiles()
    masses = dict(zip(lib.names, lib.masses))
    logm = math.log10(sum(m * masses[name(a)] for a, m in TRUE_MASS.items()))
    return wave, flux, phot, logm


@pytest.fixture(scope="module")
def templates():
    import dataclasses
    from cubefit.templates import TemplateLibrary
    lib = TemplateLibrary.from_emiles(velscale=VS_DATA / 8, lam_range=(2900.0, 9500.0))
    idx = [lib.names.index(name(a)) for a in AGES]
    ages = np.array([float(a) for a in AGES])
    sub = dataclasses.replace(lib, flux=lib.flux[idx], norm=lib.norm[idx], masses=lib.masses[idx],
                              mass_to_light=lib.mass_to_light[idx], names=[lib.names[i] for i in idx],
                              pop_axes={"age": ages, "metal": np.array([0.0])}, grid_shape=(ages.size, 1))
    return prepare_templates(sub, velscale=VS_DATA / 2, lam_range=(3000.0, 9200.0), vel_max=500.0,
                             sigma_max=400.0)


def realisation(galaxy, rng, snr_spec=20.0, snr_phot=20.0, targetid=0):
    wave, flux, phot, _ = galaxy
    sig = np.median(flux) / snr_spec
    spec = Spectrum([Camera("spec", wave, flux + sig * rng.standard_normal(flux.size),
                            np.full(flux.size, sig**-2))], z=Z, targetid=targetid)
    ephot = phot / snr_phot
    row = {"PHOTSYS": "S", "EBV": 0.0}
    for b, f, e in zip(BANDS, phot + ephot * rng.standard_normal(phot.size), ephot):
        row[f"FLUX_{b}"], row[f"FLUX_IVAR_{b}"] = f, e**-2
    return spec, row


def stacked(model, cont, res, theta_poly, tau, ph, pt):
    """The joint fit's rows built independently: the continuum model's own weighted rows
    (LOSVD, binning, polynomial and attenuation applied by TargetModel) divided by the
    aperture correction, above the synthetic photometry of every template per unit
    spectral weight (spectral_weight_rows, tested against speclite) divided by σ."""
    m = model
    st = m.evaluate(np.r_[cont.vel, cont.sigma, theta_poly, tau])
    sed = sed_templates("ssp")
    sub = sed.select([sed.names.index(n) for n in pt.names])
    scale = sub.masses / pt.mass_per_weight
    fit = res.fit.fitted
    rows, valid, _ = spectral_weight_rows(sub, Z, np.asarray(ph.filters)[fit], luminosity_distance_cm(Z), tau,
                                          scale)
    s = np.sqrt(ph.ivar[fit])
    A = np.vstack([st["At"].T / res.apercorr, rows * s[:, None]])
    b = np.concatenate([m.y, ph.flux[fit] * s])
    return A, b


def test_joint_fit_is_the_brute_force_stacked_nnls_optimum(galaxy, templates):
    rng = np.random.default_rng(5)
    spec, row = realisation(galaxy, rng)
    cont = fit_continuum(spec, templates)
    assert cont.ok
    # Without the spectrum's polynomial the only non-linear parameter is τ_V: a dense scan
    # of brute-force NNLS solves of the stacked rows finds the same optimum.
    res = fit_with_photometry(spec, templates, cont, row, PhotOptions(mdegree=0, floors=NO_FLOORS))
    assert res.ok and res.fit.fitted.all() and res.flag == 0
    chi2 = res.chi2_spec + res.chi2_phot
    taus = np.arange(0.0, 1.2, 0.01)
    scan = []
    model = TargetModel(spec, templates, moments=2, degree=-1, mdegree=0, dust=True)
    for t in taus:
        A, b = stacked(model, cont, res, [], t, res.photometry, templates)
        scan.append(nnls(A, b)[1] ** 2)
    j = int(np.argmin(scan))
    assert abs(res.tau_v - taus[j]) < 0.011 and chi2 <= scan[j] * (1 + 1e-9)
    A, b = stacked(model, cont, res, [], res.tau_v, res.photometry, templates)
    w, rnorm = nnls(A, b)
    np.testing.assert_allclose(res.weights, w, rtol=1e-6, atol=1e-9 * w.max())
    assert rnorm**2 == pytest.approx(chi2, rel=1e-9)
    n = A.shape[0] - res.fit.n_fit
    assert res.npix == n and ((A @ w - b)[:n] ** 2).sum() == pytest.approx(res.chi2_spec, rel=1e-8)
    # With the polynomial: the brute-force NNLS at the optimum gives the same weights and
    # χ², and every parameter moved either way (inside its bounds) raises the χ².
    res = fit_with_photometry(spec, templates, cont, row, PhotOptions(floors=NO_FLOORS))
    assert res.ok and res.mpoly.size == cont.mpoly.size > 0
    model = TargetModel(spec, templates, moments=2, degree=-1, mdegree=res.mpoly.size, dust=True)
    A, b = stacked(model, cont, res, res.mpoly, res.tau_v, res.photometry, templates)
    w, rnorm = nnls(A, b)
    np.testing.assert_allclose(res.weights, w, rtol=1e-6, atol=1e-9 * w.max())
    best = res.chi2_spec + res.chi2_phot
    assert rnorm**2 == pytest.approx(best, rel=1e-9)
    theta = np.r_[res.mpoly, res.tau_v]
    for i in range(theta.size):
        for step in (-1e-3, 1e-3):
            th = theta.copy()
            th[i] += step
            if i == theta.size - 1 and th[i] < 0:
                continue
            A, b = stacked(model, cont, res, th[:-1], th[-1], res.photometry, templates)
            assert nnls(A, b)[1] ** 2 >= best * (1 - 1e-9)


def test_mocks_recover_mass_and_dust_with_matching_errors(galaxy, templates):
    logm = galaxy[3]
    rng = np.random.default_rng(2025)
    est, err, taus, terr, aper = [], [], [], [], []
    for k in range(30):
        spec, row = realisation(galaxy, rng, targetid=k)
        cont = fit_continuum(spec, templates)
        res = fit_with_photometry(spec, templates, cont, row, PhotOptions(nmonte=25, seed=k, floors=NO_FLOORS))
        r = res.to_row()
        assert r["PHOT_STATUS"] == 0 and r["NBAND_PHOT"] == 5
        est.append(r["LOGMSTAR"])
        err.append(r["LOGMSTAR_IVAR"] ** -0.5)
        taus.append(r["TAU_V_JOINT"])
        terr.append(r["TAU_V_JOINT_IVAR"] ** -0.5)
        aper.append(r["APERCORR"])
    est, err, taus, terr = map(np.array, (est, err, taus, terr))
    assert abs(np.median(est) - logm) < 0.1 and abs(np.mean(est) - logm) < 0.1
    assert abs(np.median(taus) - TAU) < 0.1 and abs(np.mean(taus) - TAU) < 0.1
    # Monte-Carlo errors (rms over the mocks) against the scatter of the estimates.
    assert np.sqrt(np.mean(err**2)) / np.std(est) == pytest.approx(1.0, abs=0.25)
    assert np.sqrt(np.mean(terr**2)) / np.std(taus) == pytest.approx(1.0, abs=0.25)
    # The fibre holds 1/1.4 of the light (the z band, beyond the spectrum, is padded).
    assert np.median(aper) == pytest.approx(APER, rel=0.05)


def test_row_has_exactly_the_phot_columns_and_failures_say_why(galaxy, templates):
    spec, row = realisation(galaxy, np.random.default_rng(1))
    cont = fit_continuum(spec, templates)
    names = [c[0] for c in PHOT_COLUMNS]
    res = fit_with_photometry(spec, templates, cont, row)
    assert list(res.to_row()) == names and res.to_row()["NPIX_JOINT"] == res.npix > 0
    # TAU_V_JOINT_IVAR from the Monte-Carlo refits; 0 ("not measured") when most sit at τ_V = 0.
    res.fit.monte_tau = np.array([0.3, 0.5, 0.4, 0.6])
    assert res.to_row()["TAU_V_JOINT_IVAR"] == pytest.approx(1 / np.var([0.3, 0.5, 0.4, 0.6], ddof=1))
    res.fit.monte_tau = np.array([0.0, 0.0, 0.0, 0.02])
    assert res.to_row()["TAU_V_JOINT_IVAR"] == 0.0
    # No Legacy Surveys photometry (PHOTSYS empty): status 3, blank columns.
    bad = fit_with_photometry(spec, templates, cont, {**row, "PHOTSYS": ""})
    r = bad.to_row()
    assert bad.status == JOINT_STATUS["no_photometry"] and "PHOTSYS" in r["PHOT_MESSAGE"]
    assert list(r) == names and math.isnan(r["LOGMSTAR"]) and r["LOGMSTAR_IVAR"] == 0.0
    # Every band unobserved.
    none = {**row, **{f"FLUX_IVAR_{b}": 0.0 for b in BANDS}}
    assert fit_with_photometry(spec, templates, cont, none).status == JOINT_STATUS["no_photometry"]
    # A failed continuum fit: no joint fit, but the aperture correction is still measured.
    failed = fit_continuum(Spectrum(spec.cameras, z=5.0), templates)
    res = fit_with_photometry(spec, templates, failed, row)
    assert res.status == JOINT_STATUS["not_possible"] and "continuum fit failed" in res.message
    assert res.to_row()["APERCORR"] == pytest.approx(APER, rel=0.1)
    # Templates the photometric library does not hold.
    other = sed_templates("bins")
    res = fit_with_photometry(spec, templates, cont, row, PhotOptions(sed=other))
    assert res.status == JOINT_STATUS["not_possible"] and "by name" in res.message
    with pytest.raises(ValueError, match="nmonte"):
        PhotOptions(nmonte=-1)
    from cubefit.spectra import ContinuumOptions
    with pytest.raises(TypeError, match="PhotOptions"):
        fit_with_photometry(spec, templates, cont, row, {"nmonte": 3})
    same = fit_with_photometry(spec, templates, cont, row, ContinuumOptions())   # the defaults
    assert same.ok and same.tau_v == fit_with_photometry(spec, templates, cont, row).tau_v


def test_bands_beyond_the_templates_are_flagged(galaxy, templates):
    spec, row = realisation(galaxy, np.random.default_rng(3))
    cont = fit_continuum(spec, templates)
    # At z = 0.05 W2 (to 5.5 µm) ends beyond E-MILES' 5 µm: dropped, flagged, no model flux.
    low = Spectrum([Camera("spec", c.wave / (1 + Z) * 1.05, c.flux, c.ivar) for c in spec.cameras], z=0.05)
    cont_low = fit_continuum(low, templates)
    res = fit_with_photometry(low, templates, cont_low, row)
    assert res.ok and res.flag & PHOT_FLAGS["band_outside_templates"]
    r = res.to_row()
    assert r["NBAND_PHOT"] == 4 and "W2" in r["PHOT_MESSAGE"] and math.isnan(r["FLUX_SYNTH_PHOTMODEL_W2"])
    assert np.isfinite(r["FLUX_SYNTH_PHOTMODEL_W1"])


def test_templates_without_red_flux_are_left_out_or_keep_their_bands():
    """The young metal-poor E-MILES SSPs (no flux beyond 8950 Å): left out when the spectrum
    barely uses them, their red bands dropped when they carry the spectrum's light."""
    from cubefit.spectra.continuum import ContinuumResult
    from cubefit.spectra.templates_prep import PreparedTemplates
    sed = sed_templates("ssp")
    young = np.flatnonzero(sed.red_edge < sed.lam[-1])
    old = np.flatnonzero(sed.red_edge >= sed.lam[-1])
    sub = sed.select([int(young[0]), int(old[40]), int(old[100])])
    # Prepared templates: the SED templates themselves on their own grid, divided by 1e-4.
    ln = np.log(sub.lam)
    keep = (sub.lam > 3000) & (sub.lam < 8800)
    T = int(keep.sum())
    pt = PreparedTemplates(flux=sub.flux[:, keep] / 1e-4, ln_lam=ln[keep], velscale=C_KMS * (ln[1] - ln[0]),
                           fwhm=np.full(T, 1.0), covered=np.ones(T, bool), vacuum=True,
                           mass_per_weight=sub.masses / 1e-4, lv_per_weight=None, pop_axes={}, axis_units={},
                           names=list(sub.names), vel_max=300.0, sigma_max=400.0, K=200, block=3600, nfft=4000)
    z = 0.2
    wave = np.exp(ln[keep][40:-40]) * (1 + z)
    light = pt.flux[:, 40:-40].sum(axis=1)                    # per unit weight over the spectrum
    names = filter_names("S", BANDS)
    rows_w, valid, usable = spectral_weight_rows(sub, z, names, luminosity_distance_cm(z), 0.0, np.full(3, 1e-4))
    assert valid.all() and usable.tolist() == [False, True, True]
    out = {}
    for frac, flag in ((0.02, PHOT_FLAGS["templates_left_out"]), (0.6, PHOT_FLAGS["red_bands_dropped"])):
        w = np.array([frac, 0.7 * (1 - frac), 0.3 * (1 - frac)]) * 1e3 / light    # light fractions
        flux = w @ pt.flux[:, 40:-40]
        spec = Spectrum([Camera("spec", wave, flux, np.full(wave.size, 1e2 / flux.mean() ** 2))], z=z, targetid=1)
        cont = ContinuumResult(targetid=1, z=z, camera_names=["spec"], n_templates=3, vel=0.0, sigma=5.0,
                               mpoly=np.zeros(0), weights=w, theta=np.array([0.0, 5.0]),
                               good=[np.ones(wave.size, bool)])
        phot = {"PHOTSYS": "S", "EBV": 0.0}
        model = rows_w @ np.r_[0.0, w[1:]] + (0.0 if flag == PHOT_FLAGS["templates_left_out"] else 0.0)
        for b, f in zip(BANDS, model):
            phot[f"FLUX_{b}"], phot[f"FLUX_IVAR_{b}"] = f, (50 / f) ** 2
        res = fit_with_photometry(spec, pt, cont, phot, PhotOptions(sed=sub, mdegree=0))
        assert res.ok and res.flag == flag, (frac, res.flag, res.message)
        out[flag] = res
    left, dropped = out[PHOT_FLAGS["templates_left_out"]], out[PHOT_FLAGS["red_bands_dropped"]]
    assert left.weights[0] == 0 and left.fit.fitted.all()
    assert dropped.weights[0] > 0 and dropped.fit.fitted.tolist() == [True, True, True, False, False]
    assert "W1" in dropped.to_row()["PHOT_MESSAGE"] and "60 %" in dropped.to_row()["PHOT_MESSAGE"]


@needs_desi
def test_real_desi_target_joint_fit():
    from astropy.table import Table
    from cubefit.spectra.desi import select_desi
    from cubefit.spectra.templates_prep import prepare_templates_cached
    pt = prepare_templates_cached()
    spec = next(iter(select_desi(REDROCK, targetids=[TARGETID]).spectra()))
    cont = fit_continuum(spec, pt)
    fm = Table.read(COADD, hdu="FIBERMAP")
    row = fm[list(fm["TARGETID"]).index(TARGETID)]                  # an astropy Row
    res = fit_with_photometry(spec, pt, cont, row, PhotOptions(nmonte=10, seed=3))
    r = res.to_row()
    assert res.ok and r["PHOTSYS"] in ("N", "S")
    for b in ("", "_G", "_R", "_Z"):
        assert np.isfinite(r[f"APERCORR{b}"]) and 1 / 3 < r[f"APERCORR{b}"] < 3
    for b in "GRZ":
        assert r[f"FLUX_SYNTH_{b}"] > 0
    # χ² of the spectrum and of the photometry, apart; the spectrum's close to the
    # spectrum-only fit's (the same pixels, kinematics and polynomial degree).
    assert 0.5 < r["RCHI2_CONT_JOINT"] < 1.2 * cont.rchi2 and r["NPIX_JOINT"] == cont.npix
    assert np.isfinite(r["RCHI2_PHOT"]) and r["NBAND_PHOT"] >= 3
    assert 9.5 < r["LOGMSTAR"] < 12.5 and 0 < r["LOGMSTAR_IVAR"] < np.inf
    assert 0.0 <= r["TAU_V_JOINT"] <= 3.0


def test_sed_panel_of_the_joint_fit_draws_into_a_figure_axis(galaxy, templates):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from cubefit.spectra.sed_plot import plot_joint_sed
    spec, row = realisation(galaxy, np.random.default_rng(8))
    res = fit_with_photometry(spec, templates, fit_continuum(spec, templates), row)
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(9, 3))
    try:
        assert plot_joint_sed(ax, res, spectrum=spec) is ax
        assert "τ_V" in ax.get_title() and "APERCORR" in ax.get_title()
        assert len(ax.lines) >= 3 and len(ax.containers) >= 1       # model SED, spectrum, bands; error bars
        assert ax.get_xscale() == "log" and ax.yaxis_inverted()
        failed = fit_with_photometry(spec, templates, fit_continuum(spec, templates), {**row, "PHOTSYS": ""})
        plot_joint_sed(ax2, failed)
        assert "no SED fit" in ax2.texts[0].get_text()
    finally:
        plt.close(fig)
