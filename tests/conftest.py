"""Shared fixtures: a small synthetic mock galaxy (no download needed)."""
import hashlib

import numpy as np
import pytest

from cubefit.mock import Component, make_mock_galaxy, synthetic_templates

SMALL_COMPONENTS = (
    Component("bulge", vmax=0.0, sigma=200.0, r_eff=1.5, flux=1.0, pop_centre=(0.8, 0.6)),
    Component("disk", vmax=150.0, sigma=60.0, r_eff=2.5, flux=0.6, pop_centre=(0.3, 0.4)),
)


@pytest.fixture(scope="session")
def small_mock():
    """3×3 spaxels, 2 components, 3×2 populations, ~230 observed pixels."""
    flux, ln_lam, axes = synthetic_templates(n_age=3, n_metal=2, lam=(4700.0, 5700.0), velscale=40.0)
    return make_mock_galaxy(flux, ln_lam, pop_shape=(3, 2), pop_axes=axes, nx=3, ny=3,
                            components=SMALL_COMPONENTS, obs_lam=(4900.0, 5500.0), vel_max=600.0,
                            snr=50.0, seed=3)


def file_digest(path) -> str:
    """sha256 of a file's bytes, to prove a failed call left it untouched."""
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


@pytest.fixture
def rng():
    return np.random.default_rng(12345)
