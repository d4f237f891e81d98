"""Tests for cubefit.grids: log grids, log_rebin and the exact-overlap rebin matrix."""
import numpy as np
import pytest

from cubefit import C_KMS
from reference import dense_overlap
from cubefit.grids import (check_log_grid, crop_range, edges_from_centres, log_grid, log_rebin,
                           rebin_matrix, velscale_of)

# Template grid (25 km/s) and a coarser observed grid (67.5 km/s, Δ_L/Δ_T = 2.7) that
# starts and ends inside it, so every observed bin is fully covered.
TEM = log_grid(4000.0, 7000.0, 25.0)
OBS = log_grid(4300.0, 6500.0, 67.5)


def gaussian_line(x, centre, width):
    return np.exp(-0.5 * ((x - centre) / width) ** 2)


# --- log_grid / velscale_of / check_log_grid --------------------------------------

def test_log_grid_and_velscale_consistent():
    assert velscale_of(TEM) == pytest.approx(25.0, rel=1e-9)
    assert check_log_grid(TEM) == pytest.approx(25.0 / C_KMS, rel=1e-9)
    e = edges_from_centres(TEM)
    assert e[0] == pytest.approx(np.log(4000.0), abs=1e-12)       # first lower edge at lam_min
    step = 25.0 / C_KMS
    assert e[-1] <= np.log(7000.0) + 1e-12 < e[-1] + step          # one more pixel would overflow
    assert np.allclose(np.diff(e), step, rtol=1e-9, atol=0)


@pytest.mark.parametrize("grid, words", [
    (np.log([4000.0, 4001.0, 4000.5, 4002.0]), "increasing"),
    (np.log(np.linspace(4000.0, 5000.0, 50)), "not uniform"),      # uniform in λ, not ln λ
    (np.array([8.3, np.nan, 8.4]), "non-finite"),
    (np.array([8.3, np.inf, 8.4]), "non-finite"),
    (np.linspace(4000.0, 5000.0, 50), "linear wavelengths"),
    (np.zeros((3, 2)), "1-D"),
])
def test_check_log_grid_rejects(grid, words):
    with pytest.raises(ValueError, match=words) as err:
        check_log_grid(grid, name="/TemPix")
    assert "/TemPix" in str(err.value)


def test_edges_from_centres_midpoints():
    e = edges_from_centres(np.array([1.0, 2.0, 4.0]))
    assert np.array_equal(e, [0.5, 1.5, 3.0, 5.0])


# --- log_rebin ------------------------------------------------------------------

@pytest.mark.parametrize("velscale", [None, 40.0])
def test_log_rebin_keeps_flat_spectrum_flat(velscale):
    spec = np.full((2, 1000), 3.5)
    out, ln_lam, vs = log_rebin([4000.0, 7000.0], spec, velscale=velscale)
    assert out.shape == (2, ln_lam.size)
    assert np.allclose(out, 3.5, rtol=1e-12, atol=0)
    assert velscale_of(ln_lam) == pytest.approx(vs, rel=1e-9)


def test_log_rebin_conserves_line_flux():
    lam = np.linspace(4000.0, 7000.0, 3001)                        # 1 Å pixels
    line = 40.0 * gaussian_line(lam, 5500.3, 2.0)                  # well inside the range
    dens, ln_lam, _ = log_rebin(lam, line, velscale=30.0)
    integ, _, _ = log_rebin(lam, line, velscale=30.0, flux=True)
    dlam = np.diff(np.exp(edges_from_centres(ln_lam)))             # output widths in Å
    assert np.allclose(integ, dens * dlam, rtol=1e-10, atol=1e-300)
    line_in = np.sum(line * 1.0)
    assert np.sum(integ) == pytest.approx(line_in, rel=1e-12)
    assert np.sum(dens * dlam) == pytest.approx(line_in, rel=1e-12)


def test_log_rebin_total_flux_exact_when_grid_fills_input():
    rng = np.random.default_rng(4)
    spec = rng.random(500)
    lam = np.linspace(4000.0, 6000.0, 500)
    out, _, _ = log_rebin(lam, spec, oversample=2, flux=True)      # default step tiles the range
    assert out.size == 1000
    assert np.sum(out) == pytest.approx(np.sum(spec * np.diff(edges_from_centres(lam))), rel=1e-12)


# --- rebin_matrix -----------------------------------------------------------------

@pytest.mark.parametrize("ratio, shift", [(2.7, 0.3), (1.0, 0.5), (3.0, 0.0), (0.6, 0.2)])
def test_rebin_matrix_matches_dense_overlap(ratio, shift):
    # Small grids with partial overlap at both ends (the destination sticks out).
    dt = 1e-4
    src = 8.4 + dt * np.arange(40)
    dst = src[0] + dt * (shift - 2.0 + ratio * np.arange(int(44 / ratio)))
    R = rebin_matrix(src, dst)
    assert R.shape == (dst.size, src.size)
    assert np.allclose(R.toarray(), dense_overlap(src, dst), rtol=0, atol=1e-13)


def test_rebin_matrix_flat_stays_flat_and_flux_conserved():
    R = rebin_matrix(TEM, OBS)
    assert np.allclose(R @ np.ones(TEM.size), 1.0, rtol=0, atol=1e-13)
    line = 10.0 * gaussian_line(TEM, np.log(5500.0), 2e-4)        # well inside OBS
    bw_t = np.diff(edges_from_centres(TEM))                        # ln λ bin widths
    bw_l = np.diff(edges_from_centres(OBS))
    assert np.sum((R @ line) * bw_l) == pytest.approx(np.sum(line * bw_t), rel=1e-12)


def test_rebin_matrix_nonzeros_per_row():
    R = rebin_matrix(TEM, OBS)
    r = 67.5 / 25.0
    nnz = np.diff(R.indptr)
    # An interval of r source pixels overlaps ceil(r) or ceil(r) + 1 of them, r + 1 on average.
    assert nnz.min() >= np.ceil(r) and nnz.max() <= np.ceil(r) + 1
    assert nnz.mean() == pytest.approx(r + 1, abs=0.05)


def test_rebin_matrix_outside_rows_partial():
    src = 8.4 + 1e-4 * np.arange(20)
    dst = src[0] + 1e-4 * (np.arange(-3, 25) * 1.0)                # sticks out both sides
    row = np.asarray(rebin_matrix(src, dst).sum(axis=1)).ravel()
    inside = (dst >= src[0]) & (dst <= src[-1])
    assert np.allclose(row[inside], 1.0, atol=1e-13)
    assert np.all(row[~inside] < 1e-12)


# --- crop_range -------------------------------------------------------------------

def test_crop_range_covers_minimally():
    e = edges_from_centres(TEM)
    rng = np.random.default_rng(5)
    for lo, hi in np.sort(rng.uniform(e[0], e[-1], size=(50, 2)), axis=1):
        sl = crop_range(TEM, lo, hi)
        assert e[sl.start] <= lo and e[sl.stop] >= hi              # covers [lo, hi]
        assert e[sl.start + 1] > lo and e[sl.stop - 1] < hi        # and no more
    whole = crop_range(TEM, e[0] - 1.0, e[-1] + 1.0)
    assert (whole.start, whole.stop) == (0, TEM.size)
