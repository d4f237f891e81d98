"""Survey-spectrum readers: DESI Redrock + coadd, SDSS spec-*.fits, FITS tables, arrays;
selection, clean-up, Milky-Way correction, air/vacuum, and bad input."""
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table

from cubefit.spectra.desi import coadd_path, select_desi
from cubefit.spectra.extinction import mw_transmission
from cubefit.spectra.data import air_to_vacuum
from cubefit.spectra.io import (STATUS_BAD_VALUES, STATUS_NO_GOOD_PIXELS, InputError, TargetProblem,
                                read_table, spectrum_from_arrays)
from cubefit.spectra.sdss import read_sdss
from spectra_fakes import COADD, REDROCK, TARGETID, Z_TRUE, needs_desi, write_desi_pair


def _ppxf_spectrum(name):
    ppxf = pytest.importorskip("ppxf", reason="ppxf==9.5.2 (test extra) ships the SDSS spectra")
    return Path(ppxf.__file__).parent / "spectra" / name


# ----------------------------------------------------------------------------- extinction
def test_fitzpatrick99_spline_anchors():
    """A(λ)/E(B-V)_SFD is the Fitzpatrick (1999) curve at its spline anchors, evaluated from
    the paper's R_V polynomials at R_V = 3.1 (6000, 5470, 4670, 4110 Å) and its IR anchors
    0.26469 R_V/3.1, 0.82925 R_V/3.1 (26500, 12200 Å), times one factor: the Schlafly &
    Finkbeiner (2011) calibration DESI applies (desiutil.dust), A(1 µm) = 1.029 E(B-V)_SFD."""
    from cubefit.spectra.extinction import mw_extinction_curve, sfd_recalibration
    rv, ebv = 3.1, 0.1
    ref = np.array([np.polyval([2.13572e-04, 1.00270, -4.22809e-01], rv),
                    np.polyval([-7.35778e-05, 1.00216, -5.13540e-02], rv),
                    np.polyval([-3.32598e-05, 1.00184, 7.00127e-01], rv),
                    np.polyval([-4.45636e-05, 7.97809e-04, -5.46959e-03, 1.01707, 1.19456], rv),
                    0.26469, 0.82925])
    wave = np.array([6000.0, 5470.0, 4670.0, 4110.0, 26500.0, 12200.0])
    k = -2.5 * np.log10(mw_transmission(wave, ebv)) / ebv
    scale = sfd_recalibration(rv)
    np.testing.assert_allclose(k, scale * ref, atol=2e-3)
    assert mw_extinction_curve([1e4], rv)[0] == pytest.approx(1.029, rel=1e-12)
    # ≈ the "0.86" of the paper's abstract (the monochromatic definition gives 0.88 with F99).
    assert 0.85 < scale < 0.89
    assert np.all(mw_transmission([3600.0, 9800.0], 0.0) == 1.0)
    with pytest.raises(ValueError, match="E\\(B-V\\)"):
        mw_transmission([5000.0], -0.1)
    with pytest.raises(ValueError, match="range"):
        mw_transmission([500.0], 0.1)


# ----------------------------------------------------------------------------- DESI
@needs_desi
def test_desi_real_target_read_and_cleaned():
    sel = select_desi(REDROCK)
    assert sel.ntargets == 1 and sel.kind == "desi"
    m = sel.meta[0]
    fm = Table.read(COADD, hdu="FIBERMAP")
    assert m["TARGETID"] == TARGETID and m["Z"] == pytest.approx(Z_TRUE, abs=1e-12)
    assert m["RA"] == fm["TARGET_RA"][0] and m["DEC"] == fm["TARGET_DEC"][0]
    assert m["EBV"] == pytest.approx(float(fm["EBV"][0])) and m["SPECTYPE"] == "GALAXY"
    assert sel.header == {"SPECPROD": "iron", "COADDTYP": "cumulative"}
    (spec,) = list(sel.spectra())
    assert [c.name for c in spec.cameras] == ["b", "r", "z"]
    assert spec.ebv == m["EBV"] and spec.z == m["Z"] and not spec.air
    with fits.open(COADD) as co:
        for cam in spec.cameras:
            X = cam.name.upper()
            wave = co[f"{X}_WAVELENGTH"].data.astype(float)
            flux = co[f"{X}_FLUX"].data[0].astype(float)
            ivar = co[f"{X}_IVAR"].data[0].astype(float)
            mask = co[f"{X}_MASK"].data[0]
            np.testing.assert_array_equal(cam.wave, wave)
            np.testing.assert_array_equal(cam.resolution.matrix, co[f"{X}_RESOLUTION"].data[0])
            # masked: MASK != 0 and the first/last 3 pixels; nothing else
            dead = (mask != 0) | (ivar == 0)
            dead[:3] = dead[-3:] = True
            np.testing.assert_array_equal(cam.ivar == 0, dead)
            # Milky-Way correction: A_λ from the curve applied to flux and ivar; 1 % floor
            t = mw_transmission(wave, m["EBV"])
            np.testing.assert_allclose(cam.flux, flux / t, rtol=1e-12)
            ok = ~dead
            np.testing.assert_allclose(cam.ivar[ok], t[ok] ** 2 / (1 / ivar[ok] + (0.01 * flux[ok]) ** 2),
                                       rtol=1e-12)
            assert np.all(t < 1) and np.all(np.diff(t) > 0)       # bluer light is dimmed more


