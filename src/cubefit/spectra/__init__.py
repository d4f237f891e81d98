"""Per-spectrum fits of survey spectra (DESI, SDSS, any 1-D spectrum).

* :mod:`cubefit.spectra.data` — containers shared by the readers and the fitter
  (:class:`Resolution`, :class:`Camera`, :class:`Spectrum`), air/vacuum conversion.
* :mod:`cubefit.spectra.templates_prep` — :func:`prepare_templates`, once per process.
* :mod:`cubefit.spectra.model` — the forward model and its variable-projection residual.
* :mod:`cubefit.spectra.continuum` — :func:`fit_continuum`, :func:`fit_spectrum`,
  :class:`ContinuumOptions`, :class:`ContinuumResult`, the catalogue columns.
* :mod:`cubefit.spectra.indices` — Dn4000.
* :mod:`cubefit.spectra.pipeline` — :func:`fit_desi` and whole ``fastspec`` runs (readers in
  :mod:`~cubefit.spectra.desi`, :mod:`~cubefit.spectra.sdss`, :mod:`~cubefit.spectra.io`;
  catalogue in :mod:`~cubefit.spectra.catalog`; processes and MPI in
  :mod:`~cubefit.spectra.parallel`).
"""
from .continuum import (CONTINUUM_COLUMNS, VDISP_FLAGS, ContinuumOptions, ContinuumResult,
                        continuum_columns, fit_continuum, fit_spectrum)
from .data import FWHM_PER_SIGMA, Camera, Resolution, Spectrum, air_to_vacuum, vacuum_to_air
from .indices import dn4000
from .model import EMISSION_LINES, STATUS
from .pipeline import fit_desi
from .templates_prep import PreparedTemplates, emiles_fwhm, prepare_templates

__all__ = ["Resolution", "Camera", "Spectrum", "FWHM_PER_SIGMA", "air_to_vacuum", "vacuum_to_air",
           "PreparedTemplates", "prepare_templates", "emiles_fwhm", "ContinuumOptions",
           "ContinuumResult", "fit_continuum", "fit_spectrum", "continuum_columns",
           "CONTINUUM_COLUMNS", "VDISP_FLAGS", "STATUS", "EMISSION_LINES", "dn4000", "fit_desi"]
