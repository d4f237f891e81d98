"""Priors as appended rows (cubefit.solvers.priors), checked against dense references
built independently from the brute-force hypercube (light, orbit rows, difference rows)."""
import numpy as np
import pytest
from scipy.optimize import nnls

from cubefit.solvers import solve
from cubefit.solvers.priors import PriorProblem, unit_light, with_priors
from test_operator import build, make_problem, reference_A, weighted_dense

POP_SHAPE = (3, 2)
TARGETS = np.array([0.5, 0.3, 0.2])


@pytest.fixture(scope="module")
def problem():
    """Random problem (mask, λ-weights, ivar, one absent component) and its dense reference."""
    pb = make_problem(seed=5, S=6, C=3, P=6)
    A = reference_A(pb)                                                  # (S, C, P, L)
    Y = np.einsum("scpl,cp->sl", A, pb["x_true"])
    Y = Y + pb["sigma"] * pb["rng"].standard_normal(Y.shape)
    d = np.sqrt(pb["mask"] * pb["lambda_weights"] * pb["ivar"])
    light = np.einsum("scpl,l->cp", A, pb["mask"].astype(float)).ravel()  # Σ_s Σ_good A
    return dict(pb=pb, Aw=weighted_dense(A, pb), yw=(d * Y).ravel(), light=light,
                data_light=float(Y[:, pb["mask"]].sum()), op=build(pb, datacube=Y))


def difference_rows(C, pop_shape, order):
    """Dense difference rows along each axis of each component's grid, by loops."""
    P = int(np.prod(pop_shape))
    stencil = {1: [-1.0, 1.0], 2: [1.0, -2.0, 1.0]}[order]
    rows = []
    for c in range(C):
        for axis, n_axis in enumerate(pop_shape):
            for idx in np.ndindex(*pop_shape):
                if idx[axis] + order >= n_axis:
                    continue
                row = np.zeros(C * P)
                for k, coef in enumerate(stencil):
                    j = list(idx)
                    j[axis] += k
                    row[c * P + np.ravel_multi_index(j, pop_shape)] += coef
                rows.append(row)
    return np.array(rows).reshape(-1, C * P)


def reference_rows(problem, orbit=0.0, regul=0.0, ridge=0.0, order=2):
    """The prior rows of the module docstring, from the reference light and scale."""
    Aw, yw, light = problem["Aw"], problem["yw"], problem["light"]
    C, P = 3, 6
    sigma = np.sqrt(np.mean(np.sum(Aw**2, axis=0)))
    rows = []
    if orbit:
        mu = orbit * np.linalg.norm(yw) / problem["data_light"]
        f = TARGETS / TARGETS.sum()
        for c in range(C):
            own = np.zeros(C * P)
            own[c * P:(c + 1) * P] = light[c * P:(c + 1) * P]
            rows.append(mu * (own - f[c] * light))
    if regul:
        rows.extend(np.sqrt(regul) * sigma * difference_rows(C, POP_SHAPE, order))
    if ridge:
        rows.extend(np.sqrt(ridge) * sigma * np.eye(C * P))
    return np.array(rows).reshape(-1, C * P)


CASES = {"orbit": dict(orbit=1.0), "regul1": dict(regul=1e-3, order=1),
         "regul2": dict(regul=1e-3, order=2), "ridge": dict(ridge=1e-4),
         "all": dict(orbit=0.3, regul=1e-3, ridge=1e-5, order=2)}


def make(problem, orbit=0.0, regul=0.0, ridge=0.0, order=2) -> PriorProblem:
    return with_priors(problem["op"], orbit_weights=TARGETS if orbit else None,
                       orbit_strength=orbit, regul=regul, regul_order=order, ridge=ridge,
                       pop_shape=POP_SHAPE)


def test_unit_light_is_the_masked_unweighted_column_sum(problem):
    # One adjoint of the weighted operator with r = m/d gives Σ_s Σ_good A (1e-9: reference grid).
    np.testing.assert_allclose(unit_light(problem["op"]), problem["light"], rtol=1e-9)
    # A plain matrix: column sums as given.
    np.testing.assert_allclose(unit_light(problem["Aw"]), problem["Aw"].sum(axis=0), rtol=1e-12)


@pytest.mark.parametrize("case", sorted(CASES))
def test_operator_gram_and_exact_solve_match_the_dense_stack(problem, case):
    kw = CASES[case]
    prob = make(problem, **kw)
    B = reference_rows(problem, **kw)
    M = np.vstack([problem["Aw"], B])
    yM = np.concatenate([problem["yw"], np.zeros(B.shape[0])])
    assert prob.shape == M.shape
    rng = np.random.default_rng(1)
    x, r = rng.standard_normal(M.shape[1]), rng.standard_normal(M.shape[0])
    # dot test, and the same operator as the dense stack
    Ax, ATr = prob.matvec(x), prob.rmatvec(r)
    assert abs(Ax @ r - x @ ATr) <= 1e-12 * np.linalg.norm(Ax) * np.linalg.norm(r)
    np.testing.assert_allclose(Ax, M @ x, rtol=1e-9, atol=1e-9 * np.abs(M @ x).max())
    np.testing.assert_array_equal(prob.weighted_data(), yM)
    G = prob.gram()
    np.testing.assert_allclose(G, M.T @ M, rtol=1e-9, atol=1e-9 * np.abs(M.T @ M).max())
    rows, cols = np.array([7, 0, 3]), np.array([2, 17])
    np.testing.assert_allclose(prob.gram(rows, cols), G[np.ix_(rows, cols)], rtol=1e-12)
    # the exact solver on the augmented problem = scipy's NNLS on the dense stack
    res = solve(prob, method="gram")
    _, rnorm = nnls(M, yM, maxiter=10 * M.shape[1])
    f_ref = 0.5 * rnorm**2
    assert res.success
    assert abs(res.cost - f_ref) <= 1e-8 * f_ref
    # the result splits into the data term and one term per prior
    parts = prob.penalties(res.x)
    assert set(parts) == set(prob.blocks) and all(v >= 0 for v in parts.values())
    assert prob.data_cost(res.x) + sum(parts.values()) == pytest.approx(res.cost, rel=1e-10)


