"""Fit tracking: a non-blocking sidecar HDF5 file that a dashboard can watch live.

The solver calls :class:`FitTracker`; the tracker hands each record to a bounded
``multiprocessing`` queue with ``put_nowait`` and returns at once.  A separate
writer process owns the sidecar ``<file>.fit.<pid>.<ts>.h5`` next to the main
file, writes in SWMR mode (single writer, many readers) and flushes every
``CUBEFIT_TRACKER_FLUSH_EVERY`` messages or ``CUBEFIT_TRACKER_FLUSH_SEC``
seconds, so slow disks never stall the fit.  When the queue is full a record is
dropped and counted, never waited for.

Sidecar layout (units and meaning in each dataset's attributes, see
:data:`cubefit.store.SCHEMA`)::

    /Tracker/steps              (N,)  iteration, passes, wall_s, cost, rmse, optimality
    /Tracker/batch_rmse         (M,)  sample, wall_s, rmse, rmse_ewma  (every stride-th sample)
    /Tracker/progress           (K,)  wall_s, fraction, message
    /Tracker/snapshots/best     (2, n)  x with the lowest cost sent so far (double-buffered)
    /Tracker/snapshots/last     (2, n)  most recent x (double-buffered)
    /Tracker/snapshots/history  (keep_history, n)  ring of the latest "last" snapshots
    /Tracker/snapshots/<kind>_info       one row per slot: seq, iteration, cost, wall_s, crc

``wall_s`` is seconds since the tracker was created, measured in the solver process
(so writer latency does not distort it).  Root attributes: the main file, the
solver pid, start time, the knobs in force, the caller's ``meta``, and at the end
``status`` ("closed", "failed (<Exception>)", "orphaned" when the solver died
without closing, "terminated" when the writer got SIGTERM; "running" remains if
the writer itself was killed) and ``dropped`` (records not delivered; -1 unknown).

Snapshots are crash-safe: every snapshot is flushed at once, goes to the older of
two slots, and carries a CRC32 of its bytes, so a writer killed mid-flush leaves
the previous snapshot intact and :func:`latest_snapshot` recognises the torn one.
That is how a killed run resumes::

    x0, meta = latest_snapshot("galaxy.h5", kind="last")   # newest sidecar of galaxy.h5

The writer uses the ``spawn`` start method by default (``FITTRACKER_START``) and is
started without the parent's ``__main__`` (:mod:`cubefit.parallel`), so a plain script
without an ``if __name__ == "__main__":`` guard runs once.
"""
from __future__ import annotations

import json
import logging
import math
import multiprocessing as mp
import os
import queue
import re
import signal
import time
import warnings
import zlib
from datetime import datetime, timezone
from pathlib import Path
from typing import NamedTuple

import numpy as np

from . import __version__
from .config import Config, get_config
from .parallel import start_without_main
from .store import open_h5, write_dataset

log = logging.getLogger(__name__)

__all__ = ["FitTracker", "TrackerResult", "EWMA_ALPHA", "find_sidecars", "read_history",
           "read_snapshots", "latest_snapshot"]

EWMA_ALPHA = 0.05
"""Default smoothing constant of the batch-RMSE EWMA, per raw sample:
``ewma_k = α·rmse_k + (1 - α)·ewma_{k-1}``, ``ewma_0 = rmse_0``.  α = 0.05 averages
over ≈ 1/α = 20 batches (half-life ln 2/α ≈ 14 batches): long enough to smooth the
tile-to-tile scatter of batch RMSE, short enough to follow the fit's trend."""

MESSAGE_BYTES = 200
"""Progress messages are stored as fixed-width UTF-8 of this many bytes (truncated):
fixed width because SWMR readers cannot follow variable-length strings reliably."""

_LIVENESS_CHECK_S = 0.5  # how often the solver side looks whether the writer still runs
_POLL_S = 0.5            # longest the writer blocks on the queue before checking its parent
_DRAIN_S = 5.0          # longest an orphaned or terminated writer keeps reading the queue
_CHUNK_ROWS = 512        # rows per chunk of the extendable history datasets

