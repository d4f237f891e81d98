"""Opening and editing CubeFit files: clear errors, crash-safe edits, consistent readers.

* :func:`open_h5` opens a file with the configured chunk cache and HDF5 locking policy.
  It retries only while HDF5's own file lock is held by another process; any other
  failure is reported at once with the file's name and the fix (a damaged file: "not
  an HDF5 file or truncated: …; restore it or re-run populate").  Before opening it
  tidies up after killed processes (:func:`tidy`).
* :func:`edit_h5` is the one way to change a file's datasets: under the file's writer
  lock (:mod:`cubefit.locking`), after a free-space check (:mod:`cubefit.diskspace`),
  through the rollback journal of :mod:`cubefit.journal` — the change reaches the file
  only if the block succeeds, and costs what it writes.
* :func:`file_state` / :func:`check_unchanged` let a reader that opens a file several
  times make sure that what it relies on (inputs fingerprint, hypercube normalisation,
  λ-weights) did not change in between.
"""
from __future__ import annotations

import contextlib
import errno
import logging
import os
import time
from pathlib import Path

import h5py

from .config import Config, get_config
from .diskspace import EDIT_MARGIN_BYTES, no_space_error, require_free
from .journal import JournaledFile, journal_path, journal_sealed, undo
from .locking import FileBusyError, describe_holder, lock_holder, lock_path, remove_stale_lock, \
    writer_lock

log = logging.getLogger(__name__)

__all__ = ["open_h5", "edit_h5", "tidy", "check_writable", "state_of", "file_state",
           "check_unchanged", "FileChangedError"]

SIDECAR_ORPHAN_AGE_S = 60.0
"""A 0-byte fit-tracker sidecar of a dead process older than this is removed by :func:`tidy`
(the age protects one just reserved by a process of another host sharing the disk)."""
_SEALED_WAIT_S = 60.0
_DAMAGED = ("signature not found", "truncated file", "bad object header", "b-tree signature",
            "bad symbol table", "bad heap", "addr overflow", "bad superblock", "unable to read",
            "bad value from", "incorrect metadata checksum")

_active: set[str] = set()


class FileChangedError(RuntimeError):
    """A file changed between two opens of a reader that relies on it staying the same."""


# ----------------------------------------------------------------------------- opening

def _locking(cfg: Config):
    v = str(cfg.hdf5_use_file_locking).strip().upper()
    if v in ("FALSE", "0", "NO", "OFF"):
        return False
    if v == "BEST_EFFORT":
        return "best-effort"
    return True


def _cache_kw(cfg: Config) -> dict:
    return dict(rdcc_nbytes=cfg.rdcc_nbytes, rdcc_nslots=cfg.rdcc_nslots, rdcc_w0=cfg.rdcc_w0)


def _lock_contention(exc: OSError) -> bool:
    return "unable to lock file" in str(exc).lower()


def _damaged(path: Path, detail: str) -> OSError:
    return OSError(f"{path}: not an HDF5 file or truncated ({detail}); restore it from a copy "
                   "or re-run populate (cubefit init)")


def _refuse_empty(fobj: JournaledFile) -> None:
    """HDF5 would silently start a new file in an existing empty one: refuse it."""
    if fobj.orig_size == 0:
        fobj.close()
        raise _damaged(fobj.path, "0 bytes")


def _open_error(path: Path, mode: str, exc: OSError, attempts: int) -> OSError:
    """The error to show for a failed open: the file, what is wrong, what to do."""
    msg, low = str(exc), str(exc).lower()
    purpose = "reading" if mode == "r" else "writing"
    if isinstance(exc, FileNotFoundError) or "no such file" in low:
        return FileNotFoundError(errno.ENOENT, f"{path}: no such HDF5 file")
    if exc.errno == errno.ENOSPC or "no space left" in low:
        return no_space_error(path, EDIT_MARGIN_BYTES, what=f"opening it for {purpose}")
    if exc.errno in (errno.EACCES, errno.EPERM) or "permission denied" in low:
        return PermissionError(errno.EACCES, f"{path}: permission denied opening it for {purpose}; "
                               f"make it {'readable' if mode == 'r' else 'writable'} "
                               f"(chmod u+{'r' if mode == 'r' else 'w'}) or work on a copy")
    if exc.errno == errno.EROFS or "read-only file system" in low:
        return OSError(errno.EROFS, f"{path}: on a read-only file system, cannot open it for "
                       "writing; work on a copy on a writable disk")
    if _lock_contention(exc):
        return FileBusyError(errno.EAGAIN, f"{path}: locked by another process (HDF5 file "
                             f"locking) after {attempts} attempts; wait for it to finish, or "
                             "set HDF5_USE_FILE_LOCKING=FALSE if no other process uses it")
    if "already open for write" in low:
        return OSError(f"{path}: HDF5 marks it as open for writing by a process that did not close "
                       f"it ({msg}); if no process writes it, clear the mark with `h5clear -s "
                       f"{path}`")
    if any(s in low for s in _DAMAGED):
        return _damaged(path, msg)
    return OSError(exc.errno, f"{path}: cannot open it for {purpose} (mode {mode!r}): {msg}")


