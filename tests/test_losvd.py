"""Tests for cubefit.losvd: each checks numbers against an independent reference."""
import numpy as np
import pytest

from cubefit import C_KMS
from reference import brute_force_convolve
from cubefit.losvd import (norm_factors, check_losvd, check_vel_grid, convolve_kernels, fft_length,
                           gauss_hermite_losvd, kernel_half_width, kernel_spectra,
                           losvd_amplitudes, losvd_kernels, pixel_velocities)

VEL = np.arange(-1000.0, 1000.0 + 1e-9, 10.0)   # (201,) km/s, the store's usual VelPix
VELSCALE_T = 25.0                                # template pixel, km/s
DLOG_T = VELSCALE_T / C_KMS


def gaussian_hist(vel, v0, sigma):
    """Gaussian density at the bin centres times the bin width (reference, written out)."""
    dv = vel[1] - vel[0]
    return np.exp(-0.5 * ((vel - v0) / sigma) ** 2) / (sigma * np.sqrt(2 * np.pi)) * dv


# --- grid and histogram validation ---------------------------------------------------

def test_check_vel_grid_returns_step():
    assert check_vel_grid(VEL) == pytest.approx(10.0, rel=1e-15)


@pytest.mark.parametrize("grid, words", [
    (np.array([-10.0, 0.0, 10.0, 21.0]), "uniform"),             # non-uniform
    (np.arange(10.0, 200.0, 10.0), "straddling 0"),              # all positive
    (np.arange(-200.0, 0.0 + 1e-9, 10.0), "straddling 0"),       # ends at 0
    (np.array([-10.0, np.nan, 10.0]), "finite"),
    (np.array([10.0, 0.0, -10.0]), "increasing"),
    (np.zeros((2, 3)), "1-D"),
])
def test_check_vel_grid_rejects(grid, words):
    with pytest.raises(ValueError, match=words) as err:
        check_vel_grid(grid, name="/VelPix")
    assert "/VelPix" in str(err.value)


def test_check_losvd_negative_reports_count_index_min():
    H = np.ones((3, VEL.size, 2))
    H[1, 7, 0] = -0.5
    H[2, 3, 1] = -2.0
    with pytest.raises(ValueError) as err:
        check_losvd(H, VEL, name="/LOSVD")
    msg = str(err.value)
    assert "/LOSVD" in msg and "2 negative" in msg and "(1, 7, 0)" in msg and "-2" in msg


def test_check_losvd_nan_and_shape():
    H = np.ones((2, VEL.size, 2))
    H[0, 5, 1] = np.nan
    with pytest.raises(ValueError, match="non-finite") as err:
        check_losvd(H, name="/LOSVD")
    assert "/LOSVD" in str(err.value) and "(0, 5, 1)" in str(err.value)
    with pytest.raises(ValueError, match="/LOSVD.*201 velocity bins.*got 200"):
        check_losvd(np.ones((2, 200, 2)), VEL)
    check_losvd(np.ones((2, VEL.size, 2)), VEL)   # valid: no error


def test_kernels_reject_nan_and_bad_grid():
    H = gaussian_hist(VEL, 0.0, 100.0)
    H[100] = np.nan
    with pytest.raises(ValueError, match="LOSVD"):
        losvd_kernels(H, VEL, DLOG_T)
    with pytest.raises(ValueError, match="/VelPix"):
        losvd_kernels(gaussian_hist(VEL, 0, 100), VEL + 2000.0, DLOG_T)


# --- kernel geometry ---------------------------------------------------------------

def test_kernel_half_width_and_pixel_velocities():
    assert kernel_half_width(VEL, DLOG_T) == 40                 # 1000 / 25 exactly
    assert kernel_half_width(VEL, 30.0 / C_KMS) == 34           # ceil(33.33)
    v = pixel_velocities(3, DLOG_T)
    k = np.arange(-3, 4)
    # exp(x) - 1 cancels ~1e-12 of relative precision at x ~ 1e-4, hence the tolerance
    assert np.allclose(v, C_KMS * (np.exp(k * DLOG_T) - 1), rtol=1e-10, atol=0)
    assert v[3] == 0.0 and v[4] > VELSCALE_T > -v[2]            # redshift of +1 pixel


