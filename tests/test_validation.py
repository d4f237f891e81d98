"""Inputs that are wrong but plausible, degenerate or contradictory: refused before the file
is touched, with the dataset named and the fix; degenerate solves reported as failures."""
import os
import subprocess
import sys

import h5py
import numpy as np
import pytest

from cubefit.cli import main
from cubefit.runner import PipelineRunner
from cubefit.solvers import METHODS, solve
from cubefit.store import H5Dims, H5Manager

from conftest import file_digest


def _kw(m, **over):
    kw = dict(losvd=m.losvd, datacube=m.datacube, templates=m.templates, mask=m.mask,
              vel_pix=m.vel_pix, noise=m.noise, pop_axes=m.pop_axes)
    kw.update(over)
    return kw


@pytest.fixture
def populated(tmp_path, small_mock):
    m = small_mock
    path = tmp_path / "g.h5"
    mgr = H5Manager(path, tem_pix=m.tem_pix, obs_pix=m.obs_pix)
    mgr.init_base(m.dims)
    mgr.populate_from_arrays(**_kw(m))
    mgr.ensure_rebin_and_resample()
    return path


def _refused(path, call, *needles):
    """``call()`` raises ValueError containing every needle and leaves ``path`` as it was."""
    before = file_digest(path) if path.exists() else None
    with pytest.raises(ValueError) as err:
        call()
    for needle in needles:
        assert needle in str(err.value), (needle, str(err.value))
    assert (file_digest(path) if path.exists() else None) == before
    assert not [p for p in path.parent.iterdir() if p.name.startswith(f".{path.name}")]
    return str(err.value)


# ----------------------------------------------------------------------------- item 5: dims

def test_populate_contradicting_init_dims_is_refused(tmp_path, small_mock):
    """init_base(nComp = C + 1) then a C-component LOSVD: refused, dims kept (was: accepted,
    the file's nComp silently became C)."""
    m = small_mock
    d = m.dims
    path = tmp_path / "k.h5"
    H5Manager(path, tem_pix=m.tem_pix, obs_pix=m.obs_pix).init_base(
        H5Dims(nSpat=d.nSpat, nLSpec=d.nLSpec, nTSpec=d.nTSpec, nVel=d.nVel, nComp=d.nComp + 1,
               nPop=d.nPop))
    mgr = H5Manager(path, tem_pix=m.tem_pix, obs_pix=m.obs_pix)
    _refused(path, lambda: mgr.populate_from_arrays(**_kw(m)),
             f"nComp (/LOSVD components): file {d.nComp + 1}, inputs {d.nComp}", "overwrite=True")
    assert mgr.dims().nComp == d.nComp + 1


def test_repopulate_with_more_components_is_refused(populated, small_mock):
    m = small_mock
    H = np.concatenate([m.losvd, m.losvd[:, :, :1]], axis=2)           # C + 1 components
    mgr = H5Manager(populated, tem_pix=m.tem_pix, obs_pix=m.obs_pix)
    _refused(populated, lambda: mgr.populate_from_arrays(**_kw(m, losvd=H)),
             f"nComp (/LOSVD components): file {m.dims.nComp}, inputs {m.dims.nComp + 1}",
             "cubefit init --overwrite")


def test_init_base_with_shifted_grid_on_populated_file_is_refused(populated, small_mock):
    """A shifted /ObsPix would relabel the stored data (was: replaced silently, the
    fingerprint and a built hypercube kept)."""
    m = small_mock
    step = np.diff(m.obs_pix).mean()
    shifted = H5Manager(populated, tem_pix=m.tem_pix, obs_pix=m.obs_pix + 0.5 * step)
    _refused(populated, lambda: shifted.init_base(m.dims), "/ObsPix", "populate_from_arrays",
             "overwrite=True")
    # The same grids again (the manual's script re-run) are accepted and change nothing.
    with h5py.File(populated, "r") as f:
        fp = f.attrs["inputs_fingerprint"]
    H5Manager(populated, tem_pix=m.tem_pix, obs_pix=m.obs_pix).init_base(m.dims)
    with h5py.File(populated, "r") as f:
        assert f.attrs["inputs_fingerprint"] == fp
        np.testing.assert_array_equal(f["/ObsPix"][...], m.obs_pix)
    # New grids travel with their data through populate (and are stored).
    H5Manager(populated, tem_pix=m.tem_pix, obs_pix=m.obs_pix + 0.5 * step).populate_from_arrays(
        **_kw(m))
    with h5py.File(populated, "r") as f:
        np.testing.assert_array_equal(f["/ObsPix"][...], m.obs_pix + 0.5 * step)
        assert f.attrs["inputs_fingerprint"] != fp


