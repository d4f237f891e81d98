"""cubefit.store: the HDF5 backbone, its validation and crash safety."""
import logging
import os
import subprocess
import sys
import textwrap

import h5py
import numpy as np
import pytest
import scipy.sparse as sp

from cubefit import C_KMS, __version__
from cubefit.config import Config
from cubefit.grids import edges_from_centres, rebin_matrix
from cubefit.losvd import kernel_half_width
from cubefit.store import (SCHEMA, TEMPLATE_PAD_PX, H5Dims, H5Manager, describe_file, open_h5,
                           read_rebin, write_dataset)

from conftest import file_digest


def _populated(tmp_path, mock, name="g.h5", **extra):
    path = tmp_path / name
    mgr = H5Manager(path, tem_pix=mock.tem_pix, obs_pix=mock.obs_pix)
    mgr.init_base(mock.dims)
    kw = dict(losvd=mock.losvd, datacube=mock.datacube, templates=mock.templates, mask=mock.mask,
              vel_pix=mock.vel_pix, noise=mock.noise, pop_axes=mock.pop_axes)
    kw.update(extra)
    mgr.populate_from_arrays(**kw)
    mgr.ensure_rebin_and_resample()
    return path, mgr


def test_roundtrip_shapes_units_and_crop(tmp_path, small_mock):
    m = small_mock
    path, mgr = _populated(tmp_path, m, orbit_weights=[3.0, 1.0])
    S, V, C = m.losvd.shape
    dlog_t = np.diff(m.tem_pix).mean()
    K = kernel_half_width(m.vel_pix, dlog_t)
    with h5py.File(path, "r") as f:
        assert f.attrs["cubefit_version"] == __version__
        np.testing.assert_array_equal(f["/DataCube"][...], m.datacube)
        np.testing.assert_array_equal(f["/LOSVD"][...], m.losvd)
        np.testing.assert_array_equal(f["/VelPix"][...], m.vel_pix)
        np.testing.assert_array_equal(f["/Mask"][...], m.mask)
        np.testing.assert_array_equal(f["/Noise"][...], m.noise)
        np.testing.assert_allclose(f["/CompWeights"][...], [0.75, 0.25], rtol=1e-15)
        np.testing.assert_array_equal(f["/PopAxes/age"][...], m.pop_axes["age"])
        assert f["/PopAxes/age"].attrs["units"] == "Gyr"
        # Templates are cropped to the observed range plus K + pad pixels on each side.
        tem = f["/TemPix"][...]
        i0 = f["/Templates"].attrs["crop_i_lo"]
        np.testing.assert_array_equal(f["/Templates"][...], m.templates[:, i0:i0 + tem.size])
        np.testing.assert_array_equal(tem, m.tem_pix[i0:i0 + tem.size])
        te, oe = edges_from_centres(tem), edges_from_centres(m.obs_pix)
        assert oe[0] - te[0] >= (K + TEMPLATE_PAD_PX - 1e-6) * dlog_t
        assert te[-1] - oe[-1] >= (K + TEMPLATE_PAD_PX - 1e-6) * dlog_t
        assert oe[0] - te[0] < (K + TEMPLATE_PAD_PX + 1) * dlog_t  # and not much more
        assert tem.size < m.tem_pix.size
        dims = dict(zip(f.attrs["dims_names"], f.attrs["dims"]))
        assert dims == dict(nSpat=S, nLSpec=m.obs_pix.size, nTSpec=tem.size, nVel=V, nComp=C,
                            nPop=m.templates.shape[0])
        # data_flux is the mean over unmasked pixels.
        np.testing.assert_allclose(f["/HyperCube/data_flux"][...],
                                   m.datacube[:, m.mask].mean(axis=1), rtol=1e-14)
        # R_T is the sparse exact-overlap operator on the stored (cropped) grids.
        R = read_rebin(f)
        ref = rebin_matrix(tem, m.obs_pix)
        assert R.shape == (m.obs_pix.size, tem.size)
        assert abs(R - ref).max() == 0
        np.testing.assert_allclose(np.asarray(R.sum(axis=1)).ravel(), 1.0, atol=1e-12)

        def check(name, obj):
            if isinstance(obj, h5py.Dataset):
                assert obj.attrs.get("units") is not None, name
                assert obj.attrs.get("description"), name
        f.visititems(check)
    assert mgr.dims().nTSpec == tem.size


