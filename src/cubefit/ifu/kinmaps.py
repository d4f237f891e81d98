"""Maps of the per-bin kinematics written by ``cubefit ingest`` (``/Kinematics``).

:func:`plot_kinematic_maps` draws, for every component, its v and σ (and h3, h4 when
fitted) on the spaxel grid of the original cube: each spaxel coloured by its bin's value
(``/BinMap``), axes in arcsec from the middle of the field, colour bars in km/s; velocities
on a diverging scale symmetric about 0 (the systemic velocity of the redshift).
:func:`kinematic_map_figures` is what ``cubefit report`` calls.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["plot_kinematic_maps", "kinematic_map_figures"]

_PANELS = (("v", "v [km/s]", "RdBu_r"), ("sigma", "σ [km/s]", "viridis"),
           ("h3", "h3", "RdBu_r"), ("h4", "h4", "RdBu_r"))


def plot_kinematic_maps(bin_map, pixscale: float, values: dict, path, *, names=None,
                        title: str = "") -> Path:
    """One PNG: a row per component, a column per quantity of ``values`` (``{"v": (S, C),
    "sigma": (S, C), ["h3", "h4"]}``) drawn on ``bin_map (ny, nx)`` (bin of each spaxel, -1
    unused) with ``pixscale`` arcsec per spaxel (module docstring)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    bm = np.asarray(bin_map)
    ny, nx = bm.shape
    cols = [(k, lab, cm) for k, lab, cm in _PANELS if k in values and np.isfinite(values[k]).any()]
    C = np.asarray(values["v"]).shape[1]
    names = names or [f"component {c + 1}" for c in range(C)]
    extent = [(-0.5 - (nx - 1) / 2) * pixscale, (nx - 0.5 - (nx - 1) / 2) * pixscale,
              (-0.5 - (ny - 1) / 2) * pixscale, (ny - 0.5 - (ny - 1) / 2) * pixscale]
    fig = Figure(figsize=(3.6 * len(cols), 3.0 * C + 0.4), layout="constrained")
    FigureCanvasAgg(fig)
    axes = np.atleast_2d(fig.subplots(C, len(cols), squeeze=False))
    for j, (key, label, cmap) in enumerate(cols):
        vals = np.asarray(values[key], dtype=float)
        finite = vals[np.isfinite(vals)]
        if key == "sigma":
            lo, hi = np.percentile(finite, [2, 98]) if finite.size else (0.0, 1.0)
        else:                      # symmetric about 0
            hi = np.percentile(np.abs(finite), 98) if finite.size else 1.0
            lo = -hi
        for c in range(C):
            ax = axes[c, j]
            img = np.where(bm >= 0, vals[np.clip(bm, 0, None), c], np.nan)
            im = ax.imshow(img, origin="lower", extent=extent, cmap=cmap, vmin=lo, vmax=hi,
                           interpolation="nearest")
            fig.colorbar(im, ax=ax, label=label, shrink=0.85)
            ax.set_title(f"{names[c]}: {label.split(' ')[0]}", fontsize=9)
            ax.set_xlabel("x [arcsec]")
            ax.set_ylabel("y [arcsec]")
            ax.set_aspect("equal")
    if title:
        fig.suptitle(title)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path


def kinematic_map_figures(h5, out_dir) -> list:
    """``[kinematics_maps.png]`` in ``out_dir`` for a file written by ``cubefit ingest``
    (one with ``/Kinematics`` and ``/BinMap``); ``[]`` for any other file."""
    from ..store import open_h5
    with open_h5(h5, "r") as f:
        if "/Kinematics" not in f or "/BinMap" not in f:
            return []
        bm = f["/BinMap"]
        bin_map, pixscale = bm[...], float(bm.attrs.get("pixscale_arcsec", 1.0))
        values = {k: f[f"/Kinematics/{k}"][...] for k, _, _ in _PANELS if f"/Kinematics/{k}" in f}
        names = [n.decode() if isinstance(n, bytes) else str(n) for n in f["/CompNames"][...]] \
            if "/CompNames" in f else None
    return [plot_kinematic_maps(bin_map, pixscale, values, Path(out_dir) / "kinematics_maps.png",
                                names=names, title="per-bin kinematics (cubefit ingest)")]
