"""Template libraries: simple-stellar-population (SSP) spectra on a log-λ grid (docs/data-model.md).

A :class:`TemplateLibrary` holds ``flux (P, T)`` — one flux-density spectrum per
population template — sampled on ``ln_lam (T,)``, natural-log pixel centres in Å with a
uniform step (``velscale = C_KMS * step`` km/s), together with the population grid the
templates span (e.g. age × [M/H]).  Templates are ordered row-major over that grid:
with axes ``("age", "metal")`` template ``p = i_age * n_metal + i_metal``.

Sources
-------
* **E-MILES** (Vazdekis et al. 2016): the 150 SSPs (unimodal IMF slope 1.30, Padova+00
  isochrones, base [α/Fe], 25 ages × 6 [M/H]) shipped in the ``ppxf==8.1.0`` source
  distribution.  :func:`fetch_emiles` downloads that archive once with ``pip download``
  into the user cache (``CUBEFIT_CACHE_DIR``, default ``~/.cache/cubefit``) and keeps only
  ``ppxf/miles_models/*.fits`` plus the MILES mass table; :meth:`TemplateLibrary.from_emiles`
  loads it.
* Any folder of **MILES-style FITS** files (linear λ, ``CRVAL1``/``CDELT1``, names like
  ``Eun1.30Zm0.40T00.0631_iPp0.00_baseFe_linear_FWHM_variable.fits``):
  :meth:`TemplateLibrary.from_fits_folder`.
* **pPXF ``.npz``** SSP files (``ppxf >= 8.2`` ``sps_models`` layout):
  :meth:`TemplateLibrary.from_npz`.

Spectra stored in linear λ are moved to the log grid with :func:`cubefit.grids.log_rebin`
(exact, flux-density conserving).  Conventions fixed here:

* ``norm (P,)``: the factors the source flux was divided by, so ``flux * norm[:, None]``
  is in ``flux_unit`` (the source's unit).  MILES SSPs are in L_sun Å⁻¹ per M_sun of
  initial stellar mass, so a fit weight ``w_p`` on a normalised template means an initial
  mass ``w_p / norm_p`` (in the data's flux unit over ``flux_unit``).
* Pixels with flux ≤ 0 are "no prediction", not zero light: E-MILES stores exact zeros
  above 8950 Å for its youngest SSPs (26 of the 150), so statistics for normalisation
  ignore them.
"""
from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np

from . import C_KMS
from .config import get_config
from .grids import check_log_grid, edges_from_centres, log_rebin

log = logging.getLogger(__name__)

__all__ = ["TemplateLibrary", "fetch_emiles", "emiles_dir", "parse_miles_name",
           "EDGE_PIX", "PPXF_VERSION", "EMILES_PATTERN", "EMILES_COUNT", "MILES_FLUX_UNIT"]

EDGE_PIX = 2
"""Pixels added on each side by :meth:`TemplateLibrary.crop` beyond the kernel half-width,
so that observed bins whose edges straddle the range ends are still fully covered."""

PPXF_VERSION = "8.1.0"
"""The pPXF source distribution that ships the E-MILES SSPs (later versions moved them to
separately downloaded ``.npz`` files)."""

EMILES_PATTERN = "Eun1.30*.fits"
EMILES_COUNT = 150
EMILES_MASS_TABLE = "Vazdekis2012_ssp_mass_Padova00_UN_baseFe_v10.0.txt"

MILES_FLUX_UNIT = "L_sun/Angstrom/M_sun"
"""Unit of MILES/E-MILES SSP spectra: solar luminosities per Å per solar mass of initial
stellar mass.  (Checked: the 10 Gyr solar-metallicity E-MILES SSP has a mean 5450–5550 Å
flux density of 1.67e-5, and the MILES mass table gives L_V = 0.1195 L_sun per M_sun;
the Sun emits 1.39e-4 L_sun/Å at 5500 Å, and 0.1195 × 1.39e-4 = 1.66e-5.)"""

_SOURCE_FILE = "SOURCE.txt"   # written last into a fetched cache: its presence = complete
_TMP_PREFIX = ".tmp-emiles-"
_STALE_TMP_S = 3600.0

_MILES_CORE = re.compile(
    r"(?:(?P<imf>[a-z]{2})(?P<slope>\d+\.\d+))?"       # IMF type and slope, e.g. un1.30
    r"Z(?P<zsign>[mp])(?P<z>\d+\.\d+)"                 # [M/H], m = minus, p = plus
    r"T(?P<age>\d+\.\d+)")                             # age in Gyr
_MILES_ISO = re.compile(r"_i(?P<iso>[A-Z])(?P<sign>[mp])(?P<val>\d+\.\d+)")
_MILES_ALPHA = re.compile(r"_(?:(?P<base>baseFe)|E(?P<sign>[mp])(?P<val>\d+\.\d+))")
_MILES_IMFS = {"un": "unimodal", "bi": "bimodal", "ku": "Kroupa universal",
               "kb": "Kroupa revised", "ch": "Chabrier"}
_MILES_ISOCHRONES = {"P": "Padova+00", "T": "BaSTI"}
_MILES_META_KEYS = ("Models Library", "IMF, Slope", "[alpha/Fe]", "Isochrone", "Version",
                    "Spectral resolution", "Type of sampling")
_COMMENT_ITEM = re.compile(r"#\s*([^:#]+?)\s*:\s*(.*?)'?\s*$")


# --------------------------------------------------------------------------------------
# The library
# --------------------------------------------------------------------------------------

