"""One writer per file: an exclusive advisory lock on ``<file>.lock`` beside it.

Every operation that writes a CubeFit file (init and populate, λ-weights, hypercube
build and conversion, solve, reconstruction into the file, science outputs) holds
this lock for its whole duration, so two jobs pointed at the same file by mistake
cannot interleave their writes.  The lock is ``fcntl.flock`` on a small file beside
the data file — not HDF5's own file locking, which is switched off for shared file
systems (``HDF5_USE_FILE_LOCKING``) — so the kernel releases it when its holder exits
for any reason, SIGKILL included.  The lock file records who holds it, and a second
writer fails at once with a :class:`FileBusyError` that says so::

    g.h5 is being written by another process: build_hypercube (command `cubefit build
    g.h5`), pid 4711 on host node12, since 2025-05-01T10:00:00Z; wait for it to finish
    (cubefit COMMAND --wait, or CUBEFIT_LOCK_WAIT=inf), or work on a copy of the file

With ``wait`` (default ``Config.lock_wait``, environment ``CUBEFIT_LOCK_WAIT``, in
seconds; ``inf`` waits as long as it takes) the second writer waits instead and logs
once whom it waits for.  A lock file left behind by a killed process is taken over:
the kernel has already released the dead holder's lock, the new holder overwrites
its record (and says so in the log) and removes the file when it is done.

The lock is re-entrant within a thread, so an operation that calls another writing
operation on the same file (a solve that creates the λ-weights, then writes its
result) holds it once.  It is advisory: programs that ignore it (h5py by hand) are
not excluded.  Readers do not take it.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import json
import logging
import math
import os
import socket
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from .config import Config, get_config

log = logging.getLogger(__name__)

__all__ = ["FileBusyError", "writer_lock", "writes_file", "lock_path", "lock_holder",
           "remove_stale_lock", "describe_holder"]

_POLL_MAX_S = 1.0
_UNSUPPORTED = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)


class FileBusyError(BlockingIOError):
    """Another process (or thread) is writing the file; the message names the holder."""


def lock_path(path) -> Path:
    """The lock file of ``path``: ``<file>.lock`` in the same directory."""
    p = Path(path)
    return p.with_name(p.name + ".lock")


@dataclass
class _Held:
    fd: int
    count: int
    thread: int
    pid: int


_held: dict[str, _Held] = {}
_registry = threading.Lock()


def _key(path) -> str:
    return os.path.realpath(path)


def _now_utc() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _record(operation: str) -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid(), "operation": operation,
            "command": " ".join([Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "python"]
                                + sys.argv[1:])[:300],
            "since": _now_utc()}


def _read_record(lock: Path) -> dict | None:
    try:
        text = lock.read_text()
        return json.loads(text) if text.strip() else None
    except (OSError, ValueError):
        return None


def _alive(rec: dict) -> bool:
    """Whether the holder recorded in ``rec`` may still run (unknown hosts count as alive)."""
    if rec.get("host") != socket.gethostname():
        return True
    try:
        os.kill(int(rec.get("pid", -1)), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError, OverflowError):
        return True
    return True


def describe_holder(rec: dict | None) -> str:
    """``operation (command `…`), pid N on host H, since T`` of a lock record."""
    if not rec:
        return "an unknown process (its lock record is being written)"
    return (f"{rec.get('operation', '?')} (command `{rec.get('command', '?')}`), pid "
            f"{rec.get('pid', '?')} on host {rec.get('host', '?')}, since {rec.get('since', '?')}")


def lock_holder(path) -> dict | None:
    """The record of the process holding the lock of ``path``, or None when no live
    process holds it (on this host; a holder on another host is taken as alive)."""
    lock = lock_path(path)
    with _registry:
        held = _held.get(_key(path))
    if held is not None and held.pid == os.getpid():
        return _read_record(lock)
    rec = _read_record(lock)
    return rec if rec is not None and _alive(rec) else None


def _busy_error(path: Path, rec: dict | None, waited: float) -> FileBusyError:
    after = f" (waited {waited:.0f} s)" if waited > 0 else ""
    return FileBusyError(errno.EAGAIN,
                         f"{path} is being written by another process: {describe_holder(rec)}"
                         f"{after}; wait for it to finish (cubefit COMMAND --wait, or "
                         "CUBEFIT_LOCK_WAIT=inf), or work on a copy of the file")


def _open_lock_file(path: Path, lock: Path) -> int:
    try:
        return os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise type(exc)(exc.errno, f"{path}: cannot create its lock file {lock.name} beside it "
                        f"({exc.strerror}); writing {path.name} needs a writable directory — make "
                        f"{path.parent} writable or work on a copy elsewhere") from exc


def _try_flock(fd: int) -> bool | None:
    """True: locked; False: held by someone else; None: the file system has no flock."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    except OSError as exc:
        if exc.errno in _UNSUPPORTED:
            return None
        raise


