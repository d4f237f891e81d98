"""A report folder for a fitted file: PNG figures, ``summary.json`` and ``report.md``.

:func:`write_report` runs :func:`cubefit.science.analyse` and writes

* ``populations_light.png`` (and ``populations_mass.png`` when the templates carry
  masses): each component's weights on the age × [M/H] grid, truth above fit for a mock;
* ``light_maps.png`` and ``chi2_map.png`` (when ``/SpaxelXY`` gives the spaxel positions);
* ``spectrum_best<k>_s<spaxel>.png`` / ``spectrum_worst<k>_s<spaxel>.png``: data, model and
  residual of the best and worst spaxels by χ²/N;
* ``fit_history.png``: objective and optimality per solver iteration;
* ``kinematics_maps.png`` (files from ``cubefit ingest``): per-bin v, σ of each component;
* ``recovery.png`` (mock only): recovered vs true fractions, ages and metallicities;
* ``summary.json``: the numbers behind all of it;
* ``report.md``: a short Markdown summary linking the figures.

The definitions and conventions (light, mass, ⟨log age⟩) are those of
:mod:`cubefit.science` and are restated in the report itself.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import __version__, plots
from .config import Config
from .science import Analysis, analyse

log = logging.getLogger(__name__)

__all__ = ["write_report", "Report", "markdown"]


@dataclass
class Report:
    """What :func:`write_report` wrote: ``folder``, ``markdown`` (report.md), ``summary``
    (summary.json path), ``figures`` (PNG paths) and the :class:`Analysis` behind them."""

    folder: Path
    markdown: Path
    summary: Path
    figures: list
    analysis: Analysis


def _fmt(v, spec=".3f") -> str:
    return "–" if v is None or (isinstance(v, float) and not np.isfinite(v)) else format(v, spec)


def _age_gyr(log_age) -> str:
    return "–" if log_age is None or not np.isfinite(log_age) else f"{10 ** (log_age - 9):.2g} Gyr"


def _table(header, rows) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return out


def _component_table(a: Analysis, kind: str, errors: dict | None = None) -> list[str]:
    """Markdown table of one kind ("light"/"mass"): fraction, ⟨log age⟩, ⟨[M/H]⟩ per component,
    with truth and difference columns for a mock, and "± σ" from the Monte-Carlo
    ``errors`` ({quantity: (5, C)} of ``/Fit/uncertainties``, row 4 the std) when given."""
    fit, truth = a.fit, a.truth
    errors = errors or {}
    unc = {"fraction": errors.get("light_fraction") if kind == "light" else None,
           "⟨log age⟩ [dex]": errors.get(f"log_age_{kind}"), "⟨[M/H]⟩ [dex]": errors.get(f"metal_{kind}")}
    cols = [("fraction", lambda p: p.fractions(kind), ".4f"),
            ("⟨log age⟩ [dex]", lambda p: p.mean_log_age(kind), ".3f"),
            ("⟨[M/H]⟩ [dex]", lambda p: p.mean_metal(kind), ".3f")]
    cols = [c for c in cols if c[1](fit) is not None]
    header = ["component"]
    for name, _, _ in cols:
        header += [f"{name} true", "fit", "fit − true"] if truth is not None else [name]
    rows = []
    for c in range(fit.C):
        row = [fit.names[c]]
        for name, fn, spec in cols:
            f = fn(fit)[c]
            cell = _fmt(f, spec) + (f" ± {_fmt(unc[name][4][c], spec)}" if unc[name] is not None
                                    else "") + (f" ({_age_gyr(f)})" if "age" in name else "")
            if truth is not None:
                t = fn(truth)[c]
                row += [_fmt(t, spec) + (f" ({_age_gyr(t)})" if "age" in name else ""), cell,
                        _fmt(f - t, "+" + spec)]
            else:
                row.append(cell)
        rows.append(row)
    return _table(header, rows)


def markdown(a: Analysis, figures: list, *, title: str, run_info: dict | None = None,
             errors: dict | None = None) -> str:
    """The text of ``report.md`` for an analysis and its figure paths (relative links);
    ``errors``: ``/Fit/uncertainties`` ({quantity: (5, C)}) shown as ± σ in the tables."""
    attrs = a.fit_attrs
    lines = [f"# {title}", "", f"File: `{a.path.name}` (written by cubefit {__version__})."]
    if run_info:
        lines += [""] + [f"- **{k}**: {v}" for k, v in run_info.items()]
    status = attrs.get("status")
    certified = "certified optimal (KKT test passed)" if attrs.get("success") else \
        f"NOT certified (status {status}: {attrs.get('message', '')})"
    S, L = a.data.shape
    chi_name = "χ²/N" if a.noise is not None else "mean squared residual"
    lines += ["", "## Fit", "",
              f"- {S} spaxels × {int(a.mask.sum())} good of {L} pixels, {a.fit.C} components × "
              f"{a.fit.light.shape[1]} populations {a.fit.pop_shape}, normalisation `{a.norm_mode}`.",
              f"- Solver `{attrs.get('solver', '?')}`: {certified}; optimality "
              f"{_fmt(attrs.get('optimality'), '.2g')}, cost {_fmt(attrs.get('cost'), '.6g')}, "
              f"{attrs.get('nit', '?')} iterations, {_fmt(attrs.get('time_total_s'), '.1f')} s.",
              f"- Priors: regul = {attrs.get('setting.regul', 0)}, "
              f"ridge = {attrs.get('setting.ridge', 0)}, orbit weights "
              f"{'used' if np.isfinite(attrs.get('orbit_mu', np.nan)) else 'not used'}; "
              f"λ-weights {'on' if attrs.get('setting.lambda_weights') else 'off'}.",
              f"- {chi_name} per spaxel: median {np.median(a.chi2):.3g}, "
              f"range {a.chi2.min():.3g}–{a.chi2.max():.3g}."]
    lines += ["", "## Components: light-weighted", ""] + _component_table(a, "light", errors)
    if a.fit.mass is not None:
        lines += ["", "## Components: mass-weighted", ""] + _component_table(a, "mass", errors)
    if errors:
        lines += ["", f"± σ: standard deviation over {attrs.get('uncertainties.nmonte')} Monte-Carlo "
                      f"re-solves ({attrs.get('uncertainties.kind')}; cubefit.uncertainties)."]
    total = a.fit.summary()["total"]
    lines += ["", f"All components together: ⟨log age⟩_L = {_fmt(total['mean_log_age_light'])} dex "
                  f"({_age_gyr(total['mean_log_age_light'])}), ⟨[M/H]⟩_L = "
                  f"{_fmt(total['mean_metal_light'])} dex"
                  + (f"; ⟨log age⟩_M = {_fmt(total['mean_log_age_mass'])} dex, ⟨[M/H]⟩_M = "
                     f"{_fmt(total['mean_metal_mass'])} dex." if a.fit.mass is not None else ".")]
    lines += ["", "Conventions: the light of a component is its model flux summed over the good "
              "pixels of all spaxels (λ-weights and inverse variance weight the fit, not the "
              "light); the truth of a mock is measured with the same function. ⟨log age⟩ = "
              "Σ w·log10(age/yr) / Σ w (averaged in log, as pPXF's mean_age_metal; the Gyr "
              "value in brackets is 10^(⟨log age⟩−9)); ⟨[M/H]⟩ = Σ w·[M/H] / Σ w. Mass weights "
              "are the fit weights times the templates' stellar mass (living stars + remnants) per unit "
              "weight (`/TemplateMass`). See `cubefit.science`."]
    lines += ["", "## Figures", ""]
    for p in figures:
        lines += [f"![{p.stem}]({p.name})", ""]
    return "\n".join(lines).rstrip() + "\n"


def write_report(h5, out_dir, *, title: str = "CubeFit report", run_info: dict | None = None,
                 tolerances: dict | None = None, n_spectra: int = 1,
                 config: Config | None = None) -> Report:
    """Analyse the fitted file ``h5`` and write the report folder ``out_dir`` (module docstring).

    ``run_info``: extra ``{label: text}`` lines for the top of the report (e.g. how the
    data were made, run time).  ``tolerances``: bands for the recovery figure
    (``{"fraction": …, "age": …}``).  ``n_spectra``: best and worst spaxels plotted.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    a = analyse(h5, config=config)
    errors, regul_fig = _ifu_extras(h5, out, a.fit_attrs, config)   # Monte Carlo, regul="auto"
    rows = [("true", a.truth), ("fit", a.fit)] if a.truth is not None else [("fit", a.fit)]
    figs = []
    if a.truth is not None:
        figs.append(plots.plot_recovery(a.truth, a.fit, out / "recovery.png", tolerances=tolerances))
    figs.append(plots.plot_population_grids(rows, out / "populations_light.png", kind="light"))
    if a.fit.mass is not None:
        figs.append(plots.plot_population_grids(rows, out / "populations_mass.png", kind="mass"))
    chi_name = "χ²/N" if a.noise is not None else "mean squared residual"
    if a.xy is not None:
        figs.append(plots.plot_light_maps(a.xy, a.maps, a.fit.names, out / "light_maps.png",
                                          truth_maps=a.truth_maps, xy_units=a.xy_units,
                                          light_units=f"{a.flux_units} × pixels"))
        figs.append(plots.plot_chi2_map(a.xy, a.chi2, out / "chi2_map.png", xy_units=a.xy_units,
                                        label=chi_name))
    if a.history:
        figs.append(plots.plot_fit_history(a.history, out / "fit_history.png",
                                           tol=a.fit_attrs.get("setting.tol"),
                                           title=f"solver {a.fit_attrs.get('solver', '?')}"))
    figs += regul_fig
    from .ifu.kinmaps import kinematic_map_figures     # files written by `cubefit ingest`
    figs += kinematic_map_figures(h5, out)
    for old in out.glob("spectrum_*.png"):      # spaxel numbers change from run to run
        old.unlink()
    figs += plots.plot_best_worst(a.lam, a.data, a.model, a.mask, a.chi2, out, n_spectra,
                                  noise=a.noise, units=a.flux_units, chi_name=chi_name)

    summary = {"file": str(Path(h5).resolve()), "cubefit_version": __version__,
               "norm_mode": a.norm_mode, "fit": a.fit.summary(),
               "truth": None if a.truth is None else a.truth.summary(),
               "comparison": a.comparison(),
               "chi2": {"name": chi_name, "median": float(np.median(a.chi2)),
                        "min": float(a.chi2.min()), "max": float(a.chi2.max())},
               "solver": {k: _plain(a.fit_attrs.get(k)) for k in
                          ("solver", "status", "success", "message", "cost", "optimality", "nit",
                           "passes", "time_total_s", "setting.regul", "setting.tol")},
               "uncertainties": {k: np.asarray(v).tolist() for k, v in errors.items()},
               "run_info": run_info or {}, "figures": [p.name for p in figs]}
    sj = out / "summary.json"
    sj.write_text(json.dumps(summary, indent=2, default=_plain) + "\n")
    md = out / "report.md"
    md.write_text(markdown(a, figs, title=title, run_info=run_info, errors=errors))
    log.debug("report written to %s (%d figures)", out, len(figs))
    return Report(folder=out, markdown=md, summary=sj, figures=figs, analysis=a)


def _ifu_extras(h5, out: Path, attrs: dict, config) -> tuple[dict, list]:
    """``(errors, figures)``: ``/Fit/uncertainties`` statistics ({quantity: (5, C)}) and the
    χ² curve of a ``regul="auto"`` search drawn to ``regul_curve.png``."""
    from .regul_auto import plot_regul_curve
    from .runner import read_fit
    _, _, data = read_fit(h5, config=config)
    errors = {k.split("/", 1)[1]: v for k, v in data.items()
              if k.startswith("uncertainties/") and k.count("/") == 1 and np.ndim(v) == 2}
    figs = []
    if "regul_search/strength" in data:
        figs.append(plot_regul_curve(data["regul_search/strength"], data["regul_search/chi2"],
                                     chi2_0=attrs["regul_auto.chi2_0"], target=attrs["regul_auto.target"],
                                     chosen=attrs["setting.regul"], path=out / "regul_curve.png"))
    return errors, figs


def _plain(v):
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, bytes):
        return v.decode()
    return v
