"""The cubefit command: help, exit codes, info, demo, templates fetch."""
import subprocess
import sys

import h5py
import numpy as np
import pytest

from cubefit import cli
from cubefit.store import SCHEMA

from test_store import _populated


def run(*args):
    return subprocess.run([sys.executable, "-m", "cubefit", *args], capture_output=True, text=True,
                          timeout=300)


def test_help_lists_commands_and_exit_codes():
    out = run("--help")
    assert out.returncode == 0
    for cmd in ("info", "templates", "demo"):
        assert cmd in out.stdout
    assert run("no-such-command").returncode == 2
    assert run().returncode == 2
    sub = run("templates", "fetch", "--help")
    assert sub.returncode == 0 and "--cache-dir" in sub.stdout


def test_info_shows_every_dataset_with_shape_units_meaning(tmp_path, small_mock, capsys):
    path, _ = _populated(tmp_path, small_mock)
    assert cli.main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    with h5py.File(path, "r") as f:
        names = []
        f.visititems(lambda n, o: names.append("/" + n) if isinstance(o, h5py.Dataset) else None)
        lines = {ln.split()[0]: ln for ln in out.splitlines() if ln.startswith("/")}
        for name in names:
            assert name in lines, name
            ds = f[name]
            assert str(tuple(ds.shape)) in lines[name]
            assert ds.attrs["units"] in lines[name]
            assert ds.attrs["description"] in lines[name]
    assert "nSpat=9" in out and "rebin=yes" in out and "fit=no" in out
    assert SCHEMA["/LOSVD"][1] in out


def test_errors_are_one_line_with_exit_1(tmp_path, capsys):
    assert cli.main(["info", str(tmp_path / "missing.h5")]) == 1
    err = capsys.readouterr().err
    assert "missing.h5" in err and "Traceback" not in err
    with pytest.raises(FileNotFoundError):
        cli.main(["--debug", "info", str(tmp_path / "missing.h5")])


def test_demo_synthetic_fits_and_reports(tmp_path, capsys):
    out_dir = tmp_path / "demo"
    assert cli.main(["demo", "--synthetic", "--nx", "3", "--components", "3", "--snr", "0",
                     "--hypercube", "no", "--out", str(out_dir)]) == 0
    out = capsys.readouterr().out
    assert "results in" in out and "/DataCube" in out
    with h5py.File(out_dir / "galaxy.h5", "r") as f:
        assert f["/DataCube"].shape[0] == 9 and f["/LOSVD"].shape[2] == 3
        assert "/R_T" in f and "/X_global" in f and "/HyperCube/models" not in f
    assert (out_dir / "report.md").exists() and list(out_dir.glob("*.png"))
    assert run("demo", "--components", "7").returncode == 2


def test_templates_fetch_calls_fetcher(monkeypatch, tmp_path, capsys):
    import cubefit.templates as templates
    seen = {}

    def fake(cache_dir=None, force=False):
        seen.update(cache_dir=cache_dir, force=force)
        return tmp_path
    monkeypatch.setattr(templates, "fetch_emiles", fake)
    assert cli.main(["templates", "fetch", "--cache-dir", str(tmp_path), "--force"]) == 0
    assert seen == {"cache_dir": str(tmp_path), "force": True}
    assert str(tmp_path) in capsys.readouterr().out


def _npz_inputs(path, m):
    np.savez(path, TemPix=m.tem_pix, ObsPix=m.obs_pix, VelPix=m.vel_pix, Templates=m.templates,
             LOSVD=m.losvd, DataCube=m.datacube.T, Mask=m.mask, Noise=m.noise,
             ages=m.pop_axes["age"], metals=m.pop_axes["metal"])


