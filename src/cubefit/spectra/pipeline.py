"""A whole ``fastspec`` run: select the targets of every input file, fit them, write
the catalogue(s).

* :func:`select_inputs` — read and check every input file first (DESI Redrock files,
  SDSS ``spec-*.fits``, FITS tables): any problem with a file stops the run here,
  before anything is fitted or written.
* :func:`fit_selected` — fit every selected target (``mp`` processes), returning the
  METADATA, SPECPHOT and MODELS tables.
* :func:`run_fastspec` — the command line's work: one catalogue for the run, or under
  MPI one catalogue per input file in an output folder.
* :func:`fit_desi` — the Python API: DESI files in, one astropy Table out.
"""
from __future__ import annotations

import dataclasses
from itertools import chain
from pathlib import Path
from typing import Sequence

from .catalog import (check_output, metadata_table, models_table, specphot_table, write_catalog)
from .config import FastspecConfig
from .desi import is_redrock, select_desi
from .io import InputError, SelectedFile, read_table
from .parallel import fit_many, mpi_world, weighted_partition
from .sdss import is_sdss, read_sdss

__all__ = ["select_inputs", "fit_selected", "run_fastspec", "fit_desi", "output_name", "check_settings"]


def _as_list(x) -> list:
    if x is None:
        return []
    if isinstance(x, (str, Path)):
        return [x]
    return list(x)


def select_inputs(inputs, coadds=None, *, targetids=None, input_redshifts=None, ntargets=None,
                  firsttarget: int = 0, config: FastspecConfig | None = None) -> list[SelectedFile]:
    """Select the targets of every input file; raise :class:`InputError` for any
    problem with the inputs (nothing is fitted or written before this returns).

    ``inputs``: paths of DESI Redrock files, SDSS ``spec-*.fits`` files or FITS table
    spectra (recognised by their content); ``coadds``: one coadd per Redrock file, in
    order (default: the ``coadd-`` file beside each); ``targetids``: fit these DESI
    targets only, in this order (every one must be found in some file);
    ``input_redshifts``: with ``targetids``, their redshifts; without, one per input
    file of one spectrum (SDSS, table); ``ntargets``/``firsttarget``: per DESI file,
    fit targets ``firsttarget … firsttarget+ntargets-1`` of those selected.
    """
    cfg = config or FastspecConfig()
    paths = [Path(p) for p in _as_list(inputs)]
    if not paths:
        raise InputError("no input files given")
    for p in paths:
        if not p.is_file():
            raise InputError(f"{p}: input file not found; check the path")
    coadds = [Path(c) for c in _as_list(coadds)]
    kinds = ["desi" if is_redrock(p) else "sdss" if is_sdss(p) else "table" for p in paths]
    ndesi = kinds.count("desi")
    if coadds and len(coadds) != ndesi:
        raise InputError(f"--coadd: {len(coadds)} coadd file(s) for {ndesi} Redrock file(s); give one "
                         "coadd per Redrock file, in the same order")
    if firsttarget < 0 or (ntargets is not None and ntargets < 1):
        raise InputError(f"firsttarget={firsttarget}, ntargets={ntargets}: expected firsttarget ≥ 0 "
                         "and ntargets ≥ 1")
    tids = None if targetids is None else [int(t) for t in _as_list(targetids)]
    zs = None if input_redshifts is None else [float(z) for z in _as_list(input_redshifts)]
    if tids is not None and len(set(tids)) != len(tids):
        dup = sorted({t for t in tids if tids.count(t) > 1})
        raise InputError(f"--targetids lists {', '.join(map(str, dup))} more than once; give each once")
    per_file_z = [None] * len(paths)
    if zs is not None:
        if tids is not None:
            if len(zs) != len(tids):
                raise InputError(f"--input-redshifts: {len(zs)} value(s) for {len(tids)} --targetids; "
                                 "give one redshift per TARGETID, in the same order")
        elif ndesi:
            raise InputError("--input-redshifts for DESI files needs --targetids (one redshift per "
                             "TARGETID, in the same order)")
        elif len(zs) != len(paths):
            raise InputError(f"--input-redshifts: {len(zs)} value(s) for {len(paths)} spectrum file(s); "
                             "give one redshift per file, in the same order")
        else:
            per_file_z = zs
    files, icoadd = [], iter(coadds)
    for p, kind, z in zip(paths, kinds, per_file_z):
        if kind == "desi":
            files.append(select_desi(p, next(icoadd, None), targetids=tids, input_redshifts=zs,
                                     ntargets=ntargets, firsttarget=firsttarget, zmin=cfg.zmin,
                                     zwarnmax=cfg.zwarnmax))
        elif kind == "sdss":
            files.append(read_sdss(p, z=z))
        else:
            files.append(read_table(p, z=z))
    if tids is not None:
        found = {m["TARGETID"] for f in files for m in f.meta}
        missing = [t for t in tids if t not in found]
        if missing:
            names = ", ".join(str(f.path) for f in files if f.kind == "desi") or "the inputs"
            raise InputError(f"TARGETID {', '.join(map(str, missing[:10]))}"
                             f"{' …' if len(missing) > 10 else ''} not found in {names}; check the "
                             "numbers (and that the right Redrock files are given)")
    return files


