"""``fastphot``: fit the broadband photometry of DESI targets, write a catalogue.

For every target selected in the Redrock files (the same selection as ``fastspec``:
:func:`cubefit.spectra.pipeline.select_inputs`), the Legacy Surveys photometry of the
coadd's FIBERMAP (or of a user catalogue with ``--photometry`` and
``--photometry-map``) is fitted at the Redrock redshift with the ``fastphot``
templates (:func:`cubefit.spectra.sed.sed_templates`): stellar mass, dust, ages,
absolute magnitudes and K-corrections (:mod:`cubefit.spectra.derived`).  The
catalogue has the METADATA table of ``fastspec`` and a SPECPHOT table with
:data:`cubefit.spectra.derived.FASTPHOT_COLUMNS`; a target without usable photometry
gets ``PHOT_STATUS ≠ 0`` and a message, never a crash.

Exit codes: 0 written, 1 bad input or output (one line on stderr, nothing written),
2 usage error.  Also ``cubefit fastphot`` (wire :func:`add_parser` into the ``cubefit``
command) and the Python API :func:`run_fastphot` / :func:`fastphot_target`.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from .derived import FASTPHOT_COLUMNS, derived_row, get_cosmology, luminosity_distance_cm
from .photometry import Photometry
from .sed import DEFAULT_TAU_MAX, SEDTemplates, fit_photometry, sed_templates

__all__ = ["fastphot_target", "run_fastphot", "add_parser", "build_parser", "main"]

STATUS_NO_PHOTOMETRY = 3

DESCRIPTION = ("Fit the broadband photometry (Legacy Surveys g r z W1 W2 from the DESI coadd FIBERMAP, "
               "or a user catalogue) of every selected target of DESI Redrock files with E-MILES "
               "stellar-population templates and Calzetti dust; write stellar masses, ages, absolute "
               "magnitudes and K-corrections to one catalogue (METADATA, SPECPHOT).")


def fastphot_target(phot, z: float, sed: SEDTemplates | None = None, *, cosmology=None, nmonte: int = 0,
                    seed: int = 0, tau_max: float = DEFAULT_TAU_MAX) -> dict:
    """One SPECPHOT row (:data:`~cubefit.spectra.derived.FASTPHOT_COLUMNS`) for photometry
    ``phot`` (a :class:`~cubefit.spectra.photometry.Photometry`, or a string saying why
    there is none) at redshift ``z``; never raises for a target's data."""
    if not isinstance(phot, Photometry):
        return {"PHOT_STATUS": STATUS_NO_PHOTOMETRY, "PHOT_MESSAGE": str(phot)[:160], "NBAND_PHOT": 0}
    if not (np.isfinite(z) and z > 0):
        return {"PHOTSYS": phot.photsys, "PHOT_STATUS": 1, "NBAND_PHOT": 0,
                "PHOT_MESSAGE": f"redshift {z!r}: photometric fits need z > 0"}
    sed = sed or sed_templates()
    fit = fit_photometry(phot, z, sed, luminosity_distance_cm(z, cosmology), tau_max=tau_max,
                         nmonte=nmonte, seed=seed)
    return derived_row(fit, sed, phot)


_WORKER: dict = {}


def _init(cosmology, nmonte, seed, tau_max):
    from threadpoolctl import threadpool_limits
    threadpool_limits(1)          # tiny matrices: one BLAS thread per process is fastest
    _WORKER.update(sed=sed_templates(), cosmology=cosmology, nmonte=nmonte, seed=seed, tau_max=tau_max)


def _one(item):
    tid, phot, z = item
    row = fastphot_target(phot, z, _WORKER["sed"], cosmology=_WORKER["cosmology"], nmonte=_WORKER["nmonte"],
                          seed=_WORKER["seed"] + (tid % 2**31), tau_max=_WORKER["tau_max"])
    row["TARGETID"] = tid
    return row


