"""PipelineRunner: the manual's call against scipy's NNLS on the dense reference, the /Fit
record, atomic writes under SIGKILL, resume, priors and parallelism knobs."""
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import h5py
import numpy as np
import pytest
from scipy.optimize import nnls

import cubefit.runner as runner_mod
from cubefit.config import Config
from cubefit.pipeline_runner import PipelineRunner
from cubefit.runner import FIT_ATTRS, STAGING, read_fit, write_fit
from cubefit.store import H5Manager, read_inputs
from cubefit.tracking import find_sidecars
from cubefit.weights import ensure_lambda_weights, read_lambda_weights
from conftest import file_digest
from reference import direct_hypercube


@pytest.fixture(scope="module")
def populated(tmp_path_factory, small_mock):
    """The small mock as a file (like test_store's _populated) with λ-weights, and the
    dense weighted reference ``Aw``, ``yw`` and light ``ℓ`` built from what the file holds."""
    m = small_mock
    path = tmp_path_factory.mktemp("runner") / "g.h5"
    mgr = H5Manager(path, tem_pix=m.tem_pix, obs_pix=m.obs_pix)
    mgr.init_base(m.dims)
    mgr.populate_from_arrays(losvd=m.losvd, datacube=m.datacube, templates=m.templates, mask=m.mask,
                             vel_pix=m.vel_pix, noise=m.noise, pop_axes=m.pop_axes)
    mgr.ensure_rebin_and_resample()
    ensure_lambda_weights(path)
    inp = read_inputs(path)
    A = reference(inp, "data")
    Aw, yw = weighted(A, inp, read_lambda_weights(path))
    light = np.einsum("scpl,l->cp", A, inp.mask.astype(float)).ravel()
    return dict(path=path, A=A, inp=inp, Aw=Aw, yw=yw, light=light,
                data_light=float(inp.datacube[:, inp.mask].sum()), C=A.shape[1], P=A.shape[2])


def reference(inp, norm):
    """Brute-force ``A (S, C, P, L)`` of the file's (cropped) inputs."""
    return direct_hypercube(inp.templates, inp.tem_pix, inp.obs_pix, inp.vel_pix, inp.losvd,
                            norm_mode=norm, data_flux=inp.data_flux)


def weighted(A, inp, lam_w):
    """Dense ``Ã`` (rows s·L + l, columns c·P + p) and ``ỹ`` with mask, λ-weights, 1/Noise²."""
    d = np.sqrt(inp.mask * lam_w / inp.noise**2)
    return ((A * d[:, None, None, :]).transpose(0, 3, 1, 2).reshape(d.size, -1),
            (d * inp.datacube).ravel())


@pytest.fixture
def h5(populated, tmp_path):
    """A fresh copy of the populated file for each test."""
    path = tmp_path / "galaxy.h5"
    shutil.copy(populated["path"], path)
    return path


def dense_cost(Aw, yw, x):
    r = Aw @ x - yw
    return 0.5 * float(r @ r)


def test_manual_call_verbatim_matches_scipy_nnls(h5, populated, capsys):
    orbit_w = None   # the manual's call, with its optional argument left out
    runner = PipelineRunner(h5)
    x, stats = runner.solve_all_mp_batched(
        epochs=6, lr=0.6, project_nonneg=True, processes=2, blas_threads=1,
        orbit_weights=orbit_w # optional (C, )
    )
    assert "λ-weights: min=" in capsys.readouterr().out            # the manual's banner
    Aw, yw = populated["Aw"], populated["yw"]
    _, rnorm = nnls(Aw, yw, maxiter=20 * Aw.shape[1])
    f_ref = 0.5 * rnorm**2
    assert stats["success"] and stats["status"] == 1 and stats["optimality"] <= 1e-6
    assert abs(stats["cost"] - f_ref) <= 1e-8 * f_ref
    assert dense_cost(Aw, yw, x) == pytest.approx(f_ref, rel=1e-8)
    assert stats["data_cost"] == pytest.approx(stats["cost"], rel=1e-12) and stats["penalties"] == {}

    # /X_global and /Fit: every dataset and attribute described, settings recorded.
    with h5py.File(h5, "r") as f:
        np.testing.assert_array_equal(f["/X_global"][...], x)
        assert f["/X_global"].dtype == np.float64 and f["/X_global"].shape == (Aw.shape[1],)
        assert STAGING not in f
        fit = f["/Fit"]
        units, meaning = json.loads(fit.attrs["attr_units"]), json.loads(fit.attrs["attr_descriptions"])
        assert set(units) == set(meaning) == set(FIT_ATTRS)
        assert set(FIT_ATTRS) <= set(fit.attrs)
        for name in ("/X_global", "/Fit/history/cost", "/Fit/history/optimality",
                     "/Fit/history/passes", "/Fit/history/time", "/Fit/light_fractions",
                     "/Fit/component_light"):
            assert f[name].attrs["units"] and f[name].attrs["description"], name
        assert fit.attrs["setting.epochs"] == 6 and fit.attrs["setting.lr"] == 0.6
        assert fit.attrs["setting.pixels_per_aperture"] == "none"
        assert fit.attrs["setting.processes"] == 2 and fit.attrs["setting.blas_threads"] == 1
        assert fit.attrs["setting.norm_mode"] == "data" and fit.attrs["setting.ivar"]
        assert fit.attrs["cost"] == stats["cost"] and fit.attrs["status"] == 1
        assert fit.attrs["solver"] == stats["method"] and fit.attrs["passes"] == stats["passes"]
        assert fit.attrs["x0_source"] == "none"
        assert f["/Fit/history/cost"][-1] == pytest.approx(stats["cost"], rel=1e-12)
        np.testing.assert_allclose(f["/Fit/light_fractions"][...].sum(), 1.0, rtol=1e-12)
        assert "/Fit/orbit_weights" not in f
    # the tracker sidecar holds the history and the final snapshot
    assert stats["sidecar"] and os.path.exists(stats["sidecar"])
    assert find_sidecars(h5)[0].name == os.path.basename(stats["sidecar"])


