"""Throughput of the per-spectrum continuum fit, next to pPXF 9.5.2 on the same spectra.

Usage::

    python benchmarks/spectra.py                  # SAURON, SDSS and DESI, 7 repeats
    python benchmarks/spectra.py --repeat 3       # quicker
    python benchmarks/spectra.py --json out.json  # also write the numbers

Issue #10, benchmark item.  One process, BLAS/OpenMP capped to one thread
(:mod:`threadpoolctl`): spectra per second per core.  Spectra and settings:

* ``sauron``: NGC 4550 (SAURON, shipped with pPXF; air, FWHM 4.2 Å), log-rebinned as in
  pPXF's kinematics example; Gauss–Hermite to h4, additive degree 4.
* ``sdss``: NGC 3522 (SDSS DR18, shipped with pPXF; resolution from WDISP); h4, additive
  degree 10, rest λ < 8900 Å.
* ``desi``: TARGETID 39633345008634465 of the DESI file in ``../shared/data/desi`` (three
  cameras, resolution matrices, the package's default settings); ours only — pPXF takes
  one spectrum on one log grid with one line-spread function, not three cameras with
  resolution matrices.
* ``desi+lines`` (issue #11): the same DESI spectrum (~7,950 pixels, 3 cameras), fitted by
  ``fastspec`` per target as in a run — continuum, then the emission lines (narrow fit and
  broad-Balmer test), the line-subtracted Dn4000 and the catalogue row
  (:func:`cubefit.spectra.target.fit_target`, no Monte Carlo, no QA figure, no
  photometry) — next to pPXF 9.5.2 fitting the stars and the same gas lines together:
  the 150 E-MILES SSPs plus one Gaussian template per narrow line of the package's line
  list in range (doublets with a fixed ratio as one template, bounded ones free), in three
  kinematic components (stars, Balmer/He recombination lines, forbidden lines), on the
  cameras stitched and log-rebinned (as pPXF needs), multiplicative degree 10.

Both fitters use the 150 E-MILES SSPs, template pixels of half the data's, the same fitted
pixels (ours, passed to pPXF as ``goodpixels``) and no h3/h4 penalty (``bias=0``).
pPXF's templates are broadened to the data's resolution in linear λ and log-rebinned,
as its ``sps_util`` does (constant width per 100 Å piece).  Template preparation (once per
process in a run) is timed separately and not counted per spectrum.  Each fit is repeated
``--repeat`` times, ours and pPXF's alternating, and the median is reported; run on an
otherwise idle machine (the load average is printed).
"""
from __future__ import annotations

import argparse
import importlib.resources
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
from astropy.io import fits
from threadpoolctl import threadpool_limits

from cubefit import C_KMS
from cubefit.spectra import (Camera, ContinuumOptions, Resolution, Spectrum, air_to_vacuum, emiles_fwhm,
                             fit_continuum, prepare_templates)
from cubefit.templates import EMILES_PATTERN, fetch_emiles, parse_miles_name

RATIO = 2
DESI = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "desi"
DESI_TARGET = 39633345008634465


def emiles_linear(lo=3300.0, hi=10000.0):
    """Raw E-MILES SSPs (air, linear λ, ``lo``–``hi`` Å), ``(lam, (npix, 150))`` in the
    library's order."""
    files = sorted(fetch_emiles().glob(EMILES_PATTERN),
                   key=lambda f: (parse_miles_name(f.name)["age"], parse_miles_name(f.name)["metal"]))
    h = fits.getheader(files[0])
    lam = h["CRVAL1"] + h["CDELT1"] * (np.arange(h["NAXIS1"]) + 1 - h.get("CRPIX1", 1))
    keep = (lam > lo) & (lam < hi)
    return lam[keep], np.array([fits.getdata(f)[keep] for f in files]).T


