"""Cost of a small write into a file that holds a large hypercube.

    python benchmarks/writes.py [--cube-gib 1.0] [--repeats 3] [--baseline-src DIR] [--json out.json]

A small galaxy file is populated and given a ``/HyperCube/models`` of about
``--cube-gib`` GiB (filled with data, not sparse, as a built cube is).  Then two small
writes are timed, each in a fresh process so that its I/O counters are its own:

* ``λ-weights``: ``ensure_lambda_weights(..., overwrite=True)`` (L numbers);
* ``/X_global``: ``write_fit`` of the C·P weights with their ``/Fit`` attributes.

For each: the wall time (median of ``--repeats``), the bytes the process passed to
write-like system calls (``wchar`` of ``/proc/self/io``: copies included) and the
largest extra disk space the write needed next to the file.  ``--baseline-src`` also
runs the same writes with another source tree of the package (e.g. the commit before
the rollback journal, exported with ``git archive <commit> src | tar -x -C DIR``), so
before and after are measured side by side.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import h5py
import numpy as np

SRC = Path(__file__).resolve().parents[1] / "src"

WRITE = textwrap.dedent("""
    import json, os, sys, threading, time
    import numpy as np
    path, op = sys.argv[1], sys.argv[2]
    from cubefit.runner import write_fit
    from cubefit.weights import ensure_lambda_weights
    def wchar():
        with open("/proc/self/io") as fh:
            return next(int(l.split()[1]) for l in fh if l.startswith("wchar"))
    folder = os.path.dirname(path)
    def used():
        return sum(e.stat().st_size for e in os.scandir(folder) if e.is_file())
    peak, stop = [used()], threading.Event()
    def watch():                    # largest extra space next to the file during the write
        while not stop.is_set():
            peak[0] = max(peak[0], used())
            time.sleep(0.002)
    base = used()
    t = threading.Thread(target=watch)
    t.start()
    w0, t0 = wchar(), time.perf_counter()
    if op == "lambda_weights":
        ensure_lambda_weights(path, small_px=int(sys.argv[3]), overwrite=True)
    else:
        n = int(sys.argv[3])
        write_fit(path, np.arange(n, dtype=float), {"nit": 1, "message": "benchmark"}, {})
    wall = time.perf_counter() - t0
    written = wchar() - w0
    stop.set()
    t.join()
    print(json.dumps({"wall_s": wall, "written_bytes": written,
                      "extra_disk_bytes": max(peak[0], used()) - base}))
""")


def make_file(path: Path, cube_gib: float) -> dict:
    """A populated small galaxy plus a filled ``/HyperCube/models`` of ``cube_gib`` GiB."""
    sys.path.insert(0, str(SRC))
    from cubefit.mock import DEFAULT_COMPONENTS, make_mock_galaxy, synthetic_templates
    from cubefit.store import H5Manager
    flux, ln_lam, axes = synthetic_templates(n_age=10, n_metal=5, lam=(4500.0, 6500.0), velscale=30.0)
    g = make_mock_galaxy(flux, ln_lam, pop_shape=(10, 5), pop_axes=axes, nx=4, ny=4,
                         components=DEFAULT_COMPONENTS[:3], obs_lam=(4800.0, 6200.0), vel_max=900.0,
                         snr=100.0)
    mgr = H5Manager(path, tem_pix=g.tem_pix, obs_pix=g.obs_pix)
    mgr.init_base(g.dims)
    mgr.populate_from_arrays(losvd=g.losvd, datacube=g.datacube, templates=g.templates, mask=g.mask,
                             vel_pix=g.vel_pix, noise=g.noise, pop_axes=axes)
    mgr.ensure_rebin_and_resample()
    C, P, L = g.dims.nComp, g.dims.nPop, g.dims.nLSpec
    n_rows = max(1, int(cube_gib * 2**30 / (4 * C * P * L)))   # spaxel rows of the stand-in cube
    with h5py.File(path, "r+") as f:
        ds = f.create_dataset("/HyperCube/models", shape=(n_rows, C, P, L), dtype=np.float32,
                              chunks=(1, C, P, L))
        block = np.random.default_rng(0).random((1, C, P, L), dtype=np.float32)
        for i in range(n_rows):
            ds[i:i + 1] = block
    return {"file_bytes": path.stat().st_size, "n_weights": C * P, "L": L}


def measure(src: Path, path: Path, op: str, arg: int, repeats: int) -> dict:
    env = dict(os.environ, PYTHONPATH=str(src))
    runs = []
    for i in range(repeats):
        out = subprocess.run([sys.executable, "-c", WRITE, str(path), op, str(arg + i if op ==
                              "lambda_weights" else arg)], capture_output=True, text=True, env=env,
                             check=True)
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    return {"wall_s": statistics.median(r["wall_s"] for r in runs),
            "written_bytes": int(statistics.median(r["written_bytes"] for r in runs)),
            "extra_disk_bytes": max(r["extra_disk_bytes"] for r in runs)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cube-gib", type=float, default=1.0, help="size of the stand-in hypercube")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--baseline-src", type=Path, default=None,
                    help="another source tree of the package to measure side by side")
    ap.add_argument("--dir", type=Path, default=None, help="working folder (default: a temporary one)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        work = Path(tmp) / "bench"
        work.mkdir()
        path = work / "galaxy.h5"
        info = make_file(path, args.cube_gib)
        codes = [("this tree", SRC)] + ([("baseline", args.baseline_src.resolve())]
                                        if args.baseline_src else [])
        rows = []
        for label, src in codes:
            for op, arg in (("lambda_weights", 5), ("X_global", info["n_weights"])):
                fresh = work / f"run-{len(rows)}.h5"
                shutil.copy(path, fresh)      # every code starts from the same file
                r = measure(src, fresh, op, arg, args.repeats)
                fresh.unlink()
                rows.append({"code": label, "write": op, **r})
    print(f"file {info['file_bytes'] / 2**30:.2f} GiB (hypercube stand-in), {info['n_weights']} "
          f"weights, L = {info['L']}; median of {args.repeats}")
    print(f"{'code':<10} {'write':<15} {'wall':>9} {'written':>12} {'extra disk':>12}")
    for r in rows:
        print(f"{r['code']:<10} {r['write']:<15} {r['wall_s']:>8.3f}s {r['written_bytes'] / 2**20:>9.2f} MiB "
              f"{r['extra_disk_bytes'] / 2**20:>9.2f} MiB")
    if args.json:
        args.json.write_text(json.dumps({"machine": platform.platform(), "cpus": os.cpu_count(),
                                         "file": info, "repeats": args.repeats, "rows": rows},
                                        indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
