"""Wavelength grids and the flux-conserving rebin operator (docs/data-model.md).

Conventions: grids hold *natural-log* wavelengths of pixel centres with uniform
steps; pixel edges are the mid-points between centres and the outer edges extend
by half a step.  ``velscale = C_KMS * step`` (km/s per pixel).

* :func:`log_rebin` turns a spectrum sampled in linear λ into one sampled
  uniformly in ln λ (flux density conserved, like pPXF's ``log_rebin``).
* :func:`rebin_matrix` is the sparse ``R (L, T)`` mapping a template-grid spectrum
  to the observed grid by exact bin overlap: ``R[l, t] = |bin_l ∩ bin_t| / |bin_l|``.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from . import C_KMS

__all__ = ["edges_from_centres", "check_log_grid", "log_grid", "velscale_of", "log_rebin",
           "rebin_matrix", "crop_range"]


def edges_from_centres(x: np.ndarray) -> np.ndarray:
    """Bin edges ``(N + 1,)`` of centres ``x (N,)``: mid-points, outer edges half a step out."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 1 or x.size < 2:
        raise ValueError(f"a grid needs at least 2 pixel centres in a 1-D array, got shape {x.shape}")
    mid = 0.5 * (x[1:] + x[:-1])
    return np.concatenate(([x[0] - (mid[0] - x[0])], mid, [x[-1] + (x[-1] - mid[-1])]))


