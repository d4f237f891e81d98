"""``cubefit ingest``: an observed IFU cube to a CubeFit file in one step (docs/ifu.md).

:func:`ingest` chains the IFU modules:

1. read the cube (:func:`cubefit.ifu.readers.read_cube`: MUSE, MaNGA or generic) at the
   redshift ``z``; keep the rest-frame ``lam_range``; flag the strong night-sky lines and
   the rest-frame windows ``mask``;
2. bin the spaxels with S/N ≥ ``min_sn`` to ``target_sn`` (:func:`cubefit.ifu.binning.bin_cube`);
3. fit each bin's kinematics with ``components`` components
   (:mod:`cubefit.ifu.bin_kinematics`, ``mp`` processes, progress bar) — bins whose fit
   fails are left out of the file (logged, and -1 in ``/BinMap``);
4. with several components, ``refine`` passes.  Each component drawing on the whole
   library, a single bin at S/N ≈ 60 hardly tells how the light splits between
   overlapping components (on the test mock the per-bin light fractions scatter by 0.19
   rms), and the global fit, which takes the LOSVD amplitudes as given, turns that
   scatter into mixed populations.  So the populations are pooled: pass 1 sums the
   per-bin fits' light per template and component over the bins (each bin weighted by
   ``min(1, (Δv/Σσ)²)``, how far apart its components are) into one population mixture
   per component, and refits every bin with one template per component — its mixture —
   for v, σ and the light split, now told apart by the components' different spectra;
   later passes take the mixtures from a global fit (``cubefit solve``) of the file so
   far.  The labels are fixed by the mixtures from pass 1 on;
5. turn each component's (v, σ[, h3, h4]) into a LOSVD histogram scaled by its light in
   the bin, its mean model flux density over the fitted pixels
   (:func:`cubefit.ifu.losvds.losvds_from_moments`), on a grid of half the data's
   pixel;
6. write the file (:func:`cubefit.ifu.prepare.prepare_global_fit`) with the emission-line
   windows of the per-bin fits masked too, plus ``/Kinematics`` (per bin and component:
   v, σ, h3, h4 and their errors, light, light-weighted age and [M/H], χ²/dof).

The file is assembled beside ``out`` and renamed into place when complete: a failed
ingest leaves no file, or the previous one untouched.  ``cubefit solve`` and ``cubefit
report`` then use it as any other.
"""
from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from .bin_kinematics import (ORDER_BY, BinFitSettings, BinKinematics, fit_bins, light_density,
                             load_library, velscale_of)

log = logging.getLogger(__name__)

__all__ = ["ingest", "IngestResult", "write_kinematics", "KINEMATICS"]

KINEMATICS = {
    # name: (units, meaning) of the /Kinematics datasets, (S, C) unless said.
    "v": ("km/s", "line-of-sight velocity of each component relative to the redshift z"),
    "v_err": ("km/s", "formal 1-sigma error of v"),
    "sigma": ("km/s", "velocity dispersion of each component"),
    "sigma_err": ("km/s", "formal 1-sigma error of sigma"),
    "h3": ("", "Gauss-Hermite h3 (NaN when not fitted)"),
    "h3_err": ("", "formal 1-sigma error of h3"),
    "h4": ("", "Gauss-Hermite h4 (NaN when not fitted)"),
    "h4_err": ("", "formal 1-sigma error of h4"),
    "light": ("data flux density", "each component's mean model flux density over the bin's "
              "fitted pixels: the scale of its /LOSVD histogram"),
    "log_age_light": ("dex (log10 yr)", "light-weighted <log10(age/yr)> of each component's "
                      "templates in the per-bin fit"),
    "metal_light": ("dex", "light-weighted <[M/H]> of each component's templates in the per-bin fit"),
    "rchi2": ("", "chi2/dof of each bin's kinematic fit (S,)"),
    "npix": ("pixels", "pixels in each bin's kinematic fit (S,)"),
    "flags": ("", "sigma bits of each component: 1 data finer than the templates, 2 at the "
              "lower bound or template-limited, 4 at the upper bound"),
}


