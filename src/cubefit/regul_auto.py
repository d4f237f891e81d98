"""Choosing the Tikhonov strength: ``regul="auto"`` (docs/ifu.md, "Choosing the regularisation").

The criterion is the one pPXF users apply by hand: take the largest strength whose χ²
rises by at most ``√(2N)`` above the unregularised fit, ``N`` being the number of fitted
data values.  Here

* ``χ²(r) = Σ_s Σ_l m w ι (Y − A x_r)²`` is twice the data term of the objective at the
  optimum ``x_r`` for Tikhonov strength ``r`` (the fit's own metric: mask, λ-weights,
  inverse variance);
* ``N`` = number of data values with a positive weight;
* χ² is measured in units where the unregularised fit has ``χ²/N = 1`` (pPXF's recipe:
  rescale the noise first), so the allowed rise is ``Δ = √(2N) · χ²(0)/N``.  With a
  correct ``/Noise`` and no λ-weights, ``χ²(0)/N ≈ 1`` and ``Δ ≈ √(2N)``.

Search: ``χ²(r)`` grows with ``r`` (a stronger penalty never fits the data better), so a
bracket ``[r_lo, r_hi]`` with ``Δχ²(r_lo) ≤ Δ < Δχ²(r_hi)`` is found by steps of ×10 from
``start``, then narrowed by bisection in ``log r`` until ``Δχ²(r_lo) ≥ (1 − rtol)·Δ``.  Each
solve is warm-started from the solution at the nearest strength and all share one
:class:`cubefit.solvers.gram_cache.GramCache` (the data Gram matrix does not depend on
``r``).  The chosen ``r_lo`` and every ``(r, χ²)`` evaluated are returned, and
:func:`plot_regul_curve` draws them.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from .solvers import auto_method, solve
from .solvers.gram_cache import GramCache
from .solvers.priors import with_priors

log = logging.getLogger(__name__)

__all__ = ["RegulSearch", "choose_regul", "resolve_regul", "plot_regul_curve", "UNUSED_ATTRS"]

UNUSED_ATTRS = {"regul_auto.chi2_0": np.nan, "regul_auto.n_data": 0, "regul_auto.target": np.nan,
                "regul_auto.delta_chi2": np.nan}
"""The ``/Fit`` attributes of :meth:`RegulSearch.attrs` for a fit without ``regul="auto"``."""


@dataclass
class RegulSearch:
    """Result of :func:`choose_regul`.

    ``regul`` chosen strength; ``strengths``/``chi2`` every strength tried (the first is
    0, the unregularised fit) and its χ² (sorted by strength); ``n_data`` N;
    ``chi2_0`` χ² of the unregularised fit; ``target`` allowed rise Δ in the raw χ²
    units; ``x`` the weights at the chosen strength; ``passes`` operator passes.
    """

    regul: float
    strengths: np.ndarray
    chi2: np.ndarray
    n_data: int
    chi2_0: float
    target: float
    x: np.ndarray
    passes: int = 0

    @property
    def delta_chi2(self) -> float:
        """``χ²(regul) − χ²(0)`` in the rescaled units (``χ²(0)/N = 1``)."""
        i = int(np.flatnonzero(self.strengths == self.regul)[0])
        return float((self.chi2[i] - self.chi2_0) * self.n_data / self.chi2_0)

    @property
    def sqrt_2n(self) -> float:
        return float(np.sqrt(2 * self.n_data))

    def datasets(self) -> dict:
        """``/Fit`` datasets: ``regul_search/strength`` and ``regul_search/chi2``."""
        return {"regul_search/strength": self.strengths, "regul_search/chi2": self.chi2}

    def attrs(self) -> dict:
        """``/Fit`` attributes (see ``cubefit.schema_extra.FIT_ATTRS``)."""
        return {"regul_auto.chi2_0": self.chi2_0, "regul_auto.n_data": self.n_data,
                "regul_auto.target": self.target, "regul_auto.delta_chi2": self.delta_chi2}


def choose_regul(op, *, priors: dict | None = None, method: str = "auto", gtol: float = 1e-6,
                 start: float = 1.0, rtol: float = 0.05, max_regul: float = 1e6,
                 max_solves: int = 40, **solver_options) -> RegulSearch:
    """The largest Tikhonov strength whose χ² rises by at most √(2N) (module docstring).

    Parameters
    ----------
    op : the data operator (:class:`cubefit.operator.LOSVDOperator` with its data and weights).
    priors : the other keywords of :func:`cubefit.solvers.priors.with_priors`
        (``orbit_weights``, ``orbit_strength``, ``regul_order``, ``pop_shape``, ``ridge``);
        ``regul`` is what is searched.
    method, gtol, solver_options : solver of every evaluation (``"auto"`` per problem).
    start : first strength tried above 0; the bracket moves by factors of 10 from it.
    rtol : stop when the chosen strength's rise is within ``rtol`` below the target.
    max_regul : largest strength tried.  When even it keeps the rise below the target
        (the data cannot tell the smoothest solution the prior allows from the best
        fit), it is returned with a warning.  Beyond ~1e6 the prior rows outweigh the
        data columns by 10³ and float64 Gram solves lose the digits χ² needs.
    max_solves : safety limit on the number of solves (a warning when reached).
    """
    if not (0 < rtol < 1):
        raise ValueError(f"rtol: expected a fraction in (0, 1), got {rtol!r}")
    if not (np.isfinite(start) and start > 0):
        raise ValueError(f"start: expected a positive strength, got {start!r}")
    if not (np.isfinite(max_regul) and max_regul > 0):
        raise ValueError(f"max_regul: expected a positive strength, got {max_regul!r}")
    priors = dict(priors or {})
    if priors.pop("regul", None) not in (None, 0, 0.0, "auto"):
        raise ValueError("priors: regul is what choose_regul searches; leave it out")
    cached = GramCache(op)
    y = op.weighted_data()
    base = with_priors(cached, y, **priors)
    scale = base.scale
    n_data = int(np.count_nonzero(np.asarray(op.row_weights) > 0))
    runs: dict[float, tuple[float, np.ndarray]] = {}
    passes = [0]

    def chi2_at(r: float) -> float:
        if r in runs:
            return runs[r][0]
        prob = base if r == 0 else with_priors(cached, y, regul=r, scale=scale, **priors)
        m = auto_method(prob) if method == "auto" else method
        opts = dict(solver_options, gtol=gtol)
        if m == "working_set":
            opts["column_cache_bytes"] = 0
        near = min(runs, key=lambda s: abs(np.log10(s + 1e-300) - np.log10(r + 1e-300)),
                   default=None)
        res = solve(prob, method=m, x0=None if near is None else runs[near][1], **opts)
        passes[0] += res.passes
        chi2 = 2.0 * prob.data_cost(res.x)
        runs[r] = (chi2, res.x)
        log.info("regul %.4g: chi2 %.8g (%s, status %d)", r, chi2, m, res.status)
        return chi2

    chi2_0 = chi2_at(0.0)
    if not (np.isfinite(chi2_0) and chi2_0 > 0):
        raise ValueError(f"choose_regul: the unregularised fit has chi2 = {chi2_0!r}; the "
                         "criterion needs a positive misfit (noise-free data cannot set it)")
    target = np.sqrt(2 * n_data) * chi2_0 / n_data
    lo, hi = 0.0, None
    r = min(float(start), max_regul)
    while len(runs) < max_solves:                     # bracket by factors of 10
        if chi2_at(r) - chi2_0 <= target:
            lo = r
            if hi is not None:
                break
            if r >= max_regul:
                log.warning("choose_regul: even regul = max_regul = %.3g raises chi2 by only "
                            "%.4g < %.4g: the data allow the smoothest solution; returning it",
                            r, runs[r][0] - chi2_0, target)
                break
            r = min(10.0 * r, max_regul)
        else:
            hi = r
            if lo > 0:
                break
            r /= 10.0
    while hi is not None and lo > 0 and chi2_at(lo) - chi2_0 < (1 - rtol) * target \
            and hi / lo > 1 + 1e-6 and len(runs) < max_solves:
        mid = float(np.sqrt(lo * hi))
        if chi2_at(mid) - chi2_0 <= target:
            lo = mid
        else:
            hi = mid
    if len(runs) >= max_solves:
        log.warning("choose_regul: stopped after %d solves; regul %.4g has Δχ² %.4g of the "
                    "target %.4g", max_solves, lo, runs[lo][0] - chi2_0 if lo in runs else 0,
                    target)
    order = sorted(runs)
    return RegulSearch(regul=lo, strengths=np.array(order), chi2=np.array([runs[s][0] for s in order]),
                       n_data=n_data, chi2_0=chi2_0, target=float(target), x=runs[lo][1],
                       passes=passes[0])


def plot_regul_curve(strengths, chi2, *, chi2_0: float, target: float, chosen: float, path):
    """Save ``Δχ²(regul)`` (log strength axis; 0 omitted) with the allowed rise and the
    chosen strength marked; returns the path."""
    from pathlib import Path

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    s = np.asarray(strengths, dtype=float)
    dc = np.asarray(chi2, dtype=float) - chi2_0
    keep = s > 0
    fig = Figure(figsize=(5.5, 3.6), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.plot(s[keep], dc[keep], "o-", color="C0", label="fits")
    ax.axhline(target, color="C3", ls="--", label=r"allowed rise $\sqrt{2N}$ (rescaled)")
    ax.axvline(chosen, color="C2", ls=":", label=f"chosen regul = {chosen:.3g}")
    ax.set_xscale("log")
    ax.set_yscale("symlog", linthresh=max(target / 10, 1e-12))
    ax.set_xlabel("Tikhonov strength regul")
    ax.set_ylabel(r"$\chi^2(\mathrm{regul}) - \chi^2(0)$")
    ax.legend(fontsize=8)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def resolve_regul(op, regul, priors: dict, **kwargs) -> tuple[float, RegulSearch | None]:
    """``(strength, search)``: ``regul`` itself and None for a number, or the
    :func:`choose_regul` strength and its search for ``"auto"`` (``kwargs`` go there)."""
    if isinstance(regul, str):
        if regul != "auto":
            raise ValueError(f"regul: expected a strength >= 0 or 'auto', got {regul!r}")
        search = choose_regul(op, priors=priors, **kwargs)
        log.info("regul='auto': chose %.4g (chi2 rise %.4g, sqrt(2N) = %.4g, %d solves)",
                 search.regul, search.delta_chi2, search.sqrt_2n, search.strengths.size)
        return search.regul, search
    return regul, None
