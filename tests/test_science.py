"""cubefit.science (light, mass, log-age means, maps, analysis), cubefit.report and the science
figures of cubefit.plots."""
import json

import h5py
import numpy as np
import pytest

from cubefit.mock import forward_model
from cubefit.operator import LOSVDOperator
from cubefit.plots import plot_chi2_map, plot_light_maps, spaxel_chi2
from cubefit.report import write_report
from cubefit.runner import PipelineRunner
from cubefit.science import (analyse, light_maps, light_per_weight, populations, write_layout,
                             write_template_masses, write_truth)
from cubefit.store import read_inputs
from cubefit.templates import TemplateLibrary
from reference import direct_hypercube
from test_store import _populated

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def fitted(tmp_path_factory, small_mock):
    """The small mock as a fitted file with truth, spaxel positions and names."""
    m = small_mock
    path, _ = _populated(tmp_path_factory.mktemp("science"), m, name="galaxy.h5")
    write_truth(path, m.x_true, model=m.model, meta={"note": "small mock"})
    write_layout(path, xy=m.xy, names=[c.name for c in m.components])
    PipelineRunner(path).solve_all_mp_batched(processes=1, track=False)
    return path


@pytest.mark.parametrize("norm", ["model", "data"])
def test_light_per_weight_is_model_flux_over_good_pixels(fitted, norm):
    """ℓ[c,p] = Σ_s Σ_{l good} A[s,c,p,l] against the brute-force hypercube; λ-weights and
    inverse variance do not change it."""
    inp = read_inputs(fitted)
    A = direct_hypercube(inp.templates, inp.tem_pix, inp.obs_pix, inp.vel_pix, inp.losvd,
                         norm_mode=norm, data_flux=inp.data_flux)
    ref = A[:, :, :, inp.mask].sum(axis=(0, 3))
    plain = LOSVDOperator.from_h5(fitted, norm_mode=norm, lambda_weights=None, use_ivar=False)
    weighted = LOSVDOperator.from_h5(fitted, norm_mode=norm, use_ivar=True,
                                     lambda_weights=np.linspace(0.1, 1, inp.dims.L))
    np.testing.assert_allclose(light_per_weight(plain), ref, rtol=1e-9)
    np.testing.assert_allclose(light_per_weight(weighted), ref, rtol=1e-9)


def test_truth_and_fit_use_one_light_definition(fitted, small_mock):
    """Component light of x_true through ℓ equals each component's own forward model summed
    over good pixels (an independent construction), and the maps add up to it."""
    m = small_mock
    inp = read_inputs(fitted)
    op = LOSVDOperator.from_h5(fitted, norm_mode="model")
    pops = populations(m.x_true, light_per_weight(op), inp.pop_axes)
    C = m.x_true.shape[0]
    direct = [forward_model(inp.templates, inp.tem_pix, inp.obs_pix, inp.vel_pix, inp.losvd,
                            np.where(np.arange(C)[:, None] == c, m.x_true, 0.0))[:, inp.mask].sum()
              for c in range(C)]
    np.testing.assert_allclose(pops.totals("light"), direct, rtol=1e-9)
    maps, model = light_maps(op, m.x_true)
    np.testing.assert_allclose(maps.sum(axis=0), direct, rtol=1e-9)
    np.testing.assert_allclose(model, op.model(m.x_true.ravel()), rtol=1e-12, atol=0)
    np.testing.assert_allclose(model, m.model, rtol=1e-9, atol=1e-12 * np.abs(m.model).max())
    assert pops.fractions("light").sum() == pytest.approx(1.0)


def test_log_age_means_mass_weights_and_grids():
    """Two ages (1 and 10 Gyr) × two metallicities, hand-made light and masses."""
    axes = {"age": np.array([1.0, 10.0]), "metal": np.array([-0.5, 0.0])}
    ell = np.ones((2, 4))
    x = np.array([[1.0, 0.0, 0.0, 1.0],       # half 1 Gyr/-0.5, half 10 Gyr/0.0
                  [0.0, 0.0, 1.5, 0.5]])      # all 10 Gyr, 3:1 in [M/H] -0.5 : 0.0
    mu = np.array([1.0, 1.0, 4.0, 4.0])       # old populations carry 4× the mass per light
    p = populations(x, ell, axes, {"age": "Gyr", "metal": "dex"}, mass_per_weight=mu,
                    names=["a", "b"])
    np.testing.assert_allclose(p.mean_log_age("light"), [9.5, 10.0])
    np.testing.assert_allclose(p.mean_metal("light"), [-0.25, -0.375])
    np.testing.assert_allclose(p.fractions("light"), [0.5, 0.5])
    np.testing.assert_allclose(p.mean_log_age("mass"), [(9 + 4 * 10) / 5, 10.0])
    np.testing.assert_allclose(p.fractions("mass"), [5 / 13, 8 / 13])
    assert p.mean_log_age("light", total=True) == pytest.approx((9 + 10 + 2 * 10) / 4)
    g = p.grid("light")
    assert g.shape == (2, 2, 2) and np.allclose(g.sum(axis=(1, 2)), 1)
    assert g[1, 1, 0] == pytest.approx(0.75)                  # 10 Gyr, [M/H] = -0.5

    # Ages in Myr, axes stored metal-first: same answers.
    q = populations(x.reshape(2, 2, 2).transpose(0, 2, 1).reshape(2, 4), ell,
                    {"metal": axes["metal"], "age": 1e3 * axes["age"]}, {"age": "Myr"})
    np.testing.assert_allclose(q.mean_log_age("light"), [9.5, 10.0])
    np.testing.assert_allclose(q.mean_metal("light"), [-0.25, -0.375])
    assert q.mass is None and q.mean_log_age("mass") is None and q.fractions("mass") is None

    with pytest.raises(ValueError, match="age unit"):
        populations(x, ell, axes, {"age": "weeks"}).mean_log_age()
    with pytest.raises(ValueError, match="C·P"):
        populations(np.ones(5), ell)
    with pytest.raises(ValueError, match="mass_per_weight"):
        populations(x, ell, axes, mass_per_weight=[1.0, -1.0, 1.0, 1.0])


