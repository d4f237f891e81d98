"""Broadband photometry of a target, ready for fitting.

Sources
-------
* **DESI FIBERMAP** (:func:`photometry_from_fibermap`, :func:`read_fibermap_photometry`):
  the Legacy Surveys columns ``FLUX_G/R/Z/W1/W2[/W3/W4]`` and ``FLUX_IVAR_*`` (nanomaggies,
  *not* corrected for Galactic extinction), ``FIBERFLUX_*`` and ``FIBERTOTFLUX_*``
  (g, r, z), ``PHOTSYS`` (``N``: BASS/MzLS, ``S``: DECam) and ``EBV``.
* **A user catalogue** (:func:`read_catalog_photometry`): any FITS table plus a small
  JSON or YAML mapping of its columns to speclite filters (format below).

Milky-Way correction
--------------------
Each band is divided by its transmission ``10^(-0.4 R_b E(B-V))`` and its inverse
variance multiplied by the square of it.  The coefficient ``R_b = A_b / E(B-V)_SFD``
comes from the same curve as the spectra (:mod:`cubefit.spectra.extinction`: Fitzpatrick
1999, R_V = 3.1, on the Schlafly & Finkbeiner 2011 recalibration of the SFD E(B-V) that
DESI uses), averaged over the filter for a source flat in f_ν with photon-counting
weights, ``R_b = ∫ k(λ) R(λ) dλ/λ / ∫ R(λ) dλ/λ`` (the small-E(B-V) limit;
:func:`mw_coefficient`).  Beyond 3.3 µm, where that curve's implementation stops, the
``extinction`` package's Fitzpatrick (1999) curve (the same formula, extended to the
WISE bands by its spline) is used with the same recalibration.

Error floors
------------
For fitting, a floor is added in quadrature in magnitudes (FastSpecFit's convention):
``σ_m² → σ_m² + floor²``, i.e. ``σ_f² → σ_f² + (0.4 ln10 · floor · f)²`` for ``f > 0``.
Defaults (:data:`DEFAULT_FLOORS`): 0.02 mag in g, r, z and 0.05 mag in W1–W4 (calibration
and template systematics).  The unfloored inverse variance is kept (``ivar_stat``) for
quantities that report measurement errors (absolute magnitudes).

Bands with ``ivar = 0`` (not observed), non-finite values or negative ivar are dropped.

User catalogue mapping
----------------------
A JSON or YAML file (or a dict)::

    id: TARGETID              # column matched against the targets' ids (default TARGETID)
    units: nanomaggies        # nanomaggies | maggies | Jy | mJy | uJy | mag (AB); default nanomaggies
    ebv: EBV                  # optional: a column or a number; the fluxes are then MW-corrected here
    bands:
      - {name: G, filter: decam2014-g, flux: FLUX_G, ivar: FLUX_IVAR_G}
      - {name: W1, filter: wise2010-W1, flux: FLUX_W1, error: FLUXERR_W1, floor: 0.05}

``name`` labels the output columns (default: the filter's band), ``ivar`` or ``error``
give the uncertainty in the same unit as the flux (for ``units: mag``: ``error`` in mag),
``floor`` overrides the default floor (mag; 0.02 for optical, 0.05 for WISE filters).
"""
from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .extinction import DEFAULT_RV, mw_extinction_curve, sfd_recalibration
from .filters import BANDS, OPTICAL_BANDS, filter_curve, filter_names, mag_to_nanomaggies

__all__ = ["Photometry", "DEFAULT_FLOORS", "mw_coefficient", "mw_band_transmission", "apply_floor",
           "photometry_from_fibermap", "read_fibermap_photometry", "read_catalog_photometry",
           "load_mapping", "FIBERMAP_PHOT_COLUMNS", "merge_cameras", "spectrum_synth_flux"]

DEFAULT_FLOORS = {"G": 0.02, "R": 0.02, "Z": 0.02, "W1": 0.05, "W2": 0.05, "W3": 0.05, "W4": 0.05}
"""Error floors (mag) added in quadrature for fitting (module docstring)."""

FIBERMAP_PHOT_COLUMNS = tuple([f"FLUX_{b}" for b in BANDS] + [f"FLUX_IVAR_{b}" for b in BANDS]
                              + [f"FIBERFLUX_{b}" for b in OPTICAL_BANDS]
                              + [f"FIBERTOTFLUX_{b}" for b in OPTICAL_BANDS] + ["PHOTSYS", "EBV"])
