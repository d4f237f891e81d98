"""Uncertainties of the global fit by Monte-Carlo re-solves (docs/ifu.md, "Uncertainties").

Method
------
With the best fit ``x̂`` and its weighted model ``Ã x̂``, every realisation ``k`` solves
the same problem (same operator, same priors, same solver) for synthetic data

    ỹ*_k = Ã x̂ + e_k,

a parametric bootstrap around the best fit:

* **noise** (the file has ``/Noise``): ``e_k[s,l] = d[s,l] · σ[s,l] · ε``, ``ε ~ N(0, 1)``,
  where ``d = sqrt(m w ι)`` are the operator's row weights and ``σ`` = ``/Noise`` — i.e. a
  new noise draw of the data, seen through the fit's weights;
* **residual bootstrap** (no ``/Noise``): each spaxel's residuals ``Y − A x̂`` on its good
  pixels are resampled with replacement and weighted by ``d``.  This keeps each
  spaxel's noise level (and ignores correlations between neighbouring pixels).

Each re-solve is warm-started from ``x̂`` and shares one :class:`cubefit.solvers.gram_cache.GramCache`,
so after the first few realisations a re-solve costs a few operator passes.  The
random numbers come from ``numpy.random.default_rng(seed)``: the same seed gives the
same realisations on any machine.

From each realisation's weights the science quantities of :mod:`cubefit.science` are
computed per component (same definitions as the best fit and as a mock's truth):

* ``light_fraction`` — ``L_c / Σ L``;
* ``log_age_light``, ``metal_light`` — light-weighted ⟨log10(age/yr)⟩ and ⟨[M/H]⟩ (dex);
* ``log_age_mass``, ``metal_mass`` — the mass-weighted ones (with ``/TemplateMass``).

Their 16th/50th/84th percentiles and standard deviation over the realisations are the
reported errors; ``(p84 − p16)/2`` and ``std`` agree for Gaussian scatter.  Stored in
``/Fit/uncertainties`` by :meth:`MonteCarloResult.datasets` (units and meaning in the
datasets' attributes).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
from tqdm.auto import tqdm

from .science import populations
from .solvers import auto_method, solve
from .solvers.gram_cache import GramCache
from .solvers.priors import with_priors

log = logging.getLogger(__name__)

__all__ = ["QUANTITIES", "STATS", "MonteCarloResult", "monte_carlo", "derived_quantities",
           "perturbations", "monte_carlo_for_file", "check_nmonte", "UNUSED_ATTRS"]

QUANTITIES = {
    "light_fraction": ("fraction", "light fraction L_c / sum L of each component"),
    "log_age_light": ("dex (log10 yr)", "light-weighted <log10(age/yr)> of each component"),
    "metal_light": ("dex", "light-weighted <[M/H]> of each component"),
    "log_age_mass": ("dex (log10 yr)", "mass-weighted <log10(age/yr)> of each component"),
    "metal_mass": ("dex", "mass-weighted <[M/H]> of each component"),
}
"""Derived quantity → (units, meaning); each is a ``(C,)`` array per fit."""

UNUSED_ATTRS = {"uncertainties.nmonte": 0, "uncertainties.kind": "none", "uncertainties.seed": "none",
                "uncertainties.passes": 0, "uncertainties.failed": 0}
"""The ``/Fit`` attributes of :meth:`MonteCarloResult.attrs` for a fit without Monte Carlo."""

STATS = ("best", "p16", "p50", "p84", "std")
"""Rows of a ``/Fit/uncertainties/<quantity>`` dataset ``(5, C)``: the best fit's value, the
16th, 50th and 84th percentiles and the standard deviation over the realisations."""


def check_nmonte(nmonte) -> int:
    """``nmonte`` as an int: 0 (no Monte Carlo) or at least 2 realisations; else ``ValueError``."""
    if isinstance(nmonte, bool) or int(nmonte) != nmonte or nmonte < 0 or nmonte == 1:
        raise ValueError(f"nmonte: expected 0 (no Monte Carlo) or an integer >= 2 realisations, "
                         f"got {nmonte!r}")
    return int(nmonte)


def derived_quantities(x, light_unit, *, pop_axes=None, axis_units=None,
                       mass_per_weight=None) -> dict:
    """``{quantity: (C,)}`` of :data:`QUANTITIES` for weights ``x (C·P,)``.

    ``light_unit (C, P)`` is the light of unit weight (:func:`cubefit.science.light_per_weight`);
    quantities that cannot be computed (no age axis, no masses) are left out.
    """
    pops = populations(x, light_unit, pop_axes=pop_axes, axis_units=axis_units,
                       mass_per_weight=mass_per_weight)
    out = {"light_fraction": pops.fractions("light"),
           "log_age_light": pops.mean_log_age("light"), "metal_light": pops.mean_metal("light"),
           "log_age_mass": pops.mean_log_age("mass"), "metal_mass": pops.mean_metal("mass")}
    return {k: np.asarray(v, dtype=np.float64) for k, v in out.items() if v is not None}


@dataclass
class MonteCarloResult:
    """Realisations of the science quantities (module docstring).

    ``samples`` {quantity: (N, C)}, ``best`` {quantity: (C,)}, ``x_std (C·P,)`` standard
    deviation of each weight, ``kind`` ("noise" or "residual bootstrap"), ``seed``,
    ``passes`` (operator passes of all re-solves), ``columns`` (explicit columns formed),
    ``status`` (N,) solver status of each re-solve.
    """

    samples: dict
    best: dict
    x_std: np.ndarray
    kind: str
    seed: int | None
    passes: int = 0
    columns: int = 0
    status: np.ndarray = field(default_factory=lambda: np.empty(0, int))

    @property
    def nmonte(self) -> int:
        return int(self.status.size)

    def stats(self, quantity: str) -> np.ndarray:
        """``(5, C)``: rows :data:`STATS` (best, p16, p50, p84, std) of ``quantity``."""
        s = self.samples[quantity]
        p16, p50, p84 = np.nanpercentile(s, [16, 50, 84], axis=0)
        return np.vstack([self.best[quantity], p16, p50, p84, np.nanstd(s, axis=0, ddof=1)])

    def summary(self) -> dict:
        """``{quantity: {stat: [per component]}}`` in plain Python (for JSON and reports)."""
        return {q: dict(zip(STATS, self.stats(q).tolist())) for q in self.samples}

    def datasets(self) -> dict:
        """``{name: array}`` under ``/Fit`` (``uncertainties/<q>`` (5, C) and
        ``uncertainties/samples/<q>`` (N, C), ``uncertainties/x_std``, ``uncertainties/status``)."""
        out = {f"uncertainties/{q}": self.stats(q) for q in self.samples}
        out.update({f"uncertainties/samples/{q}": s for q, s in self.samples.items()})
        out["uncertainties/x_std"] = self.x_std
        out["uncertainties/status"] = self.status.astype(np.int64)
        return out

    def attrs(self) -> dict:
        """``/Fit`` attributes describing the run (see ``cubefit.schema_extra.FIT_ATTRS``)."""
        return {"uncertainties.nmonte": self.nmonte, "uncertainties.kind": self.kind,
                "uncertainties.seed": "none" if self.seed is None else int(self.seed),
                "uncertainties.passes": int(self.passes),
                "uncertainties.failed": int(np.sum(self.status < 1))}


def perturbations(op, x_best, rng, nmonte: int, noise=None):
    """Yield ``nmonte`` weighted data vectors ``ỹ* (S·L,)`` (module docstring).

    ``op`` is the data operator (row weights ``d = op.row_weights (S, L)``); ``noise``
    ``(S, L)`` 1-σ (``/Noise``) or None for the residual bootstrap, which needs
    ``op.weighted_data()``.
    """
    d = np.asarray(op.row_weights, dtype=np.float64)
    S, L = d.shape
    model = np.asarray(op.matvec(x_best), dtype=np.float64).reshape(S, L)
    good = d > 0
    if noise is not None:
        sig = np.asarray(noise, dtype=np.float64)
        if sig.shape != (S, L):
            raise ValueError(f"noise: expected (S, L) = ({S}, {L}), got shape {sig.shape}")
        scale = np.where(good & np.isfinite(sig), d * np.where(np.isfinite(sig), sig, 0.0), 0.0)
        for _ in range(nmonte):
            yield (model + scale * rng.standard_normal((S, L))).ravel()
        return
    resid = np.zeros((S, L))
    np.divide(op.weighted_data().reshape(S, L) - model, d, out=resid, where=good)
    pools = [resid[s, good[s]] for s in range(S)]
    for _ in range(nmonte):
        e = np.zeros((S, L))
        for s, pool in enumerate(pools):
            if pool.size:
                e[s, good[s]] = pool[rng.integers(0, pool.size, pool.size)]
        yield (model + d * e).ravel()


def monte_carlo(op, x_best, *, nmonte: int, seed=None, noise=None, priors: dict | None = None,
                scale: float | None = None, method: str = "auto", gtol: float = 1e-6,
                pop_axes=None, axis_units=None, mass_per_weight=None, progress: bool = True,
                **solver_options) -> MonteCarloResult:
    """Re-solve ``nmonte`` perturbed copies of the fit of ``op`` around ``x_best``.

    Parameters
    ----------
    op : the data operator of the best fit (a :class:`cubefit.operator.LOSVDOperator`
        with its data, mask, λ-weights and inverse variance).
    x_best : ``(C·P,)`` best-fit weights (the warm start of every re-solve).
    nmonte : number of realisations (≥ 2).
    seed : seed of :func:`numpy.random.default_rng`.
    noise : ``(S, L)`` 1-σ noise (``/Noise``): Gaussian noise draws; None: residual
        bootstrap (module docstring).
    priors : keywords of :func:`cubefit.solvers.priors.with_priors` used by the best fit
        (``orbit_weights``, ``orbit_strength``, ``regul``, ``regul_order``, ``pop_shape``,
        ``ridge``); ``scale`` its column scale ``σ`` (pass the best fit's, so the priors
        are identical).
    method, gtol, solver_options : the solver (``"auto"``: :func:`cubefit.solvers.auto_method`
        of the problem) and its options.
    pop_axes, axis_units, mass_per_weight : the population grid and ``/TemplateMass``
        for :func:`derived_quantities`.
    progress : show a tqdm bar.
    """
    if check_nmonte(nmonte) == 0:
        raise ValueError("nmonte: expected an integer >= 2 realisations, got 0")
    x_best = np.asarray(x_best, dtype=np.float64).ravel()
    cached = GramCache(op)
    prob = with_priors(cached, op.weighted_data(), scale=scale, **(priors or {}))
    if x_best.shape != (prob.n,):
        raise ValueError(f"x_best: expected ({prob.n},) weights, got shape {x_best.shape}")
    method = auto_method(prob) if method == "auto" else method
    opts = dict(solver_options, gtol=gtol)
    if method == "working_set":
        opts["column_cache_bytes"] = 0          # Gram rows from the shared cache instead
    light_unit = prob.light.reshape(prob.C, prob.P)
    kw = dict(pop_axes=pop_axes, axis_units=axis_units, mass_per_weight=mass_per_weight)
    best = derived_quantities(x_best, light_unit, **kw)
    samples = {q: np.empty((nmonte, prob.C)) for q in best}
    s1, s2 = np.zeros(prob.n), np.zeros(prob.n)
    status = np.empty(nmonte, dtype=int)
    passes = 0
    zeros = np.zeros(prob.shape[0] - prob.m)
    rng = np.random.default_rng(seed)
    kind = "noise" if noise is not None else "residual bootstrap"
    draws = perturbations(op, x_best, rng, nmonte, noise)
    for k, y in enumerate(tqdm(draws, total=nmonte, desc=f"Monte Carlo ({kind})",
                               disable=not progress, leave=False)):
        res = solve(prob, np.concatenate([y, zeros]), method=method, x0=x_best, **opts)
        status[k], passes = res.status, passes + res.passes
        for q, v in derived_quantities(res.x, light_unit, **kw).items():
            samples[q][k] = v
        s1 += res.x
        s2 += res.x**2
    x_std = np.sqrt(np.maximum(s2 / nmonte - (s1 / nmonte) ** 2, 0.0) * nmonte / (nmonte - 1))
    if np.any(status < 1):
        log.warning("%d of %d Monte-Carlo re-solves ended without a KKT certificate",
                    int(np.sum(status < 1)), nmonte)
    return MonteCarloResult(samples=samples, best=best, x_std=x_std, kind=kind,
                            seed=None if seed is None else int(seed), passes=passes,
                            columns=cached.columns_formed, status=status)


def monte_carlo_for_file(h5, op, x_best, *, nmonte: int, seed=None, config=None,
                         **kwargs) -> MonteCarloResult:
    """:func:`monte_carlo` for the fit of file ``h5``: the noise (``/Noise``, else a residual
    bootstrap), the population grid (``/PopAxes`` with units) and ``/TemplateMass`` are
    read from the file; ``kwargs`` go to :func:`monte_carlo`."""
    from .store import open_h5
    with open_h5(h5, "r", config=config) as f:
        noise = f["/Noise"][...] if "/Noise" in f else None
        axes = {k: v[...] for k, v in f["/PopAxes"].items()} if "/PopAxes" in f else {}
        units = {k: _text(v.attrs.get("units", "")) for k, v in f["/PopAxes"].items()} \
            if "/PopAxes" in f else {}
        mass = f["/TemplateMass"][...] if "/TemplateMass" in f else None
    return monte_carlo(op, x_best, nmonte=nmonte, seed=seed, noise=noise, pop_axes=axes,
                       axis_units=units, mass_per_weight=mass, **kwargs)


def _text(v) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)
