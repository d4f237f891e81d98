"""cubefit.recon and cubefit.plots: Ŷ = A x against the dense reference, partial reads, PNGs."""
import shutil

import h5py
import numpy as np
import pytest
from conftest import file_digest

from cubefit.hypercube import build_hypercube, invalidate_tiles
from cubefit.plots import plot_spectra, spaxel_chi2
from cubefit.recon import reconstruct
from test_hypercube import CHUNKS, dark_losvd, direct, populate


@pytest.fixture(scope="module")
def built(tmp_path_factory, small_mock):
    path = populate(tmp_path_factory.mktemp("recon") / "base.h5", small_mock, losvd=dark_losvd(small_mock))
    build_hypercube(path, norm_mode="model", progress=False, **CHUNKS)
    return path


@pytest.fixture
def h5(tmp_path, built):
    dst = tmp_path / "g.h5"
    shutil.copy(built, dst)
    return dst


def sparse_x(rng, C, P):
    x = rng.uniform(0, 1, (C, P))
    x[rng.uniform(size=(C, P)) < 0.5] = 0.0
    return x


def test_reconstruct_equals_dense_einsum(h5, rng):
    ref = direct(h5, "model", "sum")
    S, C, P, L = ref.shape
    x = sparse_x(rng, C, P)
    expect = np.einsum("scpl,cp->sl", ref, x)
    np.testing.assert_allclose(reconstruct(h5, x.ravel()), expect, rtol=1e-5, atol=1e-5 * abs(expect).max())
    sel = [7, 0, 3, 7]                                   # any order, repeats allowed
    np.testing.assert_allclose(reconstruct(h5, x, spaxels=sel), expect[sel], rtol=1e-5,
                               atol=1e-5 * abs(expect).max())


def test_reconstruct_reads_only_needed_tiles(h5, rng, monkeypatch):
    C, P = 2, 6
    x = np.zeros((C, P))
    x[1, 5] = 2.0                                        # only (C, P) tile (1, 1) is needed
    reads = []
    real = h5py.Dataset.__getitem__

    def spy(self, key):
        if self.name == "/HyperCube/models":
            reads.append(key)
        return real(self, key)

    monkeypatch.setattr(h5py.Dataset, "__getitem__", spy)
    y = reconstruct(h5, x, spaxels=[0, 1, 5])
    assert len(reads) == 2                               # S-tiles 0 and 2, one chunk each
    assert all(k[1] == slice(1, 2) and k[2] == slice(4, 6) for k in reads)
    ref = direct(h5, "model", "sum")
    np.testing.assert_allclose(y, 2.0 * ref[[0, 1, 5], 1, 5], rtol=1e-5, atol=1e-6 * abs(ref).max())


def test_reconstruct_writes_named_dataset(h5, rng):
    x = sparse_x(rng, 2, 6)
    y = reconstruct(h5, x, out="/ModelCube")
    with h5py.File(h5, "r") as f:
        ds = f["/ModelCube"]
        np.testing.assert_array_equal(ds[...], y)
        assert ds.attrs["units"] == f["/DataCube"].attrs["units"] and ds.attrs["description"]
        assert ds.attrs["source"] == "/HyperCube/models" and ds.attrs["spaxels"] == "all"
    y2 = reconstruct(h5, x, out="/ReconTile", spaxels=[2, 4])
    with h5py.File(h5, "r") as f:
        np.testing.assert_array_equal(f["/ReconTile"][...], y[[2, 4]])
        np.testing.assert_array_equal(f["/ReconTile"].attrs["spaxels"], [2, 4])
    np.testing.assert_array_equal(y2, y[[2, 4]])


@pytest.mark.parametrize("out", ["/DataCube", "DataCube", "/X_global", "/HyperCube/models",
                                 "/HyperCube/new_thing", "/Fit/light_fractions", "/Noise", "/R_T",
                                 "/Mask", "/LOSVD", "/Templates"])
def test_reconstruct_never_overwrites_inputs_or_results(h5, out):
    """A derived output may not replace the data, the solution or any stage's product:
    refused before any work, with the fix named, and the file left byte-identical."""
    before = file_digest(h5)
    with pytest.raises(ValueError, match=r"/ModelCube_2"):
        reconstruct(h5, np.ones(12), out=out)
    assert file_digest(h5) == before


