"""Line fluxes, velocities and dispersions at S/N 50: bias and pull distributions.

Realisations of a synthetic spectrum (galaxy-like continuum + Hβ and [O III] 4959,5007
of known flux, shift and width, through an 11-diagonal resolution matrix, Gaussian
noise) are fitted; the pulls ``(fit − truth)/error`` must have a standard deviation of
1 ± 0.1 with the formal errors (400 realisations) and with Monte-Carlo errors
(200 realisations × 40 refits each).  An error estimated from ``n`` refits scatters
itself, which makes even perfect pulls Student-t distributed with a width of
``√((n−1)/(n−3))`` (1.027 for n = 40): the Monte-Carlo widths are divided by it..  The noise is scaled so that Hβ has S/N = 50.
"""
from __future__ import annotations

import numpy as np
import pytest
from spectra_line_mocks import make_spectrum

from cubefit.spectra.emlines import fit_emlines
from cubefit.spectra.montecarlo import MonteCarloResult, monte_carlo, noisy_copy, realisation_rng

Z = 0.0
LINES = {"hbeta": (100.0, 20.0, 70.0), "oiii_4959": (60.0, -30.0, 50.0), "oiii_5007": (178.8, -30.0, 50.0)}
RANGE = [("b", 4830.0, 5040.0)]
QUANTITIES = [("HBETA_FLUX", 100.0), ("OIII_5007_FLUX", 178.8), ("NARROW_BALMER_VSHIFT", 20.0),
              ("NARROW_BALMER_SIGMA", 70.0), ("NARROW_FORBIDDEN_VSHIFT", -30.0), ("NARROW_FORBIDDEN_SIGMA", 50.0)]


def _noise_for_snr50() -> float:
    spec, conts, _ = make_spectrum(Z, LINES, RANGE)          # ivar = 1e4 (σ = 0.01)
    r = fit_emlines(spec, conts, broad=False)
    return 0.01 * (100.0 / 50.0) * np.sqrt(r.lines["hbeta"]["FLUX_IVAR"])


def _pulls(rows, errors):
    return {q: (np.array([r[q] for r in rows]) - truth) / np.array([e[q] for e in errors]) for q, truth in QUANTITIES}


def test_formal_errors_give_unit_pulls_and_fluxes_within_one_percent():
    sigma = _noise_for_snr50()
    rng = np.random.default_rng(20240611)
    rows = []
    for _ in range(400):
        spec, conts, _ = make_spectrum(Z, LINES, RANGE, sigma_pix=sigma, rng=rng)
        rows.append(fit_emlines(spec, conts, broad=False).to_row())
    snr = np.median([r["HBETA_FLUX"] * np.sqrt(r["HBETA_FLUX_IVAR"]) for r in rows])
    assert snr == pytest.approx(50.0, rel=0.05)
    errs = [{q: r[q + "_IVAR"] ** -0.5 for q, _ in QUANTITIES} for r in rows]
    pulls = _pulls(rows, errs)
    widths = {q: float(np.std(p)) for q, p in pulls.items()}
    print("formal pull widths", widths)
    for q, w in widths.items():
        assert 0.9 <= w <= 1.1, (q, w)
        assert abs(np.mean(pulls[q])) < 3 / np.sqrt(len(rows)) + 0.1, q
    for q, truth in QUANTITIES[:2]:
        assert np.mean([r[q] for r in rows]) == pytest.approx(truth, rel=0.01)
    ratio = np.array([r["OIII_5007_FLUX"] / r["OIII_4959_FLUX"] for r in rows])
    assert np.allclose(ratio, 2.98, rtol=1e-10)


@pytest.mark.slow
def test_monte_carlo_errors_give_unit_pulls():
    sigma = _noise_for_snr50()
    rng = np.random.default_rng(7)
    rows, errs = [], []
    for i in range(200):
        spec, conts, _ = make_spectrum(Z, LINES, RANGE, sigma_pix=sigma, rng=rng)
        spec.targetid = i
        best = fit_emlines(spec, conts, broad=False)
        mc = monte_carlo(lambda s, b: fit_emlines(s, conts, start=b, errors=False), spec, best, 40, seed=3,
                         model=[conts[0] + best.models[0]])
        assert mc.nsuccess == 40
        row = mc.apply(best.to_row())
        assert row["NMONTE"] == 40
        rows.append(row)
        errs.append({q: row[q + "_IVAR"] ** -0.5 for q, _ in QUANTITIES})
    pulls = _pulls(rows, errs)
    widths = {q: float(np.std(p)) for q, p in pulls.items()}
    print("Monte-Carlo pull widths", widths)
    t_width = np.sqrt(39.0 / 37.0)
    for q, w in widths.items():
        assert 0.9 <= w / t_width <= 1.1, (q, w)


def test_monte_carlo_is_seeded_reproducible_and_zero_is_a_no_op():
    spec, conts, _ = make_spectrum(Z, LINES, RANGE, sigma_pix=0.5, rng=np.random.default_rng(1))
    spec.targetid = 39633345008634465
    best = fit_emlines(spec, conts, broad=False)
    fit = lambda s, b: fit_emlines(s, conts, start=b)   # noqa: E731
    a = monte_carlo(fit, spec, best, 5, seed=11)
    b = monte_carlo(fit, spec, best, 5, seed=11)
    c = monte_carlo(fit, spec, best, 5, seed=12)
    assert a.ivar == b.ivar and a.ivar != c.ivar
    assert np.array_equal(a.samples["HBETA_FLUX"], b.samples["HBETA_FLUX"])
    assert {"HBETA_FLUX_IVAR", "OIII_5007_AMP_IVAR", "NARROW_BALMER_SIGMA_IVAR", "HBETA_EW_IVAR"} <= set(a.ivar)
    zero = monte_carlo(fit, spec, best, 0, seed=11)
    row = best.to_row()
    assert zero.apply(row) == {**row, "NMONTE": 0}
    # the noise of one target does not depend on which other targets ran before it
    n1 = noisy_copy(spec, [conts[0]], realisation_rng(11, spec.targetid)).cameras[0].flux
    realisation_rng(11, 5).standard_normal(100)
    n2 = noisy_copy(spec, [conts[0]], realisation_rng(11, spec.targetid)).cameras[0].flux
    assert np.array_equal(n1, n2)
    with pytest.raises(ValueError, match="nmonte"):
        monte_carlo(fit, spec, best, -1, seed=1)


def test_failed_realisations_are_left_out():
    class Bad:
        status = 3

        def to_row(self):
            return {}

    spec, conts, _ = make_spectrum(Z, LINES, RANGE, sigma_pix=0.5, rng=np.random.default_rng(2))
    best = fit_emlines(spec, conts, broad=False)
    calls = iter(range(100))
    mc = monte_carlo(lambda s, b: Bad() if next(calls) % 2 else fit_emlines(s, conts, start=b), spec, best, 6, seed=1)
    assert isinstance(mc, MonteCarloResult) and mc.nsuccess == 3 and mc.samples["HBETA_FLUX"].size == 3
