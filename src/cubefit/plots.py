"""Diagnostic figures: observed vs model spectra of the best- and worst-fitted spaxels.

Figures are drawn with matplotlib's object API on the Agg canvas, so they never
open a window nor change the pyplot backend of the caller.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .config import Config, get_config
from .recon import reconstruct
from .store import open_h5

log = logging.getLogger(__name__)

__all__ = ["spaxel_chi2", "plot_spectra"]


def spaxel_chi2(data, model, mask, ivar=None) -> np.ndarray:
    """Reduced χ² per spaxel ``(S,)``: ``Σ_l m_l ι[s,l] (Y - Ŷ)² / Σ_l m_l``.

    ``data``, ``model`` and ``ivar`` are ``(S, L)`` (``ivar`` None: 1, so the value is
    a mean squared residual in flux units²); ``mask (L,)`` True = use.
    """
    r2 = (np.asarray(data) - np.asarray(model)) ** 2
    if ivar is not None:
        r2 = r2 * ivar
    m = np.asarray(mask, dtype=bool)
    return r2[:, m].sum(axis=1) / max(int(m.sum()), 1)


def _shade_masked(ax, lam, mask, label):
    """Grey bands over runs of masked pixels (one legend entry)."""
    edges = np.flatnonzero(np.diff(np.concatenate(([0], (~mask).astype(np.int8), [0]))))
    for k, (i0, i1) in enumerate(zip(edges[::2], edges[1::2])):
        ax.axvspan(lam[i0], lam[i1 - 1], color="0.85", zorder=0, label=label if k == 0 else None)


def plot_spectra(h5, x=None, out_dir=".", n: int = 3, *, config: Config | None = None) -> list:
    """Save data vs model (and residual) PNGs for the ``n`` best and ``n`` worst spaxels.

    ``x`` are the population weights ``(C·P,)`` (default ``/X_global``); spaxels are
    ranked by :func:`spaxel_chi2` with ``/Noise`` as the inverse variance when
    present.  Files ``spectrum_best<k>_s<spaxel>.png`` and
    ``spectrum_worst<k>_s<spaxel>.png`` go to ``out_dir``; their paths are returned
    best first.
    """
    cfg = config or get_config()
    path = Path(h5)
    with open_h5(path, "r", config=cfg) as f:
        if x is None:
            if "/X_global" not in f:
                raise KeyError(f"{path}: no /X_global; pass x= or run a solver first")
            x = f["/X_global"][...]
        Y = f["/DataCube"][...]
        mask = f["/Mask"][...].astype(bool) if "/Mask" in f else np.ones(Y.shape[1], bool)
        noise = f["/Noise"][...] if "/Noise" in f else None
        lam = np.exp(f["/ObsPix"][...])
        units = f["/DataCube"].attrs.get("units", "flux density")
    model = reconstruct(path, x, config=cfg)
    chi2 = spaxel_chi2(Y, model, mask, None if noise is None else 1.0 / noise**2)
    order = np.argsort(chi2, kind="stable")
    n = max(1, min(int(n), Y.shape[0]))
    picks = [("best", k + 1, s) for k, s in enumerate(order[:n])] + \
            [("worst", k + 1, s) for k, s in enumerate(order[::-1][:n])]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    chi_name = "χ²/N" if noise is not None else "mean squared residual"
    files = []
    for kind, rank, s in picks:
        fig = Figure(figsize=(10, 5.5), layout="constrained")
        FigureCanvasAgg(fig)
        top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=(3, 1))
        _shade_masked(top, lam, mask, "masked")
        top.plot(lam, Y[s], color="k", lw=0.8, label="data")
        top.plot(lam, model[s], color="tab:red", lw=1.0, label="model A·x")
        top.set_ylabel(f"Flux density [{units}]")
        top.set_title(f"Spaxel {s}: {kind} #{rank} of {Y.shape[0]}, {chi_name} = {chi2[s]:.3g}")
        top.legend(loc="best", fontsize="small")
        _shade_masked(bottom, lam, mask, None)
        bottom.axhline(0.0, color="0.5", lw=0.6)
        bottom.plot(lam, Y[s] - model[s], color="tab:blue", lw=0.7, label="data − model")
        bottom.set_xlabel("Wavelength λ [Å]")
        bottom.set_ylabel(f"Residual [{units}]")
        bottom.legend(loc="best", fontsize="small")
        name = out / f"spectrum_{kind}{rank}_s{s:05d}.png"
        fig.savefig(name, dpi=110)
        files.append(name)
    log.info("%s: %d spectrum plots written to %s", path, len(files), out)
    return files
