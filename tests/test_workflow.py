"""The CubeFit manual's "Typical end-to-end workflow", run verbatim on a small mock.

The block below is the manual's text, character for character (its comments and the
λ in them included), preceded by the import line of the manual's "Typical setup"
block, which the workflow block relies on.  Its free variables are bound to a small
synthetic mock with the manual's names; then the test checks that every step did what
the manual says it does.
"""
import h5py
import numpy as np
import pytest

from cubefit.mock import Component, forward_model, make_mock_galaxy, synthetic_templates
from cubefit.science import analyse

MANUAL_SETUP_IMPORT = "from CubeFit.hdf5_manager import H5Manager, H5Dims\n"

MANUAL_WORKFLOW = '''
# 1) Build HDF5 backbone & rebin operator
mgr = H5Manager("galaxy.h5", tem_pix=tem_loglam, obs_pix=obs_loglam)
mgr.init_base(H5Dims(nSpat=S, nLSpec=L, nTSpec=T, nVel=V, nComp=C, nPop=P))
mgr.populate_from_arrays(losvd=H_SVC, datacube=Y_SL, templates=T_PT)
mgr.ensure_rebin_and_resample()

# 2) Build hypercube
from CubeFit.hypercube_builder import build_hypercube
build_hypercube("galaxy.h5", norm_mode="data") # or "model"

# (Optional) Flip normalization later without rebuild
from CubeFit.hypercube_builder import convert_hypercube_norm
convert_hypercube_norm("galaxy.h5", to_mode="model", recompute_energy=True)

# 3) Create λ-weights
from CubeFit.cube_utils import ensure_lambda_weights
ensure_lambda_weights("galaxy.h5")

# 4) Solve
from CubeFit.pipeline_runner import PipelineRunner
runner = PipelineRunner("galaxy.h5")
x, stats = runner.solve_all_mp_batched(
    epochs=6, lr=0.6, project_nonneg=True, processes=8, blas_threads=2,
    orbit_weights=orbit_w # optional (C, )
)
'''

COMPONENTS = (
    Component("bulge", vmax=0.0, sigma=220.0, r_eff=1.5, flux=1.0, pop_centre=(0.9, 0.8)),
    Component("disk", vmax=200.0, sigma=50.0, r_eff=3.0, flux=0.6, pop_centre=(0.3, 0.4), q=0.4),
    Component("counter-disk", vmax=-200.0, sigma=40.0, r_eff=2.0, flux=0.5, pop_centre=(0.1, 0.1),
              q=0.4),
)


@pytest.fixture(scope="module")
def manual_arrays():
    """The manual's free variables from a 4×4-spaxel, 3-component, 4×3-population mock.

    ``orbit_w`` are the true light fractions: each component's noise-free model flux
    summed over all pixels and spaxels (no mask: the manual's call stores none),
    computed with the mock's own forward model, independently of the fitting code.
    """
    flux, ln_lam, axes = synthetic_templates(n_age=4, n_metal=3, lam=(4700.0, 5700.0),
                                             velscale=40.0)
    m = make_mock_galaxy(flux, ln_lam, pop_shape=(4, 3), pop_axes=axes, nx=4, ny=4,
                         components=COMPONENTS, obs_lam=(4900.0, 5500.0), vel_max=600.0,
                         snr=100.0, noise_model="binned", mask_windows=(), seed=7)
    light = np.array([forward_model(m.templates, m.tem_pix, m.obs_pix, m.vel_pix, m.losvd,
                                    np.where(np.arange(len(COMPONENTS))[:, None] == c, m.x_true, 0.0)
                                    ).sum() for c in range(len(COMPONENTS))])
    S, V, C = m.losvd.shape
    return {"H_SVC": m.losvd, "Y_SL": m.datacube, "T_PT": m.templates, "tem_loglam": m.tem_pix,
            "obs_loglam": m.obs_pix, "S": S, "L": m.obs_pix.size, "T": m.tem_pix.size, "V": V,
            "C": C, "P": m.templates.shape[0], "orbit_w": light / light.sum()}


