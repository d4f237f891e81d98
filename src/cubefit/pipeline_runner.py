"""Seed-compatible name for :mod:`cubefit.runner` (``from CubeFit.pipeline_runner import PipelineRunner``)."""
from .runner import PipelineRunner, read_fit, write_fit  # noqa: F401

__all__ = ["PipelineRunner", "read_fit", "write_fit"]
