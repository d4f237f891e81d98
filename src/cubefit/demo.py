"""The main job: a mock IFU galaxy from E-MILES templates, fitted with the manual's workflow.

:func:`run_demo` (``cubefit demo``) does, printing each step and its time:

1. **Templates**: the 150 E-MILES SSPs (25 ages × 6 [M/H]; fetched once into the user
   cache), log-rebinned to :data:`VELSCALE` km/s over :data:`TEMPLATE_LAM` and divided by
   one global median, so that fit weights stay proportional to initial stellar mass
   (``synthetic=True``: :func:`cubefit.mock.synthetic_templates`, no download, no masses).
2. **Mock galaxy** (:func:`cubefit.mock.make_mock_galaxy`): ``nx × nx`` spaxels, the first
   ``n_components`` of :data:`DEMO_COMPONENTS` (each with its own rotation, dispersion,
   surface-brightness profile and age/[M/H] mixture; Gauss–Hermite LOSVD histograms per
   spaxel and component), observed over :data:`OBS_LAM` with two template pixels per
   observed pixel (≈ 600 pixels), S/N = ``snr`` per pixel in every spaxel (a binned cube),
   :data:`MASK_WINDOWS` (emission lines and the 5577 Å sky line) masked.
3. **The manual's workflow**: ``H5Manager(...).init_base(H5Dims(...))``,
   ``populate_from_arrays``, ``ensure_rebin_and_resample``; the truth, spaxel positions,
   component names and template masses are stored beside the inputs.
4. **Hypercube**: materialised (``build_hypercube(norm_mode="data")`` then
   ``convert_hypercube_norm(to_mode="model")``) when ``S·C·P·L`` float32 fit in
   ``max_cube_bytes``, else skipped: the runner's matrix-free operator gives the same
   model without it.  Without a cube the runner fits in its default ``"data"``
   normalisation (it has no normalisation argument), with a cube in ``"model"``, the
   normalisation the mock is made in (exactly representable).  The log says which.
5. ``ensure_lambda_weights`` and ``PipelineRunner(...).solve_all_mp_batched(...)``
   (certified NNLS, optional Tikhonov ``regul``).
6. **Report** (:func:`cubefit.report.write_report`): figures, ``summary.json`` and
   ``report.md`` comparing recovered and true component light fractions, light- and
   mass-weighted ages and metallicities.

Everything goes to the folder ``out``: ``galaxy.h5`` and the report files.
"""
from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .mock import Component, make_mock_galaxy, synthetic_templates
from .store import H5Dims, H5Manager, open_h5

log = logging.getLogger(__name__)

__all__ = ["run_demo", "DemoResult", "DEMO_COMPONENTS", "load_demo_templates", "TEMPLATE_LAM",
           "OBS_LAM", "VELSCALE", "VEL_MAX", "MASK_WINDOWS", "MAX_CUBE_BYTES", "HYPERCUBE_CHOICES"]

TEMPLATE_LAM = (4700.0, 5800.0)   # Å, templates kept for the demo (observed range + kernel margin)
OBS_LAM = (4800.0, 5650.0)        # Å, observed range of the mock
VELSCALE = 40.0                   # km/s per template pixel; observed pixels are twice that
VEL_MAX = 800.0                   # km/s, half-range of the LOSVD velocity grid
MASK_WINDOWS = ((4851.0, 4871.0), (4949.0, 4969.0), (4997.0, 5017.0), (5190.0, 5210.0),
                (5567.0, 5587.0))
"""Masked windows (Å): Hβ, [O III] 4959 and 5007, [N I] 5200 (emission) and [O I] 5577 (sky)."""
MAX_CUBE_BYTES = 512 * 2**20
"""Largest materialised hypercube (``S·C·P·L`` float32) the demo builds with ``hypercube="auto"``."""
HYPERCUBE_CHOICES = ("auto", "yes", "no")