STEP_DTYPE = np.dtype([("iteration", "<i8"), ("passes", "<i8"), ("wall_s", "<f8"), ("cost", "<f8"),
                       ("rmse", "<f8"), ("optimality", "<f8")])
BATCH_DTYPE = np.dtype([("sample", "<i8"), ("wall_s", "<f8"), ("rmse", "<f8"), ("rmse_ewma", "<f8")])
PROGRESS_DTYPE = np.dtype([("wall_s", "<f8"), ("fraction", "<f8"), ("message", f"S{MESSAGE_BYTES}")])
SNAP_INFO_DTYPE = np.dtype([("seq", "<i8"), ("iteration", "<i8"), ("cost", "<f8"), ("wall_s", "<f8"),
                            ("crc", "<u4")])

_SIDECAR_RE = re.compile(r"\.fit\.(\d+)\.(\d{8}T\d{6}\.\d{6}Z)(?:-(\d+))?\.h5$")


class TrackerResult(NamedTuple):
    """What :meth:`FitTracker.close` returns."""

    path: Path
    """The sidecar file."""
    dropped: int
    """Records that were not delivered to the writer (queue full, or writer gone)."""


# ----------------------------------------------------------------------------- solver side

class FitTracker:
    """Stream fit metrics and snapshots of ``x`` to a sidecar HDF5 file without blocking.

    Parameters
    ----------
    main_h5_path : the fit's main HDF5 file; the sidecar goes next to it as
        ``<name>.fit.<pid>.<UTC timestamp, µs>.h5`` (a new file per tracker; an
        existing name is never reused).  The main file itself is not opened.
    config : settings (default :func:`cubefit.config.get_config`): ``fittracker_start``,
        ``tracker_qsize``, ``tracker_flush_every``, ``tracker_flush_sec``, ``rmse_stride``.
    x_size : length of the solution vector ``x`` (``C·P``); needed for snapshots.
    snapshot_every : ``snapshot(..., kind="auto")`` acts at most once per this many
        iterations (snapshots of a large ``x`` are the expensive records).
    keep_history : also keep the latest this-many "last" snapshots in a ring (0: none).
    ewma_alpha : EWMA smoothing constant of the batch RMSE, see :data:`EWMA_ALPHA`.
    meta : dict stored as JSON in the root attribute ``meta_json`` (e.g. solver name,
        settings); values JSON cannot hold are stored as their ``str``.

    Use it as a context manager, or call :meth:`close`.  The log methods are meant for
    one thread.  They never block and never fail because of the writer: if the writer
    process dies the tracker warns once and becomes a no-op (bad arguments, and logging
    after :meth:`close`, are still errors).
    """

    def __init__(self, main_h5_path, *, config: Config | None = None, x_size: int | None = None,
                 snapshot_every: int = 1, keep_history: int = 0, ewma_alpha: float = EWMA_ALPHA,
                 meta: dict | None = None):
        cfg = config or get_config()
        _check_knobs(cfg)
        if x_size is not None and (int(x_size) != x_size or x_size < 1):
            raise ValueError(f"FitTracker: x_size must be a positive integer (C·P), got {x_size!r}")
        if int(snapshot_every) != snapshot_every or snapshot_every < 1:
            raise ValueError(f"FitTracker: snapshot_every must be an integer ≥ 1, got {snapshot_every!r}")
        if int(keep_history) != keep_history or keep_history < 0:
            raise ValueError(f"FitTracker: keep_history must be an integer ≥ 0, got {keep_history!r}")
        if not 0.0 < ewma_alpha <= 1.0:
            raise ValueError(f"FitTracker: ewma_alpha must lie in (0, 1], got {ewma_alpha!r}")
        self.main_path = Path(main_h5_path)
        self.x_size = None if x_size is None else int(x_size)
        self.snapshot_every = int(snapshot_every)
        self.keep_history = int(keep_history)
        self.ewma_alpha = float(ewma_alpha)
        self.stride = int(cfg.rmse_stride)

        self._t0 = time.perf_counter()
        self._dropped = 0
        self._n_batch = 0           # raw batch-RMSE samples seen (before striding)
        self._ewma = float("nan")
        self._best_cost = float("inf")  # lowest cost whose snapshot was enqueued
        self._last_auto_it = None
        self._closed = False
        self._result = None

        attrs = {"main_file": str(self.main_path), "solver_pid": os.getpid(),
                 "start_utc": datetime.now(timezone.utc).isoformat(), "cubefit_version": __version__,
                 "x_size": -1 if self.x_size is None else self.x_size,
                 "rmse_stride": self.stride, "ewma_alpha": self.ewma_alpha,
                 "snapshot_every": self.snapshot_every, "keep_history": self.keep_history,
                 "tracker_qsize": int(cfg.tracker_qsize), "tracker_flush_every": int(cfg.tracker_flush_every),
                 "tracker_flush_sec": float(cfg.tracker_flush_sec),
                 "meta_json": json.dumps(meta or {}, default=str)}
        self.path = _reserve_sidecar(self.main_path)
        method = _start_method(cfg.fittracker_start)
        ctx = mp.get_context(method)
        attrs["start_method"] = method
        self._q = ctx.Queue(maxsize=int(cfg.tracker_qsize))
        # Without this, a parent exiting while the writer is gone would wait forever for the
        # queue's feeder thread; close() does not need it because it waits for the writer.
        self._q.cancel_join_thread()
        self._proc = ctx.Process(target=_writer_main, name="cubefit-fittracker", daemon=True,
                                 args=(self.path, self._q, cfg, attrs, self.x_size, self.keep_history))
        try:
            start_without_main(self._proc.start)
        except Exception as exc:  # e.g. inside a daemonic pool worker, which may not have children
            warnings.warn(f"FitTracker: cannot start the writer process ({exc!r}); tracking to "
                          f"{self.path} is disabled for this run", RuntimeWarning, stacklevel=2)
            self._proc = None
            self.path.unlink(missing_ok=True)
        self._dead = self._proc is None
        self._next_check = time.monotonic() + _LIVENESS_CHECK_S

    # -- public API ------------------------------------------------------------------------
    @property
    def dropped(self) -> int:
        """Records not delivered so far (queue full or writer gone)."""
        return self._dropped

    @property
    def writer_pid(self) -> int | None:
        """Process id of the writer (None if it could not be started)."""
        return None if self._proc is None else self._proc.pid

    def log_step(self, it: int, cost: float, rmse: float | None = None, optimality: float | None = None,
                 passes: int | None = None) -> bool:
        """Record one solver iteration: ``it`` (iteration number), ``cost`` (objective
        f(x)), ``rmse`` (weighted residual RMSE), ``optimality`` (relative projected-gradient
        norm), ``passes`` (operator applications so far).  Missing values are stored as NaN
        (``passes``: -1).  Returns whether the record was enqueued."""
        row = (int(it), -1 if passes is None else int(passes), self._wall(), float(cost),
               _nan(rmse), _nan(optimality))
        return self._put(("step", row))

    def log_batch_rmse(self, rmse: float) -> bool:
        """Record one sample of the high-frequency batch RMSE stream.

        Every sample updates the EWMA; only every ``rmse_stride``-th sample (the 0th,
        the stride-th, …) is enqueued, with its running sample index and the EWMA.
        Returns whether a record was enqueued.
        """
        r = float(rmse)
        if math.isfinite(r):  # a NaN batch must not poison the smoothed curve for good
            self._ewma = r if math.isnan(self._ewma) else \
                self.ewma_alpha * r + (1.0 - self.ewma_alpha) * self._ewma
        k = self._n_batch
        self._n_batch += 1
        if k % self.stride:
            return False
        return self._put(("batch", (k, self._wall(), r, self._ewma)))

    def progress(self, frac: float, msg: str = "") -> bool:
        """Record progress ``frac`` in [0, 1] with a short message (≤ 200 UTF-8 bytes kept)."""
        frac = float(frac)
        if not 0.0 <= frac <= 1.0:
            raise ValueError(f"FitTracker.progress: fraction must lie in [0, 1], got {frac!r}")
        return self._put(("progress", (self._wall(), frac, str(msg).encode()[:MESSAGE_BYTES])))

    def snapshot(self, x, cost: float, it: int, kind: str = "auto") -> bool:
        """Store a copy of ``x`` (any shape with ``x_size`` elements, kept flat float64).

        ``kind="last"`` overwrites the "last" snapshot (and appends to the history ring);
        ``"best"`` overwrites "best" only if ``cost`` is lower than every best snapshot
        sent so far; ``"auto"`` acts at most once per ``snapshot_every`` iterations and
        then does "last" plus "best" when the cost improved.  Returns whether ``x`` was
        enqueued.  A dropped snapshot does not count as best, so the next improvement
        is sent.
        """
        if kind not in ("auto", "best", "last"):
            raise ValueError(f"FitTracker.snapshot: kind must be 'auto', 'best' or 'last', got {kind!r}")
        if self.x_size is None:
            raise ValueError("FitTracker.snapshot: this tracker was created without x_size; "
                             "pass FitTracker(..., x_size=C*P) to store snapshots")
        # A copy, not a view: the queue pickles in a background thread, and the solver
        # goes on updating x in place.
        xv = np.array(x, dtype=np.float64, copy=True).reshape(-1)
        if xv.size != self.x_size:
            raise ValueError(f"FitTracker.snapshot: x has {xv.size} elements, the tracker expects "
                             f"x_size={self.x_size}")
        cost, it = float(cost), int(it)
        better = cost < self._best_cost
        if kind == "auto":
            if self._last_auto_it is not None and it - self._last_auto_it < self.snapshot_every:
                return False
            self._last_auto_it = it
            kinds = ("last", "best") if better else ("last",)
        elif kind == "best":
            if not better:
                return False
            kinds = ("best",)
        else:
            kinds = ("last",)
        sent = self._put(("snap", kinds, it, cost, self._wall(), xv))
        if sent and "best" in kinds:
            self._best_cost = cost
        return sent

    def close(self, status: str = "closed", timeout: float = 60.0) -> TrackerResult:
        """Deliver what is queued, stop the writer and report ``(path, dropped)``.

        Waits up to ``timeout`` seconds for the writer to finish (it drains the queue
        first); idempotent.  The drop count and ``status`` become sidecar attributes.
        """
        if self._closed:
            return self._result
        self._closed = True
        if not self._dead and not self._proc.is_alive():
            self._writer_died()
        if not self._dead:
            deadline = time.monotonic() + timeout
            try:
                # The only blocking put: the end of the run may wait for the writer to drain.
                self._q.put(("close", self._dropped, status), timeout=timeout)
                self._proc.join(max(deadline - time.monotonic(), 0.0))
            except queue.Full:
                pass
            if self._proc.is_alive():
                warnings.warn(f"FitTracker: writer of {self.path} did not finish within {timeout} s; "
                              "terminating it (its flushed records stay readable)", RuntimeWarning,
                              stacklevel=2)
                self._proc.terminate()
                self._proc.join(5.0)
            elif self._proc.exitcode != 0:
                self._writer_died()
        self._q.close()
        if self._dropped:
            log.warning("FitTracker: %d records were dropped (queue full or writer gone); sidecar %s",
                        self._dropped, self.path)
        self._result = TrackerResult(self.path, self._dropped)
        return self._result

    def __enter__(self) -> "FitTracker":
        return self

    def __exit__(self, exc_type, exc, tb):
        self.close("closed" if exc_type is None else f"failed ({exc_type.__name__})")

    # -- internals -------------------------------------------------------------------------
    def _wall(self) -> float:
        return time.perf_counter() - self._t0

    def _put(self, msg) -> bool:
        if self._closed:
            raise RuntimeError(f"FitTracker for {self.path} is closed")
        now = time.monotonic()
        if not self._dead and now >= self._next_check:
            self._next_check = now + _LIVENESS_CHECK_S
            if not self._proc.is_alive():
                self._writer_died()
        if self._dead:
            self._dropped += 1
            return False
        try:
            self._q.put_nowait(msg)
            return True
        except queue.Full:
            self._dropped += 1
            return False

    def _writer_died(self) -> None:
        if not self._dead:
            self._dead = True
            warnings.warn(f"FitTracker: the writer process of {self.path} exited (code "
                          f"{self._proc.exitcode}); the fit goes on without tracking and records "
                          "from now on are counted as dropped", RuntimeWarning, stacklevel=4)


