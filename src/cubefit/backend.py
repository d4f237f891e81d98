"""Array backends of the matrix-free operator: numpy on the CPU, or an Array API library.

:class:`cubefit.operator.LOSVDOperator` does its forward and adjoint applies through a
:class:`Backend`: a namespace ``xp`` and the three primitives that differ between
libraries — real FFTs, the exact-overlap rebin ``R`` and its transpose — plus the
transfers to and from the host.  Solvers stay on the host in float64: they exchange
``C·P`` weights and ``S·L`` residuals with the operator, while the kernel spectra
``(F, S, C)`` (the bulk of the data) and the FFT work stay on the device.

Backends (``backend=`` of the operator, or ``CUBEFIT_BACKEND``):

* ``"numpy"`` (default): numpy arrays, :mod:`scipy.fft`, the rebin as a sparse CSR
  product — the fastest CPU path, and the reference of the others;
* ``"cupy"``: CuPy on the current CUDA device;
* ``"torch"``: PyTorch on ``device`` (default ``"cuda"`` when available, else ``"cpu"``);
* ``"array_api_strict"``: the strict reference implementation of the standard (CPU,
  for tests: it rejects anything outside the standard).

The non-numpy backends go through :mod:`array_api_compat` (extra ``gpu``) and use only
the Array API standard and its ``fft`` extension.  There the rebin is a banded
gather: ``R`` has at most ``w`` non-zeros per row (``w ≈ 2 + obs step / template
step``), stored as ``(L, w)`` column indices and weights padded with zero weights, so
``R z = Σ_k wt[:, k] · z[idx[:, k]]`` with ``take``; ``Rᵀ`` is stored the same way.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import scipy.fft
import scipy.sparse as sp

__all__ = ["Backend", "get_backend", "BACKENDS"]

BACKENDS = ("numpy", "cupy", "torch", "array_api_strict")


@dataclass
class Backend:
    """One array library: namespace, device, FFTs, rebin, host transfers.

    ``xp`` is the (compat) namespace; ``device`` the device arrays are put on
    (None: the library's default).  ``rfft(a, n, axis, workers=None)`` /
    ``irfft(...)`` are the real FFTs with zero padding / cropping to ``n``
    (``workers``: threads of :mod:`scipy.fft` on numpy, ignored elsewhere).
    """

    name: str
    xp: Any
    device: Any = None
    rfft: Callable = field(repr=False, default=None)
    irfft: Callable = field(repr=False, default=None)

    @property
    def is_numpy(self) -> bool:
        return self.name == "numpy"

    def dtype(self, dtype):
        """The library's dtype for a numpy ``dtype``."""
        dt = np.dtype(dtype)
        return dt if self.is_numpy else getattr(self.xp, dt.name)

    def asarray(self, a, dtype=None):
        """``a`` (host or device) as an array of this backend, on its device."""
        if self.is_numpy:
            return np.asarray(a, dtype=dtype)
        return self.xp.asarray(a, dtype=None if dtype is None else self.dtype(dtype),
                               device=self.device)

    def empty(self, shape, dtype):
        """An uninitialised array of this backend, on its device."""
        if self.is_numpy:
            return np.empty(shape, dtype=dtype)
        return self.xp.empty(shape, dtype=self.dtype(dtype), device=self.device)

    def astype(self, a, dtype):
        """``a`` in ``dtype`` (no copy when it already is, on numpy)."""
        if self.is_numpy:
            return a.astype(dtype, copy=False)
        return self.xp.astype(a, self.dtype(dtype))

    def permute(self, a, axes):
        """``a`` with its axes permuted (a view where the library allows)."""
        return a.transpose(axes) if self.is_numpy else self.xp.permute_dims(a, axes)

    def to_numpy(self, a) -> np.ndarray:
        """``a`` copied to the host as a numpy array."""
        if isinstance(a, np.ndarray):
            return a
        if self.name == "cupy":
            return a.get()
        if self.name == "torch":
            return a.detach().cpu().numpy()
        return np.asarray(a)

    def rebin(self, R: sp.csr_matrix, dtype) -> Callable:
        """``z (n_in, k) ↦ R z (n_out, k)`` for a sparse ``R (n_out, n_in)``."""
        R = sp.csr_matrix(R, dtype=dtype)
        if self.is_numpy:
            return R.__matmul__
        xp = self.xp
        counts = np.diff(R.indptr)
        w = max(1, int(counts.max(initial=0)))
        idx = np.zeros((R.shape[0], w), dtype=np.int64)
        wt = np.zeros((R.shape[0], w), dtype=dtype)
        slot = np.arange(R.nnz) - np.repeat(R.indptr[:-1], counts)      # position in its row
        rows = np.repeat(np.arange(R.shape[0]), counts)
        idx[rows, slot] = R.indices
        wt[rows, slot] = R.data
        n_out = R.shape[0]
        idx_d = self.asarray(idx.ravel())
        wt_d = self.asarray(wt[:, :, None])

        def apply(z):
            g = xp.reshape(xp.take(z, idx_d, axis=0), (n_out, w, z.shape[1]))
            return xp.sum(g * wt_d, axis=1)

        return apply


def _namespace(name: str):
    try:
        if name == "array_api_strict":
            return importlib.import_module("array_api_strict")
        importlib.import_module(name)
        return importlib.import_module(f"array_api_compat.{name}")
    except ImportError as e:
        raise ImportError(f"backend={name!r} needs the package {e.name!r}: pip install "
                          f"'cubefit[gpu]' installs array-api-compat and CuPy, PyTorch needs "
                          f"'pip install torch array-api-compat'; or use backend='numpy'") from e


def get_backend(name: str | Backend = "numpy", device=None) -> Backend:
    """The :class:`Backend` called ``name`` (one of :data:`BACKENDS`) on ``device``."""
    if isinstance(name, Backend):
        return name
    if name not in BACKENDS:
        raise ValueError(f"backend: expected one of {BACKENDS}, got {name!r}")
    if name == "numpy":
        return Backend("numpy", np, None, scipy.fft.rfft, scipy.fft.irfft)
    xp = _namespace(name)
    if name == "torch" and device is None:
        import torch
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return Backend(name, xp, device,
                   lambda a, n, axis, workers=None: xp.fft.rfft(a, n=n, axis=axis),
                   lambda a, n, axis, workers=None: xp.fft.irfft(a, n=n, axis=axis))