"""FIBERMAP columns this module reads (the W3/W4 ones are optional)."""

_F99_RED_LIMIT = 33333.0      # Å: end of dust_extinction's F99 range (x = 0.3 µm⁻¹)


@dataclass
class Photometry:
    """Milky-Way-corrected photometry of one target (only the usable bands).

    ``bands`` labels (``'G'``, ``'W1'``, ...), ``filters`` their speclite names;
    ``flux`` (nanomaggies), ``ivar`` (1/nanomaggies², with the error floors, for fitting),
    ``ivar_stat`` (without floors); ``mw_transmission`` the factor each band was divided
    by; ``fiberflux``/``fibertotflux`` ``{band: nanomaggies}`` (MW-corrected; empty when
    unknown); ``photsys``; ``ebv`` (mag); ``dropped`` the labels of bands left out and why.
    """

    bands: tuple
    filters: tuple
    flux: np.ndarray
    ivar: np.ndarray
    ivar_stat: np.ndarray
    mw_transmission: np.ndarray
    photsys: str = ""
    ebv: float = 0.0
    fiberflux: dict = field(default_factory=dict)
    fibertotflux: dict = field(default_factory=dict)
    dropped: dict = field(default_factory=dict)

    @property
    def n(self) -> int:
        return len(self.bands)

    def select(self, keep) -> "Photometry":
        """A copy with only the bands where ``keep`` (bool ``(n,)``) is True."""
        keep = np.asarray(keep, dtype=bool)
        return Photometry(bands=tuple(b for b, k in zip(self.bands, keep) if k),
                          filters=tuple(f for f, k in zip(self.filters, keep) if k),
                          flux=self.flux[keep], ivar=self.ivar[keep], ivar_stat=self.ivar_stat[keep],
                          mw_transmission=self.mw_transmission[keep], photsys=self.photsys, ebv=self.ebv,
                          fiberflux=dict(self.fiberflux), fibertotflux=dict(self.fibertotflux),
                          dropped=dict(self.dropped))


@functools.lru_cache(maxsize=128)
def mw_coefficient(name: str, rv: float = DEFAULT_RV) -> float:
    """``R_b = A_b / E(B-V)`` of speclite filter ``name`` (module docstring)."""
    import extinction
    lam, resp, _ = filter_curve(name)
    k = np.empty_like(lam)
    inside = lam <= _F99_RED_LIMIT
    if inside.any():
        k[inside] = mw_extinction_curve(lam[inside], rv)
    if (~inside).any():                                                # A_V = R_V: E(B-V) = 1
        k[~inside] = extinction.fitzpatrick99(lam[~inside], rv, rv) * sfd_recalibration(rv)
    w = resp / lam
    return float(np.trapezoid(k * w, lam) / np.trapezoid(w, lam))


def mw_band_transmission(ebv: float, names, rv: float = DEFAULT_RV) -> np.ndarray:
    """Transmission ``10^(-0.4 R_b E(B-V))`` of each filter in ``names``."""
    ebv = float(ebv)
    if not np.isfinite(ebv) or ebv < 0:
        raise ValueError(f"E(B-V) = {ebv!r} mag: expected a finite, non-negative colour excess")
    return np.array([10 ** (-0.4 * mw_coefficient(n, rv) * ebv) for n in names])


def apply_floor(flux, ivar, floor_mag) -> np.ndarray:
    """Inverse variance with ``floor_mag`` (mag, scalar or per band) added in quadrature
    (module docstring); unchanged where ``ivar = 0`` or ``flux ≤ 0``."""
    flux = np.asarray(flux, dtype=np.float64)
    ivar = np.asarray(ivar, dtype=np.float64)
    floor = np.broadcast_to(np.asarray(floor_mag, dtype=np.float64), flux.shape)
    out = ivar.copy()
    ok = (ivar > 0) & (flux > 0)
    var = 1.0 / ivar[ok] + (0.4 * np.log(10.0) * floor[ok] * flux[ok]) ** 2
    out[ok] = 1.0 / var
    return out


def _text(v) -> str:
    return (v.decode() if isinstance(v, bytes) else str(v)).strip()