# ----------------------------------------------------------------------------- item 7

def test_repopulate_without_grids_after_crop_names_crop_and_tem_pix(populated, small_mock):
    msg = _refused(populated, lambda: H5Manager(populated).populate_from_arrays(**_kw(small_mock)),
                   "/Templates", "cropped", "tem_pix=")
    assert f"of the {small_mock.tem_pix.size} given" in msg
    # With the full grid, as the message says, it works.
    H5Manager(populated, tem_pix=small_mock.tem_pix).populate_from_arrays(**_kw(small_mock))


@pytest.mark.parametrize("arg, value, needles", [
    ("datacube", "strings", ("/DataCube", "dtype <U")),
    ("datacube", "complex", ("/DataCube", "complex", "imaginary")),
    ("datacube", "ragged", ("/DataCube", "regular")),
    ("templates", "complex", ("/Templates", "complex")),
    ("noise", "strings", ("/Noise", "dtype <U")),
    ("losvd", "objects", ("/LOSVD", "dtype object")),
    ("mask", "strings", ("/Mask", "dtype <U")),
    ("vel_pix", "strings", ("/VelPix", "dtype <U")),
    ("orbit_weights", "complex", ("/CompWeights", "complex")),
])
def test_non_real_inputs_are_refused_by_name(populated, small_mock, arg, value, needles):
    m = small_mock
    good = _kw(m, orbit_weights=np.ones(m.dims.nComp))[arg]
    bad = {"strings": lambda a: np.asarray(a).astype(str),
           "complex": lambda a: np.asarray(a) + 1e-3j,
           "ragged": lambda a: [list(r) for r in a[:-1]] + [list(a[-1][:-1])],
           "objects": lambda a: np.asarray(a).astype(object)}[value](good)
    mgr = H5Manager(populated, tem_pix=m.tem_pix, obs_pix=m.obs_pix)
    _refused(populated, lambda: mgr.populate_from_arrays(**_kw(m, **{arg: bad})), *needles)


def test_real_dtypes_are_accepted_as_float64(populated, small_mock):
    m = small_mock
    mgr = H5Manager(populated, tem_pix=m.tem_pix.astype(np.float64), obs_pix=m.obs_pix)
    mgr.populate_from_arrays(**_kw(m, datacube=m.datacube.astype(np.float32),
                                   mask=m.mask.astype(np.int8), noise=m.noise.astype(np.float32)))
    with h5py.File(populated, "r") as f:
        assert f["/DataCube"].dtype == np.float64 and f["/Mask"].dtype == bool
        np.testing.assert_array_equal(f["/DataCube"][...], m.datacube.astype(np.float32))


# ----------------------------------------------------------------------------- item 6

def test_degenerate_inputs_are_refused_at_populate(populated, small_mock):
    m = small_mock
    mgr = H5Manager(populated, tem_pix=m.tem_pix, obs_pix=m.obs_pix)
    with h5py.File(populated, "r") as f:
        i0, i1 = f["/Templates"].attrs["crop_i_lo"], f["/Templates"].attrs["crop_i_hi"]
    H = m.losvd.copy()
    H[:, :, 1] = 0.0                                   # component 1 absent everywhere
    _refused(populated, lambda: mgr.populate_from_arrays(**_kw(m, losvd=H)),
             "/LOSVD", "component(s) [1]", "zero in every spaxel")
    T = m.templates.copy()
    T[4, i0:i1] = 0.0                                  # zero over the range used, not outside
    assert np.any(T[4] != 0)
    _refused(populated, lambda: mgr.populate_from_arrays(**_kw(m, templates=T)),
             "/Templates", "template(s) [4]", "zero over the whole range used")
    _refused(populated, lambda: mgr.populate_from_arrays(**_kw(m, noise=np.full_like(m.noise, np.inf))),
             "/Noise", "no unmasked pixel has a finite noise")
    sig = m.noise.copy()
    sig[:, m.mask] = np.inf                            # finite only where masked out
    _refused(populated, lambda: mgr.populate_from_arrays(**_kw(m, noise=sig)),
             "/Noise", "no unmasked pixel")
    _refused(populated, lambda: mgr.populate_from_arrays(**_kw(m, noise=np.full_like(m.noise, 1e-200))),
             "/Noise", "overflows")
    _refused(populated, lambda: mgr.populate_from_arrays(**_kw(m, datacube=m.datacube * 1e200)),
             "/DataCube", "overflow")


