"""Tests for cubefit.solvers: costs against scipy.optimize.nnls on the dense weighted
matrix of the brute-force reference hypercube, and recovery of a known truth."""
import numpy as np
import pytest
from scipy.optimize import nnls
from scipy.sparse.linalg import aslinearoperator

from cubefit.operator import LOSVDOperator
from cubefit.solvers import (METHODS, LeastSquares, fista, nnls_gram, nnls_on_gram,
                             nnls_working_set, projected_gradient, solve)
from reference import direct_hypercube
from test_operator import build, make_problem, reference_A, weighted_dense

SOLVERS = sorted(METHODS)


@pytest.fixture(scope="module")
def noisy():
    """Random problem with mask, λ-weights, inverse variance and noise; scipy's optimum."""
    pb = make_problem(seed=11, S=6, C=3, P=5)
    A = reference_A(pb)
    Y = np.einsum("scpl,cp->sl", A, pb["x_true"])
    Y = Y + pb["sigma"] * pb["rng"].standard_normal(Y.shape)
    Aw = weighted_dense(A, pb)
    yw = (np.sqrt(pb["mask"] * pb["lambda_weights"] * pb["ivar"]) * Y).ravel()
    x_ref, rnorm = nnls(Aw, yw)
    return dict(pb=pb, Y=Y, Aw=Aw, yw=yw, x_ref=x_ref, f_ref=0.5 * rnorm**2,
                op=build(pb, datacube=Y))


def reference_optimality(Aw, yw, x):
    """The documented measure, from the dense matrix: ‖pg‖∞ / ‖Aᵀy‖∞."""
    g = Aw.T @ (Aw @ x - yw)
    pg = np.where(x > 0, g, np.minimum(g, 0))
    return np.abs(pg).max() / np.abs(Aw.T @ yw).max()


@pytest.mark.parametrize("method", SOLVERS)
def test_cost_matches_scipy_nnls(noisy, method):
    r = solve(noisy["op"], method=method)
    f_ref = noisy["f_ref"]
    assert r.success and r.status == 1
    assert abs(r.cost - f_ref) <= 1e-6 * f_ref
    assert np.all(r.x >= 0) and r.x.shape == (noisy["op"].shape[1],)
    # 1e-9: the reference's ln λ step (mean of diffs) and the operator's (median) differ by
    # ~1e-11 relative, which moves the kernels' pixel velocities by as much.
    assert r.cost == pytest.approx(0.5 * np.sum((noisy["Aw"] @ r.x - noisy["yw"]) ** 2), rel=1e-9)
    ref_opt = reference_optimality(noisy["Aw"], noisy["yw"], r.x)
    assert r.optimality <= 1e-6 and ref_opt <= 1e-6
    assert r.optimality == pytest.approx(ref_opt, rel=1e-6, abs=1e-12)
    assert r.passes >= 3 and r.method == method
    h = r.history
    assert len(h["time"]) == len(h["passes"]) == len(h["cost"]) == len(h["optimality"]) >= 1
    assert h["cost"][-1] == pytest.approx(r.cost, rel=1e-12)
    assert set(r.timings) == {"total", "operator", "gram", "solve"}


@pytest.mark.parametrize("method", ["gram", "working_set"])
def test_exact_solvers_on_collinear_ssp_like_mock(small_mock, method):
    """The synthetic SSPs are nearly collinear (ill-conditioned); data norm, all weights."""
    m = small_mock
    lam_w = np.random.default_rng(2).uniform(0.2, 1.0, m.obs_pix.size)
    flux = m.datacube[:, m.mask].mean(axis=1)
    A = direct_hypercube(m.templates, m.tem_pix, m.obs_pix, m.vel_pix, m.losvd,
                         norm_mode="data", data_flux=flux)
    d = np.sqrt(m.mask * lam_w / m.noise**2)
    Aw = (A * d[:, None, None, :]).transpose(0, 3, 1, 2).reshape(d.size, -1)
    yw = (d * m.datacube).ravel()
    _, rnorm = nnls(Aw, yw)
    f_ref = 0.5 * rnorm**2
    op = LOSVDOperator(m.templates, m.tem_pix, m.obs_pix, m.vel_pix, m.losvd, norm_mode="data",
                       datacube=m.datacube, mask=m.mask, lambda_weights=lam_w, ivar=1 / m.noise**2)
    r = solve(op, method=method)
    assert r.success
    assert abs(r.cost - f_ref) <= 1e-6 * f_ref


