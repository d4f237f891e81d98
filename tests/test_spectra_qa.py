"""The real DESI galaxy (TARGETID 39633345008634465, z = 0.3687): line S/N and the QA figure.

Two continua: a smooth estimate (running median of the data with the line regions
masked — always runs, needs only the DESI files) and, when the E-MILES templates can be
had (``network``), the package's continuum fit.  Hβ, [O III] 5007 and [O II] are at
6656, 6855 and 5101 Å; Hα (8985 Å) falls in the z camera.
"""
from __future__ import annotations

import numpy as np
import pytest
from matplotlib.image import imread
from scipy.ndimage import median_filter
from spectra_fakes import COADD, REDROCK, TARGETID, needs_desi
from spectra_line_mocks import make_spectrum

from cubefit.spectra.emlines import fit_emlines
from cubefit.spectra.linelist import default_linelist
from cubefit.spectra.qa import plot_target

MAIN = ("hbeta", "oiii_5007", "oii_3726", "oii_3729", "halpha")


def _desi_spectrum():
    from cubefit.spectra.desi import select_desi
    sel = select_desi(REDROCK, COADD, targetids=[TARGETID])
    (spec,) = list(sel.spectra())
    return spec


def _smooth_continuum(spec):
    out = []
    lines = [line.restwave * (1 + spec.z) for line in default_linelist()]
    for cam in spec.cameras:
        bad = cam.ivar <= 0
        for lam in lines:
            bad |= np.abs(cam.wave / lam - 1) < 1500 / 299792.458
        x = np.arange(cam.npix)
        filled = np.interp(x, x[~bad], cam.flux[~bad]) if np.any(~bad) else np.zeros(cam.npix)
        out.append(median_filter(filled, size=151, mode="nearest"))
    return out


def _report(tag, r):
    snr = {n: r.lines[n]["FLUX"] * np.sqrt(r.lines[n]["FLUX_IVAR"]) for n in MAIN if n in r.lines}
    print(f"\n{tag}: " + ", ".join(f"{n} flux {r.lines[n]['FLUX']:.1f} S/N {snr[n]:.1f}" for n in snr)
          + f"; rchi2 {r.rchi2:.2f}, broad {r.broad}")
    return snr


def _check(r, snr):
    assert r.status == 0
    assert set(MAIN) <= set(r.fitted)
    for n in ("hbeta", "oiii_5007", "halpha"):
        assert snr[n] > 3, (n, snr[n])
    assert snr["oii_3726"] + snr["oii_3729"] > 3
    assert r.lines["oiii_5007"]["NPIX"] > 3 and 0.5 < r.rchi2 < 3.0
    # the fitted lines sit at the redshift: |v| < 100 km/s for the narrow groups
    assert abs(r.groups["narrow_forbidden"]["VSHIFT"]) < 100 and abs(r.groups["narrow_balmer"]["VSHIFT"]) < 100


@needs_desi
def test_real_desi_lines_on_a_smooth_continuum_and_the_qa_png(tmp_path):
    spec = _desi_spectrum()
    assert abs(spec.z - 0.3687) < 1e-3
    cont = _smooth_continuum(spec)
    r = fit_emlines(spec, cont)
    _check(r, _report("smooth continuum", r))
    png = plot_target(spec, cont, r, tmp_path)
    assert png == tmp_path / f"qa-{TARGETID}.png"
    img = imread(png)
    assert img.shape[0] > 500 and img.shape[1] > 1000
    assert img[..., :3].std() > 0.05                                      # not blank
    assert not list(tmp_path.glob(".*.tmp"))


@needs_desi
@pytest.mark.network
def test_real_desi_lines_on_the_fitted_continuum(tmp_path):
    from cubefit.spectra.continuum import fit_continuum
    from cubefit.spectra.templates_prep import prepare_templates_cached
    spec = _desi_spectrum()
    c = fit_continuum(spec, prepare_templates_cached())
    assert c.status == 0, c.message
    cont = [np.nan_to_num(m) for m in c.models]
    r = fit_emlines(spec, cont)
    _check(r, _report("fitted continuum", r))
    png = plot_target(spec, cont, r, tmp_path / "qa.png", row=c.to_row())
    assert png.stat().st_size > 10_000


def test_qa_of_a_synthetic_target_without_halpha_and_with_failed_lines(tmp_path):
    spec, conts, _ = make_spectrum(0.0, {"hbeta": (100.0, 0.0, 60.0)}, [("b", 4800.0, 4920.0)],
                                   sigma_pix=0.1, rng=np.random.default_rng(0))
    r = fit_emlines(spec, conts)
    p = plot_target(spec, conts, r, tmp_path / "sub" / "one.png", row={"VDISP": 150.0, "VDISP_IVAR": 0.01})
    assert p.exists() and imread(p).shape[2] in (3, 4)
    wave = np.arange(5100.0, 5300.0, 0.8)
    from cubefit.spectra.data import Camera, Spectrum
    empty = Spectrum([Camera("b", wave, np.ones(wave.size), np.ones(wave.size))], 0.0)
    none = fit_emlines(empty, [np.ones(wave.size)])
    assert plot_target(empty, [np.ones(wave.size)], none, tmp_path / "none.png").exists()
