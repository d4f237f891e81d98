"""Matrix-free LOSVD operator vs the materialised hypercube contraction.

Usage::

    python benchmarks/operator_apply.py                  # table at a few sizes
    python benchmarks/operator_apply.py --estimate       # + NGC 4365 extrapolation
    python benchmarks/operator_apply.py --json out.json  # also write the numbers
    python benchmarks/operator_apply.py --backend cupy --no-dense --full   # on a GPU

For each size the synthetic problem (random positive templates, Gauss–Hermite LOSVDs
on ±1000 km/s, exact-overlap rebin) is applied three ways:

* ``dense``: the seed's workflow — the ``(S, C, P, L)`` float32 hypercube held in
  memory and contracted with ``x`` (``Σ_cp A x``) and with a residual (``Σ_l A r``);
  the fastest of ``einsum`` (with and without ``optimize``) and a batched ``matmul``
  is reported (which one wins varies with the size and the machine);
* ``mf cached``: :class:`cubefit.operator.LOSVDOperator` with all kernel spectra cached;
* ``mf recompute``: the same with a budget too small for any cache (spectra rebuilt at
  every apply).

Times are medians of ``--repeat`` runs on warm caches; ``peak`` is the extra memory
an apply allocates (tracemalloc, numpy buffers), ``held`` what stays allocated (cube
or spectra cache).  ``--estimate`` times subsets of 64 and 256 spaxels (tiles of 16) at the NGC 4365
size (S=2854, C=207, P=360, L=1247, T≈6500, V=201), fits ``t = t_fixed + S·t_spaxel``
and extrapolates to all spaxels, without building the 1.06 TB cube.

``--backend`` (``cupy``, ``torch``; :mod:`cubefit.backend`) runs the matrix-free rows and
``--full`` on that library's device; ``memory_budget`` then counts device memory, and
every apply's time includes copying ``x`` or ``r`` in and the result out (the solvers
work on the host), so it is the time a solver sees.  The numpy rows of the same run
are the CPU reference.
"""
from __future__ import annotations

import argparse
import os
import sys
import json
import math
import platform
import time
import tracemalloc

import numpy as np

from cubefit import C_KMS
from cubefit.losvd import gauss_hermite_losvd
from cubefit.operator import LOSVDOperator

SIZES = [  # (S, C, P, L)
    (16, 4, 50, 500),
    (64, 8, 150, 858),       # the DESIGN §3 E-MILES mock size
    (256, 16, 150, 1500),    # the largest size of the issue #4 solver benchmark
]
NGC4365 = dict(S=2854, C=207, P=360, L=1247, T=6500, V=201)
VELSCALE_T = 12.0            # km/s per template pixel
VEL_MAX = 1000.0             # km/s


