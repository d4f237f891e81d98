"""FitTracker: the non-blocking SWMR sidecar (history, EWMA, snapshots, drops, crashes).

Every tracker starts a writer with the spawn method (~1.5 s), so each test reuses its
trackers for several checks.
"""
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import warnings
from datetime import datetime, timezone

import h5py
import numpy as np
import pytest

import cubefit.tracking as tracking
from cubefit.config import Config
from cubefit.store import open_h5
from cubefit.tracking import (FitTracker, find_sidecars, latest_snapshot, read_history,
                              read_snapshots)


def _cfg(**kw):
    return Config.from_env(environ={}, **kw)  # independent of the caller's environment


def _attrs(sidecar):
    with open_h5(sidecar, "r", swmr=True) as f:
        return dict(f.attrs)


def _cost(it):
    """A non-monotone cost curve with its minimum at iteration 25."""
    return float((it - 25) ** 2 + 1 + 0.5 * (it % 3))


def _x(it, n=6):
    return np.sin(np.arange(n) * (it + 1.0)) + it


LIVE_READER = textwrap.dedent("""
    import json, sys, time
    from cubefit.store import open_h5
    from cubefit.tracking import read_history
    path, n = sys.argv[1], int(sys.argv[2])
    deadline = time.monotonic() + 20
    while True:
        try:
            h = read_history(path)
            if len(h["iteration"]) >= n:
                break
        except OSError:  # the writer has not created the file yet
            pass
        if time.monotonic() > deadline:
            sys.exit("timed out waiting for rows")
        time.sleep(0.05)
    with open_h5(path, "r", swmr=True) as f:
        status = f.attrs["status"]
    print(json.dumps({"cost": h["cost"].tolist(), "status": status}))
""")


