"""The whole fastspec pipeline on synthetic DESI files with emission lines of known flux.

Each target is an E-MILES continuum (4 SSPs, through the package's forward model at
v = 0, σ = 150 km/s) plus Gaussian lines built independently of the line model (sub-pixel
sampling, pixel averaging, each camera's own DESI resolution matrix applied as a
``scipy.sparse.dia_matrix``), plus Gaussian noise from the real galaxy's ivar (scaled).
The files go through :func:`cubefit.spectra.fit_desi` — reader, continuum, lines, Dn4000,
joint refit, Monte Carlo, catalogue columns — and the fluxes come out as put in.
"""
from __future__ import annotations

import sys
import types

import numpy as np
import pytest
from astropy.io import fits

from cubefit.spectra import FastspecConfig, Resolution, Spectrum, Camera, fit_desi
from cubefit.spectra.io import InputError
from cubefit.spectra.linelist import default_linelist
from cubefit.spectra.model import TargetModel
from cubefit.spectra.parallel import load_templates
from cubefit.spectra.target import PHOT_NOT_RUN, fastspec_columns, measure_dn4000, photometry_row
from spectra_fakes import REDROCK, needs_desi, small_templates, write_desi_pair
from spectra_line_mocks import brute_lines

Z = 0.1
NARROW = {"oii_3726": (25.0, 10.0, 70.0), "oii_3729": (32.0, 10.0, 70.0), "hbeta": (30.0, -15.0, 90.0),
          "oiii_4959": (40.0 / 2.98, 10.0, 70.0), "oiii_5007": (40.0, 10.0, 70.0),
          "nii_6548": (30.0 / 2.94, 10.0, 70.0), "halpha": (100.0, -15.0, 90.0), "nii_6584": (30.0, 10.0, 70.0),
          "sii_6716": (14.0, 10.0, 70.0), "sii_6731": (11.0, 10.0, 70.0)}
BROAD = {"hbeta_broad": (150.0, 0.0, 2000.0), "halpha_broad": (450.0, 0.0, 2000.0)}
NOISE = (1.0, 0.05, 1.0)              # noise σ of each target, in units of the real galaxy's


def _synthetic(folder):
    """Redrock + coadd with 3 targets (module docstring): normal noise, 20× less noise,
    normal noise with broad Hβ and Hα.  Returns (redrock, templates folder, targetids)."""
    tpl = small_templates(folder / "tpl")
    pt = load_templates(str(tpl))
    rng = np.random.default_rng(11)
    weights = np.array([0.5, 0.0, 0.3, 0.2])

    def edit(arrays):
        for k, scale in enumerate(NOISE):
            cams, res = [], {}
            for cam in "BRZ":
                a = arrays[cam]
                res[cam] = Resolution.from_desi(a["RESOLUTION"][k].astype(np.float64))
                cams.append(Camera(cam.lower(), a["WAVELENGTH"], np.ones(a["WAVELENGTH"].size),
                                   np.ones(a["WAVELENGTH"].size), res[cam]))
            model = TargetModel(Spectrum(cams, Z), pt, mdegree=0, line_half_width=0.0)
            basis = model.basis([0.0, 150.0])
            norm = 1.5 / np.nanmedian(basis[1] @ weights)
            lines = dict(NARROW, **(BROAD if k == 2 else {}))
            for cam, b in zip("BRZ", basis):
                a = arrays[cam]
                clean = np.nan_to_num(b @ weights) * norm + brute_lines(a["WAVELENGTH"], Z, lines, res[cam])
                ivar = a["IVAR"][k].astype(np.float64) / scale ** 2
                sig = np.where(ivar > 0, 1 / np.sqrt(np.where(ivar > 0, ivar, 1.0)), 0.0)
                a["FLUX"][k] = clean + sig * rng.standard_normal(clean.size)
                a["IVAR"][k] = ivar

    rr, coadd, tids = write_desi_pair(folder, len(NOISE), z=[Z] * len(NOISE), edit=edit)
    with fits.open(coadd, mode="update") as h:          # no Milky-Way correction: fluxes as put in
        h["FIBERMAP"].data["EBV"] = 0.0
    return rr, tpl, tids


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    if not REDROCK.exists():
        pytest.skip("real DESI files not found")
    folder = tmp_path_factory.mktemp("synthetic")
    return _synthetic(folder)


@pytest.fixture(scope="module")
def table(synthetic):
    rr, tpl, _ = synthetic
    return fit_desi(rr, templates=str(tpl), phot=False, joint=True, nmonte=0)


