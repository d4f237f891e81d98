"""Per-bin kinematics of one or more components, for ``cubefit ingest`` (docs/ifu.md).

Each binned spectrum is fitted with :func:`cubefit.spectra.kinematics.fit_kinematics`, every
component drawing on the whole template library (pPXF's ``component`` with the templates
listed once per component):

1. one component: ``(v₀, σ₀)``;
2. ``C > 1``: two fits of ``C`` components from different starts — velocities spread
   over ``v₀ ± Δ`` (``Δ = σ₀/2``, between 30 and 300 km/s), dispersions ``0.7σ₀`` down to
   ``0.4σ₀`` — in one order and in the reverse order of velocities; the one with the
   lower χ² is kept.  The two starts matter when the components overlap in velocity
   (the centre of counter-rotating disks), where a single start can stall in the mirror
   solution's basin.

With ``BinFitSettings.mixtures`` (the refinement passes of :func:`cubefit.ifu.ingest.ingest`)
component ``c`` has one template, its population mixture, and each bin is fitted from its
previous kinematics and from the same with the velocities of the components exchanged.

Which fitted component is "component 1" is arbitrary in each bin; ``order_by`` makes the
labels consistent across the field: ``"sigma"`` (decreasing σ: the dynamically hot
component first, e.g. bulge or thick disk), ``"age"`` (decreasing light-weighted age of the
component's templates) or ``"none"`` (as fitted).

Worker processes (``mp > 1``) are started with :func:`cubefit.parallel.start_without_main`
(the user's script is never re-run); each prepares the templates once, in its
initializer, from a short description; results come back in bin order, one BLAS thread
per fit, so they do not depend on ``mp``.
"""
from __future__ import annotations

import functools
import multiprocessing
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

__all__ = ["BinFitSettings", "BinKinematics", "fit_bins", "fit_bin", "load_library", "light_density",
           "mixture_library", "velscale_of", "ORDER_BY"]

ORDER_BY = ("sigma", "age", "none")
_WORKER: dict = {}


@dataclass(frozen=True)
class BinFitSettings:
    """What every worker needs to fit a bin (all picklable and small).

    ``templates``: ``"emiles"``, a folder of MILES-style FITS SSPs or a pPXF ``.npz`` file
    (libraries in air, as MILES); ``lam_range``: rest-frame Å the templates must cover
    (the fitted range plus the LOSVD margin); ``velscale``: template pixel, km/s;
    ``components``, ``moments`` (2 or 4), ``degree``, ``mdegree`` (None: one per 1000 Å),
    ``vel_max``, ``sigma_max`` (km/s): as :func:`cubefit.spectra.kinematics.fit_kinematics`.
    ``mixtures``: ``(C, P)`` weights on the library's templates (nested tuples): each
    component then has one template, its mixture (the refinement pass of
    :func:`cubefit.ifu.ingest.ingest`), and is fitted from the start given per bin.
    """

    templates: str
    lam_range: tuple
    velscale: float
    components: int = 1
    moments: int = 2
    degree: int = -1
    mdegree: int | None = None
    vel_max: float = 1000.0
    sigma_max: float = 600.0
    mixtures: tuple | None = None

    def __post_init__(self):
        if self.components < 1:
            raise ValueError(f"components: expected >= 1, got {self.components}")
        if self.moments not in (2, 4):
            raise ValueError(f"moments: expected 2 (v, sigma) or 4 (v, sigma, h3, h4), got {self.moments}")


@dataclass
class BinKinematics:
    """Per-bin results ``(S, C, ...)``: ``params``/``errors (S, C, 4)`` v, σ (km/s), h3, h4 and
    formal 1σ errors (NaN: not fitted), ``light (S, C)`` each component's model flux summed
    over the fitted pixels (data units × pixels), ``npix (S,)`` fitted pixels, ``rchi2 (S,)``,
    ``logage (S, C)``/``metal (S, C)`` light-weighted ⟨log10 age/yr⟩ and ⟨[M/H]⟩,
    ``flags (S, C)`` σ bits (:data:`cubefit.spectra.continuum.VDISP_FLAGS`), ``status (S,)``
    (0 ok) with ``messages``, ``template_light (S, C, P)`` each component's light split over
    the fitted templates."""

    params: np.ndarray
    errors: np.ndarray
    light: np.ndarray
    npix: np.ndarray
    rchi2: np.ndarray
    logage: np.ndarray
    metal: np.ndarray
    flags: np.ndarray
    status: np.ndarray
    template_light: np.ndarray
    messages: list = field(default_factory=list)

    @property
    def S(self) -> int:
        return self.params.shape[0]

    @property
    def C(self) -> int:
        return self.params.shape[1]

    _ARRAYS = ("params", "errors", "light", "npix", "rchi2", "logage", "metal", "flags", "status",
               "template_light")

    def take(self, idx) -> "BinKinematics":
        """The bins ``idx`` (an index array or boolean mask), in that order."""
        idx = np.flatnonzero(idx) if np.asarray(idx).dtype == bool else np.asarray(idx)
        return BinKinematics(*(getattr(self, n)[idx] for n in self._ARRAYS),
                             messages=[self.messages[i] for i in idx])

    def ordered(self, by: str) -> "BinKinematics":
        """Components relabelled in every bin by ``by`` (module docstring)."""
        if by not in ORDER_BY:
            raise ValueError(f"order_by: expected one of {ORDER_BY}, got {by!r}")
        if by == "none" or self.C == 1:
            return self
        key = self.params[:, :, 1] if by == "sigma" else self.logage
        key = np.where(np.isfinite(key) & (self.light > 0), key, -np.inf)   # absent ones last
        perm = np.argsort(-key, axis=1, kind="stable")                        # (S, C)
        rows = np.arange(self.S)[:, None]
        return BinKinematics(*(a[rows, perm] if a.ndim >= 2 else a
                               for a in (getattr(self, n) for n in self._ARRAYS)),
                             messages=list(self.messages))