def test_datacube_LS_accepted_when_unambiguous(tmp_path, small_mock, caplog):
    m = small_mock
    with caplog.at_level(logging.INFO, logger="cubefit"):
        path, _ = _populated(tmp_path, m, datacube=m.datacube.T.copy())
    assert "transposed" in caplog.text
    with h5py.File(path, "r") as f:
        np.testing.assert_array_equal(f["/DataCube"][...], m.datacube)


def test_manual_step1_verbatim_defaults_velpix(tmp_path, small_mock, caplog):
    """The manual's snippet passes no vel_pix; the default is one template pixel per bin."""
    from CubeFit.hdf5_manager import H5Dims as D, H5Manager as M
    m = small_mock
    S, V, C = m.losvd.shape
    L, T, P = m.obs_pix.size, m.tem_pix.size, m.templates.shape[0]
    H_SVC, Y_SL, T_PT, tem_loglam, obs_loglam = m.losvd, m.datacube, m.templates, m.tem_pix, m.obs_pix
    with caplog.at_level(logging.WARNING, logger="cubefit"):
        mgr = M(str(tmp_path / "galaxy.h5"), tem_pix=tem_loglam, obs_pix=obs_loglam)
        mgr.init_base(D(nSpat=S, nLSpec=L, nTSpec=T, nVel=V, nComp=C, nPop=P))
        mgr.populate_from_arrays(losvd=H_SVC, datacube=Y_SL, templates=T_PT)
        mgr.ensure_rebin_and_resample()
    assert "vel_pix not given" in caplog.text
    with h5py.File(tmp_path / "galaxy.h5", "r") as f:
        np.testing.assert_allclose(f["/VelPix"][...], m.vel_pix, rtol=1e-12, atol=1e-9)
        assert np.all(f["/Mask"][...])


def _bad_inputs(m):
    """(label, constructor kwargs, populate kwargs overrides, text expected in the message)."""
    tem_bad = m.tem_pix.copy()
    tem_bad[10], tem_bad[11] = tem_bad[11], tem_bad[10]
    obs_nonuni = m.obs_pix.copy()
    obs_nonuni[5:] += 0.3 * np.diff(m.obs_pix).mean()
    tpl_nan = m.templates.copy()
    tpl_nan[1, 7] = np.nan
    H_nan = m.losvd.copy()
    H_nan[0, 3, 1] = np.inf
    H_neg = m.losvd.copy()
    H_neg[2, 5, 0] = -1e-3
    dlog = np.diff(m.tem_pix).mean()
    obs_wide = m.tem_pix[3:-3:2].copy()  # inside the templates but without kernel margin
    vel_pos = m.vel_pix - m.vel_pix[0] + 10.0
    vel_nonuni = m.vel_pix.copy()
    vel_nonuni[-1] += 5.0
    return [
        ("template grid not monotonic", dict(tem_pix=tem_bad), {}, "/TemPix"),
        ("observed grid not uniform", dict(obs_pix=obs_nonuni), {}, "/ObsPix"),
        ("linear wavelengths", dict(obs_pix=np.exp(m.obs_pix)), {}, "natural-log"),
        ("templates NaN", {}, dict(templates=tpl_nan), "/Templates"),
        ("LOSVD inf", {}, dict(losvd=H_nan), "/LOSVD"),
        ("LOSVD negative", {}, dict(losvd=H_neg), "/LOSVD"),
        ("observed grid beyond templates+kernel",
         dict(obs_pix=obs_wide), dict(datacube=np.ones((m.losvd.shape[0], obs_wide.size)),
                                      mask=None, noise=None), "short by"),
        ("velocity grid does not straddle 0", {}, dict(vel_pix=vel_pos), "/VelPix"),
        ("velocity grid not uniform", {}, dict(vel_pix=vel_nonuni), "/VelPix"),
        ("mask removes every pixel", {}, dict(mask=np.zeros(m.obs_pix.size, bool)), "/Mask"),
        ("mask wrong length", {}, dict(mask=np.ones(3, bool)), "/Mask"),
        ("datacube wrong shape", {}, dict(datacube=m.datacube[:, :-1]), "/DataCube"),
        ("datacube NaN", {}, dict(datacube=np.where(np.arange(m.obs_pix.size) == 4, np.nan,
                                                    m.datacube)), "/DataCube"),
        ("templates wrong T", {}, dict(templates=m.templates[:, :-1]), "/Templates"),
        ("vel_pix length", {}, dict(vel_pix=m.vel_pix[1:-1]), "/VelPix"),
        ("LOSVD not 3-D", {}, dict(losvd=m.losvd[0]), "/LOSVD"),
        ("noise non-positive", {}, dict(noise=np.zeros_like(m.noise)), "/Noise"),
        ("orbit weights length", {}, dict(orbit_weights=[1.0, 2.0, 3.0]), "/CompWeights"),
        ("pop axes size", {}, dict(pop_axes={"age": [1.0, 2.0]}), "pop_axes"),
        ("obs finer than templates", dict(obs_pix=m.tem_pix[200] + 0.5 * dlog * np.arange(200)),
         dict(datacube=np.ones((m.losvd.shape[0], 200)), mask=None, noise=None), "finer"),
    ], dlog


