"""cubefit.journal / cubefit.h5io.edit_h5: edits cost what they write and are old-or-new under SIGKILL."""
import hashlib
import os
import shutil
import signal

import h5py
import numpy as np
import pytest

import cubefit.journal as journal
from conftest import file_digest
from cubefit.h5io import edit_h5, open_h5
from cubefit.journal import journal_path
from cubefit.recon import reconstruct
from cubefit.runner import read_fit, write_fit
from cubefit.science import write_layout
from cubefit.store import H5Manager
from cubefit.weights import ensure_lambda_weights

from test_store import _populated


@pytest.fixture(scope="module")
def base(tmp_path_factory, small_mock):
    path, _ = _populated(tmp_path_factory.mktemp("journal"), small_mock)
    ensure_lambda_weights(path)
    write_fit(path, np.zeros(12), {"nit": 0, "message": "write 0"}, {})
    return path


@pytest.fixture
def h5(tmp_path, base):
    d = tmp_path / "run"
    d.mkdir()
    shutil.copy(base, d / "g.h5")
    return d / "g.h5"


def _wchar() -> int:
    """Bytes this process has passed to write-like system calls (copies included)."""
    with open("/proc/self/io") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("wchar"))


@pytest.mark.skipif(not os.path.exists("/proc/self/io"), reason="needs Linux /proc/self/io")
def test_small_writes_to_a_big_file_cost_what_they_write(h5):
    """Before: every small write copied the whole file (here 40 MB) and replaced it."""
    with h5py.File(h5, "r+") as f:                     # stands in for a built hypercube
        f.create_dataset("/HyperCube/models", data=np.ones((10, 1, 1, 2**19), np.float64))
    size, inode = os.path.getsize(h5), os.stat(h5).st_ino
    before = _wchar()
    write_fit(h5, np.arange(600.0), {"nit": 1, "message": "600 numbers"}, {})
    assert os.stat(h5).st_ino == inode                 # edited in place, not replaced
    ensure_lambda_weights(h5, small_px=5, overwrite=True)
    written = _wchar() - before
    assert written < 1 * 2**20, written                # before: 80 MiB (40 MB copied twice)
    assert os.path.getsize(h5) - size < 2**20
    np.testing.assert_array_equal(read_fit(h5)[0], np.arange(600.0))
    assert sorted(os.listdir(h5.parent)) == ["g.h5"]   # no journal, lock or copy left


def test_failed_edit_leaves_the_file_byte_for_byte(h5):
    before = file_digest(h5)
    with pytest.raises(RuntimeError, match="refused half-way"):
        with edit_h5(h5) as f:
            del f["/X_global"]
            f.create_dataset("/Junk", data=np.ones(100_000))
            raise RuntimeError("refused half-way")
    assert file_digest(h5) == before and sorted(os.listdir(h5.parent)) == ["g.h5"]


def test_journal_of_another_file_is_discarded(h5):
    """A journal whose file was replaced meanwhile (another inode) must not touch it."""
    st = os.stat(h5)
    with open(journal_path(h5), "wb") as fh:          # would truncate the file to 10 bytes
        fh.write(journal._MAGIC + journal._HEAD.pack(10, st.st_dev, st.st_ino + 1))
    digest = file_digest(h5)
    with open_h5(h5) as f:
        assert "/X_global" in f
    assert file_digest(h5) == digest and not journal_path(h5).exists()


# ----------------------------------------------------------------------------- kills