def open_h5(path, mode: str = "r", *, swmr: bool = False, config: Config | None = None,
            retries: int | None = None, **kwargs) -> h5py.File:
    """Open an HDF5 file with the configured chunk cache and locking policy.

    ``mode`` is h5py's.  ``swmr=True`` opens for single-writer/multiple-reader:
    readers see a writer's flushed data live; a writer (mode ``"a"``/``"r+"``)
    switches the file to SWMR after opening (it needs the latest file format).
    While HDF5's own lock is held by another process (``HDF5_USE_FILE_LOCKING`` on)
    the open is retried ``retries`` times (default ``config.open_retries``) with a
    doubling wait; every other failure is raised at once (module docstring).
    In-place writers must hold the file's writer lock (:mod:`cubefit.locking`).
    """
    cfg = config or get_config()
    path = Path(path)
    tidy(path)
    if mode == "r" and not path.exists():
        raise FileNotFoundError(errno.ENOENT, f"{path}: no such HDF5 file")
    if mode == "r+" and not swmr:
        return _open_checked(path, cfg, kwargs)
    kw = dict(_cache_kw(cfg), locking=_locking(cfg))
    if swmr and mode == "r":
        kw["swmr"] = True
    if swmr and mode != "r":
        kw["libver"] = "latest"
    kw.update(kwargs)
    n = cfg.open_retries if retries is None else retries
    wait = cfg.open_retry_wait
    for attempt in range(n + 1):
        try:
            f = h5py.File(path, mode, **kw)
            break
        except OSError as exc:
            if not _lock_contention(exc) or attempt == n:
                raise _open_error(path, mode, exc, attempt + 1) from exc
            time.sleep(wait)
            wait = min(2 * wait, 5.0)
    if swmr and mode != "r":
        f.swmr_mode = True
    return f


class _CheckedFile(h5py.File):
    """An ``h5py.File`` on a :class:`JournaledFile` without journal whose :meth:`flush` and
    :meth:`close` raise a write error the file object recorded.

    HDF5 must never see an exception from its I/O callbacks (it can crash the process),
    so a failed write is recorded and every later write dropped — the file stays as it
    was at the failure, as if the writer had been killed there, which every in-place
    writer survives — and the error surfaces at the writer's next flush.
    """

    def _raise_recorded(self) -> None:
        err = self._fobj.error
        if err is not None:
            path = self._fobj.path
            if err.errno == errno.ENOSPC:
                raise no_space_error(path, self._fobj.bytes_wanted + EDIT_MARGIN_BYTES, "writing",
                                     kept="keeps what was written before (a build or conversion "
                                          "resumes from there when run again)")
            raise OSError(err.errno, f"{path}: writing failed ({err.strerror}); what was flushed "
                          "before stays")

    def flush(self) -> None:
        super().flush()
        self._raise_recorded()

    def close(self) -> None:
        if self._fobj.fd < 0:
            return
        super().close()
        try:
            if self._fobj.error is None:
                self._fobj.commit()               # fsync
        except OSError as exc:
            self._fobj.error = exc
        self._fobj.close()
        self._raise_recorded()


def _open_checked(path: Path, cfg: Config, kwargs: dict) -> h5py.File:
    """Open an existing file for in-place writing through a :class:`_CheckedFile`."""
    try:
        fobj = JournaledFile(path, journal=False)
    except OSError as exc:
        raise _open_error(path, "r+", exc, 1) from exc
    _refuse_empty(fobj)
    try:
        f = _CheckedFile(fobj, "r+", **_cache_kw(cfg), **kwargs)
    except OSError as exc:
        fobj.close()
        raise _open_error(path, "r+", exc, 1) from exc
    f._fobj = fobj
    return f


# ----------------------------------------------------------------------------- tidying

