"""Real-size cost of each step from a MUSE cube to the global fit with error bars.

Usage::

    python benchmarks/ifu.py                          # 300 × 300 spaxels, 2 components, --mp 2
    python benchmarks/ifu.py --n 60 --nmonte 5        # a quick look
    python benchmarks/ifu.py --json out.json          # also write the numbers

Issue #13.  The cube is synthetic, with the MUSE pipeline's layout (``DATA``/``STAT``,
3-D WCS, air wavelengths, 0.2″ spaxels, 1.25 Å pixels over 4850–5600 Å, z = 0.01): two
counter-rotating exponential disks (an old one of 10 Gyr, σ = 150 km/s, and a young one of
1 Gyr, σ = 70 km/s, both of solar [M/H], E-MILES SSPs broadened to the MUSE line spread),
Gaussian LOSVDs applied through their Fourier transform, Poisson-like noise (S/N ∝ √flux,
``--snr-peak`` in the brightest spaxel).  It times, one after the other:

* ``read``: reading and masking the cube (:func:`cubefit.ifu.readers.read_cube`);
* ``binning``: PowerBin to ``--target-sn`` (:func:`cubefit.ifu.binning.bin_cube`);
* ``kinematics``: the per-bin fits of 2 components with ``--mp`` processes (all 150 E-MILES
  SSPs per component by default, ``--templates`` to change);
* ``refine+write``: the refinement passes (each a global solve and a refit of every bin)
  and writing the CubeFit file;
* ``solve``: ``cubefit solve`` (matrix-free operator, ``method="auto"``);
* ``uncertainties``: ``--nmonte`` Monte-Carlo re-solves (``cubefit solve --nmonte``), the
  extra time over the plain solve.

The per-step times come from :func:`cubefit.ifu.ingest.ingest` and from timing the solves;
the machine's load average is printed with the table.  Run it on an otherwise idle machine.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import scipy.fft
from astropy.io import fits

from cubefit.grids import rebin_matrix
from cubefit.ifu.ingest import ingest
from cubefit.ifu.prepare import broaden_templates
from cubefit.ifu.readers import muse_lsf_fwhm
from cubefit.runner import PipelineRunner
from cubefit.spectra import emiles_fwhm
from cubefit.templates import TemplateLibrary

Z = 0.01
LAM0, STEP, NPIX = 4850.0, 1.25, 600                 # observed MUSE pixels (air, Å)
DISKS = ((10.0, 150.0, 250.0, 1.0), (1.0, 70.0, -220.0, 0.8))   # (age Gyr, σ, vmax km/s, flux)


def synth_cube(path, n: int, snr_peak: float, seed: int = 0) -> float:
    """Write the module docstring's cube (``n × n`` spaxels) to ``path``; returns seconds."""
    t0 = time.perf_counter()
    lib = TemplateLibrary.from_emiles(velscale=20.0, lam_range=(4500.0, 5900.0))
    ages, metals = lib.pop_axes["age"], lib.pop_axes["metal"]
    im = int(np.argmin(np.abs(metals)))
    fw = muse_lsf_fwhm(lib.lam * (1 + Z)) / (1 + Z)
    tem = broaden_templates(lib.flux, lib.ln_lam, fw, emiles_fwhm(lib.lam))
    lam_obs = LAM0 + STEP * np.arange(NPIX)
    R = rebin_matrix(lib.ln_lam, np.log(lam_obs / (1 + Z))).tocsr()
    T = lib.T
    nfft = scipy.fft.next_fast_len(T + 200)
    w = 2 * np.pi * np.arange(nfft // 2 + 1) / nfft
    yy, xx = np.mgrid[0:n, 0:n]
    x, y = (xx - (n - 1) / 2).ravel() / (n / 8), (yy - (n - 1) / 2).ravel() / (n / 8)
    rr = np.hypot(x, y / 0.6)
    clean = np.zeros((n * n, NPIX), dtype=np.float32)
    for age, sig, vmax, flux in DISKS:
        p = int(np.argmin(np.abs(ages - age))) * metals.size + im
        spec = tem[p] / tem[p].mean()
        F = scipy.fft.rfft(spec, nfft) * np.exp(-0.5 * (sig / lib.velscale * w) ** 2)
        v = vmax * (2 / np.pi) * np.arctan(rr / 0.3) * np.divide(x, rr, out=np.zeros_like(x),
                                                                    where=rr > 0)
        sb = flux * np.exp(-rr / (1.2 if sig > 100 else 0.9))
        for a in range(0, n * n, 2048):
            ph = np.exp(-1j * np.outer(v[a:a + 2048] / lib.velscale, w))
            conv = scipy.fft.irfft(F * ph, nfft, axis=1)[:, :T]
            clean[a:a + 2048] += (sb[a:a + 2048, None] * (R @ conv.T).T).astype(np.float32)
    level = clean.mean(axis=1)
    sigma = (level.max() / snr_peak) * np.sqrt(level / level.max())
    data = clean + np.random.default_rng(seed).standard_normal(clean.shape).astype(np.float32) \
        * sigma[:, None].astype(np.float32)
    h = fits.Header({"CTYPE1": "RA---TAN", "CTYPE2": "DEC--TAN", "CUNIT1": "deg", "CUNIT2": "deg",
                     "CRPIX1": (n + 1) / 2, "CRPIX2": (n + 1) / 2, "CRVAL1": 150.0, "CRVAL2": -30.0,
                     "CD1_1": -0.2 / 3600, "CD1_2": 0.0, "CD2_1": 0.0, "CD2_2": 0.2 / 3600,
                     "CTYPE3": "AWAV", "CUNIT3": "Angstrom", "CRPIX3": 1.0, "CRVAL3": LAM0,
                     "CD3_3": STEP, "BUNIT": "10**(-20)*erg/s/cm**2/Angstrom"})
    prim = fits.PrimaryHDU()
    prim.header["INSTRUME"] = "MUSE"
    cube = lambda a: np.moveaxis(a.reshape(n, n, NPIX), -1, 0)          # noqa: E731
    var = np.broadcast_to((sigma ** 2)[:, None], clean.shape).astype(np.float32)
    fits.HDUList([prim, fits.ImageHDU(cube(data), h, name="DATA"),
                  fits.ImageHDU(cube(var), h, name="STAT")]).writeto(path, overwrite=True)
    return time.perf_counter() - t0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=300, help="spaxels per side (default: %(default)s)")
    ap.add_argument("--snr-peak", type=float, default=20.0,
                    help="S/N per pixel of the brightest spaxel (default: %(default)s)")
    ap.add_argument("--target-sn", type=float, default=60.0, help="bins' S/N (default: %(default)s)")
    ap.add_argument("--min-sn", type=float, default=3.0,
                    help="spaxels below are not used (default: %(default)s)")
    ap.add_argument("--mp", type=int, default=2, help="processes of the per-bin fits (default: 2)")
    ap.add_argument("--templates", default="emiles", help="as cubefit ingest (default: emiles)")
    ap.add_argument("--refine", type=int, default=4, help="as cubefit ingest (default: 4)")
    ap.add_argument("--nmonte", type=int, default=20, help="Monte-Carlo re-solves (default: 20)")
    ap.add_argument("--dir", default=None, help="work folder (default: a temporary one)")
    ap.add_argument("--json", help="write the numbers to this file")
    args = ap.parse_args(argv)
    work = Path(args.dir or tempfile.mkdtemp(prefix="cubefit-ifu-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    cube, h5 = work / "cube.fits", work / "galaxy.h5"
    t_cube = synth_cube(cube, args.n, args.snr_peak)
    r = ingest(cube, h5, z=Z, target_sn=args.target_sn, components=2, templates=args.templates,
               mp=args.mp, min_sn=args.min_sn, refine=args.refine, overwrite=True, progress=False)
    t0 = time.perf_counter()
    _, st = PipelineRunner(h5).solve_all_mp_batched(track=False)
    t_solve = time.perf_counter() - t0
    t0 = time.perf_counter()
    _, stm = PipelineRunner(h5).solve_all_mp_batched(track=False, nmonte=args.nmonte, seed=1)
    t_mc = time.perf_counter() - t0 - t_solve
    rows = [("cube synthesis (not a pipeline step)", t_cube),
            ("read + mask", r.timings["read"]), ("binning (PowerBin)", r.timings["bin"]),
            (f"per-bin kinematics, 2 components, --mp {args.mp}", r.timings["kinematics"]),
            (f"refinement ({args.refine} passes) + write", r.timings["refine+write"]),
            ("global solve (matrix-free, auto)", t_solve),
            (f"uncertainties (--nmonte {args.nmonte}, beyond the solve)", t_mc)]
    print(f"{args.n} x {args.n} spaxels x {NPIX} pixels -> {r.n_bins} bins (target S/N "
          f"{args.target_sn}), 2 components, templates {args.templates}; "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load "
          f"{os.getloadavg()[0]:.1f}")
    width = max(len(name) for name, _ in rows)
    for name, t in rows:
        print(f"  {name:<{width}}  {t:9.1f} s")
    fr = ", ".join(f"{v:.3f} ± {e:.3f}" for v, e in zip(stm["light_fractions"],
                                                        stm["uncertainties"]["light_fraction"]["std"]))
    print(f"  light fractions {fr} (solver {st['method']})")
    if args.json:
        out = {"n": args.n, "npix": NPIX, "bins": r.n_bins, "target_sn": args.target_sn,
               "mp": args.mp, "templates": args.templates, "refine": args.refine,
               "nmonte": args.nmonte, "load": os.getloadavg()[0], "cpus": os.cpu_count(),
               "seconds": {name: t for name, t in rows},
               "light_fractions": np.asarray(stm["light_fractions"]).tolist()}
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
