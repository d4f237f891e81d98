"""Crash-safe in-place edits of an HDF5 file: a rollback journal under h5py's file-object driver.

An edit opens the file through :class:`JournaledFile`, a Python file object that HDF5
reads and writes through (h5py's ``fileobj`` driver):

* bytes written past the file's original end go straight to disk — that space is new
  and nothing in the original file points to it;
* bytes that would overwrite the original file (HDF5 metadata, the space of a deleted
  dataset reused) are kept in memory, page by page, and every read sees them.

:meth:`JournaledFile.commit` (called after h5py has closed the file) then

1. fsyncs the new bytes;
2. appends the *original* content of every page about to be overwritten to the journal
   ``<file>.journal``, seals it with a CRC32 and fsyncs it;
3. writes the pages into the file and fsyncs it;
4. removes the journal — the commit point.

The journal is created (holding the original size, fsync'd) before anything is
written.  If the process dies at any moment, :func:`undo` — run by the next open of
the file (:mod:`cubefit.h5io`) — restores the file byte for byte: a sealed journal's
pages are written back, an unsealed one means no original byte was touched; then the
file is truncated to its original size and the journal removed.  An edit therefore
costs what it writes (the new data once, overwritten metadata pages twice), whatever
the size of the file, and a file is always the old one or the new one, never torn.

A failed write or read (``ENOSPC``, ``EIO``) is recorded, never raised into HDF5 (an
exception inside a driver callback can crash the process): what HDF5 writes afterwards
is kept in memory so that the edit runs to its end consistently, then
:meth:`commit` raises the error and :meth:`rollback` restores the original.
"""
from __future__ import annotations

import contextlib
import logging
import os
import struct
import zlib
from pathlib import Path

log = logging.getLogger(__name__)

__all__ = ["JournaledFile", "journal_path", "journal_sealed", "undo"]

PAGE = 4096
_MAGIC = b"CUBEFIT-JOURNAL-1\n"
_HEAD = struct.Struct("<QQQ")        # original size, st_dev, st_ino of the file
_REC = struct.Struct("<QQ")          # offset, length (followed by the original bytes)
_SEAL = struct.Struct("<4sI")        # b"SEAL", CRC32 of everything before it


