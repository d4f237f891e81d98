"""The per-run catalogue: one FITS file, one row per target in every table.

HDUs
----
``PRIMARY``  keywords only: cubefit version, the run's settings, ``SPECPROD``/``COADDTYP``
             when every input agrees.
``METADATA`` who the target is (:data:`METADATA_COLUMNS`: TARGETID, RA, DEC, Z, ZWARN,
             SPECTYPE, DELTACHI2, EBV, SURVEY, PROGRAM, input file, ...).
``SPECPHOT`` the fit results, one column per entry of the fitter's column list
             (:func:`cubefit.spectra.continuum.continuum_columns`); a target that could
             not be fitted has ``STATUS ≠ 0``, a ``MESSAGE`` saying
             why, and blank (NaN) values elsewhere.
``MODELS``   optional: per camera ``X`` the columns ``WAVE_X`` (Å, observed frame,
             vacuum), ``CONTINUUM_X`` (best-fit continuum on that camera's pixels, in
             the Milky-Way-corrected flux unit) and, when lines were fitted,
             ``EMLINES_X`` (the emission-line model on those pixels); NaN where the
             camera (or its lines) was not fitted.

Every column carries a unit (where it has one) and a description, both in astropy's
serialisation and as the comment of its ``TTYPEn`` card.  The file is written to a
temporary name beside the target and moved into place only when complete; an existing
file is replaced only with ``overwrite=True``.  Nothing time-dependent is written, so
two runs on the same inputs give byte-identical files.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from .io import InputError

__all__ = ["METADATA_COLUMNS", "metadata_table", "specphot_table", "models_table",
           "write_catalog", "read_catalog", "check_output"]

METADATA_COLUMNS: tuple[tuple[str, str, str, str], ...] = (
    ("TARGETID", "i8", "", "Unique target identifier (DESI TARGETID; SDSS SPECOBJID; -1 if unknown)"),
    ("SURVEY", "U8", "", "Survey name from the coadd header (empty for tile-based coadds)"),
    ("PROGRAM", "U12", "", "Program name from the coadd header (empty for tile-based coadds)"),
    ("TILEID", "i4", "", "DESI tile of a tile-based coadd (-1 otherwise)"),
    ("HEALPIX", "i4", "", "HEALPix pixel of a healpix coadd (-1 otherwise)"),
    ("RA", "f8", "deg", "Right ascension of the target (TARGET_RA)"),
    ("DEC", "f8", "deg", "Declination of the target (TARGET_DEC)"),
    ("COADD_FIBERSTATUS", "i4", "", "Bitwise-OR of the fibre status over the coadded exposures"),
    ("Z", "f8", "", "Redshift used by the fit (Redrock's, or the one given as input)"),
    ("Z_RR", "f8", "", "Redshift in the input file (Redrock Z; SDSS Z)"),
    ("ZWARN", "i8", "", "Redshift warning bits of the input file (0 = fine)"),
    ("DELTACHI2", "f8", "", "Redrock chi2 difference between the best and second-best fit"),
    ("SPECTYPE", "U8", "", "Spectral class from the redshift fitter (GALAXY, QSO, STAR)"),
    ("EBV", "f4", "mag", "Milky-Way SFD E(B-V) the spectrum was corrected for (Fitzpatrick 1999, "
                         "R_V=3.1, Schlafly & Finkbeiner 2011 calibration)"),
    ("INPUT_FILE", "U64", "", "Name of the input file (Redrock file or spectrum file)"),
    ("COADD_FILE", "U64", "", "Name of the DESI coadd file read (empty for other inputs)"),
)
"""``(name, numpy dtype, unit, description)`` of every METADATA column, in order."""


def _blank(dtype: np.dtype):
    kind = np.dtype(dtype).base.kind
    return np.nan if kind == "f" else ("" if kind in "US" else -1)


def _column(name: str, values: list, dtype, unit: str, description: str):
    """One astropy Column of ``values`` as ``dtype`` (a subarray dtype such as
    ``("f8", (150,))`` gives a vector column; strings, made ASCII, keep at least the
    declared width)."""
    from astropy.table import Column
    dt = np.dtype(dtype)
    base = dt.base
    if base.kind in "US":
        texts = [_ascii(str(v)) for v in values]          # FITS strings are ASCII
        width = max([base.itemsize // np.dtype("U1").itemsize] + [len(t) for t in texts])
        arr = np.array(texts, dtype=f"U{width}")
    else:
        arr = np.array(values, dtype=base) if values else np.zeros((0,) + dt.shape, dtype=base)
    return Column(arr, name=name, unit=unit or None, description=description)


def _table(rows: Sequence[dict], columns: Iterable[tuple], name: str):
    from astropy.table import Table
    t = Table()
    for cname, dtype, unit, desc in columns:
        shape = np.dtype(dtype).shape
        for r in rows:
            if r.get(cname) is not None and np.ndim(r[cname]) > 0:
                shape = np.shape(r[cname])
        blank = np.full(shape, _blank(dtype)) if shape else _blank(dtype)
        values = [blank if r.get(cname) is None else r[cname] for r in rows]
        t[cname] = _column(cname, values, dtype, unit, desc)
    t.meta["EXTNAME"] = name
    return t


def metadata_table(meta: Sequence[dict]):
    """The METADATA :class:`astropy.table.Table` of ``meta`` rows (missing keys blank)."""
    return _table(meta, METADATA_COLUMNS, "METADATA")


def specphot_table(rows: Sequence[dict], columns: Sequence[tuple]):
    """The SPECPHOT table: ``rows`` (``ContinuumResult.to_row()`` dicts) in the order of
    ``columns`` (the fitter's ``(name, dtype, unit, description)`` list), with TARGETID
    first.  Keys absent from a row are blank (NaN, -1, '')."""
    cols = list(columns)
    if "TARGETID" not in [c[0] for c in cols]:
        cols.insert(0, ("TARGETID", "i8", "", "Unique target identifier (as in METADATA)"))
    return _table(rows, cols, "SPECPHOT")


def models_table(targetids: Sequence[int], models: Sequence[dict]):
    """The MODELS table: one row per target; ``models[k]`` maps a camera name to
    ``(wave, continuum)`` or ``(wave, continuum, lines)`` arrays (``lines`` may be None;
    absent cameras, failed targets and missing line models are NaN).  The ``EMLINES_X``
    columns exist when some target has a line model.

    A camera whose pixel count is the same for every target gets fixed-length vector
    columns; otherwise (e.g. SDSS spectra of different lengths) variable-length ones.
    """
    from astropy.table import Column, Table
    t = Table()
    t["TARGETID"] = Column(np.asarray(targetids, dtype=np.int64), description="Unique target identifier")
    def part(m, cam, j):
        return m[cam][j] if cam in m and len(m[cam]) > j else None

    cams = []
    for m in models:
        cams += [c for c in m if c not in cams]
    for cam in cams:
        lengths = {len(m[cam][0]) for m in models if cam in m}
        fixed = len(lengths) == 1
        n = lengths.pop() if fixed else 0
        kinds = [("WAVE", "f8", "Angstrom", f"Observed vacuum wavelength of camera {cam}'s pixels"),
                 ("CONTINUUM", "f4", "", f"Best-fit stellar continuum on camera {cam}'s pixels, in the "
                                          "input flux unit after the Milky-Way correction")]
        if any(part(m, cam, 2) is not None for m in models):
            kinds.append(("EMLINES", "f4", "", f"Best-fit emission-line model on camera {cam}'s pixels "
                                                "(same unit as CONTINUUM)"))
        for j, (prefix, dtype, unit, desc) in enumerate(kinds):
            vals = [np.asarray(part(m, cam, j), dtype=dtype) if part(m, cam, j) is not None else
                    np.full(n if fixed else (len(m[cam][0]) if cam in m else 0), np.nan, dtype=dtype)
                    for m in models]
            name = f"{prefix}_{cam.upper()}"
            if fixed:
                t[name] = Column(np.array(vals).reshape(len(models), n), unit=unit or None, description=desc)
            else:
                col = np.empty(len(vals), dtype=object)
                col[:] = vals
                t[name] = Column(col, unit=unit or None, description=desc)
    t.meta["EXTNAME"] = "MODELS"
    return t


def check_output(path, overwrite: bool) -> Path:
    """Refuse (``InputError``) an output that exists unless ``overwrite``, or whose folder
    does not exist; return the path.  Called before any fitting starts."""
    p = Path(path)
    if p.exists() and not overwrite:
        raise InputError(f"{p}: the output exists; pass --overwrite (overwrite=True) to replace it "
                         "or choose another name")
    if not p.parent.is_dir():
        raise InputError(f"{p}: the folder {p.parent} does not exist; create it first")
    return p


_ASCII = {"·": "*", "×": "x", "σ": "sigma", "χ": "chi", "λ": "lambda", "τ": "tau", "Å": "A", "²": "2",
          "³": "3", "⁻": "-", "¹": "1", "–": "-", "—": "-", "≥": ">=", "≤": "<=", "≠": "!=", "±": "+/-",
          "→": "->", "⊙": "sun", "☉": "sun", "Δ": "d"}


def _ascii(text: str) -> str:
    """``text`` in printable ASCII (FITS header comments allow nothing else)."""
    import unicodedata
    text = "".join(_ASCII.get(ch, ch) for ch in text)
    return unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")


def _hdu(table):
    """A BinTable HDU as ``Table.write`` makes it (units natively, descriptions in
    astropy's serialised-columns block), with each description also as the comment of
    its ``TTYPEn`` card (ASCII, cut to fit the card) and units that FITS does not know
    (``dex``) written as they are."""
    import io
    import warnings
    from astropy.io import fits
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*could not be saved in native FITS format")
        table.write(buf, format="fits")
    buf.seek(0)
    hdu = fits.open(buf)[1]          # stays backed by `buf` (variable-length arrays need its heap)
    for i, col in enumerate(table.itercols(), start=1):
        if col.description:
            room = 80 - max(30, 12 + len(col.name)) - 3
            hdu.header.comments[f"TTYPE{i}"] = _ascii(col.description)[:room]
        if col.unit is not None and f"TUNIT{i}" not in hdu.header:
            hdu.header.insert(f"TFORM{i}", (f"TUNIT{i}", col.unit.to_string()), after=True)
    return hdu


def write_catalog(path, metadata, specphot, models=None, header: dict | None = None,
                  overwrite: bool = False) -> Path:
    """Write the catalogue atomically (temporary file + rename) and return its path.

    ``metadata``/``specphot``/``models``: tables from :func:`metadata_table`,
    :func:`specphot_table`, :func:`models_table` (same rows in the same order);
    ``header``: extra primary-header keywords (``{KEY: value}`` or ``{KEY: (value, comment)}``).
    """
    from astropy.io import fits
    from .. import __version__
    if len(metadata) != len(specphot) or (models is not None and len(models) != len(specphot)):
        raise ValueError(f"catalogue tables disagree on the number of targets: METADATA {len(metadata)}, "
                         f"SPECPHOT {len(specphot)}, MODELS {None if models is None else len(models)}")
    if not np.array_equal(np.asarray(metadata["TARGETID"]), np.asarray(specphot["TARGETID"])):
        raise ValueError("catalogue tables list different targets (TARGETID order differs)")
    p = check_output(path, overwrite)
    primary = fits.PrimaryHDU()
    primary.header["CUBEFIT"] = (__version__, "cubefit version that wrote this file")
    for key, value in (header or {}).items():
        primary.header[key] = value
    hdus = [primary, _hdu(metadata), _hdu(specphot)] + ([] if models is None else [_hdu(models)])
    tmp = p.with_name(f".{p.name}.tmp-{os.getpid()}")
    try:
        fits.HDUList(hdus).writeto(tmp, overwrite=True)
        if overwrite:
            os.replace(tmp, p)
        else:
            try:
                os.link(tmp, p)      # fails if p appeared meanwhile: never clobber
            except FileExistsError:
                raise InputError(f"{p}: the output appeared while the run was writing; nothing was "
                                 "replaced (pass --overwrite to replace it)") from None
            except OSError:          # no hard links on this file system
                check_output(p, overwrite=False)
                os.replace(tmp, p)
    finally:
        if tmp.exists():
            tmp.unlink()
    return p


def read_catalog(path) -> dict:
    """``{"METADATA": Table, "SPECPHOT": Table[, "MODELS": Table], "header": Header}``
    (NaN stays NaN: blank values are not turned into masked entries; units the FITS
    standard does not list — ``dex``, ``dex(solMass)``, ``nmgy`` — are parsed with
    astropy's generic format)."""
    import warnings
    import astropy.units as u
    from astropy.io import fits
    from astropy.table import Table
    out = {}
    with fits.open(path) as hdul, warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=u.UnitsWarning)
        out["header"] = hdul[0].header.copy()
        for name in ("METADATA", "SPECPHOT", "MODELS"):
            if name in hdul:
                t = Table.read(hdul[name], mask_invalid=False)
                for col in t.itercols():
                    if isinstance(col.unit, u.UnrecognizedUnit):
                        try:
                            col.unit = u.Unit(str(col.unit))
                        except ValueError:
                            pass        # left as astropy found it
                out[name] = t
    return out
