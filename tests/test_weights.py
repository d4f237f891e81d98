"""cubefit.weights: the median-DoG λ-weights, their storage and the CUBEFIT_LAMBDA_* settings."""
import logging
import shutil

import h5py
import numpy as np
import pytest

from conftest import file_digest
from cubefit.weights import METHOD, ensure_lambda_weights, lambda_weights, read_lambda_weights
from test_hypercube import populate

W = "/HyperCube/lambda_weights"


@pytest.fixture(scope="module")
def base(tmp_path_factory, small_mock):
    return populate(tmp_path_factory.mktemp("w") / "base.h5", small_mock)


@pytest.fixture
def h5(tmp_path, base):
    dst = tmp_path / "g.h5"
    shutil.copy(base, dst)
    return dst


def boxcar(x, n):
    """Centred running mean of odd width n, ends padded with the end values (written out)."""
    pad = np.concatenate((np.full(n // 2, x[0]), x, np.full(n // 2, x[-1])))
    return np.convolve(pad, np.ones(n) / n, mode="valid")


def reference_weights(spectra, mask, small, large, min_w):
    """DESIGN §2 step by step: median, fill masked by interpolation, |DoG|, p95, clip, map."""
    med = np.median(spectra, axis=0)
    idx = np.arange(med.size)
    med = np.where(mask, med, np.interp(idx, idx[mask], med[mask]))
    d = np.abs(boxcar(med, small) - boxcar(med, large))
    d = np.clip(d / np.percentile(d[mask], 95), 0, 1)
    return np.where(mask, min_w + (1 - min_w) * d, min_w)


def line_spectra(rng, S=5, L=600):
    """Continuum with a slope, absorption lines and noise; spaxels at different flux levels."""
    x = np.arange(L)
    spec = 1.0 + 0.3 * x / L
    for c, depth in [(80, 0.4), (200, 0.6), (330, 0.3), (470, 0.5)]:
        spec = spec * (1 - depth * np.exp(-0.5 * ((x - c) / 3.0) ** 2))
    return np.array([(1 + 0.2 * s) * spec + rng.normal(0, 0.003, L) for s in range(S)])


def test_weights_on_absorption_lines_span_range_floor_only_masked(h5, caplog):
    with caplog.at_level(logging.DEBUG, logger="cubefit.weights"):
        w = ensure_lambda_weights(h5)
    with h5py.File(h5, "r") as f:
        mask, Y = f["/Mask"][...], f["/DataCube"][...]
        ds = f[W]
        assert ds.dtype == np.float64 and ds.shape == mask.shape
        assert ds.attrs["method"] == METHOD and ds.attrs["units"] and ds.attrs["description"]
        assert (ds.attrs["small_px"], ds.attrs["large_px"], ds.attrs["min_w"]) == (7, 31, 1e-6)
        assert ds.attrs["percentile"] == 95.0 and ds.attrs["scale"] > 0
        assert ds.attrs["inputs_fingerprint"] == f.attrs["inputs_fingerprint"]
    assert not mask.all()
    assert np.all(w[~mask] == 1e-6)
    assert np.all(w[mask] > 1e-6)                  # the floor nowhere on good pixels
    assert w[mask].max() == 1.0 and w[mask].min() < 0.05
    assert np.mean(w[mask] == 1.0) == pytest.approx(0.05, abs=0.01)  # top 5 % clipped to 1
    np.testing.assert_allclose(w, reference_weights(Y, mask, 7, 31, 1e-6), rtol=1e-9, atol=1e-12)
    assert "min" in caplog.text and "mean" in caplog.text
    np.testing.assert_array_equal(read_lambda_weights(h5), w)


def test_pure_function_matches_reference_and_ignores_masked_content(rng):
    Y = line_spectra(rng)
    mask = np.ones(Y.shape[1], bool)
    mask[190:215] = False                           # one line masked, like a sky window
    w, scale = lambda_weights(np.median(Y, axis=0), mask, 7, 31, 1e-3)
    np.testing.assert_allclose(w, reference_weights(Y, mask, 7, 31, 1e-3), rtol=1e-9, atol=1e-12)
    assert scale > 0 and np.all(w[~mask] == 1e-3) and np.all(w[mask] > 1e-3)
    # Garbage (a spike) in the masked window changes nothing: masked pixels are interpolated.
    Y2 = Y.copy()
    Y2[:, 195:205] += 50.0
    np.testing.assert_array_equal(lambda_weights(np.median(Y2, axis=0), mask, 7, 31, 1e-3)[0], w)
    # Lines get high weights, the smooth continuum low ones.
    assert w[80] > 0.5 and w[330] > 0.5 and np.median(w[mask]) < 0.3


def test_featureless_spectrum_gives_uniform_weights(caplog):
    mask = np.ones(100, bool)
    mask[10:20] = False
    with caplog.at_level(logging.WARNING, logger="cubefit.weights"):
        w, scale = lambda_weights(np.full(100, 3.0), mask)
    assert scale == 0 and np.all(w[mask] == 1) and np.all(w[~mask] == 1e-6)
    assert "uniform" in caplog.text


@pytest.mark.parametrize("kw, words", [(dict(small_px=31, large_px=7), "small_px < large_px"),
                                       (dict(large_px=10_000), "large_px <= L"),
                                       (dict(min_w=0.0), "floor in \\(0, 1\\)")])
def test_bad_parameters_are_named(kw, words):
    args = dict(small_px=7, large_px=31, min_w=1e-6)
    args.update(kw)
    with pytest.raises(ValueError, match=words):
        lambda_weights(np.linspace(1, 2, 200), np.ones(200, bool), **args)


def test_ensure_reuses_refuses_and_overwrites(h5):
    w = ensure_lambda_weights(h5)
    digest = file_digest(h5)
    np.testing.assert_array_equal(ensure_lambda_weights(h5), w)       # same settings: reused
    assert file_digest(h5) == digest
    with pytest.raises(ValueError, match="small_px: stored 7, requested 5.*overwrite=True"):
        ensure_lambda_weights(h5, small_px=5)
    assert file_digest(h5) == digest
    w2 = ensure_lambda_weights(h5, small_px=5, overwrite=True)
    assert not np.array_equal(w, w2)
    with h5py.File(h5, "r") as f:
        assert f[W].attrs["small_px"] == 5


def test_user_supplied_weights_are_used_with_floor_and_mask(h5, monkeypatch):
    with h5py.File(h5, "r+") as f:
        mask = f["/Mask"][...]
        user = np.linspace(0.0, 2.0, mask.size)
        f.create_dataset(W, data=user)
    monkeypatch.setenv("CUBEFIT_LAMBDA_MIN_W", "0.01")
    np.testing.assert_array_equal(ensure_lambda_weights(h5), user)      # no method attr: kept
    w = read_lambda_weights(h5)
    np.testing.assert_array_equal(w[mask], np.maximum(user, 0.01)[mask])
    assert np.all(w[~mask] == 0.01)


def test_environment_settings(h5, monkeypatch, caplog):
    with h5py.File(h5, "r") as f:
        mask = f["/Mask"][...]
    monkeypatch.setenv("CUBEFIT_LAMBDA_WEIGHTS_AUTO", "0")
    digest = file_digest(h5)
    np.testing.assert_array_equal(read_lambda_weights(h5), np.ones(mask.size))
    assert file_digest(h5) == digest                                   # nothing generated
    monkeypatch.setenv("CUBEFIT_LAMBDA_WEIGHTS_AUTO", "1")
    monkeypatch.setenv("CUBEFIT_LAMBDA_WEIGHTS_DSET", "/LambdaW")
    monkeypatch.setenv("CUBEFIT_LAMBDA_MIN_W", "0.02")
    with caplog.at_level(logging.DEBUG, logger="cubefit.weights"):
        w = read_lambda_weights(h5)                                    # auto-generated
    assert "in use: min=0.02" in caplog.text
    with h5py.File(h5, "r") as f:
        assert "/LambdaW" in f and W not in f
        assert f["/LambdaW"].attrs["min_w"] == 0.02 and f["/LambdaW"].attrs["units"]
    assert np.all(w[~mask] == 0.02) and np.all(w[mask] > 0.02) and w.max() == 1.0
    monkeypatch.setenv("CUBEFIT_LAMBDA_WEIGHTS_ENABLE", "0")
    np.testing.assert_array_equal(read_lambda_weights(h5), np.ones(mask.size))


def test_weights_from_other_inputs_are_never_reused(h5, small_mock, caplog, monkeypatch):
    w_old = ensure_lambda_weights(h5, small_px=5, large_px=21)
    with caplog.at_level(logging.WARNING, logger="cubefit"):
        populate(h5, small_mock, datacube=small_mock.datacube * 1.5)   # new data, same file
    assert "removed /HyperCube/lambda_weights" in caplog.text and str(h5) in caplog.text
    with h5py.File(h5, "r") as f:
        assert W not in f                                              # gone with the old data
    # Weights whose recorded inputs differ from the file's (an older file, or a hand
    # edit) are remade from the current data with their own parameters, never used.
    ensure_lambda_weights(h5, small_px=5, large_px=21)
    with h5py.File(h5, "r+") as f:
        f[W][...] = w_old
        f[W].attrs["inputs_fingerprint"] = "from another cube"
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="cubefit.weights"):
        w = read_lambda_weights(h5)
    assert "remaking it" in caplog.text
    with h5py.File(h5, "r") as f:
        mask = f["/Mask"][...]
        med = np.median(f["/DataCube"][...], axis=0)
        assert f[W].attrs["inputs_fingerprint"] == f.attrs["inputs_fingerprint"]
        assert f[W].attrs["small_px"] == 5 and f[W].attrs["large_px"] == 21
    ref, _ = lambda_weights(med, mask, 5, 21)
    np.testing.assert_allclose(w[mask], ref[mask], rtol=1e-12)
    with h5py.File(h5, "r+") as f:
        f[W].attrs["inputs_fingerprint"] = "from another cube"
    monkeypatch.setenv("CUBEFIT_LAMBDA_WEIGHTS_AUTO", "0")
    with pytest.raises(ValueError, match="made from other inputs"):
        read_lambda_weights(h5)