def journal_path(path) -> Path:
    """The rollback journal of ``path``: ``<file>.journal`` beside it."""
    p = Path(path)
    return p.with_name(p.name + ".journal")


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _pwrite_all(fd: int, data, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


class JournaledFile:
    """File object for ``h5py.File(obj, mode)`` that keeps ``path`` intact until :meth:`commit`.

    ``journal=False`` writes straight through (a new file at a temporary name, removed
    on failure; or an in-place writer whose own protocol is crash-safe): it only keeps
    a failed write from crashing HDF5.  ``bytes_written`` counts what HDF5 wrote;
    ``bytes_journaled`` the original bytes saved at commit.
    """

    def __init__(self, path, *, journal: bool = True):
        self.path = Path(path)
        self.name = str(self.path)            # what h5py reports as File.filename
        self.journal = journal_path(self.path) if journal else None
        self.fd = os.open(self.path, os.O_RDWR | os.O_CLOEXEC)
        st = os.fstat(self.fd)
        self.orig_size = st.st_size
        self.pos = 0
        self.pages: dict[int, bytearray] = {}     # overwritten original pages, until commit
        self.spill: dict[int, bytearray] = {}     # everything written after a failed write
        self.error: OSError | None = None
        self.bytes_written = 0
        self.bytes_journaled = 0
        if self.journal is not None:
            try:
                self._begin(st)
            except BaseException:
                os.close(self.fd)
                raise

    @property
    def bytes_wanted(self) -> int:
        """Bytes HDF5 wrote or tried to write (after a failure, those kept in memory)."""
        return self.bytes_written + PAGE * len(self.spill)

    def __repr__(self) -> str:
        return self.name

    # -- journal --------------------------------------------------------------------
    def _begin(self, st) -> None:
        fd = os.open(self.journal, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            _pwrite_all(fd, _MAGIC + _HEAD.pack(self.orig_size, st.st_dev, st.st_ino), 0)
            os.fsync(fd)
        except BaseException:
            self.journal.unlink(missing_ok=True)
            raise
        finally:
            os.close(fd)
        _fsync_dir(self.journal.parent)

    # -- file-object protocol used by h5py's fileobj driver ---------------------------
    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        if whence == os.SEEK_SET:
            self.pos = offset
        elif whence == os.SEEK_CUR:
            self.pos += offset
        else:
            self.pos = os.fstat(self.fd).st_size + offset
        return self.pos

    def tell(self) -> int:
        return self.pos

    def readinto(self, buf) -> int:
        view = memoryview(buf).cast("B")
        try:
            if hasattr(os, "preadv"):     # straight into HDF5's buffer
                got = n = os.preadv(self.fd, [view], self.pos)
            else:
                data = os.pread(self.fd, len(view), self.pos)
                got = n = len(data)
                view[:n] = data
        except OSError as exc:            # never raise into HDF5: it reports a short read
            self.error = self.error or exc
            return 0
        if self.spill:                    # after a failed write: HDF5 reads what it wrote
            n = len(view)
            view[got:] = bytes(n - got)
        self._patch(view, self.pages, min(self.pos + n, self.orig_size))
        if self.spill:
            self._patch(view, self.spill, self.pos + n)
        self.pos += n
        return n

    def _patch(self, view, pages: dict, end: int) -> None:
        """Copy the parts of ``pages`` inside ``[pos, end)`` over ``view`` (which starts at pos)."""
        for p in range(self.pos // PAGE, -(-end // PAGE)) if self.pos < end else ():
            page = pages.get(p)
            if page is not None:
                lo, hi = max(self.pos, p * PAGE), min(end, p * PAGE + len(page))
                view[lo - self.pos:hi - self.pos] = page[lo - p * PAGE:hi - p * PAGE]

    def read(self, size: int = -1) -> bytes:
        buf = bytearray(size if size >= 0 else max(os.fstat(self.fd).st_size - self.pos, 0))
        return bytes(buf[:self.readinto(buf)])

    def write(self, data) -> int:
        """Never raises into HDF5 (an exception inside a driver callback can crash it): after
        a failed write everything HDF5 still writes is kept in memory (``spill``), so the
        edit runs to its end consistently; :meth:`commit` then raises the error."""
        view = memoryview(data).cast("B")
        n = len(view)
        if self.error is None:
            try:
                protect = self.orig_size if self.journal is not None else 0
                split = min(max(protect - self.pos, 0), n)
                if split:
                    self._overlay(self.pages, self.pos, view[:split], self.orig_size)
                if split < n:
                    _pwrite_all(self.fd, view[split:], self.pos + split)
                self.bytes_written += n
            except OSError as exc:
                self.error = exc
        if self.error is not None:
            self._overlay(self.spill, self.pos, view, None)
        self.pos += n
        return n

    def _overlay(self, pages: dict, offset: int, view, limit: int | None) -> None:
        """Put bytes into memory pages (first filled from the file), clipped at ``limit``."""
        end = offset + len(view)
        for p in range(offset // PAGE, -(-end // PAGE)):
            start = p * PAGE
            page = pages.get(p)
            if page is None:
                size = PAGE if limit is None else min(PAGE, limit - start)
                page = bytearray(os.pread(self.fd, size, start)) if self.error is None else \
                    bytearray(self._read_quiet(size, start))
                page += bytes(size - len(page))
                pages[p] = page
            lo, hi = max(offset, start), min(end, start + len(page))
            page[lo - start:hi - start] = view[lo - offset:hi - offset]

    def _read_quiet(self, size: int, offset: int) -> bytes:
        """The current content (memory pages first) of a range, without raising."""
        buf = bytearray(size)
        try:
            data = os.pread(self.fd, size, offset)
        except OSError:
            data = b""
        buf[:len(data)] = data
        saved, self.pos = self.pos, offset
        self._patch(memoryview(buf), self.pages, min(offset + size, self.orig_size))
        self.pos = saved
        return bytes(buf)

    def truncate(self, size: int | None = None) -> int:
        size = self.pos if size is None else size
        if self.error is None:
            # Never below the original size before the commit; HDF5 accepts a file that
            # extends past its end-of-allocation.
            try:
                os.ftruncate(self.fd, max(size, self.orig_size) if self.journal is not None else size)
            except OSError as exc:
                self.error = exc
        return size

    def flush(self) -> None:
        """Nothing to do: the bytes reach the disk at :meth:`commit`."""

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    # -- ending ---------------------------------------------------------------------
    def commit(self) -> None:
        """Make the edit durable (module docstring); raises the recorded write error, if any
        (a failure here is recorded too)."""
        if self.error is not None:
            raise self.error
        try:
            self._commit()
        except OSError as exc:
            self.error = exc
            raise

    def _commit(self) -> None:
        os.fsync(self.fd)                 # the new bytes, before anything points to them
        if self.journal is None:
            return
        if self.pages:
            body = bytearray()
            for p in sorted(self.pages):
                original = os.pread(self.fd, len(self.pages[p]), p * PAGE)
                body += _REC.pack(p * PAGE, len(original)) + original
            self.bytes_journaled = len(body)
            with open(self.journal, "rb") as fh:
                head = fh.read()
            crc = zlib.crc32(bytes(body), zlib.crc32(head))
            fd = os.open(self.journal, os.O_WRONLY | os.O_CLOEXEC)
            try:
                _pwrite_all(fd, bytes(body) + _SEAL.pack(b"SEAL", crc), len(head))
                os.fsync(fd)
            finally:
                os.close(fd)
            for p in sorted(self.pages):
                _pwrite_all(self.fd, self.pages[p], p * PAGE)
            os.fsync(self.fd)
        os.unlink(self.journal)           # the commit point
        _fsync_dir(self.journal.parent)
        self.journal = None

    def rollback(self) -> None:
        """Restore the original file (nothing of the edit remains)."""
        self.pages.clear()
        if self.journal is not None and self.journal.exists():
            undo(self.path, fd=self.fd)
        self.journal = None

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _parse(raw: bytes):
    """``(orig_size, dev, ino, records or None)``; records None when the journal is not sealed."""
    if not raw.startswith(_MAGIC) or len(raw) < len(_MAGIC) + _HEAD.size:
        return None
    orig, dev, ino = _HEAD.unpack_from(raw, len(_MAGIC))
    pos, records = len(_MAGIC) + _HEAD.size, []
    if len(raw) < pos + _SEAL.size:
        return orig, dev, ino, None
    tag, crc = _SEAL.unpack_from(raw, len(raw) - _SEAL.size)
    if tag != b"SEAL" or zlib.crc32(raw[:-_SEAL.size]) != crc:
        return orig, dev, ino, None
    while pos < len(raw) - _SEAL.size:
        off, n = _REC.unpack_from(raw, pos)
        pos += _REC.size
        records.append((off, raw[pos:pos + n]))
        pos += n
    return orig, dev, ino, records


def journal_sealed(path) -> bool:
    """Whether ``path`` has a sealed journal (its writer is, or was, writing pages back)."""
    try:
        parsed = _parse(journal_path(path).read_bytes())
    except FileNotFoundError:
        return False
    return parsed is not None and parsed[3] is not None


def undo(path, *, fd: int | None = None) -> bool:
    """Roll ``path`` back to its state before an interrupted edit; True if anything was done.

    The caller makes sure the edit's process is gone (it holds the writer lock).  A
    journal that does not belong to this file (the file was replaced meanwhile) or
    cannot be parsed is removed with a warning and the file left alone.
    """
    path = Path(path)
    jpath = journal_path(path)
    try:
        raw = jpath.read_bytes()
    except FileNotFoundError:
        return False
    parsed = _parse(raw)
    own_fd = fd is None
    if own_fd:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if len(raw) < len(_MAGIC) + _HEAD.size and _MAGIC.startswith(raw[:len(_MAGIC)]):
            log.info("%s: removed the journal of an edit killed before it wrote anything", path)
        elif parsed is None or (parsed[1], parsed[2]) != (st.st_dev, st.st_ino):
            log.warning("%s: removed the journal %s, which does not belong to this file",
                        path, jpath.name)
        else:
            orig, _, _, records = parsed
            for off, data in records or ():
                _pwrite_all(fd, data, off)
            os.ftruncate(fd, orig)
            os.fsync(fd)
            log.info("%s: rolled back an interrupted edit (%s)", path,
                     f"{len(records)} pages restored" if records else "no page had been overwritten")
    finally:
        if own_fd:
            os.close(fd)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(jpath)
    _fsync_dir(jpath.parent)
    return True
