"""`cubefit fastspec` / `fastspec`: the real DESI galaxy end to end, and bad input:
file-level problems stop with exit code 1 before anything is written, target-level
problems become rows with a status and a message."""
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table

from cubefit.cli import main as cubefit_main
from cubefit.spectra.cli import main as fastspec_main
from cubefit.spectra.model import STATUS
from conftest import file_digest
from spectra_fakes import REDROCK, TARGETID, Z_TRUE, needs_desi, write_desi_pair


def _run(capsys, *args):
    code = cubefit_main(["fastspec", *map(str, args), "--quiet"])
    out = capsys.readouterr()
    return code, out.out, out.err


@needs_desi
@pytest.mark.network
def test_real_desi_galaxy(tmp_path, capsys):
    """TARGETID 39633345008634465 (z = 0.3687): fitted, χ²/dof in [0.8, 1.5], σ with a
    finite error, a catalogue astropy opens with units; Hβ, [O III] 5007, [O II] 3726,3729
    and Hα measured with their S/N, and the QA figure written.  pPXF's SDSS spectrum of
    NGC 3522 rides along in the same catalogue: its σ within 15 % of the SDSS pipeline's
    VDISP."""
    sdss = Path(pytest.importorskip("ppxf").__file__).parent / "spectra" / "NGC3522_SDSS_DR18.fits"
    out = tmp_path / "fastspec.fits"
    qa = tmp_path / "qa"
    code, stdout, err = _run(capsys, REDROCK, sdss, "-o", out, "--models", "--qa", qa, "--no-phot")
    assert code == 0, err
    assert f"{out}: 2 target(s)" in stdout
    meta = Table.read(out, hdu="METADATA")
    spec = Table.read(out, hdu="SPECPHOT")
    assert meta["TARGETID"][0] == TARGETID == spec["TARGETID"][0]
    assert meta["Z"][0] == pytest.approx(Z_TRUE, abs=1e-9)
    assert meta["RA"].unit == "deg" and meta["EBV"].unit == "mag"
    assert spec["STATUS"][0] == 0, spec["MESSAGE"][0]
    assert 0.8 <= spec["RCHI2_CONT"][0] <= 1.5
    vdisp, ivar = float(spec["VDISP"][0]), float(spec["VDISP_IVAR"][0])
    assert np.isfinite(vdisp) and 30 < vdisp < 500
    assert np.isfinite(ivar) and ivar > 0
    assert spec["VDISP"].unit == "km / s"
    for name in spec.colnames:
        assert spec[name].description, name
    # the lines, with S/N well above detection (measured: Hβ 107, [O III] 205, [O II] 59/74, Hα 239)
    assert spec["EMLINE_STATUS"][0] == 0 and spec["BROAD_BALMER"][0] == 0
    for line, low in (("HBETA", 50), ("OIII_5007", 100), ("OII_3726", 25), ("OII_3729", 30), ("HALPHA", 100)):
        flux, ivar = float(spec[f"{line}_FLUX"][0]), float(spec[f"{line}_FLUX_IVAR"][0])
        assert flux * np.sqrt(ivar) > low, (line, flux, ivar)
        assert spec[f"{line}_FLUX"].unit == "1e-17 erg / (s cm2)"
    assert 3.0 < spec["HALPHA_FLUX"][0] / spec["HBETA_FLUX"][0] < 5.0          # Balmer decrement ≥ 2.86
    assert spec["DN4000"][0] > spec["DN4000_OBS"][0]          # [Ne III], H8, Hε no longer fill the blue window
    png = qa / f"qa-{TARGETID}.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 50_000
    with fits.open(out) as h:
        models = h["MODELS"].data
        assert models["CONTINUUM_B"].shape == (2, 2751) and np.isfinite(models["CONTINUUM_R"][0]).all()
        assert models["EMLINES_R"][0].max() > 5 and np.isnan(models["EMLINES_B"][1]).all()
        assert np.isnan(models["CONTINUUM_B"][1]).all()                 # the SDSS target has no b
        assert models["CONTINUUM_SDSS"].shape == (2, 3815) and np.isnan(models["CONTINUUM_SDSS"][0]).all()
        sdss_vdisp = float(h["SPECPHOT"].data["VDISP"][1])
        with fits.open(sdss) as s:
            ref = float(s["SPECOBJ"].data["VDISP"][0])
    assert spec["STATUS"][1] == 0 and sdss_vdisp == pytest.approx(ref, rel=0.15)


def test_help_of_both_commands(capsys):
    for main, args in ((cubefit_main, ["fastspec", "--help"]), (fastspec_main, ["--help"])):
        with pytest.raises(SystemExit) as e:
            main(args)
        assert e.value.code == 0
        assert "--targetids" in capsys.readouterr().out