@pytest.mark.parametrize("method", SOLVERS)
def test_noiseless_mock_recovers_truth(method):
    pb = make_problem(seed=21, S=8, C=2, P=4)
    A = reference_A(pb)
    Y = np.einsum("scpl,cp->sl", A, pb["x_true"])
    op = build(pb, datacube=Y)
    r = solve(op, method=method, gtol=1e-10)
    x_true = pb["x_true"].ravel()
    assert np.abs(r.x - x_true).max() <= 1e-6 * np.abs(x_true).max()


def test_warm_start_from_optimum_is_certified_at_once(noisy):
    op = noisy["op"]
    cold = nnls_working_set(op)
    warm = nnls_working_set(op, x0=cold.x)
    assert warm.success and warm.nit == 0 and warm.passes == 3      # Aᵀỹ, then Ã x0 and Ãᵀ r
    assert warm.cost == pytest.approx(cold.cost, rel=1e-14)
    g = nnls_gram(op, x0=cold.x)
    assert g.success and g.nit == 0 and g.gram_columns == 0
    f_cold, f_warm = fista(op), fista(op, x0=cold.x)
    assert f_warm.success and f_warm.passes < f_cold.passes
    assert abs(f_warm.cost - noisy["f_ref"]) <= 1e-6 * noisy["f_ref"]


def test_working_set_without_column_cache(noisy):
    """Recomputing the working set's columns every round gives the same optimum."""
    cached = nnls_working_set(noisy["op"], max_add=2)
    recomputed = nnls_working_set(noisy["op"], max_add=2, column_cache_bytes=0)
    assert recomputed.success and recomputed.nit == cached.nit
    assert recomputed.gram_columns > cached.gram_columns          # W re-formed each round
    assert recomputed.cost == pytest.approx(cached.cost, rel=1e-12)


def test_working_set_column_cache_stays_within_its_budget(noisy, monkeypatch):
    """A cache with room for 5 columns holds at most 5, then falls back to recomputing;
    the optimum is the same."""
    import cubefit.solvers.working_set as ws
    op = noisy["op"]
    held = []
    real = ws._ColumnCache.gram_rows

    def spy(self, W, new):
        rows = real(self, W, new)
        held.append(sum(b.shape[0] for b in self.blocks) if self.blocks is not None else -1)
        return rows

    monkeypatch.setattr(ws._ColumnCache, "gram_rows", spy)
    r = nnls_working_set(op, max_add=2, column_cache_bytes=8 * op.shape[0] * 5)
    assert max(held) <= 5 and held[-1] == -1            # filled, then dropped
    assert r.success and r.cost == pytest.approx(noisy["f_ref"], rel=1e-10)


def test_working_set_from_partial_start(noisy):
    """A start with the wrong support still converges to the optimum."""
    x0 = np.zeros(noisy["op"].shape[1])
    x0[np.flatnonzero(noisy["x_ref"] == 0)[:3]] = 1.0
    r = nnls_working_set(noisy["op"], x0=x0, max_add=1)
    assert r.success and r.nit >= 2
    assert abs(r.cost - noisy["f_ref"]) <= 1e-6 * noisy["f_ref"]


@pytest.mark.parametrize("kind", ["ndarray", "linear_operator"])
@pytest.mark.parametrize("method", SOLVERS)
def test_generic_problem_inputs(noisy, kind, method):
    Aw = noisy["Aw"] if kind == "ndarray" else aslinearoperator(noisy["Aw"])
    r = solve(Aw, noisy["yw"], method=method)
    assert r.success and abs(r.cost - noisy["f_ref"]) <= 1e-6 * noisy["f_ref"]