def test_reconstruct_overwrites_only_its_own_outputs(h5, rng):
    x = sparse_x(rng, 2, 6)
    with h5py.File(h5, "a") as f:
        f["/Notes"] = np.arange(3.0)          # someone else's dataset
    before = file_digest(h5)
    with pytest.raises(ValueError, match="did not write it"):
        reconstruct(h5, x, out="/Notes")
    assert file_digest(h5) == before
    reconstruct(h5, x, out="/ModelCube_2")
    y = reconstruct(h5, 2 * x, out="/ModelCube_2")       # its own output: replaced
    with h5py.File(h5, "r") as f:
        np.testing.assert_array_equal(f["/ModelCube_2"][...], y)


def test_reconstruct_bad_arguments(h5):
    with pytest.raises(ValueError, match=r"expected \(C\*P,\) = \(12,\)"):
        reconstruct(h5, np.ones(11))
    with pytest.raises(ValueError, match="finite"):
        reconstruct(h5, np.full(12, np.nan))
    with pytest.raises(ValueError, match="spaxels"):
        reconstruct(h5, np.ones(12), spaxels=[9])


def test_reconstruct_matrix_free_without_a_complete_cube(h5, rng, tmp_path, small_mock):
    """No (complete) cube: the operator gives the same Ŷ, in the cube's/fit's norm."""
    ref = direct(h5, "model", "sum")
    S, C, P, L = ref.shape
    x = sparse_x(rng, C, P)
    expect = np.einsum("scpl,cp->sl", ref, x)
    invalidate_tiles(h5, [(0, 0, 0)])
    tol = dict(rtol=1e-5, atol=1e-5 * abs(expect).max())
    np.testing.assert_allclose(reconstruct(h5, x, out="/ModelCube"), expect, **tol)
    with h5py.File(h5, "r") as f:
        assert f["/ModelCube"].attrs["source"] == "matrix-free LOSVD operator"
    bare = populate(tmp_path / "bare.h5", small_mock, losvd=dark_losvd(small_mock))  # no cube at all
    np.testing.assert_allclose(reconstruct(bare, x, spaxels=[2, 5]),
                               np.einsum("scpl,cp->sl", direct(h5, "data", "sum"), x)[[2, 5]], **tol)


def test_plot_spectra_best_and_worst(h5, tmp_path, small_mock):
    x = small_mock.x_true.ravel()          # the mock's truth: model == data up to noise
    with h5py.File(h5, "r+") as f:
        f.create_dataset("/X_global", data=x)
    files = plot_spectra(h5, out_dir=tmp_path / "png", n=1)
    assert [p.name.split("_s")[0] for p in files] == ["spectrum_best1", "spectrum_worst1"]
    for p in files:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 10_000
    with h5py.File(h5, "r") as f:
        Y, mask, noise = f["/DataCube"][...], f["/Mask"][...], f["/Noise"][...]
    chi2 = spaxel_chi2(Y, reconstruct(h5, x), mask, 1 / noise**2)
    best, worst = (int(p.stem.split("_s")[1]) for p in files)
    assert chi2[best] == chi2.min() and chi2[worst] == chi2.max()


def test_reconstruct_ignores_a_cube_in_another_norm_than_the_fit(h5, rng):
    """x fitted in norm "data" while the cube holds "model" columns (converted after the
    fit): Ŷ comes from the operator in the fit's norm, not from the mismatched cube."""
    ref = direct(h5, "data", "sum")
    S, C, P, L = ref.shape
    x = sparse_x(rng, C, P)
    with h5py.File(h5, "r+") as f:
        f.create_group("/Fit").attrs["setting.norm_mode"] = "data"
    expect = np.einsum("scpl,cp->sl", ref, x)
    np.testing.assert_allclose(reconstruct(h5, x, out="/ModelCube"), expect, rtol=1e-5,
                               atol=1e-5 * abs(expect).max())
    with h5py.File(h5, "r") as f:
        assert f["/ModelCube"].attrs["source"] == "matrix-free LOSVD operator"