def test_full_pipeline_through_the_cli(tmp_path, small_mock, capsys):
    """init → build → weights → solve → recon → plot → info, each a command."""
    m = small_mock
    src, h5 = tmp_path / "in.npz", tmp_path / "g.h5"
    _npz_inputs(src, m)
    assert cli.main(["init", str(src), str(h5)]) == 0
    assert cli.main(["build", str(h5), "--norm", "data", "--quiet"]) == 0
    assert cli.main(["build", str(h5), "--convert-to", "model", "--quiet"]) == 0
    assert cli.main(["weights", str(h5)]) == 0
    assert cli.main(["solve", str(h5), "--orbit-weights", "0.6,0.4", "--no-track"]) == 0
    out = capsys.readouterr().out
    assert "/X_global written" in out and "optimality" in out
    with h5py.File(h5, "r") as f:
        cost = f["/Fit"].attrs["cost"]
    # the same fit on the Array API path, and a normalisation that contradicts the cube
    assert cli.main(["solve", str(h5), "--orbit-weights", "0.6,0.4", "--no-track",
                     "--backend", "array_api_strict", "--norm-mode", "model"]) == 0
    with h5py.File(h5, "r") as f:
        assert f["/Fit"].attrs["setting.backend"] == "array_api_strict"
        assert f["/Fit"].attrs["cost"] == pytest.approx(cost, rel=1e-10)
    assert cli.main(["solve", str(h5), "--norm-mode", "data", "--no-track"]) != 0
    assert f"cubefit build {h5} --convert-to data" in capsys.readouterr().err
    assert cli.main(["recon", str(h5)]) == 0
    assert cli.main(["plot", str(h5), "--out", str(tmp_path / "figs"), "--n", "1"]) == 0
    assert len(list((tmp_path / "figs").glob("*.png"))) == 2
    assert cli.main(["info", str(h5)]) == 0
    out = capsys.readouterr().out
    assert "hypercube=yes" in out and "fit=yes" in out and "/ModelCube" in out
    with h5py.File(h5, "r") as f:
        np.testing.assert_array_equal(f["/DataCube"][...], m.datacube)  # (L, S) input transposed
        assert f["/HyperCube"].attrs["norm.mode"] == "model"
        x = f["/X_global"][...]
        assert x.shape == (m.templates.shape[0] * m.losvd.shape[2],) and np.all(x >= 0)
        np.testing.assert_array_equal(f["/PopAxes/metal"][...], m.pop_axes["metal"])


@pytest.mark.parametrize("fmt", ["fits", "h5"])
def test_init_reads_fits_and_hdf5_inputs(tmp_path, small_mock, fmt):
    m = small_mock
    arrays = dict(TEMPIX=m.tem_pix, OBSPIX=m.obs_pix, VELPIX=m.vel_pix, TEMPLATES=m.templates,
                  LOSVD=m.losvd, DATACUBE=m.datacube)
    src = tmp_path / f"in.{fmt}"
    if fmt == "fits":
        from astropy.io import fits
        fits.HDUList([fits.PrimaryHDU()] + [fits.ImageHDU(v, name=k) for k, v in arrays.items()]
                     ).writeto(src)
    else:
        with h5py.File(src, "w") as f:
            for k, v in arrays.items():
                f[k.capitalize()] = v
    assert cli.main(["init", str(src), str(tmp_path / "g.h5")]) == 0
    with h5py.File(tmp_path / "g.h5", "r") as f:
        np.testing.assert_allclose(f["/LOSVD"][...], m.losvd)


def test_init_missing_arrays_is_one_clear_line(tmp_path, capsys):
    np.savez(tmp_path / "bad.npz", templates=np.ones((2, 10)))
    assert cli.main(["init", str(tmp_path / "bad.npz"), str(tmp_path / "g.h5")]) == 1
    err = capsys.readouterr().err
    assert "missing input arrays" in err and "tem_pix" in err and "Traceback" not in err
    assert not (tmp_path / "g.h5").exists()


def test_every_command_has_help_with_defaults():
    for cmd in ("init", "build", "weights", "solve", "recon", "plot", "info", "demo"):
        out = run(cmd, "--help")
        assert out.returncode == 0, cmd
    solve = run("solve", "--help").stdout
    for opt in ("--method", "--tol", "--regul", "--orbit-weights", "--processes", "--resume"):
        assert opt in solve
    assert "default: 1e-06" in solve and "km/s" in run("build", "--help").stdout