@needs_desi
@pytest.mark.network
def test_line_fluxes_ratios_and_broad_choice_through_the_pipeline(table):
    assert list(table["STATUS"]) == [0, 0, 0] and list(table["EMLINE_STATUS"]) == [0, 0, 0]
    for k in range(3):
        for name, (flux, _, _) in NARROW.items():
            if k == 2 and not name.startswith(("oii", "oiii")):
                continue        # target 2: the broad wings, unmasked, bend the continuum near Hβ and Hα
            col = name.upper()
            f, ivar = float(table[f"{col}_FLUX"][k]), float(table[f"{col}_FLUX_IVAR"][k])
            assert ivar > 0, (k, name)
            pull = (f - flux) * np.sqrt(ivar)
            assert abs(pull) < 4, (k, name, f, flux, pull)
            if k == 1:                           # S/N above 100: within 1 %
                assert f == pytest.approx(flux, rel=0.01), (name, f, flux)
                assert flux * np.sqrt(ivar) > 100
        assert table["OIII_5007_FLUX"][k] / table["OIII_4959_FLUX"][k] == pytest.approx(2.98, rel=1e-5)
        assert table["NII_6584_FLUX"][k] / table["NII_6548_FLUX"][k] == pytest.approx(2.94, rel=1e-5)
        assert 0.35 <= table["OII_3729_FLUX"][k] / table["OII_3726_FLUX"][k] <= 1.5
        for col, truth in (("NARROW_BALMER_SIGMA", 90.0), ("NARROW_BALMER_VSHIFT", -15.0),
                           ("NARROW_FORBIDDEN_SIGMA", 70.0), ("NARROW_FORBIDDEN_VSHIFT", 10.0)):
            assert abs(float(table[col][k]) - truth) < 4 / np.sqrt(float(table[f"{col}_IVAR"][k])), (k, col)
    assert list(table["BROAD_BALMER"]) == [0, 0, 1]
    assert table["DELTA_LINECHI2"][2] > 25
    assert table["HALPHA_BROAD_FLUX"][2] == pytest.approx(450.0, rel=0.15)
    # the stellar continuum is unaffected by the narrow lines (masked): σ = 150 km/s
    # (target 2's broad wings reach beyond the ±800 km/s masks and bias its σ: not checked)
    assert np.all(np.abs(table["VDISP"][:2] - 150.0) < 4 / np.sqrt(table["VDISP_IVAR"][:2]))


@needs_desi
@pytest.mark.network
def test_dn4000_is_measured_without_the_lines_and_joint_columns(table, synthetic):
    """DN4000 is the break of the data minus the line model ([Ne III], H8, Hε … fall in
    its windows), DN4000_OBS of the data; the joint stars + gas refit changes little on a
    continuum that the templates describe exactly."""
    assert np.all(table["DN4000"] != table["DN4000_OBS"])
    narrow = slice(0, 2)           # (the broad wings of target 2, unmasked, tilt its continuum fit)
    assert np.all(np.abs(table["DN4000"][narrow] - table["DN4000_MODEL"][narrow])
                  < 4 / np.sqrt(table["DN4000_IVAR"][narrow]))
    for k in range(3):
        for name in ("HBETA", "HALPHA", "OIII_5007"):
            f, fj = table[f"{name}_FLUX"][k], table[f"{name}_FLUX_JOINT"][k]
            assert abs(fj - f) < (0.5 if k < 2 else 1.0) / np.sqrt(table[f"{name}_FLUX_IVAR"][k]), (k, name, f, fj)
            assert table[f"{name}_FLUX_IVAR_JOINT"][k] > 0
    # (target 1's noise is below the reader's 1 % error floor: its χ²/dof is well below 1)
    assert np.all((table["RCHI2_JOINT"][[0, 2]] > 0.8) & (table["RCHI2_JOINT"][[0, 2]] < 1.3))
    assert table["RCHI2_JOINT"][1] < 1.0
    names = table.colnames
    assert names.index("HBETA_FLUX_JOINT") == names.index("HBETA_NPIX") + 1


