"""Seed-compatible name for :mod:`cubefit.hypercube` (``from CubeFit.hypercube_builder import build_hypercube``)."""
from .hypercube import (build_hypercube, convert_hypercube_norm, hypercube_status,  # noqa: F401
                        invalidate_tiles, recompress_models, recompute_col_energy)

# The manual's "Utilities" section spells the conversion ``convert_hypertable_norm``.
convert_hypertable_norm = convert_hypercube_norm

__all__ = ["build_hypercube", "convert_hypercube_norm", "convert_hypertable_norm", "hypercube_status",
           "invalidate_tiles", "recompress_models", "recompute_col_energy"]
