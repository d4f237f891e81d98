"""Containers for survey spectra: instrumental resolution, cameras, one target.

Conventions
-----------
* Wavelengths are in Å, observed frame, vacuum unless ``Spectrum.air`` is True.
* Flux densities per Å in any consistent unit (DESI: 1e-17 erg/s/cm²/Å); ``ivar``
  is the inverse variance of the flux, 0 where a pixel is masked.
* A DESI resolution matrix is stored as its band (``ndiag`` diagonals, 11 in the
  data release files) in the layout of ``scipy.sparse.dia_matrix``: row ``d`` of
  the band holds the diagonal with offset ``ndiag//2 - d`` (offsets run from
  ``+ndiag//2`` down to ``-(ndiag//2)``) and the element ``R[i, j]`` (``j = i + off``)
  is stored at column ``j`` of that row.  ``R @ model`` turns a model sampled on the
  camera's pixels at infinite resolution into what the camera records.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy.special import erf

__all__ = ["Resolution", "Camera", "Spectrum", "FWHM_PER_SIGMA", "vacuum_to_air", "air_to_vacuum"]

FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))
"""FWHM of a Gaussian in units of its standard deviation (≈ 2.3548)."""


def _air_index(lam_vac: np.ndarray) -> np.ndarray:
    """Refractive index of standard air at vacuum wavelength ``lam_vac`` (Å): the IAU
    standard (Morton 1991, ApJS 77, 119), as used by SDSS and DESI."""
    s2 = (1e4 / lam_vac) ** 2
    return 1.0 + 2.735182e-4 + 1.314182e-6 * s2 + 2.76249e-8 * s2 * s2


def vacuum_to_air(lam_vac) -> np.ndarray:
    """Air wavelengths (Å) of vacuum wavelengths ``lam_vac`` (Å), IAU standard formula."""
    lam = np.asarray(lam_vac, dtype=np.float64)
    return lam / _air_index(lam)


def air_to_vacuum(lam_air) -> np.ndarray:
    """Vacuum wavelengths (Å) of air wavelengths ``lam_air`` (Å): the inverse of
    :func:`vacuum_to_air`, solved by fixed-point iteration to ~1e-12 relative."""
    air = np.asarray(lam_air, dtype=np.float64)
    vac = air * _air_index(air)
    for _ in range(3):                   # contraction factor ~1e-6 per step
        vac = air * _air_index(vac)
    return vac


def _as_wave(wave, name: str = "wave") -> np.ndarray:
    w = np.asarray(wave, dtype=np.float64)
    if w.ndim != 1 or w.size < 2:
        raise ValueError(f"{name}: expected a 1-D array of pixel wavelengths (Å), got shape {w.shape}")
    if not np.all(np.isfinite(w)) or np.any(np.diff(w) <= 0) or w[0] <= 0:
        raise ValueError(f"{name}: expected positive, finite, strictly increasing wavelengths (Å); "
                         f"got range [{np.nanmin(w):.6g}, {np.nanmax(w):.6g}] — sort the pixels and "
                         "drop non-finite ones")
    return w


@dataclass(frozen=True, eq=False)
class Resolution:
    """Instrumental resolution of one camera, in the observed frame.

    Exactly one of the two fields is set:

    ``matrix`` : ``(ndiag, npix)`` band of a resolution matrix (DESI RESOLUTION
        HDU row, ``ndiag`` odd), layout in the module docstring.
    ``fwhm`` : ``(npix,)`` Gaussian line-spread FWHM in Å at each pixel.

    Build with :meth:`from_desi`, :meth:`from_fwhm` or :meth:`from_R`.
    """

    matrix: np.ndarray | None = None
    fwhm: np.ndarray | None = None

    def __post_init__(self):
        if (self.matrix is None) == (self.fwhm is None):
            raise ValueError("Resolution: give exactly one of matrix= (DESI band, (ndiag, npix)) "
                             "or fwhm= (Å per pixel)")
        if self.matrix is not None:
            m = np.asarray(self.matrix, dtype=np.float64)
            if m.ndim != 2 or m.shape[0] % 2 != 1 or m.shape[1] < m.shape[0]:
                raise ValueError(f"Resolution.matrix: expected a band (ndiag, npix) with an odd number of "
                                 f"diagonals and npix ≥ ndiag, got shape {m.shape}; pass one target's "
                                 "RESOLUTION row (e.g. 11 × npix for DESI)")
            if not np.all(np.isfinite(m)):
                raise ValueError("Resolution.matrix: non-finite elements; the resolution data are corrupt")
            object.__setattr__(self, "matrix", m)
        else:
            f = np.asarray(self.fwhm, dtype=np.float64)
            if f.ndim != 1 or not np.all(np.isfinite(f) & (f > 0)):
                raise ValueError(f"Resolution.fwhm: expected a 1-D array of positive FWHM values (Å), "
                                 f"got shape {f.shape}, min {np.nanmin(f) if f.size else None!r}")
            object.__setattr__(self, "fwhm", f)

    # ------------------------------------------------------------------ builders
    @classmethod
    def from_desi(cls, rdata) -> "Resolution":
        """From one target's RESOLUTION data ``(ndiag, npix)`` (desispec band layout)."""
        return cls(matrix=np.asarray(rdata))

    @classmethod
    def from_fwhm(cls, fwhm, wave) -> "Resolution":
        """Gaussian line spread of FWHM ``fwhm`` Å (scalar or per pixel) on pixels ``wave (npix,)``."""
        w = _as_wave(wave)
        f = np.broadcast_to(np.asarray(fwhm, dtype=np.float64), w.shape).copy()
        return cls(fwhm=f)

    @classmethod
    def from_R(cls, R, wave) -> "Resolution":
        """Resolving power ``R = λ/FWHM`` (scalar or per pixel) on pixels ``wave (npix,)``."""
        w = _as_wave(wave)
        r = np.asarray(R, dtype=np.float64)
        if not np.all(np.isfinite(r) & (r > 0)):
            raise ValueError(f"Resolution.from_R: expected a positive resolving power, got {R!r}")
        return cls(fwhm=w / r)

    # ------------------------------------------------------------------ properties
    @property
    def kind(self) -> str:
        """``"matrix"`` or ``"fwhm"``."""
        return "matrix" if self.matrix is not None else "fwhm"

    @property
    def npix(self) -> int:
        return int(self.matrix.shape[1] if self.matrix is not None else self.fwhm.size)

    @property
    def offsets(self) -> np.ndarray:
        """Diagonal offsets of the band rows, ``+ndiag//2 … -(ndiag//2)`` (matrix kind)."""
        if self.matrix is None:
            raise ValueError("Resolution.offsets: only a matrix resolution has diagonals")
        h = self.matrix.shape[0] // 2
        return np.arange(h, -h - 1, -1)

    def _check_len(self, n: int, what: str) -> None:
        if n != self.npix:
            raise ValueError(f"Resolution: {what} has {n} pixels but the resolution describes "
                             f"{self.npix}; pass the camera's own pixels")

    # ------------------------------------------------------------------ operations
    def apply(self, model) -> np.ndarray:
        """``R @ model`` along the last axis: ``model (..., npix)`` → ``(..., npix)``.

        Matrix kind only (a FWHM resolution is applied by the fitter on its own
        log-λ grid; use :meth:`to_matrix` to get an explicit band).  Pixels beyond
        either end of the camera contribute nothing.
        """
        if self.matrix is None:
            raise ValueError("Resolution.apply needs a resolution matrix; for a FWHM resolution "
                             "call .to_matrix(wave).apply(model)")
        m = np.asarray(model, dtype=np.float64)
        n = self.npix
        self._check_len(m.shape[-1], "the model")
        out = np.zeros(np.broadcast_shapes(m.shape), dtype=np.float64)
        for d, off in enumerate(self.offsets):
            # out[i] += R[i, i+off] m[i+off], with R[i, i+off] stored at column i+off.
            if off >= 0:
                out[..., :n - off] += self.matrix[d, off:] * m[..., off:]
            else:
                out[..., -off:] += self.matrix[d, :n + off] * m[..., :n + off]
        return out

    def sparse(self):
        """The matrix as a ``scipy.sparse`` CSR array ``(npix, npix)`` (matrix kind)."""
        import scipy.sparse
        if self.matrix is None:
            raise ValueError("Resolution.sparse needs a resolution matrix; call .to_matrix(wave) first")
        n = self.npix
        return scipy.sparse.dia_array((self.matrix, self.offsets), shape=(n, n)).tocsr()

    def dense(self) -> np.ndarray:
        """The full ``(npix, npix)`` matrix (matrix kind; for tests and small cases)."""
        return self.apply(np.eye(self.npix)).T

    def to_matrix(self, wave, ndiag: int = 11) -> "Resolution":
        """A band resolution on pixels ``wave (npix,)`` with pixel-integrated Gaussian rows.

        For the FWHM kind: row ``i`` integrates a Gaussian of FWHM ``fwhm[i]`` centred
        on ``wave[i]`` over the pixels ``i-ndiag//2 … i+ndiag//2`` and is normalised
        to unit sum.  The matrix kind returns itself.
        """
        if self.matrix is not None:
            return self
        w = _as_wave(wave)
        self._check_len(w.size, "wave")
        if ndiag % 2 != 1 or ndiag < 1:
            raise ValueError(f"ndiag: expected an odd number of diagonals, got {ndiag}")
        h = ndiag // 2
        edges = np.concatenate(([1.5 * w[0] - 0.5 * w[1]], 0.5 * (w[1:] + w[:-1]),
                                [1.5 * w[-1] - 0.5 * w[-2]]))
        n = w.size
        i = np.arange(n)
        j = i[:, None] + np.arange(-h, h + 1)[None, :]               # (n, ndiag) columns, off = -h..h
        valid = (j >= 0) & (j < n)
        jc = np.clip(j, 0, n - 1)
        s = (self.fwhm / FWHM_PER_SIGMA)[:, None] * math.sqrt(2.0)
        rows = 0.5 * (erf((edges[jc + 1] - w[:, None]) / s) - erf((edges[jc] - w[:, None]) / s))
        rows = np.where(valid, rows, 0.0)
        rows /= rows.sum(axis=1, keepdims=True)
        band = np.zeros((ndiag, n))
        for k, off in enumerate(range(-h, h + 1)):
            d = h - off                                              # band row of offset `off`
            ok = valid[:, k]
            band[d, j[ok, k]] = rows[ok, k]
        return Resolution(matrix=band)

    def fwhm_at(self, wave) -> np.ndarray:
        """FWHM in Å at each pixel ``wave (npix,)`` (the camera's pixel wavelengths).

        FWHM kind: the stored values.  Matrix kind: ``2√(2 ln 2)`` times the
        standard deviation (in Å, from the row's second moment about its centroid,
        weights clipped at 0) of each row of the matrix, i.e. the Gaussian FWHM
        with the same variance as the line spread recorded at that pixel.
        """
        w = _as_wave(wave)
        self._check_len(w.size, "wave")
        if self.fwhm is not None:
            return self.fwhm.copy()
        n = w.size
        h = self.matrix.shape[0] // 2
        i = np.arange(n)
        j = i[:, None] + np.arange(-h, h + 1)[None, :]               # column j = i + off
        valid = (j >= 0) & (j < n)
        jc = np.clip(j, 0, n - 1)
        d = h - (j - i[:, None])                                     # band row of that offset
        r = np.where(valid, np.clip(self.matrix[d, jc], 0.0, None), 0.0)
        x = w[jc]
        tot = r.sum(axis=1)
        mean = (r * x).sum(axis=1) / tot
        var = (r * (x - mean[:, None]) ** 2).sum(axis=1) / tot
        return FWHM_PER_SIGMA * np.sqrt(var)