def _zero_model_problems(rng):
    A = np.abs(rng.normal(size=(40, 6)))
    return {"all-zero columns": (np.zeros((40, 6)), rng.normal(size=40), "every model column is zero"),
            "anti-correlated data": (A, -A @ np.abs(rng.normal(size=6)), "correlates positively")}


@pytest.mark.parametrize("method", sorted(METHODS))
def test_zero_model_of_nonzero_data_is_a_failure(method, rng):
    """Was: success=True, 'KKT test passed', x = 0."""
    for label, (A, y, reason) in _zero_model_problems(rng).items():
        r = solve(A, y, method=method)
        assert not r.success and r.status == -2, (label, r.status, r.message)
        assert reason in r.message and np.all(r.x == 0), label
    r = solve(np.zeros((40, 6)), np.zeros(40), method=method)   # zero data: x = 0 is the answer
    assert r.success and r.status == 1


def test_runner_reports_a_file_with_dark_losvds_as_failed(populated, capsys):
    """A file written by another tool with all-zero LOSVDs (populate refuses them): the fit
    fails with the reason, /Fit says so and `cubefit solve` exits 1."""
    with h5py.File(populated, "r+") as f:
        f["/LOSVD"][...] = 0.0
    x, stats = PipelineRunner(populated).solve_all_mp_batched(track=False)
    assert not stats["success"] and stats["status"] == -2 and "zero" in stats["message"]
    assert np.all(x == 0)
    with h5py.File(populated, "r") as f:
        assert not f["/Fit"].attrs["success"] and f["/Fit"].attrs["status"] == -2
    assert main(["solve", str(populated), "--no-track"]) == 1


def test_runner_reports_infinite_noise_as_failed(populated):
    """Infinite noise everywhere (populate refuses it; here written by another tool): the
    weighted data vanish, the solver's x = 0 is exact, but nothing was fitted (was:
    success, 'KKT test passed', light fractions [nan nan])."""
    with h5py.File(populated, "r+") as f:
        f["/Noise"][...] = np.inf
    x, stats = PipelineRunner(populated).solve_all_mp_batched(track=False)
    assert np.all(x == 0) and not stats["success"] and stats["status"] == -2
    assert "weighted data are zero" in stats["message"] and "infinite noise" in stats["message"]


def test_runner_level_check_catches_a_fit_without_light(populated, small_mock, monkeypatch):
    """Even if a solver claimed success on x = 0, the runner reports no light as a failure."""
    import cubefit.runner as runner
    from cubefit.solvers.result import SolverResult

    def fake(prob, **kw):
        n = prob.shape[1]
        return SolverResult(x=np.zeros(n), cost=1.0, optimality=0.0, nit=1, passes=2, gram_columns=0,
                            status=1, success=True, message="KKT test passed", method="fake",
                            timings={"total": 0.0, "operator": 0.0, "gram": 0.0},
                            history={"time": [], "passes": [], "cost": [], "optimality": []})
    monkeypatch.setattr(runner, "solve", fake)
    _, stats = PipelineRunner(populated).solve_all_mp_batched(track=False)
    assert not stats["success"] and stats["status"] == -2 and "no light" in stats["message"]


# ----------------------------------------------------------------------------- item 13