@needs_desi
def test_coadd_path_and_missing_coadd(tmp_path):
    assert coadd_path(REDROCK) == COADD
    lonely = tmp_path / "redrock-1-2-3.fits"
    lonely.write_bytes(REDROCK.read_bytes())
    with pytest.raises(InputError, match=r"coadd-1-2-3\.fits.*not found.*--coadd"):
        select_desi(lonely)
    sel = select_desi(lonely, coadd=COADD)                     # given explicitly: fine
    assert sel.meta[0]["COADD_FILE"] == COADD.name
    odd = tmp_path / "zbest.fits"
    odd.write_bytes(REDROCK.read_bytes())
    with pytest.raises(InputError, match="--coadd"):
        select_desi(odd)


@needs_desi
def test_desi_selection_matches_brute_force(tmp_path):
    """FastSpecFit's default cuts, row by row: Z > 0.001, OBJTYPE == TGT, NODATA bit
    (512) of ZWARN clear; zwarnmax; then firsttarget/ntargets."""
    z = [0.3, 0.0005, 0.2, 0.1, 0.5, 0.25, 0.4, 0.05]
    objtype = ["TGT", "TGT", "SKY", "TGT", "TGT", "TGT", "TGT", "TGT"]
    zwarn = [0, 0, 0, 512, 4, 0, 516, 0]
    rr, co, tids = write_desi_pair(tmp_path, 8, z=z, objtype=objtype, zwarn=zwarn, crop=40)
    expect = [k for k in range(8) if z[k] > 0.001 and objtype[k] == "TGT" and not zwarn[k] & 512]
    assert expect == [0, 4, 5, 7]
    got = [m["TARGETID"] for m in select_desi(rr).meta]
    assert got == list(tids[expect])
    got = [m["TARGETID"] for m in select_desi(rr, zwarnmax=0).meta]
    assert got == list(tids[[k for k in expect if zwarn[k] <= 0]])
    got = [m["TARGETID"] for m in select_desi(rr, firsttarget=1, ntargets=2).meta]
    assert got == list(tids[expect[1:3]])
    # explicit targets: no cuts, the order given, optional redshifts
    sel = select_desi(rr, targetids=[tids[2], tids[1]], input_redshifts=[0.11, 0.22])
    assert [m["TARGETID"] for m in sel.meta] == [tids[2], tids[1]]
    assert [m["Z"] for m in sel.meta] == [0.11, 0.22]
    assert [m["Z_RR"] for m in sel.meta] == [0.2, 0.0005]
    assert [s.z for s in sel.spectra()] == [0.11, 0.22]


@needs_desi
def test_desi_coadd_with_other_targets(tmp_path):
    rr, _, _ = write_desi_pair(tmp_path, 3, name="a", crop=40)
    _, co_b, _ = write_desi_pair(tmp_path, 2, name="b", crop=40)
    with pytest.raises(InputError, match=r"coadd-b\.fits: its FIBERMAP TARGETIDs do not match the "
                                         r"REDSHIFTS of .*redrock-a\.fits.*--coadd"):
        select_desi(rr, coadd=co_b)


@needs_desi
def test_desi_masked_and_corrupt_targets_become_problems(tmp_path):
    def edit(a):
        a["B"]["IVAR"][0] = 0.0                 # target 0: camera b dropped, r and z kept
        for cam in "BRZ":
            a[cam]["IVAR"][1] = 0.0             # target 1: nothing left
            a[cam]["MASK"][2] = 1               # target 2: everything masked by MASK
        a["R"]["FLUX"][3, 30] = np.nan          # target 3: NaN flux on a live pixel
        a["Z"]["IVAR"][4, 20] = -1.0            # target 4: negative ivar
        a["R"]["FLUX"][5, 30] = np.inf          # target 5: inf flux on a masked pixel: harmless
        a["R"]["IVAR"][5, 30] = 0.0
    rr, co, tids = write_desi_pair(tmp_path, 6, crop=60, edit=edit)
    out = list(select_desi(rr).spectra())
    assert [c.name for c in out[0].cameras] == ["r", "z"]
    for k in (1, 2):
        assert isinstance(out[k], TargetProblem) and out[k].status == STATUS_NO_GOOD_PIXELS
        assert str(tids[k]) in out[k].message and "coadd-" in out[k].message
    for k, cam in ((3, "camera r"), (4, "camera z")):
        assert isinstance(out[k], TargetProblem) and out[k].status == STATUS_BAD_VALUES
        assert str(tids[k]) in out[k].message and cam in out[k].message and "IVAR = 0" in out[k].message
    assert [c.name for c in out[5].cameras] == ["b", "r", "z"]
    assert out[5].cameras[1].flux[30] == 0.0 and out[5].cameras[1].ivar[30] == 0.0