def test_limits_stop_without_certificate(noisy):
    r = fista(noisy["op"], max_iter=3)
    assert r.status == 0 and not r.success and r.nit == 3 and "limit" in r.message
    r = nnls_working_set(noisy["op"], max_iter=0)
    assert r.status == 0 and not r.success and r.nit == 0


def test_nnls_on_gram_handles_zero_and_duplicate_columns():
    rng = np.random.default_rng(4)
    A = rng.standard_normal((40, 8))
    A[:, 3] = 0.0                                  # absent component
    A[:, 6] = A[:, 1]                              # exactly collinear pair
    y = A @ np.abs(rng.standard_normal(8)) + 0.1 * rng.standard_normal(40)
    _, rnorm = nnls(A, y)
    z = nnls_on_gram(A.T @ A, A.T @ y)
    assert np.all(z >= 0) and z[3] == 0
    assert 0.5 * np.sum((A @ z - y) ** 2) == pytest.approx(0.5 * rnorm**2, rel=1e-10)


@pytest.mark.parametrize("seed", range(5))
def test_nnls_on_gram_primal_dual_path_matches_scipy(seed, monkeypatch):
    """Well-conditioned problems (some weights at the bound) take the primal-dual
    active-set path; Lawson–Hanson (path switched off) and scipy give the same optimum."""
    import cubefit.solvers.exact as ex
    rng = np.random.default_rng(seed)
    A = rng.uniform(0.0, 1.0, (120, 40)) + 0.3 * np.eye(120, 40)
    y = A @ (rng.uniform(0, 1, 40) * (rng.random(40) < 0.6)) + 0.5 * rng.standard_normal(120)
    x_ref, rnorm = nnls(A, y, maxiter=2000)
    taken = []
    real = ex._primal_dual_active_set
    monkeypatch.setattr(ex, "_primal_dual_active_set",
                        lambda Q, c: taken.append(real(Q, c)) or taken[-1])
    z = nnls_on_gram(A.T @ A, A.T @ y)
    assert taken[0] is not None and 0 < np.count_nonzero(z) < 40
    assert 0.5 * np.sum((A @ z - y) ** 2) == pytest.approx(0.5 * rnorm**2, rel=1e-12)
    np.testing.assert_allclose(z, x_ref, atol=1e-10 * np.abs(x_ref).max())
    monkeypatch.setattr(ex, "PDAS_MAX_ITER", 0)                      # Lawson–Hanson only
    np.testing.assert_allclose(nnls_on_gram(A.T @ A, A.T @ y), z, atol=1e-10 * np.abs(z).max())


def test_nnls_on_gram_falls_back_on_nearly_collinear_columns():
    import cubefit.solvers.exact as ex
    rng = np.random.default_rng(8)
    base = rng.uniform(0.5, 1.5, 300)
    A = np.column_stack([base * (1 + 1e-5 * rng.standard_normal(300)) for _ in range(6)])
    y = A @ np.array([1.0, 0, 0.5, 0, 0, 0.2]) + 1e-4 * rng.standard_normal(300)
    assert ex._primal_dual_active_set(A.T @ A, A.T @ y) is None      # condition too large
    _, rnorm = nnls(A, y)
    z = nnls_on_gram(A.T @ A, A.T @ y)
    assert 0.5 * np.sum((A @ z - y) ** 2) == pytest.approx(0.5 * rnorm**2, rel=1e-6)


def test_projected_gradient_definition():
    x = np.array([0.0, 0.0, 2.0, 1.0])
    g = np.array([3.0, -2.0, 0.5, -0.1])
    np.testing.assert_array_equal(projected_gradient(x, g), [0.0, -2.0, 0.5, -0.1])


def test_boundary_errors(noisy):
    op = noisy["op"]
    with pytest.raises(ValueError, match="method"):
        solve(op, method="kaczmarz")
    with pytest.raises(ValueError, match="y: expected"):
        LeastSquares(op, np.ones(5))
    with pytest.raises(ValueError, match="x0: expected finite non-negative"):
        nnls_working_set(op, x0=-np.ones(op.shape[1]))
    with pytest.raises(ValueError, match=r"x0: expected \(15,\)"):
        fista(op, x0=np.ones(3))
    with pytest.raises(ValueError, match="weighted_data"):
        LeastSquares(noisy["Aw"])


