"""Tests for cubefit.operator: every number is checked against an independent reference.

The reference is ``reference.direct_hypercube`` (loops, ``np.interp``, ``np.convolve``,
a dense overlap matrix), weighted row by row with ``sqrt(m w ι)``.
"""
import numpy as np
import pytest

from cubefit.grids import log_grid
from cubefit.losvd import gauss_hermite_losvd
from cubefit.operator import LOSVDOperator
from cubefit.store import H5Manager
from reference import direct_hypercube

VELSCALE = 25.0


def make_problem(seed=0, S=6, C=3, P=4, noise=0.02):
    """A small random problem with every feature switched on.

    Random positive templates (well conditioned), Gauss–Hermite LOSVDs on a velocity
    grid whose 7 km/s step does not divide the 25 km/s pixels, one absent component
    (zero histogram), random amplitudes, a masked window, λ-weights and inverse
    variance.  Returns a dict of constructor arguments plus the truth.
    """
    rng = np.random.default_rng(seed)
    tem_pix = log_grid(5000.0, 5160.0, VELSCALE)
    T = tem_pix.size
    vel_pix = 7.0 * np.arange(-71, 72)                              # ±497 km/s -> K = 20
    dlog = tem_pix[1] - tem_pix[0]
    obs_pix = tem_pix[26:T - 27:2] + 0.5 * dlog                     # step 2 pixels, inside by > K
    L = obs_pix.size
    templates = rng.uniform(0.5, 1.5, (P, T))
    v = rng.uniform(-200, 200, (S, C))
    sig = rng.uniform(30, 150, (S, C))
    H = gauss_hermite_losvd(vel_pix, v, sig, rng.uniform(-0.1, 0.1, (S, C)),
                            rng.uniform(-0.1, 0.1, (S, C)))                 # (S, C, V)
    H *= rng.uniform(0.5, 2.0, (S, C, 1))
    H[1, C - 1] = 0.0                                                # component absent here
    losvd = np.ascontiguousarray(H.transpose(0, 2, 1))               # (S, V, C)
    mask = np.ones(L, bool)
    mask[40:55] = False
    lam_w = rng.uniform(0.1, 1.0, L)
    sigma = rng.uniform(0.5, 2.0, (S, L)) * noise
    x_true = rng.uniform(0.0, 1.0, (C, P)) * (rng.random((C, P)) < 0.6)
    return dict(templates=templates, tem_pix=tem_pix, obs_pix=obs_pix, vel_pix=vel_pix,
                losvd=losvd, mask=mask, lambda_weights=lam_w, ivar=1.0 / sigma**2,
                sigma=sigma, x_true=x_true, rng=rng)


def reference_A(pb, norm="model", amp="sum", data_flux=None):
    """Dense (S, C, P, L) from the brute-force reference."""
    return direct_hypercube(pb["templates"], pb["tem_pix"], pb["obs_pix"], pb["vel_pix"],
                            pb["losvd"], norm_mode=norm, amp_mode=amp, data_flux=data_flux)


def weighted_dense(A, pb, weights=True):
    """Rows (s, l), columns (c, p): sqrt(m w ι) · A."""
    S, C, P, L = A.shape
    d = np.sqrt(pb["mask"] * pb["lambda_weights"] * pb["ivar"]) if weights else np.ones((S, L))
    return (A * d[:, None, None, :]).transpose(0, 3, 1, 2).reshape(S * L, C * P)


def build(pb, **kw):
    args = {k: pb[k] for k in ("templates", "tem_pix", "obs_pix", "vel_pix", "losvd", "mask",
                               "lambda_weights", "ivar")}
    args.update(kw)
    return LOSVDOperator(**args)


@pytest.fixture(scope="module")
def pb():
    return make_problem()


@pytest.fixture(scope="module")
def flux(pb):
    return np.random.default_rng(7).uniform(0.5, 3.0, pb["losvd"].shape[0])


@pytest.fixture(scope="module")
def dense(pb, flux):
    """Reference hypercubes for both norms and both amplitude modes."""
    return {(norm, amp): reference_A(pb, norm, amp, flux)
            for norm in ("model", "data") for amp in ("sum", "trapz")}


# --- forward model against the materialised hypercube ----------------------------------

