"""Products made from other inputs are removed on re-populate and never reused by readers."""
import logging

import h5py
import numpy as np
import pytest

from cubefit.cli import main
from cubefit.provenance import stale_products
from cubefit.runner import PipelineRunner
from cubefit.science import analyse, write_layout, write_truth
from cubefit.store import H5Manager, describe_file
from cubefit.weights import ensure_lambda_weights

PRODUCTS = ("/HyperCube/lambda_weights", "/HyperCube/models", "/HyperCube/col_energy", "/X_global",
            "/Fit", "/ModelCube", "/Truth/x_true")


def _npz(path, m, datacube=None):
    np.savez(path, TemPix=m.tem_pix, ObsPix=m.obs_pix, VelPix=m.vel_pix, Templates=m.templates,
             LOSVD=m.losvd, DataCube=m.datacube if datacube is None else datacube, Mask=m.mask,
             Noise=m.noise, ages=m.pop_axes["age"], metals=m.pop_axes["metal"])
    return path


def _other_data(m):
    """Another cube on the same grids: a spectral ripple changes its features (and so the
    λ-weights made from it), not just its scale."""
    ripple = 1.0 + 0.3 * np.sin(np.arange(m.obs_pix.size) / 3.0)
    return m.datacube * ripple


def _fit_attrs(path):
    with h5py.File(path, "r") as f:
        return dict(f["/Fit"].attrs), f["/X_global"][...]


def test_reinit_with_other_inputs_keeps_nothing_made_from_the_old_ones(tmp_path, small_mock, capsys,
                                                                       caplog):
    """`cubefit init other.npz k.h5` on a fitted file (was: old λ-weights, fit, model cube,
    hypercube and truth kept; the next solve used the old weights; info said fit=yes)."""
    m = small_mock
    a, b = _npz(tmp_path / "a.npz", m), _npz(tmp_path / "b.npz", m, _other_data(m))
    k, fresh = tmp_path / "k.h5", tmp_path / "fresh.h5"
    for argv in (["init", a, k], ["weights", k], ["build", k, "--quiet"], ["solve", k, "--no-track"],
                 ["recon", k]):
        assert main([str(v) for v in argv]) == 0, argv
    write_truth(k, m.x_true)
    write_layout(k, xy=m.xy)
    with h5py.File(k, "r") as f:
        assert all(name in f for name in PRODUCTS)
    with caplog.at_level(logging.WARNING, logger="cubefit"):
        assert main(["init", str(b), str(k)]) == 0
    assert "inputs changed (/DataCube)" in caplog.text and "removed" in caplog.text
    with h5py.File(k, "r") as f:
        assert [name for name in PRODUCTS if name in f] == []
        assert "/SpaxelXY" in f                         # the layout does not depend on the data
    capsys.readouterr()
    assert main(["info", str(k)]) == 0
    out = capsys.readouterr().out
    assert "fit=no" in out and "hypercube=no" in out and "lambda_weights=no" in out
    # The next solve is the solve of a fresh file made from b.npz, bit for bit.
    assert main(["init", str(b), str(fresh)]) == 0
    for path in (k, fresh):
        assert main(["solve", str(path), "--no-track"]) == 0
    (ka, kx), (fa, fx) = _fit_attrs(k), _fit_attrs(fresh)
    assert ka["cost"] == fa["cost"] and np.array_equal(kx, fx)
    assert ka["lambda_weights_sha256"] == fa["lambda_weights_sha256"] != "none"


def test_repopulating_identical_inputs_keeps_every_product(tmp_path, small_mock, caplog):
    """Re-running the manual's script on a fitted file changes nothing."""
    m = small_mock
    path = tmp_path / "g.h5"
    kw = dict(losvd=m.losvd, datacube=m.datacube, templates=m.templates, mask=m.mask,
              vel_pix=m.vel_pix, noise=m.noise, pop_axes=m.pop_axes)
    mgr = H5Manager(path, tem_pix=m.tem_pix, obs_pix=m.obs_pix)
    mgr.init_base(m.dims)
    mgr.populate_from_arrays(**kw)
    mgr.ensure_rebin_and_resample()
    x, _ = PipelineRunner(path).solve_all_mp_batched(track=False)
    with caplog.at_level(logging.WARNING, logger="cubefit"):
        mgr.init_base(m.dims)
        mgr.populate_from_arrays(**kw)
    assert "removed" not in caplog.text
    d = describe_file(path)
    assert d["stages"]["fit"] and d["stages"]["lambda_weights"] and d["stale"] == {}
    with h5py.File(path, "r") as f:
        np.testing.assert_array_equal(f["/X_global"][...], x)


