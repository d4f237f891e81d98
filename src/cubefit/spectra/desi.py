"""DESI Redrock + coadd files: target selection and per-target spectra.

A Redrock file (``redrock-*.fits``) holds the redshifts (HDU ``REDSHIFTS``: TARGETID,
Z, ZWARN, SPECTYPE, DELTACHI2, ...); its coadd (``coadd-*.fits``, same folder, same
name after the prefix) holds the spectra: HDU ``FIBERMAP`` (one row per target, same
order as REDSHIFTS: TARGETID, TARGET_RA, TARGET_DEC, OBJTYPE, EBV, ...) and per camera
``X`` (B, R, Z) the HDUs ``X_WAVELENGTH (npix,)`` Å vacuum, ``X_FLUX``, ``X_IVAR``,
``X_MASK (ntarget, npix)`` and ``X_RESOLUTION (ntarget, ndiag, npix)``.

Default selection (as FastSpecFit): ``Z > zmin`` (0.001), ``OBJTYPE == 'TGT'``, the
NODATA bit (bit 9) of ZWARN clear and, if given, ``ZWARN <= zwarnmax``; then
``firsttarget`` and ``ntargets`` slice the passing targets.  With ``targetids`` the
listed targets are taken as they are (no cuts), in the order given, optionally with
``input_redshifts`` replacing Redrock's.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .data import Resolution
from .io import (STATUS_BAD_VALUES, STATUS_NO_GOOD_PIXELS, InputError, SelectedFile, TargetProblem,
                 bad_pixel_message, clean_camera, finish_spectrum, header_dependency)

__all__ = ["ZWARN_NODATA", "coadd_path", "select_desi", "is_redrock"]

ZWARN_NODATA = 1 << 9
"""Redrock ZWARN bit set when a target has no data."""


def coadd_path(redrock) -> Path:
    """The coadd beside a Redrock file: the ``redrock-`` prefix swapped for ``coadd-``."""
    p = Path(redrock)
    if not p.name.startswith("redrock-"):
        raise InputError(f"{p}: the name does not start with 'redrock-', so its coadd cannot be "
                         "guessed; give it with --coadd (coadd= in Python)")
    return p.with_name("coadd-" + p.name[len("redrock-"):])


def is_redrock(path) -> bool:
    """True if ``path`` is a FITS file with a ``REDSHIFTS`` table."""
    from astropy.io import fits
    try:
        with fits.open(path) as hdul:
            return "REDSHIFTS" in hdul
    except OSError:
        return False


def _text(v) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _open(path, what: str):
    from astropy.io import fits
    if not Path(path).is_file():
        raise InputError(f"{path}: {what} not found" + (
            "; give the coadd Redrock was run on with --coadd (coadd= in Python)"
            if what.startswith("coadd") else "; check the path"))
    try:
        return fits.open(path, memmap=True)
    except OSError as exc:
        raise InputError(f"{path}: cannot read this {what} as FITS ({exc})") from None


def _need(hdul, name, path, what):
    if name not in hdul:
        raise InputError(f"{path}: no {name} HDU, so this is not a DESI {what} file "
                         f"(HDUs: {', '.join(h.name for h in hdul)})")
    return hdul[name].data


def select_desi(redrock, coadd=None, *, targetids=None, input_redshifts=None, ntargets=None,
                firsttarget: int = 0, zmin: float = 0.001, zwarnmax: int | None = None) -> SelectedFile:
    """Select the targets to fit in one Redrock file (see the module docstring).

    ``targetids`` that are not in this file are skipped; the caller checks that every
    requested TARGETID was found in some file (:func:`cubefit.spectra.pipeline.select_inputs`).
    Raises :class:`InputError` for a missing or mismatched coadd.
    """
    redrock = Path(redrock)
    coadd = coadd_path(redrock) if coadd is None else Path(coadd)
    with _open(redrock, "Redrock file") as rr:
        zb = _need(rr, "REDSHIFTS", redrock, "Redrock")
        zcols = {n: np.asarray(zb[n]) for n in ("TARGETID", "Z", "ZWARN", "SPECTYPE", "DELTACHI2")
                 if n in zb.columns.names}
    for n in ("TARGETID", "Z", "ZWARN"):
        if n not in zcols:
            raise InputError(f"{redrock}: REDSHIFTS has no {n} column; is it a Redrock file?")
    with _open(coadd, "coadd") as co:
        fm = _need(co, "FIBERMAP", coadd, "coadd")
        hdr = co[0].header
        cameras = [h.name[:-len("_WAVELENGTH")] for h in co if h.name.endswith("_WAVELENGTH")]
        photometry = "FLUX_G" in fm.columns.names
        fcols = {n: np.asarray(fm[n]) for n in ("TARGETID", "TARGET_RA", "TARGET_DEC", "OBJTYPE", "EBV",
                                                   "COADD_FIBERSTATUS") if n in fm.columns.names}
        header = {"SPECPROD": header_dependency(hdr, "SPECPROD"), "COADDTYP": str(hdr.get("SPGRP", ""))}
        survey, program = str(hdr.get("SURVEY", "")), str(hdr.get("PROGRAM", ""))
        tileid = int(hdr["TILEID"]) if "TILEID" in hdr else -1
        healpix = int(hdr["SPGRPVAL"]) if hdr.get("SPGRP") == "healpix" else -1
    if not cameras:
        raise InputError(f"{coadd}: no <CAMERA>_WAVELENGTH HDUs (B_WAVELENGTH, ...); is it a DESI coadd?")
    tid = zcols["TARGETID"].astype(np.int64)
    if "TARGETID" not in fcols or fcols["TARGETID"].shape != tid.shape or np.any(fcols["TARGETID"] != tid):
        ftid = fcols.get("TARGETID", np.array([], dtype=np.int64))
        n = min(ftid.size, tid.size)
        diff = np.flatnonzero(ftid[:n] != tid[:n])
        where = (f"first difference at row {diff[0]}: {ftid[diff[0]]} vs {tid[diff[0]]}" if diff.size
                 else f"{ftid.size} vs {tid.size} rows")
        raise InputError(f"{coadd}: its FIBERMAP TARGETIDs do not match the REDSHIFTS of {redrock} "
                         f"({where}); give the coadd that Redrock was run on with --coadd")
    z = zcols["Z"].astype(np.float64)
    zwarn = zcols["ZWARN"].astype(np.int64)

    if targetids is None:
        keep = (z > zmin) & ((zwarn & ZWARN_NODATA) == 0)
        if "OBJTYPE" in fcols:
            keep &= np.char.strip(fcols["OBJTYPE"].astype(str)) == "TGT"
        if zwarnmax is not None:
            keep &= zwarn <= zwarnmax
        rows = np.flatnonzero(keep)
        stop = None if ntargets is None else firsttarget + ntargets
        rows = rows[firsttarget:stop]
        zuse = z[rows]
    else:
        index = {int(t): i for i, t in enumerate(tid)}
        pairs = [(index[int(t)], k) for k, t in enumerate(targetids) if int(t) in index]
        rows = np.array([r for r, _ in pairs], dtype=np.int64)
        zuse = z[rows] if input_redshifts is None else \
            np.array([input_redshifts[k] for _, k in pairs], dtype=np.float64)

    def col(name, default):
        return fcols[name][rows] if name in fcols else np.full(rows.size, default)

    ra, dec, ebv = col("TARGET_RA", np.nan), col("TARGET_DEC", np.nan), col("EBV", 0.0)
    status = col("COADD_FIBERSTATUS", 0)
    spectype = zcols.get("SPECTYPE", np.full(tid.size, ""))[rows]
    dchi2 = zcols.get("DELTACHI2", np.full(tid.size, np.nan))[rows]
    meta = [{"TARGETID": int(tid[r]), "SURVEY": survey, "PROGRAM": program, "TILEID": tileid,
             "HEALPIX": healpix, "RA": float(ra[k]), "DEC": float(dec[k]),
             "COADD_FIBERSTATUS": int(status[k]), "Z": float(zuse[k]), "Z_RR": float(z[r]),
             "ZWARN": int(zwarn[r]), "DELTACHI2": float(dchi2[k]), "SPECTYPE": _text(spectype[k]).strip(),
             "EBV": float(ebv[k]), "INPUT_FILE": redrock.name, "COADD_FILE": coadd.name}
            for k, r in enumerate(rows)]

    def reader(*, edge_pixels, uncertainty_floor, rv):
        yield from _read_targets(coadd, cameras, rows, meta, edge_pixels=edge_pixels,
                                 uncertainty_floor=uncertainty_floor, rv=rv)

    return SelectedFile(path=redrock, kind="desi", cameras=[c.lower() for c in cameras], meta=meta,
                        header=header, reader=reader, photometry=photometry)


def _fibermap(hdu):
    """The FIBERMAP as an astropy Table (strings as str; units it cannot parse kept as text)."""
    import warnings
    from astropy.table import Table
    from astropy.units import UnitsWarning
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnitsWarning)
        return Table.read(hdu, character_as_bytes=False, mask_invalid=False)


def _read_targets(coadd, cameras, rows, meta, *, edge_pixels, uncertainty_floor, rv):
    """Yield a Spectrum (or TargetProblem) for each coadd row in ``rows``; a Spectrum's
    ``meta["fibermap"]`` is its FIBERMAP row (an astropy Row of a one-row table)."""
    with _open(coadd, "coadd") as co:
        waves = {c: np.asarray(co[f"{c}_WAVELENGTH"].data, dtype=np.float64) for c in cameras}
        fibermap = _fibermap(co["FIBERMAP"])
        for r, m in zip(rows, meta):
            tid = m["TARGETID"]
            cams, problems = [], []
            for c in cameras:
                flux = np.asarray(co[f"{c}_FLUX"].data[r], dtype=np.float64)
                ivar = np.asarray(co[f"{c}_IVAR"].data[r], dtype=np.float64)
                why = bad_pixel_message(c.lower(), waves[c], flux, ivar)
                if why:
                    problems.append(why)
                    continue
                mask = co[f"{c}_MASK"].data[r] if f"{c}_MASK" in co else None
                res = (Resolution.from_desi(np.asarray(co[f"{c}_RESOLUTION"].data[r], dtype=np.float64))
                       if f"{c}_RESOLUTION" in co else None)
                cam = clean_camera(c.lower(), waves[c], flux, ivar, mask, res, edge_pixels=edge_pixels,
                                   uncertainty_floor=uncertainty_floor)
                if cam is not None:
                    cams.append(cam)
            if problems:
                yield TargetProblem(tid, STATUS_BAD_VALUES,
                                    f"{coadd}: TARGETID {tid}: " + "; ".join(problems) +
                                    "; the coadd is corrupt: re-download it, or set IVAR = 0 at those "
                                    "pixels to fit the rest")
            elif not cams:
                yield TargetProblem(tid, STATUS_NO_GOOD_PIXELS,
                                    f"{coadd}: TARGETID {tid}: every camera is fully masked (IVAR = 0 "
                                    "or MASK != 0 everywhere); nothing to fit")
            else:
                yield finish_spectrum(cams, z=m["Z"], targetid=tid, ebv=m["EBV"], rv=rv,
                                      meta={"file": str(coadd), "fibermap": fibermap[r:r + 1][0]})
