"""Emission-line list, model and fit: checks against independent constructions.

* the packaged wavelengths against NIST air wavelengths converted here with an
  independent implementation of the IAU formula;
* the analytic Jacobian against 4th-order central finite differences;
* the model against a brute-force construction (sub-pixel sampling + dense matrix);
* noiseless fits recover fluxes, ratios and kinematics.
"""
from __future__ import annotations


import numpy as np
import pytest
from astropy import units as u
from spectra_line_mocks import brute_lines, desi_like_camera, make_spectrum

from cubefit.spectra.data import Camera, Resolution, Spectrum
from cubefit.spectra.emline_model import LineModel
from cubefit.spectra.emlines import EMLINE_COLUMNS, fit_emlines
from cubefit.spectra.linelist import default_linelist, read_linelist

NARROW = {"hbeta": (100.0, 30.0, 80.0), "oiii_4959": (100.0, -20.0, 60.0), "oiii_5007": (298.0, -20.0, 60.0),
          "halpha": (300.0, 30.0, 80.0), "nii_6548": (40.0, -20.0, 60.0), "nii_6584": (117.6, -20.0, 60.0),
          "sii_6716": (50.0, -20.0, 60.0), "sii_6731": (40.0, -20.0, 60.0),
          "oii_3726": (80.0, -20.0, 60.0), "oii_3729": (100.0, -20.0, 60.0)}


def _vac(air):
    """Vacuum from air wavelength (Å): IAU formula (Morton 1991) by Newton iteration."""
    def n(lv):
        s2 = (1e4 / lv) ** 2
        return 1 + 2.735182e-4 + 1.314182e-6 * s2 + 2.76249e-8 * s2 ** 2
    lv = air
    for _ in range(20):
        lv = air * n(lv)
    return lv


def test_packaged_linelist_has_the_lines_and_their_wavelengths():
    ll = default_linelist()
    need = ["lyalpha", "civ_1549", "ciii_1908", "mgii_2796", "mgii_2803", "oii_3726", "oii_3729", "neiii_3869",
            "hepsilon", "hdelta", "hgamma", "oiii_4363", "heii_4686", "hbeta", "oiii_4959", "oiii_5007",
            "hei_5876", "oi_6300", "oi_6363", "nii_6548", "halpha", "nii_6584", "sii_6716", "sii_6731",
            "ariii_7135", "siii_9069", "siii_9532", "paepsilon", "pa9", "pa10", "halpha_broad", "hbeta_broad"]
    assert set(need) <= set(ll.names)
    lam = {line.name: line.restwave for line in ll}
    # NIST ASD air wavelengths (Å) → vacuum; the list must agree to 0.02 Å (≈ 1 km/s).
    nist_air = {"halpha": 6562.80, "hbeta": 4861.33, "hgamma": 4340.46, "hdelta": 4101.73, "oiii_5007": 5006.843,
                "oiii_4959": 4958.911, "nii_6584": 6583.45, "nii_6548": 6548.05, "sii_6716": 6716.44,
                "sii_6731": 6730.82, "oi_6300": 6300.304, "oii_3726": 3726.03, "oii_3729": 3728.82,
                "hei_5876": 5875.62, "oiii_4363": 4363.21, "ariii_7135": 7135.79}
    for name, air in nist_air.items():
        assert abs(lam[name] - _vac(air)) < 0.03, (name, lam[name], _vac(air))
    assert lam["lyalpha"] == pytest.approx(1215.67, abs=0.01)
    assert lam["mgii_2796"] == pytest.approx(2796.35, abs=0.01)
    by = {line.name: line for line in ll}
    assert by["oiii_5007"].partner == "oiii_4959" and by["oiii_5007"].ratio == 2.98 and by["oiii_5007"].fixed_ratio
    assert by["nii_6584"].ratio == 2.94 and by["oi_6300"].ratio == 3.0
    assert (by["oii_3729"].ratio_min, by["oii_3729"].ratio_max) == (0.35, 1.5)
    assert (by["sii_6716"].ratio_min, by["sii_6731"].partner) == (0.44, "")
    assert ll.groups["broad_balmer"].broad and not ll.groups["narrow_balmer"].broad
    assert "NIST" in ll.source and "SDSS" in ll.source


