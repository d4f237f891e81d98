"""The command line in a user's first hour (issue "first hour"): messages in CLI terms,
one line per result, long solves that show progress and can be capped, Ctrl-C,
the state of an interrupted build, the same λ-weight statistics everywhere, and a
description for every command."""
import logging
import os
import signal
import subprocess
import sys

import h5py
import numpy as np
import pytest

import cubefit.runner as runner_mod
from cubefit import cli
from cubefit.hypercube import build_hypercube, invalidate_tiles
from test_cli import _npz_inputs


@pytest.fixture
def cli_file(tmp_path, small_mock):
    src, h5 = tmp_path / "in.npz", tmp_path / "g.h5"
    _npz_inputs(src, small_mock)
    assert cli.main(["init", str(src), str(h5)]) == 0
    return h5


PYTHON_HINTS = ("overwrite=True", "convert_hypercube_norm(", "populate_from_arrays",
                "init_base(", "norm_mode=", "build_hypercube(", "to_mode=")


def test_library_hints_become_cli_options(cli_file, capsys):
    h5 = str(cli_file)
    assert cli.main(["build", h5, "--norm", "data", "--quiet"]) == 0
    capsys.readouterr()
    assert cli.main(["build", h5, "--norm", "model", "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "--overwrite" in err and f"cubefit build {h5} --convert-to model" in err, err
    assert not any(h in err for h in PYTHON_HINTS), err
    assert cli.main(["solve", h5, "--norm-mode", "model", "--no-track"]) == 1
    err = capsys.readouterr().err
    assert f"cubefit build {h5} --convert-to model" in err and "--norm-mode" in err, err
    assert not any(h in err for h in PYTHON_HINTS), err


@pytest.mark.parametrize("text, expected", [
    ("Pass overwrite=True to rebuild it", "Pass --overwrite to rebuild it"),
    ("finish it with convert_hypercube_norm(h5, 'model')", "finish it with cubefit build F --convert-to model"),
    ("run convert_hypercube_norm(h5, to_mode='data') first", "run cubefit build F --convert-to data first"),
    ("run build_hypercube() again to finish it", "run `cubefit build F` again to finish it"),
    ("call init_base(H5Dims(...)) first", "run `cubefit init INPUT F` first"),
    ("run H5Manager.populate_from_arrays first", "run `cubefit init INPUT F` first"),
    ("use another file or init_base(..., overwrite=True) to start afresh",
     "use another file or cubefit init --overwrite to start afresh"),
])
def test_cli_message_table(text, expected):
    assert cli.cli_message(text, "F") == expected


def test_solve_prints_one_line_per_result_with_one_prefix(cli_file, capfd):
    h5 = str(cli_file)
    assert cli.main(["solve", h5, "--no-track"]) == 0
    out, err = capfd.readouterr()
    text = out + err
    assert text.count("/X_global written") == 1, text
    assert "[CubeFit]" not in text and text.count("λ-weights: min=") == 1, text


def test_weights_command_and_solver_report_the_same_statistics(cli_file, capfd):
    h5 = str(cli_file)
    assert cli.main(["weights", h5]) == 0
    line = capfd.readouterr().out
    stats = line.split("λ-weights ", 1)[1].strip()
    assert stats.startswith("min=") and "good pixels" in stats
    assert cli.main(["solve", h5, "--no-track"]) == 0
    assert f"λ-weights: {stats}" in capfd.readouterr().out


def test_solve_limits_stop_without_certificate_and_say_so(cli_file, capsys):
    h5 = str(cli_file)
    assert cli.main(["solve", h5, "--method", "fista", "--max-passes", "20", "--no-track"]) == 1
    assert "limit" in capsys.readouterr().out
    with h5py.File(h5, "r") as f:
        assert f["/Fit"].attrs["passes"] < 20 + 60 and not f["/Fit"].attrs["success"]
    # A limit that has always passed: stops at the first check, whatever the machine.
    assert cli.main(["solve", h5, "--method", "fista", "--time-limit", "1e-9", "--no-track"]) == 1
    assert "time limit" in capsys.readouterr().out
    with h5py.File(h5, "r") as f:
        assert f["/Fit"].attrs["setting.time_limit"] == pytest.approx(1e-9)
    with pytest.raises(SystemExit) as exc:                           # usage error
        cli.main(["solve", h5, "--max-passes", "0"])
    assert exc.value.code == 2


def test_long_solve_shows_progress_lines(cli_file, caplog, monkeypatch):
    monkeypatch.setattr(runner_mod, "PROGRESS_EVERY_S", 0.0)     # every iteration
    with caplog.at_level(logging.INFO, logger="cubefit.runner"):
        assert cli.main(["solve", str(cli_file), "--method", "fista", "--max-passes", "40",
                         "--no-track"]) == 1
    lines = [r.getMessage() for r in caplog.records if "solve (fista): iteration" in r.getMessage()]
    assert len(lines) >= 2 and all("cost" in t and "optimality" in t for t in lines)


CTRL_C_SCRIPT = """
import sys, time
import cubefit.runner as r
from cubefit import cli

def stuck(method):                 # the solve's progress callback: signal, then never finish
    def progress(step, x, cost):
        print("SOLVING", flush=True)
        while True:
            time.sleep(0.05)
    return progress

r._progress_lines = stuck
sys.exit(cli.main(["solve", sys.argv[1], "--method", "fista", "--no-track"]))
"""


def test_ctrl_c_exits_130_and_leaves_the_file(cli_file, tmp_path):
    """A real SIGINT in the middle of a solve (held there by its progress callback, so the
    timing cannot matter): exit status 130, nothing half-written."""
    script = tmp_path / "ctrl_c.py"
    script.write_text(CTRL_C_SCRIPT)
    # One pipe for both streams, read as it comes: a child blocked on a full stderr pipe
    # while the test waits on stdout would hang both.
    proc = subprocess.Popen([sys.executable, str(script), str(cli_file)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True,
                            env=dict(os.environ, PYTHONUNBUFFERED="1"))
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if "SOLVING" in line:
            break
    proc.send_signal(signal.SIGINT)
    rest, _ = proc.communicate(timeout=120)
    out = "".join(seen) + rest
    assert proc.returncode == 130, out
    assert "interrupted" in out
    with h5py.File(cli_file, "r") as f:
        assert "/X_global" not in f and "/Fit" not in f


def test_ctrl_c_in_any_command_is_130(monkeypatch, cli_file):
    def interrupted(args):
        raise KeyboardInterrupt
    monkeypatch.setattr(cli, "cmd_info", interrupted)      # the parser is built inside main()
    assert cli.main(["info", str(cli_file)]) == 130


def test_info_shows_an_interrupted_build_as_tiles_done(cli_file, capsys):
    build_hypercube(cli_file, S_chunk=3, C_chunk=1, P_chunk=6, progress=False)
    invalidate_tiles(cli_file, spaxels=[0])
    capsys.readouterr()
    assert cli.main(["info", str(cli_file)]) == 0
    out = capsys.readouterr().out
    assert "hypercube=4/6 tiles" in out, out


def test_every_command_has_help_and_a_description():
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a.choices, dict))
    listed = {a.dest: a.help for a in sub._choices_actions}
    assert set(listed) == set(sub.choices)
    for name, p in sub.choices.items():
        assert listed[name], name
        assert p.description, name
    assert {"report", "info", "solve", "recon", "templates"} <= set(sub.choices)


def test_report_command_writes_the_report_of_any_fitted_file(cli_file, tmp_path, capsys):
    h5 = str(cli_file)
    assert cli.main(["report", h5]) == 1                          # not fitted yet
    assert "cubefit solve" in capsys.readouterr().err
    assert cli.main(["solve", h5, "--no-track"]) == 0
    assert cli.main(["report", h5, "--out", str(tmp_path / "rep")]) == 0
    assert (tmp_path / "rep" / "report.md").exists() and (tmp_path / "rep" / "summary.json").exists()
    assert len(list((tmp_path / "rep").glob("*.png"))) >= 3


def test_analysis_repr_is_a_summary(cli_file):
    from cubefit.science import analyse
    assert cli.main(["solve", str(cli_file), "--no-track"]) == 0
    text = repr(analyse(cli_file))
    assert text.startswith("Analysis(") and "light fractions" in text
    assert len(text) < 1000 and "array(" not in text
