"""Per-spectrum fits of survey spectra (DESI, SDSS, any 1-D spectrum).

* :mod:`cubefit.spectra.data` — containers shared by the readers and the fitter
  (:class:`Resolution`, :class:`Camera`, :class:`Spectrum`), air/vacuum conversion.
* :mod:`cubefit.spectra.templates_prep` — :func:`prepare_templates`, once per process.
* :mod:`cubefit.spectra.model` — the forward model and its variable-projection residual.
* :mod:`cubefit.spectra.continuum` — :func:`fit_continuum`, :func:`fit_spectrum`,
  :func:`continuum_basis`, :class:`ContinuumOptions`, :class:`ContinuumResult`, the
  catalogue columns.
* :mod:`cubefit.spectra.indices` — Dn4000.
* :mod:`cubefit.spectra.linelist` — the emission-line list (:func:`read_linelist`).
* :mod:`cubefit.spectra.emlines` — :func:`fit_emlines` (model in
  :mod:`~cubefit.spectra.emline_model`, solver in :mod:`~cubefit.spectra.emline_fit`),
  :func:`joint_refit` (:mod:`~cubefit.spectra.emline_joint`).
* :mod:`cubefit.spectra.montecarlo` — :func:`monte_carlo` uncertainties.
* :mod:`cubefit.spectra.qa` — :func:`plot_target`, one QA figure per target.
* :mod:`cubefit.spectra.target` — everything done to one target (:func:`fit_target`).
* :mod:`cubefit.spectra.pipeline` — :func:`fit_desi` and whole ``fastspec`` runs (readers in
  :mod:`~cubefit.spectra.desi`, :mod:`~cubefit.spectra.sdss`, :mod:`~cubefit.spectra.io`;
  catalogue in :mod:`~cubefit.spectra.catalog`; processes and MPI in
  :mod:`~cubefit.spectra.parallel`; settings in :class:`FastspecConfig`).
"""
from .config import FastspecConfig
from .continuum import (CONTINUUM_COLUMNS, VDISP_FLAGS, ContinuumOptions, ContinuumResult,
                        continuum_basis, continuum_columns, fit_continuum, fit_spectrum)
from .data import FWHM_PER_SIGMA, Camera, Resolution, Spectrum, air_to_vacuum, vacuum_to_air
from .emline_joint import JointResult, joint_refit
from .emlines import EMLINE_COLUMNS, EmlineResult, emline_columns, fit_emlines
from .indices import dn4000
from .linelist import LineList, default_linelist, read_linelist
from .model import EMISSION_LINES, STATUS
from .montecarlo import MonteCarloResult, monte_carlo
from .pipeline import fit_desi
from .qa import plot_target
from .target import TargetFit, fastspec_columns, fit_target
from .templates_prep import PreparedTemplates, emiles_fwhm, prepare_templates

__all__ = ["Resolution", "Camera", "Spectrum", "FWHM_PER_SIGMA", "air_to_vacuum", "vacuum_to_air",
           "PreparedTemplates", "prepare_templates", "emiles_fwhm", "ContinuumOptions",
           "ContinuumResult", "fit_continuum", "fit_spectrum", "continuum_basis", "continuum_columns",
           "CONTINUUM_COLUMNS", "VDISP_FLAGS", "STATUS", "EMISSION_LINES", "dn4000",
           "LineList", "read_linelist", "default_linelist", "fit_emlines", "EmlineResult",
           "emline_columns", "EMLINE_COLUMNS", "joint_refit", "JointResult", "monte_carlo",
           "MonteCarloResult", "plot_target", "fit_target", "TargetFit", "fastspec_columns",
           "FastspecConfig", "fit_desi"]