def test_orbit_weights_match_the_dense_penalised_reference(h5, populated):
    target = np.array([0.3, 0.7])
    Aw, yw, light = populated["Aw"], populated["yw"], populated["light"]
    C, P = populated["C"], populated["P"]
    fractions = lambda x: (light * x).reshape(C, P).sum(1) / (light * x).sum()  # noqa: E731
    _, free = PipelineRunner(h5).solve_all_mp_batched(track=False)
    assert np.abs(free["light_fractions"] - target).max() > 0.05
    np.testing.assert_allclose(free["light_fractions"], fractions(free["result"].x), rtol=1e-8)

    x, stats = PipelineRunner(h5).solve_all_mp_batched(orbit_weights=target, orbit_strength=1.0,
                                                       track=False)
    # independent rows: μ (L_c − f_c L), μ = ‖ỹ‖ / L_data
    mu = np.linalg.norm(yw) / populated["data_light"]
    rows = np.zeros((C, C * P))
    for c in range(C):
        rows[c, c * P:(c + 1) * P] = light[c * P:(c + 1) * P]
        rows[c] -= target[c] * light
    M = np.vstack([Aw, mu * rows])
    _, rnorm = nnls(M, np.concatenate([yw, np.zeros(C)]), maxiter=20 * M.shape[1])
    assert stats["cost"] == pytest.approx(0.5 * rnorm**2, rel=1e-8)
    assert stats["data_cost"] == pytest.approx(dense_cost(Aw, yw, x), rel=1e-8)
    assert stats["penalties"]["orbit"] == pytest.approx(0.5 * np.sum((mu * rows @ x) ** 2), rel=1e-6)
    err_free = np.abs(free["light_fractions"] - target).max()
    assert np.abs(stats["light_fractions"] - target).max() < 0.1 * err_free
    _, attrs, data = read_fit(h5)
    np.testing.assert_allclose(data["orbit_weights"], target, rtol=1e-15)
    np.testing.assert_allclose(data["light_fractions"], stats["light_fractions"], rtol=1e-15)
    assert attrs["orbit_mu"] == pytest.approx(mu, rel=1e-12)
    assert attrs["penalty_orbit"] == stats["penalties"]["orbit"] and attrs["penalty_ridge"] == 0.0


def test_regul_uses_the_population_grid_of_the_file(h5):
    _, stats = PipelineRunner(h5).solve_all_mp_batched(regul=1e-3, ridge=1e-6, track=False)
    assert stats["success"] and set(stats["penalties"]) == {"regul", "ridge"}
    assert stats["settings"]["pop_shape"] == [3, 2]
    _, attrs, _ = read_fit(h5)
    assert attrs["prior_scale"] > 0 and attrs["penalty_regul"] > 0
    assert attrs["cost"] == pytest.approx(attrs["data_cost"] + attrs["penalty_regul"]
                                          + attrs["penalty_ridge"], rel=1e-10)


