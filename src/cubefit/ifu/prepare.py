"""Binned spectra, LOSVDs and templates → a CubeFit file that ``build``/``solve`` use unchanged.

:func:`prepare_global_fit` writes, for a :class:`cubefit.ifu.binning.BinnedCube`:

* ``/ObsPix``: a uniform ln-λ grid in the **rest frame** (``λ / (1 + z)``) over the
  binned spectra's range (or ``lam_range``), with ``velscale`` km/s per pixel (default:
  as many pixels as the cube has over that range, pPXF's choice);
* ``/DataCube (S, L)`` and ``/Noise (S, L)``: the binned spectra moved onto that grid
  by the exact-overlap rebin of :func:`cubefit.grids.rebin_matrix` (flux density
  conserved; variance through the squared weights).  A new pixel that overlaps a bad
  pixel of a bin gets noise ``inf`` (and flux 0) in that bin;
* ``/Mask (L,)``: pixels bad in every bin and the rest-frame windows ``mask_ranges``
  (e.g. emission lines) are False;
* ``/Templates``, ``/TemPix``: the library in the data's medium (air ↔ vacuum with the
  IAU formula of Morton 1991, :mod:`cubefit.spectra.data`), broadened to the data's
  instrumental resolution in the rest frame (a Gaussian of FWHM
  ``sqrt(FWHM_data² − FWHM_templates²)`` varying with λ; templates are never sharpened:
  where the data are finer, nothing is done), log-rebinned
  to ``velscale / velscale_ratio`` and cropped to the fitted range plus the LOSVD kernel;
* ``/LOSVD (S, V, C)``, ``/VelPix (V,)`` as given (e.g. from
  :func:`cubefit.ifu.losvds.losvds_from_moments`), velocities relative to ``z``;
* ``/SpaxelXY (S, 2)`` in arcsec, ``/CompNames``, ``/BinMap (ny, nx)`` (attributes: source
  cube, redshift, medium, spaxel scale), ``/TemplateMass`` when the library has masses.

The rest-frame spectra are not multiplied by ``(1 + z)``: a constant factor is absorbed
by the weights.
"""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np

from .. import C_KMS
from ..grids import log_grid, log_rebin, rebin_matrix
from ..science import write_layout, write_template_masses
from ..spectra.data import air_to_vacuum, vacuum_to_air
from ..store import H5Dims, H5Manager, open_h5, write_dataset
from .readers import FWHM_PER_SIGMA

log = logging.getLogger(__name__)

__all__ = ["prepare_global_fit", "rebin_binned", "broaden_templates"]


def rebin_binned(binned, *, velscale: float | None = None, lam_range=None):
    """``(obs_pix (L,), flux (S, L), noise (S, L), good (S, L))`` on a rest-frame ln-λ grid
    (module docstring); ``lam_range`` rest-frame Å."""
    lam_rest = binned.lam / (1.0 + binned.z)
    edges_lo = lam_rest[0] - 0.5 * (lam_rest[1] - lam_rest[0])
    edges_hi = lam_rest[-1] + 0.5 * (lam_rest[-1] - lam_rest[-2])
    lo, hi = (edges_lo, edges_hi) if lam_range is None else lam_range
    lo, hi = max(lo, edges_lo), min(hi, edges_hi)
    if velscale is None:
        inside = (lam_rest >= lo) & (lam_rest <= hi)
        velscale = C_KMS * np.log(hi / lo) / max(int(inside.sum()), 2)
    obs_pix = log_grid(lo, hi, velscale)
    R = rebin_matrix(np.log(lam_rest), obs_pix)
    R2 = R.multiply(R).tocsr()
    bad = np.asarray((R @ (~binned.good).T.astype(np.float64)).T) > 0
    flux = np.asarray((R @ np.where(binned.good, binned.flux, 0.0).T).T)
    var = np.asarray((R2 @ np.where(binned.good, binned.noise, 0.0).T ** 2).T)
    good = ~bad & (var > 0)
    noise = np.where(good, np.sqrt(np.where(good, var, 1.0)), np.inf)
    return obs_pix, np.where(good, flux, 0.0), noise, good


def broaden_templates(flux, ln_lam, fwhm_target, fwhm_templates) -> np.ndarray:
    """Templates ``(P, T)`` on ``ln_lam`` convolved with a Gaussian of FWHM
    ``sqrt(fwhm_target² − fwhm_templates²)`` Å (0 where negative), both ``(T,)`` arrays
    or numbers in Å at the template wavelengths.  The kernel width varies from pixel to
    pixel; each output pixel is a normalised Gaussian-weighted sum of its neighbours."""
    flux = np.asarray(flux, dtype=np.float64)
    lam = np.exp(np.asarray(ln_lam, dtype=np.float64))
    step = float(ln_lam[1] - ln_lam[0])
    diff2 = np.broadcast_to(np.asarray(fwhm_target, float) ** 2
                            - np.asarray(fwhm_templates, float) ** 2, lam.shape)
    sig_pix = np.sqrt(np.clip(diff2, 0.0, None)) / FWHM_PER_SIGMA / (lam * step)
    if not np.any(sig_pix > 0.1):
        return flux.copy()
    K = int(np.ceil(4 * sig_pix.max()))
    k = np.arange(-K, K + 1)
    w = np.exp(-0.5 * (k[None, :] / np.maximum(sig_pix, 1e-3)[:, None]) ** 2)   # (T, 2K+1)
    w /= w.sum(axis=1, keepdims=True)
    padded = np.pad(flux, ((0, 0), (K, K)), mode="edge")
    out = np.zeros_like(flux)
    T = flux.shape[1]
    for j, kk in enumerate(k):           # 2K+1 shifted products: memory O(P·T)
        out += padded[:, K + kk:K + kk + T] * w[:, j]
    return out


