"""Tests for the solvers added with the benchmark (newton_cg, lbfgsb, trf, bvls) and the
shared stopping rule: costs against scipy.optimize.nnls on dense weighted matrices built
independently (brute-force reference hypercube), on a well-conditioned random problem,
on the nearly collinear SSP-like mock and with priors; warm starts; limits; errors."""
from functools import partial

import numpy as np
import pytest
from scipy.optimize import nnls
from scipy.sparse.linalg import aslinearoperator

from cubefit.operator import LOSVDOperator
from cubefit.solvers import (METHODS, LeastSquares, lbfgsb, lsq_bvls, lsq_trf, newton_cg,
                             relative_optimality, solve)
from cubefit.solvers.priors import with_priors
from cubefit.solvers.stopping import Convergence, limit_reached
from reference import direct_hypercube
from test_operator import build, make_problem, reference_A, weighted_dense

NEW = ["newton_cg", "lbfgsb", "trf", "bvls"]


def dense_reference(Aw, yw):
    """scipy's NNLS optimum and cost on the dense weighted system."""
    x, rnorm = nnls(Aw, yw, maxiter=50 * Aw.shape[1])
    return x, 0.5 * rnorm**2


def assert_matches(r, f_ref, Aw, yw):
    """Converged, within 1e-6 of the reference cost, and the reported numbers are true."""
    assert r.success and r.status == 1, r.message
    assert abs(r.cost - f_ref) <= 1e-6 * f_ref
    assert np.all(r.x >= 0)
    assert r.cost == pytest.approx(0.5 * np.sum((Aw @ r.x - yw) ** 2), rel=1e-9)
    g = Aw.T @ (Aw @ r.x - yw)
    assert relative_optimality(r.x, g, np.abs(Aw.T @ yw).max()) <= 1e-6
    h = r.history
    assert len(h["cost"]) == len(h["passes"]) == len(h["time"]) == len(h["optimality"]) >= 1
    assert np.all(np.diff(h["passes"]) >= 0) and h["passes"][-1] <= r.passes
    assert h["cost"][-1] == pytest.approx(r.cost, rel=1e-12)


@pytest.fixture(scope="module")
def noisy():
    """Well-conditioned random problem: mask, λ-weights, inverse variance, noise."""
    pb = make_problem(seed=31, S=6, C=3, P=5)
    A = reference_A(pb)
    Y = np.einsum("scpl,cp->sl", A, pb["x_true"]) + pb["sigma"] * pb["rng"].standard_normal(
        (pb["losvd"].shape[0], pb["obs_pix"].size))
    Aw = weighted_dense(A, pb)
    yw = (np.sqrt(pb["mask"] * pb["lambda_weights"] * pb["ivar"]) * Y).ravel()
    x_ref, f_ref = dense_reference(Aw, yw)
    return dict(op=build(pb, datacube=Y), Aw=Aw, yw=yw, x_ref=x_ref, f_ref=f_ref)


@pytest.fixture(scope="module")
def collinear(small_mock):
    """The SSP-like mock (nearly collinear templates), with mask, λ-weights and ivar."""
    m = small_mock
    lam_w = np.random.default_rng(8).uniform(0.2, 1.0, m.obs_pix.size)
    A = direct_hypercube(m.templates, m.tem_pix, m.obs_pix, m.vel_pix, m.losvd)
    d = np.sqrt(m.mask * lam_w / m.noise**2)
    Aw = (A * d[:, None, None, :]).transpose(0, 3, 1, 2).reshape(d.size, -1)
    yw = (d * m.datacube).ravel()
    x_ref, f_ref = dense_reference(Aw, yw)
    op = LOSVDOperator(m.templates, m.tem_pix, m.obs_pix, m.vel_pix, m.losvd,
                       datacube=m.datacube, mask=m.mask, lambda_weights=lam_w,
                       ivar=1 / m.noise**2)
    return dict(op=op, Aw=Aw, yw=yw, x_ref=x_ref, f_ref=f_ref)


def test_new_solvers_are_registered():
    assert set(NEW) <= set(METHODS)


@pytest.mark.parametrize("method", NEW)
def test_well_conditioned_problem_matches_scipy_nnls(noisy, method):
    r = solve(noisy["op"], method=method)
    assert_matches(r, noisy["f_ref"], noisy["Aw"], noisy["yw"])
    assert r.method == method


@pytest.mark.parametrize("method", NEW)
def test_collinear_ssp_like_mock_matches_scipy_nnls(collinear, method):
    assert np.linalg.cond(collinear["Aw"]) > 1e5              # the point of this problem
    r = solve(collinear["op"], method=method)
    assert_matches(r, collinear["f_ref"], collinear["Aw"], collinear["yw"])
    # Same support (TRF's iterates are interior: its zeros may be ~1e-13 of the largest).
    support = r.x > 1e-9 * r.x.max()
    np.testing.assert_array_equal(support, collinear["x_ref"] > 0)