def test_norm_mode_follows_the_built_hypercube(h5):
    from cubefit.hypercube import build_hypercube
    build_hypercube(h5, norm_mode="model", progress=False)
    inp = read_inputs(h5)
    Aw, yw = weighted(reference(inp, "model"), inp, read_lambda_weights(h5))
    _, rnorm = nnls(Aw, yw, maxiter=20 * Aw.shape[1])
    x, stats = PipelineRunner(h5).solve_all_mp_batched(track=False)
    assert stats["settings"]["norm_mode"] == "model"
    assert stats["cost"] == pytest.approx(0.5 * rnorm**2, rel=1e-8)
    assert read_fit(h5)[1]["setting.norm_mode"] == "model"


def test_norm_mode_argument_without_a_cube_and_conflict_with_one(h5):
    inp = read_inputs(h5)
    Aw, yw = weighted(reference(inp, "model"), inp, read_lambda_weights(h5))
    _, rnorm = nnls(Aw, yw, maxiter=20 * Aw.shape[1])
    _, stats = PipelineRunner(h5).solve_all_mp_batched(norm_mode="model", track=False)
    assert stats["settings"]["norm_mode"] == "model"
    assert stats["cost"] == pytest.approx(0.5 * rnorm**2, rel=1e-8)

    from cubefit.hypercube import build_hypercube
    build_hypercube(h5, norm_mode="data", progress=False)
    before = open(h5, "rb").read()
    with pytest.raises(ValueError, match=r"built in norm_mode='data'; run convert_hypercube_norm"):
        PipelineRunner(h5).solve_all_mp_batched(norm_mode="model", track=False)
    with pytest.raises(ValueError, match=r"norm_mode: expected one of"):
        PipelineRunner(h5).solve_all_mp_batched(norm_mode="flux", track=False)
    assert open(h5, "rb").read() == before


def test_the_lambda_weights_banner_is_printed_once(h5, capsys, caplog):
    import logging
    with caplog.at_level(logging.INFO):
        PipelineRunner(h5).solve_all_mp_batched(track=False)
    banner = [line for line in (capsys.readouterr().out + caplog.text).splitlines()
              if "λ-weights" in line and "min" in line]
    assert len(banner) == 1, banner


def test_disabled_lambda_weights_are_not_applied(h5, populated, capsys):
    cfg = Config.from_env(environ={}, lambda_weights_enable=False)
    Aw, yw = weighted(populated["A"], populated["inp"], 1.0)
    _, rnorm = nnls(Aw, yw, maxiter=20 * Aw.shape[1])
    _, stats = PipelineRunner(h5, config=cfg).solve_all_mp_batched(track=False)
    assert "disabled" in capsys.readouterr().out
    assert stats["cost"] == pytest.approx(0.5 * rnorm**2, rel=1e-8)
    assert read_fit(h5)[1]["setting.lambda_weights"] == False  # noqa: E712 (numpy bool)


def test_resume_warm_starts_from_the_last_snapshot_then_x_global(h5):
    runner = PipelineRunner(h5)
    x1, cold = runner.solve_all_mp_batched(method="working_set")          # tracked: snapshots
    x2, warm = runner.solve_all_mp_batched(method="working_set", resume=True, track=False)
    assert warm["x0_source"] == f"snapshot {cold['sidecar']}"
    assert warm["cost"] == pytest.approx(cold["cost"], rel=1e-10)
    assert warm["passes"] < cold["passes"]
    assert warm["result"].gram_columns < cold["result"].gram_columns
    for p in find_sidecars(h5):
        p.unlink()
    _, again = runner.solve_all_mp_batched(method="working_set", resume=True, track=False)
    assert again["x0_source"] == "/X_global" and again["passes"] < cold["passes"]
    _, attrs, _ = read_fit(h5)
    assert attrs["x0_source"] == "/X_global" and attrs["setting.resume"]


