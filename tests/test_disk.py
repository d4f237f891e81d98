"""Full disks, read-only and damaged files, leftovers of killed processes: a clear error at
once naming the file, the previous file kept, nothing left behind.

The full-disk and read-only cases run on a real small tmpfs when the tests may mount one
(root); otherwise the error is injected (``OSError(ENOSPC)``) or made with ``chmod``.
"""
import errno
import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import time

import h5py
import numpy as np
import pytest

import cubefit.diskspace as diskspace
import cubefit.journal as journal
import cubefit.runner as runner_mod
from conftest import file_digest
from cubefit.diskspace import save_fallback
from cubefit.h5io import open_h5
from cubefit.hypercube import build_hypercube, hypercube_status
from cubefit.runner import PipelineRunner
from cubefit.store import H5Manager, describe_file
from cubefit.weights import ensure_lambda_weights

from test_store import _populated


@pytest.fixture(scope="module")
def base(tmp_path_factory, small_mock):
    path, _ = _populated(tmp_path_factory.mktemp("disk"), small_mock)
    ensure_lambda_weights(path)
    return path


@pytest.fixture
def h5(tmp_path, base):
    d = tmp_path / "run"
    d.mkdir()
    shutil.copy(base, d / "g.h5")
    return d / "g.h5"


@pytest.fixture
def tmpfs(tmp_path):
    """``mount(size) -> folder`` on a fresh tmpfs; skips where mounting is not permitted."""
    mounted = []

    def mount(size: str):
        d = tmp_path / f"fs{len(mounted)}"
        d.mkdir()
        if os.geteuid() != 0:
            pytest.skip("mounting a tmpfs needs root")
        out = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(d)],
                             capture_output=True, text=True)
        if out.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {out.stderr.strip()}")
        mounted.append(d)
        return d

    yield mount
    for d in mounted:
        subprocess.run(["umount", "-l", str(d)], capture_output=True)


def _leftovers(folder, keep=("g.h5",)):
    return sorted(set(os.listdir(folder)) - set(keep))


# ----------------------------------------------------------------------------- full disk

POPULATE_BIG = textwrap.dedent("""
    import hashlib, sys
    from cubefit.mock import Component, make_mock_galaxy, synthetic_templates
    from cubefit.store import H5Manager
    comps = (Component("bulge", vmax=0.0, sigma=200.0, r_eff=1.5, flux=1.0, pop_centre=(0.8, 0.6)),
             Component("disk", vmax=150.0, sigma=60.0, r_eff=2.5, flux=0.6, pop_centre=(0.3, 0.4)))
    flux, ln_lam, axes = synthetic_templates(n_age=3, n_metal=2, lam=(4700.0, 5700.0), velscale=40.0)
    m = make_mock_galaxy(flux, ln_lam, pop_shape=(3, 2), pop_axes=axes, nx=24, ny=24,
                         components=comps, obs_lam=(4900.0, 5500.0), vel_max=600.0, snr=50.0, seed=3)
    mgr = H5Manager(sys.argv[1], tem_pix=m.tem_pix, obs_pix=m.obs_pix)
    mgr.init_base(m.dims)
    print(hashlib.sha256(open(sys.argv[1], "rb").read()).hexdigest(), flush=True)
    try:   # ~2.5 MB of inputs on a 2 MiB disk
        mgr.populate_from_arrays(losvd=m.losvd, datacube=m.datacube, templates=m.templates,
                                 mask=m.mask, vel_pix=m.vel_pix, noise=m.noise, pop_axes=m.pop_axes)
        print("populated")
    except OSError as exc:
        print(f"OSError {exc.errno}: {exc}")
""")


def test_populate_on_a_full_tmpfs_fails_cleanly(tmpfs):
    """Before: SIGSEGV (h5py closing after ENOSPC inside the copy-and-replace edit)."""
    d = tmpfs("2m")
    out = subprocess.run([sys.executable, "-c", POPULATE_BIG, str(d / "g.h5")], capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, (out.returncode, out.stderr[-2000:])
    digest, result = out.stdout.splitlines()
    assert result.startswith(f"OSError {errno.ENOSPC}: ") and f"no space left on device {d}" in result \
        and "need ≈" in result
    assert file_digest(d / "g.h5") == digest and _leftovers(d) == []


def _enospc_after(monkeypatch, n_bytes):
    """Make the journal's writes fail with ENOSPC once ``n_bytes`` have been written."""
    real, written = journal._pwrite_all, [0]

    def full(fd, data, offset):
        written[0] += len(memoryview(data).cast("B"))
        if written[0] > n_bytes:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd, data, offset)
    monkeypatch.setattr(journal, "_pwrite_all", full)