MAX_FITS_COLUMNS = 999
"""A FITS binary table holds at most 999 columns."""


def _run_cameras(files: Sequence[SelectedFile]) -> list[str]:
    cameras = []
    for f in files:
        cameras += [c for c in f.cameras if c not in cameras]
    return cameras


def _wants_photometry(files: Sequence[SelectedFile], cfg: FastspecConfig) -> bool:
    return bool(cfg.phot) or (cfg.phot is None and any(f.photometry for f in files))


def check_settings(cfg: FastspecConfig, files: Sequence[SelectedFile] = ()):
    """Check the run's settings before anything is fitted or written: the line list
    (returned, read), the QA folder (a folder if it exists) and that the SPECPHOT table
    of ``files`` fits in a FITS table.  Raises :class:`InputError` naming the fix."""
    from .linelist import read_linelist
    from .target import fastspec_columns
    try:
        linelist = read_linelist(cfg.linelist)
    except (OSError, ValueError) as exc:
        raise InputError(f"--emlines: {exc}") from None
    if cfg.qa is not None and Path(cfg.qa).exists() and not Path(cfg.qa).is_dir():
        raise InputError(f"--qa {cfg.qa}: this is a file; give a folder for the QA figures")
    n = len(fastspec_columns(1, _run_cameras(files), linelist if cfg.emlines else None, joint=cfg.joint,
                             phot=_wants_photometry(files, cfg)))             # (TARGETID included)
    if n > MAX_FITS_COLUMNS:
        raise InputError(f"the catalogue would have {n} SPECPHOT columns ({len(linelist)} lines in "
                         f"{cfg.linelist or 'the line list'}), more than a FITS table holds "
                         f"({MAX_FITS_COLUMNS}); fit fewer lines (--emlines FILE), or leave out --joint "
                         "or the photometry (--no-phot)")
    return linelist


