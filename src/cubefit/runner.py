"""The global-fit runner: the CubeFit manual's ``PipelineRunner`` (docs/fitting.md, docs/data-model.md).

::

    from CubeFit.pipeline_runner import PipelineRunner
    runner = PipelineRunner("galaxy.h5")
    x, stats = runner.solve_all_mp_batched(epochs=6, lr=0.6, project_nonneg=True,
                                           processes=2, blas_threads=1, orbit_weights=orbit_w)

What a call does:

1. reads the fit's settings from the file: the normalisation (``norm.mode`` and
   ``amp_mode`` attributes of ``/HyperCube`` when a cube was built, else ``"data"`` and
   ``"sum"`` as the manual's ``build_hypercube``; ``norm_mode=`` chooses it when no
   complete cube says otherwise), the population grid (``pop_shape`` attribute of
   ``/Templates``);
2. reads the λ-weights with :func:`cubefit.weights.read_lambda_weights` (which honours
   ``CUBEFIT_LAMBDA_WEIGHTS_ENABLE``/``_AUTO`` and may create them) and prints the
   manual's banner ``λ-weights: min … max … mean …`` over the good pixels;
3. builds the matrix-free :class:`cubefit.operator.LOSVDOperator` from the file (mask,
   λ-weights, inverse variance ``1/Noise²``).  A materialised ``/HyperCube/models`` is
   not read: the operator gives the same numbers (its tests check the parity to 1e-6)
   without reading ``S·C·P·L`` floats from disk, and in float64;
4. appends the priors (:func:`cubefit.solvers.priors.with_priors`): ``orbit_weights``
   only when passed — ``/CompWeights`` in the file is *not* used implicitly, so a fit
   never changes because a file happens to carry targets; pass
   ``orbit_weights=h5["/CompWeights"][...]`` to use them;
5. solves with :func:`cubefit.solvers.solve` (``method``, ``tol`` → ``gtol``, ``**kw`` →
   the solver), under ``threadpool_limits(blas_threads)``, the operator's tile threads
   set to ``processes``;
6. writes ``/X_global`` and ``/Fit`` atomically (:func:`write_fit`) and returns
   ``(x, stats)``.

The seed's Kaczmarz knobs
-------------------------
``epochs``, ``lr`` and ``pixels_per_aperture`` set the seed's multiprocess Kaczmarz
sweeps.  CubeFit's solvers are certified instead: they stop when the relative projected
gradient falls below ``tol`` (the KKT test), so those knobs neither limit nor steer
them.  They are accepted (the manual's call runs verbatim), validated, recorded in the
``/Fit`` attributes, and a log line says they were not used.  Iteration limits of a
solver can be passed through ``**kw`` (e.g. ``max_iter=``, ``max_passes=``).

Parallelism (measured)
----------------------
``processes`` is the number of worker *threads* that apply the operator over spaxel
tiles (numpy, FFT and BLAS calls release the GIL, so threads use the cores without
pickling the kernel spectra to worker processes); ``blas_threads`` caps every BLAS /
OpenMP pool for the duration of the solve (:mod:`threadpoolctl`).  Keep ``processes ×
blas_threads`` at or below the free cores.  Measured on the 2-core development machine
with ``benchmarks/parallel.py`` (E-MILES mocks; table in docs/benchmarks.md): operator threads (``processes=2``) speed the
applies up by 1.2-1.35×; extra BLAS threads help the Gram products a little (1.1-1.3×)
but slow the working-set solve (0.74-0.93×), and both together oversubscribe the cores.
When another job occupies a core, ``blas_threads=2`` made the Gram build 2.5-4× *slower*
(OpenBLAS threads spin waiting for a descheduled partner), while ``processes=2`` degraded
gracefully.  Recommended on 2 cores: ``processes=2, blas_threads=1``.  The default is
``processes=1`` and the BLAS pools as found.  With ``CUBEFIT_BACKEND=cupy`` (or
``torch``) the operator runs on the GPU and ``processes`` is ignored.

Tracking
--------
With ``track=True`` a :class:`cubefit.tracking.FitTracker` sidecar is opened for the
run.  Every solver iteration is streamed live through :func:`cubefit.solvers.solve`'s
``callback``: a step (passes, cost, optimality) and an "auto" snapshot of the latest
evaluated ``x`` (the "last" snapshot, and "best" when the cost improved), so a solve
killed midway leaves a snapshot to resume from; the final ``x`` is snapshotted as
"best" and "last" at the end.  The sidecar's ``wall_s`` is the time a record was
written; the solver's own clock is in ``/Fit/history/time``.

Resume
------
``resume=True`` warm-starts from the newest valid "last" snapshot of this file's
sidecars (:func:`cubefit.tracking.latest_snapshot`), else from ``/X_global``, else from
zero; an explicit ``x0`` wins over both.  The source is recorded as ``/Fit`` attribute
``x0_source``.

Atomic writes
-------------
:func:`write_fit` stages the new ``X_global`` and ``Fit`` under ``/_FitStaging``,
then commits: deletes the old ``/X_global`` and ``/Fit`` and moves the staged ones in
(two link moves), then deletes the staging group.  All of it happens inside one
crash-safe edit (:func:`cubefit.h5io.edit_h5`): the file changes only when the edit
commits, through a rollback journal, and the write costs what it writes whatever the
size of the file, so a run killed at any moment leaves the previous complete result.
:func:`read_fit` still honours a complete staging group without ``/X_global``, which
files written in place by earlier versions can hold.

One writer at a time
--------------------
A solve holds the file's writer lock (:mod:`cubefit.locking`) from start to end, so a
second solve, a build or a populate of the same file fails at once naming it (or
waits, ``CUBEFIT_LOCK_WAIT``).  Before solving it checks that the result can be
written (the file and its directory writable, the disk not full); if the final write
still fails, the fitted ``x`` is saved beside the file (or in ``$TMPDIR``) as
``<file>.X_global.<UTC time>.npy`` and the error says where.
"""
from __future__ import annotations