@pytest.mark.parametrize("case", range(20))
def test_bad_input_clear_error_file_untouched(tmp_path, small_mock, case):
    m = small_mock
    cases, _ = _bad_inputs(m)
    label, ctor, over, needle = cases[case]
    path, _ = _populated(tmp_path, m)
    before = file_digest(path)
    kw = dict(losvd=m.losvd, datacube=m.datacube, templates=m.templates, mask=m.mask,
              vel_pix=m.vel_pix, noise=m.noise, pop_axes=m.pop_axes)
    kw.update(over)
    with pytest.raises(ValueError) as exc:
        mgr = H5Manager(path, tem_pix=ctor.get("tem_pix", m.tem_pix),
                        obs_pix=ctor.get("obs_pix", m.obs_pix))
        mgr.populate_from_arrays(**kw)
    assert needle in str(exc.value), (label, str(exc.value))
    assert file_digest(path) == before, label
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.h5"], "temporary files left behind"


def test_all_bad_cases_are_parametrised(small_mock):
    assert len(_bad_inputs(small_mock)[0]) == 20


def test_crash_during_write_keeps_previous_file(tmp_path, small_mock, monkeypatch):
    m = small_mock
    path, mgr = _populated(tmp_path, m)
    before = file_digest(path)
    import cubefit.store as store
    calls = {"n": 0}
    real = store.write_dataset

    def failing(*a, **k):
        calls["n"] += 1
        if calls["n"] == 4:
            raise RuntimeError("disk full (simulated)")
        return real(*a, **k)
    monkeypatch.setattr(store, "write_dataset", failing)
    with pytest.raises(RuntimeError, match="simulated"):
        mgr.populate_from_arrays(losvd=m.losvd * 2, datacube=m.datacube, templates=m.templates,
                                 vel_pix=m.vel_pix)
    assert file_digest(path) == before
    assert [p.name for p in tmp_path.iterdir()] == ["g.h5"]