def _header(files: Sequence[SelectedFile], cfg: FastspecConfig, options) -> dict:
    hdr = {}
    for key in ("SPECPROD", "COADDTYP"):
        values = {f.header.get(key, "") for f in files}
        if len(values) == 1 and "" not in values:
            hdr[key] = values.pop()
    hdr.update({"ZMIN": (cfg.zmin, "smallest redshift selected"),
                "ZWARNMAX": (-1 if cfg.zwarnmax is None else cfg.zwarnmax, "largest ZWARN selected (-1: any)"),
                "EDGEPIX": (cfg.edge_pixels, "pixels masked at each camera end"),
                "UFLOOR": (cfg.uncertainty_floor, "fractional flux error floor"),
                "MWRV": (cfg.rv, "R_V of the Milky-Way extinction curve (F99)"),
                "TEMPLATE": (str(cfg.templates), "template library"),
                "EMLINES": (bool(cfg.emlines), "emission lines fitted"),
                "LINELIST": (str(cfg.linelist or "packaged emlines.ecsv")[-68:], "line list (fitted and masked)"),
                "ABSORB": (bool(cfg.allow_absorption), "line amplitudes may be negative"),
                "JOINT": (bool(cfg.joint), "joint stars + gas refit (_JOINT columns)"),
                "NMONTE": (int(cfg.nmonte), "Monte-Carlo realisations per target"),
                "SEED": (int(cfg.seed), "Monte-Carlo seed (with the TARGETID)"),
                "PHOT": ("auto" if cfg.phot is None else str(bool(cfg.phot)), "joint photometric fit")})
    if options is not None:
        hdr["CONTOPT"] = (str(options), "continuum fit options")
    return hdr


def fit_selected(files: Sequence[SelectedFile], config: FastspecConfig | None = None, options=None,
                 *, progress: bool = True):
    """Fit every selected target of ``files``; return ``(METADATA, SPECPHOT, MODELS or
    None)`` astropy Tables, one row per target in file order.  The SPECPHOT columns are
    :func:`cubefit.spectra.target.fastspec_columns` for the run's settings (photometric
    columns when ``config.phot`` is True, or None and some file has photometry)."""
    from .target import fastspec_columns
    cfg = config or FastspecConfig()
    linelist = check_settings(cfg, files)
    if cfg.qa is not None:
        Path(cfg.qa).mkdir(parents=True, exist_ok=True)
    meta = [m for f in files for m in f.meta]
    cameras = _run_cameras(files)
    items = chain.from_iterable(f.spectra(edge_pixels=cfg.edge_pixels,
                                          uncertainty_floor=cfg.uncertainty_floor, rv=cfg.rv)
                                for f in files)
    rows, models = [], []
    for row, model in fit_many(items, cfg, options=options, cameras=cameras, progress=progress,
                               total=len(meta)):
        rows.append(row)
        models.append(model)
    mt = models_table([m["TARGETID"] for m in meta], models) if cfg.models else None
    n_templates = len(rows[0]["CONTINUUM_COEFF"]) if rows else 0
    columns = fastspec_columns(n_templates, cameras, linelist if cfg.emlines else None, joint=cfg.joint,
                               phot=_wants_photometry(files, cfg))
    return metadata_table(meta), specphot_table(rows, columns), mt


def output_name(path) -> str:
    """Catalogue name for one input file under MPI: ``redrock-X.fits`` → ``fastspec-X.fits``
    (other inputs: ``fastspec-<name>.fits``)."""
    name = Path(path).name
    if name.startswith("redrock-"):
        name = name[len("redrock-"):]
    if name.endswith(".gz"):
        name = name[:-3]
    return "fastspec-" + (name if name.endswith(".fits") else name + ".fits")