@dataclass
class IngestResult:
    """What :func:`ingest` did: ``path`` written, ``n_bins`` kept of ``n_bins_total``,
    ``components``, ``kinematics`` (:class:`cubefit.ifu.bin_kinematics.BinKinematics` of the
    kept bins), ``binned`` (their :class:`cubefit.ifu.binning.BinnedCube`), ``timings``
    (seconds per step: read, bin, kinematics, refine+write)."""

    path: Path
    n_bins: int
    n_bins_total: int
    components: int
    kinematics: BinKinematics
    binned: object
    timings: dict


def _line_windows(z_medium: str, half_width: float) -> list:
    """Rest-frame windows (Å, in the data's medium) of the emission lines the per-bin fits
    mask (:data:`cubefit.spectra.EMISSION_LINES`, ± ``half_width`` km/s)."""
    from .. import C_KMS
    from ..spectra import EMISSION_LINES, vacuum_to_air
    lam = np.array(list(EMISSION_LINES.values()))
    if z_medium == "air":
        lam = vacuum_to_air(lam)
    f = math.exp(half_width / C_KMS)
    return [(float(c / f), float(c * f)) for c in lam]


def _keep_bins(binned, keep: np.ndarray):
    """``binned`` without the bins not in ``keep`` (bool ``(S,)``): renumbered, -1 in the map."""
    new = np.full(binned.S + 1, -1, dtype=np.int64)
    new[np.flatnonzero(keep)] = np.arange(int(keep.sum()))
    bm = np.where(binned.bin_map >= 0, new[binned.bin_map], -1)
    return replace(binned, flux=binned.flux[keep], noise=binned.noise[keep], good=binned.good[keep],
                   bin_map=bm, xy=binned.xy[keep], n_spaxels=binned.n_spaxels[keep], sn=binned.sn[keep])


def _template_fwhm(lib):
    """The library's FWHM for :func:`cubefit.ifu.prepare.prepare_global_fit`: its constant
    value, its tabulated curve, or the E-MILES curve (libraries without any are refused
    earlier, by the per-bin template preparation)."""
    if lib.fwhm is not None:
        return lib.fwhm
    curve = lib.meta.get("fwhm_curve")
    if curve is not None:
        return lambda lam: np.interp(lam, np.asarray(curve[0]), np.asarray(curve[1]))
    from ..spectra import emiles_fwhm
    return emiles_fwhm


def write_kinematics(h5, kin: BinKinematics, attrs: dict) -> None:
    """Store ``kin`` as the ``/Kinematics`` group of ``h5`` (:data:`KINEMATICS`)."""
    from ..store import open_h5, write_dataset
    vals = {"v": kin.params[..., 0], "v_err": kin.errors[..., 0], "sigma": kin.params[..., 1],
            "sigma_err": kin.errors[..., 1], "h3": kin.params[..., 2], "h3_err": kin.errors[..., 2],
            "h4": kin.params[..., 3], "h4_err": kin.errors[..., 3], "light": light_density(kin),
            "log_age_light": kin.logage, "metal_light": kin.metal, "rchi2": kin.rchi2,
            "npix": kin.npix, "flags": kin.flags}
    with open_h5(h5, "r+") as f:
        g = f.require_group("/Kinematics")
        for name, data in vals.items():
            units, meaning = KINEMATICS[name]
            write_dataset(f, f"/Kinematics/{name}", np.asarray(data), units=units, description=meaning)
        g.attrs.update({k: v for k, v in attrs.items() if v is not None})


