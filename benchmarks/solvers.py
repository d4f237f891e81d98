"""Global NNLS solvers side by side: time and operator passes to reach the optimum.

Usage::

    python benchmarks/solvers.py                   # 64×8×150×858 and 256×16×150×1500
    python benchmarks/solvers.py --quick           # 16×4×150×400 (a minute)
    python benchmarks/solvers.py --json out.json   # also write every number and history
    python benchmarks/solvers.py --sizes 64x8x858 --solvers newton_cg,working_set

Problems (issue #4, item 6).  Each size ``S×C×P×L`` is a mock galaxy from
:func:`cubefit.mock.make_mock_galaxy` — ``S`` spaxels on a square field, ``C``
kinematic components with random rotation, dispersion, profile and a Gaussian blob
of population weights on the 25×6 (age × [M/H]) grid, S/N 100 per pixel in every
spaxel, two masked windows — fitted with :class:`cubefit.operator.LOSVDOperator`
(``norm="model"``, inverse-variance weights, all kernel spectra cached, 2 threads),
with two template sets on the same 50 km/s grid:

* ``emiles``: the 150 E-MILES SSPs (:meth:`cubefit.templates.TemplateLibrary.from_emiles`),
  nearly collinear;
* ``random``: 150 random positive spectra, uniform in [0.5, 1.5] (well conditioned
  apart from their common mean);

each without priors and with Tikhonov regularisation (``with_priors(regul=REGUL,
regul_order=2, pop_shape=(25, 6))``), which makes the optimum dense.

For every solver of :data:`cubefit.solvers.METHODS` (default settings, ``gtol=1e-6``)
the run's own history (time, passes, cost per iterate) gives the first time and pass
count at which ``f ≤ f*·(1 + 1e-4)`` and ``f ≤ f*·(1 + 1e-6)``, where ``f*`` is the
lowest cost any solver evaluated on that problem (the exact solvers — ``gram``,
``working_set``, ``bvls`` — agree on it to ~1e-15 when they finish).  Also reported:
final status, relative gap and optimality, and the peak memory the solve allocated
(tracemalloc: numpy buffers, over what the problem already holds).  Each solve runs
in a fresh process (built from scratch, so solvers share no cache or thread pool)
that streams every recorded iterate to this one; it is killed when the solve exceeds
``--budget`` seconds, and its history so far is kept (``cut`` in the table).
``bvls`` is skipped where its dense matrix exceeds 2 GiB.

The machine is shared and noisy: compare solvers within one run (same problem, same
operator, run one after the other); the forward/adjoint apply times printed with
each problem convert passes to seconds.
"""
from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import platform
import sys
import time
import tracemalloc

import numpy as np

from cubefit import C_KMS
from cubefit.mock import Component, make_mock_galaxy
from cubefit.operator import LOSVDOperator
from cubefit.solvers import METHODS
from cubefit.solvers.priors import with_priors
from cubefit.solvers.problem import LeastSquares
from cubefit.templates import TemplateLibrary

SIZES = [(64, 8, 150, 858), (256, 16, 150, 1500)]        # (S, C, P, L)
QUICK_SIZES = [(16, 4, 150, 400)]
KINDS = ("random", "emiles")
POP_SHAPE = (25, 6)                                        # E-MILES: 25 ages × 6 [M/H]
REGUL = 1e-2
"""Tikhonov strength of the regularised problems (dimensionless, see
:mod:`cubefit.solvers.priors`)."""
VELSCALE = 50.0                                            # km/s per template pixel
OBS_STEP = 2                                               # template pixels per observed pixel
LAM0 = 4200.0                                              # Å, blue end of the observed range
VEL_MAX = 900.0                                            # km/s, LOSVD grid half-width
SNR = 100.0
TARGETS = (1e-4, 1e-6)
"""Relative cost gaps ``f/f* − 1`` whose crossing is timed."""


# -- problems -------------------------------------------------------------------------------
def components(C: int, seed: int) -> tuple:
    """``C`` random kinematic components (rotation, dispersion, profile, population blob)."""
    rng = np.random.default_rng(seed)
    return tuple(Component(f"c{c}", vmax=float(rng.uniform(-250, 250)),
                           sigma=float(rng.uniform(40, 250)), r_eff=float(rng.uniform(1.0, 6.0)),
                           flux=float(rng.uniform(0.2, 1.0)),
                           pop_centre=(float(rng.uniform(0.1, 0.9)), float(rng.uniform(0.1, 0.9))),
                           q=float(rng.uniform(0.4, 1.0)))
                 for c in range(C))