def run_fastspec(inputs, output, *, coadds=None, targetids=None, input_redshifts=None,
                 ntargets=None, firsttarget: int = 0, config: FastspecConfig | None = None,
                 options=None, overwrite: bool = False, progress: bool = True) -> list[Path]:
    """Select, fit and write; return the catalogue path(s) this process wrote.

    Run normally, ``output`` is the one catalogue of the run.  Started by an MPI
    launcher, ``output`` is a folder (created) and each rank writes
    ``fastspec-<input>.fits`` for its share of the input files.  Any problem with the
    inputs or outputs raises :class:`InputError` before anything is written (under MPI
    on rank 0; the other ranks exit with status 1 without a message).
    """
    cfg = config or FastspecConfig()
    kw = dict(targetids=targetids, input_redshifts=input_redshifts, ntargets=ntargets,
              firsttarget=firsttarget, config=cfg)
    comm = mpi_world()
    if comm is None:
        files = select_inputs(inputs, coadds, **kw)
        check_settings(cfg, files)
        out = check_output(output, overwrite)
        meta, spec, models = fit_selected(files, cfg, options, progress=progress)
        return [write_catalog(out, meta, spec, models, header=_header(files, cfg, options),
                              overwrite=overwrite)]
    outdir = Path(output)
    error = None
    try:
        files = select_inputs(inputs, coadds, **kw)
        check_settings(cfg, files)
        names = [output_name(f.path) for f in files]
        if len(set(names)) != len(names):
            raise InputError("two input files would write the same catalogue name under "
                             f"{outdir} ({', '.join(names)}); rename them or run them separately")
        if outdir.exists() and not outdir.is_dir():
            raise InputError(f"{outdir}: under MPI -o names a folder (one catalogue per input file), "
                             "and this is a file")
        for name in names:
            if outdir.is_dir():
                check_output(outdir / name, overwrite)
    except InputError as exc:
        error = exc
    problems = [e for e in comm.allgather(None if error is None else str(error)) if e is not None]
    if problems:                # every rank stops; rank 0 says why, the others leave quietly
        if comm.rank == 0:
            raise InputError(problems[0])
        raise SystemExit(1)
    if comm.rank == 0:
        outdir.mkdir(parents=True, exist_ok=True)
    comm.Barrier()
    mine = weighted_partition([f.ntargets for f in files], comm.size)[comm.rank]
    written = []
    for i in mine:
        meta, spec, models = fit_selected([files[i]], cfg, options, progress=progress and comm.rank == 0)
        written.append(write_catalog(outdir / names[i], meta, spec, models,
                                     header=_header([files[i]], cfg, options), overwrite=overwrite))
    return written


def fit_desi(redrock, coadd=None, *, targetids=None, input_redshifts=None, ntargets=None,
             firsttarget: int = 0, zwarnmax: int | None = None, templates: str | None = None,
             mp: int | None = None, options=None, config: FastspecConfig | None = None,
             progress: bool = False, **settings):
    """Fit DESI targets and return one astropy Table: the METADATA columns followed by
    the fit's SPECPHOT columns, one row per target (``table.meta``: SPECPROD, settings).

    ``redrock``: a Redrock file or a list of them; ``coadd``: the matching coadd(s)
    (default: beside each, ``redrock-`` → ``coadd-``); selection as in
    :func:`select_inputs`; ``templates``, ``mp``, ``zwarnmax`` and ``settings`` (any
    other :class:`FastspecConfig` field: ``emlines``, ``linelist``, ``allow_absorption``,
    ``joint``, ``nmonte``, ``seed``, ``qa``, ``phot``) override ``config``; ``options``:
    :class:`cubefit.spectra.ContinuumOptions`.  Raises :class:`InputError` for problems
    with the files; a target that cannot be fitted gets ``STATUS ≠ 0`` and a ``MESSAGE``.
    """
    from astropy.table import hstack
    cfg = config or FastspecConfig()
    unknown = sorted(set(settings) - {f.name for f in dataclasses.fields(FastspecConfig)})
    if unknown:
        raise TypeError(f"fit_desi: unknown settings {unknown}; see FastspecConfig for the valid names")
    over = {k: v for k, v in (("templates", templates), ("mp", mp), ("zwarnmax", zwarnmax)) if v is not None}
    cfg = dataclasses.replace(cfg, **over, **settings)
    files = select_inputs(redrock, coadd, targetids=targetids, input_redshifts=input_redshifts,
                          ntargets=ntargets, firsttarget=firsttarget, config=cfg)
    meta, spec, _ = fit_selected(files, cfg, options, progress=progress)
    spec.remove_column("TARGETID")
    meta.meta.clear()
    spec.meta.clear()
    table = hstack([meta, spec], join_type="exact")
    table.meta.update({k: (v[0] if isinstance(v, tuple) else v) for k, v in _header(files, cfg, options).items()})
    return table