def _get(row, name, default=None):
    try:
        v = row[name]
    except (KeyError, ValueError, IndexError):
        return default
    return v


def photometry_from_fibermap(row, *, bands=("G", "R", "Z", "W1", "W2", "W3", "W4"), floors=None,
                             rv: float = DEFAULT_RV, where: str = "FIBERMAP") -> Photometry:
    """:class:`Photometry` from one FIBERMAP row (astropy Row, numpy record or dict).

    ``bands``: labels to use (absent columns are dropped, e.g. W3/W4 in healpix coadds);
    ``floors``: ``{band: mag}`` overriding :data:`DEFAULT_FLOORS`; ``where`` names the
    source in error messages.  Raises ``ValueError`` for an unknown PHOTSYS or a negative
    or non-finite EBV.
    """
    floors = {**DEFAULT_FLOORS, **(floors or {})}
    photsys = _text(_get(row, "PHOTSYS", ""))
    ebv = float(_get(row, "EBV", 0.0))
    if not np.isfinite(ebv) or ebv < 0:
        raise ValueError(f"{where}: EBV = {ebv!r}: expected a finite, non-negative E(B-V) (mag)")
    if photsys not in ("N", "S"):
        raise ValueError(f"{where}: PHOTSYS = {photsys!r}: expected 'N' (BASS/MzLS) or 'S' (DECam); "
                         "targets without Legacy Surveys photometry cannot use it (fit without photometry)")
    keep, flux, ivar, dropped = [], [], [], {}
    for b in bands:
        f, iv = _get(row, f"FLUX_{b}"), _get(row, f"FLUX_IVAR_{b}")
        if f is None or iv is None:
            dropped[b] = "column absent"
            continue
        f, iv = float(f), float(iv)
        if not (np.isfinite(f) and np.isfinite(iv)) or iv <= 0:
            dropped[b] = "ivar = 0" if iv == 0 else "non-finite or negative ivar"
            continue
        keep.append(b)
        flux.append(f)
        ivar.append(iv)
    names = filter_names(photsys, keep)
    t = mw_band_transmission(ebv, names, rv)
    flux = np.array(flux) / t
    ivar_stat = np.array(ivar) * t**2
    fib, fibtot = {}, {}
    opt = filter_names(photsys, OPTICAL_BANDS)
    topt = mw_band_transmission(ebv, opt, rv)
    for b, tb in zip(OPTICAL_BANDS, topt):
        for src, dst in ((f"FIBERFLUX_{b}", fib), (f"FIBERTOTFLUX_{b}", fibtot)):
            v = _get(row, src)
            if v is not None and np.isfinite(float(v)):
                dst[b] = float(v) / tb
    return Photometry(bands=tuple(keep), filters=tuple(names), flux=flux,
                      ivar=apply_floor(flux, ivar_stat, [floors[b] for b in keep]), ivar_stat=ivar_stat,
                      mw_transmission=t, photsys=photsys, ebv=ebv, fiberflux=fib, fibertotflux=fibtot,
                      dropped=dropped)


def read_fibermap_photometry(coadd, targetids=None, **kwargs) -> dict:
    """``{TARGETID: Photometry or str}`` from a DESI coadd's FIBERMAP (the string says why a
    target has no usable photometry).  ``targetids``: the targets wanted (default all);
    ``kwargs`` go to :func:`photometry_from_fibermap`."""
    from astropy.io import fits
    coadd = Path(coadd)
    try:
        with fits.open(coadd, memmap=True) as hdul:
            if "FIBERMAP" not in hdul:
                raise ValueError(f"{coadd}: no FIBERMAP HDU; is it a DESI coadd?")
            fm = hdul["FIBERMAP"].data
            names = set(fm.columns.names)
            missing = [c for c in ("TARGETID", "PHOTSYS", "FLUX_G", "FLUX_IVAR_G") if c not in names]
            if missing:
                raise ValueError(f"{coadd}: FIBERMAP lacks {missing}; it carries no Legacy Surveys "
                                 "photometry (use --photometry CATALOG with a mapping instead)")
            cols = {c: np.asarray(fm[c]) for c in FIBERMAP_PHOT_COLUMNS + ("TARGETID",) if c in names}
    except OSError as exc:
        raise ValueError(f"{coadd}: cannot read it as FITS ({exc})") from None
    tids = cols["TARGETID"].astype(np.int64)
    index = {int(t): i for i, t in enumerate(tids)}
    want = tids if targetids is None else [int(t) for t in targetids]
    out = {}
    for t in want:
        i = index.get(int(t))
        if i is None:
            out[int(t)] = f"{coadd}: TARGETID {t} is not in the FIBERMAP"
            continue
        row = {c: v[i] for c, v in cols.items()}
        try:
            out[int(t)] = photometry_from_fibermap(row, where=f"{coadd}: TARGETID {t}", **kwargs)
        except ValueError as exc:
            out[int(t)] = str(exc)
    return out


