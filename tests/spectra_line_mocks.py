"""Synthetic spectra with emission lines of known flux, width and ratios (test helper).

The lines are built independently of :mod:`cubefit.spectra.emline_model`: each Gaussian
(in ln λ) is sampled on a sub-pixel grid 16× finer than the pixels, averaged over each
pixel (midpoint rule), then multiplied by the resolution matrix built as a
``scipy.sparse.dia_matrix`` from its band (DESI's storage is scipy's DIA layout).
"""
from __future__ import annotations

import numpy as np
from scipy.sparse import dia_matrix

from cubefit import C_KMS
from cubefit.spectra.data import Camera, Resolution, Spectrum
from cubefit.spectra.linelist import default_linelist

SUB = 16


def continuum_shape(wave_rest: np.ndarray, level: float = 10.0) -> np.ndarray:
    """A galaxy-like continuum: a smooth slope with a 4000 Å break and Balmer absorption
    troughs (Gaussians of 8 Å σ and 30 % depth at Hδ, Hγ, Hβ, Hα)."""
    w = np.asarray(wave_rest, dtype=float)
    c = level * (w / 5000.0) ** -0.5 * (1.0 - 0.4 / (1.0 + np.exp((w - 4000.0) / 20.0)))
    for lam, depth in ((4102.9, 0.3), (4341.7, 0.3), (4862.7, 0.3), (6564.6, 0.2)):
        c *= 1.0 - depth * np.exp(-0.5 * ((w - lam) / 8.0) ** 2)
    return c


def brute_lines(wave: np.ndarray, z: float, lines: dict, resolution: Resolution | None) -> np.ndarray:
    """``lines``: name → (flux, v km/s, σ km/s).  Pixel-averaged flux density on ``wave``."""
    ll = {line.name: line for line in default_linelist()}
    edges = np.concatenate(([1.5 * wave[0] - 0.5 * wave[1]], 0.5 * (wave[1:] + wave[:-1]),
                            [1.5 * wave[-1] - 0.5 * wave[-2]]))
    frac = (np.arange(SUB) + 0.5) / SUB
    sub = edges[:-1, None] + frac[None, :] * np.diff(edges)[:, None]          # (npix, SUB) in Å
    u = np.log(sub)
    model = np.zeros(wave.size)
    for name, (flux, v, sig) in lines.items():
        mu = np.log(ll[name].restwave * (1 + z)) + v / C_KMS
        s = sig / C_KMS
        dens_u = flux / (np.sqrt(2 * np.pi) * s) * np.exp(-0.5 * ((u - mu) / s) ** 2)   # per unit ln λ
        model += np.mean(dens_u / sub, axis=1)                                           # per Å
    if resolution is not None:
        n = wave.size
        h = resolution.matrix.shape[0] // 2
        model = dia_matrix((resolution.matrix, np.arange(h, -h - 1, -1)), shape=(n, n)) @ model
    return model


def desi_like_camera(name: str, lo: float, hi: float, step: float = 0.8, fwhm: float = 1.8):
    wave = np.arange(lo, hi, step)
    return wave, Resolution.from_fwhm(fwhm, wave).to_matrix(wave, ndiag=11)


def make_spectrum(z: float, lines: dict, ranges, *, sigma_pix: float = 0.0, rng=None, level: float = 10.0,
                  fwhm: float = 1.8):
    """A :class:`Spectrum` with one camera per ``(name, lo, hi)`` in ``ranges`` (observed Å),
    continuum :func:`continuum_shape`, ``lines`` as in :func:`brute_lines` and Gaussian noise
    of ``sigma_pix``.  Returns ``(spectrum, continua, truth_models)``."""
    cams, conts, truths = [], [], []
    for name, lo, hi in ranges:
        wave, res = desi_like_camera(name, lo, hi, fwhm=fwhm)
        cont = continuum_shape(wave / (1 + z), level)
        truth = brute_lines(wave, z, lines, res)
        flux = cont + truth
        if sigma_pix > 0:
            flux = flux + rng.normal(0.0, sigma_pix, wave.size)
        ivar = np.full(wave.size, 1.0 / sigma_pix ** 2 if sigma_pix > 0 else 1e4)
        cams.append(Camera(name, wave, flux, ivar, res))
        conts.append(cont)
        truths.append(truth)
    return Spectrum(cams, z), conts, truths