def test_template_masses_are_masses_over_norm(fitted, tmp_path):
    import shutil
    path = tmp_path / "g.h5"
    shutil.copy(fitted, path)
    with h5py.File(path, "r") as f:
        tem, lnl = f["/Templates"][...], f["/TemPix"][...]
    P = tem.shape[0]
    lib = TemplateLibrary(flux=tem, ln_lam=lnl, velscale=299792.458 * np.diff(lnl).mean(),
                          pop_axes={"p": np.arange(P)}, grid_shape=(P,), axis_units={"p": ""},
                          fwhm=None, flux_unit="L_sun/Angstrom/M_sun", masses=np.linspace(0.5, 0.9, P))
    lib = lib.normalise(per_template=True)
    mu = write_template_masses(path, lib)
    with h5py.File(path, "r") as f:
        np.testing.assert_allclose(f["/TemplateMass"][...], lib.masses / lib.norm)
        assert f["/TemplateMass"].attrs["units"].startswith("M_sun")
    np.testing.assert_allclose(mu, lib.masses / lib.norm)
    import dataclasses
    assert write_template_masses(path, dataclasses.replace(lib, masses=None)) is None


def test_analyse_and_report(fitted, tmp_path, small_mock):
    a = analyse(fitted)
    S, L = small_mock.datacube.shape
    C = small_mock.x_true.shape[0]
    assert a.fit.names == [c.name for c in small_mock.components]
    assert a.maps.shape == a.truth_maps.shape == (S, C) and a.xy.shape == (S, 2)
    assert a.norm_mode == "data"                            # the runner's default without a cube
    np.testing.assert_allclose(a.chi2, spaxel_chi2(a.data, a.model, a.mask, 1 / a.noise**2))
    assert set(a.history) == {"time", "passes", "cost", "optimality"}
    rows = a.comparison()
    assert {r["quantity"] for r in rows} == {"light fraction", "<log age>_L [dex]", "<[M/H]>_L [dex]"}
    assert all(r["diff"] == pytest.approx(r["fit"] - r["true"]) for r in rows)

    rep = write_report(fitted, tmp_path / "report", title="test report", run_info={"what": "a test"})
    names = sorted(p.name for p in rep.figures)
    assert {"recovery.png", "populations_light.png", "light_maps.png", "chi2_map.png",
            "fit_history.png"} <= set(names)
    assert "populations_mass.png" not in names               # synthetic templates: no masses
    assert sum(n.startswith("spectrum_") for n in names) == 2
    for p in rep.figures:
        assert p.read_bytes()[:8] == PNG and p.stat().st_size > 10_000
    text = rep.markdown.read_text()
    assert text.startswith("# test report") and "**what**: a test" in text
    assert "| component | fraction true | fit | fit − true |" in text
    for p in rep.figures:
        assert f"]({p.name})" in text
    summary = json.loads(rep.summary.read_text())
    assert summary["fit"]["light_fraction"] == pytest.approx(a.fit.fractions().tolist())
    assert summary["truth"]["names"] == a.fit.names and len(summary["comparison"]) == len(rows)


def test_write_layout_checks_shapes(fitted, tmp_path):
    import shutil
    path = tmp_path / "g.h5"
    shutil.copy(fitted, path)
    with pytest.raises(ValueError, match=r"\(S, 2\)"):
        write_layout(path, xy=np.zeros((2, 2)))
    with pytest.raises(ValueError, match="one name per component"):
        write_layout(path, names=["only one"])
    write_layout(path, xy=np.ones((9, 2)), xy_units="arcsec")
    with h5py.File(path, "r") as f:
        assert f["/SpaxelXY"].attrs["units"] == "arcsec" and "/CompNames" in f


def test_maps_on_irregular_apertures(tmp_path, rng):
    """Voronoi-like apertures (not a grid) are drawn as markers; zero light is left blank."""
    xy = rng.uniform(-5, 5, (30, 2))
    maps = np.exp(-np.hypot(*xy.T))[:, None] * np.array([1.0, 0.5])
    maps[3, 1] = 0.0
    p1 = plot_light_maps(xy, maps, ["a", "b"], tmp_path / "maps.png", xy_units="arcsec")
    p2 = plot_chi2_map(xy, rng.uniform(0.8, 1.2, 30), tmp_path / "chi2.png", xy_units="arcsec")
    for p in (p1, p2):
        assert p.read_bytes()[:8] == PNG