def ppxf_templates(lam, spectra, fwhm_gal, velscale, vacuum):
    """pPXF-style templates (broadened in linear λ, then log-rebinned), module docstring."""
    import ppxf.ppxf_util as util
    sig = np.sqrt((fwhm_gal(lam) ** 2 - emiles_fwhm(lam) ** 2).clip(0)) / math.sqrt(8 * math.log(2))
    out = np.empty_like(spectra)
    for a in np.arange(lam[0], lam[-1], 100.0):
        inner = (lam >= a) & (lam < a + 100.0)
        outer = (lam >= a - 40.0) & (lam < a + 140.0)
        s = float(np.interp(a + 50.0, lam, sig))
        piece = util.varsmooth(lam[outer], spectra[outer], s) if s > 0 else spectra[outer]
        out[inner] = piece[inner[outer]]
    tpl, ln_t, _ = util.log_rebin(air_to_vacuum(lam) if vacuum else lam, out, velscale=velscale)
    return tpl / np.median(tpl), np.exp(ln_t)


def load_sauron():
    import ppxf.ppxf_util as util
    gal, h = fits.getdata(importlib.resources.files("ppxf") / "spectra/NGC4550_SAURON.fits", header=True)
    lam_range = h["CRVAL1"] + np.array([0.0, h["CDELT1"] * (h["NAXIS1"] - 1)])
    flux, ln_lam, _ = util.log_rebin(lam_range, gal.astype(np.float64))
    wave = np.exp(ln_lam)
    ivar = np.full(wave.size, (0.0047 * np.median(gal)) ** -2.0)
    return dict(wave=wave, flux=flux, ivar=ivar, fwhm=np.full(wave.size, 4.2), z=0.0015, air=True, degree=4)


def load_sdss():
    with fits.open(importlib.resources.files("ppxf") / "spectra/NGC3522_SDSS_DR18.fits") as hdul:
        t = hdul["COADD"].data
        z = float(hdul["SPECOBJ"].data["z"][0])
        ll = t["loglam"].astype(np.float64)
        ll = ll[0] + (ll[-1] - ll[0]) * np.arange(ll.size) / (ll.size - 1)    # float32 in the file
        wave = 10 ** ll
        flux, ivar = t["flux"].astype(np.float64), t["ivar"].astype(np.float64)
        fwhm = math.sqrt(8 * math.log(2)) * t["wdisp"] * np.gradient(wave)
    ivar[wave / (1 + z) > 8900.0] = 0.0
    return dict(wave=wave, flux=flux, ivar=ivar, fwhm=fwhm, z=z, air=False, degree=10)


def timed(fn, repeat):
    out, times = None, []
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return out, times


def bench_pair(name, d, emiles, repeat):
    """Our fit and pPXF's on one pPXF-shipped spectrum; returns a result row."""
    from ppxf.ppxf import ppxf
    wave, flux, ivar, fwhm, z = d["wave"], d["flux"], d["ivar"], d["fwhm"], d["z"]
    vs = C_KMS * math.log(wave[-1] / wave[0]) / (wave.size - 1)
    lo, hi = wave[0] / (1 + z), wave[-1] / (1 + z)
    t0 = time.perf_counter()
    pt = prepare_templates(velscale=vs / RATIO, lam_range=(lo * 0.95, hi * 1.05))
    prep = time.perf_counter() - t0
    spec = Spectrum([Camera(name, wave, flux, ivar, Resolution.from_fwhm(fwhm, wave))], z=z, air=d["air"])
    opt = ContinuumOptions(moments=4, degree=d["degree"], mdegree=0, sigma_start=200.0)
    ours = fit_continuum(spec, pt, opt)                 # first fit fills the FFT cache
    lam_rest = wave / (1 + z)
    lam_l, spectra = emiles
    sel = (lam_l > lo * 0.93) & (lam_l < hi * 1.07)
    t0 = time.perf_counter()
    tpl, lam_t = ppxf_templates(lam_l[sel], spectra[sel], lambda x: np.interp(x, lam_rest, fwhm / (1 + z)),
                                vs / RATIO, not d["air"])
    prep_ppxf = time.perf_counter() - t0
    noise = 1 / np.sqrt(np.where(ivar > 0, ivar, ivar[ivar > 0].min() * 1e-6))
    good = np.flatnonzero(ours.good[0])

    def run_ppxf():
        return ppxf(tpl, flux, noise, vs, [0.0, 200.0], goodpixels=good, moments=4, degree=d["degree"],
                    lam=lam_rest, lam_temp=lam_t, velscale_ratio=RATIO, bias=0, quiet=True)
    t_ours, t_pp = [], []
    pp = None
    for _ in range(repeat):
        ours, t = timed(lambda: fit_continuum(spec, pt, opt), 1)
        t_ours += t
        pp, t = timed(run_ppxf, 1)
        t_pp += t
    to, tp = float(np.median(t_ours)), float(np.median(t_pp))
    return dict(spectrum=name, npix=int(wave.size), nfit=int(good.size), ntemplates=int(pt.P),
                ours_s=to, ppxf_s=tp, ours_per_s=1 / to, ppxf_per_s=1 / tp, speedup=tp / to,
                prep_ours_s=prep, prep_ppxf_s=prep_ppxf, ours_nfev=int(ours.nfev), ppxf_nfev=int(pp.nfev),
                v_ours=ours.vel, v_ppxf=float(pp.sol[0]), sigma_ours=ours.sigma, sigma_ppxf=float(pp.sol[1]),
                dv=ours.vel - float(pp.sol[0]), dsigma_pct=100 * (ours.sigma / float(pp.sol[1]) - 1))


