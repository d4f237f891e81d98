"""Everything ``fastspec`` does to one target, from its spectrum to its catalogue row.

:func:`fit_target` runs, in order:

1. the continuum fit (:func:`cubefit.spectra.continuum.fit_continuum`), masking the
   lines of the run's line list;
2. the joint photometric fit, when asked for and available
   (:func:`cubefit.spectra.joint_phot.fit_with_photometry`; see :func:`photometry_row`);
3. the emission lines on the continuum-subtracted spectrum
   (:func:`cubefit.spectra.emlines.fit_emlines`), then Dn4000 of the data measured again
   with the line model subtracted (``DN4000``; the value with the lines in is kept
   as ``DN4000_OBS``), as FastSpecFit does;
4. optionally the joint stars + gas refit (:func:`cubefit.spectra.emline_joint.joint_refit`
   on :func:`cubefit.spectra.continuum.continuum_basis`), into ``_JOINT`` columns;
5. optionally ``nmonte`` Monte-Carlo refits of continuum + lines
   (:func:`cubefit.spectra.montecarlo.monte_carlo`: noise drawn from the ivar around
   the best-fit model, each refit warm-started from the best fit, seeded with
   ``(seed, TARGETID)``) replacing the ``_IVAR`` columns of both;
6. optionally the QA figure (:func:`cubefit.spectra.qa.plot_target`).

A failure of one stage never loses the others: a continuum failure leaves the later
columns blank (``EMLINE_STATUS`` −1), a line failure is an ``EMLINE_STATUS`` and
``EMLINE_MESSAGE``, an error in the photometric fit a ``PHOT_STATUS`` and ``PHOT_MESSAGE``.
"""
from __future__ import annotations

import importlib
import math
from dataclasses import dataclass

import numpy as np

from .continuum import ContinuumResult, continuum_basis, continuum_columns, fit_continuum
from .data import Spectrum, air_to_vacuum
from .emline_joint import JOINT_SUFFIX, joint_columns, joint_refit
from .emlines import EmlineResult, emline_columns, fit_emlines
from .indices import dn4000
from .linelist import LineList
from .montecarlo import MC_COLUMNS, MonteCarloResult, monte_carlo

__all__ = ["TargetFit", "fit_continuum_and_lines", "fit_target", "fastspec_columns", "photometry_row", "joint_photometry",
           "PHOT_NOT_RUN", "DN4000_OBS_COLUMN", "measure_dn4000"]

PHOT_NOT_RUN = -1
"""``PHOT_STATUS`` of a target whose joint photometric fit did not run (its
``PHOT_MESSAGE`` says why: the module is not installed, the fit raised, ...)."""

DN4000_OBS_COLUMN = ("DN4000_OBS", "f8", "", "Narrow 4000-A break (Balogh et al. 1999) of the data, "
                     "emission lines included")


def measure_dn4000(spec: Spectrum, continuum, lines=None) -> tuple[float, float]:
    """``(Dn4000, ivar)`` of ``spec``'s flux minus ``lines`` (per camera ``(npix,)``, or
    None), on the camera giving the most precise value, over the pixels where the
    ``continuum`` model is defined (the continuum fit's own choice)."""
    best = (math.nan, 0.0)
    for i, (cam, mod) in enumerate(zip(spec.cameras, continuum)):
        wave = air_to_vacuum(cam.wave) if spec.air else cam.wave
        known = np.isfinite(mod)
        flux = cam.flux if lines is None else cam.flux - lines[i]
        d, iv = dn4000(wave / (1.0 + spec.z), flux, np.where(known, cam.ivar, 0.0))
        if np.isfinite(d) and iv >= best[1]:
            best = (float(d), float(iv))
    return best


@dataclass(eq=False)
class TargetFit:
    """Continuum (and lines) of one target: ``status`` and ``to_row()`` as
    :func:`~cubefit.spectra.montecarlo.monte_carlo` needs them."""

    continuum: ContinuumResult
    lines: EmlineResult | None = None
    camera_names: tuple = ()
    spectrum: Spectrum | None = None

    @property
    def status(self) -> int:
        if self.continuum.status != 0:
            return self.continuum.status
        return 0 if self.lines is None else int(self.lines.status)

    def model(self) -> list[np.ndarray]:
        """Continuum + lines per camera (NaN where the continuum is not defined)."""
        if self.lines is None:
            return list(self.continuum.models)
        return [c + m for c, m in zip(self.continuum.models, self.lines.models)]

    def to_row(self) -> dict:
        row = self.continuum.to_row(list(self.camera_names) or None)
        row["DN4000_OBS"] = row["DN4000"]
        if self.lines is not None and self.continuum.status == 0:
            row.update(self.lines.to_row())
            if self.lines.status == 0:
                row["DN4000"], row["DN4000_IVAR"] = measure_dn4000(self.spectrum, self.continuum.models,
                                                                   self.lines.models)
        return row


