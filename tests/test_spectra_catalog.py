"""The catalogue file: tables with units and descriptions, failed rows, MODELS, atomic
writes that never replace an existing file by accident."""
import os

import astropy.units as u
import numpy as np
import pytest
from astropy.io import fits

from cubefit.spectra.catalog import (METADATA_COLUMNS, check_output, metadata_table, models_table,
                                     read_catalog, specphot_table, write_catalog)
from cubefit.spectra.io import InputError
from conftest import file_digest

# A small stand-in for the fitter's column list (cubefit.spectra.continuum.continuum_columns).
COLUMNS = (
    ("VDISP", "f4", "km/s", "Stellar velocity dispersion"),
    ("VDISP_IVAR", "f4", "s2/km2", "Inverse variance of VDISP"),
    ("RCHI2_CONT", "f4", "", "Reduced χ² of the continuum fit"),
    ("LOGAGE_LW", "f8", "dex", "Light-weighted ⟨log age⟩"),
    ("COEFF", ("f4", (3,)), "", "Template weights"),
    ("STATUS", "i2", "", "0 = fitted"),
    ("MESSAGE", "U80", "", "Why a fit failed"),
)


def _tables():
    meta = [{"TARGETID": 11, "RA": 10.0, "DEC": -5.0, "Z": 0.1, "ZWARN": 0, "SPECTYPE": "GALAXY",
             "EBV": 0.05, "INPUT_FILE": "redrock-x.fits"},
            {"TARGETID": 12, "RA": 11.0, "DEC": -6.0, "Z": 0.2, "ZWARN": 4, "SPECTYPE": "QSO",
             "EBV": 0.02, "INPUT_FILE": "redrock-x.fits"}]
    rows = [{"TARGETID": 11, "VDISP": 150.0, "VDISP_IVAR": 0.01, "RCHI2_CONT": 1.1, "LOGAGE_LW": 9.5,
             "COEFF": np.arange(3.0), "STATUS": 0, "MESSAGE": ""},
            {"TARGETID": 12, "STATUS": 2,
             "MESSAGE": "coadd-x.fits: TARGETID 12: every camera is fully masked"}]
    models = [{"b": (np.linspace(3600, 3700, 5), np.ones(5)), "r": (np.linspace(5800, 5900, 4), np.ones(4))},
              {}]
    return metadata_table(meta), specphot_table(rows, COLUMNS), models_table([11, 12], models)


def test_catalogue_round_trip_units_descriptions(tmp_path):
    meta, spec, models = _tables()
    path = write_catalog(tmp_path / "out.fits", meta, spec, models, header={"SPECPROD": "iron"})
    cat = read_catalog(path)
    assert cat["header"]["SPECPROD"] == "iron" and "CUBEFIT" in cat["header"]
    m, s, mo = cat["METADATA"], cat["SPECPHOT"], cat["MODELS"]
    assert m.colnames == [c[0] for c in METADATA_COLUMNS]
    assert s.colnames == ["TARGETID"] + [c[0] for c in COLUMNS]
    for table, cols in ((m, METADATA_COLUMNS), (s, COLUMNS)):
        for name, _, unit, desc in cols:
            assert table[name].description == desc
            assert (table[name].unit is None) == (unit == "")
    assert m["RA"].unit == "deg" and m["EBV"].unit == "mag" and s["VDISP"].unit == "km / s"
    assert s["LOGAGE_LW"].unit == u.dex
    # blanks for what a reader did not know, failed rows blank but for STATUS/MESSAGE
    assert m["TILEID"][0] == -1 and np.isnan(m["DELTACHI2"][0]) and m["COADD_FILE"][0] == ""
    assert list(s["STATUS"]) == [0, 2] and "fully masked" in s["MESSAGE"][1]
    assert np.isnan(s["VDISP"][1]) and np.all(np.isnan(s["COEFF"][1])) and s["COEFF"].shape == (2, 3)
    np.testing.assert_array_equal(s["COEFF"][0], [0, 1, 2])
    assert s["VDISP"][0] == np.float32(150.0)
    # models: fixed-length columns per camera, NaN for the failed target
    assert mo["CONTINUUM_B"].shape == (2, 5) and np.all(np.isnan(mo["CONTINUUM_R"][1]))
    np.testing.assert_array_equal(mo["WAVE_B"][0], np.linspace(3600, 3700, 5))
    # plain FITS readers see the description as the TTYPE comment
    with fits.open(path) as h:
        assert h["SPECPHOT"].header.comments["TTYPE2"] == "Stellar velocity dispersion"
        assert h["METADATA"].header["TUNIT6"] == "deg"
        assert h["SPECPHOT"].header.comments["TTYPE4"] == "Reduced chi2 of the continuum fit"
        assert h["SPECPHOT"].header["TUNIT5"] == "dex"          # not a FITS unit, but written


