"""Monte-Carlo uncertainties of the global fit (cubefit.uncertainties) and the Gram cache."""
import h5py
import numpy as np
import pytest

from cubefit.mock import Component, make_mock_galaxy, synthetic_templates
from cubefit.operator import LOSVDOperator
from cubefit.runner import PipelineRunner, read_fit
from cubefit.science import light_per_weight
from cubefit.solvers import solve
from cubefit.solvers.gram_cache import GramCache
from cubefit.uncertainties import STATS, derived_quantities, monte_carlo

AXIS_UNITS = {"age": "Gyr", "metal": "dex"}

# Every population weight positive (a broad blob): the Monte-Carlo spread is then
# not dominated by weights pinned at the x >= 0 bound.
SMOOTH = (Component("old", vmax=0.0, sigma=200.0, r_eff=1.5, flux=1.0, pop_centre=(0.8, 0.6),
                    pop_width=0.5),
          Component("young", vmax=150.0, sigma=60.0, r_eff=2.5, flux=0.6, pop_centre=(0.3, 0.4),
                    pop_width=0.5))


@pytest.fixture(scope="module")
def smooth_mock():
    """4×4 bins at S/N 100 per pixel, 2 components, 3×2 populations."""
    flux, ln_lam, axes = synthetic_templates(n_age=3, n_metal=2, lam=(4700.0, 5700.0), velscale=40.0)
    return make_mock_galaxy(flux, ln_lam, pop_shape=(3, 2), pop_axes=axes, nx=4, ny=4,
                            components=SMOOTH, obs_lam=(4900.0, 5500.0), vel_max=600.0, snr=100.0,
                            noise_model="binned", seed=3)


def _operator(m, Y, noise=True):
    return LOSVDOperator(m.templates, m.tem_pix, m.obs_pix, m.vel_pix, m.losvd, datacube=Y,
                         mask=m.mask, ivar=1 / m.noise**2 if noise else None, norm_mode="model")


def test_gram_cache_matches_the_operator(small_mock):
    op = _operator(small_mock, small_mock.datacube)
    cache = GramCache(op)
    n = op.shape[1]
    for rows, cols in (([5, 0, 2], [3]), ([3, 7], [0, 7, 5])):
        rows, cols = np.array(rows), np.array(cols)
        np.testing.assert_allclose(cache.gram(rows, cols), op.gram(rows, cols), rtol=1e-12,
                                   atol=1e-12 * np.abs(op.gram(rows, cols)).max())
    formed = cache.columns_formed
    full = cache.gram()
    np.testing.assert_allclose(full, op.gram(), rtol=1e-12, atol=1e-12 * np.abs(full).max())
    assert cache.columns_formed == n                 # each column formed once, ever
    cache.gram(np.arange(3), np.arange(n))
    assert cache.columns_formed == n and formed < n
    # Without room for explicit columns it asks the operator for the blocks: same numbers.
    small = GramCache(op, column_bytes=0)
    np.testing.assert_allclose(small.gram([1, 4], [0, 2, 4]), op.gram(np.array([1, 4]),
                               np.array([0, 2, 4])), rtol=1e-12)


def test_errors_match_the_scatter_of_best_fits(smooth_mock):
    """Acceptance: the 1σ Monte-Carlo errors of the light fractions and light-weighted ages
    and metallicities, computed from ONE noisy cube, match the scatter of the best fits of
    many independent noisy cubes within 25 %."""
    m = smooth_mock
    light = light_per_weight(_operator(m, m.model))
    kw = dict(pop_axes=m.pop_axes, axis_units=AXIS_UNITS)
    rng = np.random.default_rng(1)
    n_real = 200
    fits = []
    for _ in range(n_real):
        op = _operator(m, m.model + m.noise * rng.standard_normal(m.model.shape))
        fits.append(derived_quantities(solve(op, method="working_set").x, light, **kw))
    scatter = {q: np.std([f[q] for f in fits], axis=0, ddof=1) for q in fits[0]}
    for base in (100, 101):
        Y = m.model + m.noise * np.random.default_rng(base).standard_normal(m.model.shape)
        op = _operator(m, Y)
        x = solve(op, method="working_set").x
        mc = monte_carlo(op, x, nmonte=n_real, seed=5, noise=m.noise, progress=False, **kw)
        assert np.all(mc.status == 1)
        for q in ("light_fraction", "log_age_light", "metal_light"):
            ratio = mc.stats(q)[STATS.index("std")] / scatter[q]
            assert np.all(np.abs(ratio - 1) < 0.25), (base, q, ratio)
        # (p84 - p16)/2 is the same 1σ for this near-Gaussian scatter.
        st = mc.stats("log_age_light")
        np.testing.assert_allclose((st[3] - st[1]) / 2, st[4], rtol=0.25)


