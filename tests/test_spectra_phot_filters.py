"""Filters, synthetic photometry and photometry inputs (cubefit.spectra.filters/photometry).

References: analytic AB magnitudes of flat-f_ν spectra, speclite's own integrals, the
DESI FIBERMAP's own columns, DESI's published band extinction coefficients."""
import json
from importlib import resources

import numpy as np
import pytest

from cubefit.spectra.extinction import mw_transmission
from cubefit.spectra.filters import (BANDS, band_matrix, effective_wavelengths, filter_names,
                                     mag_to_nanomaggies, nanomaggies_to_mag, synth_nanomaggies)
from cubefit.spectra.photometry import (DEFAULT_FLOORS, apply_floor, mw_band_transmission, mw_coefficient,
                                        photometry_from_fibermap, read_catalog_photometry,
                                        read_fibermap_photometry)
from spectra_fakes import COADD, TARGETID, needs_desi

ALL = filter_names("S") + filter_names("N", ("G", "R", "Z")) + ["bessell-V", "sdss2010-u", "sdss2010-z"]
C_AA = 2.99792458e18


def flat_fnu(wave, mag):
    """f_λ in 1e-17 erg/s/cm²/Å of a source with AB magnitude ``mag`` at every frequency."""
    return 3631e-23 * 10 ** (-0.4 * mag) * C_AA / wave**2 / 1e-17


def test_speclite_ships_every_filter_curve():
    folder = resources.files("speclite") / "data" / "filters"
    for name in ALL:
        assert (folder / f"{name}.ecsv").is_file(), name


def test_photsys_selects_the_optical_system():
    assert filter_names("N") == ["BASS-g", "BASS-r", "MzLS-z", "wise2010-W1", "wise2010-W2",
                                 "wise2010-W3", "wise2010-W4"]
    assert filter_names(b"S", ("G", "W1")) == ["decam2014-g", "wise2010-W1"]
    with pytest.raises(ValueError, match="PHOTSYS"):
        filter_names("G", ("R",))
    with pytest.raises(ValueError, match="band 'Q'"):
        filter_names("N", ("Q",))


def test_flat_fnu_has_the_same_ab_magnitude_in_every_band():
    wave = np.geomspace(1500.0, 320000.0, 300000)
    mags = nanomaggies_to_mag(synth_nanomaggies(wave, flat_fnu(wave, 18.3), ALL))
    np.testing.assert_allclose(mags, 18.3, atol=1e-3)
    # The matrix form on the same grid, and on a coarse (300 km/s) grid.
    np.testing.assert_allclose(nanomaggies_to_mag(band_matrix(wave, ALL) @ flat_fnu(wave, 18.3)), 18.3, atol=1e-3)
    coarse = np.exp(np.arange(np.log(1500.0), np.log(320000.0), 300.0 / 299792.458))
    np.testing.assert_allclose(nanomaggies_to_mag(band_matrix(coarse, ALL) @ flat_fnu(coarse, 18.3)), 18.3,
                               atol=1e-3)
    # Several spectra at once: (2, npix) -> (2, nband).
    two = synth_nanomaggies(wave, np.vstack([flat_fnu(wave, 18.0), flat_fnu(wave, 20.5)]), ALL[:3])
    np.testing.assert_allclose(nanomaggies_to_mag(two), [[18.0] * 3, [20.5] * 3], atol=1e-3)


def test_band_matrix_matches_speclite_on_a_structured_spectrum():
    rng = np.random.default_rng(4)
    wave = np.linspace(3000.0, 11500.0, 9000)
    flux = 5 + np.cumsum(rng.normal(0, 0.05, wave.size)) + 3 * (wave > 4000)      # break + random walk
    names = filter_names("S", ("G", "R", "Z")) + filter_names("N", ("G", "R", "Z"))
    ref = synth_nanomaggies(wave, flux, names)
    np.testing.assert_allclose(band_matrix(wave, names) @ flux, ref, rtol=2e-4)


def test_uncovered_filter_is_refused_or_padded():
    wave = np.linspace(3600.0, 9824.0, 7000)            # a DESI spectrum's range
    flux = flat_fnu(wave, 20.0)
    with pytest.raises(ValueError, match="pad=True"):
        synth_nanomaggies(wave, flux, ["MzLS-z"])
    with pytest.raises(ValueError, match="not covered"):
        band_matrix(wave, ["MzLS-z"])
    # Edge padding of a flat f_λ spectrum is exact.
    np.testing.assert_allclose(synth_nanomaggies(wave, np.ones_like(wave), ["MzLS-z"], pad=True),
                               synth_nanomaggies(np.linspace(3000, 12000, 9000), np.ones(9000), ["MzLS-z"]),
                               rtol=1e-4)