def prepare_global_fit(h5, binned, library, losvd, vel_pix, *, template_fwhm=None,
                       template_medium: str = "air", velscale: float | None = None,
                       velscale_ratio: int = 2, lam_range=None, mask_ranges=(), names=None,
                       overwrite: bool = False) -> H5Dims:
    """Write the CubeFit file ``h5`` for ``binned`` spectra (module docstring).

    Parameters
    ----------
    binned : :class:`cubefit.ifu.binning.BinnedCube` (its ``fwhm`` is the instrumental FWHM
        in Å at the observed wavelengths; None: no broadening).
    library : :class:`cubefit.templates.TemplateLibrary`, covering the fitted range plus
        the LOSVD kernel.
    losvd, vel_pix : ``(S, V, C)`` histograms and their ``(V,)`` km/s grid.
    template_fwhm : the library's FWHM in Å (number or callable of λ); default
        ``library.fwhm``; required when the data's resolution is known.
    template_medium : ``"air"`` (MILES, E-MILES) or ``"vacuum"``.
    velscale, lam_range : the observed grid (rest frame; see :func:`rebin_binned`).
    velscale_ratio : template pixels per observed pixel.
    mask_ranges : rest-frame ``(lo, hi)`` Å windows excluded from the fit.
    names : component names ``(C,)``.
    overwrite : replace an existing file of other dimensions.
    """
    obs_pix, flux, noise, good = rebin_binned(binned, velscale=velscale, lam_range=lam_range)
    S = flux.shape[0]
    H = np.asarray(losvd, dtype=np.float64)
    if H.ndim != 3 or H.shape[0] != S:
        raise ValueError(f"losvd: expected (S, V, C) with S = {S} bins, got shape {H.shape}")
    lam_obs = np.exp(obs_pix)
    mask = good.any(axis=0)
    for lo, hi in mask_ranges:
        mask &= ~((lam_obs >= lo) & (lam_obs <= hi))
    if not mask.any():
        raise ValueError("every pixel is masked (bad in every bin or inside mask_ranges)")

    lib = library
    if template_medium not in ("air", "vacuum"):
        raise ValueError(f"template_medium: expected 'air' or 'vacuum', got {template_medium!r}")
    if template_medium != binned.medium:
        conv = air_to_vacuum if binned.medium == "vacuum" else vacuum_to_air
        new, ln_new, _ = log_rebin(conv(lib.lam), lib.flux, velscale=lib.velscale)
        lib = dataclasses.replace(lib, flux=new, ln_lam=ln_new)
    if binned.fwhm is not None:
        tf = lib.fwhm if template_fwhm is None else template_fwhm
        if tf is None:
            raise ValueError("template_fwhm: the data's resolution is known but the templates' is "
                             "not; pass template_fwhm= (Å, a number or a function of λ)")
        tf = tf(lib.lam) if callable(tf) else tf
        # Instrumental FWHM at the rest-frame wavelength λ: observed FWHM at λ(1+z), /(1+z).
        fwhm_rest = np.interp(lib.lam * (1 + binned.z), binned.lam, binned.fwhm) / (1 + binned.z)
        lib = dataclasses.replace(lib, flux=broaden_templates(lib.flux, lib.ln_lam, fwhm_rest, tf))
    vel_scale = C_KMS * (obs_pix[1] - obs_pix[0])
    lib = lib.rebin(vel_scale / int(velscale_ratio))
    half = 0.5 * (obs_pix[1] - obs_pix[0])          # crop from the observed pixel edges, one
    lib = lib.crop(np.exp(obs_pix[0] - half), np.exp(obs_pix[-1] + half),     # pixel to spare
                   vel_max=float(np.max(np.abs(vel_pix))) + lib.velscale)

    h5 = Path(h5)
    V, C = H.shape[1], H.shape[2]
    mgr = H5Manager(h5, tem_pix=lib.ln_lam, obs_pix=obs_pix, vel_pix=vel_pix)
    mgr.init_base(H5Dims(nSpat=S, nLSpec=obs_pix.size, nTSpec=lib.T, nVel=V, nComp=C, nPop=lib.P),
                  overwrite=overwrite)
    dims = mgr.populate_from_arrays(losvd=H, datacube=flux, templates=lib, mask=mask, noise=noise,
                                    data_unit=binned.flux_unit or None)
    mgr.ensure_rebin_and_resample()
    write_layout(h5, xy=binned.xy, xy_units="arcsec", names=names)
    if lib.masses is not None:
        write_template_masses(h5, lib)
    with open_h5(h5, "r+") as f:
        ds = write_dataset(f, "/BinMap", binned.bin_map.astype(np.int64))
        ds.attrs.update({"source": binned.source, "z": binned.z, "medium": binned.medium,
                         "pixscale_arcsec": binned.pixscale, "template_medium_in": template_medium})
    log.info("%s: %d bins x %d pixels (%.4g km/s, rest frame), %d templates, %d components",
             h5, S, obs_pix.size, vel_scale, lib.P, C)
    return dims
