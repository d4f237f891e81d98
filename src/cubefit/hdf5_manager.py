"""Seed-compatible name for :mod:`cubefit.store` (``from CubeFit.hdf5_manager import H5Manager``)."""
from .store import H5Dims, H5Manager, open_h5  # noqa: F401

__all__ = ["H5Dims", "H5Manager", "open_h5"]
