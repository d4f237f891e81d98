"""Resolution / Camera / Spectrum containers against independent references."""
import numpy as np
import pytest
import scipy.sparse

from cubefit.spectra import FWHM_PER_SIGMA, Camera, Resolution, Spectrum


def _desi_dense(band):
    """Dense matrix of a desispec band: scipy dia_matrix with offsets +h … -h."""
    ndiag, n = band.shape
    h = ndiag // 2
    offsets = np.arange(h, -h - 1, -1)
    return scipy.sparse.dia_matrix((band, offsets), shape=(n, n)).toarray()


def test_apply_matches_dense_desi_convention(rng):
    n = 40
    band = rng.uniform(0.0, 1.0, size=(11, n))
    res = Resolution.from_desi(band)
    dense = _desi_dense(band)
    model = rng.normal(size=n)
    np.testing.assert_allclose(res.apply(model), dense @ model, rtol=1e-13, atol=1e-13)
    # leading axes: several models at once
    models = rng.normal(size=(3, n))
    np.testing.assert_allclose(res.apply(models), models @ dense.T, rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(res.dense(), dense, rtol=0, atol=0)
    np.testing.assert_allclose(res.sparse().toarray(), dense, rtol=0, atol=0)
    # the upper diagonal (offset +5) sits in band row 0, indexed by column
    assert dense[0, 5] == band[0, 5] and dense[5, 0] == band[10, 0]


def test_fwhm_at_of_gaussian_rows():
    """Rows sampled from a Gaussian of known σ (pixels) give FWHM = 2.3548 σ Δλ."""
    n, dlam, sig_pix = 60, 0.8, 1.1
    wave = 5000.0 + dlam * np.arange(n)
    offs = np.arange(5, -6, -1)
    band = np.zeros((11, n))
    for d, off in enumerate(offs):
        for i in range(n):
            j = i + off
            if 0 <= j < n:
                band[d, j] = np.exp(-0.5 * (off / sig_pix) ** 2)
    res = Resolution(matrix=band)
    f = res.fwhm_at(wave)
    # truncation at ±5 px = ±4.5σ removes ≈ 1e-4 of the variance
    np.testing.assert_allclose(f[5:-5], FWHM_PER_SIGMA * sig_pix * dlam, rtol=5e-4)


def test_to_matrix_pixel_integrated_gaussian():
    wave = np.linspace(6000.0, 6100.0, 200)
    step = wave[1] - wave[0]
    res = Resolution.from_fwhm(1.8, wave)
    band = res.to_matrix(wave, ndiag=21)          # ±10 px = ±6.6σ: truncation negligible
    assert band.kind == "matrix" and band.matrix.shape == (21, 200)
    # pixel integration adds a box of one pixel: variance + Δ²/12
    want = np.sqrt(1.8 ** 2 + FWHM_PER_SIGMA ** 2 * step ** 2 / 12)
    np.testing.assert_allclose(band.fwhm_at(wave)[11:-11], want, rtol=1e-4)
    np.testing.assert_allclose(band.dense().sum(axis=1), 1.0, rtol=1e-12)
    np.testing.assert_allclose(res.fwhm_at(wave), 1.8)
    np.testing.assert_allclose(Resolution.from_R(2000.0, wave).fwhm_at(wave), wave / 2000.0)


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="exactly one"):
        Resolution()
    with pytest.raises(ValueError, match="odd number"):
        Resolution(matrix=np.ones((10, 50)))
    with pytest.raises(ValueError, match="positive FWHM"):
        Resolution(fwhm=np.array([1.0, -1.0]))
    w = np.linspace(4000, 5000, 30)
    with pytest.raises(ValueError, match="30 pixels"):
        Resolution.from_desi(np.ones((11, 40))).fwhm_at(w)
    with pytest.raises(ValueError, match="1-D of one length"):
        Camera("b", w, np.ones(29), np.ones(30))
    with pytest.raises(ValueError, match="describes 40"):
        Camera("b", w, np.ones(30), np.ones(30), Resolution.from_desi(np.ones((11, 40))))
    cam = Camera("b", w, np.ones(30), np.ones(30), Resolution.from_fwhm(2.0, w))
    s = Spectrum([cam], z=0.1, targetid=7)
    assert s.cameras[0].npix == 30 and s.air is False and s.meta == {}


def test_air_vacuum_conversion():
    from cubefit.spectra import air_to_vacuum, vacuum_to_air
    # NIST: Hα 6562.80 Å (air) = 6564.61 Å (vacuum); [O III] 5006.84 (air) = 5008.24 (vacuum)
    np.testing.assert_allclose(air_to_vacuum([6562.80, 5006.84]), [6564.61, 5008.24], atol=0.01)
    lam = np.linspace(3000.0, 11000.0, 50)
    np.testing.assert_allclose(vacuum_to_air(air_to_vacuum(lam)), lam, rtol=1e-13)
    # Ciddor (1996) as coded independently in pPXF agrees to < 0.5 km/s over 3500-9000 Å
    ppxf_util = pytest.importorskip("ppxf.ppxf_util")
    lam = np.linspace(3500.0, 9000.0, 20)
    np.testing.assert_allclose(air_to_vacuum(lam), ppxf_util.air_to_vac(lam), rtol=1.7e-6)
