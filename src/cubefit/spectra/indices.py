"""Spectral indices measured on observed spectra and on models.

Dn4000, narrow definition (Balogh et al. 1999): the ratio of the mean flux density
per unit frequency, F_ν ∝ λ² F_λ, in 4000–4100 Å to that in 3850–3950 Å (rest
frame).  Pixels count with the fraction of their width inside a band (exact
overlap); masked pixels (ivar = 0) are left out, and a band less than
:data:`MIN_COVERAGE` covered by usable pixels gives no measurement.
"""
from __future__ import annotations

import numpy as np

__all__ = ["dn4000", "DN4000_BLUE", "DN4000_RED", "MIN_COVERAGE"]

DN4000_BLUE = (3850.0, 3950.0)
DN4000_RED = (4000.0, 4100.0)
MIN_COVERAGE = 0.8
"""Smallest fraction of a band that usable pixels must cover."""


def _band_weights(edges: np.ndarray, band) -> np.ndarray:
    """Width (Å) of each pixel ``[edges[i], edges[i+1])`` inside ``band``."""
    lo, hi = band
    return np.clip(np.minimum(edges[1:], hi) - np.maximum(edges[:-1], lo), 0.0, None)


def dn4000(wave_rest, flux, ivar=None) -> tuple[float, float]:
    """``(Dn4000, ivar)`` of a spectrum on rest wavelengths ``wave_rest (npix,)`` Å.

    ``flux (npix,)`` is F_λ in any unit; ``ivar`` its inverse variance (None: a model,
    every pixel usable, returned ivar 0).  The error is propagated linearly (pixels
    independent).  Returns ``(nan, 0.0)`` when a band is not covered.
    """
    lam = np.asarray(wave_rest, dtype=np.float64)
    f = np.asarray(flux, dtype=np.float64)
    if lam.ndim != 1 or lam.size < 2 or f.shape != lam.shape:
        raise ValueError(f"dn4000: wave and flux must be 1-D of one length, got {lam.shape}, {f.shape}")
    iv = np.ones_like(f) if ivar is None else np.asarray(ivar, dtype=np.float64)
    use = (iv > 0) & np.isfinite(f)
    edges = np.concatenate(([1.5 * lam[0] - 0.5 * lam[1]], 0.5 * (lam[1:] + lam[:-1]),
                            [1.5 * lam[-1] - 0.5 * lam[-2]]))
    fnu = lam * lam                                      # F_ν ∝ λ² F_λ
    means, grads = [], []
    for band in (DN4000_BLUE, DN4000_RED):
        wt = _band_weights(edges, band) * use
        cover = wt.sum() / (band[1] - band[0])
        if cover < MIN_COVERAGE:
            return float("nan"), 0.0
        g = wt * fnu / wt.sum()                          # mean F_ν = g · F_λ
        means.append(float(g @ np.where(use, f, 0.0)))
        grads.append(g)
    blue, red = means
    if not blue > 0:
        return float("nan"), 0.0
    ratio = red / blue
    if ivar is None:
        return ratio, 0.0
    d = grads[1] / blue - grads[0] * red / blue ** 2     # ∂ratio/∂F_λ
    var = float(np.sum(np.divide(d * d, iv, out=np.zeros_like(d), where=iv > 0)))
    return ratio, (1.0 / var if var > 0 else 0.0)
