"""Seed-compatible name for :mod:`cubefit.tracking` (``from CubeFit.fit_tracker import FitTracker``)."""
from .tracking import FitTracker, latest_snapshot, read_history  # noqa: F401

__all__ = ["FitTracker", "latest_snapshot", "read_history"]