def test_residual_bootstrap_agrees_with_noise_draws(smooth_mock):
    """Without /Noise the residuals are resampled: with white noise of known σ the errors
    agree with those from noise draws (within 20 %)."""
    m = smooth_mock
    Y = m.model + m.noise * np.random.default_rng(7).standard_normal(m.model.shape)
    kw = dict(pop_axes=m.pop_axes, axis_units=AXIS_UNITS, progress=False)
    op_w = _operator(m, Y)
    x_w = solve(op_w, method="working_set").x
    ref = monte_carlo(op_w, x_w, nmonte=150, seed=2, noise=m.noise, **kw)
    # Unweighted fit of the same data: residual bootstrap vs noise draws, same operator.
    op = _operator(m, Y, noise=False)
    x = solve(op, method="working_set").x
    boot = monte_carlo(op, x, nmonte=150, seed=2, noise=None, **kw)
    draws = monte_carlo(op, x, nmonte=150, seed=3, noise=m.noise, **kw)
    assert boot.kind == "residual bootstrap" and draws.kind == "noise" and ref.kind == "noise"
    for q in ("light_fraction", "log_age_light"):
        ratio = boot.stats(q)[4] / draws.stats(q)[4]
        assert np.all(np.abs(ratio - 1) < 0.2), (q, ratio)


def test_runner_writes_uncertainties(tmp_path, small_mock):
    from test_store import _populated
    path, _ = _populated(tmp_path, small_mock)
    runner = PipelineRunner(path)
    x, stats = runner.solve_all_mp_batched(nmonte=12, seed=4, track=False)
    _, attrs, data = read_fit(path)
    assert attrs["setting.nmonte"] == 12 and attrs["setting.seed"] == 4
    assert attrs["uncertainties.kind"] == "noise" and attrs["uncertainties.nmonte"] == 12
    C = small_mock.losvd.shape[2]
    for q in ("light_fraction", "log_age_light", "metal_light"):
        st, smp = data[f"uncertainties/{q}"], data[f"uncertainties/samples/{q}"]
        assert st.shape == (5, C) and smp.shape == (12, C)
        np.testing.assert_allclose(st[1:4], np.percentile(smp, [16, 50, 84], axis=0), rtol=1e-12)
        np.testing.assert_allclose(st[4], np.std(smp, axis=0, ddof=1), rtol=1e-12)
        np.testing.assert_allclose(st[0], stats["uncertainties"][q]["best"], rtol=1e-12)
    np.testing.assert_allclose(data["uncertainties/light_fraction"][0], stats["light_fractions"],
                               rtol=1e-10)
    np.testing.assert_allclose(data["uncertainties/samples/light_fraction"].sum(axis=1), 1.0,
                               rtol=1e-12)
    assert data["uncertainties/x_std"].shape == x.shape
    with h5py.File(path, "r") as f:
        ds = f["/Fit/uncertainties/log_age_light"]
        assert "dex" in ds.attrs["units"] and "percentile" in ds.attrs["description"]
    # The report shows the errors in its tables (± std of the realisations).
    from cubefit.report import write_report
    rep = write_report(path, tmp_path / "rep")
    text = rep.markdown.read_text()
    err = data["uncertainties/light_fraction"][4][0]
    assert f"± {err:.4f}" in text and "Monte-Carlo re-solves (noise" in text
    # Same seed, same realisations.
    runner.solve_all_mp_batched(nmonte=12, seed=4, track=False)
    _, _, again = read_fit(path)
    np.testing.assert_array_equal(again["uncertainties/samples/log_age_light"],
                                  data["uncertainties/samples/log_age_light"])


def test_bad_nmonte_is_refused_before_solving(tmp_path, small_mock):
    from test_store import _populated
    path, _ = _populated(tmp_path, small_mock)
    with pytest.raises(ValueError, match="nmonte: expected 0 .* >= 2"):
        PipelineRunner(path).solve_all_mp_batched(nmonte=1, track=False)
    with h5py.File(path, "r") as f:
        assert "/X_global" not in f