def test_history_stride_ewma_snapshots_live_reader_and_two_sidecars(tmp_path):
    main = tmp_path / "gal.h5"
    cfg = _cfg(rmse_stride=5, tracker_flush_every=4, tracker_flush_sec=0.1)
    a = FitTracker(main, config=cfg, x_size=6, snapshot_every=2, keep_history=3, ewma_alpha=0.1,
                   meta={"solver": "test", "tol": 1e-6})
    b = FitTracker(main, config=cfg)  # same main file, same process, same moment, no snapshots
    assert a.path != b.path and a.path.exists() and b.path.exists()
    assert find_sidecars(main) == sorted([a.path, b.path], reverse=True)
    assert a.path.name.startswith(f"gal.h5.fit.{os.getpid()}.")

    rng = np.random.default_rng(7)
    its = np.arange(40)
    rmse, opt = 1.0 / (its + 1.0), 10.0 ** -its.astype(float)
    for it in its:
        a.log_step(it, _cost(it), rmse=rmse[it], optimality=opt[it], passes=3 * it)
        a.snapshot(_x(it), _cost(it), it, kind="best")
        a.snapshot(_x(it), _cost(it), it, kind="auto")
    batch = rng.uniform(0.5, 1.5, 103)
    sent = [a.log_batch_rmse(r) for r in batch]
    a.progress(0.25, "quarter")
    a.progress(1.0, "fertig ✓")
    b.log_step(0, 5.0)

    with pytest.raises(ValueError, match="6"):
        a.snapshot(np.zeros(5), 1.0, 0)
    with pytest.raises(ValueError, match="without x_size"):
        b.snapshot(np.zeros(6), 1.0, 0)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        a.progress(1.5)

    # A separate process watches the sidecar while the tracker is still open.
    out = subprocess.run([sys.executable, "-c", LIVE_READER, str(a.path), "40"], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    live = json.loads(out.stdout)
    assert live["status"] == "running"
    assert live["cost"] == [_cost(it) for it in its]

    ra, rb = a.close(), b.close()
    assert ra == (a.path, 0) and rb == (b.path, 0)
    with pytest.raises(RuntimeError, match="closed"):
        a.log_step(41, 0.0)

    h = read_history(a.path)
    np.testing.assert_array_equal(h["iteration"], its)
    np.testing.assert_array_equal(h["passes"], 3 * its)
    np.testing.assert_array_equal(h["cost"], [_cost(it) for it in its])
    np.testing.assert_array_equal(h["rmse"], rmse)
    np.testing.assert_array_equal(h["optimality"], opt)
    assert np.all(np.diff(h["wall_s"]) >= 0) and h["wall_s"][0] >= 0
    # Stride: samples 0, 5, 10, ... of the 103 were enqueued, nothing else.
    np.testing.assert_array_equal(np.flatnonzero(sent), np.arange(0, 103, 5))
    np.testing.assert_array_equal(h["batch_sample"], np.arange(0, 103, 5))
    np.testing.assert_array_equal(h["batch_rmse"], batch[::5])
    # EWMA over every sample (not only the stored ones), recomputed independently.
    ewma, e = np.empty_like(batch), batch[0]
    for k, r in enumerate(batch):
        e = r if k == 0 else 0.1 * r + 0.9 * e
        ewma[k] = e
    np.testing.assert_allclose(h["batch_rmse_ewma"], ewma[::5], rtol=1e-14)
    np.testing.assert_array_equal(h["progress_fraction"], [0.25, 1.0])
    assert list(h["progress_message"]) == ["quarter", "fertig ✓"]

    hb = read_history(main)  # the main file resolves to its newest sidecar, b
    np.testing.assert_array_equal(hb["cost"], [5.0])

    x_best, m_best = latest_snapshot(main, "best")  # b has none: falls back to a's sidecar
    assert m_best["sidecar"] == a.path and m_best["iteration"] == 25 and m_best["cost"] == _cost(25)
    np.testing.assert_array_equal(x_best, _x(25))
    x_last, m_last = latest_snapshot(a.path, "last")  # "auto" every 2 iterations: 0, 2, ..., 38
    assert m_last["iteration"] == 38
    np.testing.assert_array_equal(x_last, _x(38))
    ring = read_snapshots(a.path, "history")
    assert [m["iteration"] for _, m in ring] == [34, 36, 38]
    for x, m in ring:
        np.testing.assert_array_equal(x, _x(m["iteration"]))

    at = _attrs(a.path)
    assert at["status"] == "closed" and at["dropped"] == 0 and at["rmse_stride"] == 5
    assert at["ewma_alpha"] == 0.1 and json.loads(at["meta_json"]) == {"solver": "test", "tol": 1e-6}
    with h5py.File(a.path, "r") as f:
        assert all(f[n].attrs["units"] and f[n].attrs["description"]
                   for n in ("/Tracker/steps", "/Tracker/batch_rmse", "/Tracker/snapshots/best_info"))

    # A torn write (writer killed mid-flush) is recognised by its CRC: the other slot answers.
    with h5py.File(a.path, "r+") as f:
        info = f["/Tracker/snapshots/last_info"][...]
        f["/Tracker/snapshots/last"][int(np.argmax(info["seq"])), 0] += 1.0
    with pytest.warns(RuntimeWarning, match="does not match its record"):
        x_prev, m_prev = latest_snapshot(a.path, "last")
    assert m_prev["iteration"] == 36
    np.testing.assert_array_equal(x_prev, _x(36))


def test_full_queue_drops_instead_of_blocking(tmp_path):
    tr = FitTracker(tmp_path / "gal.h5", config=_cfg(tracker_qsize=8))
    os.kill(tr.writer_pid, signal.SIGSTOP)  # a writer that cannot keep up at all
    n = 2000
    try:
        # With the writer stopped, a blocking put would never return: finishing at all
        # (the generous join only guards CI against a hang) shows that none waited.
        feeder = threading.Thread(target=lambda: [tr.log_step(it, float(it)) for it in range(n)])
        feeder.start()
        feeder.join(timeout=120)
        assert not feeder.is_alive(), "log_step blocked on a full queue"
    finally:
        os.kill(tr.writer_pid, signal.SIGCONT)
    assert tr.dropped >= n - 8
    res = tr.close()
    assert res.dropped == tr.dropped
    h = read_history(res.path)
    assert len(h["iteration"]) + res.dropped == n  # every record is either written or counted
    assert np.all(np.diff(h["iteration"]) > 0)
    assert _attrs(res.path)["dropped"] == res.dropped


def test_dead_writer_makes_the_tracker_a_noop_with_one_warning(tmp_path):
    tr = FitTracker(tmp_path / "gal.h5", config=_cfg())
    os.kill(tr.writer_pid, signal.SIGKILL)
    time.sleep(tracking._LIVENESS_CHECK_S + 0.2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sent = [tr.log_step(it, 1.0) for it in range(100)] + [tr.log_batch_rmse(0.1)]
        res = tr.close()                       # returns: it does not wait for the dead writer
    msgs = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(msgs) == 1 and "writer process" in msgs[0], msgs
    assert not any(sent) and res.dropped == 101


FAKE_SOLVER = textwrap.dedent("""
    import os, signal, sys, time
    import numpy as np
    from cubefit.config import Config
    from cubefit.tracking import FitTracker, latest_snapshot
    main, scenario = sys.argv[1], sys.argv[2]
    x_of = lambda it: np.sin(np.arange(50) * (it + 1.0)) + it
    cost_of = lambda it: float((it - 17) ** 2 + 1) if it < 30 else 1e3 + it
    tr = FitTracker(main, config=Config.from_env(environ={}, tracker_flush_sec=0.05), x_size=50)
    for it in range(30):
        tr.log_step(it, cost_of(it))
        tr.snapshot(x_of(it), cost_of(it), it, "best")
        tr.snapshot(x_of(it), cost_of(it), it, "last")
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:  # until iteration 29 is on disk
        try:
            if latest_snapshot(tr.path, "last")[1]["iteration"] == 29:
                break
        except OSError:
            pass
        time.sleep(0.02)
    for it in range(30, 60):  # more work right before dying: may or may not reach the file
        tr.log_step(it, cost_of(it))
        tr.snapshot(x_of(it), cost_of(it), it, "last")
    print(tr.path, flush=True)
    if scenario == "both":  # e.g. the batch system kills the whole process group
        os.kill(tr.writer_pid, signal.SIGKILL)
    os.kill(os.getpid(), signal.SIGKILL)
""")


@pytest.mark.parametrize("scenario", ["solver", "both"])
def test_killed_run_resumes_from_its_last_flushed_snapshot(tmp_path, scenario):
    main = tmp_path / "gal.h5"
    out = subprocess.run([sys.executable, "-c", FAKE_SOLVER, str(main), scenario], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == -signal.SIGKILL, out.stderr
    sidecar = find_sidecars(main)[0]
    assert str(sidecar) == out.stdout.strip()
    if scenario == "solver":  # the orphaned writer saves what reached it, then closes the file
        deadline = time.monotonic() + 20
        while _attrs(sidecar)["status"] == "running" and time.monotonic() < deadline:
            time.sleep(0.05)
    assert _attrs(sidecar)["status"] == ("orphaned" if scenario == "solver" else "running")

    x_of = lambda it: np.sin(np.arange(50) * (it + 1.0)) + it  # noqa: E731
    x, meta = latest_snapshot(main, "last")
    assert 29 <= meta["iteration"] < 60
    np.testing.assert_array_equal(x, x_of(meta["iteration"]))  # exactly, and never torn
    x, meta = latest_snapshot(main, "best")
    assert meta["iteration"] == 17 and meta["cost"] == 1.0
    np.testing.assert_array_equal(x, x_of(17))
    h = read_history(main)
    n = len(h["iteration"])
    assert n >= 30
    np.testing.assert_array_equal(h["iteration"], np.arange(n))


def test_sidecar_names_are_never_reused(tmp_path, monkeypatch):
    frozen = datetime(2025, 1, 2, 3, 4, 5, 678901, tzinfo=timezone.utc)

    class _Frozen(datetime):
        @classmethod
        def now(cls, tz=None):
            return frozen

    monkeypatch.setattr(tracking, "datetime", _Frozen)
    main = tmp_path / "gal.h5"
    first = tracking._reserve_sidecar(main)
    first.write_bytes(b"an earlier run")
    second = tracking._reserve_sidecar(main)
    assert first.name == f"gal.h5.fit.{os.getpid()}.20250102T030405.678901Z.h5"
    assert second.name == f"gal.h5.fit.{os.getpid()}.20250102T030405.678901Z-1.h5"
    assert first.read_bytes() == b"an earlier run"
    assert find_sidecars(main) == [second, first]


def test_bad_settings_and_missing_sidecars_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="CUBEFIT_TRACKER_QSIZE"):
        FitTracker(tmp_path / "gal.h5", config=_cfg(tracker_qsize=0))
    with pytest.raises(ValueError, match="CUBEFIT_RMSE_STRIDE"):
        FitTracker(tmp_path / "gal.h5", config=_cfg(rmse_stride=0))
    with pytest.raises(FileNotFoundError, match="directory"):
        FitTracker(tmp_path / "nowhere" / "gal.h5")
    with pytest.raises(FileNotFoundError, match="no fit-tracker sidecar"):
        latest_snapshot(tmp_path / "gal.h5")
    assert list(tmp_path.iterdir()) == []


def test_seed_module_name_is_the_same_tracker():
    from CubeFit.fit_tracker import FitTracker as Seed
    assert Seed is FitTracker