@pytest.mark.parametrize("after", [0, 20_000, 60_000])
def test_edit_on_a_full_disk_injected_keeps_the_file(h5, small_mock, monkeypatch, after):
    m = small_mock
    before = file_digest(h5)
    _enospc_after(monkeypatch, after)
    with pytest.raises(OSError, match=f"no space left on device .* {h5}.*need ≈") as err:
        H5Manager(h5, tem_pix=m.tem_pix, obs_pix=m.obs_pix).populate_from_arrays(
            losvd=m.losvd, datacube=3 * m.datacube, templates=m.templates, mask=m.mask,
            vel_pix=m.vel_pix, noise=m.noise, pop_axes=m.pop_axes)
    assert err.value.errno == errno.ENOSPC
    assert file_digest(h5) == before and _leftovers(h5.parent) == []


def test_build_checks_free_space_before_starting(h5, monkeypatch):
    before = file_digest(h5)
    monkeypatch.setattr(diskspace, "free_bytes", lambda path: 10_000)
    with pytest.raises(OSError, match=r"for building /HyperCube/models: need ≈ \d+\.\d MiB, 0\.0 MiB"):
        build_hypercube(h5, progress=False)
    assert file_digest(h5) == before


BUILD_NO_CHECK = textwrap.dedent("""
    import sys
    import cubefit.hypercube as hc
    hc.require_free = lambda *a, **k: None       # as if the disk filled after the check
    try:
        hc.build_hypercube(sys.argv[1], progress=False, S_chunk=4)
        print("built")
    except OSError as exc:
        print(f"OSError {exc.errno}: {exc}")
""")


