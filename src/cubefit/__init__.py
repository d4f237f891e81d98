"""CubeFit: LOSVD-convolved stellar-population fitting of IFU cubes and spectra.

Modules, one idea each: :mod:`cubefit.grids` (log-λ grids, rebin operator),
:mod:`cubefit.templates` (template libraries), :mod:`cubefit.losvd` (LOSVD
histograms and kernels), :mod:`cubefit.store` (the HDF5 file), :mod:`cubefit.config`
(settings and ``CUBEFIT_*`` variables), :mod:`cubefit.cli` (the ``cubefit`` command).
The seed's module names (``hdf5_manager`` …) are thin re-exports so that code
written against the CubeFit manual runs unchanged, also as ``CubeFit.<module>``.
"""
from importlib.metadata import PackageNotFoundError, version as _version

try:
    __version__ = _version("cubefit")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"

C_KMS = 299792.458
"""Speed of light in km/s, used for every velocity <-> ln λ conversion."""

__all__ = ["__version__", "C_KMS"]