@pytest.mark.parametrize("method", NEW)
def test_with_priors_matches_scipy_nnls_on_the_stacked_system(collinear, method):
    """Orbit-weight penalty, Tikhonov and ridge rows: the problem stays an NNLS problem."""
    prob = with_priors(collinear["op"], orbit_weights=[0.7, 0.3], orbit_strength=0.5,
                       regul=1e-2, pop_shape=(3, 2), ridge=1e-6)
    n = prob.shape[1]
    B = np.column_stack([prob.matvec(e) for e in np.eye(n)])[prob.m:]   # the prior rows
    Aw = np.vstack([collinear["Aw"], B])
    yw = np.concatenate([collinear["yw"], np.zeros(B.shape[0])])
    _, f_ref = dense_reference(Aw, yw)
    r = solve(prob, method=method)
    assert_matches(r, f_ref, Aw, yw)
    assert r.cost == pytest.approx(prob.data_cost(r.x) + sum(prob.penalties(r.x).values()),
                                   rel=1e-9)


@pytest.mark.parametrize("method", NEW)
def test_noiseless_well_conditioned_mock_recovers_truth(method):
    pb = make_problem(seed=41, S=8, C=3, P=4)
    Y = np.einsum("scpl,cp->sl", reference_A(pb), pb["x_true"])
    r = solve(build(pb, datacube=Y), method=method, gtol=1e-10)
    x_true = pb["x_true"].ravel()
    assert r.success
    assert np.abs(r.x - x_true).max() <= 1e-6 * np.abs(x_true).max()


@pytest.mark.parametrize("method", NEW)
def test_warm_start_reduces_work(collinear, method):
    """From a perturbed optimum (support and values slightly off) the solve is cheaper."""
    op, f_ref = collinear["op"], collinear["f_ref"]
    cold = solve(op, method=method)
    x0 = cold.x * np.random.default_rng(3).uniform(0.98, 1.02, cold.x.size)
    warm = solve(op, method=method, x0=x0)
    assert warm.success and abs(warm.cost - f_ref) <= 1e-6 * f_ref
    if method == "newton_cg":
        # x0 has the optimum's support: one direct solve of that face, then the
        # certificate.  (Counted in iterations, whose number the algorithm fixes, not in
        # passes; the cold run needs as few as 7 here, so a margin in passes would rest on
        # how rounding breaks ties.)
        assert warm.nit <= 2 < cold.nit
        return
    # BVLS works on the dense matrix: its passes are fixed, its iterations are not.
    # The margins here are 3x or more, far from anything rounding decides.
    work = (lambda r: r.nit) if method == "bvls" else (lambda r: r.passes)
    assert work(warm) < work(cold)


def test_newton_cg_small_faces_are_solved_directly_and_cg_still_converges(collinear):
    """The collinear problem by both Newton paths: the direct face solves (default) reach
    scipy's optimum in few passes.  Pure CG (``direct_face=0``) gets close, but whether
    it certifies depends on how the machine's rounding erodes conjugacy on this face (it
    did here in ≈ 800 passes; a 2-weight face stalled 1e-5 above f* on another CPU), so
    only its documented limit is asserted: within 1e-4 of f*, never below it."""
    op, f_ref = collinear["op"], collinear["f_ref"]
    direct = newton_cg(op)
    assert direct.success and abs(direct.cost - f_ref) <= 1e-6 * f_ref, direct.message
    cg = newton_cg(op, direct_face=0, max_passes=20_000)
    assert cg.status in (1, 2) and f_ref * (1 - 1e-9) <= cg.cost <= f_ref * (1 + 1e-4)
    assert direct.gram_columns > 0 and cg.gram_columns == 0
    assert direct.passes < cg.passes


@pytest.mark.parametrize("method", NEW)
def test_dense_and_linear_operator_inputs(noisy, method):
    for A in (noisy["Aw"], aslinearoperator(noisy["Aw"])):
        r = solve(A, noisy["yw"], method=method)
        assert r.success and abs(r.cost - noisy["f_ref"]) <= 1e-6 * noisy["f_ref"]


@pytest.mark.parametrize("solver", [partial(newton_cg, direct_face=0), lbfgsb, lsq_trf])
def test_pass_limit_stops_without_certificate(collinear, solver):
    r = solver(collinear["op"], max_passes=12)
    assert r.status == 0 and not r.success and "limit" in r.message
    assert r.passes < 12 + 60          # overshoot: at most the iteration in flight


def test_bvls_refuses_a_dense_matrix_over_the_limit(noisy):
    with pytest.raises(ValueError, match="max_dense_bytes"):
        lsq_bvls(noisy["op"], max_dense_bytes=1000)


def test_iteration_limit_of_bvls(collinear):
    r = lsq_bvls(collinear["op"], max_iter=1)
    assert r.status == 0 and not r.success


@pytest.mark.parametrize("solver", [newton_cg, lbfgsb, lsq_trf, lsq_bvls])
def test_bad_warm_start_is_rejected(noisy, solver):
    with pytest.raises(ValueError, match="x0: expected finite non-negative"):
        solver(noisy["op"], x0=-np.ones(noisy["op"].shape[1]))


