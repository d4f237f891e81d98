"""Benchmark: fastphot throughput (targets per second on one core) and the cost of
adding photometric rows to a spectral NNLS solve.

Targets: the real DESI target's Legacy Surveys photometry (``../shared/data/desi``),
perturbed by its own errors and placed at redshifts drawn in 0.05–0.6 (a fresh
redshift per target, so every target builds its own design), fitted with
:func:`cubefit.spectra.fastphot_cli.fastphot_target` (derived quantities included),
with and without Monte-Carlo errors.  One BLAS thread.

Joint-fit row: the cost of stacking 5 photometric rows under a DESI-sized spectral
design (7781 pixels × 150 templates, :func:`cubefit.spectra.sed.stack_design`) next to
one NNLS solve of the spectral design alone: the joint fit's extra cost per inner solve
(the NNLS on 5 more rows costs the same to within its run-to-run variation).

    python benchmarks/spectra_phot.py [--ntargets 200] [--json out.json]
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
    ap.add_argument("--json", default=None, help="write the table as JSON here")
    args = ap.parse_args(argv)
    from threadpoolctl import threadpool_limits
    threadpool_limits(1)
    from scipy.optimize import nnls
    from cubefit.spectra.fastphot_cli import fastphot_target
    from cubefit.spectra.photometry import read_fibermap_photometry
    from cubefit.spectra.sed import sed_templates, stack_design

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
    # Joint-fit inner solve: spectral NNLS with and without the photometric rows.
    npix, P = 7781, 150
    A = np.abs(rng.normal(1.0, 0.2, (npix, P)))
    b = A @ np.where(rng.random(P) < 0.05, 1.0, 0.0) + rng.normal(0, 0.1, npix)
    D = np.abs(rng.normal(3.0, 1.0, (5, P)))
    f, iv = D @ np.full(P, 0.01), np.full(5, 100.0)
    timing = {}
    for name, fn in (("spectrum only", lambda: nnls(A, b)),
                     ("stacking", lambda: stack_design(A, b, D, f, iv, apercorr=1.3))):
        fn()
        t0 = time.perf_counter()
        for _ in range(5):
            fn()
        timing[name] = (time.perf_counter() - t0) / 5
    rows.append({"case": "stacking photometric rows / spectral NNLS (7781 px, 150 templates)",
                 "spectrum_nnls_ms": 1e3 * timing["spectrum only"], "stacking_ms": 1e3 * timing["stacking"],
                 "ratio": timing["stacking"] / timing["spectrum only"]})
    print(f"templates built in {t_templates:.2f} s (once per process)")
    print(f"{'case':52s} {'targets/s/core':>15s} {'ms/target':>10s}")
    for r in rows[:2]:
        print(f"{r['case']:52s} {r['targets_per_s_per_core']:15.1f} {r['ms_per_target']:10.2f}")
    j = rows[2]
    print(f"{j['case']}: NNLS {j['spectrum_nnls_ms']:.1f} ms, stacking {j['stacking_ms']:.2f} ms "
          f"(ratio {j['ratio']:.3f})")
    if args.json:
        Path(args.json).write_text(json.dumps({"templates_s": t_templates, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