def test_measure_dn4000_against_a_step_spectrum():
    """A step in F_λ at 4000 Å: Dn4000 = ∫F_ν(red)/∫F_ν(blue) = (3/2)(4100³−4000³)/(3950³−3850³)
    for F_ν ∝ λ² F_λ; a line model in the red window is taken out again."""
    wave = np.arange(3700.0, 4300.0, 0.5) * 1.2
    flux = np.where(wave / 1.2 < 4000.0, 2.0, 3.0)
    line = np.where(np.abs(wave / 1.2 - 4050.0) < 2.0, 5.0, 0.0)         # in the red window (4000-4100 Å)
    spec = Spectrum([Camera("b", wave, flux + line, np.full(wave.size, 100.0))], z=0.2)
    d_obs, _ = measure_dn4000(spec, [np.ones(wave.size)])
    d, ivar = measure_dn4000(spec, [np.ones(wave.size)], [line])
    step = 1.5 * (4100.0 ** 3 - 4000.0 ** 3) / (3950.0 ** 3 - 3850.0 ** 3)
    assert d == pytest.approx(step, rel=2e-3) and ivar > 0         # (pixels of 0.6 Å straddle the edges)
    assert d_obs > step * 1.01
    masked = measure_dn4000(spec, [np.where(wave / 1.2 < 3960, np.nan, 1.0)], [line])
    assert np.isnan(masked[0])               # the blue window (3850-3950 Å) is outside the model


@needs_desi
@pytest.mark.network
def test_linelist_file_changes_fitted_and_masked_lines(synthetic, tmp_path):
    """--emlines FILE: only its lines get columns, and only they are masked in the continuum
    fit (more fitted continuum pixels than with the packaged list)."""
    from astropy.table import Table
    rr, tpl, _ = synthetic
    src = Table.read(str(__import__("importlib").resources.files("cubefit.spectra") / "resources" / "emlines.ecsv"),
                     format="ascii.ecsv")
    keep = [n in ("halpha", "nii_6548", "nii_6584") for n in src["name"]]
    path = tmp_path / "ha.ecsv"
    src[keep].write(path, format="ascii.ecsv")
    one = [int(synthetic[2][0])]
    mine = fit_desi(rr, templates=str(tpl), phot=False, linelist=str(path), targetids=one)
    packaged = fit_desi(rr, templates=str(tpl), phot=False, emlines=False, targetids=one)
    assert "HALPHA_FLUX" in mine.colnames and "HBETA_FLUX" not in mine.colnames
    assert mine["NPIX_CONT"][0] > packaged["NPIX_CONT"][0]
    assert abs(float(mine["HALPHA_FLUX"][0]) - 100.0) < 4 / np.sqrt(float(mine["HALPHA_FLUX_IVAR"][0]))
    # without lines: no line columns, and DN4000 is the observed one
    assert "EMLINE_STATUS" not in packaged.colnames and packaged["DN4000"][0] == packaged["DN4000_OBS"][0]
    bad = tmp_path / "bad.ecsv"
    bad.write_text("not an ecsv table\n")
    with pytest.raises(InputError, match="--emlines.*bad.ecsv"):
        fit_desi(rr, templates=str(tpl), linelist=str(bad))


@needs_desi
@pytest.mark.network
def test_monte_carlo_through_the_pipeline(synthetic):
    """--nmonte: NMONTE refits, MC inverse variances close to the formal ones (a 20-draw
    estimate scatters by ~30 %), seeded: the same numbers again, other numbers with
    another seed."""
    rr, tpl, tids = synthetic
    one = [int(tids[0])]
    formal = fit_desi(rr, templates=str(tpl), phot=False, targetids=one)
    mc = fit_desi(rr, templates=str(tpl), phot=False, targetids=one, nmonte=20, seed=3)
    again = fit_desi(rr, templates=str(tpl), phot=False, targetids=one, nmonte=20, seed=3)
    other = fit_desi(rr, templates=str(tpl), phot=False, targetids=one, nmonte=20, seed=4)
    assert formal["NMONTE"][0] == 0 and mc["NMONTE"][0] == 20
    for col in ("VDISP_IVAR", "HALPHA_FLUX_IVAR", "OIII_5007_FLUX_IVAR", "NARROW_BALMER_SIGMA_IVAR", "DN4000_IVAR"):
        ratio = float(mc[col][0] / formal[col][0])
        assert 0.35 < ratio < 2.5, (col, ratio)
        assert mc[col][0] == again[col][0] and mc[col][0] != other[col][0]
    for col in ("VDISP", "HALPHA_FLUX"):                    # best-fit values are not changed by MC
        assert mc[col][0] == formal[col][0]


