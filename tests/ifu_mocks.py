"""Synthetic IFU cubes of the package's mock galaxy, written with real MUSE / MaNGA layouts.

The galaxy is :func:`cubefit.mock.make_mock_galaxy` (its exact forward model, per spaxel:
Gauss–Hermite LOSVD histogram ⊛ population mixture) made from a few E-MILES SSPs (air,
rest frame) broadened to the instrument's line spread, then moved to the observed frame,
resampled by exact overlap onto the instrument's pixels (MUSE: linear air λ; MaNGA:
log-spaced vacuum λ) and given seeded Gaussian noise with a Poisson-like level (S/N ∝
√flux).  The truth per spaxel (LOSVDs, each component's noise-free cube) is returned.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from cubefit.grids import rebin_matrix
from cubefit.ifu.prepare import broaden_templates
from cubefit.ifu.readers import muse_lsf_fwhm
from cubefit.mock import Component, forward_model, make_mock_galaxy
from cubefit.spectra import emiles_fwhm, vacuum_to_air
from cubefit.templates import EMILES_PATTERN, TemplateLibrary, fetch_emiles, parse_miles_name
from ifu_fits import write_manga, write_muse

AGES = (1.0, 3.1623, 10.0)                 # Gyr
METALS = (-0.4, 0.0)


def emiles_folder(folder) -> Path:
    """A folder linking the 3 × 2 E-MILES SSPs of :data:`AGES` × :data:`METALS` (fetched into
    the user cache once): a full (age, [M/H]) grid for ``--templates``."""
    src = Path(fetch_emiles())
    folder = Path(folder)
    folder.mkdir(exist_ok=True)
    for f in src.glob(EMILES_PATTERN):
        t = parse_miles_name(f.name)
        if any(abs(t["age"] - a) < 1e-3 for a in AGES) and t["metal"] in METALS:
            (folder / f.name).symlink_to(f)
    return folder


def library(folder, velscale=20.0, lam_range=(4300.0, 6300.0)) -> TemplateLibrary:
    return TemplateLibrary.from_fits_folder(folder, velscale=velscale, lam_range=lam_range)


COUNTER_DISKS = (
    Component("old disk", vmax=250.0, sigma=150.0, r_eff=4.0, flux=1.0, pop_centre=(1.0, 0.5),
              r_turn=0.7, q=0.6),
    Component("young counter-disk", vmax=-220.0, sigma=70.0, r_eff=3.0, flux=0.8,
              pop_centre=(0.0, 0.5), r_turn=0.7, q=0.6),
)
ONE_DISK = (Component("disk", vmax=150.0, sigma=90.0, r_eff=4.0, flux=1.0, pop_centre=(0.5, 0.5),
                      r_turn=2.0, q=0.6),)


@dataclasses.dataclass
class MockCube:
    path: Path
    z: float
    lam_obs: np.ndarray          # (L,) observed pixel wavelengths, the file's medium
    losvd: np.ndarray            # (S, V, C) true histograms per spaxel (light × profile)
    vel_pix: np.ndarray
    comp_cubes: np.ndarray       # (C, S, L) noise-free cube of each component, observed pixels
    x_true: np.ndarray           # (C, P)
    lib: TemplateLibrary
    nx: int
    ny: int


def _observe(model, ln_rest, lam_obs, z, medium):
    """Rest-frame model (air, uniform ln λ) → observed pixels ``lam_obs`` in ``medium``."""
    rest = lam_obs / (1.0 + z)
    rest_air = rest if medium == "air" else vacuum_to_air(rest)
    R = rebin_matrix(ln_rest, np.log(rest_air))
    return np.asarray((R @ np.asarray(model).T).T)


def make_cube(path, lib, *, instrument="MUSE", components=COUNTER_DISKS, nx=12, ny=12, z=0.01,
              snr_peak=90.0, seed=0) -> MockCube:
    """Write a mock cube (module docstring) to ``path``; returns its truth."""
    if instrument == "MUSE":
        lam_obs = 4850.0 + 1.25 * np.arange(720)                     # air, linear
        medium = "air"
        fwhm_obs = muse_lsf_fwhm
    else:
        lam_obs = np.exp(np.log(4850.0) + 1e-4 * np.log(10) * np.arange(700))   # MaNGA log step
        medium = "vacuum"
        fwhm_obs = lambda lam: np.full(np.shape(lam), 3.0)   # noqa: E731
    lam_t = lib.lam
    fwhm_rest = fwhm_obs(lam_t * (1 + z)) / (1 + z)
    tem = broaden_templates(lib.flux, lib.ln_lam, fwhm_rest, emiles_fwhm(lam_t))
    rest_lo, rest_hi = lam_obs[0] / (1 + z) * 0.995, lam_obs[-1] / (1 + z) * 1.005
    g = make_mock_galaxy(tem, lib.ln_lam, pop_shape=lib.grid_shape, pop_axes=lib.pop_axes, nx=nx,
                         ny=ny, components=components, obs_lam=(rest_lo, rest_hi), obs_step=1,
                         vel_max=900.0, snr=None, mask_windows=())
    C = len(components)
    comp = np.array([forward_model(tem, lib.ln_lam, g.obs_pix, g.vel_pix, g.losvd[..., [c]],
                                   g.x_true[[c]]) for c in range(C)])
    comp_obs = np.array([_observe(m, g.obs_pix, lam_obs, z, medium) for m in comp])   # (C, S, L)
    clean = comp_obs.sum(axis=0)
    level = clean.mean(axis=1)
    sigma = (level.max() / snr_peak) * np.sqrt(level / level.max())
    noise = np.broadcast_to(sigma[:, None], clean.shape)
    data = clean + np.random.default_rng(seed).standard_normal(clean.shape) * noise
    cube = lambda a: a.reshape(ny, nx, -1)       # noqa: E731  (spaxel s = iy·nx + ix)
    if instrument == "MUSE":
        write_muse(path, cube(data), cube(noise ** 2), float(lam_obs[0]), step=1.25)
    else:
        ivar = 1.0 / noise ** 2
        write_manga(path, cube(data), cube(ivar), np.zeros(data.shape, np.int32).reshape(ny, nx, -1),
                    lam_obs, specres=lam_obs / 3.0)
    return MockCube(path=Path(path), z=z, lam_obs=lam_obs, losvd=g.losvd, vel_pix=g.vel_pix,
                    comp_cubes=comp_obs, x_true=g.x_true, lib=lib, nx=nx, ny=ny)


def bin_truth(mock: MockCube, bin_map) -> dict:
    """True per-bin kinematics and light of each component: moments of the bin's summed
    LOSVD histogram (v = mean, σ = standard deviation, km/s) and its light (S_bin, C)."""
    bm = np.asarray(bin_map).ravel()
    S = int(bm.max()) + 1
    C = mock.losvd.shape[2]
    v, s, light = np.zeros((S, C)), np.zeros((S, C)), np.zeros((S, C))
    vel = mock.vel_pix
    for b in range(S):
        H = mock.losvd[bm == b].sum(axis=0)                    # (V, C)
        a = H.sum(axis=0)
        v[b] = (vel @ H) / a
        s[b] = np.sqrt(((vel[:, None] - v[b]) ** 2 * H).sum(axis=0) / a)
        light[b] = mock.comp_cubes[:, bm == b].sum(axis=(1, 2))
    return {"v": v, "sigma": s, "light": light}


def population_truth(mock: MockCube, lam_rest_range) -> dict:
    """True light fractions of the components over the binned spaxels and rest-frame range
    (Å, observed pixels inside it), and each component's light-weighted ⟨log10 age/yr⟩."""
    rest = mock.lam_obs / (1 + mock.z)
    inside = (rest >= lam_rest_range[0]) & (rest <= lam_rest_range[1])
    tot = mock.comp_cubes[:, :, inside].sum(axis=(1, 2))
    lam_t = mock.lib.lam
    band = (lam_t >= lam_rest_range[0]) & (lam_t <= lam_rest_range[1])
    light_p = mock.x_true * mock.lib.flux[:, band].sum(axis=1)          # (C, P)
    log_age = np.log10(np.repeat(mock.lib.pop_axes["age"], len(mock.lib.pop_axes["metal"])) * 1e9)
    return {"fraction": tot / tot.sum(), "log_age": (light_p @ log_age) / light_p.sum(axis=1)}


__all__ = ["emiles_folder", "library", "make_cube", "bin_truth", "population_truth", "MockCube",
           "COUNTER_DISKS", "ONE_DISK"]
