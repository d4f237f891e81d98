"""regul="auto": the largest Tikhonov strength whose χ² rises by at most √(2N)."""
import logging

import numpy as np
import pytest

from cubefit.mock import Component, make_mock_galaxy, synthetic_templates
from cubefit.operator import LOSVDOperator
from cubefit.regul_auto import choose_regul, plot_regul_curve
from cubefit.runner import PipelineRunner, read_fit
from cubefit.solvers import solve
from cubefit.solvers.priors import with_priors

POP = (6, 3)
BROAD = (Component("old", vmax=0.0, sigma=200.0, r_eff=1.5, flux=1.0, pop_centre=(0.7, 0.6),
                   pop_width=0.3),
         Component("young", vmax=150.0, sigma=60.0, r_eff=2.5, flux=0.6, pop_centre=(0.3, 0.4),
                   pop_width=0.3))


@pytest.fixture(scope="module")
def smooth_grid_mock():
    """3×3 bins, S/N 150 per pixel, 2 components whose weights are smooth blobs on a 6×3
    age × [M/H] grid."""
    flux, ln_lam, axes = synthetic_templates(n_age=POP[0], n_metal=POP[1], lam=(4700.0, 5700.0),
                                             velscale=40.0)
    return make_mock_galaxy(flux, ln_lam, pop_shape=POP, pop_axes=axes, nx=3, ny=3,
                            components=BROAD, obs_lam=(4900.0, 5500.0), vel_max=600.0, snr=150.0,
                            noise_model="binned", seed=3)


def _operator(m):
    return LOSVDOperator(m.templates, m.tem_pix, m.obs_pix, m.vel_pix, m.losvd, datacube=m.datacube,
                         mask=m.mask, ivar=1 / m.noise**2, norm_mode="model")


def test_auto_regul_meets_the_chi2_criterion_and_helps(smooth_grid_mock):
    """Acceptance: Δχ² of the chosen strength within 10 % of √(2N); the recovered weights
    are closer to the smooth truth than the unregularised ones."""
    m = smooth_grid_mock
    op = _operator(m)
    s = choose_regul(op, priors=dict(pop_shape=POP, regul_order=1))
    N = int(np.count_nonzero(op.row_weights > 0))
    assert s.n_data == N == m.mask.sum() * 9
    assert abs(s.delta_chi2 / np.sqrt(2 * N) - 1) < 0.10, (s.delta_chi2, np.sqrt(2 * N))
    # Independent check of the recorded numbers: re-solve at 0 and at the chosen strength.
    x0 = solve(op, method="working_set").x
    chi2_0 = 2 * with_priors(op).data_cost(x0)
    prob = with_priors(op, regul=s.regul, pop_shape=POP, regul_order=1)
    x = solve(prob, method="gram").x
    np.testing.assert_allclose(s.chi2_0, chi2_0, rtol=1e-9)
    np.testing.assert_allclose(2 * prob.data_cost(x), s.chi2[s.strengths == s.regul][0], rtol=1e-9)
    # Largest such strength: every stronger one tried exceeds the allowed rise.
    rise = s.chi2 - s.chi2_0
    assert np.all(rise[s.strengths > s.regul] > s.target)
    assert np.all(rise[s.strengths <= s.regul] <= s.target)
    truth = m.x_true.ravel()
    err = lambda v: np.linalg.norm(v - truth) / np.linalg.norm(truth)  # noqa: E731
    assert err(s.x) < 0.6 * err(x0), (err(s.x), err(x0))


def test_saturating_prior_returns_max_regul(smooth_grid_mock, caplog):
    """Second differences leave planes free: when even max_regul keeps the rise below √(2N)
    the search says so and returns max_regul."""
    op = _operator(smooth_grid_mock)
    with caplog.at_level(logging.WARNING, logger="cubefit.regul_auto"):
        s = choose_regul(op, priors=dict(pop_shape=POP, regul_order=2), max_regul=1e3)
    assert s.regul == 1e3 and s.chi2[-1] - s.chi2_0 <= s.target
    assert "allow the smoothest solution" in caplog.text


def test_runner_and_cli_record_the_search(tmp_path, smooth_grid_mock):
    from cubefit.cli import main
    from cubefit.store import H5Manager
    m = smooth_grid_mock
    path = tmp_path / "g.h5"
    mgr = H5Manager(path, tem_pix=m.tem_pix, obs_pix=m.obs_pix)
    mgr.init_base(m.dims)
    mgr.populate_from_arrays(losvd=m.losvd, datacube=m.datacube, templates=m.templates, mask=m.mask,
                             vel_pix=m.vel_pix, noise=m.noise, pop_axes=m.pop_axes)
    mgr.ensure_rebin_and_resample()
    assert main(["solve", str(path), "--regul", "auto", "--regul-order", "1", "--no-track"]) == 0
    x, attrs, data = read_fit(path)
    assert attrs["setting.regul_auto"] and attrs["setting.regul"] > 0
    assert abs(attrs["regul_auto.delta_chi2"] / np.sqrt(2 * attrs["regul_auto.n_data"]) - 1) < 0.1
    strengths, chi2 = data["regul_search/strength"], data["regul_search/chi2"]
    assert strengths[0] == 0 and np.all(np.diff(strengths) > 0) and attrs["setting.regul"] in strengths
    # The written fit is the regularised fit at the chosen strength.
    np.testing.assert_allclose(2 * attrs["data_cost"], chi2[strengths == attrs["setting.regul"]][0],
                               rtol=1e-8)
    png = plot_regul_curve(strengths, chi2, chi2_0=attrs["regul_auto.chi2_0"],
                           target=attrs["regul_auto.target"], chosen=attrs["setting.regul"],
                           path=tmp_path / "regul.png")
    assert png.stat().st_size > 1000
    from cubefit.report import write_report
    rep = write_report(path, tmp_path / "rep")
    assert (tmp_path / "rep" / "regul_curve.png") in rep.figures
    with pytest.raises(ValueError, match="regul: expected a strength >= 0 or 'auto'"):
        PipelineRunner(path).solve_all_mp_batched(regul="best", track=False)


def test_cli_rejects_a_negative_regul(tmp_path, capsys):
    from cubefit.cli import main
    with pytest.raises(SystemExit) as e:
        main(["solve", str(tmp_path / "none.h5"), "--regul", "-1"])
    assert e.value.code == 2
    assert "expected a strength >= 0 or 'auto'" in capsys.readouterr().err