def test_manual_workflow_runs_verbatim(manual_arrays, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    ns = dict(manual_arrays)
    exec(compile(MANUAL_SETUP_IMPORT + MANUAL_WORKFLOW, "CubeFit manual: Typical end-to-end workflow",
                 "exec"), ns)
    a = manual_arrays
    S, L, C, P = a["S"], a["L"], a["C"], a["P"]
    path = tmp_path / "galaxy.h5"
    assert path.exists()

    # 1) backbone and the flux-conserving rebin operator
    with h5py.File(path, "r") as f:
        for name in ("/Templates", "/TemPix", "/ObsPix", "/DataCube", "/LOSVD", "/VelPix", "/R_T"):
            assert name in f, name
        assert f["/DataCube"].shape == (S, L) and f["/LOSVD"].shape == (S, a["V"], C)
        assert f["/Templates"].shape[0] == P
        # 2) hypercube built in "data" norm, then flipped to "model" with its energy
        hc = f["/HyperCube"]
        assert hc["models"].shape == (S, C, P, L) and hc["models"].dtype == np.float32
        assert bool(hc.attrs["complete"]) and hc.attrs["norm.mode"] == "model"
        assert hc["_done"][...].all()
        assert hc["col_energy"].shape == (C, P) and np.all(hc["col_energy"][...] >= 0)
        # 3) λ-weights in [floor, 1], not all ones
        w = hc["lambda_weights"][...]
        assert w.shape == (L,) and w.max() == pytest.approx(1.0) and w.min() < 0.5
        # 4) /X_global (C·P,) non-negative, certified, settings recorded
        x_file = f["/X_global"][...]
        fit = f["/Fit"].attrs
        assert bool(fit["success"]) and fit["optimality"] <= 1e-6
        assert fit["setting.norm_mode"] == "model"
        assert fit["setting.epochs"] == 6 and fit["setting.processes"] == 8
    assert "λ-weights: min=" in capsys.readouterr().out          # the manual's start-up banner

    x, stats = ns["x"], ns["stats"]
    assert x.shape == (C * P,) and np.all(x >= 0) and np.array_equal(x, x_file)
    assert stats["success"] and stats["optimality"] <= 1e-6

    # The orbit-weight prior holds the component light fractions near orbit_w (the truth,
    # so data and prior agree), and cubefit.science measures light as the runner does.
    np.testing.assert_allclose(stats["light_fractions"], a["orbit_w"], atol=1e-3)
    np.testing.assert_allclose(analyse(path).fit.fractions("light"), stats["light_fractions"],
                               rtol=1e-9)


PLAIN_SCRIPT_HEADER = '''
import numpy as np
from cubefit.mock import make_mock_galaxy, synthetic_templates
print("STEP: mock", flush=True)
flux, ln_lam, axes = synthetic_templates(n_age=3, n_metal=2, lam=(4700.0, 5700.0), velscale=40.0)
m = make_mock_galaxy(flux, ln_lam, pop_shape=(3, 2), pop_axes=axes, nx=3, ny=3,
                     obs_lam=(4900.0, 5500.0), vel_max=600.0, snr=100.0, seed=3)
H_SVC, Y_SL, T_PT = m.losvd, m.datacube, m.templates
tem_loglam, obs_loglam = m.tem_pix, m.obs_pix
S, V, C = H_SVC.shape
L, T, P = obs_loglam.size, tem_loglam.size, T_PT.shape[0]
orbit_w = np.full(C, 1.0 / C)
'''


def test_manual_workflow_as_a_plain_script_runs_once(tmp_path):
    """The manual's block pasted into a script with no ``__main__`` guard: the solve's
    helper processes (the fit tracker's writer) must not run the script again, so every
    step's output appears exactly once and nothing warns about a "bootstrapping phase"."""
    import subprocess
    import sys

    script = tmp_path / "fit_galaxy.py"
    script.write_text(PLAIN_SCRIPT_HEADER + MANUAL_SETUP_IMPORT + MANUAL_WORKFLOW
                      + 'print("STEP: solved", stats["success"], flush=True)\n', encoding="utf-8")
    run = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True,
                         text=True, timeout=600)
    out = run.stdout + run.stderr
    assert run.returncode == 0, out
    assert out.count("STEP: mock") == 1, out
    assert out.count("STEP: solved True") == 1, out
    assert out.count("λ-weights: min=") == 1, out
    assert "bootstrapping" not in out and "cannot start the writer" not in out, out
    assert len(list(tmp_path.glob("galaxy.h5.fit.*.h5"))) == 1   # the tracker did write
