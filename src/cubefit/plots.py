"""Diagnostic and science figures.

* :func:`plot_spectra` / :func:`plot_best_worst`: observed vs model (and residual) spectra
  of the best- and worst-fitted spaxels.
* :func:`plot_population_grids`: each component's light (or mass) on the age × [M/H] grid.
* :func:`plot_light_maps`, :func:`plot_chi2_map`: maps over the field.
* :func:`plot_fit_history`: objective and optimality per solver iteration.
* :func:`plot_recovery`: recovered vs true component quantities of a mock.

Figures are drawn with matplotlib's object API on the Agg canvas, so they never open a
window nor change the pyplot backend of the caller.  Every function writes one PNG (or a
few) and returns the path(s).
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from matplotlib import colors
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .config import Config, get_config
from .provenance import require_fresh_fit
from .recon import reconstruct
from .store import open_h5

log = logging.getLogger(__name__)

__all__ = ["spaxel_chi2", "plot_spectra", "plot_best_worst", "plot_population_grids",
           "plot_light_maps", "plot_chi2_map", "plot_fit_history", "plot_recovery"]

_DPI = 110
_LOG_AGE = r"$\langle\log_{10}(\mathrm{age/yr})\rangle$"
_MH = r"$\langle[\mathrm{M/H}]\rangle$"


def _figure(width, height) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=_DPI)
    return path


# ----------------------------------------------------------------------------- spectra

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


def plot_best_worst(lam, data, model, mask, chi2, out_dir, n: int = 3, *, noise=None,
                    units: str = "flux density", chi_name: str = "χ²/N") -> list:
    """Save data vs model (and residual) PNGs of the ``n`` lowest- and highest-``chi2`` spaxels.

    ``lam (L,)`` Å, ``data``/``model (S, L)`` in ``units``, ``mask (L,)`` True = use,
    ``chi2 (S,)`` the ranking statistic (named ``chi_name`` in the titles), ``noise
    (S, L)`` optional 1-σ errors drawn as a ±1σ band around zero residual.  Files
    ``spectrum_best<k>_s<spaxel>.png`` and ``spectrum_worst<k>_s<spaxel>.png`` go to
    ``out_dir``; their paths are returned best first.
    """
    order = np.argsort(chi2, kind="stable")
    S = len(chi2)
    n = max(1, min(int(n), S))
    picks = [("best", k + 1, s) for k, s in enumerate(order[:n])] + \
            [("worst", k + 1, s) for k, s in enumerate(order[::-1][:n])]
    out = Path(out_dir)
    files = []
    for kind, rank, s in picks:
        fig = _figure(10, 6.2)
        top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=(2.6, 1.2))
        _shade_masked(top, lam, mask, "masked")
        top.plot(lam, data[s], color="k", lw=0.8, label="data")
        top.plot(lam, model[s], color="tab:red", lw=1.0, label="model A·x")
        top.set_ylabel(f"Flux density [{units}]")
        top.set_title(f"Spaxel {s}: {kind} #{rank} of {S}, {chi_name} = {chi2[s]:.3g}")
        top.legend(loc="best", fontsize="small")
        _shade_masked(bottom, lam, mask, None)
        bottom.axhline(0.0, color="0.5", lw=0.6)
        if noise is not None:
            bottom.fill_between(lam, -noise[s], noise[s], color="tab:orange", alpha=0.3, lw=0,
                                label="±1σ noise")
        bottom.plot(lam, data[s] - model[s], color="tab:blue", lw=0.7, label="data − model")
        bottom.set_xlabel("Wavelength λ [Å]")
        bottom.set_ylabel(f"Residual\n[{units}]")
        bottom.legend(loc="upper right", fontsize="small", ncols=2)
        files.append(_save(fig, out / f"spectrum_{kind}{rank}_s{s:05d}.png"))
    return files


def plot_spectra(h5, x=None, out_dir=".", n: int = 3, *, config: Config | None = None) -> list:
    """:func:`plot_best_worst` for a file: weights ``x (C·P,)`` (default ``/X_global``),
    spaxels ranked by :func:`spaxel_chi2` with ``/Noise`` as the inverse variance when
    present.  A ``/X_global`` made from other inputs than the file holds is refused.
    Returns the PNG paths, best first."""
    cfg = config or get_config()
    path = Path(h5)
    with open_h5(path, "r", config=cfg) as f:
        if x is None:
            if "/X_global" not in f:
                raise KeyError(f"{path}: no /X_global; pass x= or run a solver first")
            require_fresh_fit(f, "the plot")
            x = f["/X_global"][...]
        Y = f["/DataCube"][...]
        mask = f["/Mask"][...].astype(bool) if "/Mask" in f else np.ones(Y.shape[1], bool)
        noise = f["/Noise"][...] if "/Noise" in f else None
        lam = np.exp(f["/ObsPix"][...])
        units = f["/DataCube"].attrs.get("units", "flux density")
    model = reconstruct(path, x, config=cfg)
    chi2 = spaxel_chi2(Y, model, mask, None if noise is None else 1.0 / noise**2)
    files = plot_best_worst(lam, Y, model, mask, chi2, out_dir, n, noise=noise, units=units,
                            chi_name="χ²/N" if noise is not None else "mean squared residual")
    log.info("%s: %d spectrum plots written to %s", path, len(files), out_dir)
    return files


# ----------------------------------------------------------------------------- populations

def _edges(v) -> np.ndarray:
    """Cell edges of (possibly non-uniform) centres: mid-points, outer half-steps mirrored."""
    v = np.asarray(v, dtype=np.float64)
    if v.size == 1:
        return np.array([v[0] - 0.5, v[0] + 0.5])
    mid = 0.5 * (v[1:] + v[:-1])
    return np.concatenate(([2 * v[0] - mid[0]], mid, [2 * v[-1] - mid[-1]]))


def plot_population_grids(rows, path, *, kind: str = "light") -> Path:
    """Each component's ``kind`` ("light" or "mass") weights on the age × [M/H] grid.

    ``rows``: list of ``(label, Populations)`` (e.g. ``[("true", truth), ("fit", fit)]``),
    one figure row each, one column per component.  Cells show the fraction of the
    component's total in each population (one square-root colour scale for the figure,
    so that the broad, low truth and the sparse, peaked NNLS fit are both visible); a
    white cross marks the weighted mean (⟨log age⟩, ⟨[M/H]⟩).  Populations without an
    age and a metallicity axis are drawn as bars over the template index.
    """
    rows = [(label, p) for label, p in rows if p.weights(kind) is not None]
    if not rows:
        raise ValueError(f"plot_population_grids: no {kind} weights to plot (masses unknown?)")
    pops0 = rows[0][1]
    C = pops0.C
    age_ax, met_ax = pops0.axis_name("age"), pops0.axis_name("metal")
    two_d = len(pops0.pop_axes) == 2 and age_ax is not None and met_ax is not None
    age_first = two_d and list(pops0.pop_axes).index(age_ax) == 0
    grids = [p.grid(kind) for _, p in rows]
    vmax = max(float(np.nanmax(g)) for g in grids)
    fig = _figure(2.9 * C + 1.2, 2.8 * len(rows) + 0.6)
    axes = np.atleast_2d(fig.subplots(len(rows), C, squeeze=False, sharex=True, sharey=True))
    mesh = None
    for i, ((label, pops), g) in enumerate(zip(rows, grids)):
        frac = pops.fractions(kind)
        ages, mets = pops.mean_log_age(kind), pops.mean_metal(kind)
        for c in range(C):
            ax = axes[i, c]
            title = f"{label}: {pops.names[c]}\n{kind} fraction {frac[c]:.3f}"
            if two_d:
                gc = g[c] if age_first else g[c].T                          # (age, metal)
                mesh = ax.pcolormesh(_edges(pops.axis_values("age")), _edges(pops.axis_values("metal")),
                                     gc.T, cmap="magma", norm=colors.PowerNorm(0.5, 0.0, vmax),
                                     shading="flat")
                ax.plot(ages[c], mets[c], marker="x", color="w", ms=9, mew=2)
                title += f"\n{_LOG_AGE} = {ages[c]:.2f} dex, {_MH} = {mets[c]:+.2f}"
                if i == len(rows) - 1:
                    ax.set_xlabel("log10(age / yr)")
                if c == 0:
                    ax.set_ylabel("[M/H] [dex]")
            else:
                ax.bar(np.arange(g[c].size), g[c].ravel(), color="tab:purple")
                ax.set_ylim(0, vmax * 1.05)
                if i == len(rows) - 1:
                    ax.set_xlabel("template index p")
                if c == 0:
                    ax.set_ylabel(f"fraction of {kind}")
            ax.set_title(title, fontsize="small")
    if mesh is not None:
        fig.colorbar(mesh, ax=axes, shrink=0.9, label=f"fraction of the component's {kind} (√ scale)")
    fig.suptitle(f"{kind.capitalize()}-weighted population mixture of each component "
                 f"(× = {kind}-weighted mean)")
    return _save(fig, path)


# ----------------------------------------------------------------------------- maps

def _regular_grid(xy):
    """``(ix, iy, x_edges, y_edges)`` if the spaxels fill a regular grid, else None."""
    out = []
    for v in (xy[:, 0], xy[:, 1]):
        u = np.unique(np.round(v, 9))
        step = np.diff(u)
        if u.size > 1 and not np.allclose(step, step[0], rtol=1e-6):
            return None
        out.append((np.searchsorted(u, np.round(v, 9)), _edges(u)))
    (ix, xe), (iy, ye) = out
    if len(set(zip(ix.tolist(), iy.tolist()))) != len(xy):
        return None
    return ix, iy, xe, ye


def _draw_map(ax, xy, values, norm, cmap):
    """Draw ``values (S,)`` at spaxel centres ``xy (S, 2)``: cells of a regular grid, else
    square markers.  Returns the mappable for a colour bar."""
    reg = _regular_grid(xy)
    if reg is not None:
        ix, iy, xe, ye = reg
        img = np.full((ye.size - 1, xe.size - 1), np.nan)
        img[iy, ix] = values
        m = ax.pcolormesh(xe, ye, img, norm=norm, cmap=cmap, shading="flat")
    else:
        m = ax.scatter(xy[:, 0], xy[:, 1], c=values, norm=norm, cmap=cmap, marker="s", s=60)
    ax.set_aspect("equal")
    return m


def plot_light_maps(xy, maps, names, path, *, truth_maps=None, xy_units: str = "spaxel",
                    light_units: str = "data flux density × pixels") -> Path:
    """Light of each component per spaxel (``maps (S, C)``, fit) over the field ``xy (S, 2)``.

    Colours are log10 of the light (spaxels without light are blank).  With
    ``truth_maps`` a first row shows the truth; each component column shares one colour
    scale between truth and fit so the two compare by eye.
    """
    maps = np.asarray(maps, dtype=np.float64)
    S, C = maps.shape
    rows = [("fit", maps)] if truth_maps is None else [("true", np.asarray(truth_maps)), ("fit", maps)]
    logs = [(label, np.log10(np.where(m > 0, m, np.nan))) for label, m in rows]
    fig = _figure(3.0 * C + 0.4, 2.9 * len(rows) + 1.0)
    axes = fig.subplots(len(rows), C, squeeze=False, sharex=True, sharey=True)
    for c in range(C):
        col = np.concatenate([m[:, c] for _, m in logs])
        lo, hi = (np.nanmin(col), np.nanmax(col)) if np.isfinite(col).any() else (0.0, 1.0)
        norm = colors.Normalize(vmin=lo, vmax=hi if hi > lo else lo + 1.0)
        for i, (label, m) in enumerate(logs):
            ax = axes[i, c]
            mesh = _draw_map(ax, xy, m[:, c], norm, "viridis")
            ax.set_title(f"{label}: {names[c]}", fontsize="small")
            if i == len(rows) - 1:
                ax.set_xlabel(f"x [{xy_units}]")
            if c == 0:
                ax.set_ylabel(f"y [{xy_units}]")
        fig.colorbar(mesh, ax=axes[:, c], location="bottom", shrink=0.9,
                     label=f"log10 light [{light_units}]")
    fig.suptitle("Light of each component per spaxel (model flux over good pixels)")
    return _save(fig, path)


def plot_chi2_map(xy, chi2, path, *, xy_units: str = "spaxel", label: str = "χ²/N") -> Path:
    """Reduced χ² per spaxel over the field (diverging colours centred on 1)."""
    chi2 = np.asarray(chi2, dtype=np.float64)
    fig = _figure(5.2, 4.6)
    ax = fig.subplots()
    lo, hi = float(np.nanmin(chi2)), float(np.nanmax(chi2))
    norm = colors.TwoSlopeNorm(vcenter=1.0, vmin=min(lo, 0.999), vmax=max(hi, 1.001)) \
        if label == "χ²/N" else colors.Normalize(vmin=lo, vmax=hi)
    mesh = _draw_map(ax, xy, chi2, norm, "coolwarm" if label == "χ²/N" else "viridis")
    fig.colorbar(mesh, ax=ax, label=label)
    ax.set_xlabel(f"x [{xy_units}]")
    ax.set_ylabel(f"y [{xy_units}]")
    ax.set_title(f"Goodness of fit per spaxel: {label}\nmedian {np.nanmedian(chi2):.3g}, "
                 f"range {lo:.3g}–{hi:.3g}", fontsize="medium")
    return _save(fig, path)


# ----------------------------------------------------------------------------- fit history

def plot_fit_history(history, path, *, tol: float | None = None, title: str = "") -> Path:
    """Objective ``f(x)`` and relative projected-gradient norm per solver iteration.

    ``history``: ``{"cost": (n,), "optimality": (n,), "passes": (n,), "time": (n,) s}``
    (``/Fit/history``); NaN optimality entries (not evaluated) are skipped.  ``tol``
    draws the KKT tolerance.
    """
    cost = np.asarray(history["cost"], dtype=np.float64)
    opt = np.asarray(history["optimality"], dtype=np.float64)
    it = np.arange(cost.size)
    fig = _figure(10, 4)
    a1, a2 = fig.subplots(1, 2)
    a1.plot(it, cost, marker=".", color="tab:blue")
    a1.set_yscale("log" if np.all(cost > 0) else "linear")
    a1.set_xlabel("iteration")
    a1.set_ylabel("objective f(x) [½ weighted χ² + penalties]")
    a1.set_title("Objective")
    ok = np.isfinite(opt) & (opt > 0)
    a2.plot(it[ok], opt[ok], marker=".", color="tab:red", label="optimality")
    if tol is not None:
        a2.axhline(tol, color="0.4", ls="--", lw=1, label=f"tolerance {tol:g}")
    a2.set_yscale("log")
    a2.set_xlabel("iteration")
    a2.set_ylabel("relative projected gradient [dimensionless]")
    a2.set_title("Optimality (KKT test)")
    a2.legend(loc="best", fontsize="small")
    if "passes" in history and len(history["passes"]):
        extra = f"{int(history['passes'][-1])} operator passes"
        if "time" in history and len(history["time"]):
            extra += f", {float(history['time'][-1]):.1f} s"
        title = f"{title} ({extra})" if title else extra
    if title:
        fig.suptitle(title)
    return _save(fig, path)


# ----------------------------------------------------------------------------- recovery

def plot_recovery(truth, fit, path, *, tolerances: dict | None = None) -> Path:
    """Recovered vs true light fraction, ⟨log age⟩ and ⟨[M/H]⟩ of each component.

    ``truth``/``fit``: :class:`cubefit.science.Populations`.  Light-weighted values are
    filled circles, mass-weighted (if available) open squares; the dashed line is 1:1
    and ``tolerances`` ({"fraction": 0.05, "age": 0.15} ...) draws a grey band around it.
    """
    tolerances = tolerances or {}
    panels = [("fraction", "light / mass fraction", lambda p, k: p.fractions(k)),
              ("age", f"{_LOG_AGE} [dex]", lambda p, k: p.mean_log_age(k)),
              ("metal", f"{_MH} [dex]", lambda p, k: p.mean_metal(k))]
    fig = _figure(14, 5.2)
    axes = fig.subplots(1, 3)
    cmap = [f"C{c % 10}" for c in range(fit.C)]
    for ax, (key, label, fn) in zip(axes, panels):
        vals = []
        for kind, marker, fill in (("light", "o", True), ("mass", "s", False)):
            t, f = fn(truth, kind), fn(fit, kind)
            if t is None or f is None:
                continue
            for c in range(fit.C):
                ax.plot(t[c], f[c], marker=marker, ms=8, ls="none", color=cmap[c],
                        mfc=cmap[c] if fill else "none", mew=1.5,
                        label=f"{fit.names[c]}" if kind == "light" else None)
            vals += [t, f]
        v = np.concatenate(vals) if vals else np.array([])
        v = v[np.isfinite(v)]                # an empty component has no mean age
        if not v.size:
            ax.set_visible(False)
            continue
        pad = 0.08 * (v.max() - v.min()) + 0.02
        lim = (v.min() - pad, v.max() + pad)
        ax.plot(lim, lim, ls="--", color="0.4", lw=1)
        if key in tolerances:
            d = tolerances[key]
            ax.fill_between(lim, [lim[0] - d, lim[1] - d], [lim[0] + d, lim[1] + d], color="0.9",
                            zorder=0, label=f"±{d:g}")
        ax.set_xlim(lim)
        ax.set_ylim(lim)
        ax.set_box_aspect(1)
        ax.set_xlabel(f"true {label}")
        ax.set_ylabel(f"recovered {label}")
        ax.set_title(label.split(" [")[0])
    axes[0].legend(loc="upper left", fontsize="small", title="● light-, □ mass-weighted",
                   title_fontsize="small")
    fig.suptitle("Recovered vs true component properties")
    return _save(fig, path)