def test_init_base_refuses_other_dims_unless_overwrite(tmp_path, small_mock):
    m = small_mock
    path, _ = _populated(tmp_path, m)
    d = m.dims
    other = H5Dims(nSpat=d.nSpat + 1, nLSpec=d.nLSpec, nTSpec=d.nTSpec, nVel=d.nVel,
                   nComp=d.nComp, nPop=d.nPop)
    before = file_digest(path)
    with pytest.raises(ValueError, match="overwrite=True"):
        H5Manager(path).init_base(other)
    assert file_digest(path) == before
    H5Manager(path).init_base(other, overwrite=True)
    with h5py.File(path, "r") as f:
        assert "/DataCube" not in f
        assert f.attrs["dims"][0] == d.nSpat + 1
    with pytest.raises(ValueError, match="nSpat"):
        H5Dims(nSpat=0, nLSpec=1, nTSpec=1, nVel=1, nComp=1, nPop=1)
    with pytest.raises(ValueError, match="H5Dims says"):
        H5Manager(tmp_path / "x.h5", obs_pix=m.obs_pix[1:]).init_base(other)


def test_rebin_cached_rebuilt_when_stale_and_seed_layouts(tmp_path, small_mock):
    m = small_mock
    path, mgr = _populated(tmp_path, m)
    R1 = mgr.ensure_rebin_and_resample()
    with h5py.File(path, "r") as f:
        key = f["/R_T"].attrs["grids_fingerprint"]
        tem = f["/TemPix"][...]
    with h5py.File(path, "a") as f:  # a stale operator: fingerprint of other grids
        f["/R_T"].attrs["grids_fingerprint"] = "stale"
        f["/R_T/data"][0] = 0.5
    R2 = mgr.ensure_rebin_and_resample()
    assert abs(R2 - R1).max() == 0
    with h5py.File(path, "r") as f:
        assert f["/R_T"].attrs["grids_fingerprint"] == key
    # The seed's dense /R_T, in either orientation, reads as the same CSR (L, T).
    dense = R1.toarray()
    for orient, arr in (("TL", dense.T), ("LT", dense), (None, dense.T)):
        p = tmp_path / f"seed_{orient}.h5"
        with h5py.File(p, "w") as f:
            f["/ObsPix"] = m.obs_pix
            f["/TemPix"] = tem
            f["/R_T"] = arr.astype(np.float32)
            if orient:
                f["/R_T"].attrs["orientation"] = orient
        with h5py.File(p, "r") as f:
            R = read_rebin(f)
        assert R.shape == R1.shape
        np.testing.assert_allclose(R.toarray(), dense, rtol=1e-7, atol=1e-7)


def test_write_dataset_requires_units(tmp_path):
    with h5py.File(tmp_path / "a.h5", "w") as f:
        with pytest.raises(KeyError, match="SCHEMA"):
            write_dataset(f, "/Unknown", np.ones(3))
        ds = write_dataset(f, "/Other", np.ones(3), units="m", description="thing")
        assert ds.attrs["units"] == "m"
    assert all(isinstance(u, str) and isinstance(d, str) for u, d in SCHEMA.values())


def test_open_h5_cache_settings_and_missing(tmp_path):
    cfg = Config.from_env(environ={}, rdcc_nbytes=1 << 20, rdcc_nslots=1009, rdcc_w0=0.5)
    p = tmp_path / "c.h5"
    with open_h5(p, "w", config=cfg) as f:
        f["x"] = np.arange(3)
        _, nslots, nbytes, w0 = f.id.get_access_plist().get_cache()
        assert (nslots, nbytes, w0) == (1009, 1 << 20, 0.5)
    with pytest.raises(FileNotFoundError, match="no such HDF5 file"):
        open_h5(tmp_path / "missing.h5")


HOLDER = textwrap.dedent("""
    import sys, time, h5py
    f = h5py.File(sys.argv[1], "a", locking=True)
    print("locked", flush=True)
    time.sleep(float(sys.argv[2]))
    f.close()
""")


def test_open_h5_retries_on_locked_file(tmp_path):
    p = tmp_path / "locked.h5"
    with h5py.File(p, "w") as f:
        f["x"] = np.arange(3)
    cfg = Config.from_env(environ={}, hdf5_use_file_locking="TRUE", open_retry_wait=0.2)
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(p), "1.5"], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(OSError, match="locked by another process"):
            open_h5(p, "a", config=cfg, retries=0)
        with open_h5(p, "a", config=cfg, retries=30) as f:  # succeeds once the holder exits
            assert f["x"][2] == 2
    finally:
        holder.wait(timeout=30)