def test_log10_wavelength_grid_is_recognised(tmp_path, small_mock):
    m = small_mock
    ln10 = np.log(10.0)
    with pytest.raises(ValueError) as err:
        H5Manager(tmp_path / "a.h5", tem_pix=m.tem_pix / ln10, obs_pix=m.obs_pix)
    assert "/TemPix" in str(err.value) and "probably log10" in str(err.value)
    assert "ln λ = log10 λ · ln 10" in str(err.value)
    with pytest.raises(ValueError, match="/ObsPix.*probably log10"):
        H5Manager(tmp_path / "a.h5", tem_pix=m.tem_pix, obs_pix=m.obs_pix / ln10)
    with pytest.raises(ValueError, match=r"/ObsPix.*outside 100 Å-10 µm; give natural-log"):
        H5Manager(tmp_path / "a.h5", obs_pix=m.obs_pix - np.log(1e4))      # ln(λ/µm)
    assert not (tmp_path / "a.h5").exists()
    # The conversion the message gives restores a grid that is accepted.
    H5Manager(tmp_path / "a.h5", tem_pix=(m.tem_pix / ln10) * ln10, obs_pix=m.obs_pix)


def test_losvd_in_other_axis_order_names_the_transpose(populated, small_mock):
    m = small_mock
    H_scv = np.transpose(m.losvd, (0, 2, 1))
    mgr = H5Manager(populated, tem_pix=m.tem_pix, obs_pix=m.obs_pix)
    msg = _refused(populated, lambda: mgr.populate_from_arrays(**_kw(m, losvd=H_scv)),
                   "/LOSVD", "as (S, C, V)", "np.transpose(losvd, (0, 2, 1))")
    assert "/VelPix has" not in msg
    np.testing.assert_array_equal(np.transpose(H_scv, (0, 2, 1)), m.losvd)   # the fix it names
    H_vsc = np.transpose(m.losvd, (1, 0, 2))
    _refused(populated, lambda: mgr.populate_from_arrays(**_kw(m, losvd=H_vsc)),
             "as (V, S, C)", "np.transpose(losvd, (1, 0, 2))")


def _npz(path, m, **over):
    arrays = dict(TemPix=m.tem_pix, ObsPix=m.obs_pix, VelPix=m.vel_pix, Templates=m.templates,
                  LOSVD=m.losvd, DataCube=m.datacube, Mask=m.mask, Noise=m.noise)
    arrays.update(over)
    np.savez(path, **arrays)
    return path


def test_cli_init_with_scv_losvd_names_the_transpose(tmp_path, small_mock, capsys):
    src = _npz(tmp_path / "in.npz", small_mock, LOSVD=np.transpose(small_mock.losvd, (0, 2, 1)))
    assert main(["init", str(src), str(tmp_path / "k.h5")]) == 1
    err = capsys.readouterr().err
    assert "np.transpose(losvd, (0, 2, 1))" in err and "H5Dims says" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.npz"]


def test_failed_init_leaves_no_file_or_the_previous_one(tmp_path, small_mock, capsys):
    m = small_mock
    H = m.losvd.copy()
    H[:, :, 0] = 0.0
    bad = _npz(tmp_path / "bad.npz", m, LOSVD=H)               # refused late, by populate
    out = tmp_path / "k.h5"
    assert main(["init", str(bad), str(out)]) == 1
    assert "component(s) [0]" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.npz"]     # was: a half-made k.h5
    good = _npz(tmp_path / "good.npz", m)
    assert main(["init", str(good), str(out)]) == 0
    before = file_digest(out)
    assert main(["init", str(bad), str(out), "--overwrite"]) == 1
    assert file_digest(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.npz", "good.npz", "k.h5"]


KILLED_INIT = """
import os, signal, sys
import cubefit.store as store
real = store.H5Manager.populate_from_arrays
def killed(self, **kw):
    os.kill(os.getpid(), signal.SIGKILL)
store.H5Manager.populate_from_arrays = killed
from cubefit.cli import main
main(["init", sys.argv[1], sys.argv[2]])
"""


def test_killed_init_leaves_no_output_only_a_temporary_the_next_edit_removes(tmp_path, small_mock):
    good = _npz(tmp_path / "good.npz", small_mock)
    out = tmp_path / "k.h5"
    r = subprocess.run([sys.executable, "-c", KILLED_INIT, str(good), str(out)], timeout=120)
    assert r.returncode == -9
    assert not out.exists()                                # no half-made file to open later
    left = [p.name for p in tmp_path.iterdir() if p.name.startswith(".k.h5.new-")]
    assert len(left) == 1                                  # named for the dead process
    assert main(["init", str(good), str(out)]) == 0
    assert main(["weights", str(out)]) == 0                # the next edit of k.h5 clears it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["good.npz", "k.h5"]
    assert os.path.getsize(out) > 0