def synthetic(S, C, P, L, V=201, T=None, seed=0, spaxels=None):
    """Constructor arguments of a random problem with ``L`` observed pixels.

    The observed step is ``ratio`` template pixels; ``T = ratio·L + 2K + 8`` unless
    ``T`` is given (then ``ratio = (T − 2K − 8) // L``).  ``spaxels`` (≤ S) builds
    only that many spaxels' LOSVDs (for subset timing).
    """
    rng = np.random.default_rng(seed)
    dlog = VELSCALE_T / C_KMS
    K = math.ceil(VEL_MAX / VELSCALE_T)
    ratio = 4 if T is None else max(1, (T - 2 * K - 8) // L)
    T = ratio * L + 2 * K + 8 if T is None else T
    tem_pix = np.log(4700.0) + dlog * np.arange(T)
    first = K + 4 + (ratio - 1) / 2                                  # centre of the first obs bin
    obs_pix = tem_pix[0] + dlog * (first + ratio * np.arange(L))
    vel_pix = np.linspace(-VEL_MAX, VEL_MAX, V)
    n = S if spaxels is None else spaxels
    losvd = np.empty((n, V, C))
    for s0 in range(0, n, 256):          # chunks: the Gauss–Hermite temporaries stay small
        m = min(256, n - s0)
        H = gauss_hermite_losvd(vel_pix, rng.uniform(-300, 300, (m, C)),
                                rng.uniform(40, 300, (m, C)), rng.uniform(-0.1, 0.1, (m, C)),
                                rng.uniform(-0.1, 0.1, (m, C)))
        losvd[s0:s0 + m] = (H * rng.uniform(0.2, 2.0, (m, C, 1))).transpose(0, 2, 1)
    return dict(templates=rng.uniform(0.5, 1.5, (P, T)), tem_pix=tem_pix, obs_pix=obs_pix,
                vel_pix=vel_pix, losvd=losvd)


def dense_cube(op):
    """The materialised ``(S, C, P, L)`` float32 hypercube, one component at a time
    (so the float64 columns in flight stay ``1/C`` of the cube)."""
    cube = np.empty((op.S, op.C, op.P, op.L), dtype=np.float32)
    for c in range(op.C):
        cols = op.columns(c * op.P + np.arange(op.P))                      # (S·L, P)
        cube[:, c] = cols.reshape(op.S, op.L, op.P).transpose(0, 2, 1)
    return cube


def timed(fn, repeat):
    """Median seconds of ``repeat`` calls after one warm-up, and the warm-up's peak bytes."""
    tracemalloc.start()
    fn()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    ts = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return float(np.median(ts)), int(peak)


def bench_size(S, C, P, L, repeat, dtype, workers, dense=True, backend="numpy"):
    args = synthetic(S, C, P, L)
    rng = np.random.default_rng(1)
    x = rng.uniform(0, 1, C * P)
    r = rng.standard_normal(S * L)
    row = dict(S=S, C=C, P=P, L=L, T=args["tem_pix"].size, backend=backend)
    op = LOSVDOperator(**args, dtype=dtype, memory_budget=16 * 2**30, workers=workers,
                       backend=backend)
    t = time.perf_counter()
    op.precompute()
    row["spectra_s"] = time.perf_counter() - t
    row["cache_bytes"] = op.cache_info["cached_bytes"]
    row["mf_apply_s"], row["mf_apply_peak"] = timed(lambda: op.matvec(x), repeat)
    row["mf_adjoint_s"], row["mf_adjoint_peak"] = timed(lambda: op.rmatvec(r), repeat)
    rec = LOSVDOperator(**args, dtype=dtype, memory_budget=1, workers=workers, tile=op.tile,
                        backend=backend)
    row["mf_recompute_apply_s"], _ = timed(lambda: rec.matvec(x), max(1, repeat // 2))
    row["mf_recompute_adjoint_s"], _ = timed(lambda: rec.rmatvec(r), max(1, repeat // 2))
    if dense:
        t = time.perf_counter()
        cube = dense_cube(op)
        row["dense_build_s"] = time.perf_counter() - t
        row["dense_bytes"] = cube.nbytes
        x32, r32 = x.astype(np.float32).reshape(C, P), r.astype(np.float32).reshape(S, L)
        flat = cube.reshape(S, C * P, L)
        apply_ways = [lambda: np.einsum("scpl,cp->sl", cube, x32),
                      lambda: np.einsum("scpl,cp->sl", cube, x32, optimize=True),
                      lambda: np.matmul(x32.reshape(1, 1, C * P), flat)]
        adjoint_ways = [lambda: np.einsum("scpl,sl->cp", cube, r32),
                        lambda: np.einsum("scpl,sl->cp", cube, r32, optimize=True),
                        lambda: np.matmul(flat, r32[:, :, None]).sum(axis=0)]
        row["dense_apply_s"] = min(timed(f, repeat)[0] for f in apply_ways)
        row["dense_adjoint_s"] = min(timed(f, repeat)[0] for f in adjoint_ways)
        y_mf = op.matvec(x).reshape(S, L)
        y_dense = np.einsum("scpl,cp->sl", cube, x32, optimize=True)
        row["max_rel_diff"] = float(np.abs(y_mf - y_dense).max() / np.abs(y_dense).max())
        row["dense_GBps"] = cube.nbytes / row["dense_apply_s"] / 1e9
        del cube, flat
    return row


def estimate_ngc(repeat, dtype, workers, subsets=(64, 256), tile=16, dense_GBps=None):
    """Extrapolate one apply / adjoint at the NGC 4365 size from spaxel subsets."""
    g = NGC4365
    rng = np.random.default_rng(2)
    x = rng.uniform(0, 1, g["C"] * g["P"])
    res = {"size": dict(g), "dtype": str(np.dtype(dtype)), "workers": workers, "subsets": {}}
    for n in subsets:
        args = synthetic(g["S"], g["C"], g["P"], g["L"], V=g["V"], T=g["T"], spaxels=n)
        r = rng.standard_normal(n * g["L"])
        out = {}
        for mode, budget in (("cached", 64 * 2**30), ("recompute", 1)):
            op = LOSVDOperator(**args, dtype=dtype, memory_budget=budget, workers=workers,
                               tile=tile)
            op.precompute()
            out[f"{mode}_apply_s"], out[f"{mode}_apply_peak"] = timed(lambda: op.matvec(x), repeat)
            out[f"{mode}_adjoint_s"], out[f"{mode}_adjoint_peak"] = timed(lambda: op.rmatvec(r), repeat)
        out["F"], out["nfft"], out["K"], out["tile"] = op.F, op.nfft, op.K, op.tile
        res["subsets"][n] = out
    a, b = subsets
    S = g["S"]
    for key in ("cached_apply_s", "cached_adjoint_s", "recompute_apply_s", "recompute_adjoint_s"):
        ta, tb = res["subsets"][a][key], res["subsets"][b][key]
        per = max((tb - ta) / (b - a), 0.0)
        fixed = max(ta - a * per, 0.0)
        res[key.replace("_s", "_per_spaxel_s")] = per
        res[key.replace("_s", "_fixed_s")] = fixed
        res[key.replace("_s", "_full_s")] = fixed + S * per
    F = res["subsets"][b]["F"]
    citem = np.dtype(np.complex64 if np.dtype(dtype) == np.float32 else np.complex128).itemsize
    res["cache_bytes_full"] = S * g["C"] * F * citem
    res["losvd_bytes"] = S * g["V"] * g["C"] * 8
    res["data_bytes"] = 2 * S * g["L"] * 8                     # Y and the row weights
    res["work_peak_bytes"] = max(res["subsets"][b]["recompute_apply_peak"],
                                 res["subsets"][b]["recompute_adjoint_peak"])
    res["dense_cube_bytes"] = S * g["C"] * g["P"] * g["L"] * 4
    res["macs_per_apply"] = S * g["C"] * F
    if dense_GBps:
        res["dense_apply_est_s"] = res["dense_cube_bytes"] / (dense_GBps * 1e9)
    return res


def full_ngc(repeat, dtype, workers, budget_gib, backend="numpy"):
    """One real matrix-free apply and adjoint at the full NGC 4365 size."""
    import resource
    g = NGC4365
    t = time.perf_counter()
    args = synthetic(g["S"], g["C"], g["P"], g["L"], V=g["V"], T=g["T"])
    op = LOSVDOperator(**args, dtype=dtype, memory_budget=int(budget_gib * 2**30),
                       workers=workers, tile=16 if backend == "numpy" else None, backend=backend)
    res = {"size": dict(g), "dtype": str(np.dtype(dtype)), "workers": workers,
           "backend": backend, "tile": op.tile, "setup_s": time.perf_counter() - t}
    t = time.perf_counter()
    op.precompute()
    res["spectra_s"] = time.perf_counter() - t
    res["cache"] = op.cache_info
    rng = np.random.default_rng(3)
    x, r = rng.uniform(0, 1, op.shape[1]), rng.standard_normal(op.shape[0])
    res["apply_s"], res["apply_peak"] = timed(lambda: op.matvec(x), repeat)
    res["adjoint_s"], res["adjoint_peak"] = timed(lambda: op.rmatvec(r), repeat)
    res["max_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return res


def print_full(f):
    c = f["cache"]
    print(f"\nNGC 4365 full size, measured ({f['backend']}, {f['dtype']}, {f['workers']} "
          f"thread(s), tiles of {f['tile']} spaxels): A "
          f"{f['apply_s']:.2f} s, Aᵀ {f['adjoint_s']:.2f} s; {c['cached_tiles']}/{c['tiles']} "
          f"tiles cached ({fmt_bytes(c['cached_bytes'])}), spectra built in {f['spectra_s']:.1f} s; "
          f"peak RSS {fmt_bytes(f['max_rss_bytes'])}")


def fmt_bytes(n):
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024


def print_table(rows):
    head = ("backend", "S", "C", "P", "L", "T", "dense cube", "dense A", "dense Aᵀ", "mf A", "mf Aᵀ",
            "A ratio", "Aᵀ ratio", "mf A recomp", "mf Aᵀ recomp", "spectra held", "mf A peak")
    print(" | ".join(head))
    print("-|-".join("-" * len(h) for h in head))
    for r in rows:
        cells = [r["backend"], r["S"], r["C"], r["P"], r["L"], r["T"],
                 fmt_bytes(r.get("dense_bytes", float("nan"))),
                 f"{r.get('dense_apply_s', float('nan')) * 1e3:.1f} ms",
                 f"{r.get('dense_adjoint_s', float('nan')) * 1e3:.1f} ms",
                 f"{r['mf_apply_s'] * 1e3:.1f} ms", f"{r['mf_adjoint_s'] * 1e3:.1f} ms",
                 f"{r.get('dense_apply_s', float('nan')) / r['mf_apply_s']:.1f}x",
                 f"{r.get('dense_adjoint_s', float('nan')) / r['mf_adjoint_s']:.1f}x",
                 f"{r['mf_recompute_apply_s'] * 1e3:.1f} ms",
                 f"{r['mf_recompute_adjoint_s'] * 1e3:.1f} ms",
                 fmt_bytes(r["cache_bytes"]), fmt_bytes(r["mf_apply_peak"])]
        print(" | ".join(str(c) for c in cells))


def print_estimate(e):
    g = e["size"]
    print(f"\nNGC 4365 estimate (S={g['S']}, C={g['C']}, P={g['P']}, L={g['L']}, T={g['T']}, "
          f"V={g['V']}; {e['dtype']}, {e['workers']} thread(s); "
          f"nfft={e['subsets'][max(e['subsets'])]['nfft']}):")
    for n, s in e["subsets"].items():
        print(f"  subset {n:3d} spaxels: cached A {s['cached_apply_s']:.3f} s, Aᵀ "
              f"{s['cached_adjoint_s']:.3f} s; recomputed A {s['recompute_apply_s']:.3f} s, Aᵀ "
              f"{s['recompute_adjoint_s']:.3f} s")
    for mode in ("cached", "recompute"):
        print(f"  {mode:9s}: A ≈ {e[f'{mode}_apply_full_s']:.1f} s "
              f"({e[f'{mode}_apply_fixed_s']:.2f} s fixed + "
              f"{e[f'{mode}_apply_per_spaxel_s'] * 1e3:.2f} ms/spaxel), Aᵀ ≈ "
              f"{e[f'{mode}_adjoint_full_s']:.1f} s")
    print(f"  memory: spectra cache {fmt_bytes(e['cache_bytes_full'])} (all spaxels), LOSVDs "
          f"{fmt_bytes(e['losvd_bytes'])}, data+weights {fmt_bytes(e['data_bytes'])}, per-apply "
          f"work ≈ {fmt_bytes(e['work_peak_bytes'])}; materialised cube "
          f"{fmt_bytes(e['dense_cube_bytes'])}")
    print(f"  complex multiply-adds per apply: {e['macs_per_apply']:.2e}")
    if "dense_apply_est_s" in e:
        print(f"  materialised contraction at the measured bandwidth: ≈ {e['dense_apply_est_s']:.0f} s "
              "per apply (streamed from disk in practice: slower)")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--estimate", action="store_true", help="add the NGC 4365 extrapolation")
    ap.add_argument("--only-estimate", action="store_true", help="skip the size table")
    ap.add_argument("--no-table", action="store_true", help="skip the size table (e.g. with --full)")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--dtype", choices=("float32", "float64"), default="float64")
    ap.add_argument("--workers", type=int, default=1, help="threads over spaxel tiles")
    ap.add_argument("--full", action="store_true",
                    help="also apply the operator at the full NGC 4365 size (needs ≈17 GiB "
                         "in float32 with the whole cache; less with --budget-gib)")
    ap.add_argument("--budget-gib", type=float, default=16.0,
                    help="memory budget of the --full operator (GiB)")
    ap.add_argument("--backend", default="numpy",
                    help="array backend of the matrix-free rows and --full (numpy, cupy, torch)")
    ap.add_argument("--no-dense", action="store_true", help="skip the materialised cube")
    ap.add_argument("--json", metavar="PATH", help="write all numbers to this JSON file")
    a = ap.parse_args(argv)
    out = {"machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0],
                       "numpy": np.__version__, "platform": platform.platform()},
           "dtype": a.dtype, "workers": a.workers, "sizes": []}
    if not (a.only_estimate or a.no_table):
        for S, C, P, L in SIZES:
            out["sizes"].append(bench_size(S, C, P, L, a.repeat, a.dtype, a.workers,
                                           dense=not a.no_dense, backend=a.backend))
        print_table(out["sizes"])
    if a.estimate or a.only_estimate:
        bw = max((r["dense_GBps"] for r in out["sizes"]), default=None)
        out["ngc4365"] = estimate_ngc(max(2, a.repeat // 2), a.dtype, a.workers, dense_GBps=bw)
        print_estimate(out["ngc4365"])
    if a.full:
        out["ngc4365_full"] = full_ngc(max(2, a.repeat // 2), a.dtype, a.workers, a.budget_gib,
                                       a.backend)
        print_full(out["ngc4365_full"])
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
