"""``cubefit ingest``: the command-line face of :func:`cubefit.ifu.ingest.ingest`."""
from __future__ import annotations

import argparse

__all__ = ["add_parser", "cmd_ingest"]


def _window(text: str) -> tuple[float, float]:
    """``--mask LO-HI`` (rest-frame Å)."""
    try:
        lo, hi = (float(v) for v in text.split("-"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LO-HI in Å (e.g. 5570-5590), got {text!r}") from None
    if not 0 < lo < hi:
        raise argparse.ArgumentTypeError(f"expected 0 < LO < HI (Å), got {text!r}")
    return lo, hi


def _mdegree(text: str):
    return None if text.strip().lower() == "auto" else int(text)


def cmd_ingest(args) -> int:
    from .ingest import ingest
    r = ingest(args.cube, args.output, z=args.z, target_sn=args.target_sn,
               components=args.components, lam_range=args.lam_range, mask=args.mask or (),
               templates=args.templates, mp=args.mp, min_sn=args.min_sn, moments=args.moments,
               degree=args.degree, mdegree=args.mdegree, order_by=args.order_by, refine=args.refine,
               sky_lines=not args.no_sky_mask, overwrite=args.overwrite, progress=not args.quiet)
    left = r.n_bins_total - r.n_bins
    print(f"{r.path}: {r.n_bins} bins x {r.components} components"
          + (f" ({left} bins left out: fit failed)" if left else "")
          + f"; next: cubefit solve {r.path} && cubefit report {r.path}")
    return 0


def add_parser(sub) -> None:
    """Add the ``ingest`` subcommand to the ``cubefit`` parser's subparsers ``sub``."""
    p = sub.add_parser(
        "ingest", help="an IFU cube (MUSE, MaNGA, generic FITS) to a CubeFit file",
        description="Read the cube, mask sky lines and --mask windows, bin the spaxels to "
                    "--target-sn (PowerBin), fit every bin's kinematics with --components "
                    "components, turn them into LOSVD histograms scaled by each component's "
                    "light, and write OUTPUT for `cubefit solve` and `cubefit report` "
                    "(docs/ifu.md).")
    p.add_argument("cube", help="FITS cube: MUSE (DATA/STAT), MaNGA LOGCUBE or generic 3-D")
    p.add_argument("-o", "--output", required=True, help="CubeFit HDF5 file to write")
    p.add_argument("--z", type=float, required=True, help="redshift of the galaxy")
    p.add_argument("--target-sn", type=float, required=True,
                   help="S/N per pixel of the spatial bins")
    p.add_argument("--components", type=int, default=1,
                   help="kinematic components per bin (default: %(default)s)")
    p.add_argument("--lam-range", type=float, nargs=2, default=None, metavar=("LO", "HI"),
                   help="rest-frame wavelength range fitted, Å (default: the whole cube)")
    p.add_argument("--mask", type=_window, action="append", metavar="LO-HI",
                   help="rest-frame window (Å) left out of every fit; repeat for more")
    p.add_argument("--templates", default="emiles",
                   help="'emiles' (fetched once), a folder of MILES-style FITS SSPs or a pPXF "
                        ".npz file (default: %(default)s)")
    p.add_argument("--mp", type=int, default=1, help="worker processes for the per-bin fits "
                                                     "(default: %(default)s)")
    p.add_argument("--min-sn", type=float, default=2.0,
                   help="spaxels below this S/N per pixel are not used (default: %(default)s)")
    p.add_argument("--moments", type=int, choices=(2, 4), default=2,
                   help="LOSVD moments per component: 2 (v, sigma) or 4 (+h3, h4) "
                        "(default: %(default)s)")
    p.add_argument("--degree", type=int, default=-1,
                   help="additive Legendre degree of the per-bin fits, -1 none (default: %(default)s)")
    p.add_argument("--mdegree", type=_mdegree, default=None,
                   help="multiplicative Legendre degree of the per-bin fits, or 'auto' (one per "
                        "1000 A of rest range; the default)")
    p.add_argument("--order-by", choices=("sigma", "age", "none"), default="sigma",
                   help="how components are labelled in every bin: decreasing sigma, decreasing "
                        "age, or as fitted (default: %(default)s)")
    p.add_argument("--refine", type=int, default=4,
                   help="with several components: passes that refit each bin with one population "
                        "mixture per component (default: %(default)s; 0: none)")
    p.add_argument("--no-sky-mask", action="store_true",
                   help="keep the strong night-sky lines (masked by default)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing OUTPUT")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_ingest)