def test_newton_cg_argument_errors(noisy):
    with pytest.raises(ValueError, match="eta_max"):
        newton_cg(noisy["op"], eta_max=1.5)
    with pytest.raises(ValueError, match="progress"):
        newton_cg(noisy["op"], progress=-0.1)
    with pytest.raises(ValueError, match="max_cg"):
        newton_cg(noisy["op"], max_cg=0)


def test_zero_data_gives_zero_weights(noisy):
    for method in NEW:
        r = solve(noisy["Aw"], np.zeros(noisy["Aw"].shape[0]), method=method)
        assert r.success and r.cost == 0.0 and not r.x.any()


# -- the stopping rule -----------------------------------------------------------------------
def test_convergence_needs_a_settled_cost_and_the_kkt_test():
    prob = LeastSquares(np.eye(2), np.array([1.0, 1.0]))
    conv = Convergence(prob, gtol=1e-6, ftol=1e-3, window=2)
    assert conv.update(10.0, 1e-9) is None                 # nothing to compare with yet
    assert conv.update(5.0, 1e-9) is None
    assert conv.update(4.0, 1e-9) is None                  # 10 -> 4 over the window
    assert conv.update(4.0, 1e-9) is None                  # 5 -> 4
    assert conv.update(4.0, 1e-9) == 1                     # 4 -> 4: settled, KKT passes
    assert conv.update(4.0, 1e-3) == 2                     # settled, KKT fails: a stall
    conv.restart()
    assert conv.update(4.0, 1e-9) is None and conv.update(4.0, 1e-9) == 1


def test_convergence_settles_at_zero_cost_and_below_the_floor():
    prob = LeastSquares(np.eye(2), np.array([3.0, 4.0]))          # floor eps²·12.5 ≈ 6e-31
    conv = Convergence(prob, gtol=1e-6, ftol=1e-3, window=1)
    conv.update(0.0, 0.0)
    assert conv.update(0.0, 0.0) == 1                      # a noiseless fit: f* = 0
    conv = Convergence(prob, gtol=1e-6, ftol=1e-3, window=1)
    conv.update(1e-40, 0.0)
    assert conv.update(0.0, 0.0) == 1                      # a drop of 1e-40: rounding


def test_convergence_and_limits_validate_arguments():
    prob = LeastSquares(np.eye(2), np.ones(2))
    with pytest.raises(ValueError, match="gtol"):
        Convergence(prob, gtol=-1.0, ftol=0.0, window=1)
    with pytest.raises(ValueError, match="window"):
        Convergence(prob, gtol=1e-6, ftol=0.0, window=0)
    prob.passes = 7
    assert limit_reached(prob, 3, 3, None) and limit_reached(prob, 0, 10, 7)
    assert not limit_reached(prob, 0, 10, None)


def test_same_inputs_give_the_same_x_bit_for_bit_whatever_threads_and_load(monkeypatch):
    """Determinism: the working set (the default solver) on the matrix-free operator with
    1 or 2 operator threads, and under a clock that jumps at random (a loaded machine:
    every timing the code could read is scrambled), returns the same x bit for bit.
    Tiles of a few spaxels make the reduction order matter; 60 unknowns make the
    working set take several rounds."""
    import time

    from conftest import SMALL_COMPONENTS
    from cubefit.mock import make_mock_galaxy, synthetic_templates
    flux, ln_lam, axes = synthetic_templates(n_age=6, n_metal=5, lam=(4700.0, 5700.0),
                                             velscale=40.0)
    m = make_mock_galaxy(flux, ln_lam, pop_shape=(6, 5), pop_axes=axes, nx=3, ny=3,
                         components=SMALL_COMPONENTS, obs_lam=(4900.0, 5500.0), vel_max=600.0,
                         snr=50.0, seed=5)
    probe = LOSVDOperator(m.templates, m.tem_pix, m.obs_pix, m.vel_pix, m.losvd,
                          datacube=m.datacube, mask=m.mask, ivar=1 / m.noise**2)
    per_spaxel = probe.C * probe.F * probe.cdtype.itemsize + 4 * probe.nfft * probe.dtype.itemsize
    budget = 32 * per_spaxel

    def fit(workers):
        op = LOSVDOperator(m.templates, m.tem_pix, m.obs_pix, m.vel_pix, m.losvd,
                           datacube=m.datacube, mask=m.mask, ivar=1 / m.noise**2,
                           workers=workers, memory_budget=budget)
        assert op.tile < m.losvd.shape[0]            # several tiles
        return solve(op, method="working_set").x

    x1 = fit(1)
    x2 = fit(2)
    rng = np.random.default_rng(0)
    now = [0.0]

    def loaded_clock():
        now[0] += float(rng.exponential(0.05))
        return now[0]

    monkeypatch.setattr(time, "perf_counter", loaded_clock)
    x_loaded = fit(1)
    monkeypatch.undo()
    assert np.array_equal(x1, x2) and np.array_equal(x1, x_loaded)
