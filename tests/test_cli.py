"""The cubefit command: help, exit codes, info, demo, templates fetch."""
import subprocess
import sys

import h5py
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


def test_demo_synthetic_builds_the_example(tmp_path, capsys):
    assert cli.main(["demo", "--synthetic", "--nx", "3", "--out", str(tmp_path / "demo")]) == 0
    out = capsys.readouterr().out
    assert "results in" in out and "/DataCube" in out
    with h5py.File(tmp_path / "demo" / "galaxy.h5", "r") as f:
        assert f["/DataCube"].shape[0] == 9
        assert "/R_T" in f and "/Truth/x_true" in f


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