# --------------------------------------------------------------------------- user catalogues
_UNIT_TO_NMGY = {"nanomaggies": 1.0, "nmgy": 1.0, "maggies": 1e9, "jy": 1e9 / 3631.0,
                 "mjy": 1e6 / 3631.0, "ujy": 1e3 / 3631.0}


def load_mapping(mapping) -> dict:
    """A column→filter mapping from a dict or a ``.json``/``.yaml``/``.yml`` file, validated."""
    if isinstance(mapping, (str, Path)):
        path = Path(mapping)
        if not path.is_file():
            raise ValueError(f"{path}: photometry mapping not found")
        text = path.read_text()
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml
            data = yaml.safe_load(text)
        elif path.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            raise ValueError(f"{path}: expected a .json, .yaml or .yml mapping file")
        where = str(path)
    else:
        data, where = mapping, "photometry mapping"
    if not isinstance(data, dict) or not isinstance(data.get("bands"), list) or not data["bands"]:
        raise ValueError(f"{where}: expected a mapping with a non-empty 'bands' list of "
                         "{filter:, flux:, ivar: or error:} entries")
    units = str(data.get("units", "nanomaggies")).lower()
    if units not in _UNIT_TO_NMGY and units != "mag":
        raise ValueError(f"{where}: units {units!r}: expected one of nanomaggies, maggies, Jy, mJy, uJy, mag")
    bands = []
    for k, b in enumerate(data["bands"]):
        if not isinstance(b, dict) or "filter" not in b or "flux" not in b or \
                ("ivar" not in b and "error" not in b):
            raise ValueError(f"{where}: band {k}: expected keys filter, flux and ivar or error; got {b!r}")
        filt = str(b["filter"])
        filter_curve(filt)                                       # raises for an unknown filter
        band = filt.split("-", 1)[-1]
        floor = b.get("floor", DEFAULT_FLOORS["W1"] if filt.startswith("wise") else DEFAULT_FLOORS["G"])
        bands.append({"name": str(b.get("name", band)).upper(), "filter": filt, "flux": str(b["flux"]),
                      "ivar": b.get("ivar"), "error": b.get("error"), "floor": float(floor)})
    names = [b["name"] for b in bands]
    if len(set(names)) != len(names):
        raise ValueError(f"{where}: band names {names} repeat; give each band a distinct 'name'")
    return {"id": str(data.get("id", "TARGETID")), "units": units, "ebv": data.get("ebv"), "bands": bands,
            "where": where}