def fit_continuum_and_lines(spec: Spectrum, templates, options, linelist: LineList, *, emlines: bool = True,
                            allow_absorption: bool = False, start: TargetFit | None = None,
                            errors: bool = True, camera_names=()) -> TargetFit:
    """The continuum fit, then (``emlines``) the line fit of ``spec``.

    ``start``: the best fit of the same target (Monte-Carlo refits): both fits are
    warm-started from it and the lines are fitted only if they were there.
    ``errors=False`` skips the lines' formal covariance (unused in refits).
    """
    cont = fit_continuum(spec, templates, options, start=None if start is None else start.continuum,
                         mask_lines=linelist)
    out = TargetFit(cont, camera_names=tuple(camera_names), spectrum=spec)
    if start is not None:
        emlines = start.lines is not None and start.lines.status == 0
    if cont.status != 0 or not emlines:
        return out
    out.lines = fit_emlines(spec, cont.models, linelist=linelist, allow_absorption=allow_absorption,
                            start=None if start is None else start.lines, errors=errors)
    return out


def fastspec_columns(n_templates: int, camera_names, linelist: LineList | None = None, *,
                     joint: bool = False, phot: bool = False) -> tuple:
    """The SPECPHOT columns of a run, ``(name, dtype, unit, description)`` in order: the
    continuum's (:func:`~cubefit.spectra.continuum.continuum_columns`) with
    ``DN4000_OBS``; with a ``linelist``, the lines' (:func:`~cubefit.spectra.emlines.
    emline_columns`; with ``joint``, each line's ``_JOINT`` columns right after its own
    and ``RCHI2_JOINT`` after ``RCHI2_LINE``); ``NMONTE``; with ``phot``, the photometric
    columns (:data:`cubefit.spectra.derived.PHOT_COLUMNS`)."""
    cols = []
    for c in continuum_columns(n_templates, camera_names):
        if c[0] == "DN4000" and linelist is not None:
            c = (c[0], c[1], c[2], "Narrow 4000-A break (Balogh et al. 1999) of the data minus the "
                                   "emission-line model")
        cols.append(c)
        if c[0] == "DN4000_IVAR":
            cols.append(DN4000_OBS_COLUMN)
    if linelist is not None:
        extra = {}
        if joint:
            jc = joint_columns(linelist)
            extra["RCHI2_LINE"] = [jc[0]]
            by_name = {c[0]: c for c in jc}
            for line in linelist:
                extra[f"{line.column}_NPIX"] = [by_name[f"{line.column}_{q}{JOINT_SUFFIX}"]
                                                for q in ("FLUX", "FLUX_IVAR")]
        for c in emline_columns(linelist):
            cols.append(c)
            cols += extra.get(c[0], [])
    cols += list(MC_COLUMNS)
    if phot:
        from .derived import PHOT_COLUMNS
        have = {c[0] for c in cols}
        cols += [c for c in PHOT_COLUMNS if c[0] not in have]
    return tuple(cols)


def _has_photometry(fibermap_row) -> bool:
    return fibermap_row is not None and "FLUX_G" in fibermap_row.colnames


def photometry_row(spec: Spectrum, templates, continuum: ContinuumResult, options, fibermap_row, *,
                   nmonte: int = 0, seed: int = 1) -> dict:
    """The photometric columns of one target from the joint fit with its photometry.

    Calls ``cubefit.spectra.joint_phot.fit_with_photometry(spec, templates, continuum,
    fibermap_row, options)`` — with the module's own ``PhotOptions(nmonte=, seed=)`` when it
    has one, else ``options`` (the run's
    :class:`~cubefit.spectra.continuum.ContinuumOptions` or None) — and returns its
    ``to_row()``.  When the module is not there, the call raises, or its result has
    ``status ≠ 0``, the row holds only ``PHOT_STATUS`` (:data:`PHOT_NOT_RUN` or the fit's
    status) and ``PHOT_MESSAGE`` saying why, every other photometric column blank.
    """
    return joint_photometry(spec, templates, continuum, options, fibermap_row, nmonte=nmonte,
                            seed=seed)[0]