def test_linelist_errors_name_the_file_and_the_line(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.ecsv"):
        read_linelist(tmp_path / "nope.ecsv")
    from astropy.table import Table
    t = Table.read(str(__import__("importlib").resources.files("cubefit.spectra") / "resources" / "emlines.ecsv"),
                   format="ascii.ecsv")
    t["partner"] = t["partner"].filled("") if hasattr(t["partner"], "filled") else t["partner"]
    bad = t.copy()
    bad["partner"][list(bad["name"]).index("oiii_5007")] = "oiii_9999"
    p = tmp_path / "bad.ecsv"
    bad.write(p, format="ascii.ecsv")
    with pytest.raises(ValueError, match=r"bad\.ecsv.*oiii_5007.*oiii_9999"):
        read_linelist(p)
    bad = t.copy()
    bad["ratio_min"][list(bad["name"]).index("oii_3729")] = 2.0
    bad.write(p, format="ascii.ecsv", overwrite=True)
    with pytest.raises(ValueError, match="oii_3729.*ratio_min"):
        read_linelist(p)
    bad = t.copy()
    del bad.meta["groups"]
    bad.write(p, format="ascii.ecsv", overwrite=True)
    with pytest.raises(ValueError, match="groups"):
        read_linelist(p)


def test_columns_have_units_astropy_parses():
    names = [c[0] for c in EMLINE_COLUMNS]
    assert len(names) == len(set(names))
    for want in ("HALPHA_FLUX", "HALPHA_FLUX_IVAR", "OIII_5007_EW", "OIII_5007_EW_IVAR", "HBETA_VSHIFT",
                 "HBETA_SIGMA", "HBETA_CONT", "HBETA_AMP", "HBETA_AMP_IVAR", "HBETA_BOXFLUX", "HBETA_CHI2",
                 "HBETA_NPIX", "RCHI2_LINE", "DELTA_LINECHI2", "HALPHA_BROAD_FLUX", "NARROW_BALMER_SIGMA"):
        assert want in names
    for name, dt, unit, desc in EMLINE_COLUMNS:
        np.dtype(dt)
        assert desc
        if unit:
            u.Unit(unit)
    assert u.Unit(dict((c[0], c[2]) for c in EMLINE_COLUMNS)["HALPHA_FLUX"]).to(u.erg / u.s / u.cm ** 2) == 1e-17


def _fd_jacobian(model, theta):
    """4th-order central differences, step 1e-3 of each parameter's scale."""
    J = np.zeros((model.nrows, theta.size))
    for j in range(theta.size):
        h = 1e-3 * max(abs(theta[j]), 1.0)
        def r(d):
            t = theta.copy()
            t[j] += d
            return model.residual(t)
        J[:, j] = (8 * (r(h) - r(-h)) - (r(2 * h) - r(-2 * h))) / (12 * h)
    return J


@pytest.mark.parametrize("kind", ["matrix", "fwhm"])
def test_jacobian_matches_finite_differences(kind):
    z = 0.02
    wave = np.arange(3780.0, 3830.0, 0.5)
    wave2 = np.arange(6640.0, 6900.0, 0.8)
    cams = []
    for name, w in (("b", wave), ("r", wave2)):
        res = Resolution.from_fwhm(1.5, w)
        cams.append(Camera(name, w, np.zeros(w.size), np.full(w.size, 4.0), res.to_matrix(w) if kind == "matrix" else res))
    spec = Spectrum(cams, z)
    model = LineModel(spec, [np.zeros(c.npix) for c in cams], default_linelist())
    assert {"oii_3726", "oii_3729", "halpha", "nii_6584", "sii_6716", "halpha_broad"} <= {l.name for l in model.lines}
    rng = np.random.default_rng(1)
    theta = model.x0.copy()
    theta[:model.n_amp] = rng.uniform(20, 100, model.n_amp)
    for name, val in (("r:oii_3729", 0.8), ("r:sii_6716", 1.1), ("v:narrow_forbidden", 35.0),
                      ("s:narrow_forbidden", 45.0), ("v:narrow_balmer", -25.0), ("s:narrow_balmer", 90.0),
                      ("v:broad_balmer", 300.0), ("s:broad_balmer", 1800.0)):
        theta[model.param_names.index(name)] = val
    J = model.jacobian(theta).toarray()
    Jfd = _fd_jacobian(model, theta)
    for j, name in enumerate(model.param_names):
        scale = np.abs(J[:, j]).max()
        assert scale > 0, name
        assert np.abs(J[:, j] - Jfd[:, j]).max() <= 1e-6 * scale, (name, np.abs(J[:, j] - Jfd[:, j]).max() / scale)
    # sparse: each line touches only its window ([O II] none of the red camera's rows)
    Js = model.jacobian(theta)
    assert Js.nnz < 0.75 * J.size            # (the b window also holds H8–H12, the r window He I 6678)
    for name, cam in (("A:oii_3726", 0), ("A:halpha", 1)):
        col = Js[:, model.param_names.index(name)].toarray()[:, 0]
        assert np.all(col[model.rows_cam != cam] == 0) and np.any(col[model.rows_cam == cam] != 0)


def test_model_matches_brute_force_and_conserves_flux():
    z = 0.1
    lines = {"hbeta": (100.0, 30.0, 20.0), "oiii_4959": (50.0, -10.0, 150.0), "oiii_5007": (149.0, -10.0, 150.0)}
    wave, res = desi_like_camera("b", 5250.0, 5600.0)
    spec = Spectrum([Camera("b", wave, np.zeros(wave.size), np.ones(wave.size), res)], z)
    model = LineModel(spec, [np.zeros(wave.size)], default_linelist().without_broad())
    theta = model.x0.copy()
    for name, val in (("A:hbeta", 100.0), ("A:oiii_4959", 50.0), ("v:narrow_balmer", 30.0), ("s:narrow_balmer", 20.0),
                      ("v:narrow_forbidden", -10.0), ("s:narrow_forbidden", 150.0)):
        theta[model.param_names.index(name)] = val
    ours = model.camera_models(theta)[0]
    ref = brute_lines(wave, z, lines, res)
    assert np.abs(ours - ref).max() < 2e-3 * ref.max()
    dl = np.diff(np.concatenate(([1.5 * wave[0] - 0.5 * wave[1]], 0.5 * (wave[1:] + wave[:-1]),
                                 [1.5 * wave[-1] - 0.5 * wave[-2]])))
    assert np.sum(ours * dl) == pytest.approx(100.0 + 50.0 + 149.0, rel=1e-3)   # the matrix rows at the ends leak <0.1%


def test_noiseless_fit_recovers_fluxes_ratios_and_kinematics():
    z = 0.05
    spec, conts, _ = make_spectrum(z, NARROW, [("b", 3600 * 1.05, 5300 * 1.05), ("r", 5300 * 1.05, 7200 * 1.05)])
    r = fit_emlines(spec, conts)
    assert r.status == 0 and not r.broad
    for name, (flux, v, sig) in NARROW.items():
        q = r.lines[name]
        assert q["FLUX"] == pytest.approx(flux, rel=1e-3), name
        assert q["VSHIFT"] == pytest.approx(v, abs=0.2) and q["SIGMA"] == pytest.approx(sig, rel=1e-3)
        assert q["NPIX"] > 5 and q["FLUX_IVAR"] > 0
    assert r.lines["oiii_5007"]["FLUX"] / r.lines["oiii_4959"]["FLUX"] == pytest.approx(2.98, rel=1e-12)
    assert r.lines["nii_6584"]["FLUX"] / r.lines["nii_6548"]["FLUX"] == pytest.approx(2.94, rel=1e-12)
    assert r.lines["oii_3729"]["FLUX"] / r.lines["oii_3726"]["FLUX"] == pytest.approx(1.25, rel=2e-3)
    # lines absent from the data come out at (or extremely near) zero, with an error
    assert abs(r.lines["hei_5876"]["FLUX"]) < 0.05 and r.lines["hei_5876"]["FLUX_IVAR"] > 0
    # EW against the continuum at the line: F / (C (1+z))
    c = r.lines["hbeta"]["CONT"]
    assert r.lines["hbeta"]["EW"] == pytest.approx(r.lines["hbeta"]["FLUX"] / (c * (1 + z)), rel=1e-6)
    assert c == pytest.approx(np.mean(conts[0][np.abs(spec.cameras[0].wave - 4862.683 * (1 + z)) < 6]), rel=0.02)
    row = r.to_row()
    assert set(row) == {col[0] for col in EMLINE_COLUMNS}
    assert row["OIII_5007_FLUX"] == pytest.approx(298.0, rel=1e-3) and row["LYALPHA_NPIX"] == 0


def test_ratio_bounds_hold_when_the_data_violate_them():
    z = 0.0
    lines = {"sii_6716": (10.0, 0.0, 50.0), "sii_6731": (40.0, 0.0, 50.0)}      # 0.25 < 0.44
    spec, conts, _ = make_spectrum(z, lines, [("r", 6650.0, 6800.0)])
    r = fit_emlines(spec, conts, broad=False)
    ratio = r.lines["sii_6716"]["FLUX"] / r.lines["sii_6731"]["FLUX"]
    assert ratio == pytest.approx(0.44, abs=1e-6)
