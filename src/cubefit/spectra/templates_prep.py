"""Templates prepared once per process for per-spectrum fits.

:func:`prepare_templates` turns a :class:`cubefit.templates.TemplateLibrary`
(E-MILES by default) into :class:`PreparedTemplates`:

* **Wavelengths**: rest frame, uniform in ln λ with step ``velscale`` km/s, in the
  vacuum convention of DESI and SDSS (``vacuum=True``, default): a library in air
  (E-MILES) is first sampled on a grid ``oversample`` times finer, its pixel centres
  converted with :func:`cubefit.spectra.data.air_to_vacuum` and then rebinned
  exactly (bin overlap) onto the uniform vacuum grid, so the air→vacuum stretch
  (≈ 83 km/s, varying by ~3 km/s across the optical) is applied without smoothing
  the templates by more than 1/``oversample`` of a pixel.
* **Normalisation**: one global factor (the median flux), so relative luminosities
  and hence masses per weight are kept.
* **Resolution**: the templates' own line-spread FWHM (Å, rest frame) at every
  pixel, :attr:`PreparedTemplates.fwhm` — for E-MILES, :func:`emiles_fwhm`.
* **Coverage**: :attr:`PreparedTemplates.covered` marks pixels where every template
  predicts flux (E-MILES has exact zeros above 8950 Å for its youngest SSPs).
* **Fourier transforms**: the template axis is cut into fixed blocks of ``block``
  pixels; :meth:`PreparedTemplates.block_rfft` computes, once per process and on
  first use, the rfft of each block's window (the block plus ``K`` pixels each side,
  ``K`` covering the largest velocity shift and LOSVD width allowed).  Every target
  fitted in the process reuses them, whatever its redshift.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

import numpy as np
import scipy.fft

from .. import C_KMS
from ..grids import edges_from_centres, log_rebin
from ..templates import TemplateLibrary
from .data import FWHM_PER_SIGMA, air_to_vacuum

__all__ = ["PreparedTemplates", "prepare_templates", "emiles_fwhm", "LOSVD_TAIL_SIGMAS",
           "MAX_DATA_SIGMA"]

LOSVD_TAIL_SIGMAS = 5.0
"""Half-width, in units of the LOSVD's effective σ, that the FFT windows keep free of
wrap-around (the Gaussian has decayed to exp(-12.5) ≈ 4e-6 of its peak there, at the largest σ allowed)."""

MAX_DATA_SIGMA = 300.0
"""Largest instrumental dispersion (km/s) of the data, beyond the templates' own, that
the FFT windows are sized for (resolving power ≳ 420)."""

_EMILES_BLUE, _EMILES_RED = 3540.5, 8950.4


def emiles_fwhm(lam) -> np.ndarray:
    """E-MILES line-spread FWHM (Å) at rest wavelengths ``lam`` (Å, air).

    2.51 Å over the MILES range 3540.5–8950.4 Å; 3.0 Å bluewards (NGSL-based part);
    a constant σ = 60 km/s redwards (IRTF-based part: FWHM = 23.57 Å at 5 µm, the
    upper end quoted in the files' headers) (Vazdekis et al. 2016).
    """
    lam = np.asarray(lam, dtype=np.float64)
    red = FWHM_PER_SIGMA * 60.0 / C_KMS * lam
    return np.where(lam < _EMILES_BLUE, 3.0, np.where(lam <= _EMILES_RED, 2.51, red))


@dataclass(eq=False)
class PreparedTemplates:
    """Templates ready for :func:`cubefit.spectra.fit_continuum` (module docstring).

    ``flux (P, T)`` normalised templates on ``ln_lam (T,)`` (rest frame, ln Å, uniform
    step ``velscale`` km/s); ``fwhm (T,)`` their FWHM in Å; ``covered (T,)`` all
    templates positive; ``vacuum`` the wavelength convention of ``ln_lam``;
    ``mass_per_weight (P,)`` stellar mass (living + remnants, M_sun) carried by a unit
    weight in the templates' flux unit, or None; ``lv_per_weight (P,)`` its V-band
    luminosity (L_sun) or None; ``pop_axes``/``axis_units``/``names`` from the library;
    ``vel_max``, ``sigma_max`` (km/s) the LOSVD range the FFT windows are built for;
    ``K`` the window margin and ``block`` the block length (pixels); ``nfft`` the FFT
    length of every block.
    """

    flux: np.ndarray
    ln_lam: np.ndarray
    velscale: float
    fwhm: np.ndarray
    covered: np.ndarray
    vacuum: bool
    mass_per_weight: np.ndarray | None
    lv_per_weight: np.ndarray | None
    pop_axes: dict
    axis_units: dict
    names: list
    vel_max: float
    sigma_max: float
    K: int
    block: int
    nfft: int
    source: str = ""
    _rfft_cache: dict = field(default_factory=dict, repr=False)

    @property
    def P(self) -> int:
        return self.flux.shape[0]

    @property
    def T(self) -> int:
        return self.flux.shape[1]

    @property
    def dlog(self) -> float:
        """ln λ step of the grid."""
        return self.velscale / C_KMS

    @property
    def n_blocks(self) -> int:
        return -(-self.T // self.block)

    def sigma_v(self) -> np.ndarray:
        """Templates' instrumental dispersion in km/s at each pixel, ``(T,)``."""
        return C_KMS * self.fwhm / (FWHM_PER_SIGMA * np.exp(self.ln_lam))

    def block_rfft(self, j: int) -> np.ndarray:
        """rfft ``(P, nfft//2 + 1)`` of block ``j``'s window: template pixels
        ``j·block − K … (j+1)·block + K − 1`` (zero outside the grid), window pixel 0
        being template pixel ``j·block − K``.  Computed on first use, then cached."""
        out = self._rfft_cache.get(j)
        if out is None:
            if not 0 <= j < self.n_blocks:
                raise ValueError(f"block {j} outside 0..{self.n_blocks - 1}")
            lo = j * self.block - self.K
            hi = min((j + 1) * self.block + self.K, self.T)
            win = np.zeros((self.P, self.nfft))
            a = max(lo, 0)
            win[:, a - lo:hi - lo] = self.flux[:, a:hi]
            out = scipy.fft.rfft(win, axis=1)
            self._rfft_cache[j] = out
        return out


def _library_fwhm(lib: TemplateLibrary, lam_air: np.ndarray) -> np.ndarray:
    """FWHM (Å) of a library's templates at its own wavelengths."""
    curve = lib.meta.get("fwhm_curve")
    if lib.fwhm is not None:
        return np.full(lam_air.shape, float(lib.fwhm))
    if curve is not None:
        return np.interp(lam_air, np.asarray(curve[0]), np.asarray(curve[1]))
    if str(lib.meta.get("Models Library", "")).strip().upper() == "E-MILES" or \
            tuple(lib.meta.get("fwhm_range", ())) == (2.51, 23.57):
        return emiles_fwhm(lam_air)
    raise ValueError(f"{lib.source}: the templates' resolution is unknown (no fwhm, fwhm_curve or "
                     "E-MILES metadata); pass fwhm= (Å, scalar or per pixel) to prepare_templates")


def prepare_templates(library: TemplateLibrary | None = None, *, velscale: float = 30.0,
                      lam_range=(1680.0, 11000.0), vacuum: bool = True, library_air: bool = True,
                      fwhm=None, vel_max: float = 1000.0, sigma_max: float = 600.0,
                      block_kms: float = 20000.0, oversample: int = 4,
                      cache_dir=None) -> PreparedTemplates:
    """Prepare templates once per process (module docstring).

    Parameters
    ----------
    library : TemplateLibrary, optional
        Default: the 150 E-MILES SSPs (:meth:`TemplateLibrary.from_emiles`, fetched once
        into the user cache; ``cache_dir`` overrides it).  Its own ``velscale`` is ignored:
        the spectra are rebinned (exact overlap) to ``velscale``.
    velscale : float
        Template pixel in km/s.  For log-sampled data, a unit fraction of the data's
        pixel (e.g. half) lets the model be binned onto the data exactly.
    lam_range : (lo, hi) Å
        Rest-frame range kept (clipped to the library).
    vacuum, library_air : bool
        Return vacuum wavelengths; the library is in air (E-MILES is).
    fwhm : float or (T_lib,) array, optional
        The library's FWHM in Å when it does not carry it.
    vel_max, sigma_max : float
        Largest |v| (km/s, relative to the redshift) and LOSVD σ (km/s) any fit will use:
        they size the FFT windows.  Fits clip their bounds to these.
    block_kms : float
        Length of a block (km/s); the instrumental broadening is taken constant over a
        block, so it should be small enough for the resolution (in km/s) to vary
        little across it.
    oversample : int
        Factor for the intermediate grid of the air→vacuum conversion.

    Everything is built from picklable arguments, so a worker-pool initializer can
    call this in each worker; with ``library=None`` results are cached per process
    (:func:`prepare_templates_cached`).
    """
    if not velscale > 0:
        raise ValueError(f"velscale: expected a positive pixel size in km/s, got {velscale}")
    if not (vel_max > 0 and sigma_max > 0 and block_kms > 0):
        raise ValueError(f"vel_max, sigma_max and block_kms must be positive (km/s), got "
                         f"{vel_max}, {sigma_max}, {block_kms}")
    lo, hi = (float(x) for x in lam_range)
    if library is None:
        library = TemplateLibrary.from_emiles(velscale=velscale / oversample,
                                              lam_range=(max(lo, 1690.0), min(hi, 49000.0)),
                                              cache_dir=cache_dir)
    lam_lib = library.lam
    fw_lib = (np.broadcast_to(np.asarray(fwhm, dtype=np.float64), lam_lib.shape)
              if fwhm is not None else _library_fwhm(library, lam_lib))
    keep = (lam_lib >= lo * 0.99) & (lam_lib <= hi * 1.01)
    if np.count_nonzero(keep) < 16:
        raise ValueError(f"{library.source}: lam_range {lam_range} Å overlaps the library "
                         f"({lam_lib[0]:.1f}–{lam_lib[-1]:.1f} Å) by fewer than 16 pixels")
    lam_lib, fw_lib = lam_lib[keep], fw_lib[keep]
    spectra = library.flux[:, keep] * library.norm[:, None]          # in the library's flux unit
    masses, m2l, source = library.masses, library.mass_to_light, library.source
    pop_axes, axis_units, names = dict(library.pop_axes), dict(library.axis_units), list(library.names)
    del library                  # a library loaded here is large (fine grid): free it now
    convert = vacuum and library_air
    lam_src = air_to_vacuum(lam_lib) if convert else lam_lib
    if not vacuum and not library_air:
        raise ValueError("prepare_templates: a vacuum library cannot be converted to air; "
                         "fit air data by declaring Spectrum(air=True): the fitter converts the data")
    # Exact-overlap rebin of the piecewise-constant source onto the uniform log grid, a
    # few templates at a time (the fine intermediate grid is large).
    parts = [log_rebin(lam_src, spectra[i:i + 16], velscale=velscale) for i in range(0, len(spectra), 16)]
    flux, ln_lam, vs = np.concatenate([p[0] for p in parts]), parts[0][1], parts[0][2]
    del parts, spectra
    edges = np.exp(edges_from_centres(np.log(lam_src)))
    inside = (np.exp(ln_lam) >= max(lo, edges[0])) & (np.exp(ln_lam) <= min(hi, edges[-1]))
    flux, ln_lam = flux[:, inside], ln_lam[inside]
    # A FWHM in Å stretches with the wavelength scale (by the refractive index).
    fwhm_out = np.interp(ln_lam, np.log(lam_src), fw_lib * lam_src / lam_lib)
    covered = np.all(flux > 0, axis=0)
    scale = float(np.median(flux[:, covered])) if covered.any() else float(np.median(flux[flux > 0]))
    flux = flux / scale
    mass = lv = None
    if masses is not None:
        # A unit weight on a normalised template is 1/scale of the library's unit
        # (for SSPs: per solar mass of initial stellar mass).
        mass = masses / scale
        if m2l is not None:
            lv = mass / m2l
    # FFT windows: K covers |v| + one pixel of alignment + the LOSVD tails.
    K = int(math.ceil((vel_max + vs + LOSVD_TAIL_SIGMAS * math.hypot(sigma_max, MAX_DATA_SIGMA)) / vs))
    want = max(int(round(block_kms / vs)), 2 * K)
    nfft = scipy.fft.next_fast_len(want + 2 * K, real=True)
    return PreparedTemplates(
        flux=flux, ln_lam=ln_lam, velscale=float(vs), fwhm=fwhm_out, covered=covered,
        vacuum=bool(vacuum), mass_per_weight=mass, lv_per_weight=lv, pop_axes=pop_axes,
        axis_units=axis_units, names=names, vel_max=float(vel_max),
        sigma_max=float(sigma_max), K=K, block=nfft - 2 * K, nfft=nfft,
        source=f"{source} ({'vacuum' if vacuum else 'air'}, {vs:.6g} km/s)")


@functools.lru_cache(maxsize=4)
def prepare_templates_cached(**kwargs) -> PreparedTemplates:
    """:func:`prepare_templates` of the default E-MILES library, memoised per process on
    its (hashable) keyword arguments."""
    return prepare_templates(None, **kwargs)
