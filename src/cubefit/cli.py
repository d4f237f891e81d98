"""The ``cubefit`` command.

Exit codes: 0 success, 1 failure (one clear line on stderr; ``--debug`` shows the
traceback), 2 usage error (argparse).
"""
from __future__ import annotations

import argparse
import logging
import sys
import textwrap
from pathlib import Path

from . import __version__

log = logging.getLogger("cubefit")


def _print_info(path) -> None:
    from .store import describe_file
    d = describe_file(path)
    a = d["attrs"]
    print(f"{d['path']}  (written by cubefit {a.get('cubefit_version', '?')}, "
          f"modified {a.get('modified_utc', '?')})")
    if "dims" in a:
        dims = dict(zip(a["dims_names"], a["dims"]))
        print("dimensions: " + ", ".join(f"{k}={v}" for k, v in dims.items()))
    print("stages:     " + ", ".join(f"{k}={'yes' if v else 'no'}" for k, v in d["stages"].items()))
    rows = d["datasets"]
    w = max((len(r[0]) for r in rows), default=8)
    ws = max((len(str(r[1])) for r in rows), default=5)
    wu = max((len(str(r[3])) for r in rows), default=5)
    print(f"\n{'dataset':<{w}}  {'shape':<{ws}}  {'dtype':<8}  {'units':<{wu}}  meaning")
    for name, shape, dtype, units, desc in rows:
        print(f"{name:<{w}}  {str(shape):<{ws}}  {dtype:<8}  {str(units):<{wu}}  {desc}")
    skip = {"dims", "dims_names", "cubefit_version", "modified_utc"}
    settings = {k: v for k, v in a.items() if k not in skip}
    if settings:
        print("\nsettings:")
        for k, v in sorted(settings.items()):
            print(f"  {k} = {v}")


def cmd_info(args) -> int:
    _print_info(args.file)
    return 0


def cmd_templates_fetch(args) -> int:
    from .templates import fetch_emiles
    path = fetch_emiles(cache_dir=args.cache_dir, force=args.force)
    print(f"E-MILES SSP library ready in {path}")
    return 0


def cmd_demo(args) -> int:
    from .demo import run_demo
    run_demo(out=Path(args.out), synthetic=args.synthetic, nx=args.nx, seed=args.seed)
    return 0


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

    s = sub.add_parser("info", help="summarise a CubeFit HDF5 file",
                       description="Print dimensions, every dataset (shape, dtype, units, meaning), "
                                   "recorded settings and which stages (rebin, hypercube, fit) exist.")
    s.add_argument("file", help="CubeFit HDF5 file")
    s.set_defaults(func=cmd_info)

    t = sub.add_parser("templates", help="template libraries")
    tsub = t.add_subparsers(dest="templates_command", metavar="ACTION")
    tsub.required = True
    f = tsub.add_parser("fetch", help="download and cache the E-MILES SSP library",
                        description="Fetch the E-MILES SSPs (150 = 25 ages × 6 [M/H], 1680-50000 Å) from "
                                    "the ppxf==8.1.0 source distribution on PyPI into the cache.")
    f.add_argument("--cache-dir", default=None,
                   help="cache folder (default: $CUBEFIT_CACHE_DIR or ~/.cache/cubefit)")
    f.add_argument("--force", action="store_true", help="download again even if cached")
    f.set_defaults(func=cmd_templates_fetch)

    d = sub.add_parser("demo", help="build and summarise the built-in example galaxy",
                       description="Make a mock IFU galaxy from the E-MILES templates (fetched and "
                                   "cached on first use), write it with the CubeFit manual's workflow "
                                   "and print its summary.")
    d.add_argument("--out", default="cubefit_demo", help="output folder (default: %(default)s)")
    d.add_argument("--nx", type=int, default=6, help="spaxels per side of the field (default: %(default)s)")
    d.add_argument("--seed", type=int, default=1, help="random seed for the noise (default: %(default)s)")
    d.add_argument("--synthetic", action="store_true",
                   help="use built-in synthetic templates instead of E-MILES (no download)")
    d.set_defaults(func=cmd_demo)
    return p


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.INFO,
                        format="[cubefit] %(message)s")
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("cubefit: interrupted", file=sys.stderr)
        return 1
    except Exception as exc:  # one clear line for users; --debug for developers
        if args.debug:
            raise
        print(f"cubefit {args.command}: error: {exc}", file=sys.stderr)
        print("  (run with --debug for the full traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