def emiles_library() -> TemplateLibrary:
    """E-MILES on the benchmark's 50 km/s grid, wide enough for every size."""
    return TemplateLibrary.from_emiles(velscale=VELSCALE, lam_range=(3800.0, 7400.0))


def build_problem(kind: str, S: int, C: int, P: int, L: int, lib: TemplateLibrary, seed: int = 0,
                  backend: str = "numpy"):
    """``(op, mock)``: the weighted operator (spectra cached, on ``backend``) and its mock."""
    ny = int(round(math.sqrt(S)))
    if ny * ny != S:
        raise ValueError(f"S={S}: the mock field is square, pass a square number of spaxels")
    if P != lib.P:
        raise ValueError(f"P={P}: the population grid is E-MILES' {lib.grid_shape} (P={lib.P})")
    dlog_l = OBS_STEP * VELSCALE / C_KMS
    obs_lam = (LAM0, LAM0 * math.exp((L + 0.5) * dlog_l))
    if kind == "emiles":
        templates = lib.flux
    elif kind == "random":
        templates = np.random.default_rng(seed + 1).uniform(0.5, 1.5, lib.flux.shape)
    else:
        raise ValueError(f"kind: expected one of {KINDS}, got {kind!r}")
    mock = make_mock_galaxy(templates, lib.ln_lam, pop_shape=lib.grid_shape, pop_axes=lib.pop_axes,
                            nx=ny, ny=ny, components=components(C, seed), obs_lam=obs_lam,
                            obs_step=OBS_STEP, vel_max=VEL_MAX, snr=SNR, noise_model="binned",
                            seed=seed)
    if mock.obs_pix.size != L:
        raise RuntimeError(f"the mock has L={mock.obs_pix.size} observed pixels, expected {L}")
    # Only the templates' range that the observed pixels and the kernels reach.
    K = int(math.ceil(VEL_MAX / VELSCALE)) + 8
    lo = max(0, int(np.searchsorted(mock.tem_pix, mock.obs_pix[0])) - K - OBS_STEP)
    hi = min(mock.tem_pix.size, int(np.searchsorted(mock.tem_pix, mock.obs_pix[-1])) + K + OBS_STEP)
    op = LOSVDOperator(mock.templates[:, lo:hi], mock.tem_pix[lo:hi], mock.obs_pix, mock.vel_pix,
                       mock.losvd, datacube=mock.datacube, mask=mock.mask,
                       ivar=1.0 / mock.noise**2, workers=2, memory_budget=4 * 2**30,
                       backend=backend)
    op.precompute()
    return op, mock


def apply_times(op, repeat: int = 3) -> tuple[float, float]:
    """Median seconds of one forward and one adjoint apply."""
    x = np.random.default_rng(0).uniform(0, 1, op.shape[1])
    r = np.random.default_rng(1).standard_normal(op.shape[0])
    out = []
    for fn, v in ((op.matvec, x), (op.rmatvec, r)):
        ts = []
        for _ in range(repeat):
            t = time.perf_counter()
            fn(v)
            ts.append(time.perf_counter() - t)
        out.append(float(np.median(ts)))
    return out[0], out[1]


# -- running a solver under a time budget ----------------------------------------------------
def _solve_in_child(spec: dict, solver: str, conn) -> None:
    """Child process: build the problem of ``spec``, time the applies, solve with ``solver``.

    Every iterate the solver records (:meth:`LeastSquares.record`, wrapped here) is sent
    to the parent at once with the peak memory so far, so a run the parent kills at its
    budget keeps its history.  Messages: ``("apply", forward_s, adjoint_s)``,
    ``("it", time, passes, cost, optimality, peak_bytes)``, then ``("done", summary)`` or
    ``("skipped", reason)``.
    """
    op, _ = build_problem(spec["kind"], spec["S"], spec["C"], spec["P"], spec["L"],
                          emiles_library(), backend=spec.get("backend", "numpy"))
    conn.send(("apply",) + apply_times(op))
    A = op if spec["regul"] == 0 else with_priors(op, regul=spec["regul"], regul_order=2,
                                                  pop_shape=POP_SHAPE)
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    record = LeastSquares.record

    def streaming_record(prob, *args, **kwargs):
        record(prob, *args, **kwargs)
        h = prob.history
        conn.send(("it", h["time"][-1], h["passes"][-1], h["cost"][-1], h["optimality"][-1],
                   tracemalloc.get_traced_memory()[1] - base))

    LeastSquares.record = streaming_record
    try:
        res = METHODS[solver](A)
    except ValueError as e:               # bvls: the dense matrix does not fit
        conn.send(("skipped", str(e).split(";")[0]))
        return
    conn.send(("done", dict(status=int(res.status), optimality=float(res.optimality),
                            nit=int(res.nit), time=float(res.timings["total"]),
                            passes=int(res.passes), gram_columns=int(res.gram_columns),
                            nonzero=int(np.count_nonzero(res.x)),
                            peak_bytes=int(tracemalloc.get_traced_memory()[1] - base))))