def _still_linked(fd: int, lock: Path) -> bool:
    """After flock: is ``fd`` still the file at ``lock`` (a releasing holder unlinks it)?"""
    try:
        return os.fstat(fd).st_ino == os.stat(lock).st_ino
    except FileNotFoundError:
        return False


def _acquire(path: Path, operation: str, wait_s: float) -> int:
    lock = lock_path(path)
    t0 = time.monotonic()
    delay, announced = 0.05, False
    while True:
        fd = _open_lock_file(path, lock)
        got = _try_flock(fd)
        if got is None:
            log.warning("%s: the file system does not support flock; a second writer of this "
                        "file would not be stopped", path)
        if got is not False:
            if not _still_linked(fd, lock):       # unlinked by a releasing holder: retry
                os.close(fd)
                continue
            old = _read_record(lock)
            if old and (old.get("host"), old.get("pid")) != (socket.gethostname(), os.getpid()):
                log.info("%s: took over the lock left by %s (no longer running)", path,
                         describe_holder(old))
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(_record(operation)).encode(), 0)
            return fd
        os.close(fd)
        waited = time.monotonic() - t0
        rec = _read_record(lock)
        if waited >= wait_s:
            raise _busy_error(path, rec, waited if wait_s > 0 else 0.0)
        if not announced:
            log.info("%s: waiting for %s to finish", path, describe_holder(rec))
            announced = True
        time.sleep(min(delay, max(wait_s - waited, 0.0)))
        delay = min(2 * delay, _POLL_MAX_S)


@contextlib.contextmanager
def writer_lock(path, operation: str, *, wait: float | bool | None = None,
                config: Config | None = None):
    """Hold the exclusive writer lock of ``path`` for the block (module docstring).

    ``operation`` names what the holder does (shown to a second writer).  ``wait``:
    seconds to wait for another writer (``True`` = as long as it takes, ``False`` or
    0 = fail at once); default ``config.lock_wait``.  Raises :class:`FileBusyError`
    naming the holder when the file stays busy.
    """
    path = Path(path)
    if wait is None:
        wait = (config or get_config()).lock_wait
    wait_s = math.inf if wait is True else float(wait or 0.0)
    key = _key(path)
    me = threading.get_ident()
    with _registry:
        held = _held.get(key)
        if held is not None and held.pid == os.getpid() and held.thread == me:
            held.count += 1
            reentered = True
        else:
            reentered = False
    if not reentered:
        fd = _acquire(path, operation, wait_s)
        with _registry:
            _held[key] = held = _Held(fd, 1, me, os.getpid())
    try:
        yield
    finally:
        with _registry:
            held.count -= 1
            done = held.count == 0
            if done:
                del _held[key]
        if done:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(lock_path(path))   # while still locked: see _still_linked
            os.close(held.fd)


def remove_stale_lock(path) -> None:
    """Remove ``<file>.lock`` when it records a process of this host that no longer runs
    and nobody holds it (a reader tidying up after a killed writer)."""
    lock = lock_path(path)
    rec = _read_record(lock)
    if rec is None or _alive(rec):
        return
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return
    try:
        if _try_flock(fd) and _still_linked(fd, lock):
            os.unlink(lock)
            log.info("%s: removed the lock file left by %s", path, describe_holder(rec))
    except OSError:
        pass
    finally:
        os.close(fd)


def writes_file(operation: str):
    """Decorator: the function writes the file given as its first argument (a path, or
    an object with ``.path`` and ``.config`` such as ``H5Manager``) and holds its writer
    lock for the whole call; ``config=`` (keyword) or ``.config`` gives ``lock_wait``."""
    def decorate(fn):
        @functools.wraps(fn)
        def wrapper(target, *args, **kwargs):
            if isinstance(target, (str, os.PathLike)):
                path, cfg = target, kwargs.get("config")
            else:
                path, cfg = target.path, getattr(target, "config", None)
            with writer_lock(path, operation, config=cfg):
                return fn(target, *args, **kwargs)
        return wrapper
    return decorate