def test_build_that_fills_a_tmpfs_stops_cleanly_and_resumes(tmpfs, base):
    """Before: SIGSEGV when the disk filled during a build."""
    d = tmpfs("3m")
    shutil.copy(base, d / "g.h5")
    with h5py.File(base, "r") as f:
        S, _, C = f["/LOSVD"].shape
        cube = 4 * S * C * f["/Templates"].shape[0] * f["/ObsPix"].shape[0]
    filler = d / "filler"
    filler.write_bytes(b"\0" * (diskspace.free_bytes(d) - 2 * cube // 3))   # room for one S-tile in 3
    out = subprocess.run([sys.executable, "-c", BUILD_NO_CHECK, str(d / "g.h5")],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, (out.returncode, out.stderr[-2000:])
    assert out.stdout.startswith(f"OSError {errno.ENOSPC}: ") \
        and f"no space left on device {d}" in out.stdout, out.stdout
    st = hypercube_status(d / "g.h5")
    assert 0 < st.n_done < st.n_tiles
    filler.unlink()
    assert build_hypercube(d / "g.h5", progress=False, S_chunk=4).complete
    assert _leftovers(d) == []


# ----------------------------------------------------------------------------- solve

@pytest.fixture
def no_solver(monkeypatch):
    calls = []
    monkeypatch.setattr(runner_mod, "solve", lambda *a, **k: calls.append(1))
    return calls


def test_solve_on_a_full_disk_fails_before_solving(h5, monkeypatch, no_solver):
    monkeypatch.setattr(diskspace, "free_bytes", lambda path: 0)
    with pytest.raises(OSError, match="no space left on device .* for the fit result"):
        PipelineRunner(h5).solve_all_mp_batched(track=False)
    assert no_solver == []


def test_solve_of_a_read_only_file_fails_before_solving(h5, tmpfs, no_solver):
    if os.geteuid() == 0:                  # root ignores permissions: a read-only file system
        d = tmpfs("4m")
        shutil.copy(h5, d / "g.h5")
        subprocess.run(["mount", "-o", "remount,ro", str(d)], check=True)
        h5 = d / "g.h5"
    else:
        h5.chmod(0o444)
    with pytest.raises(OSError, match=f"{h5}") as err:
        PipelineRunner(h5).solve_all_mp_batched(track=False)
    assert ".tmp-" not in str(err.value) and no_solver == []


def test_failed_final_write_saves_the_fitted_x(h5, monkeypatch):
    seen = []

    def full_disk(path, x, *args, **kwargs):
        seen.append(np.array(x))
        raise diskspace.no_space_error(path, 1e6, "the fit result")
    monkeypatch.setattr(runner_mod, "write_fit", full_disk)
    with pytest.raises(OSError, match="saved to ") as err:
        PipelineRunner(h5).solve_all_mp_batched(track=False)
    saved = str(err.value).split("saved to ")[1].split(":")[0]
    assert saved.startswith(str(h5.parent / "g.h5.X_global.")) and saved.endswith(".npy")
    np.testing.assert_array_equal(np.load(saved), seen[0])


def test_fallback_goes_to_the_temporary_directory(tmp_path, monkeypatch):
    monkeypatch.setattr(diskspace.tempfile, "gettempdir", lambda: str(tmp_path))
    where = save_fallback(tmp_path / "gone" / "g.h5", "/X_global", np.arange(3.0))
    assert where.parent == tmp_path and np.array_equal(np.load(where), np.arange(3.0))


# ----------------------------------------------------------------------------- damaged, read-only

@pytest.mark.parametrize("damage", ["truncated", "random bytes", "empty"])
def test_damaged_file_fails_at_once_naming_it(h5, damage, monkeypatch):
    """Before: 21 attempts over 83 s, then "is another process writing it?"."""
    data = h5.read_bytes()
    h5.write_bytes({"truncated": data[:len(data) // 2], "random bytes": os.urandom(5000),
                    "empty": b""}[damage])
    sleeps = []
    monkeypatch.setattr(time, "sleep", sleeps.append)
    for attempt in (lambda: open_h5(h5), lambda: open_h5(h5, "r+"), lambda: describe_file(h5),
                    lambda: ensure_lambda_weights(h5, overwrite=True),
                    lambda: H5Manager(h5).ensure_rebin_and_resample(force=True)):
        with pytest.raises(OSError, match="not an HDF5 file or truncated") as err:
            attempt()
        assert str(h5) in str(err.value) and "re-run populate" in str(err.value)
    assert sleeps == []
    assert _leftovers(h5.parent) == []


def test_read_only_file_error_names_the_file(h5, tmpfs):
    """Before: the error named the temporary copy (.g.h5.tmp-<pid>)."""
    if os.geteuid() == 0:
        d = tmpfs("4m")
        shutil.copy(h5, d / "g.h5")
        subprocess.run(["mount", "-o", "remount,ro", str(d)], check=True)
        h5 = d / "g.h5"
    else:
        h5.chmod(0o444)
    with pytest.raises(OSError) as err:
        ensure_lambda_weights(h5, small_px=5, overwrite=True)
    assert str(h5) in str(err.value) and ".tmp-" not in str(err.value)


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_leftovers_of_killed_processes_are_removed_at_the_next_read(h5):
    """Before: only the next edit removed copies, and 0-byte sidecars stayed for ever."""
    dead, alive = _dead_pid(), os.getppid()
    d = h5.parent
    old = time.time() - 3600
    (d / f".g.h5.tmp-{dead}").write_bytes(b"\0" * 100_000)            # a killed edit's copy
    (d / f".g.h5.new-{dead}").write_bytes(b"\0" * 100)                # a killed init's file
    (d / f".g.h5.tmp-{alive}").write_bytes(b"in use")                 # a live process's copy
    for name, data in ((f"g.h5.fit.{dead}.20250101T000000.000000Z.h5", b""),
                       (f"g.h5.fit.{dead}.20250101T000001.000000Z.h5", b"a real sidecar"),
                       (f"g.h5.fit.{alive}.20250101T000002.000000Z.h5", b"")):
        (d / name).write_bytes(data)
        os.utime(d / name, (old, old))
    (d / "g.h5.lock").write_text(json.dumps({"host": socket.gethostname(), "pid": dead,
                                             "operation": "build_hypercube", "since": "then"}))
    describe_file(h5)                                                 # a reader
    assert _leftovers(d) == sorted([f".g.h5.tmp-{alive}", f"g.h5.fit.{dead}.20250101T000001.000000Z.h5",
                                    f"g.h5.fit.{alive}.20250101T000002.000000Z.h5"])
