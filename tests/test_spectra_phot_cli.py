"""The fastphot command on the real DESI files, its failures, and the SED panel."""
import subprocess
import sys

import numpy as np
import pytest

from cubefit.spectra.fastphot_cli import fastphot_target, main
from spectra_fakes import COADD, REDROCK, TARGETID, needs_desi, write_desi_pair


@needs_desi
@pytest.mark.network
def test_fastphot_cli_writes_a_catalogue_with_units(tmp_path):
    from cubefit.spectra.catalog import read_catalog
    out = tmp_path / "fastphot.fits"
    assert main([str(REDROCK), "-o", str(out), "--nmonte", "10", "--quiet"]) == 0
    cat = read_catalog(out)
    t, meta = cat["SPECPHOT"], cat["METADATA"]
    assert cat["header"]["COSMO"] == "Planck18" and cat["header"]["NMONTE"] == 10
    assert list(t["TARGETID"]) == list(meta["TARGETID"]) == [TARGETID]
    row = t[0]
    assert row["PHOT_STATUS"] == 0 and row["PHOTSYS"] == "N" and row["NBAND_PHOT"] == 5
    assert 9.5 < row["LOGMSTAR"] < 12.5 and row["LOGMSTAR_IVAR"] > 0
    assert t["ABSMAG01_SDSS_R"].unit == "mag" and str(t["ABSMAG01_IVAR_SDSS_R"].unit) == "1 / mag2"
    assert np.isnan(row["FLUX_SYNTH_PHOTMODEL_W3"])
    # An existing output is kept unless --overwrite.
    assert main([str(REDROCK), "-o", str(out), "--nmonte", "10", "--quiet"]) == 1


@needs_desi
@pytest.mark.network
def test_fastphot_worker_processes_give_identical_rows(tmp_path):
    from cubefit.spectra.catalog import read_catalog
    rr, _, _ = write_desi_pair(tmp_path, 3, crop=50)
    one, two = tmp_path / "one.fits", tmp_path / "two.fits"
    assert main([str(rr), "-o", str(one), "--nmonte", "5", "--quiet"]) == 0
    assert main([str(rr), "-o", str(two), "--nmonte", "5", "--quiet", "--mp", "2"]) == 0
    a, b = read_catalog(one)["SPECPHOT"], read_catalog(two)["SPECPHOT"]
    assert len(a) == 3
    for c in a.colnames:
        np.testing.assert_array_equal(a[c], b[c])


@needs_desi
def test_fastphot_cli_bad_inputs(tmp_path, capsys):
    assert main([str(REDROCK), "-o", str(tmp_path / "a.fits"), "--cosmology", "Planck99"]) == 1
    assert "Planck99" in capsys.readouterr().err
    assert main([str(REDROCK), "-o", str(tmp_path / "b.fits"), "--photometry", "x.fits"]) == 1
    assert "--photometry-map" in capsys.readouterr().err
    assert main([str(REDROCK), "-o", str(tmp_path / "no" / "c.fits")]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert not list(tmp_path.glob("*.fits"))


@needs_desi
@pytest.mark.network
def test_fibermap_without_photometry_gives_a_status_row(tmp_path):
    from cubefit.spectra.catalog import read_catalog
    rr, co, tids = write_desi_pair(tmp_path, 2, crop=50)
    from astropy.io import fits
    with fits.open(co, mode="update") as h:
        h["FIBERMAP"].data["PHOTSYS"][1] = ""
    out = tmp_path / "out.fits"
    assert main([str(rr), "-o", str(out), "--nmonte", "0", "--quiet"]) == 0
    t = read_catalog(out)["SPECPHOT"]
    assert list(t["PHOT_STATUS"]) == [0, 3] and "PHOTSYS" in t["PHOT_MESSAGE"][1]
    assert np.isnan(t["LOGMSTAR"][1])


def test_fastphot_target_without_photometry_or_redshift():
    row = fastphot_target("no Legacy Surveys photometry", 0.3)
    assert row["PHOT_STATUS"] == 3 and row["PHOT_MESSAGE"] == "no Legacy Surveys photometry"


def test_console_entry_point_help():
    res = subprocess.run([sys.executable, "-m", "cubefit.spectra.fastphot_cli", "--help"], capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0 and "--photometry-map" in res.stdout and "--cosmology" in res.stdout


@needs_desi
@pytest.mark.network
def test_sed_panel_draws_photometry_and_model():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from cubefit.spectra.derived import luminosity_distance_cm
    from cubefit.spectra.desi import select_desi
    from cubefit.spectra.filters import nanomaggies_to_mag
    from cubefit.spectra.photometry import read_fibermap_photometry
    from cubefit.spectra.sed import fit_photometry, sed_templates
    from cubefit.spectra.sed_plot import plot_sed
    spec = next(iter(select_desi(REDROCK, targetids=[TARGETID]).spectra()))
    ph = read_fibermap_photometry(COADD, [TARGETID])[TARGETID]
    bins = sed_templates()
    fit = fit_photometry(ph, spec.z, bins, luminosity_distance_cm(spec.z))
    fig, ax = plt.subplots()
    plot_sed(ax, ph, fit, bins, spectrum=spec, apercorr=1.3)
    ys = [line.get_ydata() for line in ax.get_lines()]
    assert any(np.allclose(np.sort(y), np.sort(nanomaggies_to_mag(fit.model_flux))) for y in ys if len(y) == 5)
    assert ax.get_ylim()[0] > ax.get_ylim()[1]                  # magnitudes: bright up
    plt.close(fig)