def test_kernels_match_np_interp_reference_and_axis_layout():
    rng = np.random.default_rng(1)
    S, C = 4, 3
    H = rng.random((S, VEL.size, C))
    H[1, :, 2] = 0.0                                            # component absent in spaxel 1
    K = kernel_half_width(VEL, DLOG_T)
    vk = pixel_velocities(K, DLOG_T)
    h = losvd_kernels(H, VEL, DLOG_T, axis=1)
    assert h.shape == (S, C, 2 * K + 1) and h.dtype == np.float64
    for s in range(S):
        for c in range(C):
            ref = np.interp(vk, VEL, H[s, :, c], left=0.0, right=0.0)
            ref = ref / ref.sum() if ref.sum() > 0 else ref
            assert np.allclose(h[s, c], ref, rtol=0, atol=1e-15)
    assert np.all(h[1, 2] == 0.0)                               # zero column, not a delta
    sums = h.sum(axis=-1)
    sums[1, 2] = 1.0
    assert np.allclose(sums, 1.0, rtol=0, atol=1e-14)


def test_kernel_zero_outside_grid_and_clipped():
    # A narrow grid (±100 km/s) with an explicit K wider than it: shifts beyond the
    # grid must be exactly 0.
    vel = np.arange(-100.0, 100.0 + 1e-9, 10.0)
    h = losvd_kernels(np.ones(vel.size), vel, DLOG_T, K=10)
    vk = pixel_velocities(10, DLOG_T)
    assert np.all(h[np.abs(vk) > 100.0] == 0.0) and np.all(h >= 0)
    # v(-4) = -99.98 is inside, v(4) = +100.02 is not: k = -4..3 carry weight
    assert np.array_equal(np.flatnonzero(h > 0) - 10, np.arange(-4, 4))


@pytest.mark.parametrize("v0, sigma_pix", [(0.0, 2.0), (150.0, 3.0), (-230.0, 6.0)])
def test_kernel_recovers_gaussian_moments(v0, sigma_pix):
    sigma = sigma_pix * VELSCALE_T
    h = losvd_kernels(gaussian_hist(VEL, v0, sigma), VEL, DLOG_T)
    vk = pixel_velocities(kernel_half_width(VEL, DLOG_T), DLOG_T)
    mean = np.sum(h * vk)
    width = np.sqrt(np.sum(h * (vk - mean) ** 2))
    assert abs(mean - v0) < 0.01 * sigma
    assert width == pytest.approx(sigma, rel=0.01)


# --- convolution ------------------------------------------------------------------

def test_convolve_matches_np_convolve_including_edges():
    rng = np.random.default_rng(2)
    T, K = 300, 17
    spec = rng.normal(size=T)
    spec[:3] += 50.0                                            # strong features at both ends
    spec[-3:] += 80.0
    h = rng.normal(size=2 * K + 1)                              # asymmetric, signed
    out = convolve_kernels(spec, h)
    assert out.shape == (T,)
    assert np.allclose(out, brute_force_convolve(spec, h), rtol=0, atol=1e-12)


def test_convolve_broadcasts_over_leading_axes():
    rng = np.random.default_rng(3)
    S, P, T, K = 3, 4, 128, 9
    spec = rng.normal(size=(1, P, T))
    kern = rng.random((S, 1, 2 * K + 1))
    out = convolve_kernels(spec, kern)
    assert out.shape == (S, P, T)
    for s in range(S):
        for p in range(P):
            assert np.allclose(out[s, p], brute_force_convolve(spec[0, p], kern[s, 0]), rtol=0, atol=1e-12)
    # (P, T) with a single (2K+1,) kernel keeps (P, T)
    assert convolve_kernels(spec[0], kern[0, 0]).shape == (P, T)


