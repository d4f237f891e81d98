"""LOSVD histograms, convolution kernels and Gauss–Hermite profiles (docs/data-model.md).

Conventions
-----------
* ``VelPix (V,)``: centres of a uniform, increasing velocity grid in km/s that
  straddles 0 (velocities relative to the systemic one).
* ``LOSVD`` histograms ``H (S, V, C)`` (spaxel, velocity, component) in the store;
  the functions here take the velocity axis as ``axis`` and accept any leading or
  trailing axes.
* Template pixels are uniform in ln λ with step ``dlog_t`` (``Δ_T``); the kernel
  lives on integer pixel shifts ``k = -K..K`` with pixel velocities
  ``v(k) = c·(exp(kΔ_T) - 1)`` and half-width ``K = ceil(max|VelPix| / (c·Δ_T))``.
* The kernel is ``h̃(k) = interp(v(k), VelPix, H)`` (zero outside the grid, clipped
  at 0), normalised to unit area ``h = h̃ / Σ_k h̃``.  An all-zero histogram means
  the component is absent there and gives an all-zero kernel.
* Positive velocity is a redshift: ``(h ⊛ f)[t] = Σ_k h(k) f[t - k]`` moves flux to
  larger ln λ.  The convolution is linear (not circular) and cropped to the
  template length.
"""
from __future__ import annotations

import math

import numpy as np
import scipy.fft
from scipy.integrate import trapezoid

from . import C_KMS

__all__ = ["check_vel_grid", "check_losvd", "kernel_half_width", "pixel_velocities",
           "losvd_kernels", "losvd_amplitudes", "fft_length", "kernel_layout", "kernel_spectra",
           "convolve_kernels", "gauss_hermite_losvd", "gauss_hermite_rfft", "norm_factors", "AMP_MODES",
           "NORM_MODES"]

AMP_MODES = ("sum", "trapz")
"""Valid ``mode`` values of :func:`losvd_amplitudes`."""


def check_vel_grid(vel_pix, name: str = "/VelPix", rtol: float = 1e-6) -> float:
    """Validate a LOSVD velocity grid and return its step ``dv`` in km/s.

    ``vel_pix (V,)`` must be 1-D with at least 2 finite, strictly increasing,
    uniformly spaced (step deviations ≤ ``rtol`` relative) bin centres in km/s with
    ``vel_pix[0] < 0 < vel_pix[-1]``.  Each failure raises ``ValueError`` naming
    ``name`` (the dataset), what was expected, what was found and how to fix it.
    """
    v = np.asarray(vel_pix)
    if v.ndim != 1 or v.size < 2:
        raise ValueError(f"{name}: expected a 1-D velocity grid (km/s) with at least 2 bins, "
                         f"got shape {v.shape}; store the LOSVD bin centres as a (V,) array")
    if not np.all(np.isfinite(v)):
        bad = np.flatnonzero(~np.isfinite(v))
        raise ValueError(f"{name}: expected finite velocities, got {bad.size} non-finite values "
                         f"(first at bin {int(bad[0])}: {v[bad[0]]!r}); give every bin centre in km/s")
    v = v.astype(np.float64)
    d = np.diff(v)
    if np.any(d <= 0):
        i = int(np.flatnonzero(d <= 0)[0])
        raise ValueError(f"{name}: expected strictly increasing velocities, got bin {i}: {v[i]!r} -> "
                         f"{v[i + 1]!r} km/s; sort the grid (and the LOSVD velocity axis with it)")
    dv = float((v[-1] - v[0]) / (v.size - 1))
    dev = float(np.max(np.abs(d - dv)) / dv)
    if dev > rtol:
        raise ValueError(f"{name}: expected a uniform step of {dv:.6g} km/s, got steps deviating by up "
                         f"to {dev:.3g} (relative, tolerance {rtol:g}); resample the LOSVD onto a "
                         "uniform velocity grid and store the grid as float64")
    if not v[0] < 0 < v[-1]:
        raise ValueError(f"{name}: expected a grid straddling 0 (first < 0 < last), got "
                         f"[{v[0]:.6g}, {v[-1]:.6g}] km/s; velocities must be relative to the "
                         "systemic velocity (subtract it from the grid)")
    return dv