def test_parallelism_knobs_reach_the_operator_and_blas(h5, monkeypatch):
    from threadpoolctl import threadpool_info
    seen = {}
    real_solve = runner_mod.solve

    def spy(prob, **kw):
        seen["workers"] = prob.base.workers
        seen["blas"] = {i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"}
        return real_solve(prob, **kw)

    monkeypatch.setattr(runner_mod, "solve", spy)
    PipelineRunner(h5).solve_all_mp_batched(processes=2, blas_threads=1, track=False)
    assert seen == {"workers": 2, "blas": {1}}


@pytest.mark.parametrize("kw, match", [
    (dict(project_nonneg=False), "non-negative problem x >= 0 only"),
    (dict(epochs=0), "epochs: expected a positive integer"),
    (dict(processes=1.5), "processes: expected a positive integer"),
    (dict(blas_threads=0), "blas_threads: expected a positive integer"),
    (dict(lr=-1.0), "lr: expected a positive"),
    (dict(tol=0.0), "tol: expected a positive"),
])
def test_bad_arguments_fail_before_touching_the_file(h5, kw, match):
    before = open(h5, "rb").read()
    with pytest.raises(ValueError, match=match):
        PipelineRunner(h5).solve_all_mp_batched(track=False, **kw)
    assert open(h5, "rb").read() == before


def _fit_attrs(k):
    return {"nit": k, "solver": "test", "message": f"write {k}"}


def _check_consistent(path, allowed):
    """The file opens, /X_global is one complete write k (all entries k) and /Fit agrees."""
    x, attrs, _ = read_fit(path)
    k = int(attrs["nit"])
    assert k in allowed and np.all(x == k) and attrs["message"] == f"write {k}"
    with h5py.File(path, "r") as f:
        assert "/DataCube" in f and "/LOSVD" in f
    return k


def test_killed_writer_leaves_the_old_or_the_new_result(h5):
    n = 500_000            # a 4 MB vector: writes take long enough to be hit mid-way
    write_fit(h5, np.zeros(n), _fit_attrs(0), {})
    script = textwrap.dedent(f"""
        import numpy as np
        from cubefit.runner import write_fit
        k = 1
        while True:
            write_fit({str(h5)!r}, np.full({n}, float(k)), {{"nit": k, "solver": "test",
                      "message": f"write {{k}}"}}, {{}})
            print(k, flush=True)
            k += 1
    """)
    for delay in (0.0, 0.017, 0.043, 0.071):   # spread over one write (~50-100 ms)
        proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
        line = proc.stdout.readline()           # in the write loop: one write is done
        assert line, f"the writer subprocess exited with {proc.wait()} before its first write"
        first = int(line)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        out, _ = proc.communicate()
        last = ([first] + [int(v) for v in out.split()])[-1]
        # the last write reported done, or the next one (killed between replace and print)
        _check_consistent(h5, allowed={last, last + 1})


def test_interrupted_in_place_commit(h5, monkeypatch):
    """A failure inside the edit leaves the file byte for byte as it was (the journal rolls
    it back, whatever the file's size); a staging group left without /X_global by the
    in-place commits of earlier versions is still read by read_fit."""
    write_fit(h5, np.zeros(5), _fit_attrs(0), {})
    before = file_digest(h5)

    def crash(f):
        raise RuntimeError("killed before the commit")

    monkeypatch.setattr(runner_mod, "_commit", crash)
    with pytest.raises(RuntimeError):
        write_fit(h5, np.ones(5), _fit_attrs(1), {})
    assert file_digest(h5) == before and _check_consistent(h5, {0}) == 0
    monkeypatch.undo()
    # An earlier version killed inside its in-place commit: old result unlinked, new one staged.
    with h5py.File(h5, "r+") as f:
        f.copy("/X_global", f"{STAGING}/X_global")
        f.copy("/Fit", f"{STAGING}/Fit")
        f[f"{STAGING}/X_global"][...] = 1.0
        f[f"{STAGING}/Fit"].attrs.update(_fit_attrs(1))
        f[STAGING].attrs["complete"] = True
        del f["/X_global"], f["/Fit"]
    assert _check_consistent(h5, {1}) == 1
    write_fit(h5, np.full(5, 2.0), _fit_attrs(2), {})
    assert _check_consistent(h5, {2}) == 2
    with h5py.File(h5, "r") as f:
        assert STAGING not in f


def test_write_fit_refuses_undescribed_attributes_and_datasets(h5):
    before = open(h5, "rb").read()
    with pytest.raises(ValueError, match="attrs: .'mystery'. have no units and meaning"):
        write_fit(h5, np.zeros(3), {"mystery": 1}, {})
    with pytest.raises(ValueError, match="datasets: .'/Fit/mystery'. have no units"):
        write_fit(h5, np.zeros(3), {}, {"mystery": np.zeros(2)})
    assert open(h5, "rb").read() == before


def test_seed_module_names():
    import CubeFit.kaczmarz_solver_cchunk_mp as kz
    from CubeFit.pipeline_runner import PipelineRunner as PR
    from cubefit.solvers import solve
    assert PR is PipelineRunner and kz.solve is solve
    with pytest.raises(FileNotFoundError, match="no such HDF5 file"):
        PipelineRunner("/nonexistent/galaxy.h5")


KILL_MID_SOLVE = textwrap.dedent("""
    import os, signal, sys, time
    import cubefit.runner as r
    real = r._stream_to
    def killing(tracker):
        cb = real(tracker)
        def progress(step, x, cost):
            cb(step, x, cost)
            if step["it"] == 40:          # let the queue reach the writer, then die
                time.sleep(1.0)
                os.kill(os.getpid(), signal.SIGKILL)
        return progress
    r._stream_to = killing
    if __name__ == "__main__":
        r.PipelineRunner(sys.argv[1]).solve_all_mp_batched(method="fista", tol=1e-9,
                                                           max_passes=100000)
""")


def test_solve_killed_midway_resumes_from_its_live_snapshot(h5, tmp_path):
    script = tmp_path / "kill_solve.py"
    script.write_text(KILL_MID_SOLVE)
    out = subprocess.run([sys.executable, str(script), str(h5)], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == -signal.SIGKILL, out.stderr[-2000:]
    with h5py.File(h5, "r") as f:
        assert "/X_global" not in f                      # the killed run committed nothing
    sidecar = find_sidecars(h5)[0]
    from cubefit.tracking import latest_snapshot, read_history
    assert read_history(sidecar)["iteration"].size >= 40      # streamed live, before the kill
    x_snap, meta = latest_snapshot(h5, "last")
    assert x_snap.shape == (12,) and np.all(x_snap >= 0) and meta["iteration"] >= 30
    fresh = tmp_path / "fresh.h5"
    shutil.copy(h5, fresh)
    cold = PipelineRunner(fresh).solve_all_mp_batched(track=False)[1]
    warm = PipelineRunner(h5).solve_all_mp_batched(track=False, resume=True)[1]
    assert warm["x0_source"].startswith("snapshot"), warm["x0_source"]
    assert warm["success"], (warm["method"], warm["status"], warm["message"], warm["optimality"])
    assert warm["cost"] == pytest.approx(cold["cost"], rel=1e-9)


@pytest.mark.parametrize("nx, ny, n_comp, pop", [
    (1, 1, 1, (1, 1)),          # one spaxel, one component, one template
    (2, 1, 1, (2, 1)),          # a strip of spaxels
    (1, 3, 3, (2, 2)),          # more components than spaxels along an axis
    (2, 2, 2, (1, 3)),          # two free weights on a collinear face (Newton-CG used to stall)
])
def test_runner_matches_scipy_nnls_on_edge_shapes(tmp_path, nx, ny, n_comp, pop):
    """Degenerate but legal shapes (S=1, C=1, P=1, ...) through the manual's workflow."""
    from cubefit.mock import Component, make_mock_galaxy, synthetic_templates
    flux, ln_lam, axes = synthetic_templates(n_age=pop[0], n_metal=pop[1], lam=(4700.0, 5700.0),
                                             velscale=40.0)
    comps = tuple(Component(f"c{i}", vmax=60.0 * i, sigma=80.0 + 40 * i, r_eff=1.0 + i,
                            flux=1.0 / (i + 1), pop_centre=(0.5, 0.5)) for i in range(n_comp))
    m = make_mock_galaxy(flux, ln_lam, pop_shape=pop, pop_axes=axes, nx=nx, ny=ny,
                         components=comps, obs_lam=(4900.0, 5500.0), vel_max=500.0, snr=40.0,
                         seed=1)
    path = tmp_path / "edge.h5"
    mgr = H5Manager(path, tem_pix=m.tem_pix, obs_pix=m.obs_pix)
    mgr.init_base(m.dims)
    mgr.populate_from_arrays(losvd=m.losvd, datacube=m.datacube, templates=m.templates,
                             mask=m.mask, vel_pix=m.vel_pix, noise=m.noise, pop_axes=m.pop_axes)
    mgr.ensure_rebin_and_resample()
    ensure_lambda_weights(path)
    x, stats = PipelineRunner(path).solve_all_mp_batched(project_nonneg=True, track=False)
    inp = read_inputs(path)
    Aw, yw = weighted(reference(inp, "data"), inp, read_lambda_weights(path))
    _, rnorm = nnls(Aw, yw, maxiter=50 * Aw.shape[1])
    assert x.shape == (n_comp * pop[0] * pop[1],) and np.all(x >= 0)
    assert stats["success"] and stats["cost"] == pytest.approx(0.5 * rnorm**2, rel=1e-8)
    _, stats = PipelineRunner(path).solve_all_mp_batched(method="newton_cg", track=False)
    assert stats["success"] and stats["cost"] == pytest.approx(0.5 * rnorm**2, rel=1e-8)
