"""Per-spectrum fits of survey spectra (DESI, SDSS, any 1-D spectrum).

:mod:`cubefit.spectra.data` holds the containers (:class:`Resolution`,
:class:`Camera`, :class:`Spectrum`) shared by the readers and the fitter.
"""
from .data import FWHM_PER_SIGMA, Camera, Resolution, Spectrum, air_to_vacuum, vacuum_to_air

__all__ = ["Resolution", "Camera", "Spectrum", "FWHM_PER_SIGMA", "air_to_vacuum", "vacuum_to_air"]
