"""Array backends of the operator (cubefit.backend) against the dense reference.

CI runs the Array API path with ``array_api_strict`` (CPU; it rejects anything
outside the standard).  On a GPU machine set ``PYTEST_CUBEFIT_BACKENDS=cupy,torch`` to
run the same checks there.
"""
import os

import numpy as np
import pytest
import scipy.sparse as sp

from cubefit.backend import BACKENDS, get_backend
from cubefit.config import Config
from cubefit.grids import rebin_matrix
from cubefit.solvers import solve
from test_operator import build, make_problem, reference_A, weighted_dense

NAMES = [n for n in os.environ.get("PYTEST_CUBEFIT_BACKENDS", "array_api_strict").split(",") if n]


def available(name):
    try:
        get_backend(name)
    except ImportError as e:
        pytest.skip(str(e))
    return name


@pytest.fixture(scope="module")
def pb():
    return make_problem(seed=3, S=7, C=3, P=5)


@pytest.fixture(scope="module")
def dense(pb):
    return weighted_dense(reference_A(pb), pb)


@pytest.mark.parametrize("name", NAMES)
def test_applies_match_the_dense_reference_and_numpy(pb, dense, name):
    available(name)
    rng = np.random.default_rng(1)
    x = rng.uniform(0, 1, dense.shape[1])
    r = rng.standard_normal(dense.shape[0])
    ref_op = build(pb)
    op = build(pb, backend=name, tile=3)                 # 3 tiles: cached, cached, ...
    y, g = op.matvec(x), op.rmatvec(r)
    assert isinstance(y, np.ndarray) and isinstance(g, np.ndarray)
    np.testing.assert_allclose(y, dense @ x, rtol=1e-6, atol=1e-10 * abs(dense @ x).max())
    np.testing.assert_allclose(g, dense.T @ r, rtol=1e-6, atol=1e-10 * abs(dense.T @ r).max())
    np.testing.assert_allclose(y, ref_op.matvec(x), rtol=1e-12, atol=1e-13 * abs(y).max())
    np.testing.assert_allclose(g, ref_op.rmatvec(r), rtol=1e-12, atol=1e-13 * abs(g).max())
    # dot test to rounding
    assert abs(y @ r - x @ g) <= 1e-12 * np.linalg.norm(y) * np.linalg.norm(r)
    # unweighted model, float32
    np.testing.assert_allclose(op.model(x), ref_op.model(x), rtol=1e-12,
                               atol=1e-13 * abs(ref_op.model(x)).max())
    op32 = build(pb, backend=name, dtype=np.float32)
    np.testing.assert_allclose(op32.matvec(x), dense @ x, rtol=2e-4, atol=2e-5 * abs(dense @ x).max())


@pytest.mark.parametrize("name", NAMES)
def test_uncached_tiles_and_explicit_columns(pb, dense, name):
    available(name)
    op = build(pb, backend=name, tile=2, memory_budget=1)        # nothing cached
    assert op.cache_info["cached_tiles"] == 0
    x = np.random.default_rng(2).uniform(0, 1, dense.shape[1])
    np.testing.assert_allclose(op.matvec(x), dense @ x, rtol=1e-6, atol=1e-10 * abs(dense @ x).max())
    full = dense.T @ dense
    for o in (build(pb, backend=name), build(pb, backend=name, tile=2)):   # one tile, several
        np.testing.assert_allclose(o.gram(), full, rtol=1e-6, atol=1e-9 * abs(full).max())
        rows, cols = np.array([13, 0, 7, 4]), np.array([2, 13, 5])
        np.testing.assert_allclose(o.gram(rows, cols), full[np.ix_(rows, cols)], rtol=1e-6,
                                   atol=1e-9 * abs(full).max())
        np.testing.assert_allclose(o.columns(rows), dense[:, rows], rtol=1e-6,
                                   atol=1e-9 * abs(dense).max())
        np.testing.assert_allclose(o.column_energy().ravel(), np.diag(full), rtol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_solver_on_a_backend_reaches_the_numpy_optimum(pb, name):
    available(name)
    y = build(pb).matvec(pb["x_true"].ravel()) + 0.01 * np.random.default_rng(4).standard_normal(
        pb["sigma"].size)
    ref = solve(build(pb), y, method="working_set")
    res = solve(build(pb, backend=name), y, method="working_set")
    assert res.success and res.cost == pytest.approx(ref.cost, rel=1e-10)


@pytest.mark.parametrize("name", [n for n in BACKENDS if n != "numpy"])
def test_banded_rebin_equals_the_sparse_product(name):
    available(name)
    be = get_backend(name)
    tem = np.log(np.linspace(4000, 4100, 301))           # not log-uniform: uneven overlaps
    obs = np.log(np.geomspace(4005, 4095, 37))
    R = rebin_matrix(np.linspace(tem[0], tem[-1], tem.size), np.linspace(obs[0], obs[-1], obs.size))
    for M in (R, R.T.tocsr(), sp.csr_matrix(np.array([[0, 1.0, 2.0], [0, 0, 0], [3.0, 0, 0]]))):
        z = np.random.default_rng(0).standard_normal((M.shape[1], 4))
        out = be.to_numpy(be.rebin(M, np.float64)(be.asarray(z)))
        np.testing.assert_allclose(out, M @ z, rtol=1e-14, atol=1e-14)


def test_backend_errors_name_the_choices(pb):
    with pytest.raises(ValueError, match=r"backend: expected one of \('numpy', 'cupy'"):
        build(pb, backend="jax")
    try:
        import cupy  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match=r"backend='cupy' needs the package 'cupy'"):
            get_backend("cupy")


def test_from_h5_takes_the_backend_from_the_config(tmp_path, small_mock):
    from cubefit.operator import LOSVDOperator
    from cubefit.store import H5Manager
    available("array_api_strict")
    m = small_mock
    path = tmp_path / "g.h5"
    mgr = H5Manager(path, tem_pix=m.tem_pix, obs_pix=m.obs_pix)
    mgr.init_base(m.dims)
    mgr.populate_from_arrays(losvd=m.losvd, datacube=m.datacube, templates=m.templates,
                             mask=m.mask, vel_pix=m.vel_pix)
    mgr.ensure_rebin_and_resample()
    cfg = Config.from_env(environ={"CUBEFIT_BACKEND": "array_api_strict"})
    op = LOSVDOperator.from_h5(path, config=cfg, lambda_weights=None)
    ref = LOSVDOperator.from_h5(path, config=Config.from_env(environ={}), lambda_weights=None)
    assert op._be.name == "array_api_strict" and ref._be.name == "numpy"
    x = np.random.default_rng(0).uniform(0, 1, op.shape[1])
    np.testing.assert_allclose(op.matvec(x), ref.matvec(x), rtol=1e-12, atol=1e-13 * abs(ref.matvec(x)).max())