def _velocity_last(hist, n_vel: int, axis: int, name: str) -> np.ndarray:
    """``hist`` as an array with its velocity axis ``axis`` moved last, length-checked."""
    h = np.asarray(hist)
    if h.ndim == 0:
        raise ValueError(f"{name}: expected an array with a velocity axis, got a scalar")
    ax = axis + h.ndim if axis < 0 else axis
    if not 0 <= ax < h.ndim:
        raise ValueError(f"{name}: velocity axis {axis} does not exist in an array of shape {h.shape}")
    if h.shape[ax] != n_vel:
        raise ValueError(f"{name}: expected {n_vel} velocity bins (the length of VelPix) along axis "
                         f"{axis}, got {h.shape[ax]} (shape {h.shape}); pass the right axis= or the "
                         "VelPix of the same model")
    return np.moveaxis(h, ax, -1)


def check_losvd(hist, vel_pix=None, name: str = "/LOSVD", axis: int = 1) -> None:
    """Validate LOSVD histograms ``hist`` (e.g. ``(S, V, C)`` with ``axis=1``).

    Checks that every value is finite and non-negative and, when ``vel_pix (V,)``
    is given, that the velocity axis has ``V`` bins.  Errors (``ValueError``) name
    ``name``, the number of bad values, the first bad index in ``hist``'s own axis
    order (``(s, v, c)`` for the store layout) and, for negatives, the minimum.
    """
    h = np.asarray(hist)
    if vel_pix is not None:
        _velocity_last(h, np.asarray(vel_pix).shape[0], axis, name)
    labels = "(s, v, c)" if (h.ndim == 3 and axis in (1, -2)) else "index"
    finite = np.isfinite(h)
    if not finite.all():
        n = int(h.size - np.count_nonzero(finite))
        first = tuple(int(i) for i in np.argwhere(~finite)[0])
        raise ValueError(f"{name}: expected finite values, got {n} non-finite (first at {labels} = "
                         f"{first}: {h[first]!r}); fix or zero these bins before fitting")
    neg = h < 0
    if neg.any():
        n = int(np.count_nonzero(neg))
        first = tuple(int(i) for i in np.argwhere(neg)[0])
        raise ValueError(f"{name}: expected non-negative values, got {n} negative (first at {labels} = "
                         f"{first}, minimum {float(h.min()):.6g}); clip them to 0 if they are "
                         "round-off, otherwise check the orbit library / LOSVD construction")


def kernel_half_width(vel_pix, dlog_t: float) -> int:
    """Kernel half-width ``K = ceil(max|VelPix| / velscale_T)`` in template pixels.

    ``velscale_T = C_KMS * dlog_t`` km/s.  A ratio within 1e-9 (relative) of an
    integer is taken as that integer, so round-off in ``dlog_t`` does not add a pixel.
    """
    dlog_t = float(dlog_t)
    if not (np.isfinite(dlog_t) and dlog_t > 0):
        raise ValueError(f"dlog_t: expected a positive ln(λ) step of the template grid, got {dlog_t}")
    ratio = float(np.max(np.abs(np.asarray(vel_pix, dtype=np.float64)))) / (C_KMS * dlog_t)
    return int(math.ceil(ratio * (1 - 1e-9)))


def pixel_velocities(K: int, dlog_t: float) -> np.ndarray:
    """Velocities ``v(k) = c·(exp(kΔ_T) - 1)`` km/s of the shifts ``k = -K..K``, shape ``(2K+1,)``."""
    if K < 0:
        raise ValueError(f"K: expected a non-negative kernel half-width, got {K}")
    return C_KMS * np.expm1(np.arange(-K, K + 1) * float(dlog_t))