@dataclass(eq=False)
class TemplateLibrary:
    """Population templates on a uniform natural-log wavelength grid.

    Attributes
    ----------
    flux : ``(P, T)`` float64
        Flux densities (per Å), divided by ``norm``.
    ln_lam : ``(T,)`` float64
        ln(λ/Å) of the pixel centres, uniform step.
    velscale : float
        Pixel step in km/s, ``C_KMS * (ln_lam[1] - ln_lam[0])``.
    pop_axes : dict[str, ndarray]
        Population axes in grid order, e.g. ``{"age": (n_age,) Gyr, "metal": (n_metal,) dex}``.
    grid_shape : tuple[int, ...]
        Lengths of ``pop_axes``; ``P == prod(grid_shape)``, row-major (last axis fastest).
    axis_units : dict[str, str]
        Unit of each population axis.
    fwhm : float or None
        Constant instrumental FWHM of the templates in Å; None when unknown or variable
        (then ``meta`` may hold ``fwhm_range`` or ``fwhm_curve``).
    flux_unit : str
        Unit of ``flux * norm[:, None]``.
    norm : ``(P,)``
        Factors the source flux was divided by (None when constructing: all 1).
    mass_to_light : ``(P,)`` or None
        Stellar (living + remnants) mass-to-light ratio in solar units, in the band named
        by ``meta["mass_to_light_band"]``; None when the source gives none.
    masses : ``(P,)`` or None
        Mass in living stars + remnants (M_sun) per unit of initial mass, i.e. per
        template in ``flux_unit``; None when the source gives none.
    names : list[str]
        One label per template (file stem for FITS sources).
    source : str
        Where the templates came from.
    meta : dict
        Provenance read from the source (library, IMF, isochrones, resolution text, ...).
    """

    flux: np.ndarray
    ln_lam: np.ndarray
    velscale: float
    pop_axes: dict
    grid_shape: tuple
    axis_units: dict
    fwhm: float | None
    flux_unit: str
    norm: np.ndarray | None = None
    mass_to_light: np.ndarray | None = None
    masses: np.ndarray | None = None
    names: list = field(default_factory=list)
    source: str = ""
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        what = f"TemplateLibrary({self.source or 'unnamed'})"
        self.flux = np.asarray(self.flux, dtype=np.float64)
        self.ln_lam = np.asarray(self.ln_lam, dtype=np.float64)
        if self.flux.ndim != 2:
            raise ValueError(f"{what}: flux must be (P, T), got shape {self.flux.shape}")
        step = check_log_grid(self.ln_lam, name=f"{what}.ln_lam")
        P, T = self.flux.shape
        if self.ln_lam.shape != (T,):
            raise ValueError(f"{what}: ln_lam has {self.ln_lam.size} pixels but flux has T={T}")
        self.velscale = float(self.velscale)
        if not math.isclose(self.velscale, C_KMS * step, rel_tol=1e-6):
            raise ValueError(f"{what}: velscale={self.velscale} km/s disagrees with the ln_lam step "
                             f"({C_KMS * step:.10g} km/s); pass velscale=C_KMS*step")
        self.pop_axes = {k: np.asarray(v, dtype=np.float64) for k, v in self.pop_axes.items()}
        self.grid_shape = tuple(int(n) for n in self.grid_shape)
        axis_lens = tuple(v.size for v in self.pop_axes.values())
        if axis_lens != self.grid_shape or int(np.prod(self.grid_shape)) != P:
            raise ValueError(f"{what}: grid_shape {self.grid_shape} must equal the pop_axes lengths "
                             f"{dict(zip(self.pop_axes, axis_lens))} and multiply to P={P}")
        missing_units = set(self.pop_axes) - set(self.axis_units)
        if missing_units:
            raise ValueError(f"{what}: axis_units lacks {sorted(missing_units)}")
        self.norm = self._per_template(np.ones(P) if self.norm is None else self.norm, "norm")
        if np.any(~np.isfinite(self.norm) | (self.norm <= 0)):
            raise ValueError(f"{what}: norm must be finite and positive")
        self.mass_to_light = self._per_template(self.mass_to_light, "mass_to_light")
        self.masses = self._per_template(self.masses, "masses")
        self.names = list(self.names) or [self._label(p) for p in range(P)]
        if len(self.names) != P:
            raise ValueError(f"{what}: {len(self.names)} names for P={P} templates")
        if self.fwhm is not None:
            self.fwhm = float(self.fwhm)
        # Own copies, so libraries derived with dataclasses.replace never share mutable state.
        self.axis_units, self.meta = dict(self.axis_units), dict(self.meta)

    def _per_template(self, a, name):
        if a is None:
            return None
        a = np.asarray(a, dtype=np.float64)
        if a.shape != (self.P,):
            raise ValueError(f"TemplateLibrary({self.source}): {name} must have shape ({self.P},), "
                             f"got {a.shape}")
        return a

    def _label(self, p: int) -> str:
        idx = np.unravel_index(p, self.grid_shape)
        return "_".join(f"{k}={v[i]:.6g}" for (k, v), i in zip(self.pop_axes.items(), idx))

    # --- shape ----------------------------------------------------------------------

    @property
    def P(self) -> int:
        """Number of templates."""
        return self.flux.shape[0]

    @property
    def T(self) -> int:
        """Number of wavelength pixels."""
        return self.flux.shape[1]

    @property
    def lam(self) -> np.ndarray:
        """Pixel-centre wavelengths in Å, ``(T,)``."""
        return np.exp(self.ln_lam)

    def params(self) -> dict[str, np.ndarray]:
        """Population parameters of every template: ``{axis: (P,) values}`` in template order."""
        mesh = np.meshgrid(*self.pop_axes.values(), indexing="ij")
        return {k: m.ravel() for k, m in zip(self.pop_axes, mesh)}

    # --- wavelength operations --------------------------------------------------------

    def crop(self, lam_min: float, lam_max: float, vel_max: float = 0.0) -> "TemplateLibrary":
        """Keep the pixels covering ``[lam_min, lam_max]`` Å plus a convolution margin.

        The margin is ``K + EDGE_PIX`` pixels on each side, ``K = ceil(vel_max / velscale)``
        being the LOSVD kernel half-width for velocities up to ``|v| = vel_max`` km/s
        (docs/templates.md, template coverage).  Raises ``ValueError`` stating the shortfall in
        pixels and Å on each side when the library does not reach that far.
        """
        if not (0 < lam_min < lam_max):
            raise ValueError(f"crop needs 0 < lam_min < lam_max (Å), got {lam_min}, {lam_max}")
        if not vel_max >= 0:
            raise ValueError(f"crop needs vel_max >= 0 (km/s), got {vel_max}")
        step = (self.ln_lam[-1] - self.ln_lam[0]) / (self.T - 1)
        e0 = self.ln_lam[0] - 0.5 * step
        K = int(math.ceil(vel_max / self.velscale - 1e-9))
        margin = K + EDGE_PIX
        # Pixel indices (possibly outside 0..T-1) of the bins holding the range ends; the
        # tolerance keeps an end that sits exactly on a bin edge out of the outer bin.
        i0 = math.floor((math.log(lam_min) - e0) / step + 1e-9) - margin
        i1 = math.ceil((math.log(lam_max) - e0) / step - 1e-9) + margin
        short_blue, short_red = max(-i0, 0), max(i1 - self.T, 0)
        if short_blue or short_red:
            have = np.exp([e0, e0 + self.T * step])
            need = np.exp([e0 + i0 * step, e0 + i1 * step])
            parts = []
            if short_blue:
                parts.append(f"{short_blue} px ({have[0] - need[0]:.2f} Å) on the blue side")
            if short_red:
                parts.append(f"{short_red} px ({need[1] - have[1]:.2f} Å) on the red side")
            raise ValueError(
                f"{self.source}: templates cover {have[0]:.2f}–{have[1]:.2f} Å but "
                f"[{lam_min}, {lam_max}] Å plus K={K} kernel px (vel_max={vel_max} km/s at "
                f"velscale={self.velscale:.6g} km/s) and {EDGE_PIX} edge px per side needs "
                f"{need[0]:.2f}–{need[1]:.2f} Å: short by " + " and ".join(parts) +
                "; fit a narrower wavelength range, lower vel_max, or use a library with wider coverage")
        return dataclasses.replace(self, flux=self.flux[:, i0:i1].copy(),
                                   ln_lam=self.ln_lam[i0:i1].copy())

    def rebin(self, velscale: float) -> "TemplateLibrary":
        """Resample onto a log grid of step ``velscale`` km/s, conserving flux.

        Same scheme as :func:`cubefit.grids.log_rebin` (flux density piecewise constant in
        λ over each input pixel, exact integrals over the output pixels, so a flat spectrum
        stays flat and integrated line fluxes are kept) with the input bins taken as the
        geometric pixels of the log grid.  The new grid starts at the current first pixel
        edge and holds the whole output pixels that fit.
        """
        if not velscale > 0:
            raise ValueError(f"rebin needs velscale > 0 (km/s), got {velscale}")
        e_ln = edges_from_centres(self.ln_lam)
        edges = np.exp(e_ln)
        step = float(velscale) / C_KMS
        m = int(np.floor((e_ln[-1] - e_ln[0]) / step * (1 + 1e-12)))
        if m < 2:
            raise ValueError(f"{self.source}: velscale={velscale} km/s leaves fewer than 2 pixels "
                             f"over {edges[0]:.1f}–{edges[-1]:.1f} Å")
        new_edges = np.exp(e_ln[0] + step * np.arange(m + 1))
        new_edges[0] = edges[0]                 # exp(log(x)) may round outside the input
        new_edges = np.minimum(new_edges, edges[-1])
        cum = np.concatenate((np.zeros((self.P, 1)), np.cumsum(self.flux * np.diff(edges), axis=1)),
                             axis=1)
        idx = np.clip(np.searchsorted(edges, new_edges, side="right") - 1, 0, self.T - 1)
        integ = cum[:, idx] + self.flux[:, idx] * (new_edges - edges[idx])
        flux = np.diff(integ, axis=1) / np.diff(new_edges)
        ln_lam = e_ln[0] + step * (np.arange(m) + 0.5)
        return dataclasses.replace(self, flux=flux, ln_lam=ln_lam, velscale=float(velscale))

    def normalise(self, mode: str = "median", lam_range=None,
                  per_template: bool = False) -> "TemplateLibrary":
        """Divide the flux by a statistic of it; the factors accumulate in ``norm``.

        mode : ``"median"`` | ``"mean"`` | ``"none"``
            Statistic of the positive flux values inside ``lam_range`` (ignoring ≤ 0
            pixels, which are missing predictions in E-MILES).  ``"none"`` undoes every
            earlier normalisation (back to ``flux_unit``, ``norm = 1``).
        lam_range : (lam_min, lam_max) Å, optional
            Pixels whose centres lie inside; default all pixels.
        per_template : bool
            False (default): one global scalar for the whole library, so the relative
            luminosities of the templates — and hence fit weights as mass fractions — are
            kept (pPXF's default).  True: each template divided by its own statistic, so
            fit weights become light fractions in ``lam_range``.

        Raises ``ValueError`` naming the templates whose factor is not finite and
        positive (e.g. no positive pixel in ``lam_range``).
        """
        if mode == "none":
            return dataclasses.replace(self, flux=self.flux * self.norm[:, None],
                                       norm=np.ones(self.P))
        if mode not in ("median", "mean"):
            raise ValueError(f"normalise: mode must be 'median', 'mean' or 'none', got {mode!r}")
        if lam_range is None:
            band = np.ones(self.T, dtype=bool)
        else:
            lo, hi = lam_range
            band = (self.lam >= lo) & (self.lam <= hi)
            if not band.any():
                raise ValueError(f"normalise: no pixel of {self.source} ({self.lam[0]:.1f}–"
                                 f"{self.lam[-1]:.1f} Å) lies in lam_range={tuple(lam_range)} Å")
        seg = self.flux[:, band]
        good = np.isfinite(seg) & (seg > 0)
        stat = np.median if mode == "median" else np.mean
        if per_template:
            factor = np.array([stat(row[ok]) if ok.any() else np.nan for row, ok in zip(seg, good)])
        else:
            factor = np.full(self.P, stat(seg[good]) if good.any() else np.nan)
        bad = np.flatnonzero(~np.isfinite(factor) | (factor <= 0))
        if bad.size:
            raise ValueError(f"normalise: {bad.size} templates of {self.source} have no positive flux "
                             f"in lam_range={lam_range} Å, e.g. {[self.names[i] for i in bad[:5]]}; "
                             "choose a range every template covers")
        return dataclasses.replace(self, flux=self.flux / factor[:, None], norm=self.norm * factor)

    # --- loaders ------------------------------------------------------------------------

    @classmethod
    def from_emiles(cls, velscale: float | None = None, lam_range=None, cache_dir=None,
                    fetch: bool = True) -> "TemplateLibrary":
        """The 150 E-MILES SSPs (25 ages × 6 [M/H]) from the user cache, fetched if needed.

        ``velscale`` km/s (None: the natural log step keeping the pixel count of the
        selected range), ``lam_range`` (Å) as in :meth:`from_fits_folder`, ``cache_dir``
        overrides ``CUBEFIT_CACHE_DIR``.  With ``fetch=False`` a missing cache raises
        ``FileNotFoundError`` instead of downloading.  ``mass_to_light`` is the V-band
        M(*+remn)/L_V and ``masses`` M(*+remn) from the MILES mass table.
        """
        folder = emiles_dir(cache_dir)
        if not _cache_ready(folder):
            if not fetch:
                raise FileNotFoundError(
                    f"E-MILES templates not found in {folder}; run cubefit.templates.fetch_emiles() "
                    f"(downloads ppxf=={PPXF_VERSION} from PyPI once), or point "
                    "TemplateLibrary.from_fits_folder at a folder of E-MILES FITS files")
            folder = fetch_emiles(cache_dir)
        lib = cls.from_fits_folder(folder, pattern=EMILES_PATTERN, velscale=velscale,
                                   lam_range=lam_range, mass_table=folder / EMILES_MASS_TABLE)
        lib.source = f"E-MILES SSPs (Vazdekis et al. 2016) from ppxf=={PPXF_VERSION} in {folder}"
        return lib

    @classmethod
    def from_fits_folder(cls, folder, pattern: str = "*.fits", velscale: float | None = None,
                         lam_range=None, mass_table=None) -> "TemplateLibrary":
        """Load MILES-style SSP FITS files (names like ``Eun1.30Zm0.40T00.0631_...fits``).

        Every file matching ``pattern`` must be a 1-D linear-λ spectrum (``CRVAL1``,
        ``CDELT1`` or ``CD1_1``, optional ``CRPIX1``) on one common grid, and the
        (age, [M/H]) pairs from the names must form a full grid; otherwise ``ValueError``
        lists the offending files or the missing pairs.  Spectra are log-rebinned with
        :func:`cubefit.grids.log_rebin` at ``velscale`` km/s (None: the step that keeps the
        pixel count).  ``lam_range=(lam_min, lam_max)`` Å keeps only the pixels covering it
        plus ``EDGE_PIX`` per side (see :meth:`crop`; call ``crop`` with ``vel_max``
        afterwards for the kernel margin).  ``mass_table``: optional MILES
        ``*_ssp_mass_*.txt`` file giving ``masses`` and V-band ``mass_to_light``.
        """
        from astropy.io import fits

        folder = Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(
                f"template folder {folder} does not exist; for E-MILES run "
                "cubefit.templates.fetch_emiles() or use TemplateLibrary.from_emiles()")
        files = sorted(folder.glob(pattern))
        if not files:
            present = sorted(p.name for p in folder.iterdir())[:5]
            raise FileNotFoundError(f"no file in {folder} matches {pattern!r} (first entries there: "
                                    f"{present}); give the pattern of the SSP files")
        parsed, bad = {}, []
        for f in files:
            try:
                parsed[f] = parse_miles_name(f.name)
            except ValueError:
                bad.append(f.name)
        if bad:
            raise ValueError(f"{folder}: {len(bad)} files matching {pattern!r} have no MILES "
                             f"Z..T.. tag, e.g. {bad[:5]}; narrow the pattern to the SSP files")
        where = f"{folder}/{pattern}"
        ages = np.unique([d["age"] for d in parsed.values()])
        metals = np.unique([d["metal"] for d in parsed.values()])
        slot: dict[tuple[int, int], Path] = {}
        for f, d in parsed.items():
            key = (int(np.searchsorted(ages, d["age"])), int(np.searchsorted(metals, d["metal"])))
            if key in slot:
                raise ValueError(f"{where}: {slot[key].name} and {f.name} have the same age "
                                 f"{d['age']} Gyr and [M/H] {d['metal']:+.2f}; narrow the pattern "
                                 "to one IMF / isochrone / [α/Fe] set")
            slot[key] = f
        missing = [(float(a), float(m)) for i, a in enumerate(ages) for j, m in enumerate(metals)
                   if (i, j) not in slot]
        if missing:
            raise ValueError(f"{where}: {len(files)} files do not form a full {ages.size} ages × "
                             f"{metals.size} [M/H] grid; missing (age Gyr, [M/H]) = {missing[:10]}"
                             f"{' ...' if len(missing) > 10 else ''}; add those files or remove "
                             "the incomplete ages/metallicities")
        order = [slot[(i, j)] for i in range(ages.size) for j in range(metals.size)]

        header0 = fits.getheader(order[0])
        lam = _linear_wavelengths(header0, order[0])
        spectra = np.empty((len(order), lam.size))
        for p, f in enumerate(order):
            with fits.open(f, memmap=False) as hdul:
                h, data = hdul[0].header, hdul[0].data
                if _dispersion(h) != _dispersion(header0):
                    raise ValueError(f"{where}: {f.name} has wavelength grid {_dispersion(h)} "
                                     f"(NAXIS1, CRVAL1, CDELT1, CRPIX1) but {order[0].name} has "
                                     f"{_dispersion(header0)}; all templates must share one grid")
                spectra[p] = np.asarray(data, dtype=np.float64).ravel()
            nbad = int(np.count_nonzero(~np.isfinite(spectra[p])))
            if nbad:
                raise ValueError(f"{f}: {nbad} non-finite flux values; repair or drop this file")

        info = _miles_comments(header0)
        fwhm, meta = _fwhm_from_text(info.get("Spectral resolution", ""))
        meta.update({k: info[k] for k in _MILES_META_KEYS if k in info})
        tags = parsed[order[0]]
        meta.update({k: tags[k] for k in ("imf", "imf_slope", "isochrone", "alpha")
                     if tags.get(k) is not None})
        if "BUNIT" in header0:
            flux_unit = str(header0["BUNIT"])
        elif "Models Library" in info:   # written by the MILES web tool: MILES units
            flux_unit = MILES_FLUX_UNIT
        else:
            flux_unit = "unknown"

        names = [f.stem for f in order]
        masses = mass_to_light = None
        if mass_table is not None and Path(mass_table).is_file():
            masses, mass_to_light = _miles_mass_table(Path(mass_table), [parsed[f] for f in order])
            if masses is not None:
                meta["mass_to_light_band"] = "V (Johnson, Vega)"
        flux, ln_lam, vs = _log_rebin_range(lam, spectra, velscale, lam_range)
        lib = cls(flux=flux, ln_lam=ln_lam, velscale=vs, pop_axes={"age": ages, "metal": metals},
                  grid_shape=(ages.size, metals.size), axis_units={"age": "Gyr", "metal": "dex [M/H]"},
                  fwhm=fwhm, flux_unit=flux_unit, norm=np.ones(len(order)),
                  mass_to_light=mass_to_light, masses=masses, names=names, source=where, meta=meta)
        return lib.crop(*lam_range) if lam_range is not None else lib

    @classmethod
    def from_npz(cls, path, velscale: float | None = None, lam_range=None) -> "TemplateLibrary":
        """Load a pPXF ``sps_models``-style ``.npz`` file.

        Keys: ``templates (npix, n_ages, n_metals)`` (also accepted: ``(n_ages, n_metals,
        npix)``, or ``(npix, P)`` without axes), ``lam (npix,)`` Å (any increasing grid),
        ``ages`` Gyr and ``metals`` dex (or ``age``/``metal``), optional ``masses
        (n_ages, n_metals)``, ``fwhm`` (scalar or ``(npix,)`` Å) and ``flux_unit``.  A
        constant ``fwhm`` becomes :attr:`fwhm`; a varying one is kept as
        ``meta["fwhm_curve"] = (lam, fwhm)``.  ``velscale``/``lam_range`` as in
        :meth:`from_fits_folder`.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"SSP file {path} does not exist; pPXF's sps_models .npz files are "
                                    "downloaded separately from the pPXF project")
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
        for key in ("templates", "lam"):
            if key not in data:
                raise ValueError(f"{path}: no '{key}' array (keys present: {sorted(data)}); "
                                 "expected pPXF sps_models keys templates, lam, ages, metals, masses, fwhm")
        lam = np.asarray(data["lam"], dtype=np.float64).ravel()
        tem = np.asarray(data["templates"], dtype=np.float64)
        axes = {}
        for name, keys, unit in (("age", ("ages", "age"), "Gyr"),
                                 ("metal", ("metals", "metal"), "dex [M/H]")):
            key = next((k for k in keys if k in data), None)
            if key is not None:
                axes[name] = (np.asarray(data[key], dtype=np.float64).ravel(), unit)
        if tem.shape[0] != lam.size and tem.shape[-1] == lam.size:
            tem = np.moveaxis(tem, -1, 0)       # (..., npix) layout: wavelength last
        if tem.shape[0] != lam.size:
            raise ValueError(f"{path}: templates shape {tem.shape} has no axis of length "
                             f"lam.size={lam.size}")
        grid = tem.shape[1:]
        if tuple(v.size for v, _ in axes.values()) != grid:
            if tem.ndim == 2 and not axes:
                axes = {"index": (np.arange(grid[0], dtype=np.float64), "")}
            else:
                raise ValueError(f"{path}: templates grid {grid} does not match the axes "
                                 f"{ {k: v.size for k, (v, _) in axes.items()} }; expected "
                                 "templates (npix, n_ages, n_metals) with ages (n_ages,), metals (n_metals,)")
        spectra = tem.reshape(lam.size, -1).T
        nbad = int(np.count_nonzero(~np.isfinite(spectra)))
        if nbad:
            raise ValueError(f"{path}: templates hold {nbad} non-finite values; repair the file")
        masses = None
        if "masses" in data:
            masses = np.asarray(data["masses"], dtype=np.float64)
            if masses.size != spectra.shape[0]:
                raise ValueError(f"{path}: masses has shape {masses.shape}, expected {grid}")
            masses = masses.ravel()
        fwhm, meta = None, {}
        if "fwhm" in data:
            fw = np.asarray(data["fwhm"], dtype=np.float64).ravel()
            if fw.size == 1 or np.allclose(fw, fw[0], rtol=1e-6, atol=0):
                fwhm = float(fw[0])
            elif fw.size == lam.size:
                meta["fwhm_curve"] = (lam.copy(), fw)
            else:
                raise ValueError(f"{path}: fwhm has {fw.size} values, expected 1 or lam.size={lam.size}")
        flux_unit = str(data["flux_unit"]) if "flux_unit" in data else "L_sun/Angstrom"
        flux, ln_lam, vs = _log_rebin_range(lam, spectra, velscale, lam_range)
        lib = cls(flux=flux, ln_lam=ln_lam, velscale=vs, pop_axes={k: v for k, (v, _) in axes.items()},
                  grid_shape=grid, axis_units={k: u for k, (_, u) in axes.items()}, fwhm=fwhm,
                  flux_unit=flux_unit, norm=np.ones(spectra.shape[0]), masses=masses,
                  source=str(path), meta=meta)
        return lib.crop(*lam_range) if lam_range is not None else lib


# --------------------------------------------------------------------------------------
# MILES file names and headers
# --------------------------------------------------------------------------------------

def parse_miles_name(name) -> dict:
    """Population parameters from a MILES SSP file name.

    ``"Eun1.30Zm0.40T00.0631_iPp0.00_baseFe_linear_FWHM_variable.fits"`` →
    ``{"imf": "un", "imf_slope": 1.3, "metal": -0.4, "age": 0.0631, "isochrone": "Padova+00",
    "iso_alpha": 0.0, "alpha": None, "base_fe": True}``.

    ``metal`` is [M/H] in dex (``Zm`` minus, ``Zp`` plus), ``age`` in Gyr; ``imf`` is the
    two-letter MILES code (un, bi, ku, kb, ch) and ``imf_slope`` its slope, None when
    absent; ``isochrone``/``iso_alpha`` come from ``_iPp0.00`` / ``_iTp0.40`` (Padova+00 /
    BaSTI and their [α/Fe]); ``alpha`` is the spectra's [α/Fe] from ``_Ep0.40``, None for
    ``baseFe`` (the solar-neighbourhood abundance pattern).  Raises ``ValueError`` when the
    name has no ``Z[mp]x.xxTxx.xxxx`` tag.
    """
    base = PurePosixPath(str(name).replace("\\", "/")).name
    m = _MILES_CORE.search(base)
    if m is None:
        raise ValueError(f"{base!r} is not a MILES SSP name: expected a tag like "
                         "'Eun1.30Zm0.40T00.0631' (Z[m|p] = [M/H] in dex, T = age in Gyr)")
    sign = -1.0 if m["zsign"] == "m" else 1.0
    out = {"imf": m["imf"], "imf_slope": float(m["slope"]) if m["slope"] else None,
           "metal": sign * float(m["z"]) + 0.0,    # + 0.0 turns "Zm0.00" into 0.0, not -0.0
           "age": float(m["age"]), "isochrone": None, "iso_alpha": None, "alpha": None,
           "base_fe": False}
    if m["imf"] is not None and m["imf"] not in _MILES_IMFS:
        raise ValueError(f"{base!r}: unknown MILES IMF code {m['imf']!r}; known: {sorted(_MILES_IMFS)}")
    rest = base[m.end():]
    iso = _MILES_ISO.search(rest)
    if iso:
        out["isochrone"] = _MILES_ISOCHRONES.get(iso["iso"], iso["iso"])
        out["iso_alpha"] = (-1.0 if iso["sign"] == "m" else 1.0) * float(iso["val"]) + 0.0
    al = _MILES_ALPHA.search(rest)
    if al:
        if al["base"]:
            out["base_fe"] = True
        else:
            out["alpha"] = (-1.0 if al["sign"] == "m" else 1.0) * float(al["val"]) + 0.0
    return out


def _miles_comments(header) -> dict[str, str]:
    """``'# Key: value'`` items of the MILES web-tool COMMENT cards."""
    out = {}
    for card in header.get("COMMENT", []):
        m = _COMMENT_ITEM.search(str(card))
        if m and m.group(2):
            out[m.group(1)] = m.group(2)
    return out


def _fwhm_from_text(text: str) -> tuple[float | None, dict]:
    """FWHM (Å) from a MILES 'Spectral resolution' value: one number → constant, a range → None."""
    nums = [float(x) for x in re.findall(r"\d+(?:\.\d+)?", text)]
    if len(nums) == 1:
        return nums[0], {}
    if len(nums) == 2:
        # E-MILES says "2.51 - 23.57 (Angstroms) FWHM": 2.51 Å in the optical MILES range,
        # coarser in the UV and near-IR, so there is no single FWHM.
        return None, {"fwhm_range": (min(nums), max(nums))}
    return None, {}


def _dispersion(header) -> tuple:
    cdelt = header.get("CDELT1", header.get("CD1_1"))
    return (header.get("NAXIS1"), header.get("CRVAL1"), cdelt, header.get("CRPIX1", 1.0))


def _linear_wavelengths(header, path) -> np.ndarray:
    """Pixel-centre wavelengths (Å) of a 1-D linear-λ FITS spectrum."""
    n, crval, cdelt, crpix = _dispersion(header)
    if header.get("NAXIS") != 1 or n is None or crval is None or cdelt is None:
        raise ValueError(f"{path}: expected a 1-D spectrum with NAXIS1, CRVAL1 and CDELT1 (or CD1_1), "
                         f"got NAXIS={header.get('NAXIS')}, CRVAL1={crval}, CDELT1={cdelt}")
    ctype = str(header.get("CTYPE1", "")).upper()
    if "LOG" in ctype:
        raise ValueError(f"{path}: CTYPE1={ctype!r} is log-sampled; only linear-λ MILES files are "
                         "supported (download the 'linear' sampling from the MILES web tool)")
    if cdelt <= 0 or crval <= 0:
        raise ValueError(f"{path}: need CRVAL1 > 0 and CDELT1 > 0 (Å), got {crval}, {cdelt}")
    return crval + (np.arange(n) + 1.0 - crpix) * cdelt


def _miles_mass_table(path: Path, tags: list[dict]):
    """``masses`` (M(*+remn)) and ``mass_to_light`` (M(*+remn)/L_V) per template from a
    MILES ``ssp_mass`` table, or ``(None, None)`` with a warning if a template is absent.

    Columns: IMF, slope, [M/H], age, Mtotal, M(*+remn), M*, Mremn, Mgas, M(*+remn)/Lv, ...
    The table's [M/H] (e.g. -0.3960) are the exact values behind the rounded file names
    (Zm0.40), hence the 0.01 dex matching tolerance.
    """
    rows = []
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) >= 10 and not line.lstrip().startswith("#"):
            rows.append((parts[0].lower(), *map(float, parts[1:4]), float(parts[5]), float(parts[9])))
    imf = np.array([r[0] for r in rows])
    slope, mh, age, mass, ml = np.array([r[1:] for r in rows]).T
    masses, m2l = [], []
    for t in tags:
        hit = np.flatnonzero((imf == (t["imf"] or "")) & (np.abs(slope - (t["imf_slope"] or -1)) < 0.01)
                             & (np.abs(mh - t["metal"]) < 0.01) & (np.abs(age - t["age"]) < 1e-3))
        if hit.size != 1:
            warnings.warn(f"{path.name}: no unique row for IMF {t['imf']}{t['imf_slope']}, "
                          f"[M/H]={t['metal']}, age={t['age']} Gyr; masses and mass_to_light left unset",
                          UserWarning, stacklevel=3)
            return None, None
        masses.append(mass[hit[0]])
        m2l.append(ml[hit[0]])
    return np.array(masses), np.array(m2l)


def _log_rebin_range(lam, spectra, velscale, lam_range):
    """Log-rebin linear spectra ``(P, N)``, first trimming them to ``lam_range`` (Å) plus a
    margin wide enough for :meth:`TemplateLibrary.crop` to cut exactly afterwards."""
    if lam_range is not None:
        lo, hi = lam_range
        if not (0 < lo < hi):
            raise ValueError(f"lam_range must be (lam_min, lam_max) Å with 0 < lam_min < lam_max, "
                             f"got {lam_range}")
        dlam = np.diff(lam)
        # Widest log step the output can have: the given one, or the natural step of the
        # trimmed range, which is at most the linear step over the bluest wavelength.
        step = velscale / C_KMS if velscale is not None else float(dlam.max()) / lo
        k = EDGE_PIX + 2            # edge pixels, alignment to the grid and the red-end floor
        lo_m = lo * math.exp(-k * step) - dlam.max()
        hi_m = hi * math.exp(k * step) + dlam.max()
        keep = (lam >= lo_m) & (lam <= hi_m)
        if np.count_nonzero(keep) >= 2:
            lam, spectra = lam[keep], spectra[:, keep]
    return log_rebin(lam, spectra, velscale=velscale)


# --------------------------------------------------------------------------------------
# E-MILES download and cache
# --------------------------------------------------------------------------------------

def emiles_dir(cache_dir=None) -> Path:
    """Folder where :func:`fetch_emiles` keeps the E-MILES files (may not exist yet)."""
    root = Path(cache_dir).expanduser() if cache_dir is not None else get_config().cache_path
    return root / f"emiles-ppxf-{PPXF_VERSION}"


def _cache_ready(folder: Path) -> bool:
    return (folder / _SOURCE_FILE).is_file()


def _manual_help(folder: Path) -> str:
    return (f"To install by hand: `python -m pip download --no-deps --no-binary :all: "
            f"ppxf=={PPXF_VERSION} -d DIR`, extract ppxf-{PPXF_VERSION}/ppxf/miles_models/*.fits "
            f"from DIR/ppxf-{PPXF_VERSION}.tar.gz into a folder and load it with "
            f"TemplateLibrary.from_fits_folder(folder, pattern={EMILES_PATTERN!r}) "
            f"(or copy them to {folder} and add an empty {_SOURCE_FILE})")


def _download_cmd(dest: Path) -> list[str]:
    """The ``pip download`` command that puts the pPXF source distribution into ``dest``."""
    return [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
            f"ppxf=={PPXF_VERSION}", "-d", str(dest), "--disable-pip-version-check",
            "--no-input", "--timeout", "60", "--retries", "2"]


def fetch_emiles(cache_dir=None, force: bool = False) -> Path:
    """Download the E-MILES SSPs once and return the cache folder holding them.

    Runs ``pip download`` (``sys.executable -m pip``) for the ``ppxf==8.1.0`` source
    distribution (25 MB), keeps ``ppxf/miles_models/*.fits`` (150 files, 33 MB) and the
    MILES mass table, and moves the result into place with one rename, so an interrupted
    fetch never leaves a partial cache.  ``cache_dir`` overrides ``CUBEFIT_CACHE_DIR``
    (default ``~/.cache/cubefit``); ``force`` re-downloads.  Raises ``RuntimeError`` saying
    what failed and how to install the files by hand.
    """
    target = emiles_dir(cache_dir)
    if _cache_ready(target) and not force:
        return target
    root = target.parent
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise RuntimeError(f"cannot create the template cache {root} ({err}); set CUBEFIT_CACHE_DIR "
                           f"to a writable folder. {_manual_help(target)}") from err
    _remove_stale_tmp(root)
    # The staging folder sits beside the target so the final rename stays on one file system.
    stage = Path(tempfile.mkdtemp(prefix=_TMP_PREFIX, dir=root))
    try:
        files = stage / "emiles"
        files.mkdir()
        with tempfile.TemporaryDirectory(prefix="cubefit-ppxf-") as dl:
            sdist = _pip_download(Path(dl), target)
            digest = hashlib.sha256(sdist.read_bytes()).hexdigest()
            n = _extract_miles_models(sdist, files, target)
        (files / _SOURCE_FILE).write_text(
            f"E-MILES SSP spectra (Vazdekis et al. 2016) from {sdist.name} (sha256 {digest}), "
            f"{n} FITS files plus {EMILES_MASS_TABLE}; fetched {time.strftime('%Y-%m-%d %H:%M:%S')} "
            "by cubefit.templates.fetch_emiles\n")
        old = None
        if target.exists():
            old = stage / "old"
            os.replace(target, old)
        try:
            os.replace(files, target)
        except OSError:
            if _cache_ready(target):   # another process finished first: use its copy
                return target
            raise
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return target


def _remove_stale_tmp(root: Path) -> None:
    # Staging folders of fetches killed over an hour ago would otherwise pile up (35 MB each).
    now = time.time()
    for p in root.glob(_TMP_PREFIX + "*"):
        try:
            if now - p.stat().st_mtime > _STALE_TMP_S:
                shutil.rmtree(p, ignore_errors=True)
        except OSError:
            pass


def _pip_download(dest: Path, target: Path) -> Path:
    cmd = _download_cmd(dest)
    # pip's own progress bar is swallowed by capture_output; say what the wait is for.
    log.info("fetching E-MILES: downloading ppxf==%s (25 MB) from PyPI into the cache %s",
             PPXF_VERSION, target)
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise RuntimeError(f"fetching E-MILES failed: could not run {' '.join(cmd)} ({err}). "
                           f"{_manual_help(target)}") from err
    if res.returncode != 0:
        tail = "\n".join((res.stderr or res.stdout).strip().splitlines()[-8:])
        raise RuntimeError(f"fetching E-MILES failed: `{' '.join(cmd)}` exited with {res.returncode} "
                           f"(is PyPI reachable?):\n{tail}\n{_manual_help(target)}")
    found = sorted(dest.glob(f"ppxf-{PPXF_VERSION}.tar.gz"))
    if not found:
        raise RuntimeError(f"fetching E-MILES failed: pip reported success but {dest} holds no "
                           f"ppxf-{PPXF_VERSION}.tar.gz (found {sorted(p.name for p in dest.iterdir())}). "
                           f"{_manual_help(target)}")
    return found[0]


def _extract_miles_models(sdist: Path, out: Path, target: Path) -> int:
    """Copy ``*/ppxf/miles_models/*.fits`` and the mass table from the archive into ``out``
    (flat, base names only, so no archive path can escape ``out``); return the FITS count."""
    n = 0
    try:
        with tarfile.open(sdist, "r:gz") as tar:
            for member in tar:
                p = PurePosixPath(member.name)
                if not (member.isfile() and p.parent.name == "miles_models"
                        and p.parent.parent.name == "ppxf"):
                    continue
                if p.suffix == ".fits" or p.name == EMILES_MASS_TABLE:
                    with tar.extractfile(member) as src, open(out / p.name, "wb") as dst:
                        shutil.copyfileobj(src, dst)
                    n += p.suffix == ".fits"
    except (tarfile.TarError, OSError, EOFError) as err:
        raise RuntimeError(f"fetching E-MILES failed: cannot read {sdist.name} ({err}). "
                           f"{_manual_help(target)}") from err
    n_match = len(list(out.glob(EMILES_PATTERN)))
    if n_match != EMILES_COUNT:
        raise RuntimeError(f"fetching E-MILES failed: {sdist.name} holds {n_match} files matching "
                           f"ppxf/miles_models/{EMILES_PATTERN}, expected {EMILES_COUNT}. "
                           f"{_manual_help(target)}")
    return n