import contextlib
import json
import logging
import time
from pathlib import Path

import h5py
import numpy as np
from threadpoolctl import threadpool_limits

from . import __version__
from .config import Config, get_config
from .hypercube import MODELS, cube_status
from .losvd import NORM_MODES
from .operator import LOSVDOperator
from .provenance import dataset_digest, stale_products
from .regul_auto import UNUSED_ATTRS as REGUL_UNUSED, resolve_regul
from .schema_extra import FIT_ATTRS as FIT_ATTRS_EXTRA
from .solvers import STATUS, solve
from .solvers.priors import with_priors
from .diskspace import save_fallback
from .h5io import check_unchanged, check_writable, edit_h5, file_state
from .locking import writes_file
from .store import SCHEMA, open_h5, stamp_file, write_dataset
from .tracking import FitTracker, latest_snapshot
from .uncertainties import UNUSED_ATTRS as MC_UNUSED, check_nmonte, monte_carlo_for_file
from .weights import read_lambda_weights, weights_summary

log = logging.getLogger(__name__)

__all__ = ["PipelineRunner", "write_fit", "read_fit", "FIT_ATTRS", "STAGING"]

STAGING = "/_FitStaging"
"""Group where :func:`write_fit` assembles a new result before committing it."""

_DEFAULT_NORM, _DEFAULT_AMP = "data", "sum"
_RESULT_BYTES_PER_WEIGHT = 64
"""Bytes of /X_global and /Fit per weight, generously (x, light, history rows)."""

