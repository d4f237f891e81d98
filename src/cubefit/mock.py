"""Mock IFU galaxies with known truth, for the demo, tests and benchmarks.

A mock is a rectangular field of ``nx × ny`` spaxels holding ``C`` kinematic
components.  Each component has its own rotation curve, dispersion, surface-brightness
profile and population mixture ``x_true[c] (P,)`` (a Gaussian blob on the population
grid).  The cube is made with the exact forward model of docs/data-model.md in ``norm="model"``
form:

    Y[s] = Σ_c a[s,c] · R (h_sc ⊛ Σ_p x_true[c,p] T_p)  (+ noise)

where ``h_sc`` is the unit-area kernel of the Gauss–Hermite histogram ``H[s,:,c]`` and
``a[s,c] = Σ_v H[s,v,c]`` is the component's surface brightness there.

Conventions
-----------
* Field: spaxel centres ``xy (S, 2)`` in spaxel units, origin at the field centre,
  spaxel ``s = iy·nx + ix`` (row-major, x fastest).  The major axis is along x.
* Geometry of a component with axis ratio ``q``: elliptical radius
  ``R = sqrt(x² + (y/q)²)``; surface brightness ``flux · exp(-R / r_eff)``; line-of-sight
  velocity ``v = vmax · (2/π) arctan(R / r_turn) · x / R`` (a thin rotating disk of
  inclination ``cos i = q``; ``vmax`` already includes ``sin i``).
* Populations: each component's mixed spectrum ``Σ_p x_true[c,p] T_p`` has unit mean
  flux density over the observed range, so ``flux`` is the component's mean flux
  density at ``R = 0`` (data units) and the LOSVD amplitudes ``a[s,c]`` are its
  surface brightness in those units.
* Noise: ``noise_model="poisson"`` gives ``σ ∝ sqrt(mean flux)`` with S/N = ``snr`` in the
  brightest spaxel (an unbinned cube); ``"binned"`` gives S/N = ``snr`` in every spaxel
  (a Voronoi-binned cube, CubeFit's usual input).  The S/N is per observed pixel,
  relative to the spaxel's mean flux density.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from . import C_KMS
from .grids import check_log_grid, rebin_matrix
from .losvd import convolve_kernels, gauss_hermite_losvd, kernel_half_width, losvd_kernels

__all__ = ["Component", "MockGalaxy", "make_mock_galaxy", "forward_model", "synthetic_templates",
           "DEFAULT_COMPONENTS", "NOISE_MODELS"]

NOISE_MODELS = ("poisson", "binned")
"""Noise models of :func:`make_mock_galaxy` (module docstring)."""


@dataclass(frozen=True)
class Component:
    """One kinematic component of a mock (geometry conventions: module docstring).

    ``vmax`` km/s (its sign sets the sense of rotation), ``r_turn`` turnover radius and
    ``r_eff`` exponential scale length (spaxels), ``q`` axis ratio of its iso-brightness
    ellipses (1 round, < 1 flattened along x), ``sigma`` km/s, ``h3``/``h4``
    Gauss–Hermite moments, ``flux`` central mean flux density (data units),
    ``pop_centre`` fractional position (0..1 along each population axis, by index) and
    ``pop_width`` (same units) of its Gaussian blob of population weights.
    """

    name: str
    vmax: float
    sigma: float
    r_eff: float
    flux: float
    pop_centre: tuple
    pop_width: float = 0.12
    r_turn: float = 1.0
    h3: float = 0.0
    h4: float = 0.0
    q: float = 1.0


DEFAULT_COMPONENTS = (
    Component("bulge", vmax=0.0, sigma=220.0, r_eff=1.5, flux=1.0, pop_centre=(0.9, 0.7)),
    Component("disk", vmax=180.0, sigma=60.0, r_eff=3.0, flux=0.6, pop_centre=(0.45, 0.5), q=0.5),
    Component("counter-disk", vmax=-120.0, sigma=40.0, r_eff=2.0, flux=0.3, pop_centre=(0.15, 0.3),
              q=0.5),
)


@dataclass
class MockGalaxy:
    """A mock cube and its truth.

    Shapes: ``templates (P, T)`` on ``tem_pix (T,)``, ``obs_pix (L,)``, ``vel_pix (V,)``
    km/s, ``losvd (S, V, C)``, ``datacube``/``noise``/``model (S, L)`` (``noise`` is the
    1-σ error; ``model`` the noise-free cube), ``mask (L,)`` True = use, ``x_true (C, P)``
    population weights, ``xy (S, 2)`` spaxel centres (spaxels), ``components`` the
    :class:`Component` list, ``pop_axes`` {name: values} of the population grid.
    """

    tem_pix: np.ndarray
    obs_pix: np.ndarray
    vel_pix: np.ndarray
    templates: np.ndarray
    losvd: np.ndarray
    datacube: np.ndarray
    noise: np.ndarray
    mask: np.ndarray
    x_true: np.ndarray
    model: np.ndarray
    components: tuple
    pop_axes: dict = field(default_factory=dict)
    xy: np.ndarray | None = None

    @property
    def dims(self):
        from .store import H5Dims
        S, V, C = self.losvd.shape
        return H5Dims(nSpat=S, nLSpec=self.obs_pix.size, nTSpec=self.tem_pix.size, nVel=V,
                      nComp=C, nPop=self.templates.shape[0])


def _population_blob(pop_shape, centre, width):
    """Unit-sum Gaussian blob of weights over the population grid (fractional index units)."""
    if len(centre) != len(pop_shape):
        raise ValueError(f"pop_centre {tuple(centre)} has {len(centre)} coordinates but the "
                         f"population grid {tuple(pop_shape)} has {len(pop_shape)} axes")
    grids = np.meshgrid(*[np.linspace(0, 1, n) for n in pop_shape], indexing="ij")
    r2 = sum((g - c) ** 2 for g, c in zip(grids, centre))
    w = np.exp(-0.5 * r2 / width**2).ravel()
    w[w < 1e-3 * w.max()] = 0.0  # sparse truth, like real SSP fits
    return w / w.sum()


def make_mock_galaxy(templates, tem_pix, *, pop_shape=None, pop_axes=None, nx=4, ny=4,
                     components=DEFAULT_COMPONENTS, obs_lam=(4800.0, 5600.0), obs_step=2,
                     vel_max=900.0, snr=100.0, noise_model: str = "poisson",
                     mask_windows=((4851.0, 4871.0), (4997.0, 5017.0)), seed=0) -> MockGalaxy:
    """Make a mock galaxy from templates ``(P, T)`` on the ln-λ grid ``tem_pix``.

    The observed grid covers ``obs_lam`` (Å) with a step of ``obs_step`` template
    pixels; the velocity grid has one template pixel per bin up to ±``vel_max``
    km/s.  ``pop_shape`` is the population grid shape (default ``(P,)``), used to
    place each component's population blob.  ``snr`` is the per-pixel S/N of the
    ``noise_model`` (module docstring; ``None`` or ``inf``: no noise, and ``noise``
    holds a nominal 1e-3 of the brightest spaxel's mean).  ``mask_windows`` (Å) are
    flagged as unused, like emission-line or sky windows.
    """
    if noise_model not in NOISE_MODELS:
        raise ValueError(f"noise_model: expected one of {NOISE_MODELS}, got {noise_model!r}")
    rng = np.random.default_rng(seed)
    templates = np.asarray(templates, dtype=np.float64)
    tem_pix = np.asarray(tem_pix, dtype=np.float64)
    dlog_t = check_log_grid(tem_pix, "tem_pix")
    P = templates.shape[0]
    pop_shape = tuple(pop_shape) if pop_shape is not None else (P,)

    dv = C_KMS * dlog_t
    nv = int(np.ceil(vel_max / dv))
    vel_pix = dv * np.arange(-nv, nv + 1)
    K = kernel_half_width(vel_pix, dlog_t)
    dlog_l = obs_step * dlog_t
    n_obs = int(np.floor(np.log(obs_lam[1] / obs_lam[0]) / dlog_l))
    obs_pix = np.log(obs_lam[0]) + dlog_l * (np.arange(n_obs) + 0.5)
    if obs_pix[0] - (K + 4) * dlog_t < tem_pix[0] or obs_pix[-1] + (K + 4) * dlog_t > tem_pix[-1]:
        raise ValueError(f"obs_lam {obs_lam} Å plus {vel_max} km/s does not fit inside the templates "
                         f"({np.exp(tem_pix[0]):.1f}-{np.exp(tem_pix[-1]):.1f} Å)")

    yy, xx = np.mgrid[0:ny, 0:nx]
    x = (xx - (nx - 1) / 2).ravel().astype(float)
    y = (yy - (ny - 1) / 2).ravel().astype(float)
    S, C = x.size, len(components)
    in_range = (tem_pix >= obs_pix[0]) & (tem_pix <= obs_pix[-1])
    H = np.empty((S, vel_pix.size, C))
    x_true = np.empty((C, P))
    for c, comp in enumerate(components):
        if not 0 < comp.q <= 1:
            raise ValueError(f"component {comp.name!r}: axis ratio q must lie in (0, 1], got {comp.q}")
        R = np.hypot(x, y / comp.q)
        cos_phi = np.divide(x, R, out=np.zeros(S), where=R > 0)
        v = comp.vmax * (2 / np.pi) * np.arctan(R / comp.r_turn) * cos_phi
        sb = comp.flux * np.exp(-R / comp.r_eff)
        H[:, :, c] = sb[:, None] * gauss_hermite_losvd(vel_pix, v, comp.sigma, comp.h3, comp.h4)
        blob = _population_blob(pop_shape, comp.pop_centre, comp.pop_width)
        x_true[c] = blob / (blob @ templates[:, in_range]).mean()   # unit mean flux density

    model = forward_model(templates, tem_pix, obs_pix, vel_pix, H, x_true)
    level = np.abs(model).mean(axis=1)
    if snr is None or not np.isfinite(snr):
        noise = np.full_like(model, 1e-3 * level.max())  # nominal, no noise added
        Y = model.copy()
    else:
        sigma = level / snr if noise_model == "binned" else \
            (level.max() / snr) * np.sqrt(level / level.max())
        noise = np.broadcast_to(sigma[:, None], model.shape).copy()
        Y = model + rng.standard_normal(model.shape) * noise
    lam = np.exp(obs_pix)
    mask = np.ones(obs_pix.size, dtype=bool)
    for lo, hi in mask_windows:
        mask &= ~((lam >= lo) & (lam <= hi))
    return MockGalaxy(tem_pix=tem_pix, obs_pix=obs_pix, vel_pix=vel_pix, templates=templates,
                      losvd=H, datacube=Y, noise=noise, mask=mask, x_true=x_true, model=model,
                      components=tuple(components), pop_axes=dict(pop_axes or {}),
                      xy=np.column_stack([x, y]))


def forward_model(templates, tem_pix, obs_pix, vel_pix, losvd, x) -> np.ndarray:
    """``Y (S, L)`` of the ``norm="model"`` model for weights ``x (C, P)``, spaxel by spaxel.

    A direct (slow but transparent) construction used to make mocks and as a
    reference in tests: mixed templates ``M = x T``, kernel convolution on the
    template grid, exact-overlap rebin, LOSVD amplitude.
    """
    dlog_t = check_log_grid(tem_pix, "tem_pix")
    R = rebin_matrix(tem_pix, obs_pix)
    M = np.asarray(x) @ np.asarray(templates)                     # (C, T)
    K = kernel_half_width(vel_pix, dlog_t)
    out = np.empty((losvd.shape[0], obs_pix.size))
    for s in range(losvd.shape[0]):
        h = losvd_kernels(losvd[s], vel_pix, dlog_t, K=K, axis=0)   # (C, 2K+1)
        a = losvd[s].sum(axis=0)                                    # (C,)
        conv = convolve_kernels(M, h)                               # (C, T)
        out[s] = R @ (a @ conv)
    return out


def synthetic_templates(n_age: int = 5, n_metal: int = 3, lam=(4400.0, 6200.0),
                        velscale: float = 30.0):
    """Smooth SSP-like templates for tests that must not depend on a download.

    Returns ``(flux (P, T), ln_lam (T,), pop_axes)`` with ``P = n_age * n_metal``
    ordered row-major over (age, metal).  Each spectrum is a power-law continuum
    whose slope reddens with age and metallicity, times absorption lines whose
    depths grow with age and metallicity, so neighbouring templates are similar
    but not identical (as real SSPs are).
    """
    from .grids import log_grid
    ln_lam = log_grid(lam[0], lam[1], velscale)
    x = np.exp(ln_lam) / 5000.0
    ages = np.geomspace(0.1, 12.0, n_age)
    metals = np.linspace(-1.0, 0.2, n_metal)
    lines = np.array([4861.0, 5015.0, 5175.0, 5270.0, 5335.0, 5406.0, 5709.0, 5782.0, 5892.0])
    depth = np.linspace(0.2, 0.6, lines.size)
    flux = np.empty((n_age * n_metal, ln_lam.size))
    for i, age in enumerate(ages):
        for j, mh in enumerate(metals):
            t = np.log10(age) + 1.0   # 0 .. 2.1
            slope = 0.5 * t + 0.8 * (mh + 1.0)
            spec = x ** (-2.0 + slope)
            for lc, d in zip(lines, depth):
                width = 2.5 + 0.5 * t
                spec *= 1 - d * (0.3 + 0.3 * t + 0.3 * (mh + 1)) / 2 * np.exp(
                    -0.5 * ((np.exp(ln_lam) - lc) / width) ** 2)
            flux[i * n_metal + j] = spec
    return flux, ln_lam, {"age": ages, "metal": metals}