READER = textwrap.dedent("""
    import sys
    from cubefit.store import open_h5
    with open_h5(sys.argv[1], "r", swmr=True) as f:
        f["x"].refresh()
        print(int(f["x"].shape[0]), float(f["x"][-1]))
""")


def test_open_h5_swmr_reader_sees_live_writer(tmp_path):
    p = tmp_path / "live.h5"
    with open_h5(p, "w", libver="latest") as f:
        f.create_dataset("x", shape=(0,), maxshape=(None,), dtype="f8", chunks=(16,))
    with open_h5(p, "a", swmr=True) as f:
        assert f.swmr_mode
        f["x"].resize((5,))
        f["x"][:] = np.arange(5.0)
        f.flush()
        out = subprocess.run([sys.executable, "-c", READER, str(p)], capture_output=True, text=True,
                             timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["5", "4.0"]


def test_describe_file_lists_every_dataset(tmp_path, small_mock):
    path, _ = _populated(tmp_path, small_mock)
    d = describe_file(path)
    names = [r[0] for r in d["datasets"]]
    for n in ("/Templates", "/TemPix", "/ObsPix", "/VelPix", "/DataCube", "/LOSVD", "/Mask",
              "/Noise", "/R_T/data", "/HyperCube/data_flux"):
        assert n in names
    assert all(r[3] and r[4] for r in d["datasets"])
    assert d["stages"]["inputs"] and d["stages"]["rebin"] and not d["stages"]["fit"]


def test_mock_velocity_grid_matches_template_pixels(small_mock):
    m = small_mock
    dv = C_KMS * np.diff(m.tem_pix).mean()
    np.testing.assert_allclose(np.diff(m.vel_pix), dv, rtol=1e-12)
    assert m.vel_pix[m.vel_pix.size // 2] == 0.0
    assert sp.issparse(rebin_matrix(m.tem_pix, m.obs_pix))


def test_populate_from_template_library(tmp_path, small_mock):
    from cubefit.templates import TemplateLibrary
    m = small_mock
    lib = TemplateLibrary(flux=m.templates, ln_lam=m.tem_pix, velscale=C_KMS * np.diff(m.tem_pix).mean(),
                          pop_axes=m.pop_axes, grid_shape=(3, 2), axis_units={"age": "Gyr", "metal": "dex"},
                          fwhm=2.51, flux_unit="L_sun/Angstrom/M_sun", norm=None)
    path = tmp_path / "lib.h5"
    mgr = H5Manager(path, tem_pix=m.tem_pix, obs_pix=m.obs_pix)
    mgr.populate_from_arrays(losvd=m.losvd, datacube=m.datacube, templates=lib, vel_pix=m.vel_pix)
    with h5py.File(path, "r") as f:
        assert f["/Templates"].attrs["units"] == "L_sun/Angstrom/M_sun"
        np.testing.assert_array_equal(f["/PopAxes/metal"][...], m.pop_axes["metal"])
    with pytest.raises(ValueError, match="ln_lam differs"):
        H5Manager(path, tem_pix=m.tem_pix[1:], obs_pix=m.obs_pix).populate_from_arrays(
            losvd=m.losvd, datacube=m.datacube, templates=lib, vel_pix=m.vel_pix)


def test_edit_copies_of_killed_processes_are_removed(tmp_path, small_mock):
    m = small_mock
    path, mgr = _populated(tmp_path, m)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    orphan = tmp_path / f".g.h5.tmp-{dead}"
    orphan.write_bytes(b"half a copy")
    alive = tmp_path / f".g.h5.tmp-{os.getppid()}"
    alive.write_bytes(b"in use")
    mgr.ensure_rebin_and_resample(force=True)
    assert not orphan.exists() and alive.exists()
