"""Emission-line fitting throughput on a DESI-size spectrum, next to pPXF 9.5.2 stars + gas.

The spectrum is the real DESI galaxy in ../shared/data/desi (TARGETID 39633345008634465,
z = 0.3687; 3 cameras, ~7,800 pixels).  Rows (one core: BLAS limited to one thread,
the median of ``--reps`` runs after one warm-up, no Monte Carlo):

* ``lines only``: :func:`cubefit.spectra.emlines.fit_emlines` (narrow fit + broad-Balmer
  test) on a fixed continuum;
* ``continuum + lines``: :func:`cubefit.spectra.continuum.fit_continuum` (E-MILES, 150 SSPs,
  prepared once, not timed) then the lines;
* ``MC refit``: one warm-started Monte-Carlo refit of the lines;
* ``pPXF stars + gas``: pPXF 9.5.2 fitting the same 150 E-MILES SSPs and its Gaussian gas
  templates (``ppxf_util.emission_lines``: Balmer series, [O II], [Ne III], [O III], [O I],
  [N II], [S II] with the same fixed/bounded doublets) in three kinematic components
  (stars, Balmer, forbidden) on the cameras stitched and log-rebinned at 69 km/s.

Prints a table; ``--json PATH`` writes it.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from scipy.ndimage import median_filter
from threadpoolctl import threadpool_limits

ROOT = Path(__file__).resolve().parents[1]
DESI = ROOT.parent / "shared" / "data" / "desi"
TARGETID = 39633345008634465


def load():
    from cubefit.spectra.desi import select_desi
    sel = select_desi(DESI / "redrock-4-80613-thru20210324.fits", DESI / "coadd-4-80613-thru20210324.fits",
                      targetids=[TARGETID])
    (spec,) = list(sel.spectra())
    return spec


def smooth_continuum(spec):
    from cubefit.spectra.linelist import default_linelist
    lines = [line.restwave * (1 + spec.z) for line in default_linelist()]
    out = []
    for cam in spec.cameras:
        bad = cam.ivar <= 0
        for lam in lines:
            bad |= np.abs(cam.wave / lam - 1) < 0.005
        x = np.arange(cam.npix)
        out.append(median_filter(np.interp(x, x[~bad], cam.flux[~bad]), size=151, mode="nearest"))
    return out


def timed(fn, reps):
    fn()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def ppxf_stars_gas(spec, reps):
    from ppxf import ppxf as ppxf_mod
    from ppxf import ppxf_util

    from astropy.io import fits

    from cubefit.spectra.data import air_to_vacuum
    from cubefit.templates import EMILES_PATTERN, fetch_emiles

    # stitch: b below 5800 Å, r to 7600 Å, z above (observed); log-rebin flux and variance
    parts = []
    for cam, lo, hi in zip(spec.cameras, (0, 5800, 7600), (5800, 7600, 1e5)):
        sel = (cam.wave >= lo) & (cam.wave < hi)
        parts.append((cam.wave[sel], cam.flux[sel], cam.ivar[sel]))
    wave = np.concatenate([p[0] for p in parts])
    flux = np.concatenate([p[1] for p in parts])
    ivar = np.concatenate([p[2] for p in parts])
    lam_range = np.array([wave[0], wave[-1]])
    gal, ln_lam, velscale = ppxf_util.log_rebin(lam_range, np.interp(np.linspace(*lam_range, wave.size), wave, flux))
    var = np.where(ivar > 0, 1 / np.where(ivar > 0, ivar, 1), 1e6)
    v2, _, _ = ppxf_util.log_rebin(lam_range, np.interp(np.linspace(*lam_range, wave.size), wave, var))
    noise = np.sqrt(np.clip(v2, 1e-12, None))
    lam_gal = np.exp(ln_lam) / (1 + spec.z)
    files = sorted(fetch_emiles().glob(EMILES_PATTERN))
    h = fits.getheader(files[0])
    lam = h["CRVAL1"] + h["CDELT1"] * (np.arange(h["NAXIS1"]) + 1 - h.get("CRPIX1", 1))
    keep = (lam > lam_gal[0] * 0.93) & (lam < lam_gal[-1] * 1.07)
    ssp = np.array([fits.getdata(f)[keep] for f in files]).T
    tpl, ln_t, _ = ppxf_util.log_rebin(air_to_vacuum(lam[keep]), ssp, velscale=velscale)
    tpl /= np.median(tpl)
    fwhm_gal = 1.8 / (1 + spec.z)      # DESI ~1.8 Å observed, in the rest frame
    gas, names, _ = ppxf_util.emission_lines(ln_t, [lam_gal[0], lam_gal[-1]], fwhm_gal, limit_doublets=True,
                                             vacuum=True)
    balmer = np.array(["H" in n and "[" not in n and "He" not in n for n in names])
    templates = np.column_stack([tpl, gas[:, balmer], gas[:, ~balmer]])
    component = [0] * tpl.shape[1] + [1] * int(balmer.sum()) + [2] * int((~balmer).sum())
    start = [[0.0, 150.0], [0.0, 80.0], [0.0, 80.0]]

    def run():
        return ppxf_mod.ppxf(templates, gal, noise, velscale, start, moments=[2, 2, 2], degree=-1, mdegree=10,
                             lam=lam_gal, lam_temp=np.exp(ln_t), component=component,
                             gas_component=np.array(component) > 0, gas_names=np.array(
                                 list(np.array(names)[balmer]) + list(np.array(names)[~balmer])), quiet=True)
    pp = run()
    t = timed(run, reps)
    return t, {"npix": int(gal.size), "velscale": float(velscale), "ntemplates": int(templates.shape[1]),
               "chi2": float(pp.chi2), "sigma_stars": float(pp.sol[0][1])}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=5, help="timed runs per row (median reported)")
    ap.add_argument("--no-continuum", action="store_true", help="skip the rows that need E-MILES")
    ap.add_argument("--no-ppxf", action="store_true", help="skip pPXF")
    ap.add_argument("--json", help="write the table to this JSON file")
    args = ap.parse_args(argv)
    if not DESI.exists():
        print(f"DESI files not found in {DESI}", file=sys.stderr)
        return 1
    from cubefit.spectra.emlines import fit_emlines
    rows = []
    with threadpool_limits(limits=1):
        spec = load()
        npix = sum(c.npix for c in spec.cameras)
        cont = smooth_continuum(spec)
        best = fit_emlines(spec, cont)
        t = timed(lambda: fit_emlines(spec, cont), args.reps)
        rows.append(("lines only (narrow + broad test)", t, {"nfev": best.nfev, "nlines": len(best.fitted)}))
        from cubefit.spectra.montecarlo import noisy_copy, realisation_rng
        rng = realisation_rng(0, spec.targetid)
        base = [c + m for c, m in zip(cont, best.models)]
        t = timed(lambda: fit_emlines(noisy_copy(spec, base, rng), cont, start=best, errors=False), args.reps)
        rows.append(("MC refit of the lines (per realisation)", t, {}))
        if not args.no_continuum:
            from cubefit.spectra.continuum import fit_continuum
            from cubefit.spectra.templates_prep import prepare_templates_cached
            pt = prepare_templates_cached()

            def both():
                c = fit_continuum(spec, pt)
                return fit_emlines(spec, [np.nan_to_num(m) for m in c.models])
            t_c = timed(lambda: fit_continuum(spec, pt), args.reps)
            rows.append(("continuum only", t_c, {}))
            t = timed(both, args.reps)
            rows.append(("continuum + lines", t, {}))
        if not args.no_ppxf:
            t, info = ppxf_stars_gas(spec, max(1, args.reps // 2))
            rows.append(("pPXF 9.5.2 stars + gas (3 components)", t, info))
    print(f"DESI TARGETID {TARGETID}: {len(spec.cameras)} cameras, {npix} pixels; one core\n")
    print(f"{'fit':44s} {'s/spectrum':>11s} {'spectra/s/core':>15s}")
    for name, t, _ in rows:
        print(f"{name:44s} {t:11.3f} {1 / t:15.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"targetid": TARGETID, "npix": npix, "rows": [
                {"fit": n, "seconds": t, "spectra_per_s": 1 / t, **info} for n, t, info in rows]}, f, indent=1)
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