def _write(path, binned, lib, kin: BinKinematics, *, moments, velscale, lam_range, mask, attrs):
    """A fresh CubeFit file at ``path``: LOSVDs from ``kin`` (module docstring, step 4),
    :func:`cubefit.ifu.prepare.prepare_global_fit`, then ``/Kinematics``."""
    from .losvds import losvds_from_moments, velocity_grid
    from .prepare import prepare_global_fit
    light = light_density(kin)
    present = (light > 0)[..., None]                  # a component without light: no histogram
    mom = kin.params[..., :moments]
    vel_pix = velocity_grid(np.where(present, mom, np.nan), velscale=velscale)
    H = losvds_from_moments(np.where(present, mom, 0.0), light, vel_pix)
    Path(path).unlink(missing_ok=True)
    prepare_global_fit(path, binned, lib, H, vel_pix, template_fwhm=_template_fwhm(lib),
                       template_medium="air", velscale_ratio=2, lam_range=lam_range,
                       mask_ranges=list(mask) + _line_windows(binned.medium, 800.0),
                       names=[f"component {c + 1}" for c in range(kin.C)])
    write_kinematics(path, kin, attrs)


def _mixtures(light, lib, lam_range) -> tuple:
    """Population mixtures ``(C, P)`` as weights on the library's templates (nested tuples)
    from the light ``(C, P)`` of each template in each component: the light fraction of the
    template in the component over the template's mean flux in ``lam_range`` (rest Å)."""
    L = np.asarray(light, dtype=np.float64)
    band = (lib.lam >= lam_range[0]) & (lib.lam <= lam_range[1])
    tot = L.sum(axis=1, keepdims=True)
    W = np.divide(L, tot, out=np.zeros_like(L), where=tot > 0) / lib.flux[:, band].mean(axis=1)
    return tuple(tuple(float(v) for v in row) for row in W)


def _pooled_light(kin: BinKinematics) -> np.ndarray:
    """``(C, P)`` light of every template in every component summed over the bins, each bin
    weighted by how well its components are apart in velocity, ``min(1, (Δv/Σσ)²)`` for the
    closest pair: where they overlap, the per-bin fit cannot tell their populations apart."""
    v, s = kin.params[..., 0], kin.params[..., 1]
    dv = np.abs(v[:, :, None] - v[:, None, :])
    ss = s[:, :, None] + s[:, None, :]
    sep = np.where(np.eye(kin.C, dtype=bool), np.inf, dv / ss).min(axis=(1, 2))
    w = np.minimum(1.0, np.nan_to_num(sep, nan=0.0, posinf=1.0)) ** 2
    return np.einsum("s,scp->cp", w, kin.template_light)