def test_convolution_is_linear_not_circular():
    T = 200
    for t0, v0 in ((T - 2, 400.0), (1, -400.0)):
        h = losvd_kernels(gaussian_hist(VEL, v0, 50.0), VEL, DLOG_T)   # shift of ±16 px
        spec = np.zeros(T)
        spec[t0] = 1.0
        out = convolve_kernels(spec, h)
        far = slice(0, T // 2) if t0 > T // 2 else slice(T // 2, T)
        assert np.max(np.abs(out[far])) < 1e-14                 # nothing wrapped to the other end
        assert np.sum(out) < 0.05                               # the shifted line left the grid


def test_positive_velocity_shifts_redward():
    T, t0, v0 = 400, 150, 300.0
    h = losvd_kernels(gaussian_hist(VEL, v0, 2.0 * VELSCALE_T), VEL, DLOG_T)
    spec = np.zeros(T)
    spec[t0] = 1.0
    out = convolve_kernels(spec, h)
    centroid = np.sum(np.arange(T) * out) / np.sum(out)
    assert centroid - t0 == pytest.approx(v0 / VELSCALE_T, abs=0.05)   # +12 pixels, redward
    assert np.argmax(out) == t0 + 12


def test_kernel_spectra_layout():
    nfft = fft_length(100, 3)
    assert nfft >= 106
    delta0 = np.zeros(7)
    delta0[3] = 1.0                                             # h(0) = 1
    assert np.allclose(kernel_spectra(delta0, nfft), 1.0, rtol=0, atol=1e-15)
    delta1 = np.zeros(7)
    delta1[4] = 1.0                                             # h(+1) = 1: phase e^{-2πif/n}
    f = np.arange(nfft // 2 + 1)
    assert np.allclose(kernel_spectra(delta1, nfft), np.exp(-2j * np.pi * f / nfft), atol=1e-14)
    with pytest.raises(ValueError, match="odd"):
        kernel_spectra(np.ones(6), nfft)


# --- amplitudes -------------------------------------------------------------------

def test_amplitudes_sum_and_trapz_by_hand():
    vel = np.array([-20.0, -10.0, 0.0, 10.0, 20.0])
    H = np.array([[[1.0, 0.0], [2.0, 1.0], [4.0, 1.0], [2.0, 1.0], [3.0, 0.0]]])   # (1, 5, 2)
    a_sum = losvd_amplitudes(H, vel, "sum", axis=1)
    a_trapz = losvd_amplitudes(H, vel, "trapz", axis=1)
    assert a_sum.shape == (1, 2)
    assert np.array_equal(a_sum, [[12.0, 3.0]])
    # trapezoid: dv·(Σ H - (H_first + H_last)/2)
    assert np.allclose(a_trapz, [[10.0 * (12.0 - 2.0), 10.0 * 3.0]], rtol=1e-15)
    with pytest.raises(ValueError, match="sum.*trapz"):
        losvd_amplitudes(H, vel, "mean", axis=1)


# --- Gauss–Hermite ---------------------------------------------------------------

def test_gauss_hermite_plain_gaussian_matches_analytic():
    v0, sigma = 120.0, 80.0
    hist = gauss_hermite_losvd(VEL, v0, sigma)
    assert np.allclose(hist, gaussian_hist(VEL, v0, sigma), rtol=1e-14, atol=0)
    assert hist.sum() == pytest.approx(1.0, abs=1e-10)


def test_gauss_hermite_broadcasts():
    hist = gauss_hermite_losvd(VEL, np.array([[0.0], [100.0]]), np.array([50.0, 60.0, 70.0]), h3=0.05)
    assert hist.shape == (2, 3, VEL.size)
    assert np.allclose(hist[1, 2], gauss_hermite_losvd(VEL, 100.0, 70.0, h3=0.05), rtol=0, atol=0)


def moments(vel, hist):
    w = hist / hist.sum()
    mean = np.sum(w * vel)
    return mean, np.sum(w * (vel - mean) ** 2)


@pytest.mark.parametrize("h3", [-0.01, 0.005, 0.01])
def test_gauss_hermite_h3_shifts_mean(h3):
    # First moment of φ(y)·(1 + h3·H3(y)) is h3·∫ y H3 φ dy = √3·h3, so mean = v + √3·h3·σ
    # (small h3, where the clipped negative tail is negligible).
    v0, sigma = 50.0, 100.0
    mean, _ = moments(VEL, gauss_hermite_losvd(VEL, v0, sigma, h3=h3))
    assert mean - v0 == pytest.approx(np.sqrt(3) * h3 * sigma, rel=1e-3)


def test_gauss_hermite_large_h3_sign_symmetry_and_clipping():
    v0, sigma = 0.0, 100.0
    pos = gauss_hermite_losvd(VEL, v0, sigma, h3=0.1)
    neg = gauss_hermite_losvd(VEL, v0, sigma, h3=-0.1)
    assert moments(VEL, pos)[0] > v0 > moments(VEL, neg)[0]
    assert np.allclose(neg, pos[::-1], rtol=1e-13, atol=0)      # h3 -> -h3 mirrors about v
    # 1 + 0.1·H3(y) < 0 for y < -2.3: clipped to exactly 0 there, positive on the other side.
    assert pos[VEL == -400.0] == 0.0 and pos[VEL == 400.0] > 0.0


@pytest.mark.parametrize("h4", [0.05, 0.1])
def test_gauss_hermite_h4_changes_variance(h4):
    # ∫ H4 φ = 3/√24 and ∫ y² H4 φ = 27/√24, so var = σ²(1 + 27h4/√24)/(1 + 3h4/√24);
    # 1 + h4·H4 > 0 everywhere for 0 ≤ h4 < 0.8, so nothing is clipped.
    sigma = 100.0
    _, var = moments(VEL, gauss_hermite_losvd(VEL, 0.0, sigma, h4=h4))
    ref = sigma**2 * (1 + 27 * h4 / np.sqrt(24)) / (1 + 3 * h4 / np.sqrt(24))
    assert var == pytest.approx(ref, rel=1e-6)
    assert moments(VEL, gauss_hermite_losvd(VEL, 0.0, sigma, h4=-0.05))[1] < sigma**2


def test_gauss_hermite_rejects_bad_sigma():
    with pytest.raises(ValueError, match="sigma"):
        gauss_hermite_losvd(VEL, 0.0, [100.0, 0.0])


def test_norm_factors_model_and_data():
    amp = np.array([[1.0, 3.0], [0.0, 0.0], [2.0, 2.0]])
    F = np.array([8.0, 5.0, 1.0])
    np.testing.assert_array_equal(norm_factors(amp, "model"), amp)
    np.testing.assert_allclose(norm_factors(amp, "data", F), [[2.0, 6.0], [0.0, 0.0], [0.5, 0.5]])
    with pytest.raises(ValueError, match="data_flux"):
        norm_factors(amp, "data")
    with pytest.raises(ValueError, match="not one of"):
        norm_factors(amp, "flux")


def test_direct_reference_agrees_with_fast_kernels():
    """The loop reference of tests/reference.py and losvd_kernels agree (both from DESIGN §2)."""
    from reference import direct_kernel
    rng = np.random.default_rng(5)
    vel = np.linspace(-400, 400, 41)
    H = rng.random((3, 41, 2))
    H[1, :, 0] = 0.0
    dlog = 30.0 / C_KMS
    fast = losvd_kernels(H, vel, dlog, axis=1)
    for s in range(3):
        for c in range(2):
            np.testing.assert_allclose(fast[s, c], direct_kernel(H[s, :, c], vel, dlog), atol=1e-15)
