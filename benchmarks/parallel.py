"""Which parallelism helps: the runner's ``processes`` × ``blas_threads`` on this machine.

Usage::

    python benchmarks/parallel.py                      # 64×8×150×858 and 256×16×150×1500
    python benchmarks/parallel.py --quick              # 16×4×150×400
    python benchmarks/parallel.py --json out.json      # also write the numbers

Issue #4, item 4.  ``PipelineRunner.solve_all_mp_batched(processes=, blas_threads=)``
sets the operator's worker threads over spaxel tiles (``processes``) and caps every
BLAS/OpenMP pool with :mod:`threadpoolctl` (``blas_threads``).  For each setting this
script times, on the E-MILES problems of ``benchmarks/solvers.py`` (same mock, same
operator, kernel spectra cached):

* ``pair``: one forward ``Ã x`` plus one adjoint ``Ãᵀ r`` (median of ``--repeat``),
  the unit of every matrix-free solver;
* ``gram``: the Gram block of 600 columns (the working set's largest dense step is
  of this kind; BLAS ``syrk``-bound);
* ``solve``: ``method="auto"`` without priors to ``gtol=1e-6`` (the working set).

All settings run in one process one after the other, repeated ``--rounds`` times in
rotated order; the best time per setting is reported, with its ratio to
``processes=1, blas_threads=1`` measured in the same round.  Run it on an otherwise
idle machine; the machine's load average is printed with the table.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import numpy as np
from threadpoolctl import threadpool_limits

from cubefit.solvers import solve
from solvers import build_problem, emiles_library, write_json

SIZES = [(64, 8, 150, 858), (256, 16, 150, 1500)]         # (S, C, P, L)
QUICK_SIZES = [(16, 4, 150, 400)]
SETTINGS = [(1, 1), (2, 1), (1, 2), (2, 2)]                 # (processes, blas_threads)
GRAM_COLUMNS = 600


def set_workers(op, workers: int) -> None:
    """Point the operator at ``workers`` tile threads (its tiles and cache are kept)."""
    if op._pool is not None:
        op._pool.shutdown()
        op._pool = None
    op.workers = workers


def time_setting(op, x, r, cols, repeat: int) -> dict:
    """Seconds of one pair of applies (median), one Gram block and one auto solve."""
    pair = []
    for _ in range(repeat):
        t = time.perf_counter()
        op.rmatvec(op.matvec(x) - r)
        pair.append(time.perf_counter() - t)
    t = time.perf_counter()
    op.gram(cols, cols)
    gram = time.perf_counter() - t
    t = time.perf_counter()
    res = solve(op, method="auto", gtol=1e-6)
    return {"pair": float(np.median(pair)), "gram": gram, "solve": time.perf_counter() - t,
            "solve_passes": int(res.passes), "solve_status": int(res.status)}


def bench_size(S, C, P, L, lib, repeat: int, rounds: int) -> dict:
    op, _ = build_problem("emiles", S, C, P, L, lib)
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, op.shape[1])
    r = op.weighted_data()
    cols = np.sort(rng.choice(op.shape[1], min(GRAM_COLUMNS, op.shape[1]), replace=False))
    best = {s: None for s in SETTINGS}
    for k in range(rounds):
        order = SETTINGS[k % len(SETTINGS):] + SETTINGS[:k % len(SETTINGS)]
        for procs, blas in order:
            set_workers(op, procs)
            with threadpool_limits(limits=blas):
                t = time_setting(op, x, r, cols, repeat)
            b = best[(procs, blas)]
            best[(procs, blas)] = t if b is None else {
                key: min(b[key], t[key]) if key in ("pair", "gram", "solve") else t[key] for key in t}
    base = best[(1, 1)]
    rows = [dict(processes=p, blas_threads=b, **t,
                 **{f"{key}_speedup": base[key] / t[key] for key in ("pair", "gram", "solve")})
            for (p, b), t in best.items()]
    return {"size": f"{S}x{C}x{P}x{L}", "rows": rows}


def print_table(res: dict) -> None:
    print(f"\nE-MILES {res['size']} (best of rounds; speed-up vs processes=1, blas_threads=1)")
    head = (f"{'processes':>9s} {'blas':>4s} {'pair ms':>9s} {'×':>5s} {'gram s':>7s} {'×':>5s} "
            f"{'solve s':>8s} {'×':>5s} {'passes':>6s}")
    print(head)
    print("-" * len(head))
    for r in res["rows"]:
        print(f"{r['processes']:9d} {r['blas_threads']:4d} {r['pair'] * 1e3:9.1f} "
              f"{r['pair_speedup']:5.2f} {r['gram']:7.2f} {r['gram_speedup']:5.2f} "
              f"{r['solve']:8.2f} {r['solve_speedup']:5.2f} {r['solve_passes']:6d}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="one small size")
    ap.add_argument("--repeat", type=int, default=5, help="applies per pair timing (median)")
    ap.add_argument("--rounds", type=int, default=2, help="passes over all settings (best kept)")
    ap.add_argument("--json", help="write the numbers to this file")
    args = ap.parse_args(argv)
    lib = emiles_library()
    out = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                       "loadavg_start": os.getloadavg()}, "sizes": []}
    for S, C, P, L in (QUICK_SIZES if args.quick else SIZES):
        res = bench_size(S, C, P, L, lib, args.repeat, args.rounds)
        print_table(res)
        out["sizes"].append(res)
    out["machine"]["loadavg_end"] = os.getloadavg()
    print(f"\nload average: start {out['machine']['loadavg_start'][0]:.2f}, "
          f"end {out['machine']['loadavg_end'][0]:.2f} on {os.cpu_count()} cores")
    write_json(args.json, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