FIT_ATTRS: dict[str, tuple[str, str]] = {
    # result
    "solver": ("", "solver that produced /X_global (a cubefit.solvers.METHODS name)"),
    "status": ("", "solver status: 1 KKT test passed, 2 stalled, 0 limit reached, -1 failure, "
               "-2 degenerate (zero model of non-zero data)"),
    "success": ("bool", "status == 1: /X_global is certified optimal to the tolerance tol"),
    "message": ("", "solver message"),
    "cost": ("(data flux density)^2 x inverse variance",
             "total objective: data_cost + penalty_orbit + penalty_regul + penalty_ridge"),
    "data_cost": ("(data flux density)^2 x inverse variance",
                  "data term 1/2 sum_s sum_l m w ivar (Y - A x)^2 (docs/data-model.md)"),
    "penalty_orbit": ("as cost", "orbit-weight penalty 1/2 ||mu (L_c - f_c L)||^2 (0: none)"),
    "penalty_regul": ("as cost", "Tikhonov penalty 1/2 regul sigma^2 ||D x||^2 (0: none)"),
    "penalty_ridge": ("as cost", "ridge penalty 1/2 ridge sigma^2 ||x||^2 (0: none)"),
    "optimality": ("dimensionless", "relative projected-gradient norm ||pg||_inf / ||A^T y||_inf"),
    "nit": ("iterations", "solver outer iterations"),
    "passes": ("operator applications", "applications of A or A^T (each counts 1)"),
    "gram_columns": ("columns", "columns of A formed explicitly for Gram blocks"),
    "time_total_s": ("s", "solver wall time"),
    "time_operator_s": ("s", "solver time in operator applications"),
    "time_gram_s": ("s", "solver time forming Gram blocks"),
    "time_setup_s": ("s", "time to read the file, build the operator and the priors"),
    "orbit_mu": ("sqrt(units of cost) / (data flux density x pixels)", "orbit row scale mu = orbit_strength ||y~|| / "
                 "L_data (NaN: no orbit weights)"),
    "prior_scale": ("sqrt(units of cost) per unit template weight",
                    "column scale sigma = sqrt(mean diag A~^T A~) of regul and ridge (NaN: unused)"),
    "x0_source": ("", "warm start: none, x0, snapshot <sidecar path>, or /X_global"),
    "sidecar": ("", "fit-tracker sidecar file of this run ('' when track=False)"),
    "operator": ("", "model operator used"),
    # settings
    "setting.epochs": ("epochs", "seed Kaczmarz knob; recorded, not used by certified solvers"),
    "setting.lr": ("dimensionless", "seed Kaczmarz learning rate; recorded, not used"),
    "setting.pixels_per_aperture": ("pixels", "seed Kaczmarz row batching; recorded, not used"),
    "setting.project_nonneg": ("bool", "x >= 0 (always True)"),
    "setting.processes": ("threads", "operator worker threads over spaxel tiles"),
    "setting.blas_threads": ("threads", "BLAS/OpenMP thread cap during the solve ('none': as found)"),
    "setting.backend": ("", "array backend of the operator's applies (CUBEFIT_BACKEND)"),
    "setting.method": ("", "solver requested ('auto': chosen by cubefit.solvers.solve)"),
    "setting.tol": ("dimensionless", "KKT tolerance on the relative projected gradient"),
    "setting.orbit_strength": ("dimensionless", "orbit-weight strength s (see cubefit.solvers.priors)"),
    "setting.regul": ("dimensionless", "Tikhonov strength"),
    "setting.regul_order": ("", "order of the Tikhonov differences (1 or 2)"),
    "setting.ridge": ("dimensionless", "ridge strength"),
    "setting.pop_shape": ("populations", "population grid of one component (row-major)"),
    "setting.norm_mode": ("", "normalisation of the model columns (docs/data-model.md)"),
    "setting.amp_mode": ("", "LOSVD amplitude: sum or trapz"),
    "setting.lambda_weights": ("bool", "λ-weights applied (CUBEFIT_LAMBDA_WEIGHTS_ENABLE)"),
    "setting.ivar": ("bool", "inverse variance 1/Noise^2 applied"),
    "setting.resume": ("bool", "warm start from the last snapshot or /X_global was asked for"),
    "setting.track": ("bool", "fit tracker sidecar written"),
    "setting.time_limit": ("s", "time limit of the solve ('none': no limit)"),
    "setting.solver_options": ("", "extra solver keywords, JSON"),
    # provenance
    "cubefit_version": ("", "package version that wrote the fit"),
    "created_utc": ("", "UTC time the fit was written"),
    "inputs_fingerprint": ("", "fingerprint of the inputs the fit used (root attribute)"),
    "lambda_weights_sha256": ("", "digest of the stored λ-weights dataset the fit used ('none': "
                              "no stored weights used)"),
}
"""``/Fit`` attribute → (units, meaning); stored with the group as JSON (``attr_units``,
``attr_descriptions``) so the file describes itself.  :func:`write_fit` refuses others."""
FIT_ATTRS.update(FIT_ATTRS_EXTRA)        # regul="auto", Monte-Carlo uncertainties


def _none(v):
    """HDF5 attributes cannot hold None: store it as the string 'none'."""
    return "none" if v is None else v


def _positive_int(name, v, allow_none=True):
    if v is None and allow_none:
        return None
    if isinstance(v, bool) or int(v) != v or v < 1:
        raise ValueError(f"{name}: expected a positive integer{' or None' if allow_none else ''}, "
                         f"got {v!r}")
    return int(v)


# ----------------------------------------------------------------------------- file I/O

