"""cubefit.hypercube: columns against the brute-force reference, resume after SIGKILL, settings,
normalisation conversion, bitmap helpers, recompression and column energy."""
import logging
import os
import shutil
import signal
import subprocess
import sys
import textwrap

import h5py
import numpy as np
import pytest
from scipy.integrate import trapezoid

import reference
from conftest import file_digest
from cubefit.hypercube import (build_hypercube, convert_hypercube_norm, default_chunks,
                               hypercube_status, invalidate_tiles, recompress_models,
                               recompute_col_energy, require_complete)
from cubefit.store import H5Manager, read_inputs
from cubefit.weights import ensure_lambda_weights, read_lambda_weights

CHUNKS = dict(S_chunk=2, C_chunk=1, P_chunk=4)      # 5 x 2 x 2 tiles, partial ones at the edges
DARK, HALF = 8, 4                                   # spaxel without light; spaxel without component 1


def populate(path, mock, losvd=None, datacube=None):
    """A populated file (with /R_T) from a mock; optional replacement LOSVD or data."""
    mgr = H5Manager(path, tem_pix=mock.tem_pix, obs_pix=mock.obs_pix)
    mgr.init_base(mock.dims)
    mgr.populate_from_arrays(losvd=mock.losvd if losvd is None else losvd,
                             datacube=mock.datacube if datacube is None else datacube,
                             templates=mock.templates, mask=mock.mask, vel_pix=mock.vel_pix,
                             noise=mock.noise, pop_axes=mock.pop_axes)
    mgr.ensure_rebin_and_resample()
    return path


def dark_losvd(mock):
    """The mock's LOSVD with one spaxel empty and one component absent in another spaxel."""
    H = mock.losvd.copy()
    H[DARK] = 0.0
    H[HALF, :, 1] = 0.0
    return H


@pytest.fixture(scope="module")
def base(tmp_path_factory, small_mock):
    """Populated file (never built) shared by the module; tests work on copies."""
    return populate(tmp_path_factory.mktemp("hc") / "base.h5", small_mock, losvd=dark_losvd(small_mock))


@pytest.fixture
def h5(tmp_path, base):
    dst = tmp_path / "g.h5"
    shutil.copy(base, dst)
    return dst


_REF = {}


def direct(path, norm, amp):
    """tests/reference.direct_hypercube on the file's stored (cropped) inputs, cached."""
    if (norm, amp) not in _REF:
        inp = read_inputs(path)
        _REF[norm, amp] = reference.direct_hypercube(
            inp.templates, inp.tem_pix, inp.obs_pix, inp.vel_pix, inp.losvd, norm, amp,
            inp.data_flux)
    return _REF[norm, amp]


def models(path):
    with h5py.File(path, "r") as f:
        return f["/HyperCube/models"][...], f["/HyperCube/col_energy"][...]


def assert_columns_close(A, ref, rtol):
    """Every column A[s, c, p, :] equals the reference to rtol relative to its peak."""
    peak = np.abs(ref).max(axis=-1)
    err = np.abs(A - ref).max(axis=-1)
    assert np.all(err[peak == 0] == 0)
    assert np.all(err[peak > 0] <= rtol * peak[peak > 0]), (err / np.where(peak > 0, peak, 1)).max()


def pixel_weights(path):
    with h5py.File(path, "r") as f:
        mask = f["/Mask"][...]
    return mask * read_lambda_weights(path)


# ----------------------------------------------------------------------------- columns

@pytest.mark.parametrize("norm", ["data", "model"])
@pytest.mark.parametrize("amp", ["sum", "trapz"])
def test_columns_equal_direct_reference(h5, norm, amp):
    st = build_hypercube(h5, norm_mode=norm, amp_mode=amp, progress=False, **CHUNKS)
    assert st.complete and st.n_tiles == 5 * 2 * 2 and st.fraction_done == 1.0
    ref = direct(h5, norm, amp)
    A, E = models(h5)
    assert A.dtype == np.float32 and A.shape == ref.shape
    with h5py.File(h5, "r") as f:
        mask = f["/Mask"][...]
        assert not mask.all()                     # the mock masks two windows: a real mask test
        assert f["/HyperCube/models"].chunks == (2, 1, 4, ref.shape[-1])
        assert f["/HyperCube/_done"].shape == (5, 2, 2)
        hc = f["/HyperCube"].attrs
        assert (hc["norm.mode"], hc["amp_mode"]) == (norm, amp)
        assert tuple(hc["chunks"]) == (2, 1, 4) and hc["cubefit_version"]
        assert hc["inputs_fingerprint"] == f.attrs["inputs_fingerprint"]
        H, vel = f["/LOSVD"][...], f["/VelPix"][...]
        a_ref = H.sum(axis=1) if amp == "sum" else trapezoid(H, vel, axis=1)
        np.testing.assert_allclose(f["/HyperCube/norm/losvd_amp"][...], a_ref, rtol=1e-12)
        np.testing.assert_allclose(f["/HyperCube/norm/losvd_amp_sum"][...], a_ref.sum(axis=1),
                                   rtol=1e-12)
    assert_columns_close(A, ref, 1e-5)
    # Models are stored on masked pixels too; the mask and λ-weights act through the energy.
    assert np.all(np.abs(A[..., ~mask]).max(axis=-1)[ref[..., ~mask].any(axis=-1)] > 0)
    assert np.all(A[DARK] == 0) and np.all(A[HALF, 1] == 0)
    pw = pixel_weights(h5)
    assert 0 < pw[mask].min() < 0.5 and np.all(pw[~mask] == 0)
    np.testing.assert_allclose(E, np.einsum("scpl,l->cp", ref**2, pw), rtol=1e-5)


