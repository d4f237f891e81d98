"""λ-weights: per-pixel emphasis of absorption features (docs/hypercube.md, "λ-weights").

The objective weights every observed pixel ``l`` by ``m_l · w_l`` (mask times
λ-weight).  The weights come from the seed's median-DoG heuristic:

1. ``med[l]`` = median over spaxels of ``/DataCube[:, l]`` (``(L,)``);
2. masked pixels (``/Mask`` False) are filled by linear interpolation between the
   nearest good pixels, so a mask edge does not look like a spectral feature;
3. ``d = |box_small(med) - box_large(med)|``, two boxcar smoothings (default 7 and
   31 pixels, edges extended with the end value): a band-pass that responds to
   line-sized structure and ignores the continuum slope;
4. ``d`` is divided by its 95th percentile over good pixels and clipped to [0, 1];
5. ``w = min_w + (1 - min_w) · d``, so good pixels lie in ``(min_w, 1]``.

Masked pixels get exactly the floor ``min_w`` (not 0): the mask ``m`` already
removes them from the objective, and a positive floor keeps ``√w`` invertible
for solvers that work in the weighted metric.  A feature-less median spectrum
(``d`` ≡ 0) gives uniform weights 1 with a warning.

Settings (:class:`cubefit.config.Config`): ``lambda_weights_dset``
(``CUBEFIT_LAMBDA_WEIGHTS_DSET``), ``lambda_min_w`` (``CUBEFIT_LAMBDA_MIN_W``),
``lambda_weights_auto`` (``CUBEFIT_LAMBDA_WEIGHTS_AUTO``),
``lambda_weights_enable`` (``CUBEFIT_LAMBDA_WEIGHTS_ENABLE``).
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
from scipy.ndimage import uniform_filter1d

from . import __version__
from .config import Config, get_config
from .h5io import edit_h5
from .store import SCHEMA, open_h5, write_dataset

log = logging.getLogger(__name__)

__all__ = ["lambda_weights", "ensure_lambda_weights", "read_lambda_weights", "weights_summary",
           "METHOD"]

METHOD = "median-DoG (boxcar)"
"""Value of the ``method`` attribute of weights made by :func:`ensure_lambda_weights`."""

_PERCENTILE = 95.0
_BAND_BYTES = 256 * 2**20  # memory for one λ-band of /DataCube when taking the median


def lambda_weights(median_spectrum, mask, small_px: int = 7, large_px: int = 31,
                   min_w: float = 1e-6) -> tuple[np.ndarray, float]:
    """λ-weights ``(L,)`` float64 from a median spectrum ``(L,)`` and mask ``(L,)`` (True = use).

    Returns ``(w, scale)`` where ``scale`` is the 95th percentile of the DoG over
    good pixels (0 for a feature-less spectrum, which gives ``w = 1`` on good pixels).
    """
    med = np.asarray(median_spectrum, dtype=np.float64)
    good = np.asarray(mask, dtype=bool)
    L = med.size
    if med.ndim != 1 or good.shape != med.shape:
        raise ValueError(f"median spectrum and mask: expected two (L,) arrays, got {med.shape} "
                         f"and {good.shape}")
    small_px, large_px = int(small_px), int(large_px)
    if not 1 <= small_px < large_px <= L:
        raise ValueError(f"boxcar widths: expected 1 <= small_px < large_px <= L = {L} pixels, got "
                         f"small_px={small_px}, large_px={large_px}; e.g. the defaults 7 and 31")
    if not 0.0 < min_w < 1.0:
        raise ValueError(f"min_w (CUBEFIT_LAMBDA_MIN_W): expected a floor in (0, 1), got {min_w!r}")
    if good.sum() < 2:
        raise ValueError(f"/Mask: {int(good.sum())} good pixels; λ-weights need at least 2")
    idx = np.arange(L)
    filled = med.copy()
    filled[~good] = np.interp(idx[~good], idx[good], med[good])
    dog = np.abs(uniform_filter1d(filled, small_px, mode="nearest")
                 - uniform_filter1d(filled, large_px, mode="nearest"))
    scale = float(np.percentile(dog[good], _PERCENTILE))
    if not (np.isfinite(scale) and scale > 0):
        log.warning("λ-weights: the median spectrum has no features on %d-%d px scales; "
                    "using uniform weights 1", small_px, large_px)
        w = np.ones(L)
        scale = 0.0
    else:
        w = min_w + (1.0 - min_w) * np.clip(dog / scale, 0.0, 1.0)
    w[~good] = min_w
    return w, scale


def _median_spectrum(f) -> np.ndarray:
    """Median over spaxels of ``/DataCube (S, L)``, read in λ-bands to bound memory."""
    ds = f["/DataCube"]
    S, L = ds.shape
    band = max(1, min(L, _BAND_BYTES // (8 * S)))
    return np.concatenate([np.median(ds[:, i:i + band], axis=0) for i in range(0, L, band)])


def _params(small_px, large_px, min_w, fingerprint) -> dict:
    return {"method": METHOD, "small_px": int(small_px), "large_px": int(large_px),
            "min_w": float(min_w), "percentile": _PERCENTILE, "inputs_fingerprint": str(fingerprint)}


def _plain(v):
    """An attribute value as a plain Python value (bytes → str, numpy scalar → number)."""
    if isinstance(v, bytes):
        return v.decode()
    return v.item() if isinstance(v, np.generic) else v


def ensure_lambda_weights(h5, *, small_px: int = 7, large_px: int = 31, min_w: float | None = None,
                          dset: str | None = None, overwrite: bool = False,
                          config: Config | None = None) -> np.ndarray:
    """Make (or reuse) the λ-weights dataset and return it, ``(L,)`` float64.

    ``dset`` defaults to ``config.lambda_weights_dset`` and ``min_w`` to
    ``config.lambda_min_w``.  The parameters and the inputs fingerprint are stored
    as attributes.  Existing weights made with the same parameters from the same
    inputs are returned unchanged; weights made from other inputs (stale) are remade
    with the requested parameters; weights made from these inputs with other
    parameters are refused (``ValueError`` listing the differences) unless
    ``overwrite=True``.  A dataset without a ``method`` attribute was supplied by
    the user and is returned as it is (``overwrite=True`` replaces it).

    The column energy ``/HyperCube/col_energy`` uses the weights present when the
    hypercube was built; if new weights differ from those, a warning says to run
    :func:`cubefit.hypercube.recompute_col_energy`.
    """
    cfg = config or get_config()
    path = Path(h5)
    dset = dset or cfg.lambda_weights_dset
    min_w = cfg.lambda_min_w if min_w is None else float(min_w)
    with open_h5(path, "r", config=cfg) as f:
        fp = _plain(f.attrs.get("inputs_fingerprint", ""))
        want = _params(small_px, large_px, min_w, fp)
        if dset in f and not overwrite:
            old = {k: _plain(v) for k, v in f[dset].attrs.items()}
            if "method" not in old:
                log.info("%s: using the user-supplied λ-weights %s", path, dset)
                return f[dset][...].astype(np.float64)
            if old.get("inputs_fingerprint") != fp:     # stale: never reused, remade
                log.warning("%s:%s was made from other inputs than the file holds: remaking it",
                            path, dset)
            else:
                diffs = {k: (old.get(k), v) for k, v in want.items() if old.get(k) != v}
                if not diffs:
                    return f[dset][...].astype(np.float64)
                text = ", ".join(f"{k}: stored {a!r}, requested {b!r}" for k, (a, b) in diffs.items())
                raise ValueError(f"{path}:{dset} was made with other settings ({text}); pass "
                                 "overwrite=True to replace it, or call ensure_lambda_weights with "
                                 "the stored settings")
        mask = f["/Mask"][...].astype(bool) if "/Mask" in f else np.ones(f["/ObsPix"].shape[0], bool)
        med = _median_spectrum(f)
        energy_pw = f["/HyperCube/col_energy_weights"][...] if "/HyperCube/col_energy_weights" in f \
            else None
    w, scale = lambda_weights(med, mask, small_px, large_px, min_w)
    with edit_h5(path, cfg, operation="ensure_lambda_weights") as f:
        ds = write_dataset(f, dset, w, units=SCHEMA["/HyperCube/lambda_weights"][0],
                           description=SCHEMA["/HyperCube/lambda_weights"][1])
        for k, v in want.items():
            ds.attrs[k] = v
        ds.attrs["scale"] = scale
        ds.attrs["cubefit_version"] = __version__
        ds.attrs["created_utc"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    _log_stats(f"{path}:{dset} written", w, mask, logging.DEBUG)
    if energy_pw is not None and not np.array_equal(energy_pw, mask * w):
        log.warning("%s: /HyperCube/col_energy was computed with other pixel weights than these "
                    "λ-weights; run cubefit.hypercube.recompute_col_energy to update it", path)
    return w


def read_lambda_weights(h5, *, config: Config | None = None) -> np.ndarray:
    """The λ-weights the solver uses, ``(L,)`` float64, and log their min/max/mean.

    * ``config.lambda_weights_enable`` False: ones.
    * Dataset ``config.lambda_weights_dset`` missing: made with the defaults by
      :func:`ensure_lambda_weights` when ``config.lambda_weights_auto``, else ones.
    * Generated weights made from other inputs than the file holds (stale): remade
      with their stored parameters when ``config.lambda_weights_auto``, else an error;
      stale weights are never used.
    * Otherwise the stored weights, raised to the floor ``config.lambda_min_w``;
      masked pixels are set to the floor (the mask itself is applied by callers).

    The statistics logged (level DEBUG; the runner prints its own banner) are over
    good (unmasked) pixels.
    """
    cfg = config or get_config()
    path = Path(h5)
    dset = cfg.lambda_weights_dset
    with open_h5(path, "r", config=cfg) as f:
        L = f["/ObsPix"].shape[0]
        mask = f["/Mask"][...].astype(bool) if "/Mask" in f else np.ones(L, bool)
        stored = f[dset][...] if dset in f else None
        made = {k: _plain(v) for k, v in f[dset].attrs.items()} if dset in f else {}
        stale = "method" in made and made.get("inputs_fingerprint") != _plain(
            f.attrs.get("inputs_fingerprint", ""))
    if not cfg.lambda_weights_enable:
        log.info("%s: λ-weights disabled (CUBEFIT_LAMBDA_WEIGHTS_ENABLE=0): using 1", path)
        return np.ones(L)
    if stored is None:
        if not cfg.lambda_weights_auto:
            log.info("%s: no %s and CUBEFIT_LAMBDA_WEIGHTS_AUTO=0: using λ-weights 1", path, dset)
            return np.ones(L)
        stored = ensure_lambda_weights(path, config=cfg)
    elif stale:
        if not cfg.lambda_weights_auto:
            raise ValueError(f"{path}:{dset} was made from other inputs than the file holds; remake "
                             f"it (`cubefit weights {path}`) or set CUBEFIT_LAMBDA_WEIGHTS_AUTO=1")
        stored = ensure_lambda_weights(path, small_px=made["small_px"], large_px=made["large_px"],
                                       min_w=made["min_w"], config=cfg)
    w = np.asarray(stored, dtype=np.float64)
    if w.shape != (L,) or not np.all(np.isfinite(w)):
        raise ValueError(f"{path}:{dset}: expected ({L},) finite λ-weights, got shape {w.shape}"
                         f"{'' if w.shape != (L,) else ' with non-finite values'}; rebuild them with "
                         "ensure_lambda_weights(..., overwrite=True)")
    w = np.maximum(w, cfg.lambda_min_w)
    w[~mask] = cfg.lambda_min_w
    _log_stats(f"{path}:{dset} in use", w, mask, logging.DEBUG)
    return w


def _log_stats(what: str, w: np.ndarray, mask: np.ndarray, level: int = logging.INFO) -> None:
    log.log(level, "λ-weights %s: %s", what, weights_summary(w, mask))


def weights_summary(w: np.ndarray, mask: np.ndarray | None = None) -> str:
    """``"min=… max=… mean=… over N good pixels"`` of λ-weights ``w (L,)`` over the pixels
    where ``mask (L,)`` is True (all without a mask): the one summary that the solver's
    start-up banner, ``cubefit weights`` and the log all print."""
    g = np.asarray(w) if mask is None else np.asarray(w)[np.asarray(mask, dtype=bool)]
    return f"min={g.min():.4g} max={g.max():.4g} mean={g.mean():.4g} over {g.size} good pixels"