def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def _orphans(path: Path):
    """Files left beside ``path`` by killed processes: edit copies ``.<name>.tmp-<pid>`` /
    ``.<name>.new-<pid>`` and 0-byte tracker sidecars ``<name>.fit.<pid>.<ts>.h5``."""
    copy_prefix, sidecar_prefix = f".{path.name}.", f"{path.name}.fit."
    try:
        entries = list(os.scandir(path.parent))
    except OSError:
        return
    for e in entries:
        if e.name.startswith(copy_prefix):
            kind, _, pid = e.name[len(copy_prefix):].rpartition("-")
            if kind in ("tmp", "new") and pid.isdigit() and not _pid_alive(int(pid)):
                yield Path(e.path)
        elif e.name.startswith(sidecar_prefix) and e.name.endswith(".h5"):
            pid = e.name[len(sidecar_prefix):].split(".", 1)[0]
            try:
                st = e.stat()
            except OSError:
                continue
            if pid.isdigit() and st.st_size == 0 and not _pid_alive(int(pid)) \
                    and time.time() - st.st_mtime > SIDECAR_ORPHAN_AGE_S:
                yield Path(e.path)


def _recover(path: Path) -> None:
    """Roll back an edit of ``path`` whose process died (its journal is left)."""
    if os.path.realpath(path) in _active:
        return                                   # our own edit, in progress
    try:
        with writer_lock(path, "roll back an interrupted edit", wait=0):
            undo(path)
        return
    except FileBusyError:
        pass
    except OSError as exc:
        raise OSError(exc.errno, f"{path}: an edit was interrupted ({journal_path(path).name} is "
                      f"left) and rolling it back needs write access ({exc}); run any cubefit "
                      "command that writes the file, as a user who may") from exc
    # A live writer: its journal is sealed only while it writes its pages back (ms).
    t0 = time.monotonic()
    while journal_sealed(path) and time.monotonic() - t0 < _SEALED_WAIT_S:
        time.sleep(0.01)
    if journal_sealed(path):
        log.warning("%s: %s has been committing for %.0f s; reading anyway", path,
                    describe_holder(lock_holder(path)), _SEALED_WAIT_S)


def tidy(path) -> None:
    """Clean up after killed processes, at every open of ``path``: roll back an interrupted
    edit (its journal), remove edit copies and 0-byte sidecars of dead processes and a lock
    file whose holder is gone.  Files this user may not remove are left alone."""
    path = Path(path)
    if journal_path(path).exists():
        _recover(path)
    for p in _orphans(path):
        try:
            p.unlink()
            log.info("removed %s, left by a killed process", p)
        except OSError:
            pass
    if lock_path(path).exists():
        remove_stale_lock(path)


# ----------------------------------------------------------------------------- editing

def _failed_write(path: Path, fobj: JournaledFile, need_bytes: int, operation: str):
    """The error to raise for an edit whose file object recorded a failed write (or None)."""
    err = fobj.error
    if err is not None and err.errno == errno.ENOSPC:
        return no_space_error(path, max(need_bytes, fobj.bytes_wanted) + EDIT_MARGIN_BYTES,
                              operation)
    if err is not None:
        return OSError(err.errno, f"{path}: {operation} failed writing the file ({err.strerror}); "
                       f"{path.name} was left as it was")
    return None


@contextlib.contextmanager
def edit_h5(path, config: Config | None = None, *, need_bytes: int = 0, operation: str = "writing"):
    """Yield an ``h5py.File`` to modify ``path``; the change reaches it only if the block succeeds.

    Holds the writer lock of ``path`` (``operation`` names the holder; waiting follows
    ``config.lock_wait``); checks that ``need_bytes`` (what the block will write) plus a
    margin fit on the disk; edits an existing file in place through the rollback journal
    (:mod:`cubefit.journal`) and creates a new one under a temporary name that replaces
    ``path`` at the end.  Failures raise with ``path`` named; a full disk raises
    ``OSError(ENOSPC)`` saying how much was needed.  One edit of a file at a time per
    process (nest the writes in one block).
    """
    cfg = config or get_config()
    path = Path(path)
    key = os.path.realpath(path)
    if key in _active:
        raise RuntimeError(f"{path}: an edit of this file is already open in this process; "
                           "make the writes in that edit")
    with writer_lock(path, operation, config=cfg):
        _active.add(key)
        try:
            if journal_path(path).exists():
                undo(path)                      # we hold the lock: its writer is dead
            require_free(path, need_bytes + EDIT_MARGIN_BYTES, what=operation)
            yield from _transaction(path, cfg, need_bytes, operation)
        finally:
            _active.discard(key)


