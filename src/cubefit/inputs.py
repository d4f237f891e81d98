"""Read a fit's input arrays from ``.npz``, FITS or HDF5 files (for ``cubefit init``).

The arrays are the keyword arguments of :meth:`cubefit.store.H5Manager.populate_from_arrays`
plus the two grids.  Names are matched case-insensitively, with the manual's dataset names
and a few common aliases accepted:

==============  ==========================================  ===========
argument        accepted names                              shape
==============  ==========================================  ===========
tem_pix         TemPix, tem_pix, tem_loglam, ln_lam_tem     (T,)  ln Å
obs_pix         ObsPix, obs_pix, obs_loglam, ln_lam_obs     (L,)  ln Å
vel_pix         VelPix, vel_pix, vel                        (V,)  km/s
templates       Templates, templates, T_PT                  (P, T)
losvd           LOSVD, losvd, H_SVC                         (S, V, C)
datacube        DataCube, datacube, Y_SL                    (S, L) or (L, S)
mask            Mask, mask                                  (L,) bool
noise           Noise, noise                                (S, L)
orbit_weights   CompWeights, orbit_weights                  (C,)
pop_axes        PopAxes/<name> (HDF5), age/ages, metal/metals
==============  ==========================================  ===========

FITS files hold one image HDU per array, named by its ``EXTNAME``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["load_input_arrays", "ALIASES"]

ALIASES = {
    "tem_pix": ("tempix", "tem_pix", "tem_loglam", "ln_lam_tem"),
    "obs_pix": ("obspix", "obs_pix", "obs_loglam", "ln_lam_obs"),
    "vel_pix": ("velpix", "vel_pix", "vel"),
    "templates": ("templates", "t_pt"),
    "losvd": ("losvd", "h_svc"),
    "datacube": ("datacube", "y_sl"),
    "mask": ("mask",),
    "noise": ("noise",),
    "orbit_weights": ("compweights", "orbit_weights"),
}
REQUIRED = ("tem_pix", "obs_pix", "templates", "losvd", "datacube")
_AXES = {"age": ("age", "ages"), "metal": ("metal", "metals", "mh")}


def _read_all(path: Path) -> dict:
    """Every array in the file, keyed by lower-case name (HDF5: path without leading /)."""
    suffix = path.suffix.lower()
    if suffix == ".npz":
        with np.load(path, allow_pickle=False) as z:
            return {k.lower(): z[k] for k in z.files}
    if suffix in (".fits", ".fit", ".fts") or path.name.lower().endswith(".fits.gz"):
        from astropy.io import fits
        out = {}
        with fits.open(path) as hdul:
            for hdu in hdul:
                if hdu.data is not None and hdu.name:
                    out[hdu.name.lower()] = np.asarray(hdu.data)
        return out
    if suffix in (".h5", ".hdf5", ".he5"):
        import h5py
        out = {}
        with h5py.File(path, "r") as f:
            f.visititems(lambda n, o: out.__setitem__(n.lower(), o[...])
                         if isinstance(o, h5py.Dataset) else None)
        return out
    raise ValueError(f"{path}: unknown input format {suffix!r}; give a .npz, .fits or .h5 file")


def load_input_arrays(path, provided=()) -> dict:
    """``{argument: array}`` for :meth:`H5Manager.populate_from_arrays` (plus the grids).

    ``provided``: required arguments that come from elsewhere (e.g. ``("losvd",)`` with
    ``cubefit init --losvd``).  Raises ``ValueError`` listing the missing arrays and the
    names that are accepted.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such input file")
    found = _read_all(path)
    out = {}
    for arg, names in ALIASES.items():
        hit = next((n for n in names if n in found), None)
        if hit is not None:
            out[arg] = found[hit]
    missing = [a for a in REQUIRED if a not in out and a not in provided]
    if missing:
        hints = "; ".join(f"{a}: one of {', '.join(ALIASES[a])}" for a in missing)
        raise ValueError(f"{path}: missing input arrays {missing} (found {sorted(found)}); "
                         f"accepted names (any case) — {hints}")
    axes = {k[len("popaxes/"):]: v for k, v in found.items() if k.startswith("popaxes/")}
    if not axes:
        for axis, names in _AXES.items():
            hit = next((n for n in names if n in found), None)
            if hit is not None:
                axes[axis] = found[hit]
    if axes:
        out["pop_axes"] = axes
    if "mask" in out:
        out["mask"] = np.asarray(out["mask"]).astype(bool)
    return out
