"""Settings: one typed dataclass whose defaults are the CubeFit manual's knobs.

Every field maps to one environment variable (mostly ``CUBEFIT_*``; a few are the
manual's non-prefixed names such as ``HDF5_USE_FILE_LOCKING``).  Precedence, lowest
first: the field default, the environment variable, an explicit keyword passed to
:meth:`Config.from_env` or :func:`dataclasses.replace`.

Unknown ``CUBEFIT_*`` variables are reported with a warning naming the closest
known one, because a misspelt knob that is silently ignored costs an astronomer a
night on the cluster.
"""
from __future__ import annotations

import dataclasses
import difflib
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping


def _knob(default, env, doc, group):
    return field(default=default, metadata={"env": env, "doc": doc, "group": group})


@dataclass(frozen=True)
class Config:
    """All run-time settings.  Build it with :meth:`Config.from_env`."""

    # --- HDF5 & dataset caching -------------------------------------------------
    hdf5_use_file_locking: str = _knob(
        "FALSE", "HDF5_USE_FILE_LOCKING",
        "HDF5 file locking; FALSE avoids lock failures on shared file systems.", "hdf5")
    rdcc_nslots: int = _knob(400003, "CUBEFIT_RDCC_NSLOTS",
                             "File-level raw chunk cache: number of hash slots.", "hdf5")
    rdcc_nbytes: int = _knob(4294967296, "CUBEFIT_RDCC_NBYTES",
                             "File-level raw chunk cache size in bytes (4 GiB).", "hdf5")
    rdcc_w0: float = _knob(0.9, "CUBEFIT_RDCC_W0",
                           "File-level raw chunk cache preemption policy in [0, 1].", "hdf5")
    rdcc_slots: int = _knob(1000003, "CUBEFIT_RDCC_SLOTS",
                            "Per-dataset chunk cache slots used by streaming readers.", "hdf5")
    rdcc_bytes: int = _knob(268435456, "CUBEFIT_RDCC_BYTES",
                            "Per-dataset chunk cache size in bytes (256 MiB).", "hdf5")
    open_retries: int = _knob(20, "CUBEFIT_OPEN_RETRIES",
                              "Attempts to open an HDF5 file locked by another process (HDF5 file "
                              "locking on) before giving up; other open errors fail at once.", "hdf5")
    open_retry_wait: float = _knob(0.25, "CUBEFIT_OPEN_RETRY_WAIT",
                                   "Seconds between open attempts (doubles, capped at 5 s).", "hdf5")
    lock_wait: float = _knob(
        0.0, "CUBEFIT_LOCK_WAIT",
        "Seconds a writer waits while another process writes the same file (0: fail at once "
        "naming the holder; inf: wait until it has finished).", "hdf5")

    # --- Multiprocessing & BLAS -------------------------------------------------
    mp_ctx: str = _knob("forkserver", "CUBEFIT_MP_CTX",
                        "Start method for the solver pool (fallback spawn).", "mp")
    kmp_init_at_fork: str = _knob("FALSE", "KMP_INIT_AT_FORK",
                                  "Avoid OpenMP deadlocks with fork.", "mp")

    # --- Solver: worker-level stability & steps ---------------------------------
    bt_steps: int = _knob(3, "CUBEFIT_BT_STEPS",
                          "Backtracking steps per band for monotone weighted RMSE.", "solver")
    bt_factor: float = _knob(0.5, "CUBEFIT_BT_FACTOR", "Step shrink factor in backtracking.", "solver")
    trust_tau: float = _knob(0.7, "CUBEFIT_TRUST_TAU", "Trust-region cap tau.", "solver")
    eps: float = _knob(1e-12, "CUBEFIT_EPS", "Numerical floor in denominators.", "solver")
    zero_col_rel: float = _knob(1e-12, "CUBEFIT_ZERO_COL_REL",
                                "Relative (vs median energy) threshold to freeze near-zero columns.",
                                "solver")
    zero_col_abs: float = _knob(1e-24, "CUBEFIT_ZERO_COL_ABS",
                                "Absolute threshold to freeze near-zero columns.", "solver")
    debug_safe: bool = _knob(False, "CUBEFIT_DEBUG_SAFE",
                             "Print sanitisation/freeze statistics per tile.", "solver")
    nnls_prop_per_band: int = _knob(6, "CUBEFIT_NNLS_PROP_PER_BAND",
                                    "(c,p) candidates proposed for NNLS polish per band.", "solver")

    # --- Solver: aggregation & NNLS polish --------------------------------------
    tile_bt_steps: int = _knob(6, "CUBEFIT_TILE_BT_STEPS",
                               "Backtracking steps for the aggregated update across bands.", "polish")
    tile_bt_factor: float = _knob(0.5, "CUBEFIT_TILE_BT_FACTOR", "Aggregated step shrink factor.",
                                  "polish")
    global_tau: float = _knob(0.5, "CUBEFIT_GLOBAL_TAU", "Global step cap tau.", "polish")
    global_energy_blend: float = _knob(1e-3, "CUBEFIT_GLOBAL_ENERGY_BLEND",
                                       "Blend of local column norm with global column energy.",
                                       "polish")
    nnls_enable: bool = _knob(True, "CUBEFIT_NNLS_ENABLE", "Enable tile-local NNLS polish.", "polish")
    nnls_every: int = _knob(1, "CUBEFIT_NNLS_EVERY", "Run NNLS polish every N tiles.", "polish")
    nnls_max_cols: int = _knob(128, "CUBEFIT_NNLS_MAX_COLS", "Max columns in the NNLS system.",
                               "polish")
    nnls_max_bytes: int = _knob(1000000000, "CUBEFIT_NNLS_MAX_BYTES",
                                "Memory cap for the NNLS system in bytes.", "polish")
    nnls_sub_l: int = _knob(0, "CUBEFIT_NNLS_SUB_L", "λ-subsample size for NNLS (0: all).", "polish")
    nnls_solver: str = _knob("nnls", "CUBEFIT_NNLS_SOLVER", "One of nnls, lsq, mu, fista.", "polish")
    nnls_max_iter: int = _knob(50, "CUBEFIT_NNLS_MAX_ITER",
                               "Iteration cap for iterative NNLS (mu, fista, lsq).", "polish")
    nnls_min_improve: float = _knob(0.999, "CUBEFIT_NNLS_MIN_IMPROVE",
                                    "Accept polish only if weighted-RMSE ratio is below this.",
                                    "polish")

    # --- λ-weights ---------------------------------------------------------------
    lambda_weights_enable: bool = _knob(True, "CUBEFIT_LAMBDA_WEIGHTS_ENABLE",
                                        "Use λ-weights in the solver (0 disables).", "lambda")
    lambda_weights_dset: str = _knob("/HyperCube/lambda_weights", "CUBEFIT_LAMBDA_WEIGHTS_DSET",
                                     "Dataset holding the λ-weights.", "lambda")
    lambda_min_w: float = _knob(1e-6, "CUBEFIT_LAMBDA_MIN_W", "Floor on λ-weights.", "lambda")
    lambda_weights_auto: bool = _knob(True, "CUBEFIT_LAMBDA_WEIGHTS_AUTO",
                                      "Generate λ-weights when missing.", "lambda")

    # --- Fit tracking --------------------------------------------------------------
    fittracker_start: str = _knob("spawn", "FITTRACKER_START",
                                  "Start method for the tracker process.", "tracker")
    tracker_qsize: int = _knob(8192, "CUBEFIT_TRACKER_QSIZE",
                               "Tracker queue size; messages are dropped when full.", "tracker")
    tracker_flush_every: int = _knob(128, "CUBEFIT_TRACKER_FLUSH_EVERY",
                                     "Flush the sidecar after this many messages.", "tracker")
    tracker_flush_sec: float = _knob(5.0, "CUBEFIT_TRACKER_FLUSH_SEC",
                                     "Or flush when this many seconds have passed.", "tracker")
    rmse_stride: int = _knob(16, "CUBEFIT_RMSE_STRIDE", "Enqueue every Nth RMSE sample.", "tracker")

    # --- Compute -------------------------------------------------------------------
    backend: str = _knob("numpy", "CUBEFIT_BACKEND",
                         "Array backend of the matrix-free operator's applies: numpy, cupy, "
                         "torch or array_api_strict (see cubefit.backend); GPU backends need "
                         "pip install 'cubefit[gpu]' (CuPy) or PyTorch.", "compute")

    # --- Data and caches -----------------------------------------------------------
    cache_dir: str = _knob("", "CUBEFIT_CACHE_DIR",
                           "Cache for downloaded template libraries "
                           "(empty: $XDG_CACHE_HOME/cubefit or ~/.cache/cubefit).", "data")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, warn_unknown: bool = True,
                 **overrides) -> "Config":
        """Defaults, overridden by the environment, overridden by ``overrides``.

        Raises ``ValueError`` naming the variable when a value cannot be parsed.
        """
        env = os.environ if environ is None else environ
        values = {}
        for f in dataclasses.fields(cls):
            name = f.metadata["env"]
            if name in env and f.name not in overrides:
                values[f.name] = _parse(env[name], f.type, name)
        if warn_unknown:
            _warn_unknown(env)
        names = [f.name for f in dataclasses.fields(cls)]
        for k in overrides:
            if k not in names:
                close = difflib.get_close_matches(k, names, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise TypeError(f"Config has no setting {k!r}{hint}")
        values.update(overrides)
        return cls(**values)

    @property
    def cache_path(self) -> Path:
        """Folder for downloaded libraries (created on demand by the fetchers)."""
        if self.cache_dir:
            return Path(self.cache_dir).expanduser()
        base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        return Path(base) / "cubefit"

    def describe(self) -> list[tuple[str, str, object, object, str]]:
        """Rows ``(group, env name, value, default, meaning)`` for display."""
        return [(f.metadata["group"], f.metadata["env"], getattr(self, f.name), f.default,
                 f.metadata["doc"]) for f in dataclasses.fields(self)]


def known_names() -> list[str]:
    """Every environment variable the configuration understands."""
    return [f.metadata["env"] for f in dataclasses.fields(Config)]


def _parse(text: str, typ, name: str):
    typ = {"int": int, "float": float, "bool": bool, "str": str}.get(typ, typ)
    s = text.strip()
    try:
        if typ is bool:
            low = s.lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off", ""):
                return False
            raise ValueError(s)
        if typ is int:
            try:
                return int(s)
            except ValueError:  # accept integral floats such as "4e9"
                v = float(s)
                if not v.is_integer():
                    raise
                return int(v)
        if typ is float:
            return float(s)
        return s
    except ValueError:
        raise ValueError(f"environment variable {name}={text!r} is not a valid {typ.__name__}; "
                         f"unset it or give a {typ.__name__} value") from None


def _warn_unknown(env: Mapping[str, str]) -> None:
    known = set(known_names())
    for name in env:
        if name.startswith("CUBEFIT_") and name not in known:
            close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]}?" if close else ""
            warnings.warn(f"unknown setting {name} is ignored{hint}", UserWarning, stacklevel=3)


def get_config(**overrides) -> Config:
    """The configuration in force now (environment read at call time)."""
    return Config.from_env(**overrides)
