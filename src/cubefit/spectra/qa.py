"""Quality-assurance figure of one target: :func:`plot_target` writes one PNG.

Layout: one panel per camera with the data, the continuum model and continuum + lines
(residuals below, in units of the noise), then zoom-ins on [O II] 3726,3729,
Hβ + [O III] 4959,5007 and Hα + [N II] + [S II] (rest frame; a zoom the spectrum does
not cover says so), and a text box with the redshift, the stellar σ, age and [M/H]
(when a continuum row is given), the median S/N per camera and the main line fluxes
with their S/N.  Drawn on an Agg canvas without pyplot, so worker processes can make
figures in parallel; the file appears only when complete.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from .data import Spectrum
from .emlines import EmlineResult

__all__ = ["plot_target", "ZOOMS", "MAIN_LINES"]

ZOOMS = (("[O II]", 3700.0, 3760.0), ("Hβ + [O III]", 4830.0, 5040.0), ("Hα + [N II] + [S II]", 6520.0, 6760.0))
"""Rest-frame windows (Å) of the zoom-in panels."""

MAIN_LINES = ("oii_3726", "oii_3729", "hbeta", "oiii_5007", "halpha", "nii_6584", "sii_6716", "halpha_broad")
"""Lines whose flux goes into the text box (when fitted)."""

_FLUX_LABEL = "Flux density (10$^{-17}$ erg s$^{-1}$ cm$^{-2}$ Å$^{-1}$)"


def _text(spec: Spectrum, lines: EmlineResult | None, row: dict | None) -> str:
    row = row or {}
    out = [f"TARGETID {spec.targetid}" if spec.targetid is not None else "target", f"z = {spec.z:.5f}"]

    def num(key, fmt, err=True):
        v = row.get(key)
        if v is None or not np.isfinite(v):
            return None
        iv = row.get(key + "_IVAR", 0.0) if err else 0.0
        s = format(v, fmt)
        if iv and np.isfinite(iv) and iv > 0:
            s += " ± " + format(1 / math.sqrt(iv), fmt)
        return s

    for key, label, fmt in (("VDISP", "σ* (km/s)", ".0f"), ("LOGAGE_LW", "log age_LW (yr)", ".2f"),
                            ("MH_LW", "[M/H]_LW", ".2f"), ("RCHI2_CONT", "χ²/dof cont", ".2f")):
        s = num(key, fmt, err=key == "VDISP")
        if s is not None:
            out.append(f"{label} = {s}")
    for cam in spec.cameras:
        good = cam.ivar > 0
        if np.any(good):
            snr = float(np.median(np.abs(cam.flux[good]) * np.sqrt(cam.ivar[good])))
            out.append(f"S/N {cam.name} = {snr:.1f} /pix")
    if lines is not None and lines.status == 0:
        out.append(f"χ²/dof lines = {lines.rchi2:.2f}" + ("  broad Balmer kept" if lines.broad else ""))
        for name in MAIN_LINES:
            q = lines.lines.get(name)
            if q is None or (name.endswith("_broad") and not lines.broad):
                continue
            snr = q["FLUX"] * math.sqrt(q["FLUX_IVAR"]) if q["FLUX_IVAR"] > 0 else 0.0
            label = next((line.label for line in lines.linelist if line.name == name), name)
            out.append(f"{label}: {q['FLUX']:.1f} (S/N {snr:.1f})")
        out.append("line fluxes in 10$^{-17}$ erg s$^{-1}$ cm$^{-2}$")
    elif lines is not None:
        out.append(f"lines: {lines.message}")
    return "\n".join(out)


def plot_target(spec: Spectrum, continuum, lines: EmlineResult | None, path, *, row: dict | None = None,
                phot=None, dpi: int = 90) -> Path:
    """Write the QA figure of ``spec`` to ``path`` (PNG) and return the path.

    ``continuum``: per camera the continuum model ``(npix,)`` (NaN where not modelled);
    ``lines``: the line fit (or None); ``row``: the catalogue row of the continuum fit
    (``VDISP``, ``LOGAGE_LW``, ``MH_LW``, … for the text box); ``phot``: the joint
    spectrum + photometry fit (:class:`~cubefit.spectra.joint_phot.PhotResult`), drawn as
    an SED panel.  A directory ``path`` gets ``qa-<TARGETID>.png`` inside it.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = Path(path)
    if path.is_dir():
        path = path / f"qa-{spec.targetid if spec.targetid is not None else 'target'}.png"
    ncam = len(spec.cameras)
    fig = Figure(figsize=(4.2 * max(ncam, 3), 9.5))
    FigureCanvasAgg(fig)
    gs = fig.add_gridspec(3, max(ncam, 3) + 1, height_ratios=[3, 1, 3.2], hspace=0.35, wspace=0.3)
    line_models = lines.models if lines is not None and lines.models else [np.zeros(c.npix) for c in spec.cameras]
    for i, (cam, cont, lm) in enumerate(zip(spec.cameras, continuum, line_models)):
        ax = fig.add_subplot(gs[0, i])
        axr = fig.add_subplot(gs[1, i], sharex=ax)
        good = cam.ivar > 0
        flux = np.where(good, cam.flux, np.nan)
        model = np.asarray(cont) + lm
        ax.plot(cam.wave, flux, color="0.5", lw=0.5, label="data")
        ax.plot(cam.wave, cont, color="tab:orange", lw=0.8, label="continuum")
        ax.plot(cam.wave, model, color="tab:blue", lw=0.6, label="continuum + lines")
        if np.any(good):
            lo, hi = np.nanpercentile(flux[good], [0.5, 99.8])
            pad = hi - lo if hi > lo else max(abs(hi), 1.0)
            ax.set_ylim(lo - 0.1 * pad, hi + 0.2 * pad)
        ax.set_title(f"camera {cam.name}")
        ax.set_ylabel(_FLUX_LABEL if i == 0 else "")
        resid = np.where(good, (cam.flux - model) * np.sqrt(cam.ivar), np.nan)
        axr.plot(cam.wave, resid, color="k", lw=0.4)
        axr.axhline(0, color="tab:red", lw=0.6)
        axr.set_ylim(-5, 5)
        axr.set_xlabel("Observed wavelength (Å)")
        axr.set_ylabel("(data − model)/σ" if i == 0 else "")
        if i == 0:
            ax.legend(fontsize=7, loc="upper right")
    for j, (title, lo, hi) in enumerate(ZOOMS):
        ax = fig.add_subplot(gs[2, j])
        ax.set_title(title)
        ax.set_xlabel("Rest-frame wavelength (Å)")
        if j == 0:
            ax.set_ylabel(_FLUX_LABEL)
        shown = False
        for cam, cont, lm in zip(spec.cameras, continuum, line_models):
            rest = cam.wave / (1 + spec.z)
            sel = (rest >= lo) & (rest <= hi)
            if not np.any(sel & (cam.ivar > 0)):
                continue
            shown = True
            d = np.where(cam.ivar > 0, cam.flux, np.nan)
            ax.step(rest[sel], d[sel], where="mid", color="0.5", lw=0.7)
            ax.plot(rest[sel], np.asarray(cont)[sel], color="tab:orange", lw=0.8)
            ax.plot(rest[sel], (np.asarray(cont) + lm)[sel], color="tab:blue", lw=0.9)
        if not shown:
            ax.text(0.5, 0.5, "not covered", transform=ax.transAxes, ha="center", va="center")
        ax.set_xlim(lo, hi)
    if phot is not None:
        from .sed_plot import plot_joint_sed
        from matplotlib.ticker import NullFormatter
        ax_sed = plot_joint_sed(fig.add_subplot(gs[0:2, -1]), phot, spectrum=spec)
        # In a panel this narrow: the title on two small lines, no minor tick labels.
        ax_sed.set_title(ax_sed.get_title().replace(", χ²/dof", "\nχ²/dof", 1), fontsize=7)
        ax_sed.xaxis.set_minor_formatter(NullFormatter())
    axt = fig.add_subplot(gs[2, -1])
    axt.axis("off")
    axt.text(0.0, 1.0, _text(spec, lines, row), transform=axt.transAxes, va="top", ha="left", fontsize=8,
             family="monospace", bbox={"boxstyle": "round", "facecolor": "white", "edgecolor": "0.7"})
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fig.savefig(tmp, dpi=dpi, format="png")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path
