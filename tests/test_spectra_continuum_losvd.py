"""Analytic Fourier transform of the Gauss–Hermite LOSVD (cubefit.losvd.gauss_hermite_rfft)
against numerically sampled profiles."""
import math

import numpy as np
import pytest
import scipy.fft

from cubefit.losvd import gauss_hermite_rfft


def _gh_profile(u, v, s, h3, h4):
    """vdMF93 Gauss–Hermite profile written out from its definition (density per pixel)."""
    y = (u - v) / s
    H3 = (2 * math.sqrt(2) * y ** 3 - 3 * math.sqrt(2) * y) / math.sqrt(6)
    H4 = (4 * y ** 4 - 12 * y ** 2 + 3) / math.sqrt(24)
    return np.exp(-0.5 * y * y) / (s * math.sqrt(2 * math.pi)) * (1 + h3 * H3 + h4 * H4)


@pytest.mark.parametrize("v, s, h3, h4", [(0.0, 5.0, 0.0, 0.0), (3.3, 6.0, 0.1, -0.05),
                                          (-7.9, 4.5, -0.12, 0.08)])
def test_matches_dft_of_sampled_profile(v, s, h3, h4):
    nfft = 256
    n = np.arange(nfft)
    shift = np.where(n < nfft // 2, n, n - nfft)          # index k ↔ shift k mod nfft
    samples = _gh_profile(shift.astype(float), v, s, h3, h4)
    # direct DFT sum (not an FFT): well-sampled profile, aliasing ~ exp(-σ²π²/2)
    w = 2 * np.pi * np.arange(nfft // 2 + 1) / nfft
    ref = (samples[None, :] * np.exp(-1j * w[:, None] * shift[None, :])).sum(axis=1)
    np.testing.assert_allclose(gauss_hermite_rfft(nfft, v, s, h3, h4), ref, rtol=0, atol=1e-12)


def test_extra_variance_is_a_gaussian_in_quadrature():
    a = gauss_hermite_rfft(128, 1.2, 3.0, 0.05, 0.02, var_extra=4.0)
    b = gauss_hermite_rfft(128, 1.2, 3.0, 0.05, 0.02)
    g = gauss_hermite_rfft(128, 0.0, 2.0)
    np.testing.assert_allclose(a, b * g, rtol=1e-13, atol=1e-15)
    # a negative extra variance deconvolves, down to a pure shift
    np.testing.assert_allclose(gauss_hermite_rfft(128, 2.5, 3.0, var_extra=-9.0),
                               np.exp(-2.5j * 2 * np.pi * np.arange(65) / 128), atol=1e-14)
    with pytest.raises(ValueError, match="var_extra"):
        gauss_hermite_rfft(128, 0.0, 1.0, var_extra=-2.0)


def test_derivatives_match_finite_differences():
    p = np.array([2.3, 3.1, 0.07, -0.04])
    _, d = gauss_hermite_rfft(64, *p, var_extra=1.5, derivatives=True)
    for i in range(4):
        e = np.zeros(4)
        e[i] = 1e-6
        num = (gauss_hermite_rfft(64, *(p + e), var_extra=1.5)
               - gauss_hermite_rfft(64, *(p - e), var_extra=1.5)) / 2e-6
        np.testing.assert_allclose(d[i], num, rtol=0, atol=1e-8)


def test_sub_pixel_sigma_and_shift_are_exact_on_band_limited_signal():
    """σ = 0.2 px and v = 0.37 px on a sampled sinusoid: the result is the sinusoid
    shifted by v and damped by exp(-σ²ω²/2), exactly."""
    nfft, k = 512, 37
    om = 2 * np.pi * k / nfft
    t = np.arange(nfft)
    f = np.cos(om * t)
    out = scipy.fft.irfft(scipy.fft.rfft(f) * gauss_hermite_rfft(nfft, 0.37, 0.2), nfft)
    np.testing.assert_allclose(out, np.exp(-0.5 * (0.2 * om) ** 2) * np.cos(om * (t - 0.37)),
                               rtol=0, atol=1e-12)