DEMO_COMPONENTS = (
    Component("bulge", vmax=0.0, sigma=250.0, r_eff=1.5, flux=1.0, pop_centre=(0.92, 0.8)),
    Component("thick disk", vmax=100.0, sigma=120.0, r_eff=3.0, flux=0.45, pop_centre=(0.75, 0.4),
              q=0.6),
    Component("disk", vmax=220.0, sigma=45.0, r_eff=3.5, flux=0.5, pop_centre=(0.55, 0.65), q=0.3),
    Component("counter-rotating disk", vmax=-220.0, sigma=40.0, r_eff=2.5, flux=0.8,
              pop_centre=(0.3, 0.3), q=0.3),
    Component("nuclear disk", vmax=160.0, sigma=70.0, r_eff=0.8, flux=0.8, pop_centre=(0.15, 0.9),
              q=0.4, r_turn=0.5),
    Component("halo", vmax=40.0, sigma=180.0, r_eff=6.0, flux=0.15, pop_centre=(0.97, 0.1)),
)
"""The demo's kinematic components; ``n_components`` takes the first 3 to 6.  Population
centres are fractional positions on the (age, [M/H]) grid: with E-MILES the bulge is
old and metal-rich, the counter-rotating disk young and metal-poor.  The default four
are kinematically distinct (a pressure-supported bulge, a warm thick disk, and cold
disks rotating in opposite senses), which is what makes their populations separable."""


@dataclass
class DemoResult:
    """What :func:`run_demo` produced: ``folder``, the HDF5 file ``h5``, the ``report``
    (:class:`cubefit.report.Report`), ``hypercube`` (True if materialised), the
    ``solver_stats`` of the runner and ``timings`` (step → seconds, plus ``total``)."""

    folder: Path
    h5: Path
    report: object
    hypercube: bool
    solver_stats: dict
    timings: dict


def load_demo_templates(synthetic: bool = False):
    """``(library or None, flux (P, T), ln_lam (T,), pop_axes, axis_units)`` for the demo.

    E-MILES: the :class:`cubefit.templates.TemplateLibrary` (with masses) divided by one
    global median.  Synthetic: None and :func:`cubefit.mock.synthetic_templates` scaled to
    unit median.
    """
    if synthetic:
        flux, ln_lam, axes = synthetic_templates(lam=TEMPLATE_LAM, velscale=VELSCALE)
        return None, flux / np.median(flux), ln_lam, axes, {"age": "Gyr", "metal": "dex"}
    from .templates import TemplateLibrary
    lib = TemplateLibrary.from_emiles(velscale=VELSCALE, lam_range=TEMPLATE_LAM).normalise()
    return lib, lib.flux, lib.ln_lam, dict(lib.pop_axes), dict(lib.axis_units)


class _Steps:
    """Reports ``[demo k/n] message (seconds)``: printed, or logged at INFO level when
    quiet (so a quiet run still says what it did); keeps the timings."""

    def __init__(self, n: int, quiet: bool):
        self.n, self.k, self.quiet = n, 0, quiet
        self.t0 = self.t = time.perf_counter()
        self.timings: dict[str, float] = {}

    def _say(self, text: str) -> None:
        if self.quiet:
            log.info("%s", text)
        else:
            print(text, flush=True)

    def start(self, name: str, message: str) -> None:
        self.k += 1
        self.name, self.t = name, time.perf_counter()
        self._say(f"[demo {self.k}/{self.n}] {message} ...")

    def done(self, message: str = "") -> None:
        dt = time.perf_counter() - self.t
        self.timings[self.name] = dt
        self._say(f"[demo {self.k}/{self.n}]   {message + ', ' if message else ''}{dt:.1f} s")