def _rows(items, mp: int, init_args, progress: bool):
    from tqdm.auto import tqdm
    bar = dict(total=len(items), disable=not progress, unit="target", desc="fastphot")
    if mp <= 1:
        _init(*init_args)
        return [r for r in tqdm(map(_one, items), **bar)]
    import multiprocessing
    from ..parallel import start_without_main
    methods = multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
    pool = start_without_main(lambda: ctx.Pool(mp, initializer=_init, initargs=init_args))
    try:
        return list(tqdm(pool.imap(_one, items, chunksize=8), **bar))
    finally:
        pool.terminate()
        pool.join()


def run_fastphot(inputs, output, *, coadds=None, targetids=None, input_redshifts=None, ntargets=None,
                 firsttarget: int = 0, photometry=None, photometry_map=None, cosmology=None,
                 nmonte: int = 0, seed: int = 1, tau_max: float = DEFAULT_TAU_MAX, mp: int = 1,
                 overwrite: bool = False, progress: bool = True):
    """Fit every selected target and write the catalogue ``output``; return its path.

    Selection arguments as :func:`cubefit.spectra.pipeline.select_inputs` (DESI inputs
    only); ``photometry``/``photometry_map``: a FITS catalogue and its column mapping
    (:func:`cubefit.spectra.photometry.read_catalog_photometry`) instead of the FIBERMAP;
    ``cosmology``: see :func:`cubefit.spectra.derived.get_cosmology`; ``nmonte``: Monte
    Carlo refits per target (errors; 0: none), ``seed`` their seed (plus the TARGETID).
    Raises :class:`cubefit.spectra.io.InputError` for bad inputs before anything is fitted.
    """
    from .catalog import check_output, metadata_table, specphot_table, write_catalog
    from .io import InputError
    from .photometry import read_catalog_photometry, read_fibermap_photometry
    from .pipeline import select_inputs
    check_output(output, overwrite)
    try:
        cosmo = get_cosmology(cosmology)
    except ValueError as exc:
        raise InputError(f"--cosmology: {exc}") from None
    if (photometry is None) != (photometry_map is None):
        raise InputError("--photometry and --photometry-map go together: give the catalogue and its "
                         "column mapping (JSON or YAML)")
    if nmonte < 0 or mp < 1:
        raise InputError(f"nmonte={nmonte}, mp={mp}: expected nmonte ≥ 0 and mp ≥ 1")
    files = select_inputs(inputs, coadds, targetids=targetids, input_redshifts=input_redshifts,
                          ntargets=ntargets, firsttarget=firsttarget)
    bad = [str(f.path) for f in files if f.kind != "desi"]
    if bad:
        raise InputError(f"{', '.join(bad)}: fastphot reads DESI Redrock files (their coadd carries the "
                         "photometry); fit other spectra with fastspec")
    from .desi import coadd_path
    given = [Path(c) for c in ([coadds] if isinstance(coadds, (str, Path)) else coadds or [])]
    meta, items = [], []
    for k, f in enumerate(files):
        tids = [m["TARGETID"] for m in f.meta]
        try:
            if photometry is not None:
                phot = read_catalog_photometry(photometry, photometry_map, tids)
            else:
                coadd = given[k] if given else coadd_path(f.path)
                phot = read_fibermap_photometry(coadd, tids) if tids else {}
        except ValueError as exc:
            raise InputError(str(exc)) from None
        for m in f.meta:
            meta.append(m)
            items.append((m["TARGETID"], phot[m["TARGETID"]], m["Z"]))
    rows = _rows(items, mp, (cosmo, nmonte, seed, tau_max), progress)
    header = {"COSMO": (cosmo.name or str(cosmo), "cosmology of distances and masses"),
              "NMONTE": (int(nmonte), "Monte Carlo refits per target"), "SEED": (int(seed), "Monte Carlo seed"),
              "SEDTEMPL": (f"E-MILES {sed_templates().P} CSF age bins", "fastphot templates")}
    return write_catalog(output, metadata_table(meta), specphot_table(rows, FASTPHOT_COLUMNS), header=header,
                         overwrite=overwrite)