def write_fit(h5, x, attrs: dict, datasets: dict, *, config: Config | None = None) -> None:
    """Replace ``/X_global`` by ``x (C·P,)`` and ``/Fit`` by ``attrs`` + ``datasets``, atomically.

    ``attrs``: keys of :data:`FIT_ATTRS`; ``datasets``: ``{name: array}`` written as
    ``/Fit/<name>`` with the units and meaning of :data:`cubefit.store.SCHEMA`.  See the
    module docstring for the staging and commit protocol.
    """
    cfg = config or get_config()
    unknown = sorted(set(attrs) - set(FIT_ATTRS))
    if unknown:
        raise ValueError(f"attrs: {unknown} have no units and meaning in cubefit.runner.FIT_ATTRS; "
                         "add them there")
    unknown = sorted(k for k in datasets if f"/Fit/{k}" not in SCHEMA)
    if unknown:
        raise ValueError(f"datasets: {['/Fit/' + k for k in unknown]} have no units and meaning in "
                         "cubefit.store.SCHEMA; add them there")
    x = np.asarray(x, dtype=np.float64).ravel()
    with edit_h5(Path(h5), cfg, operation="write_fit",
                 need_bytes=x.nbytes + sum(np.asarray(v).nbytes for v in datasets.values())) as f:
        _stage(f, x, attrs, datasets)
        f.flush()
        _commit(f)
        f.flush()


def _stage(f: h5py.File, x, attrs: dict, datasets: dict) -> None:
    """Assemble the new result under :data:`STAGING` (a leftover staging group is dropped)."""
    if STAGING in f:
        del f[STAGING]
    stage = f.create_group(STAGING)
    for name, data in {"/X_global": x, **{f"/Fit/{k}": v for k, v in datasets.items()}}.items():
        units, meaning = SCHEMA[name]
        write_dataset(f, STAGING + name, np.asarray(data), units=units, description=meaning)
    fit = stage["Fit"] if "Fit" in stage else stage.create_group("Fit")
    fit.attrs["units"], fit.attrs["description"] = SCHEMA["/Fit"]
    fit.attrs["attr_units"] = json.dumps({k: FIT_ATTRS[k][0] for k in attrs})
    fit.attrs["attr_descriptions"] = json.dumps({k: FIT_ATTRS[k][1] for k in attrs})
    for k, v in attrs.items():
        fit.attrs[k] = _none(v)
    stage.attrs["complete"] = True          # read_fit may trust a staging group only with this


def _commit(f: h5py.File) -> None:
    """Swap the staged result in: the old one is unlinked, the new one moved (metadata only)."""
    for name in ("/X_global", "/Fit"):
        if name in f:
            del f[name]
    f.move(STAGING + "/X_global", "/X_global")
    f.move(STAGING + "/Fit", "/Fit")
    del f[STAGING]
    stamp_file(f)


def read_fit(h5, *, config: Config | None = None) -> tuple[np.ndarray, dict, dict]:
    """``(x, attrs, datasets)`` of the committed fit: ``/X_global``, ``/Fit`` attributes
    (``'none'`` read back as None) and ``/Fit`` datasets (name → array).

    If a kill interrupted an in-place commit (no ``/X_global`` but a complete staging
    group), the staged result is returned.  ``KeyError`` when there is no fit.
    """
    with open_h5(h5, "r", config=config) as f:
        root = f
        if "/X_global" not in f and STAGING in f and f[STAGING].attrs.get("complete", False) \
                and "X_global" in f[STAGING]:
            root = f[STAGING]
        if "X_global" not in root:
            raise KeyError(f"{h5}: no /X_global; run PipelineRunner(h5).solve_all_mp_batched() first")
        x = root["X_global"][...]
        fit = root["Fit"] if "Fit" in root else None
        attrs = {} if fit is None else {k: (None if isinstance(v, str) and v == "none" else v)
                                        for k, v in fit.attrs.items()}
        data = {}
        if fit is not None:
            def collect(name, obj):
                if isinstance(obj, h5py.Dataset):
                    data[name] = obj[...]
            fit.visititems(collect)
    return x, attrs, data


# ----------------------------------------------------------------------------- runner

PROGRESS_EVERY_S = 10.0
"""Seconds between two progress lines of a long solve (logged at INFO, which the CLI
shows)."""