def bench_desi(repeat):
    from cubefit.spectra.desi import select_desi
    redrock = DESI / "redrock-4-80613-thru20210324.fits"
    if not redrock.is_file():
        return dict(spectrum="desi", note=f"{redrock} not found")
    spec = next(iter(select_desi(redrock, targetids=[DESI_TARGET]).spectra()))
    t0 = time.perf_counter()
    pt = prepare_templates()
    prep = time.perf_counter() - t0
    res = fit_continuum(spec, pt)
    res, times = timed(lambda: fit_continuum(spec, pt), repeat)
    to = float(np.median(times))
    return dict(spectrum="desi", npix=int(sum(c.npix for c in spec.cameras)), nfit=int(res.npix),
                ntemplates=int(pt.P), ours_s=to, ours_per_s=1 / to, prep_ours_s=prep,
                ours_nfev=int(res.nfev), v_ours=res.vel, sigma_ours=res.sigma, sigma_err=res.sigma_err,
                rchi2=res.rchi2, note="pPXF not run: three cameras with resolution matrices")


def _stitched(spec):
    """The DESI cameras stitched (b < 5800 Å < r < 7600 Å < z, observed) and log-rebinned
    for pPXF: ``(flux, noise, ln_lam, velscale)``."""
    import ppxf.ppxf_util as util
    parts = []
    for cam, lo, hi in zip(spec.cameras, (0, 5800, 7600), (5800, 7600, 1e5)):
        sel = (cam.wave >= lo) & (cam.wave < hi)
        parts.append((cam.wave[sel], cam.flux[sel], cam.ivar[sel]))
    wave = np.concatenate([p[0] for p in parts])
    flux = np.concatenate([p[1] for p in parts])
    ivar = np.concatenate([p[2] for p in parts])
    lin = np.linspace(wave[0], wave[-1], wave.size)
    gal, ln_lam, velscale = util.log_rebin([wave[0], wave[-1]], np.interp(lin, wave, flux))
    var = np.where(ivar > 0, 1 / np.where(ivar > 0, ivar, 1), 1e6)
    v2, _, _ = util.log_rebin([wave[0], wave[-1]], np.interp(lin, wave, var))
    return gal, np.sqrt(np.clip(v2, 1e-12, None)), ln_lam, float(velscale)


def ppxf_gas_templates(ln_t, lam_range_rest, fwhm_rest):
    """Gaussian gas templates for the narrow lines of the package's line list within
    ``lam_range_rest``: one per free line (its fixed-ratio partners folded in), component
    1 for the ``narrow_balmer`` group, 2 for ``narrow_forbidden``."""
    import ppxf.ppxf_util as util
    from cubefit.spectra.linelist import default_linelist
    ll = default_linelist()
    inside = [ln for ln in ll if lam_range_rest[0] < ln.restwave < lam_range_rest[1]
              and ll.groups[ln.group].name in ("narrow_balmer", "narrow_forbidden")]
    names = {ln.name for ln in inside}
    cols, comp, labels = [], [], []
    for ln in inside:
        if ln.fixed_ratio and ln.partner in names:
            continue                                   # folded into its partner's template
        g = util.gaussian(ln_t, np.array([ln.restwave]), fwhm_rest, pixel=True)[:, 0]
        for other in inside:
            if other.fixed_ratio and other.partner == ln.name:
                g = g + other.ratio * util.gaussian(ln_t, np.array([other.restwave]), fwhm_rest, pixel=True)[:, 0]
        cols.append(g)
        comp.append(1 if ln.group == "narrow_balmer" else 2)
        labels.append(ln.name)
    return np.column_stack(cols), np.array(comp), labels