def run_demo(out=Path("cubefit_demo"), synthetic: bool = False, nx: int = 8, seed: int = 1, *,
             snr: float | None = 100.0, n_components: int = 4, regul: float = 0.0,
             processes: int = 2, hypercube: str = "auto", max_cube_bytes: int = MAX_CUBE_BYTES,
             method: str = "auto", quiet: bool = False) -> DemoResult:
    """Make, fit and report the demo galaxy in the folder ``out`` (module docstring).

    Parameters
    ----------
    out : output folder (created; ``galaxy.h5`` in it is overwritten).
    synthetic : synthetic templates instead of E-MILES (no download; no masses).
    nx : spaxels per side of the square field (S = nx²).
    seed : random seed of the noise.
    snr : S/N per pixel in every spaxel; None or inf: no noise.
    n_components : 3 to 6 kinematic components (the first of :data:`DEMO_COMPONENTS`).
    regul : Tikhonov strength of the fit (second differences over age × [M/H]; see
        :mod:`cubefit.solvers.priors`); 0 (default) = unregularised NNLS.
    processes : operator threads of the solver (BLAS is capped at 1 thread each).
    hypercube : ``"auto"`` (materialise if ≤ ``max_cube_bytes``), ``"yes"`` or ``"no"``.
    method : solver (``"auto"`` or a :data:`cubefit.solvers.METHODS` name).
    quiet : print nothing (progress, table, paths).

    Returns a :class:`DemoResult`; prints the recovered-vs-true table and where the
    results are.
    """
    if not 3 <= int(n_components) <= len(DEMO_COMPONENTS):
        raise ValueError(f"n_components: expected 3 to {len(DEMO_COMPONENTS)}, got {n_components!r}")
    if int(nx) < 2:
        raise ValueError(f"nx: expected at least 2 spaxels per side, got {nx!r}")
    if hypercube not in HYPERCUBE_CHOICES:
        raise ValueError(f"hypercube: expected one of {HYPERCUBE_CHOICES}, got {hypercube!r}")
    from .hypercube import build_hypercube, convert_hypercube_norm
    from .report import write_report
    from .runner import PipelineRunner
    from .science import write_layout, write_template_masses, write_truth
    from .weights import ensure_lambda_weights

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "galaxy.h5"
    steps = _Steps(6, quiet)

    steps.start("templates", "templates: " + ("synthetic" if synthetic else
                                              "E-MILES (fetched and cached on first use)"))
    lib, flux, ln_lam, axes, units = load_demo_templates(synthetic)
    pop_shape = tuple(len(v) for v in axes.values())
    steps.done(f"{flux.shape[0]} templates {pop_shape}, {flux.shape[1]} pixels at {VELSCALE:g} km/s")

    comps = DEMO_COMPONENTS[:int(n_components)]
    steps.start("mock", f"mock galaxy: {nx}×{nx} spaxels, {len(comps)} components, "
                        f"S/N {_snr_text(snr)}")
    mock = make_mock_galaxy(flux, ln_lam, pop_shape=pop_shape, pop_axes=axes, nx=nx, ny=nx,
                            components=comps, obs_lam=OBS_LAM, vel_max=VEL_MAX, snr=snr,
                            noise_model="binned", mask_windows=MASK_WINDOWS, seed=seed)
    S, V, C = mock.losvd.shape
    P, L = flux.shape[0], mock.obs_pix.size
    steps.done(f"{S} spaxels × {L} pixels ({int(mock.mask.sum())} unmasked), {V} velocity bins")

    steps.start("write", f"writing {path} with H5Manager (the manual's step 1)")
    mgr = H5Manager(path, tem_pix=mock.tem_pix, obs_pix=mock.obs_pix)
    mgr.init_base(H5Dims(nSpat=S, nLSpec=L, nTSpec=mock.tem_pix.size, nVel=V, nComp=C, nPop=P),
                  overwrite=True)
    mgr.populate_from_arrays(losvd=mock.losvd, datacube=mock.datacube, templates=mock.templates,
                             mask=mock.mask, vel_pix=mock.vel_pix, noise=mock.noise,
                             pop_axes=axes, axis_units=units)
    mgr.ensure_rebin_and_resample()
    write_layout(path, xy=mock.xy, xy_units="spaxel", names=[c.name for c in comps])
    write_truth(path, mock.x_true, model=mock.model, norm_mode="model",
                meta={"components": [asdict(c) for c in comps], "snr": snr, "seed": seed,
                      "noise_model": "binned", "templates": "synthetic" if synthetic else "E-MILES"})
    if lib is not None:
        write_template_masses(path, lib)
    steps.done()

    cube_bytes = S * C * P * L * 4
    build = hypercube == "yes" or (hypercube == "auto" and cube_bytes <= max_cube_bytes)
    size = f"{cube_bytes / 2**20:.0f} MiB"
    why = f"hypercube={hypercube!r}" if hypercube != "auto" else \
        f"{'≤' if build else '>'} max_cube_bytes = {max_cube_bytes / 2**20:.0f} MiB"
    steps.start("hypercube", f"hypercube {S}×{C}×{P}×{L} float32 = {size} ({why}): " +
                ("materialising (build in 'data' norm, convert to 'model')" if build else
                 "not materialised; the solver applies the matrix-free operator"))
    if build:
        build_hypercube(path, norm_mode="data", progress=not quiet)
        convert_hypercube_norm(path, to_mode="model", recompute_energy=True, progress=not quiet)
    steps.done("fit in the 'model' normalisation" if build else
               "fit in the runner's default 'data' normalisation")

    steps.start("solve", f"λ-weights and solve ({method}, regul={regul:g}, {processes} threads)")
    ensure_lambda_weights(path)
    runner = PipelineRunner(path)
    _, stats = runner.solve_all_mp_batched(project_nonneg=True, processes=processes, blas_threads=1,
                                           method=method, regul=regul, track=False)
    steps.done(f"{stats['method']}: status {stats['status']}, optimality {stats['optimality']:.2g}, "
               f"{stats['nit']} iterations")

    steps.start("report", f"report in {out}")
    run_info = {
        "mock": f"{S} spaxels ({nx}×{nx}), {C} components, {P} "
                f"{'synthetic' if synthetic else 'E-MILES'} templates {pop_shape}, {L} pixels "
                f"{OBS_LAM[0]:g}–{OBS_LAM[1]:g} Å at {2 * VELSCALE:g} km/s, S/N "
                f"{_snr_text(snr)} per pixel, seed {seed}",
        "hypercube": f"{'materialised' if build else 'not materialised (matrix-free)'} ({size})",
        "run time to the fit": f"{time.perf_counter() - steps.t0:.1f} s "
                               f"(solve {steps.timings['solve']:.1f} s)",
    }
    report = write_report(path, out, title="CubeFit demo galaxy", run_info=run_info,
                          tolerances={"fraction": 0.01, "age": 0.15})
    steps.done(f"{len(report.figures)} figures")
    steps.timings["total"] = time.perf_counter() - steps.t0
    if not quiet:
        _print_summary(report, path, steps.timings["total"])
    return DemoResult(folder=out, h5=path, report=report, hypercube=build, solver_stats=stats,
                      timings=steps.timings)