def _progress_lines(method: str):
    """Solver progress callback that logs one line (iteration, passes, cost, optimality,
    elapsed time) at most every :data:`PROGRESS_EVERY_S` seconds, so a long solve is
    never silent."""
    every = PROGRESS_EVERY_S
    t0 = time.monotonic()
    last = [t0]

    def progress(step, x, cost):
        now = time.monotonic()
        if now - last[0] >= every:
            last[0] = now
            log.info("solve (%s): iteration %d, %d passes, cost %.8g, optimality %.3g, %.0f s",
                     method, step["it"], step["passes"], step["cost"], step["optimality"],
                     now - t0)
    return progress


def _both(*callbacks):
    """One progress callback that calls each of ``callbacks`` that is not None."""
    fns = [cb for cb in callbacks if cb is not None]

    def progress(step, x, cost):
        for fn in fns:
            fn(step, x, cost)
    return progress


def _stream_to(tracker):
    """Solver progress callback: every iteration's cost, optimality and passes go to the
    tracker live, and the latest evaluated point becomes its "auto" snapshot (best when
    the cost improved, last always), so a killed solve can resume from it."""
    def progress(step, x, cost):
        tracker.log_step(step["it"], step["cost"], optimality=step["optimality"],
                         passes=step["passes"])
        if x is not None:
            tracker.snapshot(x, cost, step["it"], kind="auto")
    return progress