def test_magnitude_conversions():
    np.testing.assert_allclose(nanomaggies_to_mag([1.0, 100.0]), [22.5, 17.5])
    assert np.isnan(nanomaggies_to_mag(-1.0))
    np.testing.assert_allclose(mag_to_nanomaggies(nanomaggies_to_mag(3.7)), 3.7)
    lam = effective_wavelengths(["decam2014-r", "wise2010-W1"])
    assert 6300 < lam[0] < 6600 and 33000 < lam[1] < 35000


def test_mw_band_coefficient_is_the_spectrum_law_averaged_over_the_band():
    # Same law as the spectra: the band transmission of a flat-f_ν source seen through
    # the per-pixel F99 transmission (small E(B-V), where the linear coefficient is exact).
    wave = np.linspace(3000.0, 11500.0, 20000)
    names = filter_names("S", ("G", "R", "Z")) + filter_names("N", ("G", "R", "Z"))
    ebv = 0.002
    f = flat_fnu(wave, 20.0)
    ratio = synth_nanomaggies(wave, f * mw_transmission(wave, ebv), names) / synth_nanomaggies(wave, f, names)
    np.testing.assert_allclose(mw_band_transmission(ebv, names), ratio, rtol=2e-5)
    # DESI's published A/E(B-V)_SFD (desiutil.dust / FastSpecFit: F99 on the Schlafly &
    # Finkbeiner 2011 calibration; WISE from the Tractor's F99 values) within 1 % (10 % WISE).
    desi = {"decam2014-g": 3.212, "decam2014-r": 2.164, "decam2014-z": 1.211, "BASS-g": 3.258,
            "BASS-r": 2.176, "MzLS-z": 1.199, "wise2010-W1": 0.184, "wise2010-W2": 0.113}
    for name, r in desi.items():
        assert mw_coefficient(name) == pytest.approx(r, rel=0.01 if "wise" not in name else 0.1), name


def test_error_floor_adds_in_quadrature_in_magnitudes():
    flux, ivar = np.array([10.0, 10.0, -1.0, 5.0]), np.array([100.0, 0.0, 4.0, 1e6])
    out = apply_floor(flux, ivar, [0.02, 0.02, 0.02, 0.05])
    k = 0.4 * np.log(10.0)
    assert out[0] == pytest.approx(1 / (0.01 + (k * 0.02 * 10) ** 2))
    assert out[1] == 0.0 and out[2] == 4.0                        # unobserved / negative: unchanged
    # In magnitudes: σ_m² = σ_m,stat² + floor².
    sig_m = np.sqrt(1e-6) / 5.0 / k
    assert 1 / (out[3] * (k * 5.0) ** 2) == pytest.approx(sig_m**2 + 0.05**2)


def fibermap_row(**over):
    row = {"PHOTSYS": "S", "EBV": 0.1, "FLUX_G": 2.0, "FLUX_R": 4.0, "FLUX_Z": 6.0, "FLUX_W1": 5.0,
           "FLUX_W2": 3.0, "FLUX_IVAR_G": 100.0, "FLUX_IVAR_R": 50.0, "FLUX_IVAR_Z": 20.0,
           "FLUX_IVAR_W1": 2.0, "FLUX_IVAR_W2": 0.0, "FIBERFLUX_G": 1.0, "FIBERFLUX_R": 2.0,
           "FIBERFLUX_Z": 3.0, "FIBERTOTFLUX_G": 1.1, "FIBERTOTFLUX_R": 2.1, "FIBERTOTFLUX_Z": 3.1}
    row.update(over)
    return row


def test_fibermap_photometry_corrects_drops_and_floors():
    ph = photometry_from_fibermap(fibermap_row())
    assert ph.bands == ("G", "R", "Z", "W1") and ph.filters[0] == "decam2014-g"
    assert ph.dropped == {"W2": "ivar = 0", "W3": "column absent", "W4": "column absent"}
    t = mw_band_transmission(0.1, ph.filters)
    assert np.all(t < 1) and t[0] < t[1] < t[2] < t[3]
    np.testing.assert_allclose(ph.flux, np.array([2.0, 4.0, 6.0, 5.0]) / t)
    np.testing.assert_allclose(ph.ivar_stat, np.array([100.0, 50.0, 20.0, 2.0]) * t**2)
    floors = [DEFAULT_FLOORS[b] for b in ph.bands]
    np.testing.assert_allclose(ph.ivar, apply_floor(ph.flux, ph.ivar_stat, floors))
    assert ph.fiberflux["R"] == pytest.approx(2.0 / t[1]) and ph.fibertotflux["Z"] == pytest.approx(3.1 / t[2])
    north = photometry_from_fibermap(fibermap_row(PHOTSYS=b"N"))
    assert north.filters[:3] == ("BASS-g", "BASS-r", "MzLS-z")
    with pytest.raises(ValueError, match="PHOTSYS = ''"):
        photometry_from_fibermap(fibermap_row(PHOTSYS=""))
    with pytest.raises(ValueError, match="EBV"):
        photometry_from_fibermap(fibermap_row(EBV=np.nan))
    nan = photometry_from_fibermap(fibermap_row(FLUX_IVAR_G=np.nan, FLUX_Z=np.inf))
    assert nan.bands == ("R", "W1")


