"""The materialised hypercube ``/HyperCube/models (S, C, P, L)``: build, norms, energy, bitmap.

Column ``A[s, c, p, :]`` is template ``p`` convolved with the unit-area LOSVD
kernel of component ``c`` at spaxel ``s``, rebinned to the observed grid by the
sparse ``R (L, T)`` and scaled by ``g[s, c]`` (docs/data-model.md)::

    A[s,c,p,:] = g[s,c] · R (h_sc ⊛ T_p),
    g = a (norm "model")   or   g = F[s]·a[s,c] / Σ_c' a[s,c'] (norm "data")

with ``a`` the LOSVD amplitudes (``amp_mode`` "sum" or "trapz") and ``F`` =
``/HyperCube/data_flux``.  Columns are stored float32 on **every** pixel, masked
ones included: the mask enters the column energy and the solver, never the models,
so changing the mask does not need a rebuild.  A spaxel whose LOSVDs are all zero
has zero columns in both norms (``g = 0``): it needs no data flux, and conversion
leaves it as it is; every other spaxel needs a finite ``F[s] > 0`` for the "data"
norm, else the build or conversion stops with a ``ValueError`` listing them.

Layout (all under ``/HyperCube``; settings are attributes of the group):

* ``models (S, C, P, L)`` float32, chunks ``(S_chunk, C_chunk, P_chunk, L)``; one
  chunk is one *tile*; tiles are visited S-major (then C, then P).
* ``_done (nS, nC, nP)`` uint8 bitmap over the tile grid.
* ``_energy_parts (nS, C, P)`` float64: each tile adds its own block of its S-row,
  ``Σ_{s in tile} Σ_l m_l w_l A²``; ``col_energy (C, P)`` is their sum over S-rows in
  a fixed order, so it is bit-identical however often the build was interrupted.
* ``col_energy_weights (L,)`` = ``m · w``: the pixel weights of ``col_energy``,
  fixed when a build starts (mask times the λ-weights of :mod:`cubefit.weights`
  in force then — generated with the defaults if missing and
  ``CUBEFIT_LAMBDA_WEIGHTS_AUTO`` is on, 1 if disabled).  New λ-weights made later
  do not change ``col_energy``; :func:`recompute_col_energy` updates it.
* ``norm/losvd_amp (S, C)``, ``norm/losvd_amp_sum (S,)``.
* group attributes ``norm.mode``, ``amp_mode``, ``chunks``, ``shape``,
  ``inputs_fingerprint`` (the root attribute written by the store), ``compression``,
  ``cubefit_version``, ``complete``.

Crash safety (a SIGKILL at any point): an uncompressed ``models`` is allocated
whole when created, so a build only writes raw data into space that already
exists and no HDF5 metadata changes until the end.  Each tile is written and
flushed, then its energy block and bitmap entry, then flushed again; a killed
build resumes at the first tile whose bit is 0 and ends bit-identical to an
uninterrupted one.  Normalisation conversion stages each rescaled tile in a
scratch dataset before overwriting it, with progress in group attributes, so a
killed conversion can be finished and never applies a factor twice.  Compressed
cubes resume the same way, but their chunk index changes with every tile, so
build uncompressed and :func:`recompress_models` afterwards where a crash is likely.
A build checks the free space for its missing tiles before it starts; a disk that
fills anyway stops it with ``OSError(ENOSPC)`` at the failing tile, keeping the tiles
written before (:func:`cubefit.h5io.open_h5`).  Every function here that writes the
file holds its writer lock (:mod:`cubefit.locking`) for the whole call.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import scipy.fft
from tqdm.auto import tqdm

from . import __version__
from .config import Config, get_config
from .grids import check_log_grid
from .losvd import (AMP_MODES, NORM_MODES, fft_length, kernel_half_width, kernel_spectra,
                    losvd_amplitudes, losvd_kernels, norm_factors)
from .diskspace import EDIT_MARGIN_BYTES, require_free
from .locking import writes_file
from .store import open_h5, read_rebin, write_dataset
from .weights import read_lambda_weights

log = logging.getLogger(__name__)

__all__ = ["build_hypercube", "convert_hypercube_norm", "hypercube_status", "invalidate_tiles",
           "recompress_models", "recompute_col_energy", "default_chunks", "TileGrid",
           "HypercubeStatus", "require_complete", "check_spaxels"]

HC = "/HyperCube"
MODELS = HC + "/models"
DONE = HC + "/_done"
PARTS = HC + "/_energy_parts"
ENERGY = HC + "/col_energy"
PIXW = HC + "/col_energy_weights"
AMP = HC + "/norm/losvd_amp"
AMP_SUM = HC + "/norm/losvd_amp_sum"
SCRATCH = HC + "/_convert_scratch"
NEW_MODELS = HC + "/_models_new"

# Settings that define the content of a cube (or its tile grid): a build with any
# of them different from the stored cube is refused unless overwrite=True.
_SETTINGS = ("norm.mode", "amp_mode", "chunks", "shape", "inputs_fingerprint")
_CONVERSION_ATTRS = ("norm.convert_next", "norm.convert_staged", "norm.converting_to")
_MODEL_UNITS = {"data": "data flux density (as /DataCube)",
                "model": "template flux density x LOSVD amplitude"}
_CHUNK_TARGET_BYTES = 4 * 2**20
_BATCH_BYTES = 8 * 2**20    # spectra of one batch of (s, c) convolutions: cache-sized


# ----------------------------------------------------------------------------- tile grid

@dataclass(frozen=True)
class TileGrid:
    """The tile grid of ``(S, C, P)`` columns in chunks ``(S_chunk, C_chunk, P_chunk)``."""

    shape: tuple
    chunks: tuple

    @classmethod
    def of(cls, ds: h5py.Dataset) -> "TileGrid":
        """The grid of a ``models``-like dataset ``(S, C, P, L)``."""
        return cls(tuple(ds.shape[:3]), tuple(ds.chunks[:3]))

    @property
    def counts(self) -> tuple:
        """Tiles along S, C, P: ``(nS, nC, nP)``."""
        return tuple(-(-n // c) for n, c in zip(self.shape, self.chunks))

    @property
    def n_tiles(self) -> int:
        return int(np.prod(self.counts))

    def tile(self, k: int) -> tuple:
        """``(iS, iC, iP)`` of the ``k``-th tile in S-major order."""
        return tuple(int(i) for i in np.unravel_index(k, self.counts))

    def slices(self, tile) -> tuple:
        """``(s, c, p)`` slices of tile ``(iS, iC, iP)``."""
        return tuple(slice(i * c, min((i + 1) * c, n))
                     for i, c, n in zip(tile, self.chunks, self.shape))


def default_chunks(S: int, C: int, P: int, L: int, target_bytes: int = _CHUNK_TARGET_BYTES) -> tuple:
    """Chunk ``(S_chunk, C_chunk, P_chunk)`` of about ``target_bytes`` float32: P first, then C, S.

    Whole population sets per chunk suit both the build (vectorised over P) and the
    solvers, which read all populations of a few spaxels and components at a time.
    """
    col = 4 * L
    p = min(P, max(1, target_bytes // col))
    c = min(C, max(1, target_bytes // (col * p)))
    s = min(S, max(1, target_bytes // (col * p * c)))
    return s, c, p


# ----------------------------------------------------------------------------- status

@dataclass
class HypercubeStatus:
    """Progress of ``/HyperCube/models``: settings, tile grid and the tiles still missing.

    ``missing (k, 3)`` holds the ``(iS, iC, iP)`` of tiles whose bit is 0.  ``stale``:
    the cube was made from other inputs than the file now holds (its
    ``inputs_fingerprint`` differs from the file's); a stale cube is never used.
    """

    settings: dict
    grid: TileGrid
    n_done: int
    missing: np.ndarray
    complete: bool
    pending_conversion: str | None
    stale: bool = False

    @property
    def n_tiles(self) -> int:
        return self.grid.n_tiles

    @property
    def fraction_done(self) -> float:
        return self.n_done / self.n_tiles


def _attr(v):
    if isinstance(v, bytes):
        return v.decode()
    if isinstance(v, np.ndarray):
        return tuple(int(i) for i in v)
    if isinstance(v, np.generic):
        return v.item()
    return v


def cube_status(f: h5py.File) -> HypercubeStatus:
    """Status of the hypercube of an open file (as :func:`hypercube_status` for a path)."""
    if MODELS not in f or DONE not in f:
        raise KeyError(f"{f.filename}: {MODELS} or its bitmap {DONE} is missing; build it with "
                       "build_hypercube()")
    attrs = f[HC].attrs
    grid = TileGrid.of(f[MODELS])
    done = f[DONE][...].astype(bool)
    return HypercubeStatus(settings={k: _attr(attrs[k]) for k in _SETTINGS if k in attrs},
                           grid=grid, n_done=int(done.sum()), missing=np.argwhere(~done),
                           complete=bool(attrs.get("complete", False)) and bool(done.all()),
                           pending_conversion=_attr(attrs.get("norm.converting_to")),
                           stale=_attr(attrs.get("inputs_fingerprint", ""))
                           != _attr(f.attrs.get("inputs_fingerprint", "")))


def hypercube_status(h5, config: Config | None = None) -> HypercubeStatus:
    """Inspect the build bitmap: fraction done, missing tiles, settings, pending conversion."""
    with open_h5(h5, "r", config=config) as f:
        return cube_status(f)


def require_complete(f: h5py.File) -> HypercubeStatus:
    """Status of an open file's cube; ``ValueError`` unless it is complete, consistent and
    made from the inputs the file holds."""
    st = cube_status(f)
    if st.stale:
        raise ValueError(f"{f.filename}: {MODELS} was made from other inputs than the file now holds "
                         "(inputs_fingerprint differs); rebuild it with build_hypercube(h5, "
                         "overwrite=True) (`cubefit build --overwrite`)")
    if st.pending_conversion:
        raise ValueError(f"{f.filename}: a conversion of {MODELS} to norm {st.pending_conversion!r} "
                         f"was interrupted; finish it with convert_hypercube_norm(h5, "
                         f"{st.pending_conversion!r})")
    if not st.complete:
        raise ValueError(f"{f.filename}: {MODELS} is incomplete ({st.n_done}/{st.n_tiles} tiles "
                         "done); run build_hypercube() again to finish it")
    return st


@writes_file("invalidate_tiles")
def invalidate_tiles(h5, tiles=None, *, spaxels=None, config: Config | None = None) -> int:
    """Clear bits of the build bitmap so that the next build recomputes those tiles.

    ``tiles``: iterable of ``(iS, iC, iP)``; ``spaxels``: every tile holding one of
    these spaxel indices; neither: all tiles.  ``col_energy`` is rebuilt when the
    build completes again.  Returns the number of bits cleared.
    """
    with open_h5(h5, "r+", config=config) as f:
        st = cube_status(f)
        done = f[DONE][...]
        sel = np.zeros(done.shape, dtype=bool)
        if tiles is None and spaxels is None:
            sel[...] = True
        if tiles is not None:
            t = np.asarray(list(tiles), dtype=np.int64).reshape(-1, 3)
            outside = np.any((t < 0) | (t >= np.array(st.grid.counts)), axis=1)
            if outside.any():
                raise ValueError(f"tiles: expected (iS, iC, iP) within the tile grid {st.grid.counts}, "
                                 f"got {t[outside][:5].tolist()}")
            sel[tuple(t.T)] = True
        if spaxels is not None:
            s = check_spaxels(spaxels, st.grid.shape[0])
            sel[np.unique(s // st.grid.chunks[0])] = True
        n = int(np.count_nonzero(sel & (done > 0)))
        f[HC].attrs["complete"] = False
        done[sel] = 0
        f[DONE][...] = done
    log.info("%s: %d tiles invalidated", h5, n)
    return n


def check_spaxels(spaxels, S: int) -> np.ndarray:
    """Spaxel indices as a flat int64 array; ``ValueError`` if empty or outside ``[0, S)``."""
    s = np.asarray(spaxels, dtype=np.int64).ravel()
    if s.size == 0 or np.any(s < 0) or np.any(s >= S):
        raise ValueError(f"spaxels: expected indices in [0, {S}), got {s[:10].tolist()} "
                         f"({s.size} values)")
    return s


# ----------------------------------------------------------------------------- kernels

def _tile_models(tf, kspec, g, R, n_tem: int, nfft: int) -> np.ndarray:
    """Columns ``(ns, nc, np, L)`` float32 of one tile.

    ``tf (F, np)`` template spectra (frequency first), ``kspec (ns, nc, F)`` kernel
    spectra, ``g (ns, nc)`` scales, ``R`` CSR ``(L, T)``.  Each batch of ``(s, c)``
    pairs multiplies its kernels with all ``np`` templates at once.  Frequency runs
    along the first axis so that the cropped inverse FFT ``(T, n)`` is a contiguous
    block that the sparse ``R`` consumes without a copy (2-3x faster than the
    row-per-spectrum layout); batches stay small enough to live in cache.
    """
    ns, nc, F = kspec.shape
    npop = tf.shape[1]
    L = R.shape[0]
    pairs = kspec.reshape(ns * nc, F)
    scale = np.asarray(g, dtype=np.float64).reshape(ns * nc)
    out = np.empty((ns * nc, npop, L), dtype=np.float32)
    step = max(1, _BATCH_BYTES // (npop * F * 16))
    for i in range(0, ns * nc, step):
        j = min(i + step, ns * nc)
        prod = (pairs[i:j].T[:, :, None] * tf[:, None, :]).reshape(F, (j - i) * npop)
        conv = scipy.fft.irfft(prod, n=nfft, axis=0)[:n_tem]            # (T, b·np)
        reb = (R @ conv).reshape(L, j - i, npop)
        out[i:j] = reb.transpose(1, 2, 0) * scale[i:j, None, None]
    return out.reshape(ns, nc, npop, L)


def _tile_energy(tile, pw) -> np.ndarray:
    """``Σ_s Σ_l pw_l tile²`` → ``(nc, np)`` float64 (numpy reductions: order-stable)."""
    sq = np.square(tile, dtype=np.float64)
    return np.sum(sq * pw, axis=-1).sum(axis=0)


# ----------------------------------------------------------------------------- build

def _check_mode(name, value, allowed):
    if value not in allowed:
        raise ValueError(f"{name}: expected one of {allowed}, got {value!r}")


def _chunk_arg(name, value, n, default):
    if value is None:
        return default
    if int(value) != value or value < 1:
        raise ValueError(f"{name}: expected a positive integer, got {value!r}")
    return min(int(value), n)


def _filters(compression) -> dict:
    if compression is None:
        return {}
    if compression == "lzf":
        return {"compression": "lzf", "shuffle": True}
    if compression == "gzip":
        return {"compression": "gzip", "compression_opts": 4, "shuffle": True}
    if isinstance(compression, int) and not isinstance(compression, bool) and 0 <= compression <= 9:
        return {"compression": "gzip", "compression_opts": compression, "shuffle": True}
    raise ValueError(f"compression: expected None, 'gzip', 'lzf' or a gzip level 0-9, "
                     f"got {compression!r}")


def _create_models(f, name, shape, chunks, compression):
    """Create a models-like dataset; uncompressed ones are allocated at once (see module doc)."""
    kw = _filters(compression)
    if not kw:
        # Early allocation with no fill: the file gets the space (sparse on disk) and
        # every chunk its address now, so later tile writes touch no HDF5 metadata.
        dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
        dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
        dcpl.set_fill_time(h5py.h5d.FILL_TIME_NEVER)
        kw["dcpl"] = dcpl
    return write_dataset(f, name, None, shape=shape, dtype=np.float32, chunks=chunks, **kw)


@writes_file("build_hypercube")
def build_hypercube(h5, norm_mode: str = "data", amp_mode: str = "sum", S_chunk: int | None = None,
                    C_chunk: int | None = None, P_chunk: int | None = None, compression=None,
                    overwrite: bool = False, progress: bool = True,
                    config: Config | None = None) -> HypercubeStatus:
    """Build (or resume) ``/HyperCube/models (S, C, P, L)`` float32 and its column energy.

    Parameters
    ----------
    h5 : path of a file populated by :class:`cubefit.store.H5Manager` with ``/R_T``.
    norm_mode : ``"data"`` or ``"model"`` (module docstring).
    amp_mode : LOSVD amplitude, ``"sum"`` (Σ_v H) or ``"trapz"`` (∫ H dv, km/s).
    S_chunk, C_chunk, P_chunk : tile (= HDF5 chunk) shape; default :func:`default_chunks`.
    compression : None (default, crash-safest), ``"gzip"``, ``"lzf"`` or a gzip level.
        An existing cube keeps its filters (use :func:`recompress_models`).
    overwrite : rebuild from scratch even if a cube with other settings exists.
    progress : show a tqdm bar over tiles.

    A cube built with the same settings (norm, amp, chunks, shape, inputs
    fingerprint) is resumed, or left untouched when complete; one with other
    settings is refused with a ``ValueError`` listing them, unless ``overwrite``.
    Returns the final :class:`HypercubeStatus`.
    """
    cfg = config or get_config()
    path = Path(h5)
    _check_mode("norm_mode", norm_mode, NORM_MODES)
    _check_mode("amp_mode", amp_mode, AMP_MODES)
    filters = _filters(compression)
    with open_h5(path, "r", config=cfg) as f:
        want = _wanted_settings(f, norm_mode, amp_mode, (S_chunk, C_chunk, P_chunk))
        fresh = overwrite or MODELS not in f or DONE not in f
        if not fresh:
            st = cube_status(f)
            if st.pending_conversion:
                require_complete(f)  # raises with the how-to-finish message
            if len(st.settings) < len(_SETTINGS) and st.n_done == 0:
                fresh = True     # a first set-up that was interrupted: nothing to keep
            else:
                _refuse_other_settings(path, st.settings, want)
                if st.complete:
                    log.info("%s: %s is complete with these settings; nothing to do", path, MODELS)
                    return st
                stored = _filters_of(f[MODELS])
                if stored != (filters.get("compression"), filters.get("compression_opts")):
                    log.warning("%s: resuming a cube stored with compression %s:%s (requested %s); "
                                "use recompress_models() afterwards to change it", path, *stored,
                                compression)
        n_todo = TileGrid(want["shape"][:3], want["chunks"]).n_tiles if fresh else len(st.missing)
        if fresh:   # everything is validated before the file is touched
            amp = _amplitudes(f, amp_mode, want["chunks"][0])
            if norm_mode == "data":
                _check_flux(path, amp.sum(axis=1), _data_flux(f))
            mask = f["/Mask"][...].astype(bool) if "/Mask" in f else np.ones(want["shape"][3], bool)
    if fresh:
        # Pixel weights of the column energy, fixed for this build (module docstring).
        pw = mask * read_lambda_weights(path, config=cfg)
    # Tiles take their disk space when written: check it is there before starting.
    tile_bytes = 4 * int(np.prod(want["chunks"])) * want["shape"][3]
    require_free(path, n_todo * tile_bytes + EDIT_MARGIN_BYTES, what="building /HyperCube/models")
    t0 = time.perf_counter()
    with open_h5(path, "r+", config=cfg) as f:
        if fresh:
            _set_up(f, want, compression, amp, pw)
        n_built = _build_tiles(f, progress)
        _finalise(f)
        st = cube_status(f)
    log.debug("%s: %d tiles built in %.1f s (%d/%d done)", path, n_built, time.perf_counter() - t0,
             st.n_done, st.n_tiles)
    return st


def _wanted_settings(f, norm_mode, amp_mode, chunk_args) -> dict:
    """The settings of the requested build, from the file's inputs and the chunk arguments."""
    for name in ("/Templates", "/LOSVD", "/VelPix", "/TemPix", "/ObsPix", "/R_T"):
        if name not in f:
            raise KeyError(f"{f.filename}: {name} missing; populate the file with H5Manager."
                           "populate_from_arrays and ensure_rebin_and_resample first")
    S, _, C = f["/LOSVD"].shape
    P = f["/Templates"].shape[0]
    L = f["/ObsPix"].shape[0]
    names = ("S_chunk", "C_chunk", "P_chunk")
    chunks = tuple(_chunk_arg(name, value, n, d) for name, value, n, d in
                   zip(names, chunk_args, (S, C, P), default_chunks(S, C, P, L)))
    return {"norm.mode": norm_mode, "amp_mode": amp_mode, "chunks": chunks, "shape": (S, C, P, L),
            "inputs_fingerprint": _attr(f.attrs.get("inputs_fingerprint", ""))}


def _refuse_other_settings(path, found: dict, want: dict) -> None:
    diffs = [f"{k}: cube has {found.get(k)!r}, requested {want[k]!r}" for k in _SETTINGS
             if found.get(k) != want[k]]
    if not diffs:
        return
    only_norm = len(diffs) == 1 and diffs[0].startswith("norm.mode")
    hint = f" (or convert_hypercube_norm(h5, {want['norm.mode']!r}) to change only the norm)" \
        if only_norm else ""
    raise ValueError(f"{path}: {MODELS} exists with other settings: " + "; ".join(diffs)
                     + f". Pass overwrite=True to rebuild it{hint}, or build with the cube's "
                     "settings to resume/reuse it")


def _amplitudes(f, amp_mode, s_chunk) -> np.ndarray:
    """LOSVD amplitudes ``a (S, C)`` of ``/LOSVD``, read in spaxel slabs."""
    vel = f["/VelPix"][...]
    S = f["/LOSVD"].shape[0]
    return np.concatenate([losvd_amplitudes(f["/LOSVD"][i:i + s_chunk], vel, amp_mode, axis=1)
                           for i in range(0, S, s_chunk)])


def _data_flux(f) -> np.ndarray:
    if "/HyperCube/data_flux" not in f:
        raise KeyError(f"{f.filename}: /HyperCube/data_flux missing; norm 'data' needs it "
                       "(re-run H5Manager.populate_from_arrays)")
    return f["/HyperCube/data_flux"][...]


def _set_up(f, want, compression, amp, pw) -> None:
    """Create the layout for a new build; settings are written last (see module doc)."""
    S, C, P, L = want["shape"]
    chunks = want["chunks"]
    filters = _filters(compression)
    hc = f.require_group(HC)
    hc.attrs["complete"] = False
    for k in _CONVERSION_ATTRS:           # an overwrite abandons an interrupted conversion
        if k in hc.attrs:
            del hc.attrs[k]
    grid = TileGrid((S, C, P), chunks)
    keep = (MODELS in f and f[MODELS].shape == (S, C, P, L) and f[MODELS].chunks == chunks + (L,)
            and _filters_of(f[MODELS]) == (filters.get("compression"), filters.get("compression_opts")))
    # Reusing the allocated dataset avoids growing the file: HDF5 does not reuse freed space.
    write_dataset(f, DONE, np.zeros(grid.counts, dtype=np.uint8))
    for name in (ENERGY, SCRATCH, NEW_MODELS) + (() if keep else (MODELS,)):
        if name in f:
            del f[name]
    f.flush()
    if not keep:
        _create_models(f, MODELS, (S, C, P, L), chunks + (L,), compression)
    write_dataset(f, PARTS, np.zeros((grid.counts[0], C, P)))
    write_dataset(f, PIXW, pw)
    write_dataset(f, AMP, amp).attrs["amp_mode"] = want["amp_mode"]
    write_dataset(f, AMP_SUM, amp.sum(axis=1)).attrs["amp_mode"] = want["amp_mode"]
    f[MODELS].attrs["units"] = _MODEL_UNITS[want["norm.mode"]]
    for k, v in want.items():
        hc.attrs[k] = np.asarray(v, dtype=np.int64) if k in ("chunks", "shape") else v
    hc.attrs["compression"] = "%s:%s" % _filters_of(f[MODELS])
    hc.attrs["cubefit_version"] = __version__
    hc.attrs["created_utc"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    f.flush()


def _scales(f, mode: str) -> np.ndarray:
    """``g (S, C)`` for ``mode`` from the stored amplitudes; bad data fluxes are an error."""
    amp = f[AMP][...]
    flux = _data_flux(f) if mode == "data" else None
    if flux is not None:
        _check_flux(f.filename, amp.sum(axis=1), flux)
    return norm_factors(amp, mode, flux)


def _check_flux(filename, amp_sum, flux) -> None:
    """Spaxels with light need a finite positive ``F[s]`` for the "data" norm."""
    bad = np.flatnonzero((amp_sum > 0) & ~(np.isfinite(flux) & (flux > 0)))
    if bad.size:
        raise ValueError(f"{filename}: /HyperCube/data_flux must be finite and > 0 where the LOSVDs "
                         f"have light; {bad.size} spaxels are not: {bad[:20].tolist()} (values "
                         f"{flux[bad[:5]].tolist()}). Use norm 'model', or drop or fix those spaxels")


def _build_tiles(f, progress: bool) -> int:
    """Compute every tile whose bit is 0; returns how many were computed."""
    ds, done_ds = f[MODELS], f[DONE]
    grid = TileGrid.of(ds)
    done = done_ds[...]
    todo = int(np.count_nonzero(done == 0))
    if todo == 0:
        return 0
    attrs = f[HC].attrs
    g = _scales(f, _attr(attrs["norm.mode"]))
    pw = f[PIXW][...]
    tem_pix = f["/TemPix"][...]
    vel = f["/VelPix"][...]
    dlog_t = check_log_grid(tem_pix, "/TemPix")
    K = kernel_half_width(vel, dlog_t)
    n_tem = tem_pix.size
    nfft = fft_length(n_tem, K)
    R = read_rebin(f)
    tf = scipy.fft.rfft(f["/Templates"][...].T, n=nfft, axis=0)   # once per run: (F, P)
    nS, nC, nP = grid.counts
    with tqdm(total=grid.n_tiles, initial=grid.n_tiles - todo, disable=not progress, unit="tile",
              desc="hypercube") as bar:
        for iS in range(nS):
            for iC in range(nC):
                missing = np.flatnonzero(done[iS, iC] == 0)
                if missing.size == 0:
                    continue
                ss, cs, _ = grid.slices((iS, iC, 0))
                kspec = kernel_spectra(losvd_kernels(f["/LOSVD"][ss, :, cs], vel, dlog_t, K=K, axis=1),
                                       nfft)
                for iP in missing:
                    ps = grid.slices((iS, iC, iP))[2]
                    tile = _tile_models(tf[:, ps], kspec, g[ss, cs], R, n_tem, nfft)
                    ds[ss, cs, ps, :] = tile
                    f[PARTS][iS, cs, ps] = _tile_energy(tile, pw)
                    f.flush()                  # the tile is on disk before its bit says so
                    done_ds[iS, iC, iP] = 1
                    f.flush()
                    bar.update()
    return todo


def _finalise(f) -> None:
    """Sum the energy parts into ``col_energy`` and mark the cube complete (idempotent)."""
    hc = f[HC]
    if not f[DONE][...].all() or (hc.attrs.get("complete", False) and ENERGY in f):
        return
    _write_energy(f)
    hc.attrs["complete"] = True
    f.flush()


def _write_energy(f) -> None:
    e = f[PARTS][...].sum(axis=0)      # fixed order over S-rows: reproducible bits
    ds = write_dataset(f, ENERGY, e)
    ds.attrs["norm.mode"] = _attr(f[HC].attrs["norm.mode"])
    ds.attrs["pixel_weights"] = PIXW
    f.flush()


# ----------------------------------------------------------------------------- energy

@writes_file("recompute_col_energy")
def recompute_col_energy(h5, progress: bool = True, config: Config | None = None) -> np.ndarray:
    """Recompute ``col_energy (C, P)`` from the stored models with the current mask × λ-weights.

    Streams tile by tile; the file changes only once every tile has been read, so a
    killed run leaves the previous energy in place.  Returns the new energy.
    """
    cfg = config or get_config()
    path = Path(h5)
    with open_h5(path, "r", config=cfg) as f:
        require_complete(f)
        L = f["/ObsPix"].shape[0]
        mask = f["/Mask"][...].astype(bool) if "/Mask" in f else np.ones(L, bool)
    pw = mask * read_lambda_weights(path, config=cfg)
    with open_h5(path, "r", config=cfg) as f:
        grid = TileGrid.of(f[MODELS])
        parts = np.zeros((grid.counts[0],) + grid.shape[1:])
        for k in tqdm(range(grid.n_tiles), disable=not progress, unit="tile", desc="col_energy"):
            tile = grid.tile(k)
            ss, cs, ps = grid.slices(tile)
            parts[tile[0], cs, ps] = _tile_energy(f[MODELS][ss, cs, ps, :], pw)
    with open_h5(path, "r+", config=cfg) as f:
        f[PARTS][...] = parts
        f[PIXW][...] = pw
        _write_energy(f)
        return f[ENERGY][...]


# ----------------------------------------------------------------------------- conversion

def _conversion_factors(filename, amp_sum, flux, to_mode) -> np.ndarray:
    """Per-spaxel factor ``F/Σa`` (to "data") or ``Σa/F`` (to "model"); 1 where there is no light.

    A spaxel whose LOSVDs are all zero has zero columns in both norms, so it is left
    as it is (and logged); every other spaxel needs a finite positive factor.
    """
    light = amp_sum > 0
    _check_flux(filename, amp_sum, flux)
    f = np.ones_like(amp_sum, dtype=np.float64)
    ratio = flux[light] / amp_sum[light]
    f[light] = ratio if to_mode == "data" else 1.0 / ratio
    bad = np.flatnonzero(light & ~(np.isfinite(f) & (f > 0)))
    if bad.size:
        raise ValueError(f"{filename}: normalisation factors to {to_mode!r} are non-finite or ≤ 0 "
                         f"for {bad.size} spaxels {bad[:20].tolist()}; check /HyperCube/data_flux "
                         "and /HyperCube/norm/losvd_amp_sum there")
    dark = np.flatnonzero(~light)
    if dark.size:
        log.info("%s: %d spaxels without LOSVD light keep their zero columns: %s", filename, dark.size,
                 dark[:20].tolist())
    return f


@writes_file("convert_hypercube_norm")
def convert_hypercube_norm(h5, to_mode: str, recompute_energy: bool = True, progress: bool = True,
                           config: Config | None = None) -> None:
    """Rescale a complete cube to the other normalisation without rebuilding it.

    Spaxel ``s`` is multiplied by ``F[s]/Σ_c a[s,c]`` (model → data) or its
    inverse (data → model), streaming tile by tile in S-major order; the group
    attribute ``norm.mode`` flips at the end.  ``_energy_parts`` follow the
    models; ``col_energy`` is rewritten when ``recompute_energy`` (else it is left
    for the old norm, with a warning).  Crash-safe: a killed conversion is finished
    by calling this again with the same ``to_mode``; no tile is scaled twice.
    """
    cfg = config or get_config()
    path = Path(h5)
    _check_mode("to_mode", to_mode, NORM_MODES)
    with open_h5(path, "r+", config=cfg) as f:
        st = cube_status(f)
        pending = st.pending_conversion
        if pending is None:
            require_complete(f)
            if st.settings["norm.mode"] == to_mode:
                log.info("%s: %s is already in norm %r; nothing to do", path, MODELS, to_mode)
                return
        elif pending != to_mode:
            raise ValueError(f"{path}: an interrupted conversion to norm {pending!r} must be finished "
                             f"first: convert_hypercube_norm(h5, {pending!r})")
        factor = _conversion_factors(path, f[AMP_SUM][...], _data_flux(f), to_mode)
        hc = f[HC]
        if pending is None:
            write_dataset(f, SCRATCH, np.zeros(f[MODELS].chunks, dtype=np.float32))
            hc.attrs["norm.convert_next"] = 0
            hc.attrs["norm.convert_staged"] = -1
            hc.attrs["norm.converting_to"] = to_mode
            f.flush()
        _convert_tiles(f, factor, progress)
        # Finish in an order that a rerun can repeat: the pending marker goes last but
        # one, the scratch copy last (a leftover one is replaced by the next conversion).
        f[MODELS].attrs["units"] = _MODEL_UNITS[to_mode]
        hc.attrs["norm.mode"] = to_mode
        if recompute_energy:
            _write_energy(f)
        else:
            log.warning("%s: col_energy kept for the old norm; run recompute_col_energy()", path)
        for k in _CONVERSION_ATTRS:
            del hc.attrs[k]
        f.flush()
        del f[SCRATCH]
    log.debug("%s: %s converted to norm %r", path, MODELS, to_mode)


def _convert_tiles(f, factor, progress) -> None:
    """Scale the tiles from ``norm.convert_next`` on, each staged in the scratch dataset first."""
    ds, scratch, hc = f[MODELS], f[SCRATCH], f[HC]
    grid = TileGrid.of(ds)
    pw = f[PIXW][...]
    start = int(hc.attrs["norm.convert_next"])
    for k in tqdm(range(start, grid.n_tiles), initial=start, total=grid.n_tiles, disable=not progress,
                  unit="tile", desc="convert norm"):
        tile_idx = grid.tile(k)
        ss, cs, ps = grid.slices(tile_idx)
        local = tuple(slice(0, sl.stop - sl.start) for sl in (ss, cs, ps))
        if int(hc.attrs["norm.convert_staged"]) != k:
            tile = (ds[ss, cs, ps, :] * factor[ss, None, None, None]).astype(np.float32)
            scratch[local] = tile
            f.flush()                 # staged copy on disk before it is declared staged
            hc.attrs["norm.convert_staged"] = k
            f.flush()
        else:                         # resumed after the staging of tile k: reuse it
            tile = scratch[local]
        ds[ss, cs, ps, :] = tile
        f[PARTS][tile_idx[0], cs, ps] = _tile_energy(tile, pw)
        f.flush()
        hc.attrs["norm.convert_next"] = k + 1
        f.flush()


# ----------------------------------------------------------------------------- recompression

@writes_file("recompress_models")
def recompress_models(h5, compression, progress: bool = True, config: Config | None = None) -> None:
    """Rewrite ``/HyperCube/models`` with other filters (``None``, ``"gzip"``, ``"lzf"``, level).

    Copies tile by tile into ``/HyperCube/_models_new`` and then swaps it in with an
    HDF5 move.  A killed run is recovered by the next call: an unfinished copy is
    discarded, a finished one is swapped in.  A cube that already has the requested
    filters is left alone.  HDF5 does not reuse the freed space: run ``h5repack``
    to shrink the file afterwards.
    """
    cfg = config or get_config()
    want = _filters(compression)
    with open_h5(h5, "r+", config=cfg) as f:
        if MODELS not in f and NEW_MODELS in f and f[NEW_MODELS].attrs.get("copied", False):
            _swap_in_new_models(f)             # killed between the delete and the move
            log.info("%s: finished an interrupted recompression", h5)
        require_complete(f)
        if _filters_of(f[MODELS]) == (want.get("compression"), want.get("compression_opts")):
            log.info("%s: %s already has compression %s", h5, MODELS, compression)
            return
        if NEW_MODELS in f:
            del f[NEW_MODELS]
        src = f[MODELS]
        grid = TileGrid.of(src)
        dst = _create_models(f, NEW_MODELS, src.shape, src.chunks, compression)
        for k in tqdm(range(grid.n_tiles), disable=not progress, unit="tile", desc="recompress"):
            sl = grid.slices(grid.tile(k))
            dst[sl] = src[sl]
        for k, v in src.attrs.items():
            dst.attrs[k] = v
        f.flush()
        dst.attrs["copied"] = True         # the copy is complete: from here on, finish the swap
        f.flush()
        del f[MODELS]
        _swap_in_new_models(f)
    log.info("%s: %s recompressed with %s", h5, MODELS, compression)


def _filters_of(ds) -> tuple:
    return ds.compression, ds.compression_opts


def _swap_in_new_models(f) -> None:
    f.move(NEW_MODELS, MODELS)
    del f[MODELS].attrs["copied"]
    f[HC].attrs["compression"] = "%s:%s" % _filters_of(f[MODELS])
    f.flush()
