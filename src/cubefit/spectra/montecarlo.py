"""Monte-Carlo uncertainties for any per-target fit (continuum, lines, or both).

:func:`monte_carlo` refits ``nmonte`` noisy copies of a spectrum and turns the scatter
of every quantity ``X`` of the fit's catalogue row that has an ``X_IVAR`` companion into
``X_IVAR = 1 / var(X)`` (sample variance over the realisations).  Each copy is the
best-fit model (or, without a model, the data) plus Gaussian noise drawn from the
spectrum's ``ivar`` on its unmasked pixels; masked pixels stay masked.  Every refit is
warm-started from the best fit.  The random numbers come from
``numpy.random.SeedSequence([seed, targetid])``, so a target's realisations are the same
whatever the order of targets, the number of processes or MPI ranks.

The fit is any callable ``fit_fn(spectrum, start) -> result`` whose result has
``status`` (0 = success) and ``to_row() -> dict``; ``start`` is the best fit.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from .data import Camera, Spectrum

__all__ = ["monte_carlo", "MonteCarloResult", "MC_COLUMNS", "realisation_rng", "noisy_copy"]

MC_COLUMNS = (
    ("NMONTE", "i4", "", "Monte-Carlo realisations behind the _IVAR columns (0: formal errors from the Jacobian)"),
)
"""Catalogue column added by :meth:`MonteCarloResult.apply`."""


def realisation_rng(seed: int, targetid: int | None) -> np.random.Generator:
    """The generator of one target's realisations: ``SeedSequence([seed, targetid])``."""
    tid = 0 if targetid is None else int(targetid)
    return np.random.default_rng(np.random.SeedSequence([int(seed) & 0xFFFFFFFFFFFFFFFF,
                                                         tid & 0xFFFFFFFFFFFFFFFF]))


def noisy_copy(spectrum: Spectrum, base, rng: np.random.Generator) -> Spectrum:
    """``spectrum`` with flux ``base[c] + N(0, 1/ivar)`` on each camera's unmasked pixels."""
    cams = []
    for cam, b in zip(spectrum.cameras, base):
        good = cam.ivar > 0
        noise = rng.standard_normal(cam.npix)
        flux = np.where(good, np.asarray(b, dtype=np.float64) + noise / np.sqrt(np.where(good, cam.ivar, 1.0)),
                        cam.flux)
        cams.append(Camera(cam.name, cam.wave, flux, cam.ivar, cam.resolution))
    return replace(spectrum, cameras=cams)


@dataclass
class MonteCarloResult:
    """Scatter of a fit over noise realisations.

    ``nmonte`` realisations requested, ``nsuccess`` refits with status 0, ``samples``
    maps each quantity ``X`` to its ``(nsuccess,)`` values and ``ivar`` maps ``X_IVAR``
    to ``1/var(X)`` (0 when fewer than 2 refits succeeded or the variance is 0).
    """

    nmonte: int
    nsuccess: int = 0
    samples: dict = field(default_factory=dict)
    ivar: dict = field(default_factory=dict)

    def apply(self, row: dict) -> dict:
        """``row`` with its ``_IVAR`` columns replaced by the Monte-Carlo ones (when any
        realisation was run) and ``NMONTE`` set; a new dict."""
        out = dict(row)
        if self.nmonte > 0:
            out.update(self.ivar)
        out["NMONTE"] = int(self.nsuccess if self.nmonte > 0 else 0)
        return out


def _quantities(row: dict) -> list[str]:
    keys = []
    for k, v in row.items():
        if k.endswith("_IVAR") and k[:-5] in row and isinstance(row[k[:-5]], (float, np.floating)):
            keys.append(k[:-5])
    return keys


def monte_carlo(fit_fn, spectrum: Spectrum, best, nmonte: int, seed: int, *, model=None) -> MonteCarloResult:
    """Refit ``nmonte`` noisy copies of ``spectrum`` with ``fit_fn(copy, best)``.

    ``model``: per camera the best-fit model (continuum + lines) the noise is added to;
    ``None`` adds it to the data instead.  ``nmonte = 0`` returns at once (formal errors
    stay).  A refit that raises or returns ``status ≠ 0`` is left out of the scatter.
    """
    nmonte = int(nmonte)
    if nmonte < 0:
        raise ValueError(f"nmonte: expected a number of realisations ≥ 0, got {nmonte}")
    result = MonteCarloResult(nmonte)
    if nmonte == 0:
        return result
    base = model if model is not None else [cam.flux for cam in spectrum.cameras]
    if len(base) != len(spectrum.cameras):
        raise ValueError(f"model: expected one array per camera ({len(spectrum.cameras)}), got {len(base)}")
    keys = _quantities(best.to_row())
    rng = realisation_rng(seed, spectrum.targetid)
    values = {k: [] for k in keys}
    for _ in range(nmonte):
        copy = noisy_copy(spectrum, base, rng)
        try:
            fit = fit_fn(copy, best)
        except (ValueError, FloatingPointError, np.linalg.LinAlgError):
            continue
        if getattr(fit, "status", 0) != 0:
            continue
        row = fit.to_row()
        for k in keys:
            values[k].append(float(row[k]))
        result.nsuccess += 1
    for k in keys:
        v = np.asarray(values[k])
        result.samples[k] = v
        var = float(np.var(v, ddof=1)) if v.size > 1 else 0.0
        result.ivar[f"{k}_IVAR"] = 1.0 / var if var > 0 else 0.0
    return result