@needs_desi
def test_real_desi_fibermap_photometry():
    from astropy.io import fits
    with fits.open(COADD) as h:
        fm = h["FIBERMAP"].data
        row = fm[list(fm["TARGETID"]).index(TARGETID)]
        ref = {c: float(row[c]) for c in ("FLUX_G", "FLUX_R", "FLUX_Z", "FLUX_W1", "FLUX_W2", "EBV")}
        photsys = row["PHOTSYS"]
    ph = read_fibermap_photometry(COADD, [TARGETID, 12345])
    assert ph[12345].startswith(str(COADD)) and "not in the FIBERMAP" in ph[12345]
    p = ph[TARGETID]
    assert p.photsys == photsys == "N" and p.bands == ("G", "R", "Z", "W1", "W2")
    assert p.ebv == pytest.approx(ref["EBV"])
    raw = np.array([ref[f"FLUX_{b}"] for b in p.bands])
    np.testing.assert_allclose(p.flux * p.mw_transmission, raw, rtol=1e-6)
    assert set(p.fiberflux) == {"G", "R", "Z"} and np.all(p.ivar < p.ivar_stat)


@pytest.mark.parametrize("fmt", ["json", "yaml"])
def test_user_catalogue_with_a_column_mapping(tmp_path, fmt):
    from astropy.table import Table
    t = Table({"OBJID": [7, 8], "G_JY": [3631e-9 * 10.0, 3631e-9 * 20.0], "G_ERR": [3631e-9, 3631e-9],
               "MAG_W1": [20.0, 21.0], "ERR_W1": [0.1, 0.2], "E": [0.0, 0.05]})
    t.write(tmp_path / "cat.fits")
    mapping = {"id": "OBJID", "units": "Jy", "ebv": "E",
               "bands": [{"name": "g", "filter": "sdss2010-g", "flux": "G_JY", "error": "G_ERR"}]}
    mag_map = {"id": "OBJID", "units": "mag",
               "bands": [{"filter": "wise2010-W1", "flux": "MAG_W1", "error": "ERR_W1"}]}
    path = tmp_path / f"map.{fmt}"
    if fmt == "json":
        path.write_text(json.dumps(mapping))
    else:
        import yaml
        path.write_text(yaml.safe_dump(mapping))
    out = read_catalog_photometry(tmp_path / "cat.fits", path, [8, 7, 99])
    assert "not in column OBJID" in out[99]
    assert out[7].bands == ("G",) and out[7].flux[0] == pytest.approx(10.0)          # 1 nJy·3631 = 1 nmgy
    assert out[7].ivar_stat[0] == pytest.approx(1.0)
    t8 = mw_band_transmission(0.05, ["sdss2010-g"])[0]
    assert out[8].flux[0] == pytest.approx(20.0 / t8)
    w1 = read_catalog_photometry(tmp_path / "cat.fits", mag_map)[7]
    assert w1.bands == ("W1",) and w1.flux[0] == pytest.approx(mag_to_nanomaggies(20.0))
    sig = 0.4 * np.log(10) * 0.1 * w1.flux[0]
    assert w1.ivar_stat[0] == pytest.approx(1 / sig**2)
    assert w1.ivar[0] == pytest.approx(apply_floor(w1.flux, w1.ivar_stat, 0.05)[0])
    with pytest.raises(ValueError, match="absent"):
        read_catalog_photometry(tmp_path / "cat.fits", {**mapping, "id": "NOPE"})
    with pytest.raises(ValueError, match="units"):
        read_catalog_photometry(tmp_path / "cat.fits", {**mapping, "units": "furlongs"})


def test_bands_constant_is_in_wavelength_order():
    lam = effective_wavelengths(filter_names("S", BANDS))
    assert np.all(np.diff(lam) > 0)
