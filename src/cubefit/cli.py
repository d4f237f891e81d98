"""The ``cubefit`` command.

Exit codes: 0 success, 1 failure (one clear line on stderr; ``--debug`` shows the
traceback), 2 usage error (argparse).
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import textwrap
from pathlib import Path

import numpy as np

from . import __version__
from .backend import BACKENDS

log = logging.getLogger("cubefit")


_CLI_HINTS = (
    # (pattern in a library message, its command-line equivalent); {file} is the file named.
    (r"convert_hypercube_norm\((?:h5, )?(?:to_mode=)?'?(data|model)'?(?:, [^)]*)?\)",
     r"cubefit build {file} --convert-to \1"),
    (r"run build_hypercube\(\) again", "run `cubefit build {file}` again"),
    (r"build_hypercube\([^)]*\)", "cubefit build {file}"),
    (r"init_base\(\.\.\., overwrite=True\)", "cubefit init --overwrite"),
    (r"(?:call |run )?(?:H5Manager(?:\(\.\.\.\))?\.)?(?:init_base(?:\(H5Dims\(\.\.\.\)\))?/)?"
     r"populate_from_arrays(?:\(\.\.\.\))?(?: and ensure_rebin_and_resample)?",
     "run `cubefit init INPUT {file}`"),
    (r"(?:call )?init_base\(H5Dims\(\.\.\.\)\)", "run `cubefit init INPUT {file}`"),
    (r"ensure_lambda_weights\([^)]*\)", "cubefit weights {file}"),
    (r"[Pp]ass overwrite=True", "Pass --overwrite"),
    (r"overwrite=True", "--overwrite"),
    (r"norm_mode=", "--norm-mode "),
    (r"leave norm_mode out", "leave --norm-mode out"),
    (r"resume=True", "--resume"),
    (r"^out=(/\S+?):", r"--out \1:"),
)


def cli_message(text: str, file: str = "FILE") -> str:
    """A library error message with its Python hints (``overwrite=True``,
    ``convert_hypercube_norm(h5, 'model')``, ``populate_from_arrays``, …) rewritten as the
    command-line options and commands that do the same."""
    import re
    for pattern, repl in _CLI_HINTS:
        text = re.sub(pattern, repl.replace("{file}", str(file)), text)
    return text


def _positive_int(text: str) -> int:
    v = int(text)
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return v


def _positive_float(text: str) -> float:
    v = float(text)
    if not (np.isfinite(v) and v > 0):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
    return v


def _regul(text: str):
    """``--regul``: a strength >= 0, or ``auto`` (the chi2 criterion of cubefit.regul_auto)."""
    if text.strip().lower() == "auto":
        return "auto"
    v = float(text)
    if not (np.isfinite(v) and v >= 0):
        raise argparse.ArgumentTypeError(f"expected a strength >= 0 or 'auto', got {text}")
    return v


def _print_info(path) -> None:
    from .store import describe_file
    d = describe_file(path)
    a = d["attrs"]
    print(f"{d['path']}  (written by cubefit {a.get('cubefit_version', '?')}, "
          f"modified {a.get('modified_utc', '?')})")
    if "dims" in a:
        dims = dict(zip(a["dims_names"], a["dims"]))
        print("dimensions: " + ", ".join(f"{k}={v}" for k, v in dims.items()))
    stages = {k: "yes" if v else "no" for k, v in d["stages"].items()}
    if d["stages"].get("hypercube"):
        from .hypercube import hypercube_status
        st = hypercube_status(path)
        if st.pending_conversion:
            stages["hypercube"] = f"conversion to {st.pending_conversion!r} interrupted"
        elif not st.complete:
            stages["hypercube"] = f"{st.n_done}/{st.n_tiles} tiles"
    print("stages:     " + ", ".join(f"{k}={v}" for k, v in stages.items()))
    for name, why in d["stale"].items():
        print(f"stale:      {name} was {why}; not used (rebuild it)")
    rows = d["datasets"]
    w = max((len(r[0]) for r in rows), default=8)
    ws = max((len(str(r[1])) for r in rows), default=5)
    wu = max((len(str(r[3])) for r in rows), default=5)
    print(f"\n{'dataset':<{w}}  {'shape':<{ws}}  {'dtype':<8}  {'units':<{wu}}  meaning")
    for name, shape, dtype, units, desc in rows:
        print(f"{name:<{w}}  {str(shape):<{ws}}  {dtype:<8}  {str(units):<{wu}}  {desc}")
    skip = {"dims", "dims_names", "cubefit_version", "modified_utc", "input_digests"}
    settings = {k: v for k, v in a.items() if k not in skip}
    if settings:
        print("\nsettings:")
        for k, v in sorted(settings.items()):
            print(f"  {k} = {v}")


def cmd_info(args) -> int:
    _print_info(args.file)
    return 0


def cmd_init(args) -> int:
    """A new OUTPUT (or one replaced with --overwrite) is assembled in a temporary file
    beside it and renamed into place only when complete, so a failed init leaves no file
    (or the previous one); an existing OUTPUT is updated by steps that are each atomic."""
    from .inputs import load_input_arrays
    from .store import H5Dims, H5Manager
    from .validate import losvd_axes, spaxels_of
    arrays = load_input_arrays(args.input, provided=("losvd",) if args.losvd else ())
    if args.losvd:                          # LOSVDs made elsewhere (cubefit.ifu.losvds)
        from .ifu.losvds import read_losvd_file
        arrays["losvd"], arrays["vel_pix"] = read_losvd_file(args.losvd)
    tem, obs = arrays.pop("tem_pix"), arrays.pop("obs_pix")
    vel = arrays.get("vel_pix")
    losvd_axes(np.shape(arrays["losvd"]), spaxels_of(np.shape(arrays["datacube"]), np.size(obs)),
               None if vel is None else np.size(vel))
    S, V, C = np.shape(arrays["losvd"])
    P = np.shape(arrays["templates"])[0]
    out = Path(args.output)
    fresh = args.overwrite or not out.exists()
    target = out.with_name(f".{out.name}.new-{os.getpid()}") if fresh else out
    try:
        mgr = H5Manager(target, tem_pix=tem, obs_pix=obs, vel_pix=vel)
        mgr.init_base(H5Dims(nSpat=S, nLSpec=np.size(obs), nTSpec=np.size(tem), nVel=V, nComp=C,
                             nPop=P), overwrite=args.overwrite)
        dims = mgr.populate_from_arrays(**arrays)
        mgr.ensure_rebin_and_resample()
        if fresh:
            os.replace(target, out)
    finally:
        if fresh and target.exists():
            target.unlink()
    print(f"{args.output}: {dims}; next: cubefit solve {args.output}")
    return 0


def cmd_build(args) -> int:
    from .hypercube import build_hypercube, convert_hypercube_norm
    if args.convert_to:
        convert_hypercube_norm(args.file, to_mode=args.convert_to, progress=not args.quiet)
        print(f"{args.file}: /HyperCube/models converted to norm {args.convert_to!r}")
        return 0
    st = build_hypercube(args.file, norm_mode=args.norm, amp_mode=args.amp, S_chunk=args.s_chunk,
                         C_chunk=args.c_chunk, P_chunk=args.p_chunk,
                         compression=None if args.compression == "none" else args.compression,
                         overwrite=args.overwrite, progress=not args.quiet)
    print(f"{args.file}: /HyperCube/models {st.fraction_done:.0%} built")
    return 0


def cmd_weights(args) -> int:
    from .weights import ensure_lambda_weights
    from .store import open_h5
    from .weights import weights_summary
    w = ensure_lambda_weights(args.file, small_px=args.small, large_px=args.large, min_w=args.min_w,
                              overwrite=args.overwrite)
    with open_h5(args.file, "r") as f:
        mask = f["/Mask"][...].astype(bool) if "/Mask" in f else None
    print(f"{args.file}: λ-weights {weights_summary(w, mask)}")
    return 0


def _orbit_weights(text):
    if text is None:
        return None
    p = Path(text)
    if p.exists():
        return np.loadtxt(p, ndmin=1)
    try:
        return np.array([float(v) for v in text.split(",")])
    except ValueError:
        raise ValueError(f"--orbit-weights {text!r}: give comma-separated fractions (e.g. 0.5,0.3,0.2) "
                         "or a text file with one value per component") from None


def cmd_solve(args) -> int:
    from .config import Config
    from .runner import PipelineRunner
    config = Config.from_env(backend=args.backend) if args.backend else None
    x, stats = PipelineRunner(args.file, config=config).solve_all_mp_batched(
        method=args.method, tol=args.tol, regul=args.regul, regul_order=args.regul_order,
        ridge=args.ridge, orbit_weights=_orbit_weights(args.orbit_weights),
        orbit_strength=args.orbit_strength, processes=args.processes,
        blas_threads=args.blas_threads, resume=args.resume, track=not args.no_track,
        norm_mode=args.norm_mode, time_limit=args.time_limit, nmonte=args.nmonte, seed=args.seed,
        **({} if args.max_passes is None else {"max_passes": args.max_passes}))
    fr = ", ".join(f"{v:.3f}" for v in stats["light_fractions"])
    print(f"{args.file}: /X_global written ({np.count_nonzero(x)} of {x.size} weights non-zero) by "
          f"{stats['method']}; cost {stats['cost']:.6g}, optimality {stats['optimality']:.2g} "
          f"({stats['message']}); component light fractions {fr}")
    if stats["regul_search"] is not None:
        rs = stats["regul_search"]
        print(f"{args.file}: regul auto = {rs.regul:.4g} (chi2 rise {rs.delta_chi2:.4g}, "
              f"sqrt(2N) = {rs.sqrt_2n:.4g}, {rs.strengths.size} solves)")
    if stats["uncertainties"] is not None:
        err = ", ".join(f"{v:.4f}" for v in stats["uncertainties"]["light_fraction"]["std"])
        print(f"{args.file}: /Fit/uncertainties from {args.nmonte} Monte-Carlo re-solves; "
              f"light-fraction errors (std) {err}")
    return 0 if stats["success"] else 1


def cmd_recon(args) -> int:
    from .provenance import require_fresh_fit
    from .recon import reconstruct
    from .store import open_h5
    with open_h5(args.file, "r") as f:
        if "/X_global" not in f:
            raise KeyError(f"{args.file}: no /X_global; run `cubefit solve {args.file}` first")
        require_fresh_fit(f, "the reconstruction")
        x = f["/X_global"][...]
    spaxels = None if args.spaxels is None else [int(v) for v in args.spaxels.split(",")]
    Y = reconstruct(args.file, x, out=args.out, spaxels=spaxels)
    print(f"{args.file}: model spectra {Y.shape} written to {args.out}")
    return 0


def cmd_plot(args) -> int:
    from .plots import plot_spectra
    files = plot_spectra(args.file, out_dir=args.out, n=args.n)
    for fn in files:
        print(fn)
    return 0


def cmd_report(args) -> int:
    from .report import write_report
    from .store import open_h5
    with open_h5(args.file, "r") as f:
        if "/X_global" not in f:
            raise KeyError(f"{args.file}: no /X_global; run `cubefit solve {args.file}` first")
    out = Path(args.out) if args.out else Path(args.file).with_name(Path(args.file).stem + "_report")
    rep = write_report(args.file, out, title=f"CubeFit report: {Path(args.file).name}",
                       n_spectra=args.n)
    print(f"{args.file}: report in {rep.markdown} ({len(rep.figures)} figures, {rep.summary.name})")
    return 0


def cmd_templates_fetch(args) -> int:
    from .templates import fetch_emiles
    path = fetch_emiles(cache_dir=args.cache_dir, force=args.force)
    print(f"E-MILES SSP library ready in {path}")
    return 0


def cmd_demo(args) -> int:
    from .demo import run_demo
    run_demo(out=Path(args.out), synthetic=args.synthetic, nx=args.nx, seed=args.seed,
             snr=None if args.snr <= 0 else args.snr, n_components=args.components,
             regul=args.regul, processes=args.processes, hypercube=args.hypercube)
    return 0


def _add_wait(sub) -> None:
    sub.add_argument("--wait", action="store_true",
                     help="if another process is writing the file, wait for it to finish instead "
                          "of failing (same as CUBEFIT_LOCK_WAIT=inf)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="cubefit",
        description="Global LOSVD-convolved stellar-population fits of IFU cubes.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=textwrap.dedent("""\
            settings: CUBEFIT_* environment variables (see `cubefit.config.Config`).
            exit codes: 0 ok, 1 failure, 2 usage error."""))
    p.add_argument("--version", action="version", version=f"cubefit {__version__}")
    p.add_argument("--debug", action="store_true", help="show tracebacks and debug logging")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    i = sub.add_parser("init", help="create a CubeFit file from input arrays (.npz, FITS, HDF5)",
                       description="Read the grids, templates, LOSVDs and data cube from INPUT "
                                   "(names: see cubefit.inputs), validate them, write OUTPUT in the "
                                   "manual's layout and build the sparse rebin operator /R_T.")
    i.add_argument("input", help="input arrays: .npz, .fits (one HDU per array) or .h5")
    i.add_argument("output", help="CubeFit HDF5 file to create")
    i.add_argument("--overwrite", action="store_true",
                   help="start OUTPUT afresh even if it holds other dimensions or grids (the old file "
                        "is replaced only once the new one is complete)")
    i.add_argument("--losvd", default=None, metavar="FILE",
                   help="take /LOSVD (S, V, C) and /VelPix (V,) km/s from FILE (FITS: HDUs LOSVD "
                        "and VELPIX; HDF5: datasets LOSVD and VelPix) instead of INPUT")
    _add_wait(i)
    i.set_defaults(func=cmd_init)

    b = sub.add_parser("build", help="build the materialised hypercube /HyperCube/models",
                       description="Build /HyperCube/models (S, C, P, L) float32 tile by tile "
                                   "(resumable: run again after an interruption), or convert its "
                                   "normalisation with --convert-to.")
    b.add_argument("file")
    b.add_argument("--norm", choices=("data", "model"), default="data",
                   help="column normalisation (default: %(default)s)")
    b.add_argument("--amp", choices=("sum", "trapz"), default="sum",
                   help="LOSVD amplitude: sum of bins or trapezoid integral in km/s (default: %(default)s)")
    for name in ("s", "c", "p"):
        b.add_argument(f"--{name}-chunk", type=int, default=None,
                       help=f"tile size along {name.upper()} (default: automatic, ~MB-sized tiles)")
    b.add_argument("--compression", choices=("none", "gzip", "lzf"), default="none",
                   help="HDF5 filter for the cube (default: %(default)s; none resumes most safely)")
    b.add_argument("--overwrite", action="store_true", help="rebuild even if a cube with other settings exists")
    b.add_argument("--convert-to", choices=("data", "model"), default=None,
                   help="instead of building, convert the existing cube to this normalisation")
    b.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_wait(b)
    b.set_defaults(func=cmd_build)

    w = sub.add_parser("weights", help="create the λ-weights /HyperCube/lambda_weights",
                       description="Median-spectrum difference-of-boxcars weights in [min_w, 1] that "
                                   "emphasise absorption features (docs/hypercube.md).")
    w.add_argument("file")
    w.add_argument("--small", type=int, default=7, help="narrow boxcar width in pixels (default: %(default)s)")
    w.add_argument("--large", type=int, default=31, help="wide boxcar width in pixels (default: %(default)s)")
    w.add_argument("--min-w", type=float, default=None,
                   help="floor of the weights (default: CUBEFIT_LAMBDA_MIN_W = 1e-6)")
    w.add_argument("--overwrite", action="store_true", help="replace weights made with other settings")
    _add_wait(w)
    w.set_defaults(func=cmd_weights)

    so = sub.add_parser("solve", help="fit the global non-negative population mixture",
                        description="Solve min_x>=0 ½‖W(Y − A x)‖² (+ priors) with the matrix-free "
                                    "operator and write /X_global and /Fit. The solve stops on the KKT "
                                    "test (relative projected gradient <= --tol).")
    so.add_argument("file")
    so.add_argument("--method", default="auto",
                    help="solver: auto, gram, working_set, fista, ... (default: %(default)s)")
    so.add_argument("--tol", type=float, default=1e-6,
                    help="KKT tolerance on the relative projected gradient (default: %(default)s)")
    so.add_argument("--regul", type=_regul, default=0.0,
                    help="Tikhonov strength over each component's population grid, dimensionless, "
                         "or 'auto': the largest whose chi2 rises by at most sqrt(2N) "
                         "(default: %(default)s)")
    so.add_argument("--regul-order", type=int, choices=(1, 2), default=2,
                    help="order of the Tikhonov differences (default: %(default)s)")
    so.add_argument("--ridge", type=float, default=0.0, help="ridge strength, dimensionless (default: 0)")
    so.add_argument("--orbit-weights", default=None,
                    help="target light fraction per component: 'f1,f2,...' or a text file (default: none)")
    so.add_argument("--orbit-strength", type=float, default=1.0,
                    help="strength of the orbit-weight penalty, dimensionless (default: %(default)s)")
    so.add_argument("--processes", type=int, default=None,
                    help="worker threads over spaxel tiles (default: 1; 2 on a 2-core machine)")
    so.add_argument("--backend", default=None, choices=BACKENDS,
                    help="array backend of the operator: numpy, or cupy/torch on a GPU "
                         "(default: CUBEFIT_BACKEND, else numpy)")
    so.add_argument("--norm-mode", default=None, choices=("data", "model"),
                    help="column normalisation (default: the hypercube's, else data)")
    so.add_argument("--blas-threads", type=int, default=None, help="BLAS threads during the solve")
    so.add_argument("--resume", action="store_true",
                    help="warm start from the last tracker snapshot or the existing /X_global")
    so.add_argument("--no-track", action="store_true", help="do not write the tracker sidecar")
    so.add_argument("--max-passes", type=_positive_int, default=None,
                    help="stop after this many operator passes, without a certificate (default: "
                         "no limit)")
    so.add_argument("--time-limit", type=_positive_float, default=None, metavar="SECONDS",
                    help="stop an iterative solver after this many seconds with its best point, "
                         "without a certificate (default: no limit)")
    so.add_argument("--nmonte", type=int, default=0, metavar="N",
                    help="Monte-Carlo re-solves with noise drawn from /Noise (a residual bootstrap "
                         "without it) for /Fit/uncertainties; 0: none (default: %(default)s)")
    so.add_argument("--seed", type=int, default=None,
                    help="seed of the Monte-Carlo draws (default: unseeded)")
    _add_wait(so)
    so.set_defaults(func=cmd_solve)

    r = sub.add_parser("recon", help="reconstruct the model cube A·x",
                       description="Model spectra for /X_global, from the hypercube if built, else "
                                   "from the matrix-free operator, written to a dataset.")
    r.add_argument("file")
    r.add_argument("--out", default="/ModelCube", help="dataset to write (default: %(default)s)")
    r.add_argument("--spaxels", default=None, help="comma-separated spaxel indices (default: all)")
    _add_wait(r)
    r.set_defaults(func=cmd_recon)

    pl = sub.add_parser("plot", help="plot data, model and residuals of the best and worst spaxels",
                        description="PNG figures of the data vs model spectra (with residuals) of the "
                                    "N best and N worst spaxels by χ².")
    pl.add_argument("file")
    pl.add_argument("--out", default="cubefit_plots", help="output folder (default: %(default)s)")
    pl.add_argument("--n", type=int, default=3, help="spaxels of each kind (default: %(default)s)")
    pl.set_defaults(func=cmd_plot)

    s = sub.add_parser("info", help="summarise a CubeFit HDF5 file",
                       description="Print dimensions, every dataset (shape, dtype, units, meaning), "
                                   "recorded settings and which stages (rebin, hypercube, fit) exist.")
    s.add_argument("file", help="CubeFit HDF5 file")
    s.set_defaults(func=cmd_info)

    rp = sub.add_parser("report", help="write the report folder of a fitted file",
                        description="Analyse a fitted file (light and mass per component, "
                                    "light-/mass-weighted age and [M/H], maps, best and worst "
                                    "spectra) and write report.md, summary.json and PNG figures "
                                    "to a folder, as the demo does.")
    rp.add_argument("file")
    rp.add_argument("--out", default=None,
                    help="output folder (default: FILE's name with _report, beside it)")
    rp.add_argument("--n", type=int, default=1,
                    help="best and worst spaxels whose spectra are plotted (default: %(default)s)")
    rp.set_defaults(func=cmd_report)

    t = sub.add_parser("templates", help="template libraries: fetch and cache E-MILES",
                       description="Manage template libraries (the E-MILES SSPs are fetched once "
                                   "from PyPI and cached).")
    tsub = t.add_subparsers(dest="templates_command", metavar="ACTION")
    tsub.required = True
    f = tsub.add_parser("fetch", help="download and cache the E-MILES SSP library",
                        description="Fetch the E-MILES SSPs (150 = 25 ages × 6 [M/H], 1680-50000 Å) from "
                                    "the ppxf==8.1.0 source distribution on PyPI into the cache.")
    f.add_argument("--cache-dir", default=None,
                   help="cache folder (default: $CUBEFIT_CACHE_DIR or ~/.cache/cubefit)")
    f.add_argument("--force", action="store_true", help="download again even if cached")
    f.set_defaults(func=cmd_templates_fetch)

    d = sub.add_parser("demo", help="fit the built-in example galaxy and write a report",
                       description="Make a mock IFU galaxy from the E-MILES templates (fetched and "
                                   "cached on first use), write it with the CubeFit manual's workflow, "
                                   "fit it and write a report folder (HDF5 file, PNG figures, "
                                   "report.md comparing recovered and true light fractions, ages "
                                   "and metallicities).")
    d.add_argument("--out", default="cubefit_demo", help="output folder (default: %(default)s)")
    d.add_argument("--nx", type=int, default=8, help="spaxels per side of the field (default: %(default)s)")
    d.add_argument("--components", type=int, default=4, choices=range(3, 7), metavar="{3..6}",
                   help="kinematic components (default: %(default)s)")
    d.add_argument("--snr", type=float, default=100.0,
                   help="signal-to-noise per pixel in every spaxel; 0 for no noise (default: %(default)s)")
    d.add_argument("--regul", type=float, default=0.0,
                   help="Tikhonov strength over the age × [M/H] grid, dimensionless (default: %(default)s)")
    d.add_argument("--processes", type=int, default=2, help="solver threads (default: %(default)s)")
    d.add_argument("--hypercube", choices=("auto", "yes", "no"), default="auto",
                   help="materialise /HyperCube/models: auto = when it fits in 512 MiB (default: auto)")
    d.add_argument("--seed", type=int, default=1, help="random seed for the noise (default: %(default)s)")
    d.add_argument("--synthetic", action="store_true",
                   help="use built-in synthetic templates instead of E-MILES (no download)")
    d.set_defaults(func=cmd_demo)

    from .ifu.cli import add_parser as add_ingest
    add_ingest(sub)
    from .spectra.cli import add_parser as add_fastspec
    add_fastspec(sub)
    from .spectra.fastphot_cli import add_parser as add_fastphot
    add_fastphot(sub)
    return p


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.INFO,
                        format="[cubefit] %(message)s")
    if getattr(args, "wait", False):        # read by every writer through get_config()
        os.environ["CUBEFIT_LOCK_WAIT"] = "inf"
    return run_command(f"cubefit {args.command}", args.func, args)


def run_command(prog: str, func, args) -> int:
    """``func(args)`` as a command: its exit status, 130 after Ctrl-C, and for any error one
    line ``PROG: error: …`` in command-line terms (:func:`cli_message`) and status 1, or the
    traceback with ``--debug``.  Shared by ``cubefit``, ``fastspec`` and ``fastphot``."""
    try:
        return int(func(args) or 0)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted (files are left as they were, or resumable)", file=sys.stderr)
        return 130
    except Exception as exc:  # one clear line for users; --debug for developers
        if getattr(args, "debug", False):
            raise
        print(f"{prog}: error: {cli_message(str(exc), getattr(args, 'file', 'FILE'))}",
              file=sys.stderr)
        print("  (run with --debug for the full traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