@pytest.mark.parametrize("norm", ["model", "data"])
@pytest.mark.parametrize("amp", ["sum", "trapz"])
def test_apply_matches_materialised_hypercube(pb, dense, flux, norm, amp):
    A = dense[(norm, amp)]
    op = build(pb, norm_mode=norm, amp_mode=amp, data_flux=flux, tile=4)
    X = pb["rng"].standard_normal((op.C, op.P))
    ref = np.einsum("scpl,cp->sl", A, X)
    scale = np.abs(ref).max()
    assert np.abs(op.model(X.ravel()) - ref).max() <= 1e-6 * scale
    d = np.sqrt(pb["mask"] * pb["lambda_weights"] * pb["ivar"])
    assert np.abs(op.matvec(X.ravel()).reshape(ref.shape) - d * ref).max() <= 1e-6 * np.abs(d * ref).max()
    # the absent component of spaxel 1 contributes nothing
    e = np.zeros((op.C, op.P))
    e[op.C - 1] = 1.0
    assert np.abs(op.model(e.ravel())[1]).max() == 0.0


def test_small_mock_model_matches_reference(small_mock):
    m = small_mock
    A = direct_hypercube(m.templates, m.tem_pix, m.obs_pix, m.vel_pix, m.losvd)
    op = LOSVDOperator(m.templates, m.tem_pix, m.obs_pix, m.vel_pix, m.losvd, mask=m.mask,
                       ivar=1 / m.noise**2)
    ref = np.einsum("scpl,cp->sl", A, m.x_true)
    assert np.abs(op.model(m.x_true.ravel()) - ref).max() <= 1e-6 * np.abs(ref).max()
    assert np.abs(m.model - ref).max() <= 1e-6 * np.abs(ref).max()      # mock built the same model


# --- adjoint ----------------------------------------------------------------------------

@pytest.mark.parametrize("norm", ["model", "data"])
def test_dot_test(pb, flux, norm):
    op = build(pb, norm_mode=norm, data_flux=flux, tile=4)
    rng = np.random.default_rng(3)
    for _ in range(3):
        x = rng.standard_normal(op.shape[1])
        y = rng.standard_normal(op.shape[0])
        Ax, Aty = op.matvec(x), op.rmatvec(y)
        lhs, rhs = Ax @ y, x @ Aty
        assert abs(lhs - rhs) <= 1e-10 * np.linalg.norm(Ax) * np.linalg.norm(y)
        assert abs(lhs - rhs) <= 1e-10 * np.linalg.norm(x) * np.linalg.norm(Aty)


def test_adjoint_matches_dense_transpose(pb, dense):
    Aw = weighted_dense(dense[("model", "sum")], pb)
    op = build(pb, tile=4)
    r = np.random.default_rng(4).standard_normal(op.shape[0])
    ref = Aw.T @ r
    assert np.abs(op.rmatvec(r) - ref).max() <= 1e-10 * np.abs(ref).max()


def test_gradient_matches_finite_differences(pb):
    rng = np.random.default_rng(5)
    A = reference_A(pb)
    Y = np.einsum("scpl,cp->sl", A, pb["x_true"]) + pb["sigma"] * rng.standard_normal(pb["sigma"].shape)
    op = build(pb, datacube=Y, tile=4)
    yw = op.weighted_data()

    def f(x):
        r = op.matvec(x) - yw
        return 0.5 * r @ r

    x = rng.uniform(0, 1, op.shape[1])
    grad = op.rmatvec(op.matvec(x) - yw)
    for v in [rng.standard_normal(x.size) for _ in range(3)] + [np.eye(x.size)[7]]:
        eps = 1e-3 / np.linalg.norm(v)
        fd = (f(x + eps * v) - f(x - eps * v)) / (2 * eps)     # exact for a quadratic, up to rounding
        assert fd == pytest.approx(grad @ v, rel=1e-7, abs=1e-9 * np.abs(grad).max())


# --- cache, precision, threads -------------------------------------------------------------

