"""Spatial binning of an IFU cube to a target S/N with PowerBin (docs/ifu.md, "Binning").

The bins come from ``powerbin.PowerBin`` (Cappellari 2025, MNRAS 544, 1432: centroidal
power diagrams; the successor of Voronoi binning, same author, from PyPI).  Each spaxel's
capacity is its squared median S/N per pixel, ``(S/N)²``, and the target capacity
``target_sn²``: for spaxels of similar S/N the squared S/N of a sum of spectra is the
sum of their squared S/N, so the bins reach about ``target_sn``.  The S/N actually
reached is measured on the summed spectra and returned.

The binned spectrum of bin ``b`` is the *sum* of its spaxels' spectra (flux in the bin).
Pixels that are bad in some member spaxels are summed over the good ones and scaled by
``n / n_good`` (variance by ``(n / n_good)²``); a pixel good in fewer than ``min_good``
of the members is bad in the bin (noise ``inf``).  Noise is propagated as uncorrelated
between spaxels (real cubes are resampled and correlated: scale ``noise`` if you know
by how much).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

log = logging.getLogger(__name__)

__all__ = ["BinnedCube", "bin_cube", "plot_bin_map"]


@dataclass
class BinnedCube:
    """Binned spectra and where they come from (module docstring).

    ``flux``/``noise (S, L)`` (noise ``inf`` on bad pixels), ``good (S, L)``, ``lam (L,)``
    Å in ``medium``, ``fwhm (L,)`` Å or None, ``z``; ``bin_map (ny, nx)`` bin of each spaxel
    (-1: not used), ``xy (S, 2)`` arcsec centroid of each bin's spaxels (axes of
    :meth:`cubefit.ifu.readers.IFUCube.xy`), ``n_spaxels (S,)``, ``sn (S,)`` median S/N per
    pixel of each binned spectrum, ``pixscale`` arcsec, ``flux_unit``, ``source``.
    """

    flux: np.ndarray
    noise: np.ndarray
    good: np.ndarray
    lam: np.ndarray
    medium: str
    fwhm: np.ndarray | None
    z: float
    bin_map: np.ndarray
    xy: np.ndarray
    n_spaxels: np.ndarray
    sn: np.ndarray
    pixscale: float
    flux_unit: str = ""
    source: str = ""

    @property
    def S(self) -> int:
        return self.flux.shape[0]


def _member_matrix(bin_map: np.ndarray, n_bins: int) -> sp.csr_matrix:
    """``M (S, ny·nx)``: 1 where spaxel (row-major) belongs to bin ``b``."""
    flat = bin_map.ravel()
    use = np.flatnonzero(flat >= 0)
    return sp.csr_matrix((np.ones(use.size), (flat[use], use)), shape=(n_bins, flat.size))


def bin_cube(cube, target_sn: float, *, min_sn: float = 0.0, spaxels=None, min_good: float = 0.5,
             centre=None, bin_map=None) -> BinnedCube:
    """Bin ``cube`` (:class:`cubefit.ifu.readers.IFUCube`) to ``target_sn`` per pixel.

    Parameters
    ----------
    target_sn : S/N per pixel wanted in each bin.
    min_sn : spaxels below this median S/N per pixel are left out (bin -1).
    spaxels : ``(ny, nx)`` bool of spaxels to use (default :meth:`IFUCube.spaxels` at ``min_sn``).
    min_good : fraction of a bin's spaxels that must be good at a pixel for it to be good.
    centre : ``(ix, iy)`` origin of the arcsec coordinates (default the field's middle).
    bin_map : ``(ny, nx)`` an existing bin map (bins ``0..S-1``, -1 unused) to apply
        instead of binning anew.
    """
    ny, nx, L = cube.shape
    sn = cube.snr()
    use = cube.spaxels(min_sn) if spaxels is None else np.asarray(spaxels, dtype=bool)
    if use.shape != (ny, nx):
        raise ValueError(f"spaxels: expected a ({ny}, {nx}) boolean map, got shape {use.shape}")
    xy_all = cube.xy(centre)
    if bin_map is None:
        if not (np.isfinite(target_sn) and target_sn > 0):
            raise ValueError(f"target_sn: expected a positive S/N per pixel, got {target_sn!r}")
        idx = np.flatnonzero(use.ravel())
        if idx.size == 0:
            raise ValueError(f"{cube.source}: no spaxel has S/N >= {min_sn} (max "
                             f"{sn.max():.3g}); lower min_sn")
        bin_map = np.full(ny * nx, -1, dtype=np.int64)
        if idx.size == 1 or sn.ravel()[idx].min() >= target_sn:
            bin_map[idx] = np.arange(idx.size)      # every spaxel already at the target
        else:
            from powerbin import PowerBin
            pb = PowerBin(xy_all[idx], (sn.ravel()[idx]) ** 2, float(target_sn) ** 2,
                          pixelsize=float(cube.pixscale), verbose=0)
            bin_map[idx] = pb.bin_num
        bin_map = bin_map.reshape(ny, nx)
    bin_map = np.asarray(bin_map, dtype=np.int64)
    if bin_map.shape != (ny, nx):
        raise ValueError(f"bin_map: expected ({ny}, {nx}), got shape {bin_map.shape}")
    S = int(bin_map.max()) + 1
    M = _member_matrix(bin_map, S)
    n = np.asarray(M.sum(axis=1)).ravel()
    if np.any(n == 0):
        raise ValueError(f"bin_map: bins {np.flatnonzero(n == 0)[:10].tolist()} have no spaxel; "
                         "number the bins 0..S-1 without gaps")
    good = cube.good.reshape(ny * nx, L)
    n_good = M @ good.astype(np.float64)
    scale = np.divide(n[:, None], n_good, out=np.zeros_like(n_good), where=n_good > 0)
    flux = (M @ np.where(good, cube.flux.reshape(ny * nx, L), 0.0)) * scale
    var = (M @ np.where(good, cube.var.reshape(ny * nx, L), 0.0)) * scale**2
    ok = (n_good >= min_good * n[:, None]) & (var > 0)
    noise = np.where(ok, np.sqrt(np.where(ok, var, 1.0)), np.inf)
    flux = np.where(ok, flux, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        sn_bin = np.array([np.median(f[g]) / np.median(e[g]) if g.any() else 0.0
                           for f, e, g in zip(flux, noise, ok)])
    xy = (M @ xy_all) / n[:, None]
    multi = n > 1
    if multi.any():
        log.info("%s: %d bins (%d of one spaxel); S/N of multi-spaxel bins %.3g +- %.2g "
                 "(target %.3g)", cube.source, S, int((~multi).sum()), np.mean(sn_bin[multi]),
                 np.std(sn_bin[multi]), target_sn)
    return BinnedCube(flux=flux, noise=noise, good=ok, lam=cube.lam.copy(), medium=cube.medium,
                      fwhm=None if cube.fwhm is None else cube.fwhm.copy(), z=cube.z,
                      bin_map=bin_map, xy=xy, n_spaxels=n.astype(np.int64), sn=sn_bin,
                      pixscale=cube.pixscale, flux_unit=cube.flux_unit, source=cube.source)


def plot_bin_map(bin_map, pixscale: float, path, *, values=None, label: str = "",
                 centre=None, title: str = ""):
    """Draw a bin map (axes in arcsec): each bin in a random colour, or coloured by
    ``values (S,)`` (e.g. the bins' S/N, with a colour bar named ``label``); unused
    spaxels blank.  Returns the PNG path."""
    from pathlib import Path

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.collections import LineCollection
    from matplotlib.figure import Figure

    bm = np.asarray(bin_map)
    ny, nx = bm.shape
    cx, cy = ((nx - 1) / 2, (ny - 1) / 2) if centre is None else centre
    extent = [(-0.5 - cx) * pixscale, (nx - 0.5 - cx) * pixscale,
              (-0.5 - cy) * pixscale, (ny - 0.5 - cy) * pixscale]
    S = int(bm.max()) + 1
    if values is None:
        vals = np.random.default_rng(0).permutation(S).astype(float)   # neighbours differ
        cmap = "tab20"
    else:
        vals = np.asarray(values, dtype=float)
        if vals.shape != (S,):
            raise ValueError(f"values: expected one per bin ({S},), got shape {vals.shape}")
        cmap = "viridis"
    img = np.where(bm >= 0, vals[np.clip(bm, 0, None)], np.nan)
    fig = Figure(figsize=(5.0, 4.4), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    im = ax.imshow(img, origin="lower", extent=extent, cmap=cmap, interpolation="nearest")
    # Bin boundaries: the sides shared by spaxels of different bins, as one line collection.
    yy, xx = np.mgrid[0:ny, 0:nx]
    h = 0.5 * pixscale
    segs = []
    for dx, dy in ((1, 0), (0, 1)):
        edge = bm[:ny - dy, :nx - dx] != bm[dy:, dx:]
        x = (xx[:ny - dy, :nx - dx][edge] + 0.5 * dx - cx) * pixscale
        y = (yy[:ny - dy, :nx - dx][edge] + 0.5 * dy - cy) * pixscale
        a = np.stack([x - h * dy, y - h * dx], -1)
        b = np.stack([x + h * dy, y + h * dx], -1)
        segs.append(np.stack([a, b], 1))
    ax.add_collection(LineCollection(np.concatenate(segs), colors="k", linewidths=0.5))
    if values is not None:
        fig.colorbar(im, ax=ax, label=label)
    ax.set_xlabel("x [arcsec]")
    ax.set_ylabel("y [arcsec]")
    ax.set_aspect("equal")
    ax.set_title(title or f"{S} bins")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path
