"""Settings of a ``fastspec`` run (target selection, spectrum clean-up, processes, what
is measured besides the continuum).

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
    ``models``: write the best-fit continuum (and line model) of every camera to the
    MODELS HDU.
    ``emlines``: fit the emission lines after the continuum (FastSpecFit does).
    ``linelist``: the line list (ECSV path; None: the packaged one) — the lines fitted
    and the lines masked by the continuum fit.  ``allow_absorption``: line amplitudes
    may be negative.  ``joint``: also refit template weights and line amplitudes
    together at fixed kinematics (``_JOINT`` columns).
    ``nmonte``: Monte-Carlo realisations per target for the ``_IVAR`` columns (0: formal
    errors); ``seed``: their seed (with the TARGETID: results do not depend on ``mp`` or
    MPI).  ``qa``: folder for one QA figure per target (None: none).
    ``phot``: the joint photometric fit (:mod:`cubefit.spectra.joint_phot`): True, False,
    or None for "when the target's DESI FIBERMAP has photometry".
    """

    zmin: float = 0.001
    zwarnmax: int | None = None
    edge_pixels: int = 3
    uncertainty_floor: float = 0.01
    rv: float = 3.1
    templates: str = "emiles"
    mp: int = 1
    models: bool = False
    emlines: bool = True
    linelist: str | None = None
    allow_absorption: bool = False
    joint: bool = False
    nmonte: int = 0
    seed: int = 1
    qa: str | None = None
    phot: bool | None = None

    def __post_init__(self):
        if self.mp < 1:
            raise ValueError(f"mp={self.mp}: give the number of worker processes, at least 1")
        if self.nmonte < 0:
            raise ValueError(f"nmonte={self.nmonte}: give the number of Monte-Carlo realisations, at least 0")
        if self.joint and not self.emlines:
            raise ValueError("joint=True refits the emission lines with the continuum: it needs emlines=True")
        if self.edge_pixels < 0 or self.uncertainty_floor < 0:
            raise ValueError(f"edge_pixels={self.edge_pixels}, uncertainty_floor={self.uncertainty_floor}: "
                             "both must be ≥ 0")
