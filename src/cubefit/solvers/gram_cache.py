"""Gram blocks kept across many solves of one operator (Monte-Carlo, regularisation search).

Re-solving the global fit with other data ``ỹ*`` (Monte-Carlo realisations) or other prior
strengths (the search of :mod:`cubefit.regul_auto`) changes neither the model columns nor
their products ``ÃᵀÃ``.  :class:`GramCache` wraps the data operator and remembers every
Gram entry it has formed, so that each further solve forms only the columns it has not
seen: a warm-started working-set solve of a nearby problem then costs a few passes and
almost no column work, and a full-Gram solve forms the ``(C·P)²`` matrix once.

The cache keeps the explicit columns of the indices seen so far while they fit in
``column_bytes`` (a new index then costs one column and a few products); beyond, the
columns are dropped and each extension asks the operator for the block
``[Ã_K, Ã_new]ᵀ Ã_new`` (the operator forms those columns again).

Use it as the operator under :func:`cubefit.solvers.priors.with_priors`; with the
working-set solver pass ``column_cache_bytes=0`` so that the solver takes its Gram rows
from here rather than from its own per-solve column cache.
"""
from __future__ import annotations

import numpy as np

__all__ = ["GramCache"]


class GramCache:
    """The operator ``op`` with a memory of its Gram entries (module docstring).

    ``op`` is a :class:`cubefit.operator.LOSVDOperator` or any object with ``shape``,
    ``matvec``, ``rmatvec`` and ``gram(rows, cols)`` (``columns(idx)`` is used when
    present).  Every other attribute (``weighted_data``, ``row_weights``, ``mask``, ``C``,
    ``P``, ``backend``, ``column_energy`` …) is the operator's.  ``column_bytes``: bytes of
    explicit columns kept (default 512 MiB).
    """

    def __init__(self, op, column_bytes: int = 512 * 2**20):
        self.op = op
        self.shape = tuple(int(s) for s in op.shape)
        self._index = np.empty(0, dtype=np.intp)      # K: indices seen, in order of arrival
        self._pos = np.full(self.shape[1], -1, dtype=np.intp)
        self._G = np.empty((0, 0))
        self._cols = [] if hasattr(op, "columns") else None   # blocks of explicit columns (m, k)
        self._max_cols = int(column_bytes) // (8 * max(self.shape[0], 1))
        self.columns_formed = 0

    def __getattr__(self, name):
        if name in ("op", "_cols"):          # not set yet (during unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.op, name)

    def matvec(self, x) -> np.ndarray:
        return self.op.matvec(x)

    def rmatvec(self, r) -> np.ndarray:
        return self.op.rmatvec(r)

    @property
    def cached(self) -> int:
        """Number of indices whose Gram rows are known."""
        return int(self._index.size)

    def _extend(self, new: np.ndarray) -> None:
        K = self._index
        if self._cols is not None and K.size + new.size > self._max_cols:
            self._cols = None                              # over budget: ask the operator instead
        if self._cols is not None:
            A_new = np.asarray(self.op.columns(new), dtype=np.float64)
            cross = np.concatenate([blk.T @ A_new for blk in self._cols] + [A_new.T @ A_new]) \
                if self._cols else A_new.T @ A_new
            self._cols.append(A_new)
        else:
            cross = np.asarray(self.op.gram(rows=np.concatenate([K, new]), cols=new),
                               dtype=np.float64)
        self.columns_formed += new.size
        n0, k = K.size, new.size
        G = np.empty((n0 + k, n0 + k))
        G[:n0, :n0] = self._G
        G[:, n0:] = cross
        G[n0:, :n0] = cross[:n0].T
        self._G = G
        self._pos[new] = np.arange(n0, n0 + k)
        self._index = np.concatenate([K, new])

    def gram(self, rows=None, cols=None) -> np.ndarray:
        """``Ã[:, rows]ᵀ Ã[:, cols]`` (default all columns), from the cache where known."""
        n = self.shape[1]
        rows = np.arange(n) if rows is None else np.asarray(rows, dtype=np.intp)
        cols = np.arange(n) if cols is None else np.asarray(cols, dtype=np.intp)
        need = np.union1d(rows, cols)
        new = need[self._pos[need] < 0]
        if new.size:
            self._extend(new)
        return self._G[np.ix_(self._pos[rows], self._pos[cols])].copy()