def run_solver(spec: dict, solver: str, budget: float) -> dict:
    """Solve ``spec`` with ``METHODS[solver]`` (default settings) in a fresh process.

    The process is killed once the solve has run ``budget`` seconds (the problem's
    construction is not counted); the row then has ``cut=True``, the history so far, and
    ``passes`` as of its last recorded iterate (a lower bound).
    A fresh process per solve keeps the solvers from sharing caches, allocator state
    or thread pools.
    """
    ctx = mp.get_context("spawn")
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_solve_in_child, args=(spec, solver, send), daemon=True)
    proc.start()
    send.close()
    row = {"solver": solver, "cut": False}
    hist = {"time": [], "passes": [], "cost": [], "optimality": []}
    started = None                        # wall clock when the solve (not the build) began
    while True:
        left = None if started is None else budget - (time.perf_counter() - started)
        if left is not None and left <= 0:
            proc.kill()
            row["cut"] = True
            break
        if not recv.poll(left if left is not None else 600.0):
            if not proc.is_alive():
                raise RuntimeError(f"{solver}: the solver process died (exit code {proc.exitcode})")
            continue
        try:
            msg = recv.recv()
        except EOFError:
            raise RuntimeError(f"{solver}: the solver process died (exit code {proc.exitcode})")
        if msg[0] == "apply":
            row["forward_s"], row["adjoint_s"] = msg[1], msg[2]
            started = time.perf_counter()
        elif msg[0] == "it":
            for key, v in zip(hist, msg[1:5]):
                hist[key].append(v)
            row["peak_bytes"] = msg[5]
        elif msg[0] == "done":
            row.update(msg[1])
            break
        else:
            row["skipped"] = msg[1]
            break
    proc.join(timeout=10)
    if proc.is_alive():
        proc.kill()
    if "skipped" not in row:
        row["history"] = hist
        if row["cut"]:
            finite = [v for v in hist["optimality"] if np.isfinite(v)]
            row.update(status=None, optimality=finite[-1] if finite else np.nan,
                       time=budget, passes=hist["passes"][-1] if hist["cost"] else 0,
                       nonzero=None)
    return row


def crossings(history: dict, f_star: float) -> dict:
    """First ``(time, passes)`` with ``f ≤ f*·(1 + tol)`` for each target ``tol`` (None: never)."""
    cost = np.asarray(history["cost"])
    out = {}
    for tol in TARGETS:
        hit = np.flatnonzero(cost <= f_star * (1 + tol))
        out[f"{tol:g}"] = (None if hit.size == 0 else
                           (float(history["time"][hit[0]]), int(history["passes"][hit[0]])))
    return out


def thin(history: dict, keep: int = 2000) -> dict:
    """At most ``keep`` history points (log-spaced indices), for the JSON file."""
    n = len(history["cost"])
    idx = np.unique(np.geomspace(1, n, min(n, keep)).astype(int) - 1) if n > keep else np.arange(n)
    return {k: [history[k][i] for i in idx] for k in history}