# ----------------------------------------------------------------------------- SDSS
def test_sdss_spec_file_layout():
    path = _ppxf_spectrum("NGC3522_SDSS_DR18.fits")
    sel = read_sdss(path)
    with fits.open(path) as h:
        c, so = h["COADD"].data, h["SPECOBJ"].data[0]
        loglam, wdisp = c["loglam"].astype(float), c["wdisp"].astype(float)
        bad = (c["and_mask"] != 0) | (c["ivar"] == 0)
    m = sel.meta[0]
    assert m["Z"] == pytest.approx(float(so["Z"])) and m["TARGETID"] == int(so["SPECOBJID"])
    assert m["SPECTYPE"] == "GALAXY" and m["SURVEY"] == "sdss" and m["EBV"] == 0.0
    (spec,) = list(sel.spectra())
    (cam,) = spec.cameras
    np.testing.assert_allclose(cam.wave, 10 ** loglam, rtol=2e-6)       # float32 loglam rounding
    step = np.diff(np.log10(cam.wave))                                   # uniform 1e-4 dex grid
    assert np.allclose(step, 1e-4, rtol=1e-6, atol=0) and np.ptp(step) < 1e-12
    dlam = cam.wave * np.log(10) * 1e-4
    np.testing.assert_allclose(cam.resolution.fwhm, 2.3548200450309493 * wdisp * dlam, rtol=1e-6)
    bad[:3] = bad[-3:] = True
    np.testing.assert_array_equal(cam.ivar == 0, bad)
    assert read_sdss(path, z=0.01).meta[0]["Z"] == 0.01


def test_table_input_air_and_header(tmp_path):
    wave_air = np.linspace(4000.0, 6000.0, 500)
    t = Table({"WAVELENGTH": wave_air, "FLUX": np.ones(500), "IVAR": np.full(500, 4.0),
               "FWHM": np.full(500, 2.5)})
    t.meta.update({"Z": 0.02, "TARGETID": 7, "AIRORVAC": "air"})
    path = tmp_path / "one.fits"
    t.write(path)
    sel = read_table(path)
    assert sel.meta[0]["TARGETID"] == 7 and sel.meta[0]["Z"] == 0.02
    (spec,) = list(sel.spectra(edge_pixels=0, uncertainty_floor=0.0))
    np.testing.assert_allclose(spec.cameras[0].wave, air_to_vacuum(wave_air))
    assert spec.cameras[0].resolution.fwhm[0] == 2.5 and np.all(spec.cameras[0].ivar == 4.0)
    assert read_table(path, z=0.5).meta[0]["Z"] == 0.5
    t.meta.pop("Z")
    t.write(path, overwrite=True)
    with pytest.raises(InputError, match="no redshift"):
        read_table(path)
    Table({"LAMBDA": wave_air, "FLUX": np.ones(500)}).write(path, overwrite=True)
    with pytest.raises(InputError, match="no inverse-variance column.*LAMBDA, FLUX"):
        read_table(path, z=0.1)
    text = tmp_path / "notes.txt"
    text.write_text("not a spectrum")
    with pytest.raises(InputError, match="notes.txt: not a FITS file.*WAVELENGTH, FLUX, IVAR"):
        read_table(text, z=0.1)


def test_spectrum_from_arrays_checks():
    w = np.linspace(4000.0, 5000.0, 200)
    f, iv = np.ones(200), np.ones(200)
    s = spectrum_from_arrays(w, f, iv, 0.1, R=2000.0, ebv=0.05)
    np.testing.assert_allclose(s.cameras[0].resolution.fwhm, w / 2000.0)
    np.testing.assert_allclose(s.cameras[0].flux, 1 / mw_transmission(w, 0.05))
    iv_bad = iv.copy()
    iv_bad[10] = -1
    with pytest.raises(ValueError, match="negative ivar.*set ivar = 0"):
        spectrum_from_arrays(w, f, iv_bad, 0.1)
    with pytest.raises(ValueError, match="no pixel has ivar > 0"):
        spectrum_from_arrays(w, f, np.zeros(200), 0.1)
    with pytest.raises(ValueError, match="at most one"):
        spectrum_from_arrays(w, f, iv, 0.1, R=2000.0, fwhm=2.0)
    with pytest.raises(ValueError, match="one length"):
        spectrum_from_arrays(w, f[:10], iv, 0.1)