def _transaction(path: Path, cfg: Config, need_bytes: int, operation: str):
    new = not path.exists()
    target = path.with_name(f".{path.name}.tmp-{os.getpid()}") if new else path
    try:
        if new:
            target.unlink(missing_ok=True)      # a leftover of an earlier process with our pid
            os.close(os.open(target, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC, 0o644))
        fobj = JournaledFile(target, journal=not new)
    except OSError as exc:
        if new:
            target.unlink(missing_ok=True)
        raise _open_error(path, "r+", exc, 1) from exc
    if not new and fobj.orig_size == 0:
        undo(path, fd=fobj.fd)                  # removes the journal just begun
        _refuse_empty(fobj)
    done = False
    try:
        try:
            f = h5py.File(fobj, "w" if new else "r+", **_cache_kw(cfg))
        except OSError as exc:
            raise _open_error(path, "r+", exc, 1) from exc
        try:
            yield f
        except BaseException:
            with contextlib.suppress(Exception):
                f.close()
            raise
        f.close()
        fobj.commit()
        fobj.close()
        if new:
            os.replace(target, path)
        done = True
    except Exception as exc:
        _abandon(fobj, target if new else None)
        clean = _failed_write(path, fobj, need_bytes, operation)
        if clean is None:
            raise
        raise clean from exc
    finally:
        if not done:
            _abandon(fobj, target if new else None)


def _abandon(fobj: JournaledFile, new_file: Path | None) -> None:
    """Undo an edit that did not commit (idempotent)."""
    if fobj.fd >= 0:
        fobj.rollback()
        fobj.close()
    if new_file is not None:
        new_file.unlink(missing_ok=True)


def check_writable(path, need_bytes: int, what: str) -> None:
    """Fail now, before a long computation, if ``what`` could not be written into ``path``
    later: the file must open for writing, its directory take new files (journal, lock)
    and its disk hold ``need_bytes`` plus a margin."""
    path = Path(path)
    probe = path.with_name(f".{path.name}.probe-{os.getpid()}")
    for target, flags in ((path, os.O_RDWR), (probe, os.O_RDWR | os.O_CREAT | os.O_EXCL)):
        try:
            os.close(os.open(target, flags | os.O_CLOEXEC, 0o644))
        except OSError as exc:
            raise type(exc)(exc.errno, f"{path}: {what} could not be written ({exc.strerror}: "
                            f"{target}); nothing was computed — make the file and its directory "
                            "writable or work on a copy") from exc
    probe.unlink()
    require_free(path, need_bytes + EDIT_MARGIN_BYTES, what=what)


# ----------------------------------------------------------------------------- readers

def _text(v) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def state_of(f: h5py.File, config: Config | None = None) -> dict:
    """What multi-open readers rely on, from an open file (see :func:`file_state`)."""
    cfg = config or get_config()
    hc = f["/HyperCube"].attrs if "/HyperCube" in f else {}
    lw = f[cfg.lambda_weights_dset].attrs if cfg.lambda_weights_dset in f else None
    return {"inputs_fingerprint": _text(f.attrs.get("inputs_fingerprint", "")),
            "hypercube norm.mode": _text(hc.get("norm.mode", "")),
            "hypercube conversion": _text(hc.get("norm.converting_to", "")),
            "hypercube complete": bool(hc.get("complete", False)),
            "λ-weights": "" if lw is None else _text(lw.get("created_utc", "user-supplied"))}


def file_state(path, config: Config | None = None) -> dict:
    """The inputs fingerprint, the hypercube's normalisation, pending conversion and
    completeness, and the λ-weights' creation time, read in a fresh open."""
    with open_h5(path, "r", config=config) as f:
        return state_of(f, config)


def check_unchanged(path, before: dict, what: str, config: Config | None = None) -> None:
    """Raise :class:`FileChangedError` if :func:`file_state` differs from ``before``."""
    after = file_state(path, config)
    diffs = [f"{k}: {before[k]!r} → {after[k]!r}" for k in before if after.get(k) != before[k]]
    if diffs:
        holder = lock_holder(path)
        by = f"; it is being written by {describe_holder(holder)}" if holder else ""
        raise FileChangedError(f"{path} changed while {what} was reading it ({'; '.join(diffs)})"
                               f"{by}; run {what} again once the writer has finished")
