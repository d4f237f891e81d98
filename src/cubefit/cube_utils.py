"""Seed-compatible name for the cube helpers (``from CubeFit.cube_utils import ensure_lambda_weights``).

λ-weights live in :mod:`cubefit.weights`, reconstruction in :mod:`cubefit.recon`.
"""
from .recon import reconstruct  # noqa: F401
from .weights import ensure_lambda_weights, read_lambda_weights  # noqa: F401

__all__ = ["ensure_lambda_weights", "read_lambda_weights", "reconstruct"]
