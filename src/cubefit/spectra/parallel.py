"""Parallel fits: worker processes over targets, MPI ranks over files.

Targets (``mp`` processes)
    A pool whose initializer prepares the templates once in every worker (they are
    never pickled: each worker builds them from a short description, the
    ``templates`` setting); each task is one target's :class:`Spectrum`, small to
    send.  The pool is started through :func:`cubefit.parallel.start_without_main`,
    so the workers never re-run the user's script.  Results come back in target
    order, and every fit runs with one BLAS thread, in the workers as in a
    single-process run: a target's numbers do not depend on ``mp``.

Files (MPI)
    Under ``mpiexec -n K`` each rank takes a share of the input files, balanced by
    their number of selected targets (:func:`weighted_partition`, largest first onto
    the least-loaded rank), fits them (with ``mp`` workers of its own) and writes one
    catalogue per file.  A file's catalogue does not depend on K.
"""
from __future__ import annotations

import math
import multiprocessing
import os
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from ..parallel import start_without_main
from .io import TargetProblem

__all__ = ["load_templates", "init_worker", "fit_one", "fit_many",
           "weighted_partition", "mpi_world"]

_WORKER: dict = {}                     # per process: templates, settings, options, cameras, line list


def load_templates(spec: str = "emiles"):
    """Prepared templates from a short description: ``"emiles"`` (the default E-MILES
    library, fetched once into the cache), a folder of MILES-style FITS SSPs, or a
    pPXF ``.npz`` SSP file (both taken to be in air, as MILES is)."""
    from ..templates import TemplateLibrary
    from .templates_prep import prepare_templates, prepare_templates_cached
    if spec == "emiles":
        return prepare_templates_cached()
    p = Path(spec)
    if p.is_dir():
        return prepare_templates(TemplateLibrary.from_fits_folder(p))
    if p.suffix == ".npz" and p.is_file():
        return prepare_templates(TemplateLibrary.from_npz(p))
    raise ValueError(f"--templates {spec!r}: give 'emiles', a folder of MILES-style FITS files or a "
                     "pPXF .npz SSP file")


def init_worker(config, options, cameras: list[str]) -> None:
    """Pool initializer (also called once for a single-process run): prepare the
    templates (``config.templates``), read the line list (``config.linelist``) and keep
    the settings for :func:`fit_one`; ``config`` a
    :class:`~cubefit.spectra.config.FastspecConfig`, ``options`` the continuum options,
    ``cameras`` the run's camera names (one SNR column each)."""
    from .linelist import read_linelist
    _WORKER["templates"] = load_templates(config.templates)
    _WORKER["config"] = config
    _WORKER["options"] = options
    _WORKER["cameras"] = list(cameras)
    _WORKER["linelist"] = read_linelist(config.linelist)


def fit_one(item) -> tuple[dict, dict]:
    """Fit one target (a Spectrum or a TargetProblem) with this process's templates and
    settings (:func:`cubefit.spectra.target.fit_target`: continuum, photometry, lines,
    joint refit, Monte Carlo, QA figure as configured).

    Returns ``(row, models)``: the SPECPHOT row (for a TargetProblem, its status and
    message) and ``{camera: (wave, continuum, lines)}`` (``lines`` None when the lines
    were not fitted; empty unless models were asked for and the continuum fit
    succeeded).  Never raises for a target: an unexpected exception becomes a row with
    status ``fit_failed`` and a message asking for a report.
    """
    from threadpoolctl import threadpool_limits
    from .continuum import ContinuumResult
    from .model import STATUS
    from .target import fit_target
    cams = _WORKER["cameras"]
    cfg = _WORKER["config"]
    n_templates = _WORKER["templates"].P

    def failed(status: int, message: str) -> tuple[dict, dict]:
        row = ContinuumResult(targetid=item.targetid, z=math.nan, camera_names=[], n_templates=n_templates,
                              status=status, message=message).to_row(cams)
        row["MESSAGE"] = message       # in full: the catalogue column widens to fit
        return row, {}

    if isinstance(item, TargetProblem):
        return failed(item.status, item.message)
    where = f"{item.meta.get('file', 'input')}: TARGETID {item.targetid}: "
    try:
        with threadpool_limits(limits=1):
            row, fit = fit_target(item, _WORKER["templates"], options=_WORKER["options"],
                                  linelist=_WORKER["linelist"], emlines=cfg.emlines,
                                  allow_absorption=cfg.allow_absorption, joint=cfg.joint, nmonte=cfg.nmonte,
                                  seed=cfg.seed, qa=cfg.qa, phot=cfg.phot, camera_names=cams)
    except Exception as exc:    # a bug in the fitter must not lose the other targets
        return failed(STATUS["fit_failed"], f"{where}internal error in the fit "
                                            f"({type(exc).__name__}: {exc}); please report it")
    if row["STATUS"] != 0:
        row["MESSAGE"] = where + row["MESSAGE"]
    models = {}
    if cfg.models and fit.continuum.status == 0:
        lines = fit.lines.models if fit.lines is not None and fit.lines.status == 0 else None
        models = {c.name: (c.wave, np.asarray(m), None if lines is None else np.asarray(lines[i]))
                  for i, (c, m) in enumerate(zip(item.cameras, fit.continuum.models))}
    return row, models


def _context():
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")


def fit_many(items: Iterable, config, *, options, cameras: list[str], progress: bool = True,
             total: int | None = None) -> Iterator[tuple[dict, dict]]:
    """Fit ``items`` (Spectrum or TargetProblem, any iterable) with ``config.mp``
    processes and yield :func:`fit_one`'s results in the items' order, with a tqdm
    progress bar."""
    from tqdm.auto import tqdm
    bar = dict(total=total, disable=not progress, unit="target", desc="fastspec")
    if config.mp <= 1:
        init_worker(config, options, cameras)
        yield from tqdm(map(fit_one, items), **bar)
        return
    ctx = _context()
    pool = start_without_main(lambda: ctx.Pool(config.mp, initializer=init_worker,
                                                initargs=(config, options, cameras)))
    try:
        yield from tqdm(pool.imap(fit_one, items), **bar)
    finally:
        pool.terminate()
        pool.join()


def weighted_partition(weights, n: int) -> list[list[int]]:
    """Split items of ``weights`` into ``n`` groups of near-equal total weight.

    Greedy: items by decreasing weight (ties: lower index first), each onto the group
    with the smallest total so far (ties: lower group).  Deterministic; each group's
    indices are returned in increasing order.
    """
    w = np.asarray(weights, dtype=np.float64)
    groups: list[list[int]] = [[] for _ in range(n)]
    load = np.zeros(n)
    for i in sorted(range(w.size), key=lambda k: (-w[k], k)):
        g = int(np.argmin(load))
        groups[g].append(i)
        load[g] += w[i]
    return [sorted(g) for g in groups]


_LAUNCHER_VARS = ("PMI_SIZE", "PMI_RANK", "OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "MV2_COMM_WORLD_SIZE")


def mpi_world():
    """``MPI.COMM_WORLD`` when this process was started by an MPI launcher
    (``mpiexec``/``mpirun``/``srun`` with PMI), else None.  Needs ``mpi4py``."""
    if not any(v in os.environ for v in _LAUNCHER_VARS):
        return None
    try:
        from mpi4py import MPI
    except ImportError:
        raise RuntimeError("started by an MPI launcher but mpi4py is not installed: "
                           "pip install 'cubefit[mpi]' (and an MPI such as mpich)") from None
    return MPI.COMM_WORLD