def ingest(cube, out, *, z: float, target_sn: float, components: int = 1, lam_range=None,
           mask=(), templates: str = "emiles", mp: int = 1, min_sn: float = 2.0, moments: int = 2,
           degree: int = -1, mdegree: int | None = None, order_by: str = "sigma", refine: int = 4,
           sky_lines: bool = True, overwrite: bool = False, progress: bool = True) -> IngestResult:
    """Read, bin, fit and write ``cube`` to the CubeFit file ``out`` (module docstring).

    ``z`` redshift; ``target_sn`` S/N per pixel of the bins; ``components`` kinematic
    components per bin; ``lam_range (lo, hi)`` rest-frame Å; ``mask`` rest-frame ``(lo, hi)``
    Å windows left out; ``templates`` ``"emiles"``, a folder of MILES-style FITS or a pPXF
    ``.npz``; ``mp`` processes for the per-bin fits; ``min_sn`` spaxels below are unused;
    ``moments``, ``degree``, ``mdegree`` of the per-bin fits; ``order_by`` labelling of
    the components (:mod:`cubefit.ifu.bin_kinematics`); ``refine`` refinement passes with
    more than one component (module docstring); ``sky_lines``: flag the strong night-sky
    lines; ``overwrite``: replace an existing ``out``.
    """
    from ..runner import PipelineRunner
    from ..science import analyse
    from .binning import bin_cube
    from .readers import read_cube
    if order_by not in ORDER_BY:
        raise ValueError(f"order_by: expected one of {ORDER_BY}, got {order_by!r}")
    if not (isinstance(mp, int) and mp >= 1):
        raise ValueError(f"mp: expected a number of processes >= 1, got {mp!r}")
    if not (isinstance(refine, int) and refine >= 0):
        raise ValueError(f"refine: expected a number of passes >= 0, got {refine!r}")
    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; choose another output or pass overwrite=True")
    t = {"start": time.perf_counter()}
    cube_obj = read_cube(cube, z=z)
    if lam_range is not None:
        cube_obj = cube_obj.select(float(lam_range[0]), float(lam_range[1]), frame="rest")
    if sky_lines:
        cube_obj = cube_obj.mask_sky_lines()
    if mask:
        cube_obj = cube_obj.mask_ranges(mask, frame="rest")
    t["read"] = time.perf_counter()
    binned = bin_cube(cube_obj, target_sn, min_sn=min_sn)
    del cube_obj
    t["bin"] = time.perf_counter()
    lam_rest = binned.lam / (1.0 + binned.z)
    vs = velscale_of(binned.lam) / 2.0                # two template pixels per (finest) data pixel
    settings = BinFitSettings(templates=str(templates), lam_range=(lam_rest[0] * 0.97, lam_rest[-1] * 1.03),
                              velscale=vs, components=int(components), moments=int(moments),
                              degree=int(degree), mdegree=mdegree)
    kin = fit_bins(binned, settings, mp=mp, progress=progress)
    t["kinematics"] = time.perf_counter()
    ok = kin.status == 0
    if not ok.any():
        raise RuntimeError(f"{cube}: no bin could be fitted; first problems: "
                           + "; ".join(m for m in kin.messages if m)[:600])
    if not ok.all():
        log.warning("%s: %d of %d bins left out (fit failed), e.g. %s", cube, int((~ok).sum()), kin.S,
                    next(m for m in kin.messages if m))
    n_total = kin.S
    kin = kin.take(ok).ordered(order_by)
    binned = _keep_bins(binned, ok)
    lib = load_library(settings.templates, settings.lam_range)
    attrs = {"components": kin.C, "moments": moments, "order_by": order_by,
             "templates": str(templates), "target_sn": float(target_sn), "min_sn": float(min_sn),
             "degree": degree, "mdegree": "auto" if mdegree is None else mdegree,
             "bins_left_out": int(n_total - kin.S), "source": str(cube)}
    fit_range = (lam_rest[0], lam_rest[-1]) if lam_range is None else tuple(lam_range)
    write = dict(moments=moments, velscale=vs, lam_range=lam_range, mask=mask)
    tmp = out.with_name(f".{out.name}.new-{os.getpid()}")
    try:
        passes = refine if kin.C > 1 else 0
        light = _pooled_light(kin) if passes else None      # the per-bin fits' populations
        for k in range(passes):
            t0 = time.perf_counter()
            if k > 0:                                       # then the global fit's
                PipelineRunner(tmp).solve_all_mp_batched(track=False)
                light = analyse(tmp).fit.light
            new = fit_bins(binned, replace(settings, mixtures=_mixtures(light, lib, fit_range)),
                           mp=mp, progress=progress, starts=kin.params[..., :moments])
            use = new.status == 0                     # a bin whose refit fails keeps its light
            for name in ("params", "errors", "light", "npix", "rchi2", "flags"):
                getattr(kin, name)[use] = getattr(new, name)[use]
            log.info("%s: refinement pass %d: light of the %d components refitted in %d of %d bins "
                     "(%.1f s)", cube, k + 1, kin.C, int(use.sum()), kin.S, time.perf_counter() - t0)
            _write(tmp, binned, lib, kin, attrs={**attrs, "refine_passes": k + 1}, **write)
        if not passes:
            _write(tmp, binned, lib, kin, attrs=attrs, **write)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    t["refine+write"] = time.perf_counter()
    steps = ("read", "bin", "kinematics", "refine+write")
    prev = [t["start"], t["read"], t["bin"], t["kinematics"]]
    timings = {k: t[k] - p for k, p in zip(steps, prev)}
    log.info("%s: %d bins x %d components written (%s)", out, kin.S, kin.C,
             ", ".join(f"{k} {v:.1f} s" for k, v in timings.items()))
    return IngestResult(path=out, n_bins=kin.S, n_bins_total=n_total, components=kin.C,
                        kinematics=kin, binned=binned, timings=timings)
