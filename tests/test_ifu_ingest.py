"""Acceptance of issue #13: a MUSE-format cube of two counter-rotating disks of different
ages, and a MaNGA-format cube of one disk, through `cubefit ingest`, `solve`, `report`.

The cubes are the package's mock galaxy (tests/ifu_mocks.py: exact forward model, E-MILES
SSPs broadened to the instrument's line spread, observed pixels of the real layouts,
Poisson-like noise) binned to S/N 60 per pixel.  Truth per bin: the moments (mean,
standard deviation) of the bin's summed LOSVD histograms; per component: its light over
the fitted range and its light-weighted ⟨log age⟩.

Network: six E-MILES SSPs fetched once into the user cache.
"""
import json
import subprocess
import sys
import textwrap

import h5py
import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from cubefit.cli import main
from cubefit.ifu.ingest import ingest
from ifu_mocks import COUNTER_DISKS, ONE_DISK, bin_truth, emiles_folder, library, make_cube, population_truth

pytestmark = pytest.mark.network


@pytest.fixture(autouse=True)
def one_thread():
    with threadpool_limits(limits=1):
        yield


@pytest.fixture(scope="module")
def ssp(tmp_path_factory):
    folder = emiles_folder(tmp_path_factory.mktemp("ssp"))
    return folder, library(folder)


def kinematics_of(h5):
    with h5py.File(h5, "r") as f:
        k = {n: f[f"/Kinematics/{n}"][...] for n in ("v", "v_err", "sigma", "sigma_err")}
        k["bin_map"], obs = f["/BinMap"][...], f["/ObsPix"][...]
    return k, (np.exp(obs[0]), np.exp(obs[-1]))


def check_kinematics(k, truth):
    """Errors scaled by the formal 1σ errors: their median |z| near the normal 0.674 and
    few beyond 4 (one per bin and quantity)."""
    for q in ("v", "sigma"):
        z = (k[q] - truth[q]) / k[f"{q}_err"]
        for c in range(z.shape[1]):
            med = np.median(np.abs(z[:, c]))
            assert 0.35 < med < 1.35, (q, c, med)
            assert np.mean(np.abs(z[:, c]) > 4) < 0.08, (q, c, np.sort(np.abs(z[:, c]))[-5:])


def run(argv):
    assert main([str(a) for a in argv]) == 0


def test_muse_two_counter_rotating_disks(ssp, tmp_path):
    folder, lib = ssp
    mock = make_cube(tmp_path / "muse.fits", lib, instrument="MUSE", components=COUNTER_DISKS,
                     nx=10, ny=10, z=0.01, snr_peak=70.0)
    h5 = tmp_path / "galaxy.h5"
    run(["ingest", mock.path, "--z", mock.z, "--target-sn", 60, "--components", 2, "-o", h5,
         "--templates", folder, "--quiet"])
    run(["solve", h5, "--no-track"])
    run(["report", h5, "--out", tmp_path / "report"])
    k, fit_range = kinematics_of(h5)
    truth = bin_truth(mock, k["bin_map"])
    assert k["v"].shape == truth["v"].shape == (k["bin_map"].max() + 1, 2)
    check_kinematics(k, truth)
    summary = json.loads((tmp_path / "report" / "summary.json").read_text())
    pops = population_truth(mock, fit_range)
    np.testing.assert_allclose(summary["fit"]["light_fraction"], pops["fraction"], atol=0.03)
    np.testing.assert_allclose(summary["fit"]["mean_log_age_light"], pops["log_age"], atol=0.1)
    assert "kinematics_maps.png" in summary["figures"]
    assert (tmp_path / "report" / "kinematics_maps.png").stat().st_size > 10_000


