"""Settings of a ``fastspec`` run (target selection, spectrum clean-up, processes).

Defaults are FastSpecFit's.  The continuum fit's own settings (polynomial degrees,
LOSVD moments, dust) live in :class:`cubefit.spectra.ContinuumOptions`.
"""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["FastspecConfig"]


@dataclass(frozen=True)
class FastspecConfig:
    """What to fit and how to read it.

    ``zmin``: smallest Redrock redshift selected (targets must have ``Z > zmin``).
    ``zwarnmax``: largest ZWARN selected (None: no cut beyond the NODATA bit).
    ``edge_pixels``: pixels masked at each end of every camera (their calibration is poor).
    ``uncertainty_floor``: fractional flux error added in quadrature to every pixel's
    noise (1 %: the spectrophotometric calibration is no better).
    ``rv``: R_V of the Milky-Way extinction curve (Fitzpatrick 1999).
    ``templates``: the template library: ``"emiles"`` (fetched and cached on first
    use), a folder of MILES-style FITS SSPs, or a pPXF ``.npz`` SSP file.
    ``mp``: worker processes over the targets of a file (1: fit in this process).
    ``models``: write the best-fit continuum of every camera to the MODELS HDU.
    """

    zmin: float = 0.001
    zwarnmax: int | None = None
    edge_pixels: int = 3
    uncertainty_floor: float = 0.01
    rv: float = 3.1
    templates: str = "emiles"
    mp: int = 1
    models: bool = False

    def __post_init__(self):
        if self.mp < 1:
            raise ValueError(f"mp={self.mp}: give the number of worker processes, at least 1")
        if self.edge_pixels < 0 or self.uncertainty_floor < 0:
            raise ValueError(f"edge_pixels={self.edge_pixels}, uncertainty_floor={self.uncertainty_floor}: "
                             "both must be ≥ 0")