def test_photometry_hook(monkeypatch):
    """The hook calls joint_phot.fit_with_photometry(spec, templates, continuum,
    fibermap_row, options); a missing module, an exception or a status ≠ 0 leave only
    PHOT_STATUS and PHOT_MESSAGE."""
    calls = []

    class Result:
        def __init__(self, status):
            self.status = status

        def to_row(self):
            return {"PHOT_STATUS": self.status, "PHOT_MESSAGE": "no bands" if self.status else "",
                    "LOGMSTAR": 10.5}

    def fit_with_photometry(spec, templates, continuum_result, fibermap_row, options):
        calls.append((spec, templates, continuum_result, fibermap_row, options))
        if fibermap_row == "boom":
            raise RuntimeError("kaput")
        return Result(0 if fibermap_row == "good" else 1)

    module = types.ModuleType("cubefit.spectra.joint_phot")
    module.fit_with_photometry = fit_with_photometry
    monkeypatch.setitem(sys.modules, "cubefit.spectra.joint_phot", module)
    assert photometry_row("S", "T", "C", "O", "good") == {"PHOT_STATUS": 0, "PHOT_MESSAGE": "", "LOGMSTAR": 10.5}
    assert calls[0] == ("S", "T", "C", "good", "O")
    assert photometry_row("S", "T", "C", "O", "bad") == {"PHOT_STATUS": 1, "PHOT_MESSAGE": "no bands"}
    row = photometry_row("S", "T", "C", "O", "boom")
    assert row["PHOT_STATUS"] == PHOT_NOT_RUN and "kaput" in row["PHOT_MESSAGE"] and set(row) == {
        "PHOT_STATUS", "PHOT_MESSAGE"}
    monkeypatch.setitem(sys.modules, "cubefit.spectra.joint_phot", None)       # not installed
    row = photometry_row("S", "T", "C", "O", "good")
    assert row == {"PHOT_STATUS": PHOT_NOT_RUN,
                   "PHOT_MESSAGE": "joint photometric fit not available (cubefit.spectra.joint_phot is not installed)"}


@needs_desi
@pytest.mark.network
def test_photometry_columns_follow_the_setting(synthetic, monkeypatch):
    """Default (auto): a DESI FIBERMAP with photometry gives the photometric columns and the
    hook receives the target's FIBERMAP row; --no-phot: no such columns."""
    from cubefit.spectra.derived import PHOT_COLUMNS
    rr, tpl, tids = synthetic
    seen = []

    class Result:
        status = 0

        def to_row(self):
            return {"PHOT_STATUS": 0, "PHOT_MESSAGE": "", "LOGMSTAR": 9.9}

    def fit_with_photometry(spec, templates, continuum_result, fibermap_row, options):
        seen.append((int(fibermap_row["TARGETID"]), spec.targetid, continuum_result.status))
        return Result()

    module = types.ModuleType("cubefit.spectra.joint_phot")
    module.fit_with_photometry = fit_with_photometry
    monkeypatch.setitem(sys.modules, "cubefit.spectra.joint_phot", module)
    auto = fit_desi(rr, templates=str(tpl), targetids=[int(tids[1])], emlines=False)
    assert seen == [(int(tids[1]), int(tids[1]), 0)]
    assert {c[0] for c in PHOT_COLUMNS} <= set(auto.colnames) and auto["LOGMSTAR"][0] == 9.9
    off = fit_desi(rr, templates=str(tpl), targetids=[int(tids[1])], emlines=False, phot=False)
    assert "LOGMSTAR" not in off.colnames and len(seen) == 1


def test_column_list_and_settings_checks(tmp_path):
    ll = default_linelist()
    cols = [c[0] for c in fastspec_columns(150, ("b", "r", "z"), ll, joint=True, phot=True)]
    assert len(cols) == len(set(cols)) and len(cols) < 999
    assert cols.index("DN4000_OBS") == cols.index("DN4000_IVAR") + 1
    assert cols.index("RCHI2_JOINT") == cols.index("RCHI2_LINE") + 1
    assert cols[-1] != "NMONTE" and "NMONTE" in cols and "PHOT_STATUS" in cols
    bare = [c[0] for c in fastspec_columns(150, ("b",), None)]
    assert "HALPHA_FLUX" not in bare and bare[-1] == "NMONTE"
    with pytest.raises(ValueError, match="nmonte"):
        FastspecConfig(nmonte=-1)
    with pytest.raises(ValueError, match="emlines"):
        FastspecConfig(joint=True, emlines=False)