def load_library(spec: str, lam_range):
    """The :class:`cubefit.templates.TemplateLibrary` described by ``spec`` (``"emiles"``, a
    folder of MILES-style FITS files, a pPXF ``.npz`` file), over ``lam_range`` rest Å."""
    from ..templates import TemplateLibrary
    lo, hi = (float(v) for v in lam_range)
    if spec == "emiles":
        return TemplateLibrary.from_emiles(lam_range=(lo, hi))
    p = Path(spec)
    if p.is_dir():
        return TemplateLibrary.from_fits_folder(p, lam_range=(lo, hi))
    if p.suffix == ".npz" and p.is_file():
        return TemplateLibrary.from_npz(p, lam_range=(lo, hi))
    raise ValueError(f"--templates {spec!r}: give 'emiles', a folder of MILES-style FITS files or a "
                     "pPXF .npz SSP file")


def mixture_library(lib, mixtures):
    """A library of ``C`` templates, ``mixtures (C, P) @ lib.flux``: one population mixture
    per component (population axis ``component``)."""
    W = np.asarray(mixtures, dtype=np.float64)
    C = W.shape[0]
    return replace(lib, flux=W @ lib.flux, pop_axes={"component": np.arange(C, dtype=float)},
                   grid_shape=(C,), axis_units={"component": ""}, norm=np.ones(C), masses=None,
                   mass_to_light=None, names=[f"component {c + 1} mixture" for c in range(C)])


@functools.lru_cache(maxsize=2)
def _prepared(settings: BinFitSettings):
    from ..spectra import prepare_templates
    lo, hi = settings.lam_range
    lib = load_library(settings.templates, (lo * 0.99, hi * 1.01))
    if settings.mixtures is not None:
        lib = mixture_library(lib, settings.mixtures)
    return prepare_templates(lib, velscale=settings.velscale, lam_range=(lo, hi),
                             vel_max=settings.vel_max, sigma_max=settings.sigma_max)


def fit_bin(spec, pt, settings: BinFitSettings, start=None):
    """Fit one binned spectrum with ``settings.components`` components (module docstring);
    returns the :class:`~cubefit.spectra.kinematics.KinematicsResult` kept.  With
    ``settings.mixtures``: one fit, component ``c`` on template ``c``, from ``start``."""
    from ..spectra.kinematics import fit_kinematics
    kw = dict(degree=settings.degree, mdegree=settings.mdegree, vel_max=settings.vel_max,
              sigma_max=settings.sigma_max)
    if settings.mixtures is not None:
        best = None
        for st in (start, [[p[0]] + list(q[1:]) for p, q in zip(start[::-1], start)]):
            r = fit_kinematics(spec, pt, np.arange(settings.components), moments=settings.moments,
                               start=st, **kw)
            if r.ok and (best is None or r.chi2 < best.chi2):
                best = r
        return best if best is not None else r
    one = fit_kinematics(spec, pt, None, moments=settings.moments, **kw)
    C = settings.components
    if C == 1 or not one.ok:
        return one
    v0, s0 = float(one.vel[0]), float(one.sigma[0])
    d = min(max(0.5 * s0, 30.0), 300.0)
    vs = v0 + d * np.linspace(1.0, -1.0, C)
    ss = np.maximum(s0 * np.linspace(0.7, 0.4, C), 2.0 * pt.velscale)
    best = None
    for order in (vs, vs[::-1]):
        start = [[float(v), float(s)] for v, s in zip(order, ss)]
        r = fit_kinematics(spec, pt, C, moments=settings.moments, start=start, **kw)
        if r.ok and (best is None or r.chi2 < best.chi2):
            best = r
    return best if best is not None else r