def _snr_text(snr) -> str:
    return f"{snr:g}" if snr is not None and np.isfinite(snr) else "∞ (no noise)"


def _print_summary(report, path: Path, seconds: float) -> None:
    """The recovered-vs-true table, the key datasets and where everything is."""
    a = report.analysis
    print("\ncomponent               light fraction        <log age/yr>_L       <[M/H]>_L")
    print("                        true    fit           true   fit           true   fit")
    for c, name in enumerate(a.fit.names):
        t = a.truth
        cells = []
        for fn, spec in ((lambda p: p.fractions("light"), ".3f"),
                         (lambda p: p.mean_log_age("light"), ".2f"),
                         (lambda p: p.mean_metal("light"), "+.2f")):
            f = fn(a.fit)[c]
            cells.append(f"{format(fn(t)[c], spec) if t is not None else '–':>6} {format(f, spec):>6}")
        print(f"{name:<22}  " + "        ".join(cells))
    with open_h5(path, "r") as f:
        shown = [n for n in ("/DataCube", "/LOSVD", "/Templates", "/HyperCube/models", "/X_global")
                 if n in f]
        shapes = ", ".join(f"{n} {f[n].shape}" for n in shown)
    print(f"\n{path.name}: {shapes}")
    print(f"report: {report.markdown} ({len(report.figures)} figures, summary.json)")
    print(f"\ndone in {seconds:.1f} s; results in {report.folder.resolve()}")
