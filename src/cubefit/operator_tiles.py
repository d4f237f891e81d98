"""Spaxel tiles and the kernel-spectra cache of the matrix-free LOSVD operator.

A mixin of :class:`cubefit.operator.LOSVDOperator`: how the spaxels are cut into tiles,
which tiles keep their kernel spectra ``g·ĥ (F, St, C)`` cached within the memory budget
(the others recompute them, bit-identically, at each use), and how a function of the tile
index is mapped over the tiles on the worker threads.  The applies
(:mod:`cubefit.operator`) and the explicit columns (:mod:`cubefit.operator_columns`) only
ask it for ``_spectra(i)`` and ``_map_tiles(fn)``.
"""
from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .losvd import kernel_layout, losvd_kernels
from .operator_columns import CHUNK_BYTES

__all__ = ["KernelSpectraCache", "PLAN_WORKERS"]

PLAN_WORKERS = 4
"""Worker threads that the automatic tile size leaves room for (:meth:`_plan_tiles`)."""


class KernelSpectraCache:
    """Tile plan, cached kernel spectra and the tile map of a
    :class:`cubefit.operator.LOSVDOperator`."""

    def _plan_tiles(self, budget: int, tile):
        """Choose the tile size and how many tiles keep their kernel spectra cached.

        Each worker thread holds, for a tile whose spectra are not cached, a scratch
        copy of them (``tile·C·F`` complex), the tile's FFT arrays and a few
        :data:`CHUNK_BYTES` temporaries; the rest of the budget caches spectra, tile
        by tile in order.
        """
        if budget <= 0:
            raise ValueError(f"memory_budget: expected a positive number of bytes, got {budget}")
        spec_bytes = self.C * self.F * self.cdtype.itemsize            # g·ĥ of one spaxel
        per_spaxel = spec_bytes + 4 * self.nfft * self.dtype.itemsize
        if tile is None:
            cap = 64 if self._be.is_numpy else self.S      # a device wants few, large launches
            # Sized for PLAN_WORKERS threads whatever ``workers`` is: the tile partition
            # fixes the order of every reduction over tiles, so it must not change with
            # the number of threads (same inputs, same x bit for bit).
            tile = int(min(cap, max(1, budget // (4 * per_spaxel * PLAN_WORKERS))))
        tile = int(tile)
        if tile < 1:
            raise ValueError(f"tile: expected a positive number of spaxels, got {tile}")
        tile = min(tile, self.S)
        self.tile = tile
        self._tiles = [slice(i, min(i + tile, self.S)) for i in range(0, self.S, tile)]
        work = self.workers * (tile * per_spaxel + 3 * CHUNK_BYTES)
        cache_room = max(0, budget - work)
        n_cached, used = 0, 0
        for sl in self._tiles:
            nbytes = (sl.stop - sl.start) * spec_bytes
            if used + nbytes > cache_room:
                break
            used += nbytes
            n_cached += 1
        self.memory_budget = budget
        self._work_bytes = work
        self._n_cached = n_cached
        self._cache: list[np.ndarray | None] = [None] * len(self._tiles)
        self._scratch = threading.local()    # per-thread spectra of uncached tiles
        self._pool = None                    # persistent threads keep their scratch

    @property
    def cache_info(self) -> dict:
        """Tiles, tiles whose spectra are cached, bytes cached now and when full, bytes of
        all spectra (``S·C·F`` complex), bytes reserved for per-tile work arrays."""
        spec = self.C * self.F * self.cdtype.itemsize
        return {"tiles": len(self._tiles), "tile": self.tile, "cached_tiles": self._n_cached,
                "work_bytes": self._work_bytes,
                "cached_bytes": sum(c.nbytes for c in self._cache if c is not None),
                "cache_bytes_full": sum((self._tiles[i].stop - self._tiles[i].start) * spec
                                        for i in range(self._n_cached)),
                "all_bytes": self.S * spec}

    def precompute(self) -> None:
        """Fill the kernel-spectra cache now (otherwise the first apply does it)."""
        for i in range(self._n_cached):
            self._spectra(i)

    # -- kernel spectra ------------------------------------------------------------------
    def _spectra(self, i: int) -> np.ndarray:
        """``g[s,c]·ĥ_sc`` of tile ``i`` as ``(F, St, C)`` (the layout of the batched matvec).

        Cached tiles are computed once; the others are recomputed into the calling
        thread's scratch buffer, which is reused from apply to apply.
        """
        cached = self._cache[i]
        if cached is not None:
            return cached
        be = self._be
        sl = self._tiles[i]
        shape = (self.F, sl.stop - sl.start, self.C)
        if i < self._n_cached or not be.is_numpy:
            out = be.empty(shape, self.cdtype)
            if i < self._n_cached:
                self._cache[i] = out
        else:
            buf = getattr(self._scratch, "spectra", None)
            if buf is None:
                buf = self._scratch.spectra = np.empty((self.F, self.tile, self.C), self.cdtype)
            out = buf[:, :sl.stop - sl.start]
        # Spaxel chunks keep the kernels, their zero-padded copies and spectra small.
        step = max(1, CHUNK_BYTES // (self.C * self.nfft * 16))
        for j0 in range(sl.start, sl.stop, step):
            j1 = min(j0 + step, sl.stop)
            h = losvd_kernels(self._H[j0:j1], self._vel, self.dlog_t, K=self.K, axis=1)
            h *= self.g[j0:j1, :, None]                                     # (n, C, 2K+1)
            padded = be.asarray(kernel_layout(h.astype(self.dtype, copy=False), self.nfft))
            spec = be.rfft(padded, self.nfft, -1)                           # (n, C, F)
            out[:, j0 - sl.start:j1 - sl.start, :] = be.permute(spec, (2, 0, 1))
        return out

    def _map_tiles(self, fn):
        """Yield ``fn(i)`` for every tile in order, computed on ``workers`` threads.

        A generator, so that a caller reducing the results (the adjoint) holds only
        the few that are ready rather than one per tile.
        """
        idx = range(len(self._tiles))
        if self.workers == 1 or len(self._tiles) == 1:
            yield from map(fn, idx)
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="cubefit-operator")
        yield from self._pool.map(fn, idx)