def test_manga_one_disk(ssp, tmp_path):
    folder, lib = ssp
    mock = make_cube(tmp_path / "manga.fits", lib, instrument="MaNGA", components=ONE_DISK,
                     nx=10, ny=10, z=0.03, snr_peak=70.0)
    h5 = tmp_path / "galaxy.h5"
    run(["ingest", mock.path, "--z", mock.z, "--target-sn", 60, "-o", h5, "--templates", folder,
         "--quiet"])
    run(["solve", h5, "--no-track"])
    run(["report", h5, "--out", tmp_path / "report"])
    k, fit_range = kinematics_of(h5)
    check_kinematics(k, bin_truth(mock, k["bin_map"]))
    summary = json.loads((tmp_path / "report" / "summary.json").read_text())
    pops = population_truth(mock, fit_range)
    assert summary["fit"]["light_fraction"] == [1.0]
    np.testing.assert_allclose(summary["fit"]["mean_log_age_light"], pops["log_age"], atol=0.1)


def test_workers_do_not_rerun_the_script_and_agree(ssp, tmp_path):
    """--mp 2 from a plain script (no __main__ guard): its output appears once, and the
    per-bin kinematics equal those of one process."""
    folder, lib = ssp
    mock = make_cube(tmp_path / "cube.fits", lib, instrument="MUSE", components=ONE_DISK,
                     nx=6, ny=6, z=0.01, snr_peak=40.0)
    script = tmp_path / "plain.py"
    script.write_text(textwrap.dedent(f"""\
        from cubefit.ifu.ingest import ingest
        print("SCRIPT-RAN")
        ingest({str(mock.path)!r}, {str(tmp_path / 'mp2.h5')!r}, z=0.01, target_sn=30,
               templates={str(folder)!r}, mp=2, progress=False)
        """))
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, cwd=tmp_path,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("SCRIPT-RAN") == 1
    ingest(mock.path, tmp_path / "mp1.h5", z=0.01, target_sn=30, templates=str(folder), progress=False)
    a, _ = kinematics_of(tmp_path / "mp1.h5")
    b, _ = kinematics_of(tmp_path / "mp2.h5")
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])


def test_existing_output_and_bad_templates(ssp, tmp_path, capsys):
    folder, lib = ssp
    mock = make_cube(tmp_path / "cube.fits", lib, instrument="MUSE", components=ONE_DISK,
                     nx=4, ny=4, z=0.01, snr_peak=40.0)
    out = tmp_path / "keep.h5"
    out.write_bytes(b"precious")
    assert main(["ingest", str(mock.path), "--z", "0.01", "--target-sn", "30", "-o", str(out),
                 "--templates", str(folder), "--quiet"]) == 1
    assert "exists" in capsys.readouterr().err and out.read_bytes() == b"precious"
    assert main(["ingest", str(mock.path), "--z", "0.01", "--target-sn", "30", "-o",
                 str(tmp_path / "new.h5"), "--templates", str(tmp_path / "nothing.txt"),
                 "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "--templates" in err and "nothing.txt" in err
    assert not (tmp_path / "new.h5").exists()
    assert not list(tmp_path.glob(".new.h5.new-*"))


def test_lam_range_and_mask_reach_the_file(ssp, tmp_path):
    folder, lib = ssp
    mock = make_cube(tmp_path / "cube.fits", lib, instrument="MUSE", components=ONE_DISK,
                     nx=4, ny=4, z=0.01, snr_peak=60.0)
    h5 = tmp_path / "g.h5"
    run(["ingest", mock.path, "--z", 0.01, "--target-sn", 30, "-o", h5, "--templates", folder,
         "--lam-range", 4900, 5500, "--mask", "5200-5220", "--quiet"])
    with h5py.File(h5, "r") as f:
        lam = np.exp(f["/ObsPix"][...])
        mask = f["/Mask"][...].astype(bool)
        assert f["/Kinematics"].attrs["components"] == 1
    assert lam[0] > 4899 and lam[-1] < 5501
    assert not mask[(lam > 5201) & (lam < 5219)].any() and mask[(lam > 5230) & (lam < 5300)].all()
