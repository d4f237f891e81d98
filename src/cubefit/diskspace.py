"""Free space: refuse a write that cannot fit, say which device is full, keep results that
could not be written.

A write that runs out of space half-way is the worst way to learn that a disk is full,
so the writers check first (:func:`require_free`, with ``shutil.disk_usage``) and fail
with ``OSError(ENOSPC)``::

    no space left on device /scratch (file system of /scratch/run1/g.h5): need ≈ 812.0 MiB,
    64.3 MiB free; g.h5 was left as it was — free some space or move the file

The check is an estimate (another process may fill the disk meanwhile), so the writers
also turn an ENOSPC raised during the write into the same message
(:func:`no_space_error`).  A solution that could not be written is saved beside the file,
or in the temporary directory when that fails too (:func:`save_fallback`).
"""
from __future__ import annotations

import errno
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

__all__ = ["MIB", "free_bytes", "mount_point", "no_space_error", "require_free", "save_fallback"]

MIB = 2**20
EDIT_MARGIN_BYTES = 1 * MIB
"""Space an edit needs beyond its data: HDF5 metadata, the journal of overwritten pages."""


def mount_point(path) -> Path:
    """The mount point of the file system holding ``path`` (or its nearest existing parent)."""
    p = Path(os.path.abspath(path))
    while not p.exists():
        p = p.parent
    while not os.path.ismount(p) and p != p.parent:
        p = p.parent
    return p


def free_bytes(path) -> int:
    """Bytes available to this user on the file system of ``path``."""
    p = Path(os.path.abspath(path))
    while not p.exists():
        p = p.parent
    return shutil.disk_usage(p).free


def no_space_error(path, need_bytes: float, what: str | None = None, *,
                   kept: str = "was left as it was") -> OSError:
    """``OSError(ENOSPC)`` naming the device, what needed the space, how much, the space
    free and what became of the file (``kept``)."""
    path = Path(path)
    for_what = f" for {what}" if what else ""
    return OSError(errno.ENOSPC,
                   f"no space left on device {mount_point(path)} (file system of {path}){for_what}: "
                   f"need ≈ {need_bytes / MIB:.1f} MiB, {free_bytes(path) / MIB:.1f} MiB free; "
                   f"{path.name} {kept} — free some space or move the file")


def require_free(path, need_bytes: float, what: str | None = None) -> None:
    """Raise :func:`no_space_error` unless ``need_bytes`` fit on the file system of ``path``."""
    if need_bytes > free_bytes(path):
        raise no_space_error(path, need_bytes, what)


def save_fallback(path, name: str, array) -> Path:
    """Save ``array`` that could not be written into ``path`` as ``.npy``; return where.

    Tries ``<file>.<name>.<UTC time>.npy`` beside the file, then the same name in the
    temporary directory (``$TMPDIR``).  Raises the last ``OSError`` if neither works.
    """
    path = Path(path)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    fname = f"{path.name}.{name.strip('/').replace('/', '_')}.{stamp}.npy"
    error = None
    for folder in (path.parent, Path(tempfile.gettempdir())):
        target = folder / fname
        try:
            np.save(target, np.asarray(array))
            return target
        except OSError as exc:
            error = exc
            target.unlink(missing_ok=True)
            log.warning("could not save %s to %s: %s", name, target, exc)
    raise error
