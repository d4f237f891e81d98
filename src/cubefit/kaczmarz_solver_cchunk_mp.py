"""Seed-compatible name for the global solver (the seed's ``kaczmarz_solver_cchunk_mp.py``).

The seed's multiprocess Kaczmarz loop is replaced by CubeFit's certified NNLS solvers
(:mod:`cubefit.solvers`), with the orbit-weight ratio penalty as prior rows
(:mod:`cubefit.solvers.priors`) and the λ-weights of :mod:`cubefit.weights`; the
runner (:mod:`cubefit.runner`) wires them to the file.
"""
from .solvers import METHODS, SolverResult, solve  # noqa: F401
from .solvers.priors import with_priors  # noqa: F401
from .weights import read_lambda_weights  # noqa: F401

__all__ = ["solve", "METHODS", "SolverResult", "with_priors", "read_lambda_weights"]