class PipelineRunner:
    """Run the global fit of one galaxy file (the manual's entry point).

    Parameters
    ----------
    h5 : a populated CubeFit file (inputs and ``/R_T``; a built hypercube is optional).
    config : settings (default :func:`cubefit.config.get_config`).
    """

    def __init__(self, h5, *, config: Config | None = None):
        self.path = Path(h5)
        if not self.path.exists():
            raise FileNotFoundError(f"{self.path}: no such HDF5 file; create it with "
                                    "H5Manager(...).populate_from_arrays(...) first")
        self.config = config or get_config()

    def _file_settings(self, norm_mode: str | None = None) -> dict:
        """Normalisation (``norm_mode`` when given), population grid and fingerprint."""
        if norm_mode is not None and norm_mode not in NORM_MODES:
            raise ValueError(f"norm_mode: expected one of {NORM_MODES} or None (the file's), got "
                             f"{norm_mode!r}")
        with open_h5(self.path, "r", config=self.config) as f:
            hc = f["/HyperCube"].attrs if "/HyperCube" in f else {}
            text = lambda v: v.decode() if isinstance(v, bytes) else str(v)  # noqa: E731
            pop = f["/Templates"].attrs.get("pop_shape") if "/Templates" in f else None
            cube_norm = text(hc["norm.mode"]) if "norm.mode" in hc else None
            cube = cube_status(f) if MODELS in f else None
            if cube is not None and cube.stale:     # made from other inputs: not a constraint
                cube_norm = None
            if norm_mode is not None and cube_norm not in (None, norm_mode) \
                    and cube is not None and cube.complete:
                raise ValueError(f"{self.path}: norm_mode={norm_mode!r}, but /HyperCube/models is "
                                 f"built in norm_mode={cube_norm!r}; run convert_hypercube_norm("
                                 f"h5, to_mode={norm_mode!r}) first, or leave norm_mode out")
            dset = self.config.lambda_weights_dset
            return {"norm_mode": norm_mode or cube_norm or _DEFAULT_NORM,
                    "amp_mode": text(hc.get("amp_mode", _DEFAULT_AMP)),
                    "pop_shape": None if pop is None else tuple(int(v) for v in pop),
                    "has_x_global": "/X_global" in f and "/X_global" not in stale_products(f, dset),
                    "has_noise": "/Noise" in f,
                    "inputs_fingerprint": text(f.attrs.get("inputs_fingerprint", ""))}

    def _lambda_weights(self) -> np.ndarray:
        """The solver's λ-weights, with the manual's start-up banner (good pixels only)."""
        w = read_lambda_weights(self.path, config=self.config)
        with open_h5(self.path, "r", config=self.config) as f:
            mask = f["/Mask"][...].astype(bool) if "/Mask" in f else np.ones(w.size, bool)
        state = "" if self.config.lambda_weights_enable else " (disabled: CUBEFIT_LAMBDA_WEIGHTS_ENABLE=0)"
        print(f"[cubefit] λ-weights: {weights_summary(w, mask)}{state}", flush=True)
        return w

    def _weights_digest(self) -> str:
        """Digest of the stored λ-weights the solve uses ('none' when it uses none)."""
        with open_h5(self.path, "r", config=self.config) as f:
            dset = self.config.lambda_weights_dset
            return dataset_digest(f[dset]) if self.config.lambda_weights_enable and dset in f \
                else "none"

    def _snapshot_fingerprint(self, sidecar) -> str:
        """The inputs fingerprint a tracker sidecar's run recorded ('' if none)."""
        with open_h5(sidecar, "r", config=self.config) as f:
            meta = f.attrs.get("meta_json", "{}")
        return str(json.loads(meta.decode() if isinstance(meta, bytes) else meta)
                   .get("inputs_fingerprint", ""))

    def _warm_start(self, x0, resume: bool, n: int, has_x_global: bool, fingerprint: str):
        """``(x0 or None, source)`` following the resume rules of the module docstring;
        snapshots and ``/X_global`` made from other inputs are not used."""
        if x0 is not None:
            return np.asarray(x0, dtype=np.float64), "x0"
        if not resume:
            return None, "none"
        try:
            x, meta = latest_snapshot(self.path, "last")
            if x.size != n:
                log.warning("%s: the last snapshot has %d weights, this problem %d: ignored",
                            self.path, x.size, n)
            elif self._snapshot_fingerprint(meta["sidecar"]) != fingerprint:
                log.warning("%s: the last snapshot (%s) was made from other inputs: ignored",
                            self.path, meta["sidecar"])
            else:
                return x, f"snapshot {meta['sidecar']}"
        except FileNotFoundError:
            pass
        if has_x_global:
            x, _, _ = read_fit(self.path, config=self.config)
            if x.size == n:
                return x, "/X_global"
        log.info("%s: resume=True but no snapshot or /X_global fits: starting from zero", self.path)
        return None, "none"

    @writes_file("solve")
    def solve_all_mp_batched(self, epochs=None, lr=None, project_nonneg: bool = True,
                             processes: int | None = None, blas_threads: int | None = None,
                             orbit_weights=None, pixels_per_aperture=None, method: str = "auto",
                             x0=None, tol: float = 1e-6, regul: float = 0.0, ridge: float = 0.0,
                             orbit_strength: float = 1.0, regul_order: int = 2,
                             track: bool = True, resume: bool = False,
                             norm_mode: str | None = None, time_limit: float | None = None,
                             nmonte: int = 0, seed=None, **kw):
        """Solve the global fit and write ``/X_global`` and ``/Fit``; returns ``(x, stats)``.

        Parameters
        ----------
        epochs, lr, pixels_per_aperture : the seed's Kaczmarz knobs: validated and
            recorded, not used (module docstring).
        project_nonneg : must be True: CubeFit solves the non-negative problem only.
        processes : operator worker threads over spaxel tiles (default 1).
        blas_threads : BLAS/OpenMP thread cap during the solve (default: unchanged).
        orbit_weights : ``(C,)`` target light fractions (only when passed; see module
            docstring), with strength ``orbit_strength``.
        method : a :data:`cubefit.solvers.METHODS` name or ``"auto"``.
        x0 : warm start ``(C·P,)``; ``resume=True`` finds one (module docstring).
        tol : KKT tolerance (the solvers' ``gtol``).
        regul, regul_order, ridge : Tikhonov and ridge priors
            (:mod:`cubefit.solvers.priors`), over the ``/Templates`` ``pop_shape`` grid.
            ``regul="auto"``: the largest strength whose χ² rises by at most √(2N)
            (:mod:`cubefit.regul_auto`; the search is stored in ``/Fit/regul_search``).
        nmonte, seed : Monte-Carlo re-solves after the fit (:mod:`cubefit.uncertainties`;
            0: none), stored in ``/Fit/uncertainties``; ``seed`` of their noise draws.
        track : write a fit-tracker sidecar.
        norm_mode : ``"data"`` or ``"model"`` (docs/data-model.md); default: the hypercube's, else
            ``"data"``.  With a complete hypercube in the other normalisation this is
            an error (convert it first), so ``/X_global`` and the cube always agree.
        time_limit : seconds after which an iterative solver stops with its best point
            so far (status 0, ``success`` False; the result is written all the same).
        **kw : passed to the solver (e.g. ``max_iter``, ``max_passes``).

        Returns
        -------
        x : ``(C·P,)`` float64 non-negative weights (as written to ``/X_global``).
        stats : dict with ``cost``, ``data_cost``, ``penalties``, ``optimality``,
            ``status``, ``success``, ``message``, ``method``, ``nit``, ``passes``,
            ``timings``, ``history``, ``light_fractions``, ``component_light``,
            ``orbit_weights``, ``x0_source``, ``sidecar`` and the :class:`SolverResult`
            as ``result``.
        """
        if project_nonneg is not True:
            raise ValueError(f"project_nonneg: CubeFit solves the non-negative problem x >= 0 only, "
                             f"got {project_nonneg!r}; call with project_nonneg=True (or leave it out)")
        epochs = _positive_int("epochs", epochs)
        pixels_per_aperture = _positive_int("pixels_per_aperture", pixels_per_aperture)
        processes = _positive_int("processes", processes) or 1
        blas_threads = _positive_int("blas_threads", blas_threads)
        if lr is not None and not (np.isfinite(lr) and lr > 0):
            raise ValueError(f"lr: expected a positive learning rate or None, got {lr!r}")
        if not (np.isfinite(tol) and tol > 0):
            raise ValueError(f"tol: expected a positive KKT tolerance, got {tol!r}")
        nmonte = check_nmonte(nmonte)
        seed_knobs = {k: v for k, v in (("epochs", epochs), ("lr", lr),
                                        ("pixels_per_aperture", pixels_per_aperture)) if v is not None}
        if seed_knobs:
            log.info("%s are knobs of the seed's Kaczmarz solver: recorded in /Fit, but CubeFit's "
                     "certified solvers stop on the KKT test (tol=%g) instead", seed_knobs, tol)

        t0 = time.perf_counter()
        fs = self._file_settings(norm_mode)
        w = self._lambda_weights()             # may create them: the state is taken after
        w_digest = self._weights_digest()
        state = file_state(self.path, self.config)
        op = LOSVDOperator.from_h5(self.path, norm_mode=fs["norm_mode"], amp_mode=fs["amp_mode"],
                                   lambda_weights=w, use_ivar=True, config=self.config,
                                   workers=processes)
        n = op.C * op.P
        priors = dict(orbit_weights=orbit_weights, orbit_strength=orbit_strength,
                      regul_order=regul_order, pop_shape=fs["pop_shape"], ridge=ridge)
        regul, search = resolve_regul(op, regul, priors, method=method, gtol=tol)
        prob = with_priors(op, regul=regul, **priors)
        x_start, x0_source = self._warm_start(x0, resume, n, fs["has_x_global"],
                                              fs["inputs_fingerprint"])
        # Find out now, not after the solve, if the result could not be written.
        check_writable(self.path, _RESULT_BYTES_PER_WEIGHT * n, "the fit result (/X_global, /Fit)")
        t_setup = time.perf_counter() - t0

        settings = {"epochs": epochs, "lr": lr, "pixels_per_aperture": pixels_per_aperture,
                    "project_nonneg": True, "processes": processes, "blas_threads": blas_threads,
                    "method": method, "tol": tol, "orbit_strength": orbit_strength, "regul": regul,
                    "regul_order": regul_order, "ridge": ridge, "pop_shape": list(prob.pop_shape),
                    "norm_mode": fs["norm_mode"], "amp_mode": fs["amp_mode"], "backend": op.backend,
                    "lambda_weights": bool(self.config.lambda_weights_enable),
                    "ivar": fs["has_noise"], "resume": resume, "track": track,
                    "time_limit": time_limit, "regul_auto": search is not None,
                    "nmonte": nmonte, "seed": seed,
                    "solver_options": json.dumps(kw, default=str)}
        # The tracker closes with status "failed (<Exception>)" if the solve raises.
        with (FitTracker(self.path, config=self.config, x_size=n,
                         meta={"runner": "solve_all_mp_batched", **settings,
                               "inputs_fingerprint": fs["inputs_fingerprint"]})
              if track else contextlib.nullcontext()) as tracker:
            if tracker:
                tracker.progress(0.0, f"solving: method={method}, n={n}, x0={x0_source}")
            with threadpool_limits(limits=blas_threads) if blas_threads else contextlib.nullcontext():
                res = solve(prob, method=method, x0=x_start, gtol=tol, time_limit=time_limit,
                            callback=_both(_stream_to(tracker) if tracker else None,
                                           _progress_lines(method)), **kw)
            if tracker:
                tracker.snapshot(res.x, res.cost, res.nit, kind="best")
                tracker.snapshot(res.x, res.cost, res.nit, kind="last")
                tracker.progress(1.0, f"done: status {res.status}, optimality {res.optimality:.3g}")
        sidecar = str(tracker.path) if tracker else ""

        x = res.x
        penalties = prob.penalties(x)
        data_cost = prob.data_cost(x)
        light = prob.component_light(x)
        fractions = prob.light_fractions(x)
        status, success, message = res.status, bool(res.success), res.message
        if success and not (np.all(np.isfinite(fractions)) and np.sum(light) > 0):
            # The solver's check sees the whole problem; this one the data's light alone.
            status, success = -2, False
            message = (f"{STATUS[-2]}: the fitted components carry no light over the good pixels "
                       f"(light fractions {np.array2string(np.asarray(fractions), precision=3)})")
            if not np.any(op.weighted_data()):
                message += ("; the weighted data are zero: the data are zero, or every pixel with "
                            "data has zero weight (mask × λ-weights × 1/Noise², e.g. infinite noise)")
        if not success:
            log.warning("%s: the fit is not certified: %s", self.path, message)
        attrs = {"solver": res.method, "status": status, "success": success,
                 "message": message, "cost": res.cost, "data_cost": data_cost,
                 **{f"penalty_{k}": penalties.get(k, 0.0) for k in ("orbit", "regul", "ridge")},
                 "optimality": res.optimality, "nit": res.nit, "passes": res.passes,
                 "gram_columns": res.gram_columns, "time_total_s": res.timings["total"],
                 "time_operator_s": res.timings["operator"], "time_gram_s": res.timings["gram"],
                 "time_setup_s": t_setup,
                 "orbit_mu": np.nan if prob.mu is None else prob.mu,
                 "prior_scale": prob.scale if (regul or ridge) else np.nan,
                 "x0_source": x0_source, "sidecar": sidecar,
                 "operator": f"matrix-free {op!r}",
                 **{f"setting.{k}": v for k, v in settings.items()},
                 "cubefit_version": __version__,
                 "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                 "inputs_fingerprint": fs["inputs_fingerprint"], "lambda_weights_sha256": w_digest}
        datasets = {"history/" + k: np.asarray(v, dtype=np.float64) for k, v in res.history.items()}
        datasets.update(light_fractions=fractions, component_light=light)
        if prob.orbit_weights is not None:
            datasets["orbit_weights"] = prob.orbit_weights
        mc = monte_carlo_for_file(self.path, op, x, nmonte=nmonte, seed=seed, config=self.config,
                                  priors=dict(priors, regul=regul), method=res.method, gtol=tol,
                                  scale=prob.scale if (regul or ridge) else None) if nmonte else None
        for extra, unused in ((search, REGUL_UNUSED), (mc, MC_UNUSED)):   # regul="auto", Monte Carlo
            attrs.update(unused if extra is None else extra.attrs())
            datasets.update({} if extra is None else extra.datasets())
        check_unchanged(self.path, state, "solve", self.config)
        try:
            write_fit(self.path, x, attrs, datasets, config=self.config)
        except OSError as exc:
            saved = save_fallback(self.path, "X_global", x)
            raise OSError(exc.errno, f"{exc.strerror or exc}\nThe fitted x ({n} weights, cost "
                          f"{res.cost:.6g}) was saved to {saved}: numpy.load it and pass it as x0= "
                          "to solve again without the wait, or write it with "
                          "cubefit.runner.write_fit") from exc
        log.debug("%s: /X_global written (%s, status %d, cost %.6g, optimality %.3g, %d passes)",
                  self.path, res.method, status, res.cost, res.optimality, res.passes)
        stats = {"cost": res.cost, "data_cost": data_cost, "penalties": penalties,
                 "optimality": res.optimality, "status": status, "success": success,
                 "message": message, "method": res.method, "nit": res.nit,
                 "passes": res.passes, "timings": dict(res.timings, setup=t_setup),
                 "history": res.history, "light_fractions": fractions, "component_light": light,
                 "orbit_weights": prob.orbit_weights, "x0_source": x0_source, "sidecar": sidecar,
                 "settings": settings, "result": res, "regul_search": search,
                 "uncertainties": None if mc is None else mc.summary()}
        return x, stats