def losvd_kernels(hist, vel_pix, dlog_t: float, K: int | None = None, axis: int = -1) -> np.ndarray:
    """Unit-area convolution kernels on template pixels from LOSVD histograms.

    Parameters
    ----------
    hist : array ``(..., V, ...)``
        Histograms on ``vel_pix``; ``axis`` is their velocity axis.
    vel_pix : ``(V,)`` km/s, uniform, straddling 0 (see :func:`check_vel_grid`).
    dlog_t : float
        ln λ step of the template grid.
    K : int, optional
        Half-width in pixels; default :func:`kernel_half_width`.

    Returns
    -------
    kernels : float64 array, ``hist``'s shape with the velocity axis removed and
    ``2K+1`` shifts ``k = -K..K`` appended last (``H (S, V, C)`` with ``axis=1`` →
    ``(S, C, 2K+1)``).  Each kernel sums to 1, or is all zero where the histogram
    has no weight at the pixel velocities (component absent).

    Negative interpolated values are clipped to 0; non-finite histograms raise
    ``ValueError`` (validate stored data with :func:`check_losvd`).
    """
    vel = np.asarray(vel_pix, dtype=np.float64)
    check_vel_grid(vel)
    if K is None:
        K = kernel_half_width(vel, dlog_t)
    H = _velocity_last(hist, vel.size, axis, "LOSVD").astype(np.float64, copy=False)
    vk = pixel_velocities(K, dlog_t)
    # Linear interpolation as two gathers along the velocity axis: the weights are
    # shared by every histogram, so the work is O(size · (2K+1)) with no Python loop.
    j = np.clip(np.searchsorted(vel, vk, side="right") - 1, 0, vel.size - 2)
    t = (vk - vel[j]) / (vel[j + 1] - vel[j])
    inside = (vk >= vel[0]) & (vk <= vel[-1])
    h = H[..., j] * np.where(inside, 1.0 - t, 0.0) + H[..., j + 1] * np.where(inside, t, 0.0)
    if not np.all(np.isfinite(h)):
        raise ValueError("LOSVD: non-finite histogram values reach the kernel; "
                         "run cubefit.losvd.check_losvd on the data to locate them")
    np.maximum(h, 0.0, out=h)
    total = h.sum(axis=-1, keepdims=True)
    return np.divide(h, total, out=np.zeros_like(h), where=total > 0)


def losvd_amplitudes(hist, vel_pix, mode: str = "sum", axis: int = -1) -> np.ndarray:
    """LOSVD amplitudes ``a``: ``Σ_v H`` (``mode="sum"``) or ``∫ H dv`` (``"trapz"``, km/s).

    The velocity axis ``axis`` of ``hist`` is removed (``H (S, V, C)``, ``axis=1`` →
    ``a (S, C)``); float64.
    """
    if mode not in AMP_MODES:
        raise ValueError(f"amp_mode: expected one of {AMP_MODES}, got {mode!r}")
    vel = np.asarray(vel_pix, dtype=np.float64)
    check_vel_grid(vel)
    H = _velocity_last(hist, vel.size, axis, "LOSVD").astype(np.float64, copy=False)
    if mode == "sum":
        return H.sum(axis=-1)
    return trapezoid(H, x=vel, axis=-1)


def fft_length(n_pix: int, K: int) -> int:
    """FFT length for linear convolution of ``n_pix`` pixels with a ``2K+1`` kernel.

    ``scipy.fft.next_fast_len(n_pix + 2K)``: at least ``n_pix + K`` is needed so that
    neither end wraps onto the other; the extra ``K`` is margin from docs/data-model.md.
    """
    return scipy.fft.next_fast_len(int(n_pix) + 2 * int(K), real=True)


def kernel_layout(kernels, nfft: int) -> np.ndarray:
    """Kernels ``(..., 2K+1)`` zero-padded to ``(..., nfft)`` with shift ``k`` at index
    ``k mod nfft`` (``h(0)`` at 0, negative shifts at the end): the real signal whose
    rfft is :func:`kernel_spectra`."""
    h = np.asarray(kernels)
    n_k = h.shape[-1]
    if n_k % 2 != 1:
        raise ValueError(f"kernels: expected an odd length 2K+1 on the last axis, got {n_k}")
    if nfft < n_k:
        raise ValueError(f"nfft={nfft} is shorter than the kernel length {n_k}; use fft_length(T, K)")
    K = n_k // 2
    padded = np.zeros(h.shape[:-1] + (nfft,), dtype=np.result_type(h, np.float32))
    padded[..., :n_k] = h
    # h(k) sits at index k + K; rolling by -K moves it to k mod nfft.
    return np.roll(padded, -K, axis=-1)


