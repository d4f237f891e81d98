"""``cubefit fastspec`` and the ``fastspec`` command: fit survey spectra, write a catalogue.

Exit codes: 0 the catalogue was written (targets that could not be fitted have a
non-zero STATUS in it), 1 a problem with the inputs or outputs (one clear line on
stderr, nothing written), 2 usage error.
"""
from __future__ import annotations

import argparse
import sys
import textwrap

__all__ = ["add_parser", "build_parser", "main"]

DESCRIPTION = ("Fit the stellar continuum and kinematics, then the emission lines, of every selected "
               "target of DESI Redrock + coadd files (or SDSS spec-*.fits files, or FITS tables with "
               "WAVELENGTH, FLUX, IVAR columns) and write one catalogue (METADATA, SPECPHOT[, MODELS]). "
               "Under mpiexec, the input files are shared among the ranks and OUTPUT is a folder "
               "receiving one fastspec-<input>.fits per input file.")

EPILOG = textwrap.dedent("""\
    examples:
      fastspec redrock-main-bright-10032.fits -o fastspec.fits --mp 4
      fastspec redrock-4-80613-thru20210324.fits --targetids 39633345008634465 -o one.fits
      fastspec redrock-X.fits -o out.fits --nmonte 50 --seed 3 --qa qa/ --joint
      mpiexec -n 8 cubefit fastspec redrock-*.fits -o out/ --mp 4
    exit codes: 0 written (failed targets have STATUS != 0), 1 bad input (nothing written), 2 usage.""")


def _ints(text: str) -> list[int]:
    try:
        return [int(v) for v in text.replace(",", " ").split()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated integers") from None


def _floats(text: str) -> list[float]:
    try:
        return [float(v) for v in text.replace(",", " ").split()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated numbers") from None


def _arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="+", metavar="REDROCK",
                   help="DESI Redrock file(s); also SDSS spec-*.fits or FITS table spectra")
    p.add_argument("--coadd", nargs="+", default=None, metavar="COADD",
                   help="coadd file(s), one per Redrock file in order (default: the coadd- file "
                        "beside each redrock- file)")
    p.add_argument("-o", "--output", required=True,
                   help="output catalogue (.fits); under MPI a folder")
    p.add_argument("--mp", type=int, default=1, help="worker processes over targets (default: 1)")
    p.add_argument("--targetids", type=_ints, default=None,
                   help="comma-separated TARGETIDs to fit (no other selection; each must exist)")
    p.add_argument("--ntargets", type=int, default=None, help="fit at most this many targets per file")
    p.add_argument("--firsttarget", type=int, default=0,
                   help="index of the first selected target to fit in each file (default: 0)")
    p.add_argument("--zmin", type=float, default=None, help="select Z > ZMIN (default: 0.001)")
    p.add_argument("--zwarnmax", type=int, default=None, help="select ZWARN <= ZWARNMAX (default: any)")
    p.add_argument("--input-redshifts", type=_floats, default=None,
                   help="comma-separated redshifts replacing Redrock's, one per --targetids entry "
                        "(or one per SDSS/table file)")
    p.add_argument("--templates", default="emiles",
                   help="'emiles' (default; fetched and cached on first use), a folder of MILES-style "
                        "FITS SSPs, or a pPXF .npz SSP file")
    p.add_argument("--degree", type=int, default=None,
                   help="degree of the additive Legendre polynomial (-1: none; default: the fitter's)")
    p.add_argument("--mdegree", type=int, default=None,
                   help="degree of the multiplicative Legendre polynomial (0: none; default: the "
                        "fitter's, one degree per 1000 A of rest-frame range)")
    p.add_argument("--emlines", default=None, metavar="FILE",
                   help="ECSV line list replacing the packaged one (the lines fitted and the lines "
                        "masked by the continuum fit; layout of cubefit/spectra/resources/emlines.ecsv)")
    p.add_argument("--no-emlines", dest="fit_emlines", action="store_false",
                   help="fit the continuum only (default: the emission lines too)")
    p.add_argument("--allow-absorption", action="store_true",
                   help="let emission-line amplitudes be negative (default: >= 0)")
    p.add_argument("--joint", action="store_true",
                   help="also refit template weights and line fluxes together at fixed kinematics "
                        "(stars + gas): _JOINT columns next to the line-only ones")
    p.add_argument("--nmonte", type=int, default=0, metavar="N",
                   help="Monte-Carlo realisations per target for the _IVAR columns of the continuum "
                        "and the lines (default: 0, formal errors)")
    p.add_argument("--seed", type=int, default=1,
                   help="seed of the Monte-Carlo noise (with each TARGETID; default: 1)")
    p.add_argument("--qa", default=None, metavar="DIR",
                   help="write one QA figure per target, DIR/qa-<TARGETID>.png (made by the workers)")
    p.add_argument("--phot", action=argparse.BooleanOptionalAction, default=None,
                   help="joint fit with the broadband photometry of the DESI FIBERMAP (default: on "
                        "when the FIBERMAP has photometry)")
    p.add_argument("--models", action="store_true",
                   help="also write the best-fit continuum and line model (MODELS HDU)")
    p.add_argument("--overwrite", action="store_true", help="replace existing output catalogue(s)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args) -> int:
    """Do the work of parsed ``args``; return the exit code (errors propagate)."""
    from astropy.io import fits
    from .config import FastspecConfig
    from .pipeline import run_fastspec
    settings = dict(zmin=args.zmin, zwarnmax=args.zwarnmax, templates=args.templates, mp=args.mp,
                    models=args.models, emlines=args.fit_emlines, linelist=args.emlines,
                    allow_absorption=args.allow_absorption, joint=args.joint, nmonte=args.nmonte,
                    seed=args.seed, qa=args.qa)
    cfg = FastspecConfig(**{k: v for k, v in settings.items() if v is not None}, phot=args.phot)
    given = {k: getattr(args, k) for k in ("degree", "mdegree") if getattr(args, k) is not None}
    options = None                      # the fitter's defaults
    if given:
        from .continuum import ContinuumOptions
        options = ContinuumOptions(**given)
    written = run_fastspec(args.inputs, args.output, coadds=args.coadd, targetids=args.targetids,
                           input_redshifts=args.input_redshifts, ntargets=args.ntargets,
                           firsttarget=args.firsttarget, config=cfg, options=options,
                           overwrite=args.overwrite, progress=not args.quiet)
    for path in written:
        status = fits.getdata(path, "SPECPHOT")["STATUS"]
        nbad = int((status != 0).sum())
        note = f"; {nbad} could not be fitted (see STATUS, MESSAGE)" if nbad else ""
        print(f"{path}: {len(status)} target(s){note}")
    return 0


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``fastspec`` subcommand to the ``cubefit`` command's subparsers."""
    p = subparsers.add_parser("fastspec", help="fit survey spectra (DESI, SDSS) one by one into a catalogue",
                              description=DESCRIPTION, epilog=EPILOG,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    _arguments(p)
    p.set_defaults(func=run)
    return p


def build_parser() -> argparse.ArgumentParser:
    """The stand-alone ``fastspec`` command's parser (same arguments as ``cubefit fastspec``)."""
    p = argparse.ArgumentParser(prog="fastspec", description=DESCRIPTION, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--debug", action="store_true", help="show the traceback of an error")
    _arguments(p)
    return p


def main(argv=None) -> int:
    """Entry point of the ``fastspec`` console script."""
    from ..cli import run_command
    args = build_parser().parse_args(argv)
    return run_command("fastspec", run, args)


if __name__ == "__main__":
    sys.exit(main())
