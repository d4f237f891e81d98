"""The HDF5 file: one galaxy per file, the CubeFit manual's layout (docs/data-model.md).

Inputs live at the root (``/Templates (P, T)``, ``/TemPix (T,)``, ``/ObsPix (L,)``,
``/DataCube (S, L)``, ``/LOSVD (S, V, C)``, ``/VelPix (V,)``, ``/R_T``, optional
``/Mask (L,)``, ``/Noise (S, L)``, ``/CompWeights (C,)``, ``/PopAxes/<name>``); built
artefacts under ``/HyperCube``; fit results at ``/X_global`` and ``/Fit``.

Every dataset is written through :func:`write_dataset`, which attaches the
``units`` and ``description`` attributes of :data:`SCHEMA`.  Every public call
validates all of its inputs before it touches the file, and every write goes
through :func:`cubefit.h5io.edit_h5` (writer lock, rollback journal), so a failed
or killed call leaves an existing file as it was.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import h5py
import numpy as np
import scipy.sparse as sp

from . import C_KMS, __version__
from .config import Config, get_config
from .grids import check_log_grid, edges_from_centres, rebin_matrix
from .h5io import edit_h5, open_h5
from .locking import writes_file
from .losvd import check_losvd, check_vel_grid, kernel_half_width
from .provenance import digest, drop_stale_products, inputs_fingerprint, stale_products
from .schema_extra import SCHEMA as SCHEMA_EXTRA
from .validate import (as_real_array, check_components_have_light, check_dims_match,
                       check_grid_unchanged, check_ln_lambda_range, check_magnitude,
                       check_noise_weights, check_templates_not_zero, crop_hint, losvd_axes,
                       spaxels_of)

log = logging.getLogger(__name__)

__all__ = ["H5Dims", "H5Manager", "Inputs", "open_h5", "read_inputs", "write_dataset", "read_rebin", "describe_file",
           "SCHEMA", "TEMPLATE_PAD_PX"]

TEMPLATE_PAD_PX = 2
"""Template pixels kept beyond the kernel half-width when cropping, so that the
exact-overlap rebin of the outermost observed bins is fully covered."""

# name -> (units, one-line meaning).  Names ending in "/" are prefixes.
SCHEMA: dict[str, tuple[str, str]] = {
    "/Templates": ("template flux density (normalised, see attrs)",
                   "template spectra (P, T) on the ln-λ template grid /TemPix"),
    "/TemPix": ("ln(Angstrom)", "template grid: natural-log wavelength of pixel centres (T,)"),
    "/ObsPix": ("ln(Angstrom)", "observed grid: natural-log wavelength of pixel centres (L,)"),
    "/VelPix": ("km/s", "LOSVD velocity-bin centres (V,); positive = redshift"),
    "/DataCube": ("data flux density", "observed spectra (S, L), one row per spaxel/aperture"),
    "/LOSVD": ("histogram weight", "LOSVD histograms (S, V, C) per spaxel and component"),
    "/Mask": ("bool (True = use)", "wavelength mask (L,) used by builder and solver"),
    "/Noise": ("data flux density", "1-sigma noise (S, L); inverse variance = 1/Noise^2"),
    "/CompWeights": ("fraction", "target light fraction of each component (C,), unit sum"),
    "/PopAxes/": ("see attrs", "population-grid axis values (e.g. age in Gyr, [M/H] in dex)"),
    # Science extras (cubefit.science, cubefit.demo).
    "/SpaxelXY": ("as the units attribute (spaxel or arcsec)",
                  "sky position (x, y) of each spaxel/aperture centre (S, 2); x along the major axis"),
    "/CompNames": ("", "name of each component (C,), in /LOSVD order"),
    "/TemplateMass": ("M_sun per unit template weight, for data in the library's source unit "
                      "(L_sun/Angstrom); scales with the data unit",
                      "stellar mass (living stars + remnants) carried by unit weight of each "
                      "template (P,) = library masses / norm; mass-weighted quantities use it"),
    "/R_T": ("fraction of output bin", "sparse exact-overlap rebin template grid -> observed grid"),
    "/R_T/data": ("fraction of output bin", "CSR values of R (L, T)"),
    "/R_T/indices": ("template pixel index", "CSR column indices of R (L, T)"),
    "/R_T/indptr": ("index", "CSR row pointers of R (L, T)"),
    "/HyperCube/data_flux": ("data flux density",
                             "per-spaxel mean of /DataCube over unmasked pixels (S,)"),
    "/HyperCube/models": ("see attrs: data flux density (norm.mode data) or template flux "
                          "density x LOSVD amplitude (norm.mode model)",
                          "model columns A (S, C, P, L) float32: template p convolved with the LOSVD "
                          "of component c at spaxel s, rebinned to /ObsPix and normalised; stored on "
                          "every pixel, masked ones included"),
    "/HyperCube/_done": ("bool (1 = tile written)",
                         "build bitmap over the (S, C, P) tile grid of /HyperCube/models"),
    "/HyperCube/_energy_parts": ("(units of /HyperCube/models)^2",
                                 "column energy of each S-tile row (n_S_tiles, C, P); "
                                 "col_energy is their sum"),
    "/HyperCube/col_energy": ("(units of /HyperCube/models)^2",
                              "column energy E[c,p] = sum_s sum_l m_l w_l A[s,c,p,l]^2 (C, P), "
                              "with the pixel weights m w of /HyperCube/col_energy_weights"),
    "/HyperCube/col_energy_weights": ("dimensionless",
                                      "pixel weights m_l w_l (L,) (mask x λ-weights) used for "
                                      "/HyperCube/col_energy"),
    "/HyperCube/norm/losvd_amp": ("sum: histogram weight; trapz: histogram weight x km/s",
                                  "LOSVD amplitude a[s,c] (S, C), sum or trapezoid integral over "
                                  "/VelPix (attr amp_mode)"),
    "/HyperCube/norm/losvd_amp_sum": ("as /HyperCube/norm/losvd_amp",
                                      "per-spaxel sum over components of the LOSVD amplitudes (S,)"),
    "/HyperCube/lambda_weights": ("dimensionless, in [min_w, 1]",
                                  "λ-weights w (L,) emphasising absorption features (median-DoG "
                                  "heuristic, parameters in attrs); masked pixels hold the floor"),
    "/HyperCube/_convert_scratch": ("as /HyperCube/models",
                                    "one rescaled tile staged by an interrupted normalisation "
                                    "conversion (crash safety)"),
    "/HyperCube/_models_new": ("as /HyperCube/models",
                               "copy of /HyperCube/models being recompressed; replaces it when done"),
    # Global fit (cubefit.runner): written together, atomically, by cubefit.runner.write_fit.
    "/X_global": ("template weight (model = A x with A in the units of /HyperCube/models)",
                  "non-negative solution x (C·P,), row-major (C, P): index c·P + p"),
    "/Fit": ("see attr_units", "global fit: solver, settings and result (attributes; units and "
             "meaning of each in the JSON attributes attr_units and attr_descriptions)"),
    "/Fit/history/time": ("s", "solver wall time since its start, one entry per iteration"),
    "/Fit/history/passes": ("operator applications", "cumulative passes, one entry per iteration"),
    "/Fit/history/cost": ("as /Fit attr cost", "total objective f(x), one entry per iteration"),
    "/Fit/history/optimality": ("dimensionless", "relative projected-gradient norm per iteration "
                                "(NaN: not evaluated)"),
    "/Fit/component_light": ("data flux density x pixels",
                             "light L_c of each component (C,): model flux over good pixels"),
    "/Fit/light_fractions": ("fraction", "light fraction L_c / sum L of each component (C,)"),
    "/Fit/orbit_weights": ("fraction", "target light fractions f (C,) of the orbit-weight prior"),
    "/ModelCube": ("data flux density", "reconstructed model spectra Y_hat = A x (S, L) on /ObsPix"),
    # Fit-tracker sidecar <file>.fit.<pid>.<ts>.h5 (cubefit.tracking); wall_s = s since tracker start.
    "/Tracker/steps": ("iteration, passes [operator applications], wall_s [s], cost [objective f(x)], "
                       "rmse [as the solver reports it], optimality [relative projected gradient]",
                       "per-iteration solver history; NaN (passes: -1) = not reported"),
    "/Tracker/batch_rmse": ("sample [raw sample index], wall_s [s], rmse and rmse_ewma "
                            "[as the solver reports it]",
                            "every CUBEFIT_RMSE_STRIDE-th batch RMSE sample, and the EWMA over all "
                            "samples (smoothing constant: root attribute ewma_alpha)"),
    "/Tracker/progress": ("wall_s [s], fraction [0-1], message [UTF-8 bytes]", "progress reports"),
    "/Tracker/snapshots/best": ("template weight (as /X_global)",
                                "lowest-cost x so far (2, C·P): alternating slots, see best_info"),
    "/Tracker/snapshots/last": ("template weight (as /X_global)",
                                "most recent x (2, C·P): alternating slots, see last_info"),
    "/Tracker/snapshots/history": ("template weight (as /X_global)",
                                   "ring of the latest 'last' snapshots (keep_history, C·P)"),
    "/Tracker/snapshots/best_info": ("seq [write number, 0 = empty], iteration, cost [objective f(x)], "
                                     "wall_s [s], crc [CRC32 of x, iteration, cost]",
                                     "metadata of each /Tracker/snapshots/best slot"),
    "/Tracker/snapshots/last_info": ("seq [write number, 0 = empty], iteration, cost [objective f(x)], "
                                     "wall_s [s], crc [CRC32 of x, iteration, cost]",
                                     "metadata of each /Tracker/snapshots/last slot"),
    "/Tracker/snapshots/history_info": ("seq [write number, 0 = empty], iteration, cost [objective f(x)], "
                                        "wall_s [s], crc [CRC32 of x, iteration, cost]",
                                        "metadata of each /Tracker/snapshots/history slot"),
}

# IFU path, Monte-Carlo uncertainties, regul="auto" (cubefit.schema_extra).
SCHEMA.update(SCHEMA_EXTRA)


@dataclass(frozen=True)
class H5Dims:
    """Problem dimensions, with the manual's names.

    ``nSpat`` S spaxels, ``nLSpec`` L observed pixels, ``nTSpec`` T template pixels,
    ``nVel`` V LOSVD bins, ``nComp`` C components, ``nPop`` P populations.
    """

    nSpat: int
    nLSpec: int
    nTSpec: int
    nVel: int
    nComp: int
    nPop: int

    def __post_init__(self):
        for k, v in asdict(self).items():
            if int(v) != v or v < 1:
                raise ValueError(f"H5Dims.{k} must be a positive integer, got {v!r}")

    S = property(lambda self: self.nSpat)
    L = property(lambda self: self.nLSpec)
    T = property(lambda self: self.nTSpec)
    V = property(lambda self: self.nVel)
    C = property(lambda self: self.nComp)
    P = property(lambda self: self.nPop)


# ----------------------------------------------------------------------------- writing

def _schema_entry(name: str) -> tuple[str, str]:
    if name in SCHEMA:
        return SCHEMA[name]
    for key, val in SCHEMA.items():
        if key.endswith("/") and name.startswith(key):
            return val
    raise KeyError(f"{name} has no entry in cubefit.store.SCHEMA; add its units and meaning there")


def write_dataset(f: h5py.File, name: str, data, *, units: str | None = None,
                  description: str | None = None, **create_kw) -> h5py.Dataset:
    """(Re)create dataset ``name`` with ``units`` and ``description`` attributes.

    Units and description default to :data:`SCHEMA`; a name missing from it must
    pass both explicitly, so no dataset is ever written without them.
    """
    if units is None or description is None:
        su, sd = _schema_entry(name)
        units = su if units is None else units
        description = sd if description is None else description
    if name in f:
        del f[name]
    ds = f.create_dataset(name, data=data, **create_kw)
    ds.attrs["units"] = units
    ds.attrs["description"] = description
    return ds


def stamp_file(f: h5py.File) -> None:
    """Record the package version and the time of this change on an open file."""
    f.attrs["cubefit_version"] = __version__
    f.attrs["modified_utc"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def read_rebin(f: h5py.File, name: str = "/R_T") -> sp.csr_matrix:
    """The rebin operator as CSR ``(L, T)``, whatever way the file stores it.

    Accepts CubeFit's sparse group (``data``/``indices``/``indptr`` + ``shape``)
    and the seed's dense dataset in either orientation (attribute
    ``orientation`` ``"TL"``/``"LT"``; without it, the shape against ``/ObsPix``).
    """
    if name not in f:
        raise KeyError(f"{f.filename}: {name} missing; run H5Manager.ensure_rebin_and_resample()")
    obj = f[name]
    if isinstance(obj, h5py.Group):
        shape = tuple(int(v) for v in obj.attrs["shape"])
        return sp.csr_matrix((obj["data"][...], obj["indices"][...], obj["indptr"][...]), shape=shape)
    dense = obj[...]
    orient = obj.attrs.get("orientation", None)
    if orient is None:
        L = f["/ObsPix"].shape[0]
        orient = "LT" if dense.shape[0] == L and dense.shape[1] != L else "TL"
    orient = orient.decode() if isinstance(orient, bytes) else str(orient)
    return sp.csr_matrix(dense if orient == "LT" else dense.T)


# ----------------------------------------------------------------------------- manager

class H5Manager:
    """Create, populate and validate a CubeFit HDF5 file (the manual's ``H5Manager``).

    Parameters
    ----------
    path : the HDF5 file (created by :meth:`init_base` if missing).
    tem_pix : ``(T,)`` template grid, ln(λ/Å) pixel centres, uniform step.
    obs_pix : ``(L,)`` observed grid, ln(λ/Å) pixel centres, uniform step ≥ the template step.
    vel_pix : ``(V,)`` LOSVD velocity-bin centres in km/s, uniform, straddling 0.  May
        also be given to :meth:`populate_from_arrays`; see there for the default.
    config : settings; default :func:`cubefit.config.get_config`.
    """

    def __init__(self, path, tem_pix=None, obs_pix=None, vel_pix=None, *,
                 config: Config | None = None):
        self.path = Path(path)
        self.config = config or get_config()
        grid = lambda v, name: None if v is None else as_real_array(v, name)  # noqa: E731
        self.tem_pix = grid(tem_pix, "/TemPix (tem_pix)")
        self.obs_pix = grid(obs_pix, "/ObsPix (obs_pix)")
        self.vel_pix = grid(vel_pix, "/VelPix (vel_pix)")
        for v, name in ((self.tem_pix, "/TemPix (tem_pix)"), (self.obs_pix, "/ObsPix (obs_pix)")):
            if v is not None:
                check_log_grid(v, name)
                check_ln_lambda_range(v, name)
        if self.vel_pix is not None:
            check_vel_grid(self.vel_pix, "/VelPix (vel_pix)")

    # -- reading helpers ------------------------------------------------------------
    def _read(self, name):
        if not self.path.exists():
            return None
        with open_h5(self.path, "r", config=self.config) as f:
            return f[name][...] if name in f else None

    def _has_dims(self) -> bool:
        with open_h5(self.path, "r", config=self.config) as f:
            return "dims" in f.attrs

    def _crop_hint(self) -> str:
        with open_h5(self.path, "r", config=self.config) as f:
            return crop_hint(dict(f["/Templates"].attrs)) if "/Templates" in f else ""

    def dims(self) -> H5Dims:
        """Dimensions recorded in the file (after template cropping)."""
        with open_h5(self.path, "r", config=self.config) as f:
            if "dims" not in f.attrs:
                raise KeyError(f"{self.path}: no dimensions recorded; call init_base(H5Dims(...)) first")
            return H5Dims(**{k: int(v) for k, v in zip(f.attrs["dims_names"], f.attrs["dims"])})

    # -- init ----------------------------------------------------------------------------
    @writes_file("init_base")
    def init_base(self, dims: H5Dims, *, overwrite: bool = False) -> None:
        """Create the file with its dimensions and (if given) the spectral grids.

        On an existing file with the same dimensions this only (re)writes the grids
        it was given; different dimensions are refused unless ``overwrite=True``,
        which starts a new, empty file.  Grids that differ from those of a populated
        file are refused too: its data and products are on the stored grids (pass new
        grids together with their data to :meth:`populate_from_arrays`).
        """
        if not isinstance(dims, H5Dims):
            raise TypeError(f"init_base expects H5Dims(...), got {type(dims).__name__}")
        for grid, n, name in ((self.tem_pix, dims.nTSpec, "/TemPix (tem_pix)"),
                              (self.obs_pix, dims.nLSpec, "/ObsPix (obs_pix)"),
                              (self.vel_pix, dims.nVel, "/VelPix (vel_pix)")):
            if grid is not None and grid.size != n:
                raise ValueError(f"{name} has {grid.size} pixels but H5Dims says {n}; "
                                 "make the dimensions match the grid")
        fresh = overwrite or not self.path.exists()
        if not fresh:
            old = self.dims()
            if old.nSpat != dims.nSpat or old.nLSpec != dims.nLSpec or old.nComp != dims.nComp \
                    or old.nPop != dims.nPop or old.nVel != dims.nVel:
                raise ValueError(f"{self.path} already holds dims {old}, not {dims}; "
                                 "use another file or init_base(..., overwrite=True) to start afresh")
            self._refuse_grid_change()
        if fresh and self.path.exists():
            tmp = self.path.with_name(f".{self.path.name}.new-{os.getpid()}")
            try:
                self._write_base(tmp, dims, new=True)
                os.replace(tmp, self.path)
            finally:
                if tmp.exists():
                    tmp.unlink()
            return
        self._write_base(self.path, dims, new=fresh)

    def _refuse_grid_change(self) -> None:
        """``ValueError`` if the grids given would replace those of a populated file."""
        with open_h5(self.path, "r", config=self.config) as f:
            for grid, name in ((self.obs_pix, "/ObsPix"), (self.vel_pix, "/VelPix")):
                if grid is not None and name in f and "/DataCube" in f:
                    check_grid_unchanged(f[name][...], grid, name, self.path)

    def _write_base(self, path, dims, new):
        with edit_h5(Path(path), self.config) as f:
            if new:
                f.attrs["created_utc"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
                f.attrs["dims_names"] = list(asdict(dims))
                f.attrs["dims"] = np.array(list(asdict(dims).values()), dtype=np.int64)
                f.attrs["requested_dims"] = f.attrs["dims"]
            if self.tem_pix is not None and (new or "/Templates" not in f):
                write_dataset(f, "/TemPix", self.tem_pix)
            if self.obs_pix is not None:
                write_dataset(f, "/ObsPix", self.obs_pix)
            if self.vel_pix is not None:
                write_dataset(f, "/VelPix", self.vel_pix)
            stamp_file(f)

    # -- populate ------------------------------------------------------------------------
    @writes_file("populate")
    def populate_from_arrays(self, *, losvd, datacube, templates, mask=None, vel_pix=None,
                             noise=None, orbit_weights=None, pop_axes=None,
                             axis_units=None, data_unit=None, template_unit=None) -> H5Dims:
        """Validate and store the fit's inputs; returns the stored dimensions.

        Parameters
        ----------
        losvd : ``(S, V, C)`` non-negative LOSVD histograms on ``vel_pix``.
        datacube : ``(S, L)`` observed spectra on ``/ObsPix``.  ``(L, S)`` is accepted
            only when unambiguous (S ≠ L) and is transposed, with a log message.
        templates : ``(P, T)`` template spectra on ``/TemPix``, or a
            :class:`cubefit.templates.TemplateLibrary` on that grid (its population
            axes, their units and its flux unit are then used).  They are cropped to
            the observed range plus the LOSVD kernel half-width ``K`` (+2 pixels);
            a template grid that does not reach that far is an error.
        mask : ``(L,)`` bool, True = use this pixel.  Default: all used.
        vel_pix : ``(V,)`` km/s.  Default: the grid given to the constructor, else the
            file's ``/VelPix``, else (with a warning) V bins of one template pixel
            (``velscale_T``) centred on 0 — only valid if the histograms were made so.
        noise : ``(S, L)`` 1-σ noise, positive (``inf`` ignores a pixel).
        orbit_weights : ``(C,)`` target light fractions (stored unit-sum in ``/CompWeights``).
        pop_axes : mapping ``name -> values`` of the population grid in template order
            (row-major), e.g. ``{"age": ages_gyr, "metal": mh_dex}``; the product of
            the lengths must be P.  ``axis_units`` gives their units.
        data_unit, template_unit : strings stored as the ``units`` of the flux datasets.

        Beyond shapes and values, inputs that cannot be fitted are refused
        (:mod:`cubefit.validate`): a component whose LOSVD is zero in every spaxel, a
        template that is zero over the range used, noise that leaves no finite weight,
        a LOSVD with its axes in another order, sizes that contradict the dimensions the
        file was created with.  New inputs that differ from the stored ones remove the
        products made from the old ones, with a warning (:mod:`cubefit.provenance`).
        """
        cfg = self.config
        tem_pix = self.tem_pix if self.tem_pix is not None else self._read("/TemPix")
        obs_pix = self.obs_pix if self.obs_pix is not None else self._read("/ObsPix")
        tem_from_file = self.tem_pix is None and tem_pix is not None
        stored_dims = self.dims() if self.path.exists() and self._has_dims() else None
        if tem_pix is None or obs_pix is None:
            raise ValueError(f"{self.path}: /TemPix and /ObsPix are unknown; pass tem_pix= and "
                             "obs_pix= to H5Manager(...) and call init_base first")
        dlog_t = check_log_grid(tem_pix, "/TemPix")
        dlog_l = check_log_grid(obs_pix, "/ObsPix")
        if dlog_l < dlog_t * (1 - 1e-9):
            raise ValueError(f"/ObsPix step {C_KMS * dlog_l:.4g} km/s is finer than the /TemPix step "
                             f"{C_KMS * dlog_t:.4g} km/s; rebin the templates to a finer velscale")
        L, T_in = obs_pix.size, tem_pix.size

        if vel_pix is None:
            vel_pix = self.vel_pix if self.vel_pix is not None else self._read("/VelPix")
        H = as_real_array(losvd, "/LOSVD (losvd)")
        Y = as_real_array(datacube, "/DataCube (datacube)")
        if Y.ndim != 2:
            raise ValueError(f"/DataCube (datacube): expected (S, L) with L = len(/ObsPix) = {L}, got "
                             f"shape {Y.shape}")
        losvd_axes(H.shape, spaxels_of(Y.shape, L), None if vel_pix is None else np.size(vel_pix))
        S, V, C = H.shape
        if vel_pix is None:
            if V % 2 == 0:
                raise ValueError(f"/VelPix: not given and cannot be defaulted for an even number "
                                 f"of bins V={V}; pass vel_pix= (km/s)")
            vel_pix = (np.arange(V) - V // 2) * C_KMS * dlog_t
            log.warning("vel_pix not given: assuming LOSVD bins of one template pixel "
                        "(%.3f km/s) centred on 0, range ±%.1f km/s; pass vel_pix= if not so",
                        C_KMS * dlog_t, vel_pix[-1])
        vel_pix = as_real_array(vel_pix, "/VelPix (vel_pix)")
        check_vel_grid(vel_pix, "/VelPix")
        if vel_pix.size != V:
            raise ValueError(f"/VelPix has {vel_pix.size} bins but /LOSVD (S, V, C) has V={V}; "
                             "give a histogram per velocity bin")
        check_losvd(H, vel_pix, "/LOSVD", axis=1)

        if Y.shape == (S, L) and S == L:
            log.info("/DataCube is square (S = L = %d): taken as (S, L)", S)
        elif Y.shape != (S, L):
            if Y.shape == (L, S):
                log.info("/DataCube given as (L, S) = %s: transposed to (S, L)", Y.shape)
                Y = np.ascontiguousarray(Y.T)
            else:
                raise ValueError(f"/DataCube (datacube): expected (S, L) = ({S}, {L}) from /LOSVD and "
                                 f"/ObsPix, got shape {Y.shape}")
        if not np.all(np.isfinite(Y)):
            bad = np.argwhere(~np.isfinite(Y))
            raise ValueError(f"/DataCube: {len(bad)} non-finite values (first at spaxel {bad[0][0]}, "
                             f"pixel {bad[0][1]}); replace them by 0 and give noise=np.inf there, "
                             "or mask those wavelengths")

        if hasattr(templates, "flux") and hasattr(templates, "ln_lam"):  # a TemplateLibrary
            lib = templates
            if lib.ln_lam.shape != tem_pix.shape or not np.allclose(lib.ln_lam, tem_pix, rtol=0,
                                                                     atol=1e-9):
                raise ValueError("/Templates (templates): the library's ln_lam differs from /TemPix; "
                                 "create H5Manager with tem_pix=library.ln_lam")
            pop_axes = dict(lib.pop_axes) if pop_axes is None else pop_axes
            axis_units = dict(lib.axis_units) if axis_units is None else axis_units
            template_unit = template_unit or getattr(lib, "flux_unit", None)
            templates = lib.flux
        Tm = as_real_array(templates, "/Templates (templates)")
        if Tm.ndim != 2 or Tm.shape[1] != T_in:
            crop = self._crop_hint() if tem_from_file else ""
            raise ValueError(f"/Templates (templates): expected (P, T) with T = len(/TemPix) = {T_in}, "
                             f"got shape {Tm.shape}{crop}")
        P = Tm.shape[0]
        if not np.all(np.isfinite(Tm)):
            bad = np.argwhere(~np.isfinite(Tm))
            raise ValueError(f"/Templates: {len(bad)} non-finite values (first at template {bad[0][0]}, "
                             f"pixel {bad[0][1]}); clean or drop those templates")

        if mask is None:
            m = np.ones(L, dtype=bool)
        else:
            m = as_real_array(mask, "/Mask (mask)", dtype=None)
            if m.shape != (L,):
                raise ValueError(f"/Mask (mask): expected ({L},) booleans, got shape {m.shape}")
            if m.dtype != bool:
                if not np.all(np.isin(m, (0, 1))):
                    raise ValueError("/Mask (mask): expected booleans (True = use), got other values")
                m = m.astype(bool)
            if not m.any():
                raise ValueError("/Mask (mask): every pixel is masked out (all False); "
                                 "True means use the pixel")

        sig = None
        if noise is not None:
            sig = as_real_array(noise, "/Noise (noise)")
            if sig.shape == (L, S) and sig.shape != (S, L):
                sig = sig.T
            if sig.shape != (S, L):
                raise ValueError(f"/Noise (noise): expected (S, L) = ({S}, {L}), got shape {sig.shape}")
            if np.any(np.isnan(sig)) or np.any(sig <= 0):
                n_bad = int(np.sum(np.isnan(sig) | (sig <= 0)))
                raise ValueError(f"/Noise: {n_bad} values are NaN or ≤ 0; noise must be positive "
                                 "(use np.inf to ignore a pixel)")

        cw = None
        if orbit_weights is not None:
            cw = as_real_array(orbit_weights, "/CompWeights (orbit_weights)").ravel()
            if cw.size != C or not np.all(np.isfinite(cw)) or np.any(cw < 0) or cw.sum() <= 0:
                raise ValueError(f"/CompWeights (orbit_weights): expected {C} finite non-negative "
                                 f"fractions with a positive sum, got {np.array2string(cw, precision=3)}")
            cw = cw / cw.sum()

        axes = {}
        if pop_axes is not None:
            axes = {str(k): as_real_array(v, f"/PopAxes/{k} (pop_axes)").ravel()
                    for k, v in dict(pop_axes).items()}
            shape = tuple(v.size for v in axes.values())
            if int(np.prod(shape)) != P:
                raise ValueError(f"pop_axes: grid shape {shape} holds {int(np.prod(shape))} populations "
                                 f"but /Templates has P={P}; order templates row-major over the axes")

        # Template coverage: the observed range plus the kernel half-width (docs/data-model.md).
        K = kernel_half_width(vel_pix, dlog_t)
        obs_edges = edges_from_centres(obs_pix)
        tem_edges = edges_from_centres(tem_pix)
        need_lo = obs_edges[0] - (K + TEMPLATE_PAD_PX) * dlog_t
        need_hi = obs_edges[-1] + (K + TEMPLATE_PAD_PX) * dlog_t
        short_lo = (tem_edges[0] - need_lo) / dlog_t
        short_hi = (need_hi - tem_edges[-1]) / dlog_t
        if short_lo > 1e-6 or short_hi > 1e-6:
            raise ValueError(
                f"/TemPix covers {np.exp(tem_edges[0]):.2f}-{np.exp(tem_edges[-1]):.2f} Å but the observed "
                f"range {np.exp(obs_edges[0]):.2f}-{np.exp(obs_edges[-1]):.2f} Å plus the LOSVD kernel "
                f"half-width K={K} px (max|VelPix|={np.max(np.abs(vel_pix)):.0f} km/s) needs "
                f"{np.exp(need_lo):.2f}-{np.exp(need_hi):.2f} Å: short by {max(short_lo, 0):.1f} px "
                f"blue, {max(short_hi, 0):.1f} px red; use wider templates or a narrower velocity grid")
        i0 = int(np.floor((need_lo - tem_edges[0]) / dlog_t + 1e-9))
        i1 = T_in - int(np.floor((tem_edges[-1] - need_hi) / dlog_t + 1e-9))
        tem_c = tem_pix[i0:i1]
        T = tem_c.size

        for arr, name in ((Y, "/DataCube"), (Tm, "/Templates"), (H, "/LOSVD")):
            check_magnitude(arr, name)
        check_templates_not_zero(Tm[:, i0:i1], (np.exp(need_lo), np.exp(need_hi)))
        check_components_have_light(H)
        if sig is not None:
            check_noise_weights(sig, m)
        if stored_dims is not None:
            check_dims_match(asdict(stored_dims), dict(nSpat=S, nLSpec=L, nVel=V, nComp=C, nPop=P),
                             f"{self.path}")

        no_light = np.flatnonzero(H.sum(axis=(1, 2)) <= 0)
        if no_light.size:
            log.warning("%d spaxels have all-zero LOSVDs in every component (model is zero there): %s",
                        no_light.size, no_light[:20].tolist())

        flux = (Y[:, m].mean(axis=1)).astype(np.float64)
        Tm_c = np.ascontiguousarray(Tm[:, i0:i1], dtype=np.float64)
        digests, fp = inputs_fingerprint({"/Templates": Tm_c, "/TemPix": tem_c, "/ObsPix": obs_pix,
                                          "/VelPix": vel_pix, "/LOSVD": H, "/DataCube": Y, "/Mask": m,
                                          "/Noise": sig, "/PopAxes": axes})

        dims = H5Dims(nSpat=S, nLSpec=L, nTSpec=T, nVel=V, nComp=C, nPop=P)
        s_chunk = max(1, min(S, (1 << 20) // (8 * max(L, V * C))))
        with edit_h5(self.path, cfg) as f:
            if "dims" not in f.attrs:
                f.attrs["created_utc"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            f.attrs["dims_names"] = list(asdict(dims))
            f.attrs["dims"] = np.array(list(asdict(dims).values()), dtype=np.int64)
            drop_stale_products(f, fp, digests, cfg.lambda_weights_dset, where=self.path)
            f.attrs["inputs_fingerprint"] = fp
            f.attrs["input_digests"] = digests
            write_dataset(f, "/TemPix", tem_c)
            write_dataset(f, "/ObsPix", obs_pix)
            write_dataset(f, "/VelPix", vel_pix)
            ds = write_dataset(f, "/Templates", Tm_c,
                               units=template_unit or SCHEMA["/Templates"][0],
                               description=SCHEMA["/Templates"][1])
            ds.attrs["crop_i_lo"], ds.attrs["crop_i_hi"], ds.attrs["T_len_in"] = i0, i1, T_in
            ds.attrs["kernel_half_width_px"] = K
            ds.attrs["velscale_kms"] = C_KMS * dlog_t
            ds.attrs["pop_axes"] = list(axes)
            ds.attrs["pop_shape"] = np.array([v.size for v in axes.values()] or [P], dtype=np.int64)
            write_dataset(f, "/DataCube", Y, chunks=(s_chunk, L),
                          units=data_unit or SCHEMA["/DataCube"][0],
                          description=SCHEMA["/DataCube"][1])
            write_dataset(f, "/LOSVD", H, chunks=(s_chunk, V, C))
            write_dataset(f, "/Mask", m)
            if sig is not None:
                write_dataset(f, "/Noise", sig, chunks=(s_chunk, L),
                              units=data_unit or SCHEMA["/Noise"][0], description=SCHEMA["/Noise"][1])
            elif "/Noise" in f:
                del f["/Noise"]
            if cw is not None:
                write_dataset(f, "/CompWeights", cw)
            if "/PopAxes" in f:
                del f["/PopAxes"]
            for k, v in axes.items():
                ds = write_dataset(f, f"/PopAxes/{k}", v,
                                   units=(axis_units or {}).get(k, _default_axis_unit(k)))
            ds = write_dataset(f, "/HyperCube/data_flux", flux,
                               units=data_unit or SCHEMA["/HyperCube/data_flux"][0],
                               description=SCHEMA["/HyperCube/data_flux"][1])
            ds.attrs["source"] = "/DataCube + /Mask"
            if "/R_T" in f:  # the template grid may have changed with the crop
                del f["/R_T"]
            stamp_file(f)
        return dims

    # -- rebin ---------------------------------------------------------------------------
    @writes_file("rebin")
    def ensure_rebin_and_resample(self, *, force: bool = False) -> sp.csr_matrix:
        """Build ``/R_T`` (sparse CSR ``(L, T)``) from the stored grids if missing or stale.

        Returns the operator.  The grids it was built from are fingerprinted in its
        attributes, so a stale operator is rebuilt, never silently reused.
        """
        with open_h5(self.path, "r", config=self.config) as f:
            for name in ("/TemPix", "/ObsPix"):
                if name not in f:
                    raise KeyError(f"{self.path}: {name} missing; call init_base/populate_from_arrays first")
            tem, obs = f["/TemPix"][...], f["/ObsPix"][...]
            key = digest(tem, obs)
            if not force and "/R_T" in f and f["/R_T"].attrs.get("grids_fingerprint", "") == key:
                return read_rebin(f)
        check_log_grid(tem, "/TemPix")
        check_log_grid(obs, "/ObsPix")
        R = rebin_matrix(tem, obs)
        rows = np.asarray(R.sum(axis=1)).ravel()
        if np.any(np.abs(rows - 1) > 1e-9):
            bad = np.flatnonzero(np.abs(rows - 1) > 1e-9)
            raise ValueError(f"/R_T: observed pixels {bad[:10].tolist()} are not fully covered by "
                             "/TemPix; extend the templates")
        with edit_h5(self.path, self.config) as f:
            if "/R_T" in f:
                del f["/R_T"]
            g = f.create_group("/R_T")
            g.attrs["units"], g.attrs["description"] = SCHEMA["/R_T"]
            g.attrs["format"], g.attrs["orientation"] = "csr", "LT"
            g.attrs["shape"] = np.array(R.shape, dtype=np.int64)
            g.attrs["grids_fingerprint"] = key
            write_dataset(f, "/R_T/data", R.data)
            write_dataset(f, "/R_T/indices", R.indices.astype(np.int32))
            write_dataset(f, "/R_T/indptr", R.indptr.astype(np.int64))
            stamp_file(f)
        return R


def _default_axis_unit(name: str) -> str:
    return {"age": "Gyr", "metal": "dex", "metallicity": "dex", "alpha": "dex",
            "imf": "slope"}.get(name.lower(), "")


# ----------------------------------------------------------------------------- describe

def describe_file(path, config: Config | None = None) -> dict:
    """Summary of a CubeFit file: dims, datasets (shape, dtype, units, meaning), attrs.

    Returns ``{"path", "attrs": {...}, "datasets": [(name, shape, dtype, units, meaning)],
    "stages": {stage: bool}, "stale": {product: reason}}``; a stage whose product was
    made from other inputs than the file holds is False and listed in ``stale``.
    """
    rows = []
    with open_h5(path, "r", config=config) as f:
        attrs = {k: _plain(v) for k, v in f.attrs.items()}

        def visit(name, obj):
            if isinstance(obj, h5py.Dataset):
                rows.append(("/" + name, tuple(obj.shape), str(obj.dtype),
                             _plain(obj.attrs.get("units", "")), _plain(obj.attrs.get("description", ""))))
        f.visititems(visit)
        stale = stale_products(f, (config or get_config()).lambda_weights_dset)
        stages = {
            "inputs": all(n in f for n in ("/Templates", "/DataCube", "/LOSVD", "/VelPix")),
            "rebin": "/R_T" in f,
            "hypercube": "/HyperCube/models" in f and "/HyperCube/models" not in stale,
            "lambda_weights": "/HyperCube/lambda_weights" in f and "/HyperCube/lambda_weights" not in stale,
            "fit": "/X_global" in f and "/X_global" not in stale,
        }
    return {"path": str(path), "attrs": attrs, "datasets": sorted(rows), "stages": stages, "stale": stale}


def _plain(v):
    if isinstance(v, bytes):
        return v.decode()
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, np.generic):
        return v.item()
    return v


@dataclass
class Inputs:
    """The fit's inputs read back from a file (float64 arrays).

    ``templates (P, T)``, ``tem_pix (T,)``, ``obs_pix (L,)``, ``vel_pix (V,)``,
    ``losvd (S, V, C)``, ``datacube (S, L)``, ``mask (L,)`` bool, ``noise (S, L)`` or
    None, ``R`` CSR ``(L, T)``, ``data_flux (S,)``, ``comp_weights (C,)`` or None,
    ``pop_axes`` {name: values}.
    """

    path: Path
    dims: H5Dims
    templates: np.ndarray
    tem_pix: np.ndarray
    obs_pix: np.ndarray
    vel_pix: np.ndarray
    losvd: np.ndarray
    datacube: np.ndarray
    mask: np.ndarray
    noise: np.ndarray | None
    R: sp.csr_matrix
    data_flux: np.ndarray
    comp_weights: np.ndarray | None
    pop_axes: dict

    @property
    def dlog_t(self) -> float:
        return check_log_grid(self.tem_pix, "/TemPix")

    @property
    def ivar(self) -> np.ndarray | None:
        """Inverse variance ``(S, L)`` from ``/Noise`` (0 where the noise is infinite)."""
        if self.noise is None:
            return None
        with np.errstate(over="ignore"):        # noise above ~1e154: weight 0, as for inf
            return 1.0 / self.noise**2


def read_inputs(path, config: Config | None = None, spaxels: slice | None = None) -> Inputs:
    """Read a populated file's inputs (run ``ensure_rebin_and_resample`` first).

    ``spaxels``: read only these spaxels' data, LOSVDs, noise and data flux (a process of
    a distributed fit reads its own share, never the whole cube); default all.
    """
    sel = slice(None) if spaxels is None else spaxels
    with open_h5(path, "r", config=config) as f:
        missing = [n for n in ("/Templates", "/TemPix", "/ObsPix", "/VelPix", "/LOSVD", "/DataCube")
                   if n not in f]
        if missing:
            raise KeyError(f"{path}: missing {missing}; run H5Manager.populate_from_arrays first")
        get = lambda n: f[n][...] if n in f else None  # noqa: E731
        dims = H5Dims(**{k: int(v) for k, v in zip(f.attrs["dims_names"], f.attrs["dims"])})
        mask = get("/Mask")
        rows = lambda n: f[n][sel] if n in f else None  # noqa: E731
        return Inputs(path=Path(path), dims=dims, templates=get("/Templates"), tem_pix=get("/TemPix"),
                      obs_pix=get("/ObsPix"), vel_pix=get("/VelPix"), losvd=rows("/LOSVD"),
                      datacube=rows("/DataCube"),
                      mask=np.ones(dims.nLSpec, bool) if mask is None else mask.astype(bool),
                      noise=rows("/Noise"), R=read_rebin(f), data_flux=rows("/HyperCube/data_flux"),
                      comp_weights=get("/CompWeights"),
                      pop_axes={k: v[...] for k, v in f["/PopAxes"].items()} if "/PopAxes" in f else {})