def check_log_grid(x, name: str = "grid", rtol: float = 1e-5) -> float:
    """Validate a uniform, strictly increasing ln λ grid and return its step.

    ``name`` is the dataset the grid belongs to (for instance ``/TemPix``) and
    appears in every error message.  Raises ``ValueError`` for non-finite values,
    fewer than 2 pixels, non-increasing values or steps that vary by more than
    ``rtol`` (relative), and for values that look like linear wavelengths.
    """
    x = np.asarray(x)
    if x.ndim != 1 or x.size < 2:
        raise ValueError(f"{name}: expected a 1-D ln(λ) grid with at least 2 pixels, got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        bad = np.flatnonzero(~np.isfinite(x))[:5].tolist()
        raise ValueError(f"{name}: non-finite values at pixels {bad}; give finite ln(λ/Å) values")
    x = x.astype(np.float64)
    d = np.diff(x)
    if np.any(d <= 0):
        i = int(np.flatnonzero(d <= 0)[0])
        raise ValueError(f"{name}: not strictly increasing (pixel {i}: {x[i]!r} -> {x[i + 1]!r}); "
                         "sort the grid (and the spectra with it) in increasing wavelength")
    if x[-1] > 20.0:
        raise ValueError(f"{name}: values up to {x[-1]:.4g} look like linear wavelengths; "
                         "give natural-log wavelengths, e.g. np.log(lam) (see cubefit.grids.log_rebin)")
    step = float(np.median(d))
    dev = float(np.max(np.abs(d - step)) / step)
    if dev > rtol:
        raise ValueError(f"{name}: ln(λ) steps are not uniform (max relative deviation {dev:.3g} > "
                         f"{rtol:g}); resample onto a uniform log grid with cubefit.grids.log_rebin, "
                         "and store grids as float64")
    return step


def velscale_of(ln_lam) -> float:
    """Velocity step in km/s of a uniform ln λ grid."""
    return C_KMS * check_log_grid(ln_lam)


def log_grid(lam_min: float, lam_max: float, velscale: float) -> np.ndarray:
    """Centres (ln λ) of a uniform log grid of step ``velscale`` km/s covering [lam_min, lam_max] Å.

    The first pixel's lower edge sits at ``lam_min``; pixels are added while their
    upper edge stays at or below ``lam_max``.
    """
    if not (0 < lam_min < lam_max):
        raise ValueError(f"need 0 < lam_min < lam_max (Å), got {lam_min}, {lam_max}")
    if not velscale > 0:
        raise ValueError(f"velscale must be positive (km/s), got {velscale}")
    step = velscale / C_KMS
    n = int(np.floor(np.log(lam_max / lam_min) / step * (1 + 1e-12)))
    if n < 2:
        raise ValueError(f"[{lam_min}, {lam_max}] Å holds fewer than 2 pixels of {velscale} km/s")
    return np.log(lam_min) + step * (np.arange(n) + 0.5)


def log_rebin(lam, spec, velscale: float | None = None, oversample: int = 1, flux: bool = False):
    """Resample spectra from linear λ to a uniform ln λ grid, conserving flux.

    Parameters
    ----------
    lam : array
        Either ``[λ_first, λ_last]`` (Å, centres of the first and last pixel of a
        uniform linear grid) or the ``(N,)`` centres of any increasing grid.
    spec : array ``(..., N)``
        Flux densities (per Å); leading axes (e.g. templates ``P``) are kept.
    velscale : float, optional
        Output step in km/s.  Default: the step that keeps ``N * oversample`` pixels.
    flux : bool
        False (default): output is flux density, so a flat spectrum stays flat.
        True: output is the flux integrated over each output pixel.

    Returns
    -------
    spec_new : ``(..., M)``; ln_lam : ``(M,)`` pixel centres; velscale : km/s.

    The input is treated as piecewise constant over its pixels, so the integral
    of the output equals the integral of the input to rounding error.
    """
    spec = np.asarray(spec, dtype=np.float64)
    n = spec.shape[-1]
    lam = np.asarray(lam, dtype=np.float64)
    if lam.size == 2 and n != 2:
        lam = np.linspace(lam[0], lam[1], n)
    if lam.shape != (n,):
        raise ValueError(f"lam must be [λ_first, λ_last] or ({n},) centres matching spec, got {lam.shape}")
    if np.any(np.diff(lam) <= 0) or lam[0] <= 0:
        raise ValueError("lam must be positive and strictly increasing (Å)")
    edges = edges_from_centres(lam)
    ln_lo, ln_hi = np.log(edges[0]), np.log(edges[-1])
    if velscale is None:
        step = (ln_hi - ln_lo) / (n * int(oversample))
        m = n * int(oversample)
        velscale = C_KMS * step
    else:
        step = float(velscale) / C_KMS
        m = int(np.floor((ln_hi - ln_lo) / step * (1 + 1e-12)))
    if m < 1:
        raise ValueError(f"velscale={velscale} km/s is wider than the whole spectrum")
    new_edges = np.exp(ln_lo + step * np.arange(m + 1))
    new_edges[0] = edges[0]  # exp(log(x)) may round outside the input range
    new_edges = np.minimum(new_edges, edges[-1])
    # Exact integral of a piecewise-constant density up to each new edge.
    width = np.diff(edges)
    cum = np.concatenate((np.zeros(spec.shape[:-1] + (1,)), np.cumsum(spec * width, axis=-1)), axis=-1)
    idx = np.clip(np.searchsorted(edges, new_edges, side="right") - 1, 0, n - 1)
    integ = cum[..., idx] + spec[..., idx] * (new_edges - edges[idx])
    out = np.diff(integ, axis=-1)
    if not flux:
        out = out / np.diff(new_edges)
    ln_lam = ln_lo + step * (np.arange(m) + 0.5)
    return out, ln_lam, float(velscale)


def rebin_matrix(src_pix, dst_pix) -> sp.csr_matrix:
    """Sparse exact-overlap rebin ``R (L, T)`` from grid ``src_pix (T,)`` to ``dst_pix (L,)``.

    Both grids are ln λ pixel centres.  ``R[l, t]`` is the fraction of output bin
    ``l`` covered by input bin ``t``, so ``R @ f`` averages flux density: every
    fully covered row sums to 1 (a flat spectrum stays flat) and ``Σ_l R[l,t] |bin_l|
    = |bin_t|`` inside the covered range (integrated flux is conserved).  Rows of
    output bins that stick out of the input grid sum to the covered fraction.
    """
    se = edges_from_centres(src_pix)
    de = edges_from_centres(dst_pix)
    if np.any(np.diff(se) <= 0) or np.any(np.diff(de) <= 0):
        raise ValueError("rebin_matrix: both grids must be strictly increasing")
    T, L = se.size - 1, de.size - 1
    lo, hi = de[:-1], de[1:]
    first = np.clip(np.searchsorted(se, lo, side="right") - 1, 0, T - 1)
    last = np.clip(np.searchsorted(se, hi, side="left") - 1, 0, T - 1)
    width = int(np.max(last - first)) + 1
    t = first[:, None] + np.arange(width)[None, :]          # (L, width) candidate source bins
    valid = t <= last[:, None]
    tc = np.minimum(t, T - 1)
    overlap = np.minimum(hi[:, None], se[tc + 1]) - np.maximum(lo[:, None], se[tc])
    frac = np.where(valid, np.clip(overlap, 0.0, None), 0.0) / (hi - lo)[:, None]
    rows = np.broadcast_to(np.arange(L)[:, None], t.shape)
    keep = frac > 0
    R = sp.csr_matrix((frac[keep], (rows[keep], tc[keep])), shape=(L, T))
    R.sum_duplicates()
    return R


def crop_range(src_pix, lo: float, hi: float) -> slice:
    """Slice of ``src_pix`` whose pixels cover ``[lo, hi]`` (ln λ), edges included."""
    e = edges_from_centres(src_pix)
    i0 = max(int(np.searchsorted(e, lo, side="right")) - 1, 0)
    i1 = min(int(np.searchsorted(e, hi, side="left")), len(e) - 1)
    return slice(i0, i1)
