"""One writer per file (cubefit.locking) and readers that notice a file changing under them.

Every concurrent test runs real processes and orders them with pipes, never with sleeps:
the holder patches a function that runs inside its writer lock so that it prints
"holding" and waits for a line on stdin; the test acts while it waits, then releases it.
"""
import logging
import os
import shutil
import signal
import subprocess
import sys
import textwrap

import h5py
import numpy as np
import pytest

from cubefit.h5io import FileChangedError
from cubefit.hypercube import build_hypercube, hypercube_status
from cubefit.locking import FileBusyError, lock_path, writer_lock
from cubefit.operator import LOSVDOperator
from cubefit.recon import reconstruct
from cubefit.runner import PipelineRunner
from cubefit.store import H5Manager
from cubefit.weights import ensure_lambda_weights

from test_store import _populated

HOLDER = textwrap.dedent("""
    import importlib, sys
    path, module, name, action = sys.argv[1:5]
    mod = importlib.import_module(module)
    real = getattr(mod, name)
    def paused(*args, **kwargs):
        print("holding", flush=True)
        sys.stdin.readline()                 # released by the test
        return real(*args, **kwargs)
    setattr(mod, name, paused)
    if action == "build":
        from cubefit.hypercube import build_hypercube
        build_hypercube(path, progress=False)
    elif action == "convert":
        from cubefit.hypercube import convert_hypercube_norm
        convert_hypercube_norm(path, "model", progress=False)
    elif action == "solve":
        from cubefit.runner import PipelineRunner
        PipelineRunner(path).solve_all_mp_batched(track=False)
    print("done", flush=True)
""")

# (module, function run inside the writer lock) where each holder pauses
PAUSE = {"build": ("cubefit.hypercube", "_build_tiles"),
         "convert": ("cubefit.hypercube", "_convert_tiles"),
         "solve": ("cubefit.runner", "solve")}


