"""The main job on the built-in example: a mock galaxy written with the manual's workflow."""
from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from .mock import make_mock_galaxy, synthetic_templates
from .store import H5Dims, H5Manager, open_h5, write_dataset

log = logging.getLogger(__name__)

TEMPLATE_LAM = (4500.0, 5900.0)   # Å, templates kept for the demo
OBS_LAM = (4800.0, 5600.0)        # Å, observed range of the mock
VELSCALE = 50.0                   # km/s per template pixel; observed pixels are twice that


def load_demo_templates(synthetic: bool = False):
    """``(flux (P, T), ln_lam (T,), pop_axes, axis_units)`` for the demo."""
    if synthetic:
        flux, ln_lam, axes = synthetic_templates(lam=TEMPLATE_LAM, velscale=VELSCALE)
        return flux / np.median(flux), ln_lam, axes, {"age": "Gyr", "metal": "dex"}
    from .templates import TemplateLibrary
    lib = TemplateLibrary.from_emiles(velscale=VELSCALE, lam_range=TEMPLATE_LAM).normalise()
    return lib.flux, lib.ln_lam, dict(lib.pop_axes), dict(lib.axis_units)


def run_demo(out: Path = Path("cubefit_demo"), synthetic: bool = False, nx: int = 6,
             seed: int = 1) -> Path:
    """Build the example galaxy file in ``out`` and print its summary; returns the file."""
    t0 = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "galaxy.h5"
    log.info("loading %s templates", "synthetic" if synthetic else "E-MILES")
    flux, ln_lam, axes, units = load_demo_templates(synthetic)
    pop_shape = tuple(len(v) for v in axes.values())
    mock = make_mock_galaxy(flux, ln_lam, pop_shape=pop_shape, pop_axes=axes, nx=nx, ny=nx,
                            obs_lam=OBS_LAM, seed=seed)
    S, V, C = mock.losvd.shape
    log.info("mock galaxy: %d spaxels, %d components, %d populations, %d observed pixels",
             S, C, flux.shape[0], mock.obs_pix.size)

    # The CubeFit manual's workflow, step 1.
    mgr = H5Manager(path, tem_pix=mock.tem_pix, obs_pix=mock.obs_pix)
    mgr.init_base(H5Dims(nSpat=S, nLSpec=mock.obs_pix.size, nTSpec=mock.tem_pix.size, nVel=V,
                         nComp=C, nPop=flux.shape[0]), overwrite=True)
    light = mock.losvd.sum(axis=(0, 1))
    mgr.populate_from_arrays(losvd=mock.losvd, datacube=mock.datacube, templates=mock.templates,
                             mask=mock.mask, vel_pix=mock.vel_pix, noise=mock.noise,
                             orbit_weights=light / light.sum(), pop_axes=axes, axis_units=units)
    mgr.ensure_rebin_and_resample()
    with open_h5(path, "a") as f:  # keep the truth beside the inputs
        write_dataset(f, "/Truth/x_true", mock.x_true, units="light weight",
                      description="true population weights of the mock (C, P)")
        write_dataset(f, "/Truth/model", mock.model, units="data flux density",
                      description="noise-free mock cube (S, L)")

    from .cli import _print_info
    _print_info(path)
    print(f"\ndone in {time.perf_counter() - t0:.1f} s; results in {out.resolve()}")
    return path
