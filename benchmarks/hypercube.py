"""Hypercube build throughput and peak memory at a few problem sizes.

    python benchmarks/hypercube.py [--sizes small,medium,large] [--json results.json]

For each size a synthetic mock galaxy is written to a temporary file and
``build_hypercube`` is timed (wall and CPU time of this process, default chunks, no progress bar; on a
shared machine the CPU time is the steadier number); a second build of
the same cube (``overwrite=True``) runs under ``tracemalloc`` for the peak of
Python/numpy allocations.  Throughput is in (spaxel, component) pairs per second
— each pair is ``P`` convolutions and rebins — and in columns (s, c, p) per second.
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import tempfile
import time
import tracemalloc
from pathlib import Path

import h5py
import numpy as np

from cubefit import __version__
from cubefit.hypercube import build_hypercube
from cubefit.mock import DEFAULT_COMPONENTS, make_mock_galaxy, synthetic_templates
from cubefit.store import H5Manager

# name -> (nx = ny, components, ages, metallicities)
SIZES = {
    "small": (3, 2, 5, 3),
    "medium": (4, 3, 12, 5),
    "large": (6, 3, 25, 6),
}


def populated(path: Path, side: int, n_comp: int, n_age: int, n_metal: int) -> None:
    flux, ln_lam, axes = synthetic_templates(n_age=n_age, n_metal=n_metal, lam=(4500.0, 6500.0),
                                             velscale=30.0)
    g = make_mock_galaxy(flux, ln_lam, pop_shape=(n_age, n_metal), pop_axes=axes, nx=side, ny=side,
                         components=DEFAULT_COMPONENTS[:n_comp], obs_lam=(4800.0, 6200.0),
                         vel_max=900.0, snr=100.0)
    mgr = H5Manager(path, tem_pix=g.tem_pix, obs_pix=g.obs_pix)
    mgr.init_base(g.dims)
    mgr.populate_from_arrays(losvd=g.losvd, datacube=g.datacube, templates=g.templates, mask=g.mask,
                             vel_pix=g.vel_pix, noise=g.noise, pop_axes=axes)
    mgr.ensure_rebin_and_resample()


def run(name: str, workdir: Path) -> dict:
    side, n_comp, n_age, n_metal = SIZES[name]
    path = workdir / f"{name}.h5"
    populated(path, side, n_comp, n_age, n_metal)
    t0, c0 = time.perf_counter(), time.process_time()
    st = build_hypercube(path, norm_mode="data", progress=False)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    tracemalloc.start()
    build_hypercube(path, norm_mode="data", overwrite=True, progress=False)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    with h5py.File(path, "r") as f:
        S, C, P, L = f["/HyperCube/models"].shape
        T = f["/TemPix"].shape[0]
    return {"size": name, "S": S, "C": C, "P": P, "L": L, "T": T, "chunks": list(st.grid.chunks),
            "tiles": st.n_tiles, "build_s": wall, "cpu_s": cpu, "pairs_per_s": S * C / wall,
            "columns_per_s": S * C * P / wall, "written_MB_per_s": S * C * P * L * 4 / wall / 1e6,
            "tracemalloc_peak_MB": peak / 1e6}


def main(argv=None) -> list:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default=",".join(SIZES), help=f"comma-separated subset of {list(SIZES)}")
    ap.add_argument("--json", type=Path, help="write the results (and machine info) to this file")
    args = ap.parse_args(argv)
    names = [s for s in args.sizes.split(",") if s]
    unknown = set(names) - set(SIZES)
    if unknown:
        ap.error(f"unknown sizes {sorted(unknown)}; choose from {list(SIZES)}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            rows.append(run(name, Path(tmp)))
    head = (f"{'size':<7}{'S':>4}{'C':>3}{'P':>5}{'L':>6}{'T':>6}  {'chunks':<13}{'tiles':>6}"
            f"{'build s':>9}{'cpu s':>7}{'pairs/s':>9}{'cols/s':>9}{'MB/s':>7}{'peak MB':>9}")
    print(head)
    for r in rows:
        print(f"{r['size']:<7}{r['S']:>4}{r['C']:>3}{r['P']:>5}{r['L']:>6}{r['T']:>6}  "
              f"{str(tuple(r['chunks'])):<13}{r['tiles']:>6}{r['build_s']:>9.2f}{r['cpu_s']:>7.2f}"
              f"{r['pairs_per_s']:>9.1f}{r['columns_per_s']:>9.0f}{r['written_MB_per_s']:>7.1f}"
              f"{r['tracemalloc_peak_MB']:>9.1f}")
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"process peak RSS {maxrss:.0f} MB (numpy {np.__version__}, cubefit {__version__}, "
          f"{platform.processor() or platform.machine()})")
    if args.json:
        args.json.write_text(json.dumps({"results": rows, "max_rss_MB": maxrss,
                                         "numpy": np.__version__, "cubefit": __version__,
                                         "machine": platform.platform()}, indent=2))
    return rows


if __name__ == "__main__":
    main()