class Holder:
    """A subprocess that holds the writer lock of ``path`` inside ``action`` until released."""

    def __init__(self, path, action):
        self.proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(path), *PAUSE[action], action],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        for line in self.proc.stdout:               # other output (banners) may come first
            if line == "holding\n":
                return
        self.proc.wait(timeout=60)
        pytest.fail(f"the holder exited with {self.proc.returncode} before holding the lock: "
                    f"{self.proc.stderr.read()[-3000:]}")

    @property
    def pid(self):
        return self.proc.pid

    def release(self):
        out, err = self.proc.communicate("go\n", timeout=120)
        assert self.proc.returncode == 0 and out.strip() == "done", err[-3000:]

    def kill(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.communicate(timeout=60)


@pytest.fixture(scope="module")
def base(tmp_path_factory, small_mock):
    path, _ = _populated(tmp_path_factory.mktemp("writers"), small_mock)
    ensure_lambda_weights(path)
    return path


@pytest.fixture
def h5(tmp_path, base):
    dst = tmp_path / "g.h5"
    shutil.copy(base, dst)
    return dst


@pytest.fixture(scope="module")
def built(tmp_path_factory, base):
    """The base file with its hypercube built alone: what every concurrent build must give."""
    dst = tmp_path_factory.mktemp("built") / "g.h5"
    shutil.copy(base, dst)
    build_hypercube(dst, progress=False)
    return dst


def _models(path):
    with h5py.File(path, "r") as f:
        return f["/HyperCube/models"][...], f["/HyperCube/col_energy"][...]


def _assert_same_cube(path, reference):
    assert hypercube_status(path).complete
    for a, b in zip(_models(path), _models(reference)):
        np.testing.assert_array_equal(a, b)


def test_second_build_fails_at_once_naming_the_first(h5, built):
    holder = Holder(h5, "build")
    try:
        with pytest.raises(FileBusyError) as err:
            build_hypercube(h5, progress=False)
        msg = str(err.value)
        assert f"pid {holder.pid}" in msg and "build_hypercube" in msg and "host" in msg \
            and "since" in msg and "--wait" in msg
    finally:
        holder.release()
    _assert_same_cube(h5, built)
    assert not lock_path(h5).exists()


def test_solve_during_a_build_fails_and_the_build_completes(h5, built):
    holder = Holder(h5, "build")
    try:
        with pytest.raises(FileBusyError, match=f"build_hypercube .*pid {holder.pid}"):
            PipelineRunner(h5).solve_all_mp_batched(track=False)
    finally:
        holder.release()
    _assert_same_cube(h5, built)
    with h5py.File(h5, "r") as f:
        assert "/X_global" not in f


def test_second_solve_fails_and_the_first_writes_its_result(h5):
    holder = Holder(h5, "solve")
    try:
        with pytest.raises(FileBusyError, match=f"solve .*pid {holder.pid}"):
            PipelineRunner(h5).solve_all_mp_batched(track=False)
        with pytest.raises(FileBusyError, match=f"pid {holder.pid}"):    # any other writer too
            H5Manager(h5).ensure_rebin_and_resample(force=True)
    finally:
        holder.release()
    with h5py.File(h5, "r") as f:
        assert f["/Fit"].attrs["success"]


def test_wait_option_waits_for_the_holder_then_runs(h5, built):
    holder = Holder(h5, "build")
    waiter = subprocess.Popen([sys.executable, "-m", "cubefit", "build", str(h5), "--quiet", "--wait"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for line in waiter.stderr:                    # the waiter says whom it waits for
            if "waiting for" in line:
                assert f"pid {holder.pid}" in line
                break
        else:
            pytest.fail(f"the waiting build exited with {waiter.wait()} without waiting")
        assert waiter.poll() is None
    finally:
        holder.release()
    out, err = waiter.communicate(timeout=120)
    assert waiter.returncode == 0, err
    assert "100% built" in out
    _assert_same_cube(h5, built)


def test_lock_of_a_killed_writer_is_taken_over(h5, built, caplog):
    holder = Holder(h5, "build")
    holder.kill()                                     # SIGKILL: its lock file stays behind
    assert str(holder.pid) in lock_path(h5).read_text()
    with caplog.at_level(logging.INFO, logger="cubefit.locking"):
        build_hypercube(h5, progress=False)           # resumes the killed build at once
    assert any("took over the lock" in r.getMessage() and str(holder.pid) in r.getMessage()
               for r in caplog.records)
    _assert_same_cube(h5, built)
    assert not lock_path(h5).exists()


def test_lock_is_reentrant_in_a_thread_and_exclusive_across_threads(h5):
    import threading
    seen = []
    with writer_lock(h5, "outer", wait=0):
        with writer_lock(h5, "inner", wait=0):
            ensure_lambda_weights(h5, overwrite=True)   # a writer inside: holds it once

        def other():
            try:
                with writer_lock(h5, "other thread", wait=0):
                    seen.append("got it")
            except FileBusyError as exc:
                seen.append(str(exc))
        t = threading.Thread(target=other)
        t.start()
        t.join()
    assert "outer" in seen[0] and f"pid {os.getpid()}" in seen[0]
    assert not lock_path(h5).exists()


# ----------------------------------------------------------------------------- readers

@pytest.fixture
def cube(h5, built):
    shutil.copy(built, h5)
    return h5


def test_reconstruct_refuses_during_a_conversion(cube):
    x = np.ones(12)
    holder = Holder(cube, "convert")
    try:
        with pytest.raises(FileBusyError, match=f"being converted to norm 'model' by .*pid {holder.pid}"):
            reconstruct(cube, x)
        with pytest.raises(FileBusyError, match=f"pid {holder.pid}"):
            reconstruct(cube, x, out="/ModelCube")
    finally:
        holder.release()
    Y = reconstruct(cube, x)                          # after it: from the cube in the new norm
    op = LOSVDOperator.from_h5(cube, norm_mode="model", lambda_weights=None)
    np.testing.assert_allclose(Y, op.model(x), rtol=1e-4, atol=1e-5 * np.abs(Y).max())


def test_reconstruct_notices_a_conversion_between_its_reads(cube, monkeypatch):
    """A conversion that runs entirely while reconstruct reads the cube: before, the
    spectra came back silently in a mix of normalisations."""
    import cubefit.recon as recon_mod
    real = recon_mod._from_cube

    def then_convert(*args):
        Y = real(*args)
        out = subprocess.run([sys.executable, "-m", "cubefit", "build", str(cube), "--convert-to",
                              "model", "--quiet"], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        return Y

    monkeypatch.setattr(recon_mod, "_from_cube", then_convert)
    with pytest.raises(FileChangedError, match="norm.mode: 'data' → 'model'"):
        reconstruct(cube, np.ones(12))


def test_operator_from_h5_notices_new_inputs_between_its_reads(h5, small_mock, monkeypatch):
    import cubefit.store as store_mod
    real = store_mod.read_inputs
    m = small_mock

    def then_repopulate(*args, **kwargs):
        inp = real(*args, **kwargs)
        H5Manager(h5, tem_pix=m.tem_pix, obs_pix=m.obs_pix).populate_from_arrays(
            losvd=m.losvd, datacube=2 * m.datacube, templates=m.templates, mask=m.mask,
            vel_pix=m.vel_pix, noise=m.noise, pop_axes=m.pop_axes)
        return inp

    monkeypatch.setattr(store_mod, "read_inputs", then_repopulate)
    with pytest.raises(FileChangedError, match="inputs_fingerprint"):
        LOSVDOperator.from_h5(h5)