@needs_desi
def test_file_level_problems_stop_before_writing(tmp_path, capsys):
    out = tmp_path / "out.fits"
    rr_a, _, tids = write_desi_pair(tmp_path, 2, name="a", crop=40)
    _, co_b, _ = write_desi_pair(tmp_path, 3, name="b", crop=40)
    lonely = tmp_path / "sub" / "redrock-lonely.fits"
    lonely.parent.mkdir()
    lonely.write_bytes(rr_a.read_bytes())
    bad_list = tmp_path / "bad.ecsv"
    bad_list.write_text("name restwave\nhalpha 6564.61\n")
    cases = [
        ((lonely, "-o", out), [str(lonely.parent / "coadd-lonely.fits"), "not found", "--coadd"]),
        ((rr_a, "--coadd", co_b, "-o", out), ["coadd-b.fits", "do not match", "redrock-a.fits", "--coadd"]),
        ((rr_a, "--targetids", f"{tids[0]},12345", "-o", out), ["TARGETID 12345 not found", "redrock-a.fits"]),
        ((rr_a, "--input-redshifts", "0.1", "-o", out), ["--input-redshifts", "needs --targetids"]),
        ((rr_a, "--targetids", str(tids[0]), "--input-redshifts", "0.1,0.2", "-o", out),
         ["2 value(s) for 1 --targetids"]),
        ((tmp_path / "nope.fits", "-o", out), ["nope.fits", "not found"]),
        ((rr_a, "-o", tmp_path / "no" / "out.fits"), ["does not exist", "create it"]),
        ((rr_a, "-o", out, "--emlines", tmp_path / "none.ecsv"), ["--emlines", "none.ecsv", "no such file"]),
        ((rr_a, "-o", out, "--emlines", bad_list), ["--emlines", "bad.ecsv", "ECSV"]),
        ((rr_a, "-o", out, "--qa", rr_a), ["--qa", "is a file", "folder"]),
        ((rr_a, "-o", out, "--nmonte", "-1"), ["nmonte=-1"]),
    ]
    for args, words in cases:
        code, _, err = _run(capsys, *args)
        assert code == 1, args
        assert err.startswith("cubefit fastspec: error:"), err
        for w in words:
            assert w in err, (w, err)
        assert not out.exists()
    # an existing output is never replaced without --overwrite
    out.write_bytes(b"keep me")
    digest = file_digest(out)
    code, _, err = _run(capsys, rr_a, "-o", out)
    assert code == 1 and "--overwrite" in err and file_digest(out) == digest
    # the stand-alone command says the same
    assert fastspec_main([str(lonely), "-o", str(tmp_path / "x.fits")]) == 1
    assert "fastspec: error:" in capsys.readouterr().err


@needs_desi
@pytest.mark.network
def test_target_level_problems_become_rows(tmp_path, capsys):
    """Fully masked, NaN flux, negative ivar and a redshift beyond the templates each
    get a row with STATUS ≠ 0 and a message naming the target; the good one is fitted."""
    def edit(a):
        for cam in "BRZ":
            a[cam]["IVAR"][1] = 0.0
        a["R"]["FLUX"][2, 500] = np.nan
        a["Z"]["IVAR"][3, 700] = -1.0
    z = [Z_TRUE, Z_TRUE, Z_TRUE, Z_TRUE, 12.0]
    rr, _, tids = write_desi_pair(tmp_path, 5, z=z, edit=edit)
    out = tmp_path / "out.fits"
    code, stdout, err = _run(capsys, rr, "-o", out, "--degree", "1")
    assert code == 0, err
    assert "4 could not be fitted" in stdout
    assert "degree=1" in fits.getheader(out)["CONTOPT"]
    spec = Table.read(out, hdu="SPECPHOT", mask_invalid=False)
    assert list(spec["TARGETID"]) == list(tids)
    status = list(spec["STATUS"])
    message = [str(m) for m in spec["MESSAGE"]]
    assert status[0] == 0 and np.isfinite(spec["VDISP"][0])
    assert status[1] == STATUS["no_pixels"] and "fully masked" in message[1]
    assert status[2] == STATUS["bad_input"] and "camera r" in message[2] and "NaN" in message[2]
    assert status[3] == STATUS["bad_input"] and "camera z" in message[3] and "negative ivar" in message[3]
    assert status[4] == STATUS["out_of_range"] and "redshift" in message[4].lower()
    for k in range(1, 5):
        assert str(tids[k]) in message[k] and "coadd-4-80613-fake.fits" in message[k], message[k]
        assert np.isnan(spec["VDISP"][k])
        assert spec["EMLINE_STATUS"][k] == -1 and np.isnan(spec["HALPHA_FLUX"][k])   # lines not attempted
    assert spec["EMLINE_STATUS"][0] == 0 and spec["HALPHA_FLUX"][0] > 0