def read_catalog_photometry(path, mapping, targetids=None, *, hdu=1, rv: float = DEFAULT_RV) -> dict:
    """``{id: Photometry or str}`` from a FITS table and a column mapping (module docstring).

    ``targetids``: ids to return (default: every row); an id absent from the table gets a
    message string instead of a :class:`Photometry`.
    """
    from astropy.table import Table
    m = load_mapping(mapping)
    path = Path(path)
    try:
        tab = Table.read(path, hdu=hdu)
    except (OSError, ValueError, IndexError, KeyError) as exc:
        raise ValueError(f"{path}: cannot read HDU {hdu!r} as a table ({exc})") from None
    need = [m["id"]] + [b["flux"] for b in m["bands"]] + [b["ivar"] or b["error"] for b in m["bands"]]
    if isinstance(m["ebv"], str):
        need.append(m["ebv"])
    missing = [c for c in need if c not in tab.colnames]
    if missing:
        raise ValueError(f"{path}: columns {missing} named in {m['where']} are absent; the table has "
                         f"{', '.join(tab.colnames[:30])}{' ...' if len(tab.colnames) > 30 else ''}")
    ids = np.asarray(tab[m["id"]]).astype(np.int64)
    index = {int(t): i for i, t in enumerate(ids)}
    want = ids if targetids is None else [int(t) for t in targetids]
    names = [b["filter"] for b in m["bands"]]
    out = {}
    for t in want:
        i = index.get(int(t))
        if i is None:
            out[int(t)] = f"{path}: id {t} is not in column {m['id']}"
            continue
        ebv = 0.0 if m["ebv"] is None else float(tab[m["ebv"]][i] if isinstance(m["ebv"], str) else m["ebv"])
        flux, ivar = [], []
        for b in m["bands"]:
            f = float(tab[b["flux"]][i])
            if m["units"] == "mag":
                e = float(tab[b["error"]][i]) if b["error"] else 1.0 / np.sqrt(float(tab[b["ivar"]][i]))
                fn = float(mag_to_nanomaggies(f))
                sig = 0.4 * np.log(10.0) * e * fn
                flux.append(fn)
                ivar.append(1.0 / sig**2 if np.isfinite(sig) and sig > 0 else 0.0)
            else:
                s = _UNIT_TO_NMGY[m["units"]]
                if b["ivar"]:
                    iv = float(tab[b["ivar"]][i]) / s**2
                else:
                    e = float(tab[b["error"]][i]) * s
                    iv = 1.0 / e**2 if np.isfinite(e) and e > 0 else 0.0
                flux.append(f * s)
                ivar.append(iv)
        flux, ivar = np.array(flux), np.array(ivar)
        good = np.isfinite(flux) & np.isfinite(ivar) & (ivar > 0)
        t_mw = mw_band_transmission(ebv, names, rv)
        fl, ivs = flux[good] / t_mw[good], ivar[good] * t_mw[good] ** 2
        floors = np.array([b["floor"] for b in m["bands"]])[good]
        out[int(t)] = Photometry(
            bands=tuple(b["name"] for b, g in zip(m["bands"], good) if g),
            filters=tuple(n for n, g in zip(names, good) if g), flux=fl, ivar=apply_floor(fl, ivs, floors),
            ivar_stat=ivs, mw_transmission=t_mw[good], photsys="", ebv=ebv,
            dropped={b["name"]: "ivar = 0 or non-finite" for b, g in zip(m["bands"], good) if not g})
    return out


# --------------------------------------------------------------------------- spectra
def merge_cameras(cameras) -> tuple[np.ndarray, np.ndarray]:
    """One spectrum ``(wave, flux)`` on the union of the cameras' wavelengths: each camera's
    good pixels (ivar > 0) linearly interpolated, inverse-variance-weighted where cameras
    overlap, and masked stretches bridged by linear interpolation.  For synthetic
    photometry only (no resolution or noise bookkeeping)."""
    waves = [np.asarray(c.wave, dtype=np.float64) for c in cameras]
    grid = np.unique(np.concatenate(waves))
    num, den = np.zeros_like(grid), np.zeros_like(grid)
    for c, w in zip(cameras, waves):
        good = np.asarray(c.ivar) > 0
        if good.sum() < 2:
            continue
        inside = (grid >= w[good][0]) & (grid <= w[good][-1])
        f = np.interp(grid[inside], w[good], np.asarray(c.flux)[good])
        iv = np.interp(grid[inside], w[good], np.asarray(c.ivar)[good])
        num[inside] += iv * f
        den[inside] += iv
    ok = den > 0
    if ok.sum() < 2:
        raise ValueError("merge_cameras: fewer than two usable pixels over all cameras")
    return grid, np.interp(grid, grid[ok], num[ok] / den[ok])


def spectrum_synth_flux(spectrum, filters, *, flux_unit: float = 1e-17) -> np.ndarray:
    """Nanomaggies synthesised from a :class:`~cubefit.spectra.data.Spectrum` (observed frame,
    already Milky-Way corrected) through speclite ``filters``, the merged spectrum padded
    with its edge values where a filter reaches beyond it (DESI's 9824 Å against z bands
    reaching 10 300 Å), as FastSpecFit does."""
    from .filters import synth_nanomaggies
    wave, flux = merge_cameras(spectrum.cameras)
    return synth_nanomaggies(wave, flux, list(filters), flux_unit=flux_unit, pad=True)