def _change(m, name):
    """(constructor kwargs, populate overrides) that change exactly the input ``name``."""
    step = np.diff(m.obs_pix).mean()
    H = m.losvd.copy()
    H[0, :, 0] *= 1.1
    T = m.templates.copy()
    T[0] *= 1.01
    Y = m.datacube.copy()
    Y[0, 0] += 1e-6 * abs(Y[0, 0])
    mask = m.mask.copy()
    mask[np.flatnonzero(mask)[0]] = False
    return {"/Templates": ({}, dict(templates=T)),
            "/TemPix": (dict(tem_pix=m.tem_pix + 1e-3 * np.diff(m.tem_pix).mean()), {}),
            "/ObsPix": (dict(obs_pix=m.obs_pix + 0.25 * step), {}),
            "/VelPix": ({}, dict(vel_pix=m.vel_pix * 1.01)),
            "/LOSVD": ({}, dict(losvd=H)),
            "/DataCube": ({}, dict(datacube=Y)),
            "/Mask": ({}, dict(mask=mask)),
            "/Noise": ({}, dict(noise=m.noise * 1.01)),
            "/PopAxes": ({}, dict(pop_axes={"age": m.pop_axes["age"] + 0.1,
                                            "metal": m.pop_axes["metal"]}))}[name]


@pytest.mark.parametrize("name", ["/Templates", "/TemPix", "/ObsPix", "/VelPix", "/LOSVD", "/DataCube",
                                  "/Mask", "/Noise", "/PopAxes"])
def test_fingerprint_covers_every_input(tmp_path, small_mock, caplog, name):
    m = small_mock
    path = tmp_path / "g.h5"
    kw = dict(losvd=m.losvd, datacube=m.datacube, templates=m.templates, mask=m.mask,
              vel_pix=m.vel_pix, noise=m.noise, pop_axes=m.pop_axes)
    H5Manager(path, tem_pix=m.tem_pix, obs_pix=m.obs_pix).populate_from_arrays(**kw)
    ensure_lambda_weights(path)
    with h5py.File(path, "r") as f:
        fp = f.attrs["inputs_fingerprint"]
    ctor, over = _change(m, name)
    grids = dict(tem_pix=m.tem_pix, obs_pix=m.obs_pix)
    grids.update(ctor)
    with caplog.at_level(logging.WARNING, logger="cubefit.provenance"):
        H5Manager(path, **grids).populate_from_arrays(**dict(kw, **over))
    changed = caplog.text.split("inputs changed (")[1].split(")")[0].split(", ")
    assert name in changed
    with h5py.File(path, "r") as f:
        assert f.attrs["inputs_fingerprint"] != fp and "/HyperCube/lambda_weights" not in f


@pytest.fixture
def fitted(tmp_path, small_mock):
    m = small_mock
    path = tmp_path / "g.h5"
    mgr = H5Manager(path, tem_pix=m.tem_pix, obs_pix=m.obs_pix)
    mgr.populate_from_arrays(losvd=m.losvd, datacube=m.datacube, templates=m.templates, mask=m.mask,
                             vel_pix=m.vel_pix, noise=m.noise, pop_axes=m.pop_axes)
    mgr.ensure_rebin_and_resample()
    write_truth(path, m.x_true)
    PipelineRunner(path).solve_all_mp_batched(track=True)
    assert main(["recon", str(path)]) == 0
    return path


def test_a_fit_made_from_other_inputs_is_never_reused(fitted, capsys):
    """A file whose products record other inputs (an older version, a hand edit)."""
    _, stats = PipelineRunner(fitted).solve_all_mp_batched(track=False, resume=True)
    assert stats["x0_source"].startswith("snapshot")              # fresh: resumed
    with h5py.File(fitted, "r+") as f:
        f.attrs["inputs_fingerprint"] = "inputs of another galaxy"
    d = describe_file(fitted)
    assert not d["stages"]["fit"]
    assert {"/X_global", "/ModelCube", "/Truth"} <= set(d["stale"])
    capsys.readouterr()
    assert main(["info", str(fitted)]) == 0
    out = capsys.readouterr().out
    assert "fit=no" in out and "fit=yes" not in out and "stale:      /X_global" in out
    assert main(["recon", str(fitted)]) == 1
    assert "cubefit solve" in capsys.readouterr().err
    assert main(["plot", str(fitted), "--out", str(fitted.parent / "figs")]) == 1
    assert "does not belong to the file's data" in capsys.readouterr().err
    with pytest.raises(ValueError, match="does not belong to the file's data"):
        analyse(fitted)
    _, stats = PipelineRunner(fitted).solve_all_mp_batched(track=False, resume=True)
    assert stats["x0_source"] == "none"                           # neither snapshot nor /X_global
    with h5py.File(fitted, "r") as f:
        assert stale_products(f) == {"/ModelCube": "made from other inputs",
                                     "/Truth": "made from other inputs"}


def test_new_lambda_weights_make_the_fit_stale_and_stale_truth_is_left_out(fitted, caplog):
    ensure_lambda_weights(fitted, small_px=5, large_px=21, overwrite=True)
    with h5py.File(fitted, "r") as f:
        assert "other λ-weights" in stale_products(f)["/X_global"]
    assert not describe_file(fitted)["stages"]["fit"]
    PipelineRunner(fitted).solve_all_mp_batched(track=False)
    assert describe_file(fitted)["stages"]["fit"]
    assert analyse(fitted).truth is not None
    with h5py.File(fitted, "r+") as f:
        f["/Truth"].attrs["inputs_fingerprint"] = "another mock"
    with caplog.at_level(logging.WARNING, logger="cubefit.science"):
        assert analyse(fitted).truth is None
    assert "/Truth was made from other inputs" in caplog.text
