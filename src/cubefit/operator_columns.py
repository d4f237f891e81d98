"""Explicit columns of the matrix-free LOSVD operator: columns, Gram blocks, column energy.

A mixin of :class:`cubefit.operator.LOSVDOperator`, kept apart because it is a different
idea from the applies: instead of contracting the weights ``x`` into one model, it forms
the weighted columns ``Ã[:, (c, p)]`` themselves, a chunk of spaxels at a time (one
inverse FFT per spaxel and column, as building the hypercube does), and contracts them
into what a solver asks for — the columns, a Gram block ``Ã_rowsᵀ Ã_cols`` or the column
energies — on the operator's backend, so only the small results cross to the host.  It
uses the operator's grids, kernel spectra (``_spectra``), rebin and row weights.
"""
from __future__ import annotations

import numpy as np

__all__ = ["ExplicitColumns", "CHUNK_BYTES"]

CHUNK_BYTES = 16 * 2**20
"""Size of the transient work arrays.  glibc returns freed blocks above its mmap
threshold (at most 32 MiB) to the OS and page-faults them back on the next
allocation, which costs more than the arithmetic on them; blocks of this size are
recycled by the allocator instead."""


class ExplicitColumns:
    """Columns, Gram blocks and column energy of a :class:`cubefit.operator.LOSVDOperator`."""

    def _column_index(self, idx, name):
        n = self.C * self.P
        if idx is None:
            return np.arange(n)
        idx = np.asarray(idx)
        if idx.ndim != 1 or not np.issubdtype(idx.dtype, np.integer):
            raise ValueError(f"{name}: expected a 1-D array of column indices c·P + p, got "
                             f"{idx.dtype} of shape {idx.shape}")
        if idx.size and (idx.min() < 0 or idx.max() >= n):
            raise ValueError(f"{name}: column indices must lie in [0, {n}), got "
                             f"[{idx.min()}, {idx.max()}]")
        return idx

    def _blocks(self, cols):
        """Yield ``(rows, B)``: the weighted columns ``Ã[:, cols]`` of a chunk of spaxels.

        ``cols`` must be sorted and unique.  ``rows`` is the chunk's spaxel slice and
        ``B`` (a backend array) has shape ``(st, L, k)``,
        ``B[j, l, i] = d[s,l] · A[s, c_i, p_i, l]`` for the chunk's ``j``-th spaxel ``s``
        (so ``B.reshape(st·L, k)`` are rows of ``Ã``).  ``B`` may be a reused buffer: use
        it before asking for the next chunk.  Each column costs one inverse FFT per
        spaxel, ``irfft(g ĥ_sc ⊙ T̂_p)``, batched per component as a broadcast product
        (no gather of the spectra).
        """
        be, xp = self._be, self._be.xp
        if self._That is None:
            That = be.permute(be.rfft(self._templates_dev, self.nfft, -1), (1, 0))   # (F, P)
            self._That = np.ascontiguousarray(That) if be.is_numpy else That
        c_idx, p_idx = np.divmod(cols, self.P)
        groups = []
        for c in np.unique(c_idx):
            sel = np.flatnonzero(c_idx == c)                  # contiguous: cols are sorted
            Tp = xp.take(self._That, be.asarray(p_idx[sel]), axis=1)[:, None, :]  # (F, 1, kc)
            groups.append((int(c), slice(int(sel[0]), int(sel[-1]) + 1), Tp))
        k_max = max((Tp.shape[2] for _, _, Tp in groups), default=1)
        per_spaxel = max(cols.size * self.L * self.dtype.itemsize,
                         k_max * self.F * self.cdtype.itemsize, k_max * self.nfft * self.dtype.itemsize)
        # The host recycles small blocks (CHUNK_BYTES); a device wants few, large launches.
        chunk = CHUNK_BYTES if be.is_numpy else self.memory_budget
        step = int(max(1, min(self.tile, chunk // per_spaxel, self.memory_budget // (4 * per_spaxel))))
        B = be.empty((step, self.L, cols.size), self.dtype)
        prod = np.empty((self.F, step, k_max), dtype=self.cdtype) if be.is_numpy else None
        for i, sl in enumerate(self._tiles):
            spec = self._spectra(i)                                              # (F, St, C)
            for j0 in range(0, sl.stop - sl.start, step):
                st = min(step, sl.stop - sl.start - j0)
                for c, sel, Tp in groups:
                    kc = Tp.shape[2]
                    sc = spec[:, j0:j0 + st, c][:, :, None]
                    if prod is None:
                        pr = sc * Tp                                             # (F, st, kc)
                    else:
                        pr = np.multiply(sc, Tp, out=prod[:, :st, :kc])
                    z = be.irfft(pr, self.nfft, 0, workers=self.workers)[:self.T, ...]
                    Bc = xp.reshape(self._rebin(xp.reshape(z, (self.T, st * kc))), (self.L, st, kc))
                    B[:st, :, sel] = be.permute(Bc, (1, 0, 2))
                rows = slice(sl.start + j0, sl.start + j0 + st)
                if be.is_numpy:
                    Bt = B[:st]
                    Bt *= self._d[rows][:, :, None]
                else:
                    Bt = B[:st, ...] * self._d_dev[rows, :][:, :, None]
                yield rows, Bt

    def columns(self, cols=None) -> np.ndarray:
        """Dense weighted columns ``Ã[:, cols]`` as ``(S·L, k)`` (all ``C·P`` by default).

        This materialises ``S·L·k`` numbers: for parity checks and small problems.
        """
        cols = self._column_index(cols, "cols")
        uniq, inv = np.unique(cols, return_inverse=True)
        out = np.empty((self.S, self.L, uniq.size), dtype=self.dtype)
        for rows, B in self._blocks(uniq):
            out[rows] = self._be.to_numpy(B)
        out = out.reshape(self.S * self.L, uniq.size)
        return out if np.array_equal(uniq, cols) else out[:, inv]

    def gram(self, rows=None, cols=None) -> np.ndarray:
        """Weighted Gram block ``Ã[:, rows]ᵀ Ã[:, cols]`` (default all: ``ÃᵀÃ (C·P, C·P)``).

        Method: the columns of the union of ``rows`` and ``cols`` are formed for a
        chunk of spaxels at a time (one inverse FFT per spaxel and column, no complex
        multiply-adds over components) and their products accumulated with one BLAS
        matrix product per chunk (``syrk`` for the symmetric full Gram).  Forming
        ``ÃᵀÃ e_j`` with the operator instead would cost ``2·C·P`` applies, each
        ``S·C·F`` complex multiply-adds plus ``S`` FFTs — ``C`` times more transform
        work.  Computed in float64 whatever the operator's dtype, on the operator's
        backend (a GPU forms the columns and the products on the device).
        """
        rows = self._column_index(rows, "rows")
        cols = self._column_index(cols, "cols")
        if rows.size * cols.size * 8 > self.memory_budget:
            raise ValueError(f"gram: a ({rows.size}, {cols.size}) float64 Gram block needs "
                             f"{rows.size * cols.size * 8 / 2**30:.1f} GiB, more than memory_budget="
                             f"{self.memory_budget / 2**30:.1f} GiB; raise the budget or use a "
                             "matrix-free solver (working set)")
        be, xp = self._be, self._be.xp
        union, inv = np.unique(np.concatenate([rows, cols]), return_inverse=True)
        r_pos, c_pos = inv[:rows.size], inv[rows.size:]
        r_all = np.array_equal(r_pos, np.arange(union.size))
        same = np.array_equal(rows, cols)
        r_idx, c_idx = be.asarray(r_pos), be.asarray(c_pos)
        G = be.asarray(np.zeros((rows.size, cols.size)))
        for _, B in self._blocks(union):
            B2 = be.astype(xp.reshape(B, (-1, union.size)), np.float64)         # rows (s, l)
            Br = B2 if r_all else xp.take(B2, r_idx, axis=1)
            Bc = Br if same else xp.take(B2, c_idx, axis=1)
            if be.is_numpy:   # np.dot recognises a product with its own transpose: BLAS syrk
                G += np.dot(Br.T, Bc)
            else:
                G = G + be.permute(Br, (1, 0)) @ Bc
        return be.to_numpy(G)

    def column_energy(self) -> np.ndarray:
        """``E[c,p] = Σ_s Σ_l m_l w_l ι[s,l] A[s,c,p,l]²`` as ``(C, P)`` = ``diag(ÃᵀÃ)``.

        Same metric as the objective, so it equals the ``E`` of docs/hypercube.md (which has no
        ``ι``) when no inverse variance is given.  Costs one inverse FFT per spaxel
        and column (as building the hypercube), no Gram matrix.
        """
        be = self._be
        E = np.zeros(self.C * self.P)
        for _, B in self._blocks(np.arange(self.C * self.P)):
            B64 = be.astype(B, np.float64)
            E += be.to_numpy(be.xp.sum(B64 * B64, axis=(0, 1)))
        return E.reshape(self.C, self.P)