def kernel_spectra(kernels, nfft: int) -> np.ndarray:
    """rfft ``(..., nfft//2 + 1)`` of kernels ``(..., 2K+1)`` laid out for convolution.

    Shift ``k`` is placed at index ``k mod nfft`` (:func:`kernel_layout`), so
    ``irfft(rfft(f, nfft) * kernel_spectra(h, nfft), nfft)[..., :T]``
    is ``Σ_k h(k) f[t - k]`` with no wrap-around when ``nfft ≥ T + K``
    (see :func:`fft_length`).  Cache these to reuse one template FFT for many kernels.
    """
    return scipy.fft.rfft(kernel_layout(kernels, nfft), axis=-1)


def convolve_kernels(spec, kernels) -> np.ndarray:
    """Linear convolution ``out[..., t] = Σ_{k=-K..K} h(k) spec[..., t - k]``, cropped to ``T``.

    ``spec (..., T)`` and ``kernels (..., 2K+1)`` broadcast over their leading axes
    (``(P, T)`` with ``(2K+1,)`` → ``(P, T)``; ``(1, P, T)`` with ``(S, 1, 2K+1)`` →
    ``(S, P, T)``).  Pixels outside ``spec`` count as zero, so flux shifted past an
    end is lost rather than wrapped.  Computed by FFT of length :func:`fft_length`.
    """
    spec = np.asarray(spec)
    n_pix = spec.shape[-1]
    kernels = np.asarray(kernels)
    nfft = fft_length(n_pix, kernels.shape[-1] // 2)
    prod = scipy.fft.rfft(spec, n=nfft, axis=-1) * kernel_spectra(kernels, nfft)
    return scipy.fft.irfft(prod, n=nfft, axis=-1)[..., :n_pix]


def gauss_hermite_losvd(vel_pix, v, sigma, h3=0.0, h4=0.0) -> np.ndarray:
    """Gauss–Hermite LOSVD histogram ``(..., V)`` on ``vel_pix (V,)`` km/s.

    With ``y = (u - v)/σ`` (van der Marel & Franx 1993, pPXF convention)::

        L(u) = exp(-y²/2) / (σ√(2π)) · [1 + h3·H3(y) + h4·H4(y)]
        H3 = (2√2 y³ - 3√2 y)/√6,   H4 = (4y⁴ - 12y² + 3)/√24

    Values are ``L`` at the bin centres times the bin width ``dv`` (so the sum is ≈ 1
    for a well-sampled profile with ``h4 = 0``), with negative values clipped to 0.
    ``v``, ``sigma`` (km/s), ``h3`` and ``h4`` broadcast together to the leading shape.
    """
    u = np.asarray(vel_pix, dtype=np.float64)
    dv = check_vel_grid(u)
    v, sigma, h3, h4 = (a[..., None] for a in np.broadcast_arrays(
        *(np.asarray(a, dtype=np.float64) for a in (v, sigma, h3, h4))))
    if not np.all(np.isfinite(sigma) & (sigma > 0)):
        raise ValueError(f"sigma: expected positive finite dispersions (km/s), got min {np.min(sigma)!r}")
    y = (u - v) / sigma
    y2 = y * y
    herm3 = (2 * np.sqrt(2) * y2 - 3 * np.sqrt(2)) * y / np.sqrt(6)
    herm4 = (4 * y2 * y2 - 12 * y2 + 3) / np.sqrt(24)
    dens = np.exp(-0.5 * y2) / (sigma * np.sqrt(2 * np.pi)) * (1 + h3 * herm3 + h4 * herm4)
    return np.clip(dens, 0.0, None) * dv


NORM_MODES = ("model", "data")
"""Valid normalisation modes of the model columns (docs/data-model.md)."""


def norm_factors(amp, mode: str, data_flux=None) -> np.ndarray:
    """Per-(spaxel, component) column scale ``g (S, C)`` of docs/data-model.md.

    ``amp (S, C)`` are LOSVD amplitudes; ``mode="model"`` gives ``g = a``;
    ``mode="data"`` gives ``g = F[s] · a[s,c] / Σ_c' a[s,c']`` with ``data_flux``
    ``F (S,)``.  A spaxel whose amplitudes are all zero has no model (g = 0).
    """
    a = np.asarray(amp, dtype=np.float64)
    if mode == "model":
        return a.copy()
    if mode != "data":
        raise ValueError(f"norm mode {mode!r} is not one of {NORM_MODES}")
    if data_flux is None:
        raise ValueError("norm mode 'data' needs data_flux (S,) = /HyperCube/data_flux")
    F = np.asarray(data_flux, dtype=np.float64)
    if F.shape != a.shape[:1]:
        raise ValueError(f"data_flux: expected ({a.shape[0]},), got shape {F.shape}")
    tot = a.sum(axis=1, keepdims=True)
    return np.divide(F[:, None] * a, tot, out=np.zeros_like(a), where=tot > 0)


# --------------------------------------------------------------------- analytic Fourier transform

_GH_NORM = {3: 1.0 / math.sqrt(2 ** 3 * math.factorial(3)), 4: 1.0 / math.sqrt(2 ** 4 * math.factorial(4))}


def gauss_hermite_rfft(nfft: int, v, sigma, h3=0.0, h4=0.0, var_extra=0.0, derivatives: bool = False):
    """Analytic rfft of a Gauss–Hermite LOSVD on a pixel grid, ``(nfft//2 + 1,)`` complex.

    ``v`` and ``sigma`` are in pixels (velocity / velscale), ``h3``, ``h4`` as in
    :func:`gauss_hermite_losvd` (van der Marel & Franx 1993).  The result is the
    Fourier transform of the *continuous* profile at the rfft frequencies
    ``ω_k = 2πk / nfft``, laid out like :func:`kernel_spectra` (shift ``k`` at index
    ``k mod nfft``): ``irfft(rfft(f, nfft) * gauss_hermite_rfft(...), nfft)`` convolves
    ``f`` with the profile, exactly for band-limited ``f`` and at any σ, including
    σ far below one pixel and sub-pixel ``v``.  With ``y = (u - v)/σ``,

        L̂(ω) = exp(-iωv - ½(σ² + var_extra)ω²) · [1 + Σ_{m=3,4} h_m (-i)^m H_m(σω)/√(2^m m!)]

    where ``H_m`` are the physicists' Hermite polynomials: ``e^{-y²/2}H_m(y)`` are
    eigenfunctions of the Fourier transform with eigenvalue ``(-i)^m``, and the
    normalised ``H_m/√(2^m m!)`` are the vdMF93 polynomials.  ``var_extra`` (pixels²,
    either sign) adds a Gaussian of that variance in quadrature (instrumental
    broadening; negative removes it); ``σ² + var_extra`` must stay ≥ 0.

    With ``derivatives=True`` also returns ``(4, nfft//2 + 1)``: ∂L̂/∂(v, σ, h3, h4).
    """
    nfft = int(nfft)
    v, sigma, h3, h4, var_extra = (float(a) for a in (v, sigma, h3, h4, var_extra))
    if not (np.isfinite(sigma) and sigma >= 0):
        raise ValueError(f"sigma: expected a finite dispersion ≥ 0 (pixels), got {sigma!r}")
    if not sigma * sigma + var_extra >= 0:
        raise ValueError(f"sigma² + var_extra = {sigma * sigma + var_extra:.6g} px² < 0: the extra "
                         "broadening removes more than the LOSVD's own width")
    w = 2.0 * np.pi * np.arange(nfft // 2 + 1) / nfft
    base = np.exp(-1j * w * v - 0.5 * (sigma * sigma + var_extra) * w * w)
    x = sigma * w
    herm = h3 != 0.0 or h4 != 0.0 or derivatives
    if herm:
        x2 = x * x
        H3 = 8.0 * x2 * x - 12.0 * x                         # physicists' Hermite polynomials
        H4 = 16.0 * x2 * x2 - 48.0 * x2 + 12.0
        c3, c4 = 1j * _GH_NORM[3], _GH_NORM[4]               # (-i)^3 = i, (-i)^4 = 1
        poly = 1.0 + h3 * c3 * H3 + h4 * c4 * H4
        out = base * poly
    else:
        out = base
    if not derivatives:
        return out
    dH3 = 24.0 * x2 - 12.0                                   # H_m' = 2m H_{m-1}
    dH4 = 64.0 * x2 * x - 96.0 * x
    d = np.empty((4, w.size), dtype=complex)
    d[0] = -1j * w * out
    d[1] = base * (-sigma * w * w * poly + w * (h3 * c3 * dH3 + h4 * c4 * dH4))
    d[2] = base * c3 * H3
    d[3] = base * c4 * H4
    return out, d