@dataclass(eq=False)
class Camera:
    """One camera (arm) of a spectrum, on its own pixels.

    ``wave (npix,)`` Å observed frame; ``flux (npix,)`` flux density per Å;
    ``ivar (npix,)`` inverse variance of ``flux`` (0 = masked); ``resolution``
    for these pixels or None (template resolution assumed adequate).
    """

    name: str
    wave: np.ndarray
    flux: np.ndarray
    ivar: np.ndarray
    resolution: Resolution | None = None

    def __post_init__(self):
        self.wave = np.asarray(self.wave, dtype=np.float64)
        self.flux = np.asarray(self.flux, dtype=np.float64)
        self.ivar = np.asarray(self.ivar, dtype=np.float64)
        shapes = {a.shape for a in (self.wave, self.flux, self.ivar)}
        if len(shapes) != 1 or self.wave.ndim != 1:
            raise ValueError(f"camera {self.name!r}: wave, flux and ivar must be 1-D of one length, got "
                             f"{self.wave.shape}, {self.flux.shape}, {self.ivar.shape}")
        if self.resolution is not None and self.resolution.npix != self.wave.size:
            raise ValueError(f"camera {self.name!r}: the resolution describes {self.resolution.npix} "
                             f"pixels, the camera has {self.wave.size}")

    @property
    def npix(self) -> int:
        return int(self.wave.size)


@dataclass(eq=False)
class Spectrum:
    """One target: its cameras (fitted jointly) and its redshift (never refitted).

    ``air`` is True when the cameras' wavelengths are in air (the fitter converts
    them to vacuum); ``ebv`` is the Milky-Way E(B-V) already corrected for
    (recorded only); ``meta`` holds anything the reader wants to carry along.
    """

    cameras: list[Camera]
    z: float
    targetid: int | None = None
    air: bool = False
    ebv: float = 0.0
    meta: dict = field(default_factory=dict)
