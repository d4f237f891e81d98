"""Benchmark: fastphot throughput (targets per second on one core) and the cost of
adding photometric rows to a spectral NNLS solve.

Targets: the real DESI target's Legacy Surveys photometry (``../shared/data/desi``),
perturbed by its own errors and placed at redshifts drawn in 0.05–0.6 (a fresh
redshift per target, so every target builds its own design), fitted with
:func:`cubefit.spectra.fastphot_cli.fastphot_target` (derived quantities included),
with and without Monte-Carlo errors.  One BLAS thread.

Joint-fit rows: the real DESI target fitted with the default E-MILES templates, the
spectrum-only continuum fit (:func:`cubefit.spectra.continuum.fit_continuum`) next to
the joint spectrum + photometry fit that follows it
(:func:`cubefit.spectra.joint_phot.fit_with_photometry`, without and with 20 Monte-Carlo
refits): seconds per target and the joint fit's cost relative to the spectrum-only fit.

    python benchmarks/spectra_phot.py [--ntargets 200] [--repeat 5] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

DESI = Path(__file__).resolve().parents[2] / "shared" / "data" / "desi" / "coadd-4-80613-thru20210324.fits"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ntargets", type=int, default=200)
    ap.add_argument("--repeat", type=int, default=5, help="timings of the joint fit averaged over this many runs")
    ap.add_argument("--json", default=None, help="write the table as JSON here")
    args = ap.parse_args(argv)
    from threadpoolctl import threadpool_limits
    threadpool_limits(1)
    from cubefit.spectra.fastphot_cli import fastphot_target
    from cubefit.spectra.photometry import read_fibermap_photometry
    from cubefit.spectra.sed import sed_templates

    t0 = time.perf_counter()
    sed = sed_templates()
    t_templates = time.perf_counter() - t0
    base = next(iter(read_fibermap_photometry(DESI).values()))
    rng = np.random.default_rng(0)
    targets = []
    for _ in range(args.ntargets):
        ph = base.select(np.ones(base.n, dtype=bool))
        ph.flux = base.flux + rng.standard_normal(base.n) / np.sqrt(base.ivar_stat)
        targets.append((ph, rng.uniform(0.05, 0.6)))
    rows = []
    for nmonte in (0, 20):
        fastphot_target(*targets[0], sed, nmonte=nmonte)             # warm caches
        t0 = time.perf_counter()
        ok = sum(fastphot_target(ph, z, sed, nmonte=nmonte, seed=k)["PHOT_STATUS"] == 0
                 for k, (ph, z) in enumerate(targets))
        dt = time.perf_counter() - t0
        rows.append({"case": f"fastphot, nmonte={nmonte}", "targets": args.ntargets, "ok": int(ok),
                     "seconds": dt, "targets_per_s_per_core": args.ntargets / dt,
                     "ms_per_target": 1e3 * dt / args.ntargets})
    # Joint fit of the real target against its spectrum-only fit.
    from astropy.table import Table
    from cubefit.spectra import fit_continuum
    from cubefit.spectra.desi import select_desi
    from cubefit.spectra.joint_phot import PhotOptions, fit_with_photometry
    from cubefit.spectra.templates_prep import prepare_templates_cached
    pt = prepare_templates_cached()
    redrock = DESI.with_name(DESI.name.replace("coadd-", "redrock-"))
    spec = next(iter(select_desi(redrock).spectra()))
    fm = Table.read(DESI, hdu="FIBERMAP")
    fmrow = fm[list(fm["TARGETID"]).index(spec.targetid)]

    def timed(fn):
        fn()                                                              # warm caches
        t0 = time.perf_counter()
        for _ in range(args.repeat):
            out = fn()
        return (time.perf_counter() - t0) / args.repeat, out
    t_cont, cont = timed(lambda: fit_continuum(spec, pt))
    joint = {}
    for nmonte in (0, 20):
        joint[nmonte] = timed(lambda: fit_with_photometry(spec, pt, cont, fmrow, PhotOptions(nmonte=nmonte)))
    r0 = joint[0][1].to_row()
    rows.append({"case": "DESI target: spectrum-only fit vs joint spectrum + photometry fit",
                 "continuum_s": t_cont, "joint_s": joint[0][0], "joint_nmonte20_s": joint[20][0],
                 "joint_over_continuum": joint[0][0] / t_cont,
                 "joint_nmonte20_over_continuum": joint[20][0] / t_cont,
                 "LOGMSTAR": r0["LOGMSTAR"], "LOGMSTAR_err_nmonte20": joint[20][1].to_row()["LOGMSTAR_IVAR"] ** -0.5,
                 "RCHI2_CONT": cont.rchi2, "RCHI2_CONT_JOINT": r0["RCHI2_CONT_JOINT"], "RCHI2_PHOT": r0["RCHI2_PHOT"],
                 "APERCORR": r0["APERCORR"], "TAU_V_JOINT": r0["TAU_V_JOINT"], "NBAND_PHOT": r0["NBAND_PHOT"]})
    print(f"templates built in {t_templates:.2f} s (once per process)")
    print(f"{'case':52s} {'targets/s/core':>15s} {'ms/target':>10s}")
    for r in rows[:2]:
        print(f"{r['case']:52s} {r['targets_per_s_per_core']:15.1f} {r['ms_per_target']:10.2f}")
    j = rows[2]
    print(f"{j['case']}:\n  spectrum-only {j['continuum_s']:.3f} s, joint {j['joint_s']:.3f} s "
          f"({j['joint_over_continuum']:.2f}x), joint with 20 Monte-Carlo refits {j['joint_nmonte20_s']:.3f} s "
          f"({j['joint_nmonte20_over_continuum']:.2f}x)")
    print(f"  LOGMSTAR {j['LOGMSTAR']:.3f} +- {j['LOGMSTAR_err_nmonte20']:.3f}, APERCORR {j['APERCORR']:.3f}, "
          f"TAU_V_JOINT {j['TAU_V_JOINT']:.3f}, RCHI2_CONT {j['RCHI2_CONT']:.3f} -> joint {j['RCHI2_CONT_JOINT']:.3f}, "
          f"RCHI2_PHOT {j['RCHI2_PHOT']:.2f} over {j['NBAND_PHOT']} bands")
    if args.json:
        Path(args.json).write_text(json.dumps({"templates_s": t_templates, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