# -- the benchmark ---------------------------------------------------------------------------
def bench_problem(spec: dict, solvers, budget: float) -> dict:
    label = "{kind} {S}x{C}x{P}x{L} regul={regul:g} on {backend}".format(**spec)
    rows = []
    for name in solvers:
        print(f"  {label}: {name} ...", end="", flush=True)
        row = run_solver(spec, name, budget)
        rows.append(row)
        print(" skipped" if "skipped" in row else
              f" {row['time']:.1f} s{' (cut)' if row['cut'] else ''}", flush=True)
    ran = [r for r in rows if "skipped" not in r and r["history"]["cost"]]
    f_star = min(min(r["history"]["cost"]) for r in ran)
    for r in ran:
        r["crossings"] = crossings(r["history"], f_star)
        r["final_gap"] = float(r["history"]["cost"][-1] / f_star - 1) if f_star > 0 else 0.0
    return {"label": label, "f_star": f_star, "rows": rows,
            "forward_s": float(np.median([r["forward_s"] for r in rows if "forward_s" in r])),
            "adjoint_s": float(np.median([r["adjoint_s"] for r in rows if "adjoint_s" in r]))}


def fmt_cross(c) -> str:
    return "—" if c is None else f"{c[0]:8.2f} s {c[1]:6d}"


def print_table(result: dict) -> None:
    print(f"\n{result['label']}: f* = {result['f_star']:.10g}; one apply: forward "
          f"{result['forward_s'] * 1e3:.1f} ms, adjoint {result['adjoint_s'] * 1e3:.1f} ms")
    head = (f"{'solver':12s} {'status':>6s} {'to 1e-4: time, passes':>22s} "
            f"{'to 1e-6: time, passes':>22s} {'total s':>8s} {'passes':>7s} {'gap':>9s} "
            f"{'optimality':>10s} {'nonzero':>7s} {'peak MiB':>8s}")
    print(head)
    print("-" * len(head))
    for r in result["rows"]:
        if "skipped" in r:
            print(f"{r['solver']:12s} skipped: {r['skipped']}")
            continue
        c = r.get("crossings", {"0.0001": None, "1e-06": None})
        print(f"{r['solver']:12s} {'cut' if r['cut'] else r['status']:>6} "
              f"{fmt_cross(c['0.0001']):>22s} {fmt_cross(c['1e-06']):>22s} {r['time']:8.2f} "
              f"{r['passes']:7d} {r.get('final_gap', np.nan):9.1e} {r['optimality']:10.1e} "
              f"{'—' if r['nonzero'] is None else r['nonzero']:>7} "
              f"{r.get('peak_bytes', 0) / 2**20:8.1f}")


def write_json(path, out: dict) -> None:
    """Write ``out`` to ``path`` (nothing when ``path`` is None) and say so."""
    if path:
        with open(path, "w") as f:
            json.dump(out, f, indent=1)
        print(f"\nwrote {path}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes only (about a minute)")
    ap.add_argument("--sizes", help="comma-separated SxCxL (P is E-MILES' 150), e.g. 64x8x858")
    ap.add_argument("--kinds", default=",".join(KINDS), help="template sets: random,emiles")
    ap.add_argument("--solvers", default=",".join(METHODS), help="comma-separated METHODS names")
    ap.add_argument("--regul", default=f"0,{REGUL:g}", help="comma-separated Tikhonov strengths")
    ap.add_argument("--budget", type=float, default=None,
                    help="seconds per solve before it is cut (default 90, 20 with --quick)")
    ap.add_argument("--backend", default="numpy",
                    help="array backend of the operator (numpy, cupy, torch: cubefit.backend)")
    ap.add_argument("--json", help="write all results (histories thinned) to this file")
    args = ap.parse_args(argv)

    if args.sizes:
        sizes = [(int(s), int(c), 150, int(l)) for s, c, l in
                 (t.lower().split("x") for t in args.sizes.split(","))]
    else:
        sizes = QUICK_SIZES if args.quick else SIZES
    budget = args.budget or (20.0 if args.quick else 90.0)
    solvers = [s for s in args.solvers.split(",") if s]
    unknown = sorted(set(solvers) - set(METHODS))
    if unknown:
        ap.error(f"unknown solvers {unknown}; expected names from {sorted(METHODS)}")
    reguls = [float(v) for v in args.regul.split(",")]
    out = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                       "python": sys.version.split()[0], "numpy": np.__version__},
           "budget_s": budget, "problems": []}
    for (S, C, P, L) in sizes:
        for kind in args.kinds.split(","):
            for regul in reguls:
                spec = dict(kind=kind, S=S, C=C, P=P, L=L, regul=regul, backend=args.backend)
                res = bench_problem(spec, solvers, budget)
                print_table(res)
                for r in res["rows"]:
                    if "history" in r:
                        r["history"] = thin(r["history"])
                out["problems"].append(dict(spec, **res))
    write_json(args.json, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