def _numbers(kind):
    def parse(text: str) -> list:
        try:
            return [kind(v) for v in text.replace(",", " ").split()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated {kind.__name__}s") from None
    return parse


def _arguments(p: argparse.ArgumentParser) -> None:
    _ints, _floats = _numbers(int), _numbers(float)
    p.add_argument("inputs", nargs="+", metavar="REDROCK", help="DESI Redrock file(s)")
    p.add_argument("--coadd", nargs="+", default=None, metavar="COADD",
                   help="coadd file(s), one per Redrock file (default: the coadd- file beside each)")
    p.add_argument("-o", "--output", required=True, help="output catalogue (.fits)")
    p.add_argument("--mp", type=int, default=1, help="worker processes over targets (default: 1)")
    p.add_argument("--targetids", type=_ints, default=None, help="comma-separated TARGETIDs to fit")
    p.add_argument("--ntargets", type=int, default=None, help="fit at most this many targets per file")
    p.add_argument("--firsttarget", type=int, default=0, help="index of the first selected target (default 0)")
    p.add_argument("--input-redshifts", type=_floats, default=None,
                   help="comma-separated redshifts replacing Redrock's, one per --targetids entry")
    p.add_argument("--photometry", default=None, metavar="CATALOG",
                   help="FITS table with the photometry instead of the coadd's FIBERMAP")
    p.add_argument("--photometry-map", default=None, metavar="MAP",
                   help="JSON/YAML mapping of CATALOG's columns to filters (see docs/spectra-photometry.md)")
    p.add_argument("--cosmology", default=None,
                   help="astropy realisation (Planck18 default, WMAP9, ...) or 'H0=70,Om0=0.3'")
    p.add_argument("--nmonte", type=int, default=20,
                   help="Monte Carlo refits per target for the errors (default: 20; 0: no errors)")
    p.add_argument("--seed", type=int, default=1, help="seed of the Monte Carlo refits (default: 1)")
    p.add_argument("--tau-max", type=float, default=DEFAULT_TAU_MAX, help="largest V-band optical depth")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output catalogue")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args) -> int:
    """Do the work of parsed ``args``; return the exit code (errors propagate)."""
    from astropy.io import fits
    path = run_fastphot(args.inputs, args.output, coadds=args.coadd, targetids=args.targetids,
                        input_redshifts=args.input_redshifts, ntargets=args.ntargets,
                        firsttarget=args.firsttarget, photometry=args.photometry,
                        photometry_map=args.photometry_map, cosmology=args.cosmology, nmonte=args.nmonte,
                        seed=args.seed, tau_max=args.tau_max, mp=args.mp, overwrite=args.overwrite,
                        progress=not args.quiet)
    status = fits.getdata(path, "SPECPHOT")["PHOT_STATUS"]
    nbad = int((status != 0).sum())
    print(f"{path}: {len(status)} target(s)" + (f"; {nbad} without a fit (see PHOT_STATUS, PHOT_MESSAGE)"
                                                  if nbad else ""))
    return 0


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``fastphot`` subcommand to the ``cubefit`` command's subparsers."""
    p = subparsers.add_parser("fastphot", help="fit broadband photometry of DESI targets into a catalogue",
                              description=DESCRIPTION)
    _arguments(p)
    p.set_defaults(func=run)
    return p


def build_parser() -> argparse.ArgumentParser:
    """The stand-alone ``fastphot`` command's parser."""
    p = argparse.ArgumentParser(prog="fastphot", description=DESCRIPTION)
    p.add_argument("--debug", action="store_true", help="show the traceback of an error")
    _arguments(p)
    return p


def main(argv=None) -> int:
    """Entry point of the ``fastphot`` console script."""
    from ..cli import run_command
    args = build_parser().parse_args(argv)
    return run_command("fastphot", run, args)


if __name__ == "__main__":
    sys.exit(main())