def test_cached_and_recomputed_spectra_identical(pb):
    cached = build(pb, tile=2, memory_budget=1 << 30)
    recomputed = build(pb, tile=2, memory_budget=1)
    info = cached.cache_info
    partial = build(pb, tile=2, memory_budget=info["work_bytes"] + info["all_bytes"] // 2)
    assert cached.cache_info["cached_tiles"] == 3 and recomputed.cache_info["cached_tiles"] == 0
    assert 0 < partial.cache_info["cached_tiles"] < 3
    rng = np.random.default_rng(6)
    x, r = rng.standard_normal(cached.shape[1]), rng.standard_normal(cached.shape[0])
    for _ in range(2):                 # first apply fills the cache, the second uses it
        ref_f, ref_a = cached.matvec(x), cached.rmatvec(r)
        for op in (recomputed, partial):
            np.testing.assert_array_equal(op.matvec(x), ref_f)
            np.testing.assert_array_equal(op.rmatvec(r), ref_a)
    assert cached.cache_info["cached_bytes"] == cached.cache_info["all_bytes"]
    assert recomputed.cache_info["cached_bytes"] == 0


def test_threads_give_identical_results(pb):
    one, two = build(pb, tile=2), build(pb, tile=2, workers=2)
    rng = np.random.default_rng(8)
    x, r = rng.standard_normal(one.shape[1]), rng.standard_normal(one.shape[0])
    np.testing.assert_array_equal(two.matvec(x), one.matvec(x))
    np.testing.assert_array_equal(two.rmatvec(r), one.rmatvec(r))


def test_float32_close_to_float64(pb):
    op64, op32 = build(pb), build(pb, dtype=np.float32)
    rng = np.random.default_rng(9)
    x, r = rng.uniform(0, 1, op64.shape[1]), rng.standard_normal(op64.shape[0])
    y64, y32 = op64.matvec(x), op32.matvec(x)
    assert y32.dtype == np.float32
    assert np.linalg.norm(y32 - y64) <= 1e-4 * np.linalg.norm(y64)
    g64, g32 = op64.rmatvec(r), op32.rmatvec(r)
    assert g32.dtype == np.float32
    assert np.linalg.norm(g32 - g64) <= 1e-4 * np.linalg.norm(g64)


def test_linear_operator(pb, dense):
    Aw = weighted_dense(dense[("model", "sum")], pb)
    for dtype in (np.float64, np.float32):
        lo = build(pb, dtype=dtype).as_linear_operator()
        assert lo.shape == Aw.shape and lo.dtype == dtype
        x = np.random.default_rng(10).uniform(0, 1, Aw.shape[1])
        tol = 1e-10 if dtype == np.float64 else 1e-4
        assert np.linalg.norm(lo @ x - Aw @ x) <= tol * np.linalg.norm(Aw @ x)
        r = Aw @ x
        assert np.linalg.norm(lo.T @ r - Aw.T @ r) <= tol * np.linalg.norm(Aw.T @ r)


# --- explicit columns: Gram, column energy, rhs ------------------------------------------------

@pytest.mark.parametrize("norm", ["model", "data"])
def test_gram_columns_energy_rhs(pb, dense, flux, norm):
    Aw = weighted_dense(dense[(norm, "sum")], pb)
    op = build(pb, norm_mode=norm, data_flux=flux, datacube=np.ones((6, pb["obs_pix"].size)),
               tile=4)
    scale = np.abs(Aw).max()
    np.testing.assert_allclose(op.columns(), Aw, rtol=0, atol=1e-10 * scale)
    G = Aw.T @ Aw
    np.testing.assert_allclose(op.gram(), G, rtol=0, atol=1e-10 * np.abs(G).max())
    rows, cols = np.array([5, 0, 11, 3]), np.array([2, 11])
    np.testing.assert_allclose(op.gram(rows, cols), G[np.ix_(rows, cols)], rtol=0,
                               atol=1e-10 * np.abs(G).max())
    np.testing.assert_allclose(op.column_energy(), np.diag(G).reshape(op.C, op.P), rtol=1e-10)
    yw = (np.ones((6, op.L)) * np.sqrt(pb["mask"] * pb["lambda_weights"] * pb["ivar"])).ravel()
    np.testing.assert_allclose(op.weighted_data(), yw, rtol=1e-15)
    np.testing.assert_allclose(op.rhs(), Aw.T @ yw, rtol=0, atol=1e-10 * np.abs(Aw.T @ yw).max())


def test_column_blocks_respect_memory_budget(pb, dense):
    """A budget too small for one tile's block re-cuts the tiles: same Gram."""
    Aw = weighted_dense(dense[("model", "sum")], pb)
    op = build(pb, memory_budget=200_000)
    np.testing.assert_allclose(op.gram(), Aw.T @ Aw, rtol=0, atol=1e-10 * np.abs(Aw.T @ Aw).max())
    with pytest.raises(ValueError, match="memory_budget"):
        build(pb, memory_budget=1000).gram()


# --- file input ----------------------------------------------------------------------------------

def test_from_h5_matches_mock_model(tmp_path, small_mock):
    m = small_mock
    path = tmp_path / "g.h5"
    mgr = H5Manager(path, tem_pix=m.tem_pix, obs_pix=m.obs_pix)
    mgr.init_base(m.dims)
    mgr.populate_from_arrays(losvd=m.losvd, datacube=m.datacube, templates=m.templates,
                             mask=m.mask, vel_pix=m.vel_pix, noise=m.noise)
    mgr.ensure_rebin_and_resample()
    op = LOSVDOperator.from_h5(path)
    assert op.T < m.tem_pix.size                       # the store cropped the templates
    model = op.model(m.x_true.ravel())
    assert np.abs(model - m.model).max() <= 1e-10 * np.abs(m.model).max()
    d = np.sqrt(m.mask / m.noise**2)
    np.testing.assert_allclose(op.weighted_data(), (d * m.datacube).ravel(), rtol=1e-12)
    assert np.array_equal(op.row_weights, d)
    no_ivar = LOSVDOperator.from_h5(path, use_ivar=False, norm_mode="data")
    assert np.array_equal(no_ivar.row_weights, np.broadcast_to(m.mask * 1.0, d.shape))


# --- boundary errors -----------------------------------------------------------------------------

@pytest.mark.parametrize("change, words", [
    (lambda S, L: dict(mask=np.ones(L - 1, bool)), "mask: expected"),
    (lambda S, L: dict(mask=np.ones(L)), "mask: expected"),
    (lambda S, L: dict(ivar=np.ones((L, S))), "ivar: expected shape"),
    (lambda S, L: dict(ivar=np.full((S, L), np.nan)), "ivar: expected finite"),
    (lambda S, L: dict(lambda_weights=-np.ones(L)), "lambda_weights: expected non-negative"),
    (lambda S, L: dict(norm_mode="data"), "data_flux"),
    (lambda S, L: dict(norm_mode="data", data_flux=np.array([1.0, -1, 1, 1, 1, 1])), r"spaxels \[1\]"),
    (lambda S, L: dict(norm_mode="flux"), "norm_mode"),
    (lambda S, L: dict(amp_mode="max"), "amp_mode"),
    (lambda S, L: dict(dtype=np.int32), "dtype"),
    (lambda S, L: dict(tile=0), "tile"),
    (lambda S, L: dict(R=np.eye(L)), "R: expected a sparse"),
])
def test_constructor_rejects(pb, change, words):
    with pytest.raises(ValueError, match=words):
        build(pb, **change(pb["losvd"].shape[0], pb["obs_pix"].size))


def test_rejects_short_templates_and_bad_vectors(pb):
    with pytest.raises(ValueError, match="kernel half-width"):
        build(pb, templates=pb["templates"][:, 10:], tem_pix=pb["tem_pix"][10:])
    op = build(pb)
    with pytest.raises(ValueError, match=r"x: expected \(12,\)"):
        op.matvec(np.ones(13))
    with pytest.raises(ValueError, match="r: expected"):
        op.rmatvec(np.ones(7))
    with pytest.raises(ValueError, match="datacube"):
        op.weighted_data()
    with pytest.raises(ValueError, match="cols"):
        op.gram(cols=np.array([0, 99]))


def test_row_blocks_are_the_dense_rows(pb, dense):
    """The BlockOperator contract: block i's forward is the dense matrix's rows
    row_block(i) times x, its adjoint those rows' transpose, and the blocks tile the rows."""
    from cubefit.solvers.problem import BlockOperator
    Aw = weighted_dense(dense[("model", "sum")], pb)       # brute-force reference
    op = build(pb, tile=4)
    assert isinstance(op, BlockOperator) and op.n_blocks == -(-op.S // 4) > 1
    rng = np.random.default_rng(5)
    x = rng.standard_normal(op.shape[1])
    r = rng.standard_normal(op.shape[0])
    rows = [op.row_block(i) for i in range(op.n_blocks)]
    assert rows[0].start == 0 and rows[-1].stop == op.shape[0]
    assert all(a.stop == b.start for a, b in zip(rows, rows[1:]))
    total = np.zeros(op.shape[1])
    for i, sl in enumerate(rows):
        # the reference is float32-built: agreement to ~1e-9 of the largest value
        np.testing.assert_allclose(op.matvec_block(x, i), Aw[sl] @ x, rtol=0,
                                   atol=1e-8 * np.abs(Aw @ x).max())
        part = op.rmatvec_block(r[sl], i)
        np.testing.assert_allclose(part, Aw[sl].T @ r[sl], rtol=0,
                                   atol=1e-8 * np.abs(Aw.T @ r).max())
        total += part
    np.testing.assert_allclose(total, op.rmatvec(r), rtol=1e-12, atol=1e-12 * np.abs(total).max())
    with pytest.raises(ValueError, match="rows of block"):
        op.rmatvec_block(r[:3], 0)


def test_solvers_ask_only_what_the_problem_contract_offers():
    """LeastSquares satisfies the Problem protocol; no solver reaches into the rows."""
    import inspect
    import re

    import cubefit.solvers as solvers
    from cubefit.solvers.problem import LeastSquares, Problem
    assert isinstance(LeastSquares(np.eye(3), np.ones(3)), Problem)
    for name in ("fista", "newton", "working_set", "bounded_lsq", "stopping", "lbfgsb", "exact"):
        src = inspect.getsource(getattr(solvers, name))
        # Sums over rows (r @ r, y @ y, norms of y) only through the contract.
        assert not re.search(r"prob\.y\s*@|@\s*prob\.y|norm\(prob\.y\)|\b(r|s|rt|w|r_y)\s*@\s*\1\b", src), name