def test_solve_streams_every_iteration_to_the_callback():
    from cubefit.solvers import solve
    rng = np.random.default_rng(4)
    A = rng.random((60, 12))
    y = A @ np.where(rng.random(12) < 0.5, rng.random(12), 0.0) + 0.01 * rng.standard_normal(60)
    seen = []
    res = solve(A, y, method="fista", callback=lambda step, x, cost: seen.append((step, x, cost)))
    assert len(seen) == len(res.history["cost"]) > 1
    assert [s["it"] for s, _, _ in seen] == list(range(len(seen)))
    assert [s["passes"] for s, _, _ in seen] == res.history["passes"]
    for _, x, cost in seen:
        if x is not None:
            assert x.shape == (12,) and np.all(x >= 0)
            r = A @ x - y
            assert cost == pytest.approx(0.5 * r @ r, rel=1e-12)
    solve(A, y, method="working_set")  # no callback left installed afterwards
    assert len(seen) == len(res.history["cost"])


def test_auto_method_follows_the_benchmark_rule():
    from cubefit.solvers import GRAM_MAX_UNKNOWNS, auto_method
    from cubefit.solvers.priors import with_priors
    rng = np.random.default_rng(0)
    A = rng.random((40, 12))
    y = rng.random(40)
    assert auto_method(A) == "working_set"
    assert auto_method(with_priors(A, y, orbit_weights=[0.5, 0.5], pop_shape=(6,),
                                   light=np.ones(12), data_light=1.0)) == "working_set"
    assert auto_method(with_priors(A, y, regul=1.0, pop_shape=(2, 6))) == "gram"

    class Wide:
        shape = (10, GRAM_MAX_UNKNOWNS + 1)
        blocks = {"ridge": GRAM_MAX_UNKNOWNS + 1}
    assert auto_method(Wide()) == "working_set"

    from scipy.sparse.linalg import aslinearoperator
    dev = aslinearoperator(A)
    dev.backend = "cupy"                              # an operator on a GPU backend
    assert auto_method(dev) == "gram"
    assert auto_method(with_priors(dev, y, orbit_weights=[0.5, 0.5], pop_shape=(6,),
                                   light=np.ones(12), data_light=1.0)) == "gram"
    Wide.backend = "cupy"
    assert auto_method(Wide()) == "working_set"


def test_bvls_certifies_a_one_weight_problem():
    """lsq_linear's default iteration limit (n) would stop here at the optimum with status 0."""
    from cubefit.solvers import lsq_bvls
    rng = np.random.default_rng(3)
    a, y = rng.random((30, 1)), rng.random(30)
    r = lsq_bvls(a, y)
    x_ref, rnorm = nnls(a, y)
    assert r.status == 1 and r.x == pytest.approx(x_ref, rel=1e-12)
    assert r.cost == pytest.approx(0.5 * rnorm**2, rel=1e-12)


def test_warm_gram_nnls_equals_scipy_from_any_guess():
    """nnls_on_gram_warm: from the right, a wrong, an empty or no active set, the optimum of
    scipy's nnls on the same least-squares problem; a kept warm solve keeps its set."""
    from scipy.optimize import nnls as scipy_nnls
    from cubefit.solvers.exact import nnls_on_gram_warm
    rng = np.random.default_rng(11)
    A = rng.uniform(0.5, 1.5, (60, 8))
    y = A @ np.r_[1.0, 0, 2.0, 0, 0, 0.5, 0, 0] + 0.05 * rng.standard_normal(60)
    x_ref = scipy_nnls(A, y)[0]
    G, c = A.T @ A, A.T @ y
    right = np.flatnonzero(x_ref > 0)
    for guess in (right, np.arange(8), np.array([3, 4], dtype=int), None):
        w, active = nnls_on_gram_warm(G, c, guess, max_pivot_ratio=1e4)
        np.testing.assert_allclose(w, x_ref, rtol=1e-8, atol=1e-10)
        assert np.array_equal(active, right)