def _nan(v) -> float:
    return float("nan") if v is None else float(v)


def _check_knobs(cfg: Config) -> None:
    for name, env, ok in (("tracker_qsize", "CUBEFIT_TRACKER_QSIZE", cfg.tracker_qsize >= 1),
                          ("tracker_flush_every", "CUBEFIT_TRACKER_FLUSH_EVERY", cfg.tracker_flush_every >= 1),
                          ("tracker_flush_sec", "CUBEFIT_TRACKER_FLUSH_SEC", cfg.tracker_flush_sec > 0),
                          ("rmse_stride", "CUBEFIT_RMSE_STRIDE", cfg.rmse_stride >= 1)):
        if not ok:
            raise ValueError(f"{env} ({name}) must be positive, got {getattr(cfg, name)!r}")


def _start_method(wanted: str) -> str:
    """``wanted`` if this platform has it, else the best available (spawn, forkserver, fork)."""
    available = mp.get_all_start_methods()
    if wanted in available:
        return wanted
    best = next(m for m in ("spawn", "forkserver", "fork") if m in available)
    warnings.warn(f"FITTRACKER_START={wanted!r} is not available here (have {available}); using {best!r}",
                  RuntimeWarning, stacklevel=3)
    return best


def _reserve_sidecar(main: Path) -> Path:
    """Create an empty, never-before-used sidecar file name next to ``main`` and return it.

    ``O_EXCL`` makes the reservation atomic, so two trackers (threads, processes, or the
    same µs) can never share a file; on a clash a counter suffix is added.
    """
    if not main.parent.is_dir():
        raise FileNotFoundError(f"FitTracker: directory {main.parent} of {main} does not exist")
    ts = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
    n = 0
    while True:
        p = main.with_name(f"{main.name}.fit.{os.getpid()}.{ts}{f'-{n}' if n else ''}.h5")
        try:
            os.close(os.open(p, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
            return p
        except FileExistsError:
            n += 1


# ----------------------------------------------------------------------------- writer side

class _SidecarWriter:
    """The writer process's view of the sidecar: buffered rows, snapshot slots, flushing."""

    def __init__(self, path: Path, cfg: Config, attrs: dict, x_size: int | None, keep_history: int):
        self.cfg = cfg
        self.rows = {"steps": [], "batch_rmse": [], "progress": []}
        self.dtypes = {"steps": STEP_DTYPE, "batch_rmse": BATCH_DTYPE, "progress": PROGRESS_DTYPE}
        self.pending = 0
        self.last_flush = time.monotonic()
        # SWMR cannot create objects, so every dataset exists before swmr_mode is switched on.
        self.f = open_h5(path, "w", config=cfg, libver="latest")
        self.f.attrs.update(attrs)
        self.f.attrs["status"] = "running"
        for name, dt in self.dtypes.items():
            write_dataset(self.f, f"/Tracker/{name}", np.empty(0, dt), maxshape=(None,),
                          chunks=(_CHUNK_ROWS,))
        self.seq = {}
        if x_size is not None:
            slots = {"best": 2, "last": 2, **({"history": keep_history} if keep_history else {})}
            for kind, n in slots.items():
                write_dataset(self.f, f"/Tracker/snapshots/{kind}", np.full((n, x_size), np.nan))
                write_dataset(self.f, f"/Tracker/snapshots/{kind}_info", np.zeros(n, SNAP_INFO_DTYPE))
                self.seq[kind] = 0
        self.f.swmr_mode = True

    def add(self, stream: str, row) -> None:
        self.rows[stream].append(row)
        self.pending += 1
        self.maybe_flush()

    def snapshot(self, kinds, it, cost, wall, x) -> None:
        crc = _crc(x, it, cost)
        for kind in kinds + (("history",) if "last" in kinds and "history" in self.seq else ()):
            self.seq[kind] += 1
            n = self.f[f"/Tracker/snapshots/{kind}"].shape[0]
            slot = (self.seq[kind] - 1) % n  # overwrite the oldest slot, keep the newer intact
            self.f[f"/Tracker/snapshots/{kind}"][slot] = x
            self.f[f"/Tracker/snapshots/{kind}_info"][slot] = (self.seq[kind], it, cost, wall, crc)
        self.flush()  # a resumable state must not wait for the next flush interval

    def maybe_flush(self) -> None:
        if self.pending and (self.pending >= self.cfg.tracker_flush_every
                             or time.monotonic() - self.last_flush >= self.cfg.tracker_flush_sec):
            self.flush()

    def flush(self) -> None:
        for name, rows in self.rows.items():
            if rows:
                ds = self.f[f"/Tracker/{name}"]
                n = ds.shape[0]
                ds.resize((n + len(rows),))
                ds[n:] = np.array(rows, dtype=self.dtypes[name])
                rows.clear()
        self.f.flush()
        self.pending = 0
        self.last_flush = time.monotonic()

    def poll_timeout(self) -> float:
        if not self.pending:
            return _POLL_S
        due = self.last_flush + self.cfg.tracker_flush_sec - time.monotonic()
        return min(_POLL_S, max(due, 0.0))

    def close(self, status: str, dropped: int) -> None:
        self.flush()
        path = self.f.filename
        self.f.close()
        # Attributes cannot be written in SWMR mode: reopen normally for the final word.
        with open_h5(path, "r+", config=self.cfg) as f:
            f.attrs["status"] = status
            f.attrs["dropped"] = dropped
            f.attrs["end_utc"] = datetime.now(timezone.utc).isoformat()


def _writer_main(path, q, cfg, attrs, x_size, keep_history) -> None:
    """Writer process: consume records until "close", the solver's death, or SIGTERM."""
    # Ctrl-C reaches the whole process group; the solver handles it and closes us properly.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(True))
    parent = mp.parent_process()
    w = _SidecarWriter(Path(path), cfg, attrs, x_size, keep_history)
    status, dropped = "orphaned", -1
    while not stop:
        try:
            msg = q.get(timeout=w.poll_timeout())
        except queue.Empty:
            if not parent.is_alive():
                break
            w.maybe_flush()
            continue
        if msg[0] == "close":
            _, dropped, status = msg
            break
        _handle(w, msg)
    else:
        status = "terminated"
    if status in ("orphaned", "terminated"):
        # Keep what already reached the pipe: the solver (or the system) is gone, not its records.
        # Bounded, so a writer told to stop by SIGTERM stops even while records keep coming.
        deadline = time.monotonic() + _DRAIN_S
        while time.monotonic() < deadline:
            try:
                msg = q.get(timeout=0.05)
            except queue.Empty:
                break
            if msg[0] != "close":
                _handle(w, msg)
    w.close(status, dropped)


def _handle(w: _SidecarWriter, msg) -> None:
    if msg[0] == "snap":
        w.snapshot(*msg[1:])
    else:
        w.add({"step": "steps", "batch": "batch_rmse", "progress": "progress"}[msg[0]], msg[1])


def _crc(x: np.ndarray, it: int, cost: float) -> int:
    return zlib.crc32(np.asarray(x, "<f8").tobytes() + np.array([it], "<i8").tobytes()
                      + np.array([cost], "<f8").tobytes())


# ----------------------------------------------------------------------------- readers

def find_sidecars(main_h5_path) -> list[Path]:
    """The sidecars of ``main_h5_path``, newest run first (by the timestamp in the name)."""
    main = Path(main_h5_path)
    found = []
    for p in main.parent.glob(f"{main.name}.fit.*.h5"):
        m = _SIDECAR_RE.search(p.name)
        if m and p.name[:m.start()] == main.name:
            found.append(((m.group(2), int(m.group(3) or 0)), p))
    return [p for _, p in sorted(found, reverse=True)]


def _sidecars(path) -> list[Path]:
    p = Path(path)
    if _SIDECAR_RE.search(p.name):
        return [p]
    found = find_sidecars(p)
    if not found:
        raise FileNotFoundError(f"no fit-tracker sidecar of {p} ({p.name}.fit.<pid>.<ts>.h5) found")
    return found


def _open(sidecar: Path):
    # Always as an SWMR reader: it works on a live file, on a closed one, and on one whose
    # writer was killed (a plain open refuses that file as "still open for writing").
    return open_h5(sidecar, "r", swmr=True, retries=0)


def read_history(path) -> dict[str, np.ndarray]:
    """Everything streamed so far, as arrays (the newest sidecar if given the main file).

    Keys: ``iteration``, ``passes``, ``wall_s``, ``cost``, ``rmse``, ``optimality`` (steps);
    ``batch_sample``, ``batch_wall_s``, ``batch_rmse``, ``batch_rmse_ewma`` (strided batch
    stream); ``progress_wall_s``, ``progress_fraction``, ``progress_message`` (str).
    Safe to call while the tracker is writing.
    """
    sidecar = _sidecars(path)[0]
    with _open(sidecar) as f:
        out = {}
        for name, prefix in (("steps", ""), ("batch_rmse", "batch_"), ("progress", "progress_")):
            ds = f[f"/Tracker/{name}"]
            ds.refresh()
            data = ds[...]
            for field in data.dtype.names:
                out[prefix + field] = data[field]
        out["progress_message"] = np.array([m.decode(errors="ignore") for m in out["progress_message"]],
                                           dtype=object)
    return out


def read_snapshots(path, kind: str = "history") -> list[tuple[np.ndarray, dict]]:
    """Valid snapshots of ``kind`` ("best", "last", "history") in one sidecar, oldest first.

    Each is ``(x (n,) float64, meta)`` with meta ``iteration``, ``cost``, ``wall_s``, ``seq``,
    ``kind``, ``sidecar``.  A slot whose CRC does not match its record (caught mid-write
    by a live reader, or torn by a kill) is skipped with a warning.
    """
    if kind not in ("best", "last", "history"):
        raise ValueError(f"kind must be 'best', 'last' or 'history', got {kind!r}")
    sidecar = _sidecars(path)[0]
    out = []
    with _open(sidecar) as f:
        name = f"/Tracker/snapshots/{kind}"
        if name not in f:
            return out
        xs, info = f[name], f[name + "_info"]
        xs.refresh()
        info.refresh()
        info = info[...]
        for slot in np.argsort(info["seq"]):
            row = info[slot]
            if row["seq"] == 0:  # never written
                continue
            x = xs[slot]
            if _crc(x, int(row["iteration"]), float(row["cost"])) != int(row["crc"]):
                # Being overwritten right now (live reader), or torn by a kill mid-write.
                warnings.warn(f"{sidecar}: {kind} slot {int(slot)} does not match its record "
                              f"#{int(row['seq'])} (CRC; overwritten mid-write or torn by a kill); "
                              "skipped", RuntimeWarning, stacklevel=2)
                continue
            out.append((x, {"iteration": int(row["iteration"]), "cost": float(row["cost"]),
                            "wall_s": float(row["wall_s"]), "seq": int(row["seq"]), "kind": kind,
                            "sidecar": sidecar}))
    return out


def latest_snapshot(path, kind: str = "best") -> tuple[np.ndarray, dict]:
    """The newest valid ``kind`` ("best" or "last") snapshot, to resume a killed run.

    ``path`` is a sidecar or the main file; for the main file the sidecars are searched
    newest run first, and the first one holding such a snapshot answers (so "best" is the
    best of the newest run that stored one, not of all runs).  Returns ``(x (n,), meta)``
    as in :func:`read_snapshots`; raises ``FileNotFoundError`` if there is none.
    """
    if kind not in ("best", "last"):
        raise ValueError(f"kind must be 'best' or 'last', got {kind!r}")
    candidates = _sidecars(path)
    for sidecar in candidates:
        try:
            snaps = read_snapshots(sidecar, kind)
        except OSError as exc:  # a run that was killed before its writer created the file
            log.debug("skipping unreadable sidecar %s: %s", sidecar, exc)
            continue
        if snaps:
            return snaps[-1]
    raise FileNotFoundError(f"no valid {kind!r} snapshot in {len(candidates)} sidecar(s) of {path}")
