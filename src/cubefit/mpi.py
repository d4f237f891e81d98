"""The global fit on MPI ranks: spaxels shared out, row-space sums all-reduced.

Every rank holds the operator of its own spaxels only (:func:`rank_operator` reads just
those rows of ``/DataCube``, ``/LOSVD`` and ``/Noise``) and wraps it in a
:class:`DistributedLeastSquares`.  The solvers see their problem only through the
contract of :class:`cubefit.solvers.problem.Problem`, so the reductions of that contract
are all that changes: ``Aᵀr``, ``½‖r‖²``, row dot products, ``‖y‖`` and Gram blocks are
summed over ranks, and the solver logic — the same column-space arithmetic on the same
reduced numbers — runs identically on every rank.  Explicit columns stay local, so the
solvers take their column products from the (reduced) Gram blocks instead
(``columns_are_global = False``).

Run as ``mpiexec -n K python script.py``; ``mpi4py`` and an MPI (``mpich`` from PyPI)
come with ``pip install cubefit[mpi]``.
"""
from __future__ import annotations

import numpy as np

from .solvers.problem import LeastSquares

__all__ = ["DistributedLeastSquares", "spaxel_share", "rank_operator"]


def spaxel_share(S: int, rank: int, size: int) -> slice:
    """Rank ``rank``'s contiguous share of ``S`` spaxels among ``size`` ranks (sizes differ
    by at most one; a rank may get none when ``size > S``)."""
    if not (0 <= rank < size):
        raise ValueError(f"rank {rank} outside a communicator of size {size}")
    base, extra = divmod(int(S), int(size))
    start = rank * base + min(rank, extra)
    return slice(start, start + base + (rank < extra))


def rank_operator(path, comm, **kwargs):
    """This rank's :class:`cubefit.operator.LOSVDOperator` of the file ``path``: its
    :func:`spaxel_share` of the spaxels, read from the file alone (``kwargs`` go to
    :meth:`~cubefit.operator.LOSVDOperator.from_h5`)."""
    from .operator import LOSVDOperator
    from .store import open_h5
    with open_h5(path, "r") as f:
        S = int(f["/DataCube"].shape[0])
    share = spaxel_share(S, comm.Get_rank(), comm.Get_size())
    if share.stop <= share.start:
        raise ValueError(f"{path}: {comm.Get_size()} ranks for {S} spaxels leave rank "
                         f"{comm.Get_rank()} without any; run with at most {S} ranks")
    return LOSVDOperator.from_h5(path, spaxels=share, **kwargs)


class DistributedLeastSquares(LeastSquares):
    """``min_{x ≥ 0} ½‖A x − y‖²`` whose rows are spread over the ranks of ``comm``
    (an ``mpi4py`` communicator): this rank holds ``A``'s and ``y``'s rows of its spaxels.

    Row vectors (``A x``, residuals) stay local; everything the contract reduces is summed
    over ranks, so every rank sees the same costs, gradients and Gram blocks and takes the
    same solver steps.  ``passes`` count this rank's applies (one per collective apply).
    """

    columns_are_global = False

    def __init__(self, A, y=None, *, comm):
        super().__init__(A, y)
        self.comm = comm
        self._cost0 = None
        self._ynorm = None

    def _sum(self, a) -> np.ndarray:
        from mpi4py import MPI
        a = np.ascontiguousarray(a, dtype=np.float64)
        out = np.empty_like(a)
        self.comm.Allreduce(a, out, op=MPI.SUM)
        return out

    def rmatvec(self, r) -> np.ndarray:
        return self._sum(super().rmatvec(r))

    def half_sq(self, r) -> float:
        return float(self._sum(np.array([0.5 * float(r @ r)]))[0])

    def row_dot(self, u, v) -> float:
        return float(self._sum(np.array([float(u @ v)]))[0])

    @property
    def cost_at_zero(self) -> float:
        if self._cost0 is None:
            self._cost0 = self.half_sq(self.y)
        return self._cost0

    @property
    def y_norm(self) -> float:
        if self._ynorm is None:
            self._ynorm = float(np.sqrt(2.0 * self.cost_at_zero))
        return self._ynorm

    def gram(self, rows=None, cols=None) -> np.ndarray:
        return self._sum(super().gram(rows, cols))