def _init_worker(settings: BinFitSettings, wave, fwhm, z: float, air: bool) -> None:
    _WORKER.update(settings=settings, wave=wave, fwhm=fwhm, z=z, air=air, pt=_prepared(settings))


def _fit_one(item):
    """Fit bin ``(s, flux, ivar)`` with this process's templates; a small picklable tuple."""
    from threadpoolctl import threadpool_limits
    from ..spectra import Camera, Resolution, Spectrum
    s, flux, ivar, start = item
    w = _WORKER
    res = None if w["fwhm"] is None else Resolution.from_fwhm(w["fwhm"], w["wave"])
    spec = Spectrum([Camera("bin", w["wave"], flux, ivar, res)], z=w["z"], targetid=s, air=w["air"])
    C = w["settings"].components
    try:
        with threadpool_limits(limits=1):
            r = fit_bin(spec, w["pt"], w["settings"], start)
    except Exception as exc:          # a bug in one bin must not lose the others
        return (s, 4, f"bin {s}: internal error ({type(exc).__name__}: {exc}); please report it",
                None)
    if not r.ok:
        return s, r.status, f"bin {s}: {r.message}", None
    if r.C != C:                       # the one-component fit (C > 1 fits all failed)
        return s, 4, f"bin {s}: no {C}-component fit converged", None
    return s, 0, "", (r.params, r.errors, r.light, r.npix, r.rchi2, r.logage_lw, r.mh_lw, r.flags,
                      r.template_light)


def _context():
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")


def fit_bins(binned, settings: BinFitSettings, *, mp: int = 1, progress: bool = True,
             starts=None) -> BinKinematics:
    """Kinematics of every bin of ``binned`` (:class:`cubefit.ifu.binning.BinnedCube`) with
    ``mp`` worker processes (module docstring) and a tqdm progress bar; ``starts (S, C, m)``
    the start of each bin's fit when ``settings.mixtures`` is given."""
    from tqdm.auto import tqdm
    from ..parallel import start_without_main
    S, C = binned.S, settings.components
    ivar = np.where(binned.good, 1.0 / np.where(binned.good, binned.noise, 1.0) ** 2, 0.0)
    st = [None] * S if starts is None else [np.asarray(a).tolist() for a in starts]
    items = ((s, binned.flux[s], ivar[s], st[s]) for s in range(S))
    initargs = (settings, binned.lam, binned.fwhm, float(binned.z), binned.medium == "air")
    bar = dict(total=S, disable=not progress, unit="bin", desc=f"kinematics ({C} comp.)")
    out = BinKinematics(params=np.full((S, C, 4), np.nan), errors=np.full((S, C, 4), np.nan),
                        light=np.zeros((S, C)), npix=np.zeros(S, np.int64), rchi2=np.full(S, np.nan),
                        logage=np.full((S, C), np.nan), metal=np.full((S, C), np.nan),
                        flags=np.zeros((S, C), np.int64), status=np.zeros(S, np.int64),
                        template_light=np.zeros((S, C, 0)), messages=[""] * S)

    def collect(results):
        for s, status, message, vals in tqdm(results, **bar):
            out.status[s], out.messages[s] = status, message
            if vals is not None:
                if out.template_light.shape[2] != vals[-1].shape[1]:      # now P is known
                    out.template_light = np.zeros((S, C, vals[-1].shape[1]))
                (out.params[s], out.errors[s], out.light[s], out.npix[s], out.rchi2[s],
                 out.logage[s], out.metal[s], out.flags[s], out.template_light[s]) = vals

    if mp <= 1:
        _init_worker(*initargs)
        collect(map(_fit_one, items))
        return out
    ctx = _context()
    pool = start_without_main(lambda: ctx.Pool(mp, initializer=_init_worker, initargs=initargs))
    try:
        collect(pool.imap(_fit_one, items, chunksize=max(1, min(16, S // (4 * mp)))))
    finally:
        pool.terminate()
        pool.join()
    return out


def light_density(kin: BinKinematics) -> np.ndarray:
    """``(S, C)`` each component's mean model flux density over the bin's fitted pixels
    (its light per pixel): the LOSVD scale of the global fit, independent of how many
    pixels of the bin were masked."""
    return kin.light / np.maximum(kin.npix, 1)[:, None]


def velscale_of(lam) -> float:
    """Smallest ln-λ step of pixels ``lam`` in km/s (the finest sampling of the data)."""
    from .. import C_KMS
    return float(C_KMS * np.min(np.diff(np.log(np.asarray(lam, dtype=np.float64)))))