def bench_desi_lines(repeat):
    """Continuum + lines per target (ours) next to pPXF stars + gas (module docstring)."""
    from ppxf.ppxf import ppxf
    import ppxf.ppxf_util as util
    from cubefit.spectra.desi import select_desi
    from cubefit.spectra.emlines import fit_emlines
    from cubefit.spectra.linelist import default_linelist
    from cubefit.spectra.target import fit_target
    redrock = DESI / "redrock-4-80613-thru20210324.fits"
    if not redrock.is_file():
        return [dict(spectrum="desi+lines", note=f"{redrock} not found")]
    spec = next(iter(select_desi(redrock, targetids=[DESI_TARGET]).spectra()))
    pt = prepare_templates()
    ll = default_linelist()
    row, best = fit_target(spec, pt, linelist=ll, phot=False)          # warm-up (FFT cache)
    cont = best.continuum
    _, t_cont = timed(lambda: fit_continuum(spec, pt, mask_lines=ll), repeat)
    _, t_lines = timed(lambda: fit_emlines(spec, cont.models, linelist=ll), repeat)
    # pPXF: stitched, log-rebinned spectrum; the same SSPs and gas lines
    gal, noise, ln_lam, velscale = _stitched(spec)
    z = spec.z
    lam_gal = np.exp(ln_lam) / (1 + z)
    lam_l, spectra = emiles_linear(lam_gal[0] * 0.93, lam_gal[-1] * 1.07)
    tpl, ln_t, _ = util.log_rebin(air_to_vacuum(lam_l), spectra, velscale=velscale / RATIO)
    tpl /= np.median(tpl)
    gas, comp, labels = ppxf_gas_templates(ln_t, (lam_gal[0], lam_gal[-1]), 1.8 / (1 + z))
    templates = np.column_stack([tpl, gas])
    component = np.concatenate([np.zeros(tpl.shape[1], dtype=int), comp])

    def run_ppxf():
        return ppxf(templates, gal, noise, velscale, [[0.0, 150.0], [0.0, 80.0], [0.0, 80.0]], moments=[2, 2, 2],
                    degree=-1, mdegree=10, lam=lam_gal, lam_temp=np.exp(ln_t), component=component,
                    gas_component=component > 0, gas_names=np.array(labels), velscale_ratio=RATIO, quiet=True)
    pp = run_ppxf()
    t_both, t_pp = [], []
    for _ in range(repeat):
        _, t = timed(lambda: fit_target(spec, pt, linelist=ll, phot=False), 1)
        t_both += t
        _, t = timed(run_ppxf, 1)
        t_pp += t
    to, tp = float(np.median(t_both)), float(np.median(t_pp))
    gas_flux = dict(zip(labels, np.asarray(pp.gas_flux, dtype=float)))
    return [
        dict(spectrum="desi cont", npix=int(sum(c.npix for c in spec.cameras)), nfit=int(cont.npix),
             ours_s=float(np.median(t_cont)), ours_per_s=1 / float(np.median(t_cont)), ours_nfev=int(cont.nfev),
             note="continuum only (as in a run: line list masked)"),
        dict(spectrum="desi lines", ours_s=float(np.median(t_lines)), ours_per_s=1 / float(np.median(t_lines)),
             ours_nfev=int(best.lines.nfev), nlines=len(best.lines.fitted),
             note="lines only, on the fitted continuum (narrow fit + broad test)"),
        dict(spectrum="desi+lines", npix=int(sum(c.npix for c in spec.cameras)), nfit=int(cont.npix),
             ntemplates=int(pt.P), ngas=int(gas.shape[1]), ours_s=to, ppxf_s=tp, ours_per_s=1 / to,
             ppxf_per_s=1 / tp, speedup=tp / to, ours_nfev=int(cont.nfev), ppxf_nfev=int(pp.nfev),
             sigma_ours=float(row["VDISP"]), sigma_ppxf=float(pp.sol[0][1]),
             hbeta_ours=float(row["HBETA_FLUX"]), hbeta_ppxf=gas_flux.get("hbeta", float("nan")),
             oiii_ours=float(row["OIII_5007_FLUX"]),
             oiii_ppxf=gas_flux.get("oiii_4959", float("nan")) * 2.98 / 3.98,
             halpha_ours=float(row["HALPHA_FLUX"]), halpha_ppxf=gas_flux.get("halpha", float("nan")),
             note="continuum + lines + Dn4000 + row (fit_target) vs pPXF stars + gas"),
    ]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=7, help="fits per spectrum and fitter (median)")
    ap.add_argument("--only", default="sauron,sdss,desi,lines", help="comma-separated spectra "
                    "(sauron, sdss, desi, lines: DESI continuum + lines next to pPXF stars + gas)")
    ap.add_argument("--json", help="write the numbers to this file")
    args = ap.parse_args(argv)
    only = args.only.split(",")
    rows = []
    with threadpool_limits(limits=1):
        emiles = emiles_linear() if {"sauron", "sdss"} & set(only) else None
        for name, loader in (("sauron", load_sauron), ("sdss", load_sdss)):
            if name in only:
                rows.append(bench_pair(name, loader(), emiles, args.repeat))
        if "desi" in only:
            rows.append(bench_desi(args.repeat))
        if "lines" in only:
            rows += bench_desi_lines(args.repeat)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"continuum fit, one core ({platform.processor() or platform.machine()}, load {load:.2f}), "
          f"median of {args.repeat}")
    print(f"{'spectrum':10} {'pix':>5} {'ours s':>8} {'pPXF s':>8} {'ours/s':>7} {'pPXF/s':>7} {'speedup':>7} "
          f"{'Δv km/s':>8} {'Δσ %':>6} {'nfev':>9}")
    for r in rows:
        if "ours_s" not in r:
            print(f"{r['spectrum']:10} {r['note']}")
            continue
        pp = "ppxf_s" in r and "dv" in r
        if r["spectrum"].startswith("desi ") or r["spectrum"] == "desi+lines":
            pp_s = r.get("ppxf_s", float("nan"))
            print(f"{r['spectrum']:10} {r.get('nfit', 0):5d} {r['ours_s']:8.3f} {pp_s:8.3f} {r['ours_per_s']:7.2f} "
                  f"{1 / pp_s:7.2f} {pp_s / r['ours_s']:7.2f} {'':>8} {'':>6} {r['ours_nfev']:4d}/"
                  f"{r.get('ppxf_nfev', 0):<4d}  {r['note']}")
            continue
        print(f"{r['spectrum']:10} {r['nfit']:5d} {r['ours_s']:8.3f} "
              f"{r['ppxf_s'] if pp else float('nan'):8.3f} {r['ours_per_s']:7.1f} "
              f"{r['ppxf_per_s'] if pp else float('nan'):7.1f} {r['speedup'] if pp else float('nan'):7.2f} "
              f"{r['dv'] if pp else float('nan'):8.2f} {r['dsigma_pct'] if pp else float('nan'):6.2f} "
              f"{r['ours_nfev']:4d}/{r['ppxf_nfev'] if pp else 0:<4d}" + ("" if pp else "  " + r["note"]))
    for r in rows:
        if r.get("spectrum") == "desi+lines":
            print(f"\ndesi+lines: VDISP ours {r['sigma_ours']:.1f} km/s, pPXF {r['sigma_ppxf']:.1f}; fluxes "
                  f"(1e-17 erg/s/cm2) Hβ {r['hbeta_ours']:.1f} / {r['hbeta_ppxf']:.1f}, [O III] 5007 "
                  f"{r['oiii_ours']:.1f} / {r['oiii_ppxf']:.1f}, Hα {r['halpha_ours']:.1f} / {r['halpha_ppxf']:.1f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(load=load, python=sys.version.split()[0], repeat=args.repeat, rows=rows), f, indent=1)
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
