"""Seed-compatible name for the reconstruction and plotting helpers
(``from CubeFit.kz_fitSpec import reconstruct, plot_spectra``).

Tile-aligned reconstruction ``Ŷ = A x`` lives in :mod:`cubefit.recon` (it reads only the
hypercube tiles that the requested spaxels and the non-zero weights touch); the data vs
model figures and per-spaxel χ² in :mod:`cubefit.plots`.
"""
from .plots import plot_best_worst, plot_spectra, spaxel_chi2  # noqa: F401
from .recon import reconstruct  # noqa: F401

__all__ = ["reconstruct", "plot_spectra", "plot_best_worst", "spaxel_chi2"]