def test_default_chunks_fit_target_and_dims():
    assert default_chunks(9, 2, 6, 432) == (9, 2, 6)
    s, c, p = default_chunks(2854, 207, 360, 1247)
    assert (p, c) == (360, 2) and s * c * p * 1247 * 4 <= 4 * 2**20


# ----------------------------------------------------------------------------- kill & resume

KILL_BUILD = textwrap.dedent("""
    import os, signal, sys
    import h5py
    from cubefit.hypercube import build_hypercube
    path, at = sys.argv[1], int(sys.argv[2])
    seen = [0]
    real = h5py.Dataset.__setitem__
    def hooked(self, key, value):
        if self.name == "/HyperCube/_done":
            seen[0] += 1
            if seen[0] == at:   # tile `at` is written (maybe not flushed), its bit is not
                os.kill(os.getpid(), signal.SIGKILL)
        real(self, key, value)
    h5py.Dataset.__setitem__ = hooked
    build_hypercube(path, norm_mode="data", S_chunk=1, C_chunk=1, P_chunk=2, progress=False)
""")


def run_killed(script, *args):
    proc = subprocess.run([sys.executable, "-c", script, *map(str, args)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, base):
    path = tmp_path_factory.mktemp("ref") / "ref.h5"
    shutil.copy(base, path)
    build_hypercube(path, norm_mode="data", S_chunk=1, C_chunk=1, P_chunk=2, progress=False)
    return path


@pytest.mark.parametrize("kills", [(1,), (54,), (17, 9)])
def test_sigkill_and_resume_is_bit_identical(h5, uninterrupted, kills):
    n_done = 0
    for at in kills:                                    # (17, 9): killed again while resuming
        run_killed(KILL_BUILD, h5, at)
        st = hypercube_status(h5)
        assert st.n_tiles == 54 and not st.complete
        n_done += at - 1
        assert st.n_done == n_done and len(st.missing) == 54 - n_done
    st = build_hypercube(h5, norm_mode="data", S_chunk=1, C_chunk=1, P_chunk=2, progress=False)
    assert st.complete
    A, E = models(h5)
    A0, E0 = models(uninterrupted)
    assert np.array_equal(A.view(np.uint32), A0.view(np.uint32))
    assert np.array_equal(E, E0)


KILL_CONVERT = textwrap.dedent("""
    import os, signal, sys
    import h5py
    from cubefit.hypercube import convert_hypercube_norm
    path, at = sys.argv[1], int(sys.argv[2])
    seen = [0]
    real = h5py.Dataset.__setitem__
    def hooked(self, key, value):
        if self.name == "/HyperCube/models":
            seen[0] += 1
            if seen[0] == at:     # a torn write: half of the tile, then death
                half = value.copy()
                half[..., : half.shape[-1] // 2] = -1.0
                real(self, key, half)
                self.file.flush()
                os.kill(os.getpid(), signal.SIGKILL)
        real(self, key, value)
    h5py.Dataset.__setitem__ = hooked
    convert_hypercube_norm(path, "model", progress=False)
""")


def test_sigkill_during_conversion_never_scales_twice(h5, tmp_path, base):
    build_hypercube(h5, norm_mode="data", S_chunk=1, C_chunk=1, P_chunk=2, progress=False)
    clean = tmp_path / "clean.h5"
    shutil.copy(h5, clean)
    run_killed(KILL_CONVERT, h5, 23)
    st = hypercube_status(h5)
    assert st.pending_conversion == "model"
    with pytest.raises(ValueError, match="was interrupted; finish it"):
        build_hypercube(h5, norm_mode="data", S_chunk=1, C_chunk=1, P_chunk=2, progress=False)
    with pytest.raises(ValueError, match="convert_hypercube_norm"):
        convert_hypercube_norm(h5, "data", progress=False)
    convert_hypercube_norm(h5, "model", progress=False)
    convert_hypercube_norm(clean, "model", progress=False)
    A, E = models(h5)
    A0, E0 = models(clean)
    assert np.array_equal(A, A0) and np.array_equal(E, E0)
    assert hypercube_status(h5).pending_conversion is None
    with h5py.File(h5, "r") as f:
        assert "/HyperCube/_convert_scratch" not in f and f["/HyperCube"].attrs["norm.mode"] == "model"


# ----------------------------------------------------------------------------- settings

def test_other_settings_refused_same_settings_noop(h5, small_mock):
    build_hypercube(h5, norm_mode="data", progress=False, **CHUNKS)
    digest = file_digest(h5)
    st = build_hypercube(h5, norm_mode="data", progress=False, **CHUNKS)   # complete: no-op
    assert st.complete and file_digest(h5) == digest
    for kw, words in [(dict(norm_mode="model"), "norm.mode: cube has 'data', requested 'model'"),
                      (dict(amp_mode="trapz"), "amp_mode"),
                      (dict(P_chunk=3), "chunks: cube has (2, 1, 4), requested (2, 1, 3)")]:
        args = dict(norm_mode="data", progress=False, **CHUNKS)
        args.update(kw)
        with pytest.raises(ValueError, match="overwrite=True") as err:
            build_hypercube(h5, **args)
        assert words in str(err.value)
        assert file_digest(h5) == digest
    assert "convert_hypercube_norm" in str(pytest.raises(
        ValueError, build_hypercube, h5, norm_mode="model", progress=False, **CHUNKS).value)
    # New inputs (another data cube) remove the cube made from the old ones.
    populate(h5, small_mock, losvd=dark_losvd(small_mock), datacube=small_mock.datacube * 1.01)
    with h5py.File(h5, "r") as f:
        assert "/HyperCube/models" not in f and "/HyperCube/data_flux" in f
    assert build_hypercube(h5, norm_mode="data", progress=False, **CHUNKS).complete
    # A cube that records other inputs than the file's (a hand edit, an older version)
    # is refused by the build and by every reader, never used.
    with h5py.File(h5, "r+") as f:
        f["/HyperCube"].attrs["inputs_fingerprint"] = "another cube"
    assert hypercube_status(h5).stale
    with pytest.raises(ValueError, match="inputs_fingerprint"):
        build_hypercube(h5, norm_mode="data", progress=False, **CHUNKS)
    with h5py.File(h5, "r") as f, pytest.raises(ValueError, match="other inputs"):
        require_complete(f)
    st = build_hypercube(h5, norm_mode="model", amp_mode="trapz", overwrite=True, progress=False,
                         **CHUNKS)
    assert st.complete and st.settings["norm.mode"] == "model"
    assert_columns_close(models(h5)[0], direct(h5, "model", "trapz"), 1e-5)


def test_data_norm_with_bad_flux_lists_spaxels(h5):
    with h5py.File(h5, "r+") as f:
        f["/HyperCube/data_flux"][[1, 5]] = [-2.0, np.nan]
        f["/HyperCube/data_flux"][DARK] = 0.0        # no light there: not an error
    digest = file_digest(h5)
    with pytest.raises(ValueError, match=r"2 spaxels are not: \[1, 5\]"):
        build_hypercube(h5, norm_mode="data", progress=False, **CHUNKS)
    assert file_digest(h5) == digest                 # refused before anything was written
    build_hypercube(h5, norm_mode="model", progress=False, **CHUNKS)
    with pytest.raises(ValueError, match=r"\[1, 5\]"):   # and again with overwrite: cube kept
        build_hypercube(h5, norm_mode="data", overwrite=True, progress=False, **CHUNKS)
    assert hypercube_status(h5).complete


def test_every_written_dataset_has_units_and_description(h5):
    build_hypercube(h5, norm_mode="data", progress=False, **CHUNKS)
    with h5py.File(h5, "r") as f:
        def check(name, obj):
            if isinstance(obj, h5py.Dataset):
                assert obj.attrs.get("units"), name
                assert obj.attrs.get("description"), name
        f.visititems(check)
        assert f["/HyperCube/models"].attrs["units"].startswith("data flux density")


# ----------------------------------------------------------------------------- conversion

def test_conversion_round_trip_matches_direct_builds(h5, tmp_path, base):
    build_hypercube(h5, norm_mode="data", progress=False, **CHUNKS)
    A_data, E_data = models(h5)
    convert_hypercube_norm(h5, "model", progress=False)
    A_model, E_model = models(h5)
    other = tmp_path / "direct_model.h5"
    shutil.copy(base, other)
    build_hypercube(other, norm_mode="model", progress=False, **CHUNKS)
    A_direct, E_direct = models(other)
    np.testing.assert_allclose(A_model, A_direct, rtol=1e-6, atol=0)
    np.testing.assert_allclose(E_model, E_direct, rtol=1e-6)
    assert_columns_close(A_model, direct(h5, "model", "sum"), 1e-5)
    with h5py.File(h5, "r") as f:
        assert f["/HyperCube"].attrs["norm.mode"] == "model"
        assert f["/HyperCube/col_energy"].attrs["norm.mode"] == "model"
        assert f["/HyperCube/models"].attrs["units"].startswith("template flux")
    digest = file_digest(h5)
    convert_hypercube_norm(h5, "model", progress=False)                  # already there: no-op
    assert file_digest(h5) == digest
    convert_hypercube_norm(h5, "data", progress=False)
    A_back, E_back = models(h5)
    np.testing.assert_allclose(A_back, A_data, rtol=1e-6, atol=0)
    np.testing.assert_allclose(E_back, E_data, rtol=1e-6)
    assert np.all(A_back[DARK] == 0)


def test_conversion_bad_factors_list_spaxels_file_untouched(h5):
    build_hypercube(h5, norm_mode="model", progress=False, **CHUNKS)
    with h5py.File(h5, "r+") as f:
        f["/HyperCube/data_flux"][[3, 6]] = [0.0, np.inf]
    digest = file_digest(h5)
    with pytest.raises(ValueError, match=r"\[3, 6\]"):
        convert_hypercube_norm(h5, "data", progress=False)
    assert file_digest(h5) == digest


def test_incomplete_cube_cannot_be_converted(h5):
    build_hypercube(h5, norm_mode="data", progress=False, **CHUNKS)
    invalidate_tiles(h5, [(0, 0, 0)])
    with pytest.raises(ValueError, match="incomplete"):
        convert_hypercube_norm(h5, "model", progress=False)


# ----------------------------------------------------------------------------- helpers

def test_bitmap_inspect_invalidate_and_rebuild(h5):
    build_hypercube(h5, norm_mode="data", progress=False, **CHUNKS)
    A0, E0 = models(h5)
    with h5py.File(h5, "r+") as f:          # damage the tiles holding spaxel 4 (S-tile 2)
        f["/HyperCube/models"][4:6] = 0.0
    assert invalidate_tiles(h5, spaxels=[4]) == 4
    st = hypercube_status(h5)
    assert not st.complete and st.fraction_done == pytest.approx(16 / 20)
    assert sorted(map(tuple, st.missing)) == [(2, 0, 0), (2, 0, 1), (2, 1, 0), (2, 1, 1)]
    with pytest.raises(ValueError, match="tile grid"):
        invalidate_tiles(h5, [(5, 0, 0)])
    assert invalidate_tiles(h5, [(0, 1, 1)]) == 1
    build_hypercube(h5, norm_mode="data", progress=False, **CHUNKS)
    A, E = models(h5)
    assert np.array_equal(A, A0) and np.array_equal(E, E0)
    assert invalidate_tiles(h5) == 20 and hypercube_status(h5).n_done == 0


@pytest.mark.parametrize("compression", ["gzip", "lzf"])
def test_recompress_keeps_values_and_attrs(h5, compression):
    build_hypercube(h5, norm_mode="data", progress=False, **CHUNKS)
    A0, E0 = models(h5)
    recompress_models(h5, compression, progress=False)
    with h5py.File(h5, "r") as f:
        ds = f["/HyperCube/models"]
        assert ds.compression == compression and ds.chunks == (2, 1, 4, A0.shape[-1])
        assert ds.attrs["units"].startswith("data flux") and "copied" not in ds.attrs
        assert "/HyperCube/_models_new" not in f
    A, E = models(h5)
    assert np.array_equal(A, A0) and np.array_equal(E, E0)
    recompress_models(h5, None, progress=False)
    assert hypercube_status(h5).complete and np.array_equal(models(h5)[0], A0)
    with pytest.raises(ValueError, match="compression"):
        recompress_models(h5, "zstd", progress=False)


def test_compressed_build_resumes(h5, uninterrupted):
    build_hypercube(h5, norm_mode="data", S_chunk=1, C_chunk=1, P_chunk=2, compression="gzip",
                    progress=False)
    invalidate_tiles(h5, spaxels=[0, 7])
    build_hypercube(h5, norm_mode="data", S_chunk=1, C_chunk=1, P_chunk=2, progress=False)
    A, E = models(h5)
    A0, E0 = models(uninterrupted)
    assert np.array_equal(A, A0) and np.array_equal(E, E0)


def test_col_energy_follows_lambda_weights(h5, caplog):
    build_hypercube(h5, norm_mode="model", progress=False, **CHUNKS)
    E_old = models(h5)[1]
    with caplog.at_level(logging.WARNING, logger="cubefit.weights"):
        ensure_lambda_weights(h5, small_px=5, large_px=21, overwrite=True)
    assert "recompute_col_energy" in caplog.text
    E = recompute_col_energy(h5, progress=False)
    ref = direct(h5, "model", "sum")
    pw = pixel_weights(h5)
    np.testing.assert_allclose(E, np.einsum("scpl,l->cp", ref**2, pw), rtol=1e-5)
    assert not np.allclose(E, E_old)
    with h5py.File(h5, "r") as f:
        np.testing.assert_array_equal(f["/HyperCube/col_energy_weights"][...], pw)


def test_lambda_weights_disabled_gives_mask_only_energy(h5, monkeypatch):
    monkeypatch.setenv("CUBEFIT_LAMBDA_WEIGHTS_ENABLE", "0")
    build_hypercube(h5, norm_mode="model", progress=False, **CHUNKS)
    with h5py.File(h5, "r") as f:
        mask = f["/Mask"][...]
        np.testing.assert_array_equal(f["/HyperCube/col_energy_weights"][...], mask.astype(float))
        assert "/HyperCube/lambda_weights" not in f
    ref = direct(h5, "model", "sum")
    np.testing.assert_allclose(models(h5)[1], (ref[..., mask] ** 2).sum(axis=(0, 3)), rtol=1e-5)


def test_seed_module_names():
    from CubeFit.cube_utils import ensure_lambda_weights as e, read_lambda_weights as r
    from CubeFit.hypercube_builder import build_hypercube as b, convert_hypercube_norm as c
    import cubefit.hypercube as hc
    import cubefit.weights as w
    assert (b, c, e, r) == (hc.build_hypercube, hc.convert_hypercube_norm, w.ensure_lambda_weights,
                            w.read_lambda_weights)


def test_missing_inputs_and_bad_arguments(tmp_path, h5):
    with pytest.raises(ValueError, match="norm_mode"):
        build_hypercube(h5, norm_mode="flux")
    with pytest.raises(ValueError, match="S_chunk"):
        build_hypercube(h5, S_chunk=0)
    with h5py.File(h5, "r+") as f:
        del f["/R_T"]
    with pytest.raises(KeyError, match="/R_T"):
        build_hypercube(h5, progress=False)
    with pytest.raises(KeyError, match="build_hypercube"):
        hypercube_status(h5)


def test_recompress_recovers_an_interrupted_swap(h5):
    build_hypercube(h5, norm_mode="data", progress=False, **CHUNKS)
    A0 = models(h5)[0]
    with h5py.File(h5, "r+") as f:     # the state a kill between delete and move leaves behind
        f.copy("/HyperCube/models", "/HyperCube/_models_new")
        f["/HyperCube/_models_new"].attrs["copied"] = True
        del f["/HyperCube/models"]
    recompress_models(h5, "lzf", progress=False)
    with h5py.File(h5, "r") as f:
        assert f["/HyperCube/models"].compression == "lzf"
        assert f["/HyperCube"].attrs["compression"] == "lzf:None"
        assert "/HyperCube/_models_new" not in f and "copied" not in f["/HyperCube/models"].attrs
    assert np.array_equal(models(h5)[0], A0)
    digest = file_digest(h5)
    recompress_models(h5, "lzf", progress=False)                      # already lzf: untouched
    assert file_digest(h5) == digest


def test_conversion_without_energy_keeps_it_until_recomputed(h5, caplog):
    build_hypercube(h5, norm_mode="data", progress=False, **CHUNKS)
    E_data = models(h5)[1]
    with caplog.at_level(logging.WARNING, logger="cubefit.hypercube"):
        convert_hypercube_norm(h5, "model", recompute_energy=False, progress=False)
    assert "recompute_col_energy" in caplog.text
    assert np.array_equal(models(h5)[1], E_data)
    E = recompute_col_energy(h5, progress=False)
    np.testing.assert_allclose(E, np.einsum("scpl,l->cp", direct(h5, "model", "sum") ** 2,
                                            pixel_weights(h5)), rtol=1e-5)
