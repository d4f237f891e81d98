"""LOSVD histograms for the global fit: from kinematic moments, or imported (docs/ifu.md).

:func:`losvds_from_moments` turns each bin's and component's Gauss–Hermite moments
``(v, σ[, h3, h4])`` into a histogram on the velocity grid ``VelPix``
(:func:`cubefit.losvd.gauss_hermite_losvd`: the profile at the bin centres times the bin
width, negative wings clipped), normalised to unit sum and scaled by that component's
light in the bin, so ``Σ_v H[s, :, c] = light[s, c]``: the LOSVD amplitude of the model
(``amp_mode="sum"``) is the component's light there.

:func:`read_losvd_file` reads LOSVDs made elsewhere (a Schwarzschild model, another
kinematic decomposition) for ``cubefit init INPUT OUT --losvd FILE``:

* **FITS**: an image HDU named ``LOSVD`` holding the ``(S, V, C)`` array (as
  ``astropy.io.fits`` writes a numpy array of that shape: ``NAXIS1 = C``,
  ``NAXIS2 = V``, ``NAXIS3 = S``) and a 1-D HDU ``VELPIX`` with the ``V`` bin centres in km/s;
* **HDF5**: datasets ``LOSVD (S, V, C)`` and ``VelPix (V,)`` (any case; also
  ``H_SVC``/``vel_pix``/``vel``), at the root or anywhere in the file.

Velocities are relative to the systemic velocity (the redshift of the data), positive =
receding; the grid must be uniform and straddle 0.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..losvd import check_losvd, check_vel_grid, gauss_hermite_losvd

__all__ = ["losvds_from_moments", "velocity_grid", "read_losvd_file", "LOSVD_NAMES", "VELPIX_NAMES"]

LOSVD_NAMES = ("losvd", "h_svc")
VELPIX_NAMES = ("velpix", "vel_pix", "vel")

TRUNCATION_SIGMA = 3.0
"""A profile whose mean ± this many σ leaves the velocity grid is refused (its histogram
would lose light and bias the kernel)."""


def losvds_from_moments(moments, light, vel_pix) -> np.ndarray:
    """LOSVD histograms ``(S, V, C)`` from moments ``(S, C, 2|4)`` and light ``(S, C)``.

    ``moments[..., 0]`` = v, ``[..., 1]`` = σ (km/s, σ > 0), optionally ``[..., 2:4]`` =
    h3, h4 (pPXF convention); ``light ≥ 0`` in any light unit (zero: the component is
    absent there, an all-zero histogram); ``vel_pix (V,)`` km/s.  See the module docstring.
    """
    vel = np.asarray(vel_pix, dtype=np.float64)
    check_vel_grid(vel, "vel_pix")
    mom = np.asarray(moments, dtype=np.float64)
    if mom.ndim != 3 or mom.shape[2] not in (2, 4):
        raise ValueError(f"moments: expected (S, C, 2) (v, sigma) or (S, C, 4) (v, sigma, h3, h4), "
                         f"got shape {mom.shape}")
    S, C, _ = mom.shape
    lum = np.asarray(light, dtype=np.float64)
    if lum.shape != (S, C):
        raise ValueError(f"light: expected (S, C) = ({S}, {C}) like moments, got shape {lum.shape}")
    if not np.all(np.isfinite(lum)) or np.any(lum < 0):
        bad = np.argwhere(~np.isfinite(lum) | (lum < 0))[0]
        raise ValueError(f"light: expected finite values >= 0, got {lum[tuple(bad)]!r} at (s, c) = "
                         f"{tuple(int(i) for i in bad)}")
    present = lum > 0
    v, sig = mom[..., 0], mom[..., 1]
    if not np.all(np.isfinite(mom[present])):
        raise ValueError("moments: non-finite values where the light is positive")
    bad = present & ~(sig > 0)
    if bad.any():
        s, c = np.argwhere(bad)[0]
        raise ValueError(f"moments: sigma must be > 0 km/s, got {sig[s, c]!r} at bin {s}, "
                         f"component {c}")
    half = 0.5 * (vel[1] - vel[0])
    lo, hi = vel[0] - half, vel[-1] + half
    cut = present & ((v - TRUNCATION_SIGMA * sig < lo) | (v + TRUNCATION_SIGMA * sig > hi))
    if cut.any():
        s, c = np.argwhere(cut)[0]
        raise ValueError(f"vel_pix covers [{lo:.0f}, {hi:.0f}] km/s but the LOSVD of bin {s}, "
                         f"component {c} (v = {v[s, c]:.0f}, sigma = {sig[s, c]:.0f} km/s) reaches "
                         f"{TRUNCATION_SIGMA:g} sigma beyond it; widen the grid (velocity_grid)")
    h3 = mom[..., 2] if mom.shape[2] == 4 else 0.0
    h4 = mom[..., 3] if mom.shape[2] == 4 else 0.0
    sig_safe = np.where(present, sig, 1.0)
    H = gauss_hermite_losvd(vel, np.where(present, v, 0.0), sig_safe, np.where(present, h3, 0.0),
                            np.where(present, h4, 0.0))                          # (S, C, V)
    total = H.sum(axis=-1, keepdims=True)
    H = np.divide(H, total, out=np.zeros_like(H), where=total > 0) * lum[..., None]
    return np.ascontiguousarray(np.moveaxis(H, -1, 1))                            # (S, V, C)


def velocity_grid(moments, velscale: float, n_sigma: float = 5.0) -> np.ndarray:
    """A uniform velocity grid (km/s) of step ``velscale`` (the template pixel), symmetric
    about 0, covering every ``|v| + n_sigma·σ`` of ``moments (S, C, ≥2)``."""
    mom = np.asarray(moments, dtype=np.float64)
    if not (np.isfinite(velscale) and velscale > 0):
        raise ValueError(f"velscale: expected a positive step in km/s, got {velscale!r}")
    reach = np.nanmax(np.abs(mom[..., 0]) + n_sigma * mom[..., 1])
    n = int(np.ceil(reach / velscale)) + 1
    return velscale * np.arange(-n, n + 1)


def _find(found: dict, names, path, what):
    for k, v in found.items():
        if k.rsplit("/", 1)[-1] in names:
            return v
    raise ValueError(f"{path}: no {what} array (accepted names, any case: {', '.join(names)}); "
                     f"found {sorted(found)}")


def read_losvd_file(path) -> tuple[np.ndarray, np.ndarray]:
    """``(losvd (S, V, C), vel_pix (V,))`` from a FITS or HDF5 file (module docstring)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such LOSVD file")
    suffix = path.suffix.lower()
    found = {}
    if suffix in (".fits", ".fit", ".fts") or path.name.lower().endswith(".fits.gz"):
        from astropy.io import fits
        with fits.open(path) as hdul:
            found = {h.name.lower(): np.asarray(h.data) for h in hdul if h.data is not None and h.name}
    elif suffix in (".h5", ".hdf5", ".he5"):
        import h5py
        with h5py.File(path, "r") as f:
            f.visititems(lambda n, o: found.__setitem__(n.lower(), o[...])
                         if isinstance(o, h5py.Dataset) else None)
    else:
        raise ValueError(f"{path}: unknown LOSVD file format {suffix!r}; give .fits or .h5")
    H = np.asarray(_find(found, LOSVD_NAMES, path, "LOSVD (S, V, C)"), dtype=np.float64)
    vel = np.asarray(_find(found, VELPIX_NAMES, path, "velocity grid (V,) km/s"),
                     dtype=np.float64).ravel()
    check_vel_grid(vel, f"{path}: VelPix")
    if H.ndim != 3 or H.shape[1] != vel.size:
        raise ValueError(f"{path}: LOSVD must be (S, V, C) with V = {vel.size} velocity bins (the "
                         f"length of VelPix) on axis 1, got shape {H.shape}; transpose it to "
                         "(spaxel, velocity, component)")
    check_losvd(H, vel, f"{path}: LOSVD", axis=1)
    return H, vel