def test_variable_length_models(tmp_path):
    meta, spec, _ = _tables()
    models = models_table([11, 12], [{"sdss": (np.arange(5.0), np.ones(5))},
                                     {"sdss": (np.arange(7.0), np.ones(7))}])
    path = write_catalog(tmp_path / "out.fits", meta, spec, models)
    mo = read_catalog(path)["MODELS"]
    assert len(mo["WAVE_SDSS"][0]) == 5 and len(mo["WAVE_SDSS"][1]) == 7
    np.testing.assert_array_equal(mo["WAVE_SDSS"][1], np.arange(7.0))


def test_never_overwrites_without_permission(tmp_path):
    meta, spec, models = _tables()
    path = tmp_path / "out.fits"
    path.write_bytes(b"precious")
    digest = file_digest(path)
    with pytest.raises(InputError, match="exists.*--overwrite"):
        write_catalog(path, meta, spec)
    assert file_digest(path) == digest
    write_catalog(path, meta, spec, overwrite=True)
    assert read_catalog(path)["SPECPHOT"]["TARGETID"].tolist() == [11, 12]
    assert sorted(os.listdir(tmp_path)) == ["out.fits"]            # no temporary left behind
    with pytest.raises(InputError, match="does not exist"):
        check_output(tmp_path / "no" / "out.fits", overwrite=False)


def test_failed_write_leaves_no_file(tmp_path):
    meta, spec, _ = _tables()
    with pytest.raises(ValueError, match="different targets"):
        write_catalog(tmp_path / "out.fits", meta, spec[::-1])
    with pytest.raises(ValueError, match="disagree"):
        write_catalog(tmp_path / "out.fits", meta[:1], spec)
    assert os.listdir(tmp_path) == []


def test_identical_inputs_give_identical_bytes(tmp_path):
    meta, spec, models = _tables()
    a = write_catalog(tmp_path / "a.fits", meta, spec, models)
    b = write_catalog(tmp_path / "b.fits", *_tables())
    assert file_digest(a) == file_digest(b)


def test_docs_list_every_column_with_its_unit():
    """docs/spectra.md has a row `| `NAME` | unit | ...` for every METADATA column and
    every column of the fitter's list (SNR_<CAMERA> documented once)."""
    from pathlib import Path
    from cubefit.spectra.continuum import continuum_columns
    text = (Path(__file__).resolve().parents[1] / "docs" / "spectra.md").read_text()
    for name, _, unit, _ in METADATA_COLUMNS + tuple(continuum_columns(150, ("b", "r", "z"))):
        if name.startswith("SNR_"):
            assert f"`{name}`" in text, name
        else:
            assert f"| `{name}` | {unit or '—'} |" in text, name


def test_docs_list_every_fastspec_column_with_its_unit():
    """Every SPECPHOT column of a run with lines and --joint (photometry aside: its own
    page) is documented with its unit: the continuum ones in docs/spectra.md, the line
    ones in docs/spectra-lines.md (per group as `<GROUP>_X`, per line as `<LINE>_X`)."""
    from pathlib import Path
    from cubefit.spectra.continuum import continuum_columns
    from cubefit.spectra.linelist import default_linelist
    from cubefit.spectra.target import fastspec_columns
    docs = Path(__file__).resolve().parents[1] / "docs"
    main, lines = (docs / "spectra.md").read_text(), (docs / "spectra-lines.md").read_text()
    ll = default_linelist()
    cont = {c[0] for c in continuum_columns(150, ("b", "r", "z"))}
    for name, _, unit, _ in fastspec_columns(150, ("b", "r", "z"), ll, joint=True):
        if name in cont:
            continue                       # the test above
        row = f"| `{name}` | {unit or '—'} |"
        for prefix in [g.upper() for g in ll.groups] + [line.column for line in ll]:
            if name.startswith(prefix + "_"):          # (HGAMMA_BROAD_FLUX: the HGAMMA_BROAD line)
                kind = "GROUP" if prefix.lower() in ll.groups else "LINE"
                generic = f"| `<{kind}>_{name[len(prefix) + 1:]}` | {unit or '—'} |"
                if generic in lines:
                    row = generic
                    break
        assert row in main or row in lines, (name, row)