def joint_photometry(spec: Spectrum, templates, continuum: ContinuumResult, options, fibermap_row, *,
                     nmonte: int = 0, seed: int = 1):
    """``(row, result)``: :func:`photometry_row`'s row and the fit's result object (None
    when the fit did not run or failed), for the QA figure's SED panel."""
    name = "cubefit.spectra.joint_phot"
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name != name:
            raise
        return {"PHOT_STATUS": PHOT_NOT_RUN,
                "PHOT_MESSAGE": f"joint photometric fit not available ({name} is not installed)"}, None
    if hasattr(module, "PhotOptions"):
        options = module.PhotOptions(nmonte=nmonte, seed=seed)
    try:
        result = module.fit_with_photometry(spec, templates, continuum, fibermap_row, options)
        row = dict(result.to_row())
        status = int(result.status)
    except Exception as exc:        # a failing photometric fit must not lose the spectral one
        return {"PHOT_STATUS": PHOT_NOT_RUN, "PHOT_MESSAGE": f"joint photometric fit failed "
                f"({type(exc).__name__}: {exc}); please report it"}, None
    if status != 0:
        return {"PHOT_STATUS": status, "PHOT_MESSAGE": str(row.get("PHOT_MESSAGE", "")) or
                f"joint photometric fit returned status {status}"}, None
    return row, result


def _noise_base(spec: Spectrum, fit: TargetFit) -> list[np.ndarray]:
    """Per camera, the best-fit model where it is defined, else the data: what the
    Monte-Carlo noise is added to (a pixel outside the templates stays as observed)."""
    return [np.where(np.isfinite(m), m, cam.flux) for cam, m in zip(spec.cameras, fit.model())]


def fit_target(spec: Spectrum, templates, *, options=None, linelist: LineList, emlines: bool = True,
               allow_absorption: bool = False, joint: bool = False, nmonte: int = 0, seed: int = 1,
               qa=None, phot: bool | None = None, camera_names=()) -> tuple[dict, TargetFit]:
    """Run the stages of the module docstring on one target.

    Returns ``(row, fit)``: the SPECPHOT row (keys of :func:`fastspec_columns`; what a
    stage did not measure is absent and is written blank) and the best :class:`TargetFit`
    (its continuum and line models for the MODELS HDU).  ``qa``: a folder for
    ``qa-<TARGETID>.png`` (None: no figure).  ``phot``: True, False or None (when the
    spectrum's ``meta["fibermap"]`` row has photometry).
    """
    fit = fit_continuum_and_lines(spec, templates, options, linelist, emlines=emlines,
                                  allow_absorption=allow_absorption, camera_names=camera_names)
    cont = fit.continuum
    row = fit.to_row()
    if cont.status != 0:
        return row, fit
    fibermap_row = spec.meta.get("fibermap")
    phot_result = None
    if phot or (phot is None and _has_photometry(fibermap_row)):
        phot_row, phot_result = joint_photometry(spec, templates, cont, options, fibermap_row,
                                                 nmonte=nmonte, seed=seed)
        row.update(phot_row)
    lines = fit.lines
    if joint and lines is not None and lines.status == 0:
        try:
            basis = continuum_basis(spec, templates, cont, additive=True)
            row.update(joint_refit(spec, basis, lines, allow_absorption=allow_absorption).to_row())
        except (ValueError, np.linalg.LinAlgError) as exc:
            row["EMLINE_MESSAGE"] = f"joint refit failed: {exc}"[:80]
    mc = MonteCarloResult(0)
    if nmonte > 0:
        def refit(copy, start):
            return fit_continuum_and_lines(copy, templates, options, linelist, allow_absorption=allow_absorption,
                                           start=start, errors=False, camera_names=camera_names)
        mc = monte_carlo(refit, spec, fit, nmonte, seed, model=_noise_base(spec, fit))
    row = mc.apply(row)
    if qa is not None:
        from .qa import plot_target
        try:
            plot_target(spec, cont.models, lines if lines is not None and lines.status == 0 else None, qa,
                        row=row, phot=phot_result)
        except Exception as exc:    # a figure that cannot be drawn or written must not lose the row
            row["MESSAGE"] = f"QA figure not written ({type(exc).__name__}: {exc})"
    return row, fit