def test_orbit_fractions_move_monotonically_to_the_targets(small_mock):
    from cubefit.operator import LOSVDOperator
    m = small_mock
    op = LOSVDOperator(m.templates, m.tem_pix, m.obs_pix, m.vel_pix, m.losvd, norm_mode="data",
                       datacube=m.datacube, mask=m.mask, ivar=1 / m.noise**2)
    target = np.array([0.25, 0.75])
    errors = []
    for s in (0.0, 0.1, 1.0, 10.0, 100.0):
        prob = with_priors(op, orbit_weights=target * 4, orbit_strength=s)   # any positive sum
        res = solve(prob)
        assert res.success
        errors.append(np.abs(prob.light_fractions(res.x) - target).max())
    assert errors[0] > 0.05                           # the data alone prefer other fractions
    assert all(b < a for a, b in zip(errors, errors[1:])), errors
    assert errors[-1] < 1e-3


@pytest.mark.parametrize("order", [1, 2])
def test_regul_smooths(problem, order):
    D = difference_rows(3, POP_SHAPE, order)
    roughness = []
    for regul in (0.0, 1e-6, 1e-4, 1e-2, 1.0):
        res = solve(make(problem, regul=regul, order=order), method="gram")
        assert res.success
        roughness.append(np.linalg.norm(D @ res.x))
    assert all(b <= a * (1 + 1e-9) for a, b in zip(roughness, roughness[1:])), roughness
    assert roughness[-1] < 0.1 * roughness[0]


def test_scale_is_the_rms_column_norm_and_can_be_given(problem):
    Aw = problem["Aw"]
    prob = make(problem, ridge=1.0)
    assert prob.scale == pytest.approx(np.sqrt(np.mean(np.sum(Aw**2, axis=0))), rel=1e-9)
    fixed = with_priors(problem["op"], ridge=1.0, scale=2.0)
    np.testing.assert_allclose(fixed.gram() - prob.gram() + prob.scale**2 * np.eye(18),
                               4.0 * np.eye(18), rtol=1e-6, atol=1e-6 * np.abs(fixed.gram()).max())


def test_no_priors_is_the_data_problem(problem):
    prob = make(problem)
    assert prob.shape == problem["Aw"].shape and prob.blocks == {}
    assert solve(prob).cost == pytest.approx(solve(problem["op"]).cost, rel=1e-12)


@pytest.mark.parametrize("kw, match", [
    (dict(orbit_weights=[1.0, 2.0]), "orbit_weights: expected 3"),
    (dict(orbit_weights=[1.0, -1.0, 1.0]), "non-negative"),
    (dict(regul=-1.0), "regul: expected a finite strength"),
    (dict(ridge=np.nan), "ridge: expected a finite strength"),
    (dict(regul=1.0, regul_order=3), "regul_order"),
    (dict(regul=1.0, pop_shape=(2, 2)), "pop_shape: expected a grid of P = 6"),
    (dict(light=np.ones(5)), "light: expected"),
    (dict(scale=0.0), "scale: expected a positive"),
])
def test_bad_arguments_are_named(problem, kw, match):
    with pytest.raises(ValueError, match=match):
        with_priors(problem["op"], **kw)


def test_regul_needs_a_grid_axis_longer_than_the_order():
    with pytest.raises(ValueError, match="no axis longer than regul_order=2"):
        with_priors(np.ones((5, 8)), np.ones(5), regul=1.0, pop_shape=(2, 2))


def test_orbit_weights_need_positive_data_light(problem):
    with pytest.raises(ValueError, match="the data's light is"):
        with_priors(problem["Aw"], -problem["yw"], orbit_weights=TARGETS)
    with pytest.raises(ValueError, match="data_light: with light="):
        with_priors(problem["op"], orbit_weights=TARGETS, light=problem["light"])


def test_given_light_and_data_light_reproduce_the_default(problem):
    default = make(problem, orbit=1.0)
    given = with_priors(problem["op"], orbit_weights=TARGETS, light=problem["light"],
                        data_light=problem["data_light"], pop_shape=POP_SHAPE)
    assert given.mu == pytest.approx(default.mu, rel=1e-12)
    np.testing.assert_allclose(given.gram(), default.gram(), rtol=1e-8)


@pytest.mark.parametrize("shape, order, hint", [((2, 1), 2, True), ((1, 1), 2, False),
                                                 ((1, 1), 1, False)])
def test_regul_on_a_grid_too_short_says_what_would_help(shape, order, hint):
    rng = np.random.default_rng(0)
    n = int(np.prod(shape))
    with pytest.raises(ValueError, match="nothing to regularise") as e:
        with_priors(rng.random((20, n)), rng.random(20), regul=1.0, regul_order=order,
                    pop_shape=shape)
    assert ("use regul_order=1" in str(e.value)) == hint