def _edits(mock):
    """Edits of the file, each writing a value k that tells the new state from the old."""
    def fit(p, k):
        write_fit(p, np.full(12, float(k)), {"nit": k, "message": f"write {k}"},
                  {"light_fractions": np.full(2, 0.5)})

    def populate(p, k):
        H5Manager(p, tem_pix=mock.tem_pix, obs_pix=mock.obs_pix).populate_from_arrays(
            losvd=mock.losvd, datacube=mock.datacube * k, templates=mock.templates, mask=mock.mask,
            vel_pix=mock.vel_pix, noise=mock.noise, pop_axes=mock.pop_axes)

    def weights(p, k):
        ensure_lambda_weights(p, small_px=3 + k % 4, large_px=40 + k, overwrite=True)

    def recon(p, k):
        reconstruct(p, np.full(12, float(k)), out="/ModelCube")

    def layout(p, k):
        write_layout(p, xy=np.full((9, 2), float(k)), names=[f"c{k}", "d"])

    def is_new(p, k):
        with h5py.File(p, "r") as f:
            return {"fit": lambda: f["/Fit"].attrs["nit"] == k and np.all(f["/X_global"][...] == k),
                    "populate": lambda: np.allclose(f["/DataCube"][...], mock.datacube * k),
                    "weights": lambda: f["/HyperCube/lambda_weights"].attrs["large_px"] == 40 + k,
                    "recon": lambda: "/ModelCube" in f and f["/ModelCube"].attrs["x_sha256"]
                    == hashlib.sha256(np.full(12, float(k)).data).hexdigest(),
                    "layout": lambda: "/SpaxelXY" in f and np.all(f["/SpaxelXY"][...] == k)}
    return {"fit": fit, "populate": populate, "weights": weights, "recon": recon,
            "layout": layout}, is_new


def _in_child(edit, path, k, kill_at):
    """Run ``edit`` in a forked child that SIGKILLs itself just before its ``kill_at``-th I/O
    event (a write HDF5 makes, a journal or page write, an fsync, an unlink; 0: never).
    Returns the number of events when it finished, None when killed."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:                                       # child: never returns
        code = 3
        try:
            os.close(r)
            signal.alarm(60)                           # a stuck child cannot hang the tests
            seen = [0]

            def counted(fn):
                def inner(*args, **kwargs):
                    seen[0] += 1
                    if seen[0] == kill_at:
                        os.kill(os.getpid(), signal.SIGKILL)
                    return fn(*args, **kwargs)
                return inner
            journal._pwrite_all = counted(journal._pwrite_all)
            journal.JournaledFile.write = counted(journal.JournaledFile.write)
            os.fsync = counted(os.fsync)
            os.unlink = counted(os.unlink)
            edit(path, k)
            os.write(w, str(seen[0]).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    _, status = os.waitpid(pid, 0)
    out = os.read(r, 64)
    os.close(r)
    if os.WIFSIGNALED(status):
        assert os.WTERMSIG(status) == signal.SIGKILL
        return None
    assert os.WEXITSTATUS(status) == 0, f"the edit failed in the child (exit {os.WEXITSTATUS(status)})"
    return int(out)


def _read_everything(path):
    with open_h5(path) as f:                           # the open rolls a killed edit back
        def visit(name, obj):
            dict(obj.attrs)
            if isinstance(obj, h5py.Dataset):
                obj[...]
        f.visititems(visit)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["fit", "populate", "weights", "recon", "layout"])
def test_sigkill_anywhere_in_an_edit_leaves_old_or_new(h5, small_mock, name):
    edits, is_new = _edits(small_mock)
    scratch = h5.with_name("scratch.h5")
    shutil.copy(h5, scratch)
    total = _in_child(edits[name], scratch, 7, kill_at=0)      # how many I/O events an edit has
    scratch.unlink()
    assert total > 5
    # Three kills at random events (seeds 0-2), and five in the commit: the last events are
    # fsyncs, the sealed journal, the pages written back, its removal, the lock's release.
    points = [int(np.random.default_rng(seed).integers(1, total + 1)) for seed in range(3)]
    points += [total - j for j in (8, 6, 4, 2, 0)]
    outcomes = []
    for k, kill_at in enumerate(points, start=10):
        old = file_digest(h5)
        finished = _in_child(edits[name], h5, k, kill_at)
        _read_everything(h5)
        assert sorted(os.listdir(h5.parent)) == ["g.h5"], (k, kill_at)   # nothing left over
        if file_digest(h5) == old:
            outcomes.append("old")
        else:
            assert is_new(h5, k), (kill_at, total)
            outcomes.append("new")
        assert finished is None or outcomes[-1] == "new"
    assert outcomes[-1] == "new" and "old" in outcomes, list(zip(points, outcomes))
